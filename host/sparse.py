"""`--strategy sparse`: which channels to train, chosen from the user's calibration data.

TinyTrain's recipe (Kwon et al., 2024), on the host:

1. Score. One forward and backward pass of the pretrained model over the
   calibration samples (PyTorch, `host.importer.to_torch`); for every output
   channel c of every conv and linear layer, the Fisher potential of its output
   activation a with gradient g = dL/da:
       F_c = 1/(2N) · Σ_n (Σ_positions a·g)²
   (the loss change expected from perturbing that channel: what updating it can buy).
2. Cost. From the compiled full-backprop graph (host.costs): each layer's weight-
   gradient MACs per channel, and the input-gradient MACs of every layer after the
   earliest trained one (backward must reach it).
3. Choose. The budget is RATIO × full backprop's backward MACs. For each candidate
   earliest layer s, pay the input-gradient chain after s, then take channels of
   layers ≥ s by Fisher per MAC until the budget is spent; keep the s with the most
   Fisher bought. A depthwise or grouped conv whose output channels read one input
   channel each, or every one, can train single channels; other grouped convs train
   whole or not at all.

The result is `TrainConfig.train_channels`; the compiler emits GATHER → gradient of
the chosen rows → optimizer → SCATTER (host.layers), so the device computes and
updates nothing else. The memory budget is the board's arena: `choose` halves the
compute budget until the plan fits.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .compiler import TrainConfig, build_graph
from .costs import node_macs
from .errors import ModelError
from .ids import OpFn
from .layers import rule_for
from .planner import plan_graph
from .strategies import parse_ratio
from .zoo import ModelSpec

#: samples of the calibration set scored (more adds little: Fisher ranks settle fast)
MAX_SAMPLES = 256


def _weighted(spec: ModelSpec) -> list:
    return [l for l in spec.layers if l.type in ("linear", "conv2d", "conv1d")]


_SCORES: dict[tuple, dict[str, np.ndarray]] = {}


def fisher_scores(spec: ModelSpec, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
                  batch: int = 32) -> dict[str, np.ndarray]:
    """Per conv/linear layer, the Fisher potential of each output channel (float64 [C]);
    remembered for the same model, weights and data objects (host plan --all asks per board)."""
    key = (spec.name, id(params), id(x), id(y), batch)
    if key not in _SCORES:
        _SCORES[key] = _fisher_scores(spec, params, x, y, batch)
    return _SCORES[key]


def _fisher_scores(spec, params, x, y, batch):
    try:
        import torch
    except ImportError:
        raise ModelError("the sparse strategy scores channels with PyTorch, which is not installed",
                         hint="pip install -e '.[torch]' (make setup installs it)") from None
    from .importer import to_torch

    model = to_torch(spec, params).double().eval()
    weighted = {l.name: l for l in _weighted(spec)}
    acts: dict[str, "torch.Tensor"] = {}
    def keep(name):
        def hook(module, inputs, out):
            out.retain_grad()
            acts[name] = out
        return hook

    hooks = [getattr(model, name).register_forward_hook(keep(name)) for name in weighted]
    scores = {name: np.zeros(layer["out"]) for name, layer in weighted.items()}
    n = min(len(x), MAX_SAMPLES)
    try:
        for s in range(0, n, batch):
            xb = torch.from_numpy(np.asarray(x[s:min(s + batch, n)], np.float64).reshape(-1, *spec.input))
            out = model(xb).reshape(len(xb), -1)
            if spec.loss == "mse":
                loss = torch.nn.functional.mse_loss(out, xb.reshape(len(xb), -1), reduction="sum")
            else:
                yb = torch.from_numpy(np.asarray(y[s:s + len(xb)], np.int64))
                loss = torch.nn.functional.cross_entropy(out, yb, reduction="sum")
            model.zero_grad()
            loss.backward()
            for name, layer in weighted.items():
                a = acts[name]
                prod = (a * a.grad).detach().numpy()
                # channels: axis 1 of a conv output [N][C][...]; the last axis of a linear's
                prod = np.moveaxis(prod, 1 if layer.type != "linear" else -1, 1)
                scores[name] += (prod.reshape(len(xb), prod.shape[1], -1).sum(axis=2) ** 2).sum(axis=0)
    finally:
        for h in hooks:
            h.remove()
    return {name: v / (2 * n) for name, v in scores.items()}


def _costs(spec: ModelSpec, params, cfg: TrainConfig) -> tuple[dict[str, int], dict[str, int], int]:
    """(weight-gradient MACs per layer, input-gradient MACs per layer, backward MACs of full
    backprop), per sample, from the compiled full-backprop graph."""
    g, _ = build_graph(spec, params, replace(cfg, strategy="full", train_channels=None, batch=1))
    bw_param: dict[str, int] = {}
    bw_input: dict[str, int] = {}
    for node in g.nodes[g.train_loss_end:]:
        table = bw_param if node.fn == OpFn.BW_PARAM else bw_input
        table[node.layer] = table.get(node.layer, 0) + node_macs(g, node, 1)
    return bw_param, bw_input, sum(bw_param.values()) + sum(bw_input.values())


def _single_channels(spec: ModelSpec) -> dict[str, bool]:
    out = {}
    for layer, s in zip(spec.layers, spec.in_shapes()):
        if layer.type in ("conv2d", "conv1d"):
            out[layer.name] = rule_for(layer.type).sparse_ok(layer, s)
        elif layer.type == "linear":
            out[layer.name] = True
    return out


def select_channels(spec: ModelSpec, scores: dict[str, np.ndarray], bw_param: dict[str, int],
                    bw_input: dict[str, int], budget: float) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The channel choice of TinyTrain's step 3 (module docstring) under `budget` MACs/sample."""
    order = [l.name for l in spec.layers]
    single = _single_channels(spec)
    best, best_value = None, -1.0
    for s_i, s in enumerate(order):
        if s not in scores:
            continue
        chain = sum(bw_input.get(name, 0) for name in order[s_i + 1:])
        left = budget - chain
        if left <= 0:
            continue
        items = []  # (fisher per MAC, fisher, cost, layer, channels)
        for name in order[s_i:]:
            if name not in scores:
                continue
            f = scores[name]
            per = bw_param.get(name, 0) / len(f)
            if single[name]:
                items += [(fc / max(per, 1), fc, per, name, (c,)) for c, fc in enumerate(f)]
            else:
                items.append((f.sum() / max(per * len(f), 1), f.sum(), per * len(f), name, tuple(range(len(f)))))
        chosen: dict[str, list[int]] = {}
        value = 0.0
        for _, fc, cost, name, chans in sorted(items, key=lambda t: -t[0]):
            if cost <= left:
                left -= cost
                value += fc
                chosen.setdefault(name, []).extend(chans)
        if s in chosen and value > best_value:
            best_value = value
            best = tuple((name, tuple(sorted(chosen[name]))) for name in order if name in chosen)
    if best is None:
        raise ModelError(f"no layer can train within a budget of {budget:.0f} MACs per sample",
                         hint="raise the budget: --strategy sparse=0.5")
    return best


def choose(spec: ModelSpec, params: dict[str, np.ndarray], cfg: TrainConfig, x: np.ndarray, y: np.ndarray,
           arena_limit: int | None = None) -> TrainConfig:
    """cfg with `train_channels` filled in for `--strategy sparse[=RATIO]`."""
    ratio = parse_ratio(cfg.strategy)
    scores = fisher_scores(spec, params, x, y)
    bw_param, bw_input, full = _costs(spec, params, cfg)
    while True:
        chosen = select_channels(spec, scores, bw_param, bw_input, ratio * full)
        out = replace(cfg, train_channels=chosen)
        if arena_limit is None:
            return out
        need = plan_graph(build_graph(spec, params, out)[0]).arena_bytes
        if need <= arena_limit or ratio < 1e-3:
            return out  # compile_model names the biggest tensors if it still does not fit
        ratio /= 2


def configure(spec: ModelSpec, params: dict[str, np.ndarray], cfg: TrainConfig, dataset=None,
              arena_limit: int | None = None) -> TrainConfig:
    """cfg ready to compile: for `sparse`, the channels chosen on `dataset`'s calibration
    split (a host.datasets.Dataset, a name, or None: the model's own dataset)."""
    if not cfg.strategy.startswith("sparse") or cfg.train_channels is not None:
        return cfg
    from .datasets import Dataset, load_dataset

    if not isinstance(dataset, Dataset):
        name = dataset or spec.dataset
        if not name:
            raise ModelError(f"strategy {cfg.strategy!r} scores channels on calibration data",
                             hint="name the data: --dataset NAME (host datasets lists them)")
        dataset = load_dataset(name)
    return choose(spec, params, cfg, dataset.x_train, dataset.y_train, arena_limit)
