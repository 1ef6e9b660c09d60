"""Model descriptions: the built-in zoo in `models/*.json`, or a user's JSON file.

A model description is a layer list; a layer reads the previous layer's output
unless it names its `inputs` (earlier layers or "input"), which makes residual
connections and concatenations:

    {"name": "mlp-digits", "input": [64], "classes": 10,
     "layers": [{"type": "linear", "name": "fc1", "out": 32},
                {"type": "relu"},
                {"type": "linear", "name": "fc2", "out": 10}],
     "loss": "softmax_cross_entropy"}

Each layer type and its attributes are defined by its rule in `host.layers`;
the loss is `softmax_cross_entropy` (classifiers) or `mse` (autoencoders, which
reproduce their input). `init_params` draws the initial parameters the way the
matching PyTorch modules do, from a seed, so a run is reproducible and a
PyTorch user sees the same starting distribution.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import ids
from .errors import ModelError
from .layers import Layer, rule_for

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"

LOSSES = {"softmax_cross_entropy", "mse"}
#: the name a layer's "inputs" use for the model input
INPUT = "input"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input: tuple[int, ...]
    classes: int
    layers: tuple[Layer, ...]
    loss: str
    description: str = ""
    #: the dataset the model is made for (host.datasets): what `host plan --all` and the
    #: benchmark score a sparse choice on, and what pretraining uses by default
    dataset: str = ""

    def shapes(self) -> list[tuple[int, ...]]:
        """Per-sample activation shape after each layer (index 0 = the input)."""
        out = {INPUT: self.input}
        for layer in self.layers:
            out[layer.name] = rule_for(layer.type).out_shape(layer, self._in_shape(layer, out))
        return [self.input] + [out[layer.name] for layer in self.layers]

    def in_shapes(self) -> list:
        """Per layer, its input shape (a list of shapes for layers with several inputs)."""
        out, res = {INPUT: self.input}, []
        for layer in self.layers:
            res.append(self._in_shape(layer, out))
            out[layer.name] = rule_for(layer.type).out_shape(layer, res[-1])
        return res

    @staticmethod
    def _in_shape(layer: Layer, out: dict):
        shapes = [out[src] for src in layer.inputs]
        return shapes[0] if rule_for(layer.type).n_inputs == 1 else shapes

    def param_shapes(self, buffers: bool = True) -> dict[str, tuple[int, ...]]:
        """Every parameter (and buffer, unless buffers=False), "layer.local" → shape, in layer order."""
        out: dict[str, tuple[int, ...]] = {}
        for layer, shape_in in zip(self.layers, self.in_shapes()):
            rule = rule_for(layer.type)
            shapes = dict(rule.param_shapes(layer, shape_in))
            if buffers:
                shapes.update(rule.buffer_shapes(layer, shape_in))
            for local, shape in shapes.items():
                out[f"{layer.name}.{local}"] = tuple(shape)
        return out

    def buffer_names(self) -> set[str]:
        return set(self.param_shapes()) - set(self.param_shapes(buffers=False))


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
            rule = rule_for(t, name)
            try:
                attrs = rule.parse(ld)
            except ModelError as e:
                raise ModelError(f"layer {name!r}: {e}") from e
            inputs = ld.get("inputs", [layers[-1].name if layers else INPUT])
            if isinstance(inputs, str):
                inputs = [inputs]
            known = {INPUT} | {layer.name for layer in layers}
            if len(inputs) != rule.n_inputs or any(src not in known for src in inputs):
                raise ModelError(f"layer {name!r}: inputs {inputs} must name {rule.n_inputs} earlier "
                                 f"layer(s) or {INPUT!r}")
            layers.append(Layer(t, name, attrs, tuple(inputs)))
        spec = ModelSpec(name=d["name"], input=tuple(int(x) for x in d["input"]),
                         classes=int(d["classes"]), layers=tuple(layers), loss=d["loss"],
                         description=d.get("description", ""), dataset=d.get("dataset", ""))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"malformed model description: {e!r}") from e
    if spec.loss not in LOSSES:
        raise ModelError(f"unsupported loss {spec.loss!r} (supported: {', '.join(sorted(LOSSES))})")
    if not 1 <= len(spec.input) <= ids.MAX_RANK or min(spec.input) < 1:
        raise ModelError(f"input shape {spec.input}: want 1 to {ids.MAX_RANK} dimensions, each ≥ 1")
    if spec.classes < 2:
        raise ModelError(f"classes = {spec.classes}: want at least 2")
    names = [layer.name for layer in layers]
    if bad := [n for n in names if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n)]:
        raise ModelError(f"layer names {bad}: use letters, digits and _ (they name parameters, e.g. fc1.weight)")
    if len(set(names)) != len(names):
        raise ModelError("layer names must be unique")
    if not layers:
        raise ModelError("a model needs at least one layer")
    if INPUT in names:
        raise ModelError(f"{INPUT!r} names the model input; give the layer another name")
    used = {src for layer in layers for src in layer.inputs}
    if dead := [n for n in names[:-1] if n not in used]:
        raise ModelError(f"the outputs of layers {dead} are not used by any layer")
    try:
        shapes = spec.shapes()
    except ModelError as e:
        raise ModelError(f"model {spec.name!r}: {e}") from e
    last = int(np.prod(shapes[-1]))
    if spec.loss == "softmax_cross_entropy" and last != spec.classes:
        raise ModelError(f"the last layer must produce {spec.classes} logits, got {shapes[-1]}")
    if spec.loss == "mse" and last != int(np.prod(spec.input)):
        raise ModelError(f"an mse (autoencoder) model must reproduce its input {spec.input}, got {shapes[-1]}")
    return spec


def init_params(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """PyTorch-style initial parameters: {"fc1.weight": [out, in], "fc1.bias": [out], ...}."""
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for layer, shape_in in zip(spec.layers, spec.in_shapes()):
        for local, value in rule_for(layer.type).init_params(layer, shape_in, rng).items():
            params[f"{layer.name}.{local}"] = np.ascontiguousarray(value, np.float32)
    return params


def load_weights(spec: ModelSpec, path: Path) -> dict[str, np.ndarray]:
    """Pretrained parameters and buffers (`python -m host.pretrain` writes them), checked
    against the model description."""
    with np.load(path) as f:
        params = {k: f[k].astype(np.float32) for k in f.files if not k.startswith("__")}
    want = spec.param_shapes()
    if set(params) != set(want) or any(params[k].shape != want[k] for k in want):
        raise ModelError(f"{path}: its arrays do not match model {spec.name!r}",
                         hint=f"re-run: python -m host.pretrain {spec.name} --dataset ...")
    return params
