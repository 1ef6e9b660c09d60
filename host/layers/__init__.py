"""Layer rules: what each layer type of a model description becomes in the training graph.

A model description (`host.zoo`) is a list of layers; each layer type has one
`LayerRule` here, registered by name. A rule knows, for its type:

- `parse(d)`: the layer's attributes from its JSON object, checked;
- `out_shape(layer, in_shape)`: the per-sample output shape;
- `param_shapes(layer, in_shape)`: its parameters (local names → shapes, named
  as in the PyTorch module's state_dict), `buffer_shapes` its persistent
  non-trained state (batch-norm running statistics), and `init_params` the
  PyTorch-style initial values of both;
- `forward(e, layer, x, train)`: the forward nodes (through the `Emitter` `e`),
  returning the output tensor and whatever backward needs (`saved`);
- `backward(e, layer, saved, dy, need_dx)`: the gradient nodes — parameter
  gradients and their optimizer updates (`e.update`) for trainable parameters,
  and the input gradient only if `need_dx` (the first trained layer skips it);
  which parameters train, carry adapters or update only some channels is the
  strategy's (host.strategies), asked through the emitter (`is_trainable`,
  `lora_rank`, `channel_index`); `e.bias_grad` and `e.update(..., rows=...)` do
  the bias-only and sparse parts;
- `torch_module(layer, in_shape)`: the PyTorch module computing the same thing
  (golden tests and pretraining build models from it), and `torch_types` /
  `from_torch(module)` for importing a PyTorch model (`host.importer`).
  PyTorch is imported inside these methods only: the host core does not need it.

The compiler (`host.compiler`) walks the layers and calls the rules; it never
knows a layer type. Rules for a family of ops live in one module of this package
and register themselves when imported (see the bottom of this file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import ModelError
from ..graph import Graph, Node, Tensor
from ..ids import DType, OpCode, OpFn, TensorFlag

Shape = tuple[int, ...]
B = TensorFlag.BATCHED


@dataclass(frozen=True)
class Layer:
    type: str
    name: str
    attrs: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)
    #: names of the layers (or "input") whose outputs this layer reads
    inputs: tuple[str, ...] = ()

    def __getitem__(self, key: str) -> Any:
        return self.attrs[key]


class LayerRule:
    """Base rule: a layer without parameters whose output has the input's shape."""

    type: str = ""
    #: the layer computes something else in training than in evaluation
    #: (batch statistics, dropout): the compiler then emits a separate eval forward
    mode_dependent: bool = False
    #: the rule has an int8 form (host.layers.q8): with --dtype int8 (or mixed, when frozen)
    #: forward and backward get and give S8 tensors; rules without one get f32
    int8: bool = False
    #: the int8 form is used only where the inputs are int8 already (ReLU and the layers
    #: below: a QUANTIZE just for them would cost more than it saves)
    int8_after_int8: bool = False
    #: ... and only where every consumer runs in int8 too (batch norm, the activations,
    #: average pooling, dropout, add: their int8 output is a rounding the f32 chain would
    #: not make, worth it only where the next layer quantises anyway)
    int8_before_int8: bool = False
    #: the int8 form runs on int8 weights (linear, conv): a frozen layer keeps only those
    #: codes; the other int8 forms (batch norm) keep their f32 parameters
    int8_weights: bool = False
    #: the rule only reshapes (a view): it passes tensors of any dtype through
    any_dtype: bool = False
    #: inputs the layer reads; with more than one, forward gets a list of tensors and
    #: in_shape is a list of shapes, backward gets need_dx as a list and returns a list
    n_inputs: int = 1

    def parse(self, d: dict) -> dict[str, Any]:
        return {}

    def out_shape(self, layer: Layer, in_shape: Shape) -> Shape:
        return in_shape

    def param_shapes(self, layer: Layer, in_shape: Shape) -> dict[str, Shape]:
        return {}

    def buffer_shapes(self, layer: Layer, in_shape: Shape) -> dict[str, Shape]:
        return {}

    def init_params(self, layer: Layer, in_shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {}

    def lora_shapes(self, layer: Layer, in_shape: Shape, rank: int) -> dict[str, Shape]:
        """Low-rank adapter parameters (lora_A, lora_B) of this layer for `--strategy lora=rank`;
        {} where the rule takes no adapters."""
        return {}

    def forward(self, e: "Emitter", layer: Layer, x: int, train: bool) -> tuple[int, Any]:
        raise NotImplementedError

    def backward(self, e: "Emitter", layer: Layer, saved: Any, dy: int, need_dx: bool) -> int | None:
        raise NotImplementedError

    #: names of the torch.nn classes `from_torch` imports (e.g. ("Linear",))
    torch_types: tuple[str, ...] = ()

    def torch_module(self, layer: Layer, in_shape: Shape):
        raise NotImplementedError(f"{self.type}: no PyTorch equivalent")

    def from_torch(self, module, in_shape: Shape) -> dict[str, Any]:
        """The layer attributes of a PyTorch module of one of `torch_types`; raise
        ModelError naming the setting this runtime does not support."""
        return {}


RULES: dict[str, LayerRule] = {}


def register(rule_cls: type[LayerRule]) -> type[LayerRule]:
    rule = rule_cls()
    if not rule.type or rule.type in RULES:
        raise ValueError(f"layer rule {rule_cls.__name__}: missing or duplicate type {rule.type!r}")
    RULES[rule.type] = rule
    return rule_cls


def rule_for(layer_type: str, layer_name: str = "") -> LayerRule:
    rule = RULES.get(layer_type)
    if rule is None:
        where = f"layer {layer_name!r}: " if layer_name else ""
        raise ModelError(f"{where}unsupported layer type {layer_type!r} "
                         f"(supported: {', '.join(sorted(RULES))})")
    return rule


#: ONNX op type → mapper(attrs, weights, in_shape) → (layer type, layer attrs,
#: {local param name: array}); the rule modules register theirs, host.importer reads it
ONNX_OPS: dict[str, Callable] = {}


def register_onnx(op_type: str, mapper: Callable) -> None:
    if op_type in ONNX_OPS:
        raise ValueError(f"ONNX op {op_type} is mapped twice")
    ONNX_OPS[op_type] = mapper


# -- attribute parsing helpers for rules ---------------------------------------------

def int_attr(d: dict, key: str, default: int | None = None, lo: int = 1, hi: int = 0xFFFF) -> int:
    v = d.get(key, default)
    if v is None:
        raise ModelError(f"missing attribute {key!r}")
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ModelError(f"attribute {key!r} = {v!r}: want an integer in {lo}..{hi}")
    return v


def pair_attr(d: dict, key: str, default: int | tuple[int, int] | None = None, lo: int = 1) -> tuple[int, int]:
    """An int or a pair of ints (height, width), as PyTorch's kernel_size/stride take."""
    v = d.get(key, default)
    if v is None:
        raise ModelError(f"missing attribute {key!r}")
    pair = (v, v) if isinstance(v, int) and not isinstance(v, bool) else v
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
        raise ModelError(f"attribute {key!r} = {v!r}: want an integer or [height, width]")
    return (int_attr({key: pair[0]}, key, lo=lo), int_attr({key: pair[1]}, key, lo=lo))


def float_attr(d: dict, key: str, default: float | None = None, lo: float = -np.inf, hi: float = np.inf) -> float:
    v = d.get(key, default)
    if v is None:
        raise ModelError(f"missing attribute {key!r}")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (np.isfinite(v) and lo <= v <= hi):
        raise ModelError(f"attribute {key!r} = {v!r}: want a number in [{lo}, {hi}]")
    return float(v)


def uniform(rng: np.random.Generator, bound: float, shape: Shape) -> np.ndarray:
    return rng.uniform(-bound, bound, shape).astype(np.float32)


# -- the emitter ---------------------------------------------------------------------

class Emitter:
    """What a rule uses to add tensors and nodes to the graph being compiled."""

    def __init__(self, g: Graph, update: Callable[["Emitter", int, int, str], None]):
        self.g = g
        self._update = update
        #: tensor index → "layer.local" for every model parameter (READ_WEIGHTS names)
        self.param_names: dict[int, str] = {}
        #: "layer.local" → tensor index
        self.params: dict[str, int] = {}
        self._current = ""
        #: from the strategy (host.strategies.Selection): adapters and sparse channels
        self.lora: dict[str, int] = {}
        self.channels: dict[str, tuple[int, ...]] = {}
        self._indices: dict[tuple[str, int], int] = {}
        #: int8 (docs/ops/int8.md): the layers that run in int8, each S8 activation's
        #: I32 [1] exponent tensor, and the conversions made so far (one per tensor)
        self.q8_layers: set[str] = set()
        #: int8 convs keep one sample's int32 sums and make them twice (TrainConfig.int8_sums)
        self.q8_sample_sums = False
        self.qexp: dict[int, int] = {}
        self._converted: dict[tuple[int, str], int] = {}
        self._rewrites: dict[int, int] = {}  # t → times t was written again after a conversion
        #: f32 values of every parameter by name (int8 layers quantise them), int8 tensors per layer
        self.values: dict[str, np.ndarray] = {}
        self.q8_cache: dict = {}
        #: int8 layers whose codes train in place by SGD_Q8 (TrainConfig.int8_updates "sr"),
        #: its learning rate, and the one xorshift32 state all their SGD_Q8 nodes share
        self.q8_sr: set[str] = set()
        self.lr = 0.0
        self.q8_rng: int | None = None

    def begin(self, layer: Layer | str) -> None:
        """Name the layer (or section, e.g. "loss") the next tensors and nodes belong to."""
        self._current = layer if isinstance(layer, str) else layer.name

    def dims(self, t: int) -> Shape:
        return self.g.tensors[t].dims

    def act(self, local: str, dims: Shape) -> int:
        """A batched f32 activation of the current layer."""
        return self.g.add_tensor(Tensor(f"{self._current}.{local}", tuple(dims), flags=B))

    def grad(self, local: str, dims: Shape) -> int:
        """A batched f32 gradient of an activation."""
        return self.g.add_tensor(Tensor(f"{self._current}.{local}", tuple(dims), flags=B | TensorFlag.GRAD))

    def view(self, t: int, local: str, dims: Shape) -> int:
        """Tensor t under another shape with as many elements: the same arena span."""
        base = self.g.tensors[t]
        assert int(np.prod(dims)) == base.elems, (dims, base.dims)
        root = t if base.alias_of is None else base.alias_of
        flags = base.flags & ~(TensorFlag.INPUT | TensorFlag.LABEL)  # roles stay on the base
        v = self.g.add_tensor(Tensor(f"{self._current}.{local}", tuple(dims), base.dtype, flags, alias_of=root))
        if t in self.qexp:  # an int8 view keeps its exponent
            self.qexp[v] = self.qexp[t]
        return v

    def saved(self, local: str, dims: Shape, batched: bool = False, dtype: DType = DType.F32) -> int:
        """State a forward writes for its backward (batch statistics, masks)."""
        return self.g.add_tensor(Tensor(f"{self._current}.{local}", tuple(dims), dtype,
                                        flags=B if batched else TensorFlag(0)))

    def scratch(self, local: str, elems: int) -> int:
        """Temporary f32 memory one node needs (its lifetime is that node)."""
        return self.g.add_tensor(Tensor(f"{self._current}.{local}", (max(int(elems), 1),)))

    def param(self, local: str) -> int:
        """The current layer's parameter `local` (created by the compiler from param_shapes)."""
        return self.params[f"{self._current}.{local}"]

    def is_trainable(self, p: int) -> bool:
        return bool(self.g.tensors[p].flags & TensorFlag.TRAINABLE)

    def param_grad(self, p: int, rows: int | None = None) -> int:
        """The gradient of parameter p; of only `rows` of its first-axis rows for a sparse update."""
        t = self.g.tensors[p]
        dims = t.dims if rows is None else (rows, *t.dims[1:])
        return self.g.add_tensor(Tensor(f"{t.name}.grad", dims, flags=TensorFlag.GRAD))

    def state(self, local: str, dims: Shape, init: np.ndarray | None = None) -> int:
        """Persistent, non-trainable state (running statistics, optimizer moments)."""
        return self.g.add_tensor(Tensor(f"{local}" if "." in local else f"{self._current}.{local}",
                                        tuple(dims), flags=TensorFlag.PARAM,
                                        init=None if init is None else np.asarray(init, np.float32)))

    def node(self, op: OpCode, fn: OpFn, ins: list[int], outs: list[int],
             iattrs: tuple[int, ...] = (), fattrs: tuple[float, ...] = ()) -> None:
        self.g.add_node(Node(op, fn, list(ins), list(outs), tuple(iattrs), tuple(fattrs), layer=self._current))
        for t in outs:  # a tensor written again (ACCUMULATE): its conversions made so far are stale
            stale = [k for k, v in self._converted.items() if t in (k[0], v)]
            for key in stale:
                del self._converted[key]
            if stale:
                self._rewrites[t] = self._rewrites.get(t, 0) + 1

    def update(self, p: int, gp: int, rows: tuple[int, int, int] | None = None, then=None) -> None:
        """The optimizer step of parameter p from its gradient gp (as the config says).
        rows = (index tensor, C, inner): gp holds only the channels the index names
        (a sparse update): p's rows are gathered, stepped and scattered back. then(e):
        nodes that must follow the step (an int8 layer requantises its weights)."""
        self._update(self, p, gp, self._current, rows, then)

    def lora_rank(self, layer: Layer) -> int:
        """The adapter rank of this layer (0: none)."""
        return self.lora.get(layer.name, 0)

    def channel_index(self, layer: Layer, divide: int = 1) -> int | None:
        """The i32 index tensor of the output channels a sparse update trains in this layer
        (each divided by `divide`: a depthwise conv's input channels), or None: all of them."""
        chosen = self.channels.get(layer.name)
        if chosen is None:
            return None
        key = (layer.name, divide)
        if key not in self._indices:
            values = np.asarray([c // divide for c in chosen], np.int32)
            suffix = "channels" if divide == 1 else f"channels_div{divide}"
            self._indices[key] = self.g.add_tensor(Tensor(f"{layer.name}.{suffix}", (len(values),), DType.I32,
                                                          TensorFlag.PARAM, init=values))
        return self._indices[key]

    def gather(self, x: int, idx: int, channels: int, inner: int, local: str,
               flags: TensorFlag | None = None) -> int:
        """x's channels idx (x's elements as [outer][channels][inner]): a new tensor (with
        x's batching, or `flags`)."""
        t = self.g.tensors[x]
        k = self.g.tensors[idx].elems
        axis = next(a for a in range(len(t.dims)) if t.dims[a] == channels
                    and int(np.prod(t.dims[a + 1:])) == inner)
        dims = (*t.dims[:axis], k, *t.dims[axis + 1:])
        if flags is None:
            flags = t.flags & (TensorFlag.BATCHED | TensorFlag.GRAD)
        y = self.g.add_tensor(Tensor(f"{self._current}.{local}", tuple(dims), t.dtype, flags))
        self.node(OpCode.GATHER, OpFn.FW, [x, idx], [y], iattrs=split_attrs(channels, inner))
        return y

    def bias_grad(self, b: int, dy: int, channels: int, inner: int) -> None:
        """A bias's gradient alone (dy summed over all but the channel axis) and its update."""
        db = self.param_grad(b)
        self.node(OpCode.BIAS_GRAD, OpFn.FW, [dy], [db], iattrs=split_attrs(channels, inner))
        self.update(b, db)


    # -- int8 -----------------------------------------------------------------------

    def new_pass(self) -> None:
        """Forget the conversions made so far: the next forward is a separate pass."""
        self._converted.clear()

    def is_q8(self, layer: Layer) -> bool:
        return layer.name in self.q8_layers

    def act_q8(self, local: str, dims: Shape, grad: bool = False, exp: int | None = None) -> int:
        """A batched S8 activation (or gradient) of the current layer and its exponent: a new
        one, or `exp` (codes that only move, as a transpose's, keep their exponent)."""
        flags = B | (TensorFlag.GRAD if grad else TensorFlag(0))
        q = self.g.add_tensor(Tensor(f"{self._current}.{local}", tuple(dims), DType.S8, flags))
        self.qexp[q] = exp if exp is not None else self.g.add_tensor(
            Tensor(f"{self._current}.{local}.exp", (1,), DType.I32))
        return q

    def q8_node(self, op: OpCode, fn: OpFn, ins: list[int], local: str, dims: Shape, *, grad: bool = False,
                more_ins: tuple[int, ...] = (), more_outs: tuple[int, ...] = (),
                scratch: tuple[str, int] | None = None,
                iattrs: tuple[int, ...] = (), fattrs: tuple[float, ...] = ()) -> tuple[int, list[int]]:
        """A node of an int8 form: each of `ins` as int8 (to_q8) followed by its exponent, then
        more_ins; out a new S8 tensor `local` of `dims` (a gradient with `grad`) and its
        exponent, then more_outs, then, with scratch = (local, bytes), a scratch_bytes tensor.
        Returns the output and the int8 inputs."""
        xs = [self.to_q8(t) for t in ins]
        y = self.act_q8(local, dims, grad)
        outs = [y, self.qexp[y], *more_outs] + ([self.scratch_bytes(*scratch)] if scratch else [])
        self.node(op, fn, [v for x in xs for v in (x, self.qexp[x])] + list(more_ins), outs, iattrs=iattrs,
                  fattrs=fattrs)
        return y, xs

    def scratch_bytes(self, local: str, nbytes: int) -> int:
        """Temporary memory of one int8 node (its accumulators and operand rows), in bytes."""
        n = max(int(nbytes), 1)
        rows = -(-n // 0xFFFF)  # a blob dim is a u16: the fewest rows, as short as they can be
        dims = (n,) if rows == 1 else (rows, -(-n // rows))
        return self.g.add_tensor(Tensor(f"{self._current}.{local}", dims, DType.S8))

    def _fresh(self, t: int, suffix: str) -> str:
        """The name of a conversion of t: t's name + suffix, + .2, .3, ... for the conversions
        of t's later values (after an ACCUMULATE into t)."""
        k = self._rewrites.get(t, 0)
        return f"{self.g.tensors[t].name}{suffix}" + (f".{k + 1}" if k else "")

    def to_q8(self, t: int) -> int:
        """t as int8: itself, or QUANTIZE t (a dynamic exponent), once per tensor."""
        if self.g.tensors[t].dtype == DType.S8:
            return t
        key = (t, "q8")
        if key not in self._converted:
            name = self._fresh(t, ".q8")
            q = self.g.add_tensor(Tensor(name, self.g.tensors[t].dims, DType.S8,
                                         self.g.tensors[t].flags & (B | TensorFlag.GRAD)))
            self.qexp[q] = self.g.add_tensor(Tensor(f"{name}.exp", (1,), DType.I32))
            self.node(OpCode.QUANTIZE, OpFn.FW, [t], [q, self.qexp[q]])
            self._converted[key] = q
        return self._converted[key]

    def to_f32(self, t: int) -> int:
        """t as f32: itself, or DEQUANTIZE t, once per tensor."""
        if self.g.tensors[t].dtype == DType.F32:
            return t
        key = (t, "f32")
        if key not in self._converted:
            src = self.g.tensors[t]
            y = self.g.add_tensor(Tensor(self._fresh(t, ".f32"), src.dims, DType.F32, src.flags & (B | TensorFlag.GRAD)))
            self.node(OpCode.DEQUANTIZE, OpFn.FW, [t, self.qexp[t]], [y])
            self._converted[key] = y
        return self._converted[key]


def split_attrs(channels: int, inner: int) -> tuple[int, int, int]:
    """iattrs of GATHER / SCATTER / BIAS_GRAD: C, inner (low, high 16 bits)."""
    return (channels, inner & 0xFFFF, inner >> 16)


# The rule families; importing registers them.
from . import attn_optim, conv_pool, core, norm_act, q8  # noqa: E402,F401
