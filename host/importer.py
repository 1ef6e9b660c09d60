"""PyTorch and ONNX models ↔ EdgeProp model descriptions.

- `to_torch(spec, params)`: the PyTorch module that computes what the device
  computes (`nn.Sequential` with one child per layer, named as the layer, so
  its state_dict keys are our parameter names). Golden tests and pretraining
  use it.
- `from_torch(module, input_shape, classes)`: trace a module with torch.fx and
  map each step to a layer rule (`host.layers`: `torch_types`, `from_torch`),
  residual additions and channel concatenations included; anything else is
  refused with the op and the layer named.
- `from_onnx(path, classes)`: the same for an ONNX graph (opset ≥ 13).
- `load_source(text, ...)`: what `host compile --model` takes: `file.py:factory`
  (a function or class returning an nn.Module) or `file.onnx`.

Every import is checked numerically: the imported model, rebuilt with
`to_torch`, must reproduce the source model's output on a random batch.
PyTorch (and onnx for ONNX files) are optional extras: `pip install -e '.[torch]'`.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

from .errors import ModelError, ToolError
from . import layers as layer_rules
from .layers import RULES, Layer, rule_for
from .zoo import INPUT, MODELS_DIR, ModelSpec, init_params, load_model, load_weights, parse_model

#: functional forms fx records as call_function / call_method, by layer type
_FUNCTIONS = {"relu": "relu", "flatten": "flatten", "gelu": "gelu", "sigmoid": "sigmoid",
              "tanh": "tanh", "elu": "elu", "relu6": "relu6", "view": "flatten", "reshape": "flatten",
              "add": "add", "iadd": "add", "cat": "concat"}


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ToolError("PyTorch is not installed, and model import and golden tests need it",
                        hint="install the extra into the project venv: .venv/bin/pip install -e '.[torch]'") from e
    return torch


def to_torch(spec: ModelSpec, params: dict[str, np.ndarray] | None = None):
    """A PyTorch module computing `spec` (one child per layer, named as the layer,
    following each layer's inputs), with `params` loaded (float32)."""
    torch = _torch()

    class SpecModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.order = [(layer.name, layer.inputs) for layer in spec.layers]
            for layer, shape_in in zip(spec.layers, spec.in_shapes()):
                self.add_module(layer.name, rule_for(layer.type).torch_module(layer, shape_in))

        def forward(self, x):
            out = {INPUT: x}
            for name, inputs in self.order:
                out[name] = getattr(self, name)(*[out[src] for src in inputs])
            return out[self.order[-1][0]]

    model = SpecModule()
    if params is not None:
        state = model.state_dict()
        missing = set(state) - set(params) - {k for k in state if k.endswith("num_batches_tracked")}
        if missing:
            raise ModelError(f"no values for {sorted(missing)}")
        for k in state:
            if k in params:
                state[k] = torch.from_numpy(np.ascontiguousarray(params[k], np.float32)).reshape(state[k].shape)
        model.load_state_dict(state)
    return model


def _layer_name(target: str, used: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", target) or "layer"
    if name[0].isdigit():  # nn.Sequential children are "0", "1", ...
        name = f"layer_{name}"
    base, i = name, 1
    while name in used:
        i += 1
        name = f"{base}_{i}"
    used.add(name)
    return name


def _rule_for_module(module) -> str:
    cls = type(module).__name__
    for t, rule in RULES.items():
        if cls in rule.torch_types:
            return t
    raise ModelError(f"unsupported PyTorch module {cls}")


def from_torch(module, input_shape: tuple[int, ...], classes: int, *, name: str = "imported",
               loss: str = "softmax_cross_entropy", check: bool = True) -> tuple[ModelSpec, dict[str, np.ndarray]]:
    """Trace `module` (torch.fx) into a model description and its parameters."""
    torch = _torch()
    import torch.fx as fx

    module = module.eval()
    try:
        gm = fx.GraphModule(module, _LayerTracer().trace(module))
    except Exception as e:  # noqa: BLE001 - fx raises many kinds; say what to do
        raise ModelError(f"torch.fx could not trace the model: {e}",
                         hint="import models without data-dependent control flow") from e
    layers: list[dict] = []
    params: dict[str, np.ndarray] = {}
    used: set[str] = {INPUT}
    names: dict = {}   # fx node → layer name (INPUT for the placeholder)
    shape_nodes: set = set()
    shapes = {INPUT: tuple(input_shape)}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if names:
                raise ModelError("models with several inputs are not supported")
            names[node] = INPUT
            continue
        if node.op == "output":
            if not layers or names.get(node.args[0]) != layers[-1]["name"]:
                raise ModelError("the model output must be its last step")
            break
        where = f"step {node.name!r} ({node.op} {getattr(node.target, '__name__', node.target)})"
        if _is_shape_query(node, shape_nodes):
            shape_nodes.add(node)  # x.size(0), x.shape[0]: feeds a reshape's batch dimension
            continue
        if node.op == "get_attr":
            raise ModelError(f"{where}: direct use of a tensor attribute is not supported")
        fname = getattr(node.target, "__name__", str(node.target))
        args = list(node.args)
        if fname == "cat":  # torch.cat([a, b], dim)
            dim = node.kwargs.get("dim", args[1] if len(args) > 1 else 0)
            args = list(args[0]) if isinstance(args[0], (list, tuple)) else args
            if dim != 1 or len(args) != 2:
                raise ModelError(f"{where}: only torch.cat of two tensors along dim 1 is supported")
        inputs = [a for a in args if isinstance(a, fx.Node) and a not in shape_nodes]
        if any(a not in names for a in inputs) or not inputs:
            raise ModelError(f"{where}: reads something that is not the input or a layer's output")
        srcs = [names[a] for a in inputs]
        if node.op == "call_module":
            sub = gm.get_submodule(node.target)
            try:
                t = _rule_for_module(sub)
                attrs = rule_for(t).from_torch(sub, shapes[srcs[0]])
            except ModelError as e:
                raise ModelError(f"layer {node.target!r}: {e}") from e
            layer = Layer(t, _layer_name(node.target, used), attrs, tuple(srcs))
            rule = rule_for(t)
            shape_in = shapes[srcs[0]]
            wanted = {**rule.param_shapes(layer, shape_in), **rule.buffer_shapes(layer, shape_in)}
            state = sub.state_dict()
            for local, pshape in wanted.items():
                if local not in state:
                    raise ModelError(f"layer {node.target!r}: no {local} in its state_dict")
                params[f"{layer.name}.{local}"] = state[local].detach().cpu().numpy().astype(np.float32).reshape(pshape)
        else:  # call_function / call_method
            t = _FUNCTIONS.get(fname)
            if t is None or t not in RULES:
                raise ModelError(f"{where}: unsupported op {fname!r}")
            if rule_for(t).n_inputs != len(srcs):
                raise ModelError(f"{where}: {fname} of {len(srcs)} tensors is not supported")
            attrs = {}
            if t == "flatten" and not _is_flatten(node, fname):
                if fname not in ("view", "reshape"):
                    raise ModelError(f"{where}: only flattening to (batch, -1) is supported")
                t, attrs = "reshape", {"shape": _reshape_target(node, shapes[srcs[0]], where)}
            if t == "add" and (node.kwargs.get("alpha", 1) != 1 or len(args) != 2):
                raise ModelError(f"{where}: only a + b is supported")
            if t == "elu":
                attrs = {"alpha": float(node.kwargs.get("alpha", args[1] if len(args) > 1 else 1.0))}
            layer = Layer(t, _layer_name(fname, used), attrs, tuple(srcs))
        layers.append({"type": layer.type, "name": layer.name, "inputs": list(layer.inputs), **layer.attrs})
        rule = rule_for(layer.type)
        shape_in = shapes[srcs[0]] if rule.n_inputs == 1 else [shapes[s_] for s_ in srcs]
        shapes[layer.name] = rule.out_shape(layer, shape_in)
        names[node] = layer.name
    spec = parse_model({"name": name, "input": list(input_shape), "classes": classes, "layers": layers,
                        "loss": loss, "description": f"imported from {type(module).__name__}"})
    if check:
        _check_same(module, spec, params, input_shape, torch)
    return spec, params


def _LayerTracer():  # noqa: N802 - built on first use: torch is optional
    import torch.fx as fx

    known = {name for rule in RULES.values() for name in rule.torch_types}

    class LayerTracer(fx.Tracer):
        """torch.fx keeps torch.nn modules whole; ours (SeqPool, SelfAttention, ...)
        are layers too, so they stay whole rather than being traced inside."""

        def is_leaf_module(self, m, qualname):
            return type(m).__name__ in known or super().is_leaf_module(m, qualname)

    return LayerTracer()


def _is_flatten(node, fname: str) -> bool:
    args = list(node.args[1:])
    if fname == "flatten":
        start = node.kwargs.get("start_dim", args[0] if args else 0)
        end = node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
        return start == 1 and end == -1
    # x.view(x.size(0), -1) or x.reshape(n, -1): the last argument -1
    return len(args) == 2 and args[1] == -1


def _is_shape_query(node, shape_nodes: set) -> bool:
    """x.size(...), x.shape and x.shape[i]: values about a tensor's shape, not tensors."""
    if node.op == "call_method" and node.target == "size":
        return True
    if node.op == "call_function" and getattr(node.target, "__name__", "") == "getattr":
        return len(node.args) > 1 and node.args[1] == "shape"
    if node.op == "call_function" and getattr(node.target, "__name__", "") == "getitem":
        return bool(node.args) and node.args[0] in shape_nodes
    return False


def _reshape_target(node, in_shape, where: str) -> list[int]:
    """x.view(n, a, b, ...) / x.reshape(...) → the per-sample shape [a, b, ...]."""
    args = list(node.args[1:])
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = list(args[0])
    dims = args[1:]
    if not dims or not all(isinstance(d, int) for d in dims) or sum(d == -1 for d in dims) > 1:
        raise ModelError(f"{where}: reshape to {args} is not (batch, fixed dims...)")
    total = int(np.prod(in_shape))
    known = int(np.prod([d for d in dims if d != -1]))
    return [total // known if d == -1 else d for d in dims]


def _check_same(module, spec: ModelSpec, params: dict[str, np.ndarray], input_shape, torch) -> None:
    """The imported model must compute what the source computes (eval mode)."""
    rebuilt = to_torch(spec, params).eval()
    x = torch.randn((3, *input_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = module.eval()(x), rebuilt(x)
    if want.shape != got.shape or not torch.allclose(want, got, rtol=1e-4, atol=1e-5):
        raise ModelError("the imported model does not reproduce the source model's output",
                         hint="a layer setting was not carried over; please report the model")


# -- ONNX ---------------------------------------------------------------------------

def from_onnx(path: str | Path, input_shape: tuple[int, ...] | None = None, classes: int | None = None, *,
              name: str | None = None, loss: str = "softmax_cross_entropy") -> tuple[ModelSpec, dict[str, np.ndarray]]:
    """Map an ONNX graph (a chain of supported ops) onto layers; see `host.layers.ONNX_OPS`."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise ToolError("the onnx package is not installed", hint=".venv/bin/pip install -e '.[torch]'") from e
    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{path}: not a readable ONNX file ({e})") from e
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in g.initializer}
    real_inputs = [i for i in g.input if i.name not in inits]
    if len(real_inputs) != 1:
        raise ModelError(f"{path}: want exactly one graph input, found {len(real_inputs)}")
    dims = [d.dim_value for d in real_inputs[0].type.tensor_type.shape.dim]
    if input_shape is None:
        if len(dims) < 2 or any(d <= 0 for d in dims[1:]):
            raise ModelError(f"{path}: the input shape {dims} is not fixed", hint="pass --input-shape")
        input_shape = tuple(dims[1:])
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node if n.op_type == "Constant"}
    layers, params, used = [], {}, set()
    shape = tuple(input_shape)
    prev = real_inputs[0].name
    for node in g.node:
        if node.op_type == "Constant":
            continue
        where = f"ONNX node {node.name or node.op_type!r} ({node.op_type})"
        data_in = [i for i in node.input if i and i not in inits and i not in consts]
        if data_in != [prev]:
            raise ModelError(f"{where}: the model is not a chain of layers")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in ("Identity", "Dropout"):
            prev = node.output[0]
            continue
        mapper = layer_rules.ONNX_OPS.get(node.op_type)
        if mapper is None:
            raise ModelError(f"{where}: unsupported op {node.op_type}")
        weights = [inits.get(i, consts.get(i)) for i in node.input[1:]]
        try:
            t, lattrs, lparams = mapper(attrs, weights, shape)
        except (ModelError, KeyError, ValueError, TypeError) as e:
            raise ModelError(f"{where}: {e}") from e
        if t not in RULES:
            raise ModelError(f"{where}: layer type {t} is not available in this build")
        lname = _layer_name(node.name or node.op_type.lower(), used)
        layer = Layer(t, lname, lattrs)
        layers.append({"type": t, "name": lname, **lattrs})
        for local, v in lparams.items():
            params[f"{lname}.{local}"] = np.asarray(v, np.float32)
        shape = rule_for(t).out_shape(layer, shape)
        prev = node.output[0]
    if classes is None:
        classes = int(np.prod(shape))
    spec = parse_model({"name": name or Path(path).stem, "input": list(input_shape), "classes": classes,
                        "layers": layers, "loss": loss, "description": f"imported from {Path(path).name}"})
    missing = set(spec.param_shapes()) - set(params)
    if missing:
        raise ModelError(f"{path}: no values for {sorted(missing)}")
    return spec, params


def register_onnx(op_type: str, mapper) -> None:
    """Map an ONNX op onto a layer (see host.layers.register_onnx, where rule modules do it)."""
    layer_rules.register_onnx(op_type, mapper)


# -- what `host compile --model` takes ------------------------------------------------

def load_source(text: str, input_shape: tuple[int, ...] | None = None, classes: int | None = None,
                loss: str = "softmax_cross_entropy") -> tuple[ModelSpec, dict[str, np.ndarray]]:
    """`file.py:factory` (an nn.Module factory) or `file.onnx` → (spec, params)."""
    if text.endswith(".onnx"):
        return from_onnx(text, input_shape, classes, loss=loss)
    path, _, attr = text.partition(":")
    if not path.endswith(".py") or not attr:
        raise ModelError(f"{text!r}: want file.py:factory or file.onnx")
    if not Path(path).is_file():
        raise ModelError(f"no file {path}")
    if input_shape is None or classes is None:
        raise ModelError("importing a PyTorch module needs --input-shape and --classes")
    mod_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    mod = importlib.util.module_from_spec(mod_spec)
    _torch()
    mod_spec.loader.exec_module(mod)
    factory = getattr(mod, attr, None)
    if factory is None:
        raise ModelError(f"{path} has no {attr!r}")
    return from_torch(factory(), input_shape, classes, name=attr, loss=loss)


def resolve_model(text: str, seed: int = 0, input_shape: tuple[int, ...] | None = None,
                  classes: int | None = None) -> tuple[ModelSpec, dict[str, np.ndarray]]:
    """What `--model` names → (description, initial parameters).

    A built-in name starts from its pretrained weights (models/<name>.npz) when
    the repo ships them, otherwise, like a .json description, from PyTorch-style
    random weights drawn from `seed`; `file.py:factory` (a PyTorch module) and
    `file.onnx` bring their own weights (host.importer, needs the torch extra).
    """
    if text.endswith(".onnx") or ".py:" in text:
        return load_source(text, input_shape, classes)
    spec = load_model(text)
    weights = MODELS_DIR / f"{text}.npz"
    if not Path(text).suffix and weights.is_file():
        return spec, load_weights(spec, weights)
    return spec, init_params(spec, seed)
