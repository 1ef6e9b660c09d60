"""Training strategies: which layers a compiled program trains (`--strategy`).

    full                 every layer (the default)
    last                 the last layer with parameters; everything before it runs forward only
    layers=NAME,...      the named layers (or their indices in the model description)

A strategy is a choice of `TrainConfig.train_layers`; the compiler then emits
backward work only where a gradient is needed (host.compiler). Bias-only,
sparse (TinyTrain-style channel selection) and LoRA strategies are not built yet
and are refused with that reason.
"""

from __future__ import annotations

from .errors import ModelError
from .layers import rule_for
from .zoo import ModelSpec

NAMES = ("full", "last", "layers=")
NOT_YET = ("bias", "sparse", "lora")


def trained_layers(spec: ModelSpec, strategy: str) -> tuple[str, ...] | None:
    """The layers `strategy` trains (None: all of them)."""
    with_params = [l.name for l, s in zip(spec.layers, spec.in_shapes())
                   if rule_for(l.type).param_shapes(l, s)]
    if strategy == "full":
        return None
    if strategy == "last":
        return (with_params[-1],)
    if strategy.startswith("layers="):
        names = [n.strip() for n in strategy[len("layers="):].split(",") if n.strip()]
        all_names = [l.name for l in spec.layers]
        out = []
        for n in names:
            if n.isdigit():
                if int(n) >= len(all_names):
                    raise ModelError(f"strategy {strategy!r}: layer index {n} past the {len(all_names)} layers")
                n = all_names[int(n)]
            if n not in all_names:
                raise ModelError(f"strategy {strategy!r}: no layer {n!r} (layers: {', '.join(all_names)})")
            out.append(n)
        if not out:
            raise ModelError(f"strategy {strategy!r}: name at least one layer")
        return tuple(out)
    if strategy.split("=")[0] in NOT_YET:
        raise ModelError(f"strategy {strategy!r} is not available yet",
                         hint="use full, last or layers=NAME,...")
    raise ModelError(f"unknown strategy {strategy!r}", hint="use full, last or layers=NAME,...")


def strategy_of(train_layers: tuple[str, ...] | None) -> str:
    return "full" if train_layers is None else "layers=" + ",".join(train_layers)
