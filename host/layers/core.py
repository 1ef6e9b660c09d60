"""Rules for linear, relu and flatten: the ops of the first end-to-end model."""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..ids import OpCode, OpFn
from .. import quant
from . import LayerRule, Shape, int_attr, q8, register, register_onnx, uniform


def elems(shape: Shape) -> int:
    return int(np.prod(shape))


@register
class Linear(LayerRule):
    """y = x Wᵀ + b over the last dimension, as nn.Linear (W [out, in]): a [T][D]
    sample of tokens maps each token; flatten first to mix a whole sample."""

    type = "linear"

    def parse(self, d):
        return {"out": int_attr(d, "out")}

    def out_shape(self, layer, in_shape):
        return (*in_shape[:-1], layer["out"])

    def param_shapes(self, layer, in_shape):
        return {"weight": (layer["out"], in_shape[-1]), "bias": (layer["out"],)}

    def init_params(self, layer, in_shape, rng):
        # nn.Linear: kaiming_uniform(a=√5) gives U(±1/√fan_in) for the weight, same for the bias
        bound = 1.0 / np.sqrt(in_shape[-1])
        return {"weight": uniform(rng, bound, (layer["out"], in_shape[-1])),
                "bias": uniform(rng, bound, (layer["out"],))}

    def lora_shapes(self, layer, in_shape, rank):
        return {"lora_A": (rank, in_shape[-1]), "lora_B": (layer["out"], rank)}

    int8 = int8_weights = True

    def _scratch(self, e, layer, x) -> dict[str, int]:
        per = elems(e.dims(x)) // e.dims(x)[-1]  # rows of one sample
        m, k = layer["out"], e.dims(x)[-1]
        return {fn: quant.linear_scratch_bytes(fn, e.g.max_batch * per, m, k, per if e.q8_sample_sums else None)
                for fn in quant.SCRATCH_FNS}

    def forward(self, e, layer, x, train):
        if e.is_q8(layer):
            y, xq = q8.forward(e, layer, OpCode.LINEAR_Q8, x, self.out_shape(layer, e.dims(x)), (),
                               self._scratch(e, layer, x)["fw"], True)
            return y, (xq, None)
        w, b = e.param("weight"), e.param("bias")
        y = e.act("out", self.out_shape(layer, e.dims(x)))
        e.node(OpCode.LINEAR, OpFn.FW, [x, w, b], [y])
        r = e.lora_rank(layer)
        if not r:
            return y, (x, None)
        # y += B·(A·x): two bias-free products (LINEAR takes a bias: zeros, kept once)
        h = e.act("lora.h", (*e.dims(x)[:-1], r))
        e.node(OpCode.LINEAR, OpFn.FW, [x, e.param("lora_A"), _zeros(e, layer, r)], [h])
        z = e.act("lora.z", e.dims(y))
        e.node(OpCode.LINEAR, OpFn.FW, [h, e.param("lora_B"), _zeros(e, layer, layer["out"])], [z])
        e.node(OpCode.ACCUMULATE, OpFn.FW, [y, z], [y])
        return y, (x, h)

    torch_types = ("Linear",)

    def torch_module(self, layer, in_shape):
        import torch.nn as nn
        return nn.Linear(in_shape[-1], layer["out"])

    def from_torch(self, m, in_shape):
        if m.bias is None:
            raise ModelError("nn.Linear without bias is not supported (bias=True)")
        if m.in_features != in_shape[-1]:
            raise ModelError(f"in_features {m.in_features} but the input's last dimension is {in_shape[-1]}")
        return {"out": m.out_features}

    def backward(self, e, layer, saved, dy, need_dx):
        x, h = saved
        if e.is_q8(layer):
            return q8.backward(e, layer, OpCode.LINEAR_Q8, x, dy, need_dx, (), self._scratch(e, layer, x), True)
        w, b = e.param("weight"), e.param("bias")
        out, rows = layer["out"], None
        grads = []
        if e.is_trainable(w):
            idx = e.channel_index(layer)
            dys = dy if idx is None else e.gather(dy, idx, out, 1, "out.grad.rows")
            k = None if idx is None else e.dims(idx)[0]
            dw, db = e.param_grad(w, k), e.param_grad(b, k)
            e.node(OpCode.LINEAR, OpFn.BW_PARAM, [dys, x], [dw, db])
            rows = None if idx is None else (idx, out)
            grads = [(w, dw, x), (b, db, None)]
        elif e.is_trainable(b):
            e.bias_grad(b, dy, out, 1)
        dh = None
        if h is not None:  # adapters: dB = dyᵀh, dh = dy·B, dA = dhᵀx
            a, bb = e.param("lora_A"), e.param("lora_B")
            r = e.dims(h)[-1]
            d_b, junk = e.param_grad(bb), e.scratch("lora.dbias_out", out)
            e.node(OpCode.LINEAR, OpFn.BW_PARAM, [dy, h], [d_b, junk])
            dh = e.grad("lora.h.grad", e.dims(h))
            e.node(OpCode.LINEAR, OpFn.BW_INPUT, [dy, bb], [dh])
            d_a, junk = e.param_grad(a), e.scratch("lora.dbias_r", r)
            e.node(OpCode.LINEAR, OpFn.BW_PARAM, [dh, x], [d_a, junk])
            grads += [(a, d_a, None), (bb, d_b, None)]
        dx = None
        if need_dx:
            dx = e.grad("in.grad", e.dims(x))
            e.node(OpCode.LINEAR, OpFn.BW_INPUT, [dy, w], [dx])
            if dh is not None:
                dxa = e.grad("lora.in.grad", e.dims(x))
                e.node(OpCode.LINEAR, OpFn.BW_INPUT, [dh, e.param("lora_A")], [dxa])
                e.node(OpCode.ACCUMULATE, OpFn.FW, [dx, dxa], [dx])
        for p, gp, _ in grads:
            if e.is_trainable(p):
                e.update(p, gp, None if rows is None else (rows[0], rows[1], int(np.prod(e.dims(p)[1:]))))
        return dx


def _zeros(e, layer, n: int) -> int:
    """A constant zero vector of n floats (the bias of an adapter's products), one per size."""
    name = f"{layer.name}.lora.zeros{n}"
    for i, t in enumerate(e.g.tensors):
        if t.name == name:
            return i
    return e.state(name, (n,), init=np.zeros(n, np.float32))


@register
class ReLU(LayerRule):
    type = "relu"
    torch_types = ("ReLU",)

    def torch_module(self, layer, in_shape):
        import torch.nn as nn
        return nn.ReLU()

    int8 = int8_after_int8 = True

    def forward(self, e, layer, x, train):
        if e.is_q8(layer):
            y, _ = e.q8_node(OpCode.RELU_Q8, OpFn.FW, [x], "out", e.dims(x))
            return y, y
        y = e.act("out", e.dims(x))
        e.node(OpCode.RELU, OpFn.FW, [x], [y])
        return y, y

    def backward(self, e, layer, y, dy, need_dx):
        if not need_dx:
            return None
        if e.is_q8(layer):
            return e.q8_node(OpCode.RELU_Q8, OpFn.BW_INPUT, [dy], "in.grad", e.dims(y), grad=True, more_ins=(y,))[0]
        dx = e.grad("in.grad", e.dims(y))
        e.node(OpCode.RELU, OpFn.BW_INPUT, [dy, y], [dx])
        return dx


@register
class Flatten(LayerRule):
    """[C][H][W] → [C·H·W]: the same bytes, so no node at all: the output is a view
    of the input (one arena span, two shapes), and so is the gradient."""

    type = "flatten"
    torch_types = ("Flatten",)
    any_dtype = True

    def torch_module(self, layer, in_shape):
        import torch.nn as nn
        return nn.Flatten()

    def from_torch(self, m, in_shape):
        if (m.start_dim, m.end_dim) != (1, -1):
            raise ModelError("only nn.Flatten(start_dim=1, end_dim=-1) is supported")
        return {}

    def out_shape(self, layer, in_shape):
        return (elems(in_shape),)

    def forward(self, e, layer, x, train):
        return e.view(x, "out", (elems(e.dims(x)),)), e.dims(x)

    def backward(self, e, layer, in_dims, dy, need_dx):
        return e.view(dy, "in.grad", in_dims) if need_dx else None


def _torch_twin(name: str):
    """PyTorch modules for the multi-input layers (to_torch builds DAG models from them)."""
    import torch
    import torch.nn as nn

    class Add(nn.Module):
        def forward(self, a, b):
            return a + b.reshape(a.shape)

    class Concat(nn.Module):
        def forward(self, a, b):
            return torch.cat([a, b], dim=1)

    return {"add": Add, "concat": Concat}[name]()


@register
class Add(LayerRule):
    """y = a + b (a residual connection); the inputs have equal element counts."""

    type = "add"
    n_inputs = 2
    int8 = int8_after_int8 = int8_before_int8 = True  # ADD_Q8

    def out_shape(self, layer, in_shape):
        a, b = in_shape
        if elems(a) != elems(b):
            raise ModelError(f"layer {layer.name!r}: cannot add shapes {a} and {b}")
        return a

    def forward(self, e, layer, xs, train):
        if e.is_q8(layer):
            return e.q8_node(OpCode.ADD_Q8, OpFn.FW, xs, "out", e.dims(xs[0]))[0], None
        y = e.act("out", e.dims(xs[0]))
        e.node(OpCode.ADD, OpFn.FW, xs, [y])
        return y, None

    def backward(self, e, layer, saved, dy, need_dx):
        return [dy if need else None for need in need_dx]

    def torch_module(self, layer, in_shape):
        return _torch_twin("add")


@register
class Concat(LayerRule):
    """Concatenation along the first per-sample dimension (channels)."""

    type = "concat"
    n_inputs = 2

    def out_shape(self, layer, in_shape):
        a, b = in_shape
        if len(a) != len(b) or a[1:] != b[1:]:
            raise ModelError(f"layer {layer.name!r}: cannot concatenate shapes {a} and {b} along channels")
        return (a[0] + b[0], *a[1:])

    def forward(self, e, layer, xs, train):
        y = e.act("out", (e.dims(xs[0])[0] + e.dims(xs[1])[0], *e.dims(xs[0])[1:]))
        e.node(OpCode.CONCAT, OpFn.FW, xs, [y])
        return y, xs

    def backward(self, e, layer, xs, dy, need_dx):
        da, db = e.grad("in0.grad", e.dims(xs[0])), e.grad("in1.grad", e.dims(xs[1]))
        e.node(OpCode.CONCAT, OpFn.BW_INPUT, [dy], [da, db])
        return [da if need_dx[0] else None, db if need_dx[1] else None]

    def torch_module(self, layer, in_shape):
        return _torch_twin("concat")


@register
class Reshape(LayerRule):
    """The sample under another shape with as many elements ([32][7][7] → [32][49]):
    a view, like flatten, so no node and no copy."""

    type = "reshape"
    any_dtype = True

    def parse(self, d):
        shape = d.get("shape")
        if not (isinstance(shape, list) and 1 <= len(shape) <= 4):
            raise ModelError(f"attribute 'shape' = {shape!r}: want a list of 1 to 4 dimensions")
        return {"shape": [int_attr({"shape": v}, "shape") for v in shape]}

    def out_shape(self, layer, in_shape):
        shape = tuple(layer["shape"])
        if elems(shape) != elems(in_shape):
            raise ModelError(f"layer {layer.name!r}: cannot reshape {in_shape} to {shape}")
        return shape

    def forward(self, e, layer, x, train):
        return e.view(x, "out", self.out_shape(layer, e.dims(x))), e.dims(x)

    def backward(self, e, layer, in_dims, dy, need_dx):
        return e.view(dy, "in.grad", in_dims) if need_dx else None

    def torch_module(self, layer, in_shape):
        import torch.nn as nn
        return nn.Unflatten(1, tuple(layer["shape"])) if len(in_shape) == 1 else _Reshape(tuple(layer["shape"]))


def _Reshape(shape):  # noqa: N802 - a module factory
    import torch.nn as nn

    class Reshape(nn.Module):
        def __init__(self):
            super().__init__()
            self.shape = shape

        def forward(self, x):
            return x.reshape(x.shape[0], *self.shape)

    return Reshape()


# -- ONNX ops of this family ----------------------------------------------------------

def _gemm(a, w, shape):
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
        raise ModelError("Gemm with transA, alpha or beta is not supported")
    W = w[0] if a.get("transB", 0) else w[0].T
    b = w[1] if len(w) > 1 and w[1] is not None else np.zeros(W.shape[0], np.float32)
    return "linear", {"out": int(W.shape[0])}, {"weight": W, "bias": b}


def _flatten(a, w, shape):
    if a.get("axis", 1) != 1:
        raise ModelError("Flatten with axis != 1 is not supported")
    return "flatten", {}, {}


def _reshape(a, w, shape):
    target = [int(v) for v in (w[0] if w else [])]
    if len(target) != 2 or target[1] not in (-1, int(np.prod(shape))):
        raise ModelError(f"Reshape to {target} is not a flatten to (batch, -1)")
    return "flatten", {}, {}


def _simple(t):
    return lambda a, w, shape: (t, {}, {})


register_onnx("Gemm", _gemm)
register_onnx("Flatten", _flatten)
register_onnx("Reshape", _reshape)
register_onnx("Relu", _simple("relu"))
