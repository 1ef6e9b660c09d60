"""Pretrain a shipped model on the host with PyTorch, on its dataset's pretrain split.

    python -m host.pretrain MODEL --dataset NAME [--epochs N] [--lr LR] [--batch B] [--seed S]

The device then starts from these weights and calibrates on the calibration
split (`host stream`); the held-out test split is never used here. The model
is the one the device runs (`host.importer.to_torch(spec)`), trained with Adam
and cross-entropy (or MSE for autoencoders), deterministically for a seed.
The weights go to `models/<model>.npz` (every parameter and buffer, named as
in the model description), which `host.importer.resolve_model` loads for a
built-in model when present. The command prints held-out-free numbers only:
accuracy on the pretrain split and on the calibration split before any
calibration (the "non-adapted" baseline of docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .datasets import load_dataset
from .errors import EdgePropError
from .importer import _torch, to_torch
from .zoo import MODELS_DIR, init_params, load_model


def pretrain(model: str, dataset: str, epochs: int = 30, lr: float = 1e-3, batch: int = 32, seed: int = 0,
             out: Path | None = None, log=print) -> dict:
    torch = _torch()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    spec = load_model(model)
    ds = load_dataset(dataset, seed=seed)
    if ds.x_pretrain is None or len(ds.x_pretrain) == 0:
        raise EdgePropError(f"dataset {dataset} has no pretrain split")
    params = init_params(spec, seed)
    net = to_torch(spec, params)
    x = torch.from_numpy(np.asarray(ds.x_pretrain, np.float32).reshape(len(ds.x_pretrain), *spec.input))
    y = torch.from_numpy(np.asarray(ds.y_pretrain, np.int64))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        net.train()
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            if len(idx) < 2:  # batch-norm needs two samples to have a batch variance
                continue
            opt.zero_grad()
            out_ = net(x[idx])
            loss = (torch.nn.functional.mse_loss(out_.reshape(len(idx), -1), x[idx].reshape(len(idx), -1))
                    if spec.loss == "mse" else torch.nn.functional.cross_entropy(out_, y[idx]))
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if epoch == epochs or epoch % 10 == 0:
            log(f"epoch {epoch}: loss {total / len(x):.4f}")

    def accuracy(xs, ys) -> float:
        net.eval()
        with torch.no_grad():
            xt = torch.from_numpy(np.asarray(xs, np.float32).reshape(len(xs), *spec.input))
            return float((net(xt).argmax(1).numpy() == np.asarray(ys)).mean())

    result = {"model": model, "dataset": dataset, "epochs": epochs, "lr": lr, "batch": batch, "seed": seed}
    if spec.loss != "mse":
        result["accuracy_pretrain"] = round(accuracy(ds.x_pretrain, ds.y_pretrain), 4)
        result["accuracy_calibration_before"] = round(accuracy(ds.x_train, ds.y_train), 4)
    state = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    out = out or MODELS_DIR / f"{model}.npz"
    np.savez(out, **state, __pretrain__=np.frombuffer(json.dumps(result).encode(), np.uint8))
    result["weights"] = str(out)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host.pretrain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    try:
        r = pretrain(args.model, args.dataset, args.epochs, args.lr, args.batch, args.seed, args.out)
    except EdgePropError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
