"""Training strategies: what a compiled program trains (`--strategy`).

    full                 every parameter (the default)
    last                 the last layer with parameters; everything before it runs forward only
    layers=NAME,...      the named layers (or their indices in the model description)
    bias                 only the biases: of linear and conv layers, the shifts (beta) of the
                         norms, and attention's projection biases (TinyTL); a bias gradient
                         is a sum of dy (BIAS_GRAD), so no weight gradient is computed at all
    sparse[=RATIO]       TinyTrain-style: the output channels (and so the layers) whose update
                         matters most for the user's data, within a compute budget of RATIO
                         (default 0.25) × full backprop's backward MACs and the board's memory.
                         Channels are scored by the Fisher information of the layer outputs on
                         calibration data (host.sparse); the device updates only their weight
                         rows (GATHER → optimizer → SCATTER)
    lora=RANK            frozen base weights; trainable low-rank adapters y += B·A·x (scale 1,
                         i.e. alpha = rank) on every linear and 1×1 conv layer; A starts
                         U(±1/√fan_in) as nn.Linear's weight, B at zero, so training starts from
                         the pretrained model. `merge_lora` folds them back (W += B·A)

The compiler asks a `Selection` which parameters train, which layers carry
adapters and which channels a sparse update touches; it then emits backward
work only where a gradient is needed (host.compiler).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from .errors import ModelError
from .layers import rule_for
from .zoo import ModelSpec

NAMES = ("full", "last", "layers=", "bias", "sparse[=RATIO]", "lora=RANK")
HINT = "use full, last, layers=NAME,..., bias, sparse[=RATIO] or lora=RANK"
#: default compute budget of `sparse`: this fraction of full backprop's backward MACs
SPARSE_RATIO = 0.25
MAX_LORA_RANK = 64


@dataclass(frozen=True)
class Selection:
    """What one strategy trains in one model."""

    #: names of the trainable parameters ("fc1.weight"); adapters included
    trainable: frozenset[str]
    #: adapter rank (0: none) and the layers carrying adapters
    lora_rank: int = 0
    lora_layers: tuple[str, ...] = ()
    #: sparse updates: layer → the output channels it trains (absent: all of them)
    channels: dict[str, tuple[int, ...]] = field(default_factory=dict)


def _with_params(spec: ModelSpec) -> list[tuple[str, dict]]:
    return [(l.name, rule_for(l.type).param_shapes(l, s)) for l, s in zip(spec.layers, spec.in_shapes())
            if rule_for(l.type).param_shapes(l, s)]


def _layer_params(spec: ModelSpec, names) -> frozenset[str]:
    buffers = spec.buffer_names()
    shapes = spec.param_shapes()
    return frozenset(p for p in shapes if p.split(".", 1)[0] in set(names) and p not in buffers)


def parse_ratio(strategy: str) -> float:
    text = strategy.partition("=")[2] or str(SPARSE_RATIO)
    try:
        ratio = float(text)
    except ValueError:
        ratio = -1.0
    if not 0 < ratio <= 1:
        raise ModelError(f"strategy {strategy!r}: the compute budget must be a fraction in (0, 1]")
    return ratio


def parse_rank(strategy: str) -> int:
    text = strategy.partition("=")[2]
    if not text.isdigit() or not 1 <= int(text) <= MAX_LORA_RANK:
        raise ModelError(f"strategy {strategy!r}: want lora=RANK with RANK in 1..{MAX_LORA_RANK}")
    return int(text)


def bias_params(spec: ModelSpec) -> frozenset[str]:
    """The biases `bias` trains: every 1-D parameter named bias of linear, conv, norm and
    attention layers (seqpool's score bias is left out: softmax ignores it, its gradient is 0)."""
    out = set()
    for layer, s in zip(spec.layers, spec.in_shapes()):
        if layer.type == "seqpool":
            continue
        for local, shape in rule_for(layer.type).param_shapes(layer, s).items():
            if local.endswith("bias") and len(shape) == 1:
                out.add(f"{layer.name}.{local}")
    return frozenset(out)


def lora_shapes(spec: ModelSpec, rank: int) -> dict[str, tuple[int, ...]]:
    """Adapter parameters of `lora=rank`: {"fc1.lora_A": (r, in), "fc1.lora_B": (out, r), ...}."""
    out = {}
    for layer, s in zip(spec.layers, spec.in_shapes() if rank else ()):
        for local, shape in rule_for(layer.type).lora_shapes(layer, s, rank).items():
            out[f"{layer.name}.{local}"] = shape
    return out


def lora_init(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A: U(±1/√fan_in) from a generator seeded by the parameter's name (the same
    adapters on every compile); B: zeros."""
    if name.endswith("lora_B"):
        return np.zeros(shape, np.float32)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    bound = 1.0 / np.sqrt(int(np.prod(shape[1:])))
    return rng.uniform(-bound, bound, shape).astype(np.float32)


def select(spec: ModelSpec, strategy: str, train_layers: tuple[str, ...] | None = None,
           channels: tuple[tuple[str, tuple[int, ...]], ...] | None = None) -> Selection:
    """The Selection of `strategy` (or of explicit `train_layers`); `channels` is what
    host.sparse chose for `sparse` (it needs calibration data, so it is chosen before)."""
    all_params = _layer_params(spec, [l.name for l in spec.layers])
    if train_layers is not None:
        return Selection(_layer_params(spec, _check_layers(spec, train_layers, "layers")))
    kind = strategy.partition("=")[0]
    if strategy == "full":
        return Selection(all_params)
    if strategy == "last":
        return Selection(_layer_params(spec, [_with_params(spec)[-1][0]]))
    if kind == "layers":
        names = [n.strip() for n in strategy[len("layers="):].split(",") if n.strip()]
        return Selection(_layer_params(spec, _check_layers(spec, names, strategy)))
    if strategy == "bias":
        return Selection(bias_params(spec))
    if kind == "lora":
        shapes = lora_shapes(spec, parse_rank(strategy))
        if not shapes:
            raise ModelError(f"strategy {strategy!r}: model {spec.name!r} has no linear or 1×1 conv layer")
        layers = tuple(dict.fromkeys(n.split(".", 1)[0] for n in shapes))
        return Selection(frozenset(shapes), parse_rank(strategy), layers)
    if kind == "sparse":
        parse_ratio(strategy)
        if channels is None:
            raise ModelError(f"strategy {strategy!r} chooses channels from calibration data",
                             hint="give a dataset (host stream --dataset ..., host compile/plan --dataset ...)")
        chosen = {layer: tuple(int(c) for c in ch) for layer, ch in channels}
        _check_layers(spec, list(chosen), strategy)
        return Selection(_layer_params(spec, chosen), channels={k: v for k, v in chosen.items()
                                                                  if len(v) < _out_channels(spec, k)})
    raise ModelError(f"unknown strategy {strategy!r}", hint=HINT)


def _out_channels(spec: ModelSpec, layer_name: str) -> int:
    for layer, s in zip(spec.layers, spec.in_shapes()):
        if layer.name == layer_name:
            return rule_for(layer.type).param_shapes(layer, s)["weight"][0]
    raise KeyError(layer_name)


def _check_layers(spec: ModelSpec, names, strategy: str) -> list[str]:
    all_names = [l.name for l in spec.layers]
    out = []
    for n in names:
        if isinstance(n, str) and n.isdigit():
            if int(n) >= len(all_names):
                raise ModelError(f"strategy {strategy!r}: layer index {n} past the {len(all_names)} layers")
            n = all_names[int(n)]
        if n not in all_names:
            raise ModelError(f"strategy {strategy!r}: no layer {n!r} (layers: {', '.join(all_names)})")
        out.append(n)
    if not out:
        raise ModelError(f"strategy {strategy!r}: name at least one layer")
    return out


def merge_lora(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fold trained adapters into their base weights (W += B·A) and drop them: the
    result is a plain model that compiles, evaluates and exports without adapters."""
    out = {k: v for k, v in params.items() if ".lora_" not in k}
    for name in params:
        if not name.endswith(".lora_A"):
            continue
        layer = name[: -len(".lora_A")]
        a, b, w = params[name], params[f"{layer}.lora_B"], params[f"{layer}.weight"]
        delta = b.reshape(b.shape[0], -1).astype(np.float64) @ a.reshape(a.shape[0], -1).astype(np.float64)
        out[f"{layer}.weight"] = (w.astype(np.float64) + delta.reshape(w.shape)).astype(np.float32)
    return out
