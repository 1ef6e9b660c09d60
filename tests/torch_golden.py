"""Whole-model golden runs: N optimizer steps in PyTorch (float64) and on a device.

`torch_steps` trains `host.importer.to_torch(spec)` — the PyTorch model that
computes what the device computes — with the torch.optim optimizer matching a
`TrainConfig`, in float64 on the same float32 inputs, so the reference carries
no rounding error worth counting and a test's tolerance bounds the device's
float32 error alone.
"""

from __future__ import annotations

import numpy as np
import torch

from host import finetune
from host.compiler import TrainConfig
from host.importer import to_torch
from host.zoo import ModelSpec


def torch_optimizer(params, cfg: TrainConfig):
    """The torch.optim optimizer matching cfg, over the parameters that train."""
    return finetune.torch_optimizer([p for p in params if p.requires_grad], cfg)


def loss_of(spec: ModelSpec, out, x, y):
    if spec.loss == "mse":
        return torch.nn.functional.mse_loss(out.reshape(x.shape[0], -1), x.reshape(x.shape[0], -1))
    return torch.nn.functional.cross_entropy(out.reshape(x.shape[0], -1), y)


def torch_steps(spec: ModelSpec, params: dict[str, np.ndarray], cfg: TrainConfig,
                batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list[float], list[int], dict[str, np.ndarray]]:
    """Train on `batches` (x float32 [n, *input], y int labels); return per-step
    losses, correct counts and the final state_dict (float64 numpy)."""
    model = to_torch(spec, params).double().train()
    names = {n for n, _ in model.named_parameters()}
    if cfg.train_layers is not None:
        for n, p in model.named_parameters():
            p.requires_grad_(n.split(".", 1)[0] in cfg.train_layers)
    opt = torch_optimizer(model.parameters(), cfg)
    losses, correct = [], []
    for x, y in batches:
        xt = torch.from_numpy(np.asarray(x, np.float32)).double()
        yt = torch.from_numpy(np.asarray(y, np.int64))
        opt.zero_grad()
        out = model(xt)
        loss = loss_of(spec, out, xt, yt)
        loss.backward()
        if cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.clip_norm)
        opt.step()
        losses.append(loss.item())
        correct.append(int((out.reshape(len(y), -1).argmax(1) == yt).sum()) if spec.loss != "mse" else 0)
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    assert names <= set(state)
    return losses, correct, state


def torch_eval(spec: ModelSpec, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    model = to_torch(spec, params).double().eval()
    with torch.no_grad():
        xt = torch.from_numpy(np.asarray(x, np.float32)).double()
        out = model(xt)
        loss = loss_of(spec, out, xt, torch.from_numpy(np.asarray(y, np.int64)))
    correct = int((out.reshape(len(y), -1).argmax(1).numpy() == y).sum()) if spec.loss != "mse" else 0
    return float(loss), correct
