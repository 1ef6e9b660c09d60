"""Model descriptions: the built-in zoo in `models/*.json`, or a user's JSON file.

A model description is a layer list:

    {"name": "mlp-digits", "input": [64], "classes": 10,
     "layers": [{"type": "linear", "name": "fc1", "out": 32},
                {"type": "relu"},
                {"type": "linear", "name": "fc2", "out": 10}],
     "loss": "softmax_cross_entropy"}

`init_params` draws the initial parameters the way PyTorch's `nn.Linear` does
(uniform in ±1/√fan_in for weights and biases), from a seed, so a run is
reproducible and a PyTorch user sees the same starting distribution.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"

LAYER_TYPES = {"linear", "relu"}
LOSSES = {"softmax_cross_entropy"}


@dataclass(frozen=True)
class Layer:
    type: str
    name: str
    out: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input: tuple[int, ...]
    classes: int
    layers: tuple[Layer, ...]
    loss: str
    description: str = ""

    def shapes(self) -> list[tuple[int, ...]]:
        """Per-sample activation shape after each layer (index 0 = the input)."""
        shapes = [self.input]
        for layer in self.layers:
            if layer.type == "linear":
                shapes.append((layer.out,))
            else:
                shapes.append(shapes[-1])
        return shapes


def model_names() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.json"))


def load_model(name_or_path: str) -> ModelSpec:
    path = Path(name_or_path)
    if not path.suffix:
        path = MODELS_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ModelError(f"no model {name_or_path!r}",
                         hint=f"built-in models: {', '.join(model_names())}; or pass a .json path")
    try:
        return parse_model(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from e


def parse_model(d: dict) -> ModelSpec:
    try:
        layers = []
        for i, ld in enumerate(d["layers"]):
            t = ld["type"]
            name = ld.get("name", f"{t}{i}")
            if t not in LAYER_TYPES:
                raise ModelError(f"layer {name!r}: unsupported layer type {t!r} "
                                 f"(supported: {', '.join(sorted(LAYER_TYPES))})")
            out = int(ld["out"]) if t == "linear" else None
            if out is not None and out < 1:
                raise ModelError(f"layer {name!r}: out must be ≥ 1")
            layers.append(Layer(t, name, out))
        spec = ModelSpec(name=d["name"], input=tuple(int(x) for x in d["input"]),
                         classes=int(d["classes"]), layers=tuple(layers), loss=d["loss"],
                         description=d.get("description", ""))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"malformed model description: {e!r}") from e
    if spec.loss not in LOSSES:
        raise ModelError(f"unsupported loss {spec.loss!r} (supported: {', '.join(sorted(LOSSES))})")
    if len(spec.input) != 1:
        raise ModelError(f"input shape {spec.input}: this runtime takes flat feature vectors")
    if not layers or spec.shapes()[-1] != (spec.classes,):
        raise ModelError(f"the last layer must produce {spec.classes} logits, got {spec.shapes()[-1]}")
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise ModelError("layer names must be unique")
    return spec


def init_params(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """PyTorch-style initial parameters: {"fc1.weight": [out, in], "fc1.bias": [out], ...}."""
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for layer, shape_in in zip(spec.layers, spec.shapes()):
        if layer.type != "linear":
            continue
        fan_in = shape_in[0]
        bound = 1.0 / np.sqrt(fan_in)
        params[f"{layer.name}.weight"] = rng.uniform(-bound, bound, (layer.out, fan_in)).astype(np.float32)
        params[f"{layer.name}.bias"] = rng.uniform(-bound, bound, (layer.out,)).astype(np.float32)
    return params
