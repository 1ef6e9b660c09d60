"""Layer rules for batch/layer/group normalisation, activations and dropout (firmware/runtime/ops/ep_norm_act.h).

Node contracts: docs/ops/norm_act.md.

- batchnorm over [C] (after a linear layer), [C][L] or [C][H][W]: nn.BatchNorm1d /
  BatchNorm2d. mode_dependent: the training forward normalises with the batch
  statistics and updates running_mean / running_var (buffers: PARAM, never
  TRAINABLE); the eval forward uses the running statistics. A frozen batchnorm
  (not in TrainConfig.train_layers) still uses batch statistics and updates its
  running averages in the training forward, exactly as a PyTorch model in train()
  mode whose affine parameters are left out of the optimizer.
- layernorm over the last dimension of the sample; groupnorm over [C][...].
- relu6, elu, gelu (exact erf form), sigmoid, tanh.
- dropout: the training forward draws a fresh keep mask per step on the device
  from a persistent xorshift32 state (an unbatched i32 [1] PARAM tensor seeded
  from the layer name, so runs are reproducible); the eval forward is the
  identity and emits no node at all.
"""

from __future__ import annotations

import zlib

import numpy as np

from ..errors import ModelError
from ..graph import Tensor
from ..ids import DType, OpCode, OpFn, TensorFlag
from . import LayerRule, Shape, float_attr, int_attr, register, register_onnx

BN_TRAIN, BN_EVAL = 0, 1
#: BATCHNORM_Q8's third mode: the training statistics alone (docs/ops/int8.md)
BNQ_STATS = 2
DROPOUT_TRAIN = 0


def _elems(shape: Shape) -> int:
    return int(np.prod(shape))


def _eps(d: dict) -> float:
    eps = float_attr(d, "eps", 1e-5, lo=0.0)
    if eps <= 0.0 or np.float32(eps) <= 0.0:
        raise ModelError(f"attribute 'eps' = {eps!r}: want a number > 0")
    return eps


def _channels(layer, in_shape: Shape) -> int:
    if not 1 <= len(in_shape) <= 3:
        raise ModelError(f"layer {layer.name!r} ({layer.type}) wants a [C], [C][L] or [C][H][W] input, "
                         f"got {list(in_shape)}")
    return in_shape[0]


def _affine_init(c: int) -> dict[str, np.ndarray]:
    return {"weight": np.ones(c, np.float32), "bias": np.zeros(c, np.float32)}


def _affine_backward(e, op, dy, need_dx, iattrs, fattrs, bw_input_ins, bw_param_ins):
    """The shared backward of the three norms: BW_PARAM (dy, *bw_param_ins) if the
    layer trains, BW_INPUT (dy, *bw_input_ins) if an earlier layer needs dx, then the
    optimizer updates."""
    w, b = e.param("weight"), e.param("bias")
    trains = e.is_trainable(w)
    if trains:
        dw, db = e.param_grad(w), e.param_grad(b)
        e.node(op, OpFn.BW_PARAM, [dy, *bw_param_ins], [dw, db], iattrs=iattrs, fattrs=fattrs)
    elif e.is_trainable(b):  # bias-only: beta's gradient is dy summed per channel
        dims = e.dims(dy)
        if op == OpCode.LAYERNORM:  # over the last dimension
            e.bias_grad(b, dy, dims[-1], 1)
        else:
            e.bias_grad(b, dy, dims[0], int(np.prod(dims[1:])))
    dx = None
    if need_dx:
        dx = e.grad("in.grad", e.dims(dy))
        e.node(op, OpFn.BW_INPUT, [dy, *bw_input_ins], [dx], iattrs=iattrs, fattrs=fattrs)
    if trains:
        e.update(w, dw)
        e.update(b, db)
    return dx


# -- batch normalisation ------------------------------------------------------------------

@register
class BatchNorm(LayerRule):
    """nn.BatchNorm1d ([C] or [C][L]) / nn.BatchNorm2d ([C][H][W]), affine, tracking
    running statistics with a fixed momentum."""

    type = "batchnorm"
    mode_dependent = True
    torch_types = ("BatchNorm1d", "BatchNorm2d")

    def parse(self, d):
        if d.get("affine", True) is not True:
            raise ModelError(f"attribute 'affine' = {d.get('affine')!r}: only affine batchnorm (true) is supported")
        return {"eps": _eps(d), "momentum": float_attr(d, "momentum", 0.1, lo=0.0, hi=1.0)}

    def out_shape(self, layer, in_shape):
        _channels(layer, in_shape)
        return in_shape

    def param_shapes(self, layer, in_shape):
        c = _channels(layer, in_shape)
        return {"weight": (c,), "bias": (c,)}

    def buffer_shapes(self, layer, in_shape):
        c = _channels(layer, in_shape)
        return {"running_mean": (c,), "running_var": (c,)}

    def init_params(self, layer, in_shape, rng):
        c = _channels(layer, in_shape)
        return {**_affine_init(c), "running_mean": np.zeros(c, np.float32), "running_var": np.ones(c, np.float32)}

    int8 = int8_after_int8 = int8_before_int8 = True

    def forward(self, e, layer, x, train):
        if e.is_q8(layer):
            return self._forward_q8(e, layer, x, train)
        w, b = e.param("weight"), e.param("bias")
        rm, rv = e.param("running_mean"), e.param("running_var")
        y = e.act("out" if train else "out.eval", e.dims(x))
        if not train:
            e.node(OpCode.BATCHNORM, OpFn.FW, [x, w, b, rm, rv], [y], iattrs=(BN_EVAL,), fattrs=(layer["eps"],))
            return y, None
        saved = e.saved("saved", (2 * e.dims(x)[0],))
        e.node(OpCode.BATCHNORM, OpFn.FW, [x, w, b], [y, saved, rm, rv], iattrs=(BN_TRAIN,),
               fattrs=(layer["eps"], layer["momentum"]))
        return y, (x, saved)

    def backward(self, e, layer, saved, dy, need_dx):
        if e.is_q8(layer):
            return self._backward_q8(e, layer, saved, dy, need_dx)
        x, st = saved
        return _affine_backward(e, OpCode.BATCHNORM, dy, need_dx, (BN_TRAIN,), (layer["eps"],),
                                [x, e.param("weight"), st], [x, st])

    def _forward_q8(self, e, layer, x, train):
        """BATCHNORM_Q8: int8 in and out, the f32 arithmetic in between (no f32 tensors);
        the training forward is a stats node, then the normalisation."""
        w, b = e.param("weight"), e.param("bias")
        rm, rv = e.param("running_mean"), e.param("running_var")
        x = e.to_q8(x)
        y = e.act_q8("out" if train else "out.eval", e.dims(x))
        eps = layer["eps"]
        if not train:
            e.node(OpCode.BATCHNORM_Q8, OpFn.FW, [x, e.qexp[x], w, b, rm, rv], [y, e.qexp[y]], iattrs=(BN_EVAL,),
                   fattrs=(eps,))
            return y, None
        saved = e.saved("saved", (2 * e.dims(x)[0],))
        e.node(OpCode.BATCHNORM_Q8, OpFn.FW, [x, e.qexp[x]], [saved, rm, rv], iattrs=(BNQ_STATS,),
               fattrs=(eps, layer["momentum"]))
        e.node(OpCode.BATCHNORM_Q8, OpFn.FW, [x, e.qexp[x], w, b, saved], [y, e.qexp[y]], iattrs=(BN_TRAIN,),
               fattrs=(eps,))
        return y, (x, saved)

    def _backward_q8(self, e, layer, saved, dy, need_dx):
        x, st = saved
        dy = e.to_q8(dy)
        codes = [dy, e.qexp[dy], x, e.qexp[x]]
        w, b = e.param("weight"), e.param("bias")
        attrs = dict(iattrs=(BN_TRAIN,), fattrs=(layer["eps"],))
        trains = e.is_trainable(w)  # an int8 layer trains whole or not at all
        if trains:
            dw, db = e.param_grad(w), e.param_grad(b)
            e.node(OpCode.BATCHNORM_Q8, OpFn.BW_PARAM, codes + [st], [dw, db], **attrs)
        dx = None
        if need_dx:  # scratch: three floats per channel between the two passes
            dx, _ = e.q8_node(OpCode.BATCHNORM_Q8, OpFn.BW_INPUT, [dy, x], "in.grad", e.dims(x), grad=True,
                              more_ins=(w, st), scratch=("bw_input.scratch", 12 * e.dims(x)[0]), **attrs)
        if trains:
            e.update(w, dw)
            e.update(b, db)
        return dx

    def torch_module(self, layer, in_shape):
        from torch import nn
        c = _channels(layer, in_shape)
        cls = nn.BatchNorm2d if len(in_shape) == 3 else nn.BatchNorm1d
        return cls(c, eps=layer["eps"], momentum=layer["momentum"])

    def from_torch(self, m, in_shape):
        if not m.affine:
            raise ModelError("affine=False is not supported (affine=True only)")
        if not m.track_running_stats:
            raise ModelError("track_running_stats=False is not supported")
        if m.momentum is None:
            raise ModelError("momentum=None (cumulative average) is not supported; give a number")
        want = (3,) if type(m).__name__ == "BatchNorm2d" else (1, 2)
        if len(in_shape) not in want:
            raise ModelError(f"{type(m).__name__} on a per-sample input of shape {list(in_shape)}")
        if m.num_features != in_shape[0]:
            raise ModelError(f"num_features {m.num_features} but the input has {in_shape[0]} channels")
        return {"eps": float(m.eps), "momentum": float(m.momentum)}


# -- layer normalisation ------------------------------------------------------------------

@register
class LayerNorm(LayerRule):
    """nn.LayerNorm(D) over the last dimension D of the sample ([D], [T][D], ...)."""

    type = "layernorm"
    torch_types = ("LayerNorm",)

    def parse(self, d):
        return {"eps": _eps(d)}

    def param_shapes(self, layer, in_shape):
        return {"weight": (in_shape[-1],), "bias": (in_shape[-1],)}

    def init_params(self, layer, in_shape, rng):
        return _affine_init(in_shape[-1])

    #: LAYERNORM_Q8: int8 in and out, the f32 kernels on one dequantized row at a time
    int8 = int8_after_int8 = int8_before_int8 = True

    def forward(self, e, layer, x, train):
        dims = e.dims(x)
        saved = e.saved("saved", (2 * (_elems(dims) // dims[-1]),), batched=True)
        if e.is_q8(layer):  # scratch: three rows of D floats
            y, (x,) = e.q8_node(OpCode.LAYERNORM_Q8, OpFn.FW, [x], "out", dims, more_ins=(e.param("weight"), e.param("bias")),
                                more_outs=(saved,), scratch=("fw.scratch", 12 * dims[-1]), fattrs=(layer["eps"],))
            return y, (x, saved)
        y = e.act("out", dims)
        e.node(OpCode.LAYERNORM, OpFn.FW, [x, e.param("weight"), e.param("bias")], [y, saved],
               fattrs=(layer["eps"],))
        return y, (x, saved)

    def backward(self, e, layer, saved, dy, need_dx):
        x, st = saved
        if not e.is_q8(layer):
            return _affine_backward(e, OpCode.LAYERNORM, dy, need_dx, (), (layer["eps"],),
                                    [x, e.param("weight"), st], [x, st])
        dy = e.to_q8(dy)
        w, b = e.param("weight"), e.param("bias")
        nbytes = 12 * e.dims(x)[-1]
        trains = e.is_trainable(w)  # an int8 layer trains whole or not at all
        if trains:
            dw, db = e.param_grad(w), e.param_grad(b)
            e.node(OpCode.LAYERNORM_Q8, OpFn.BW_PARAM, [dy, e.qexp[dy], x, e.qexp[x], st],
                   [dw, db, e.scratch_bytes("bw_param.scratch", nbytes)], fattrs=(layer["eps"],))
        dx = None
        if need_dx:
            dx, _ = e.q8_node(OpCode.LAYERNORM_Q8, OpFn.BW_INPUT, [dy, x], "in.grad", e.dims(x), grad=True,
                              more_ins=(w, st), scratch=("bw_input.scratch", nbytes), fattrs=(layer["eps"],))
        if trains:
            e.update(w, dw)
            e.update(b, db)
        return dx

    def torch_module(self, layer, in_shape):
        from torch import nn
        return nn.LayerNorm(in_shape[-1], eps=layer["eps"])

    def from_torch(self, m, in_shape):
        if not m.elementwise_affine or getattr(m, "bias", None) is None:
            raise ModelError("elementwise_affine=False or bias=False is not supported")
        if tuple(m.normalized_shape) != (in_shape[-1],):
            raise ModelError(f"normalized_shape {tuple(m.normalized_shape)}: only the last dimension "
                             f"({in_shape[-1]}) is supported")
        return {"eps": float(m.eps)}


# -- group normalisation ------------------------------------------------------------------

@register
class GroupNorm(LayerRule):
    """nn.GroupNorm(groups, C) over [C], [C][L] or [C][H][W]."""

    type = "groupnorm"
    torch_types = ("GroupNorm",)

    def parse(self, d):
        return {"groups": int_attr(d, "groups"), "eps": _eps(d)}

    def out_shape(self, layer, in_shape):
        c = _channels(layer, in_shape)
        if c % layer["groups"]:
            raise ModelError(f"layer {layer.name!r}: groups {layer['groups']} does not divide the {c} channels")
        return in_shape

    def param_shapes(self, layer, in_shape):
        c = _channels(layer, in_shape)
        return {"weight": (c,), "bias": (c,)}

    def init_params(self, layer, in_shape, rng):
        return _affine_init(_channels(layer, in_shape))

    def forward(self, e, layer, x, train):
        y = e.act("out", e.dims(x))
        saved = e.saved("saved", (2 * layer["groups"],), batched=True)
        e.node(OpCode.GROUPNORM, OpFn.FW, [x, e.param("weight"), e.param("bias")], [y, saved],
               iattrs=(layer["groups"],), fattrs=(layer["eps"],))
        return y, (x, saved)

    def backward(self, e, layer, saved, dy, need_dx):
        x, st = saved
        return _affine_backward(e, OpCode.GROUPNORM, dy, need_dx, (layer["groups"],),
                                (layer["eps"],), [x, e.param("weight"), st], [x, st])

    def torch_module(self, layer, in_shape):
        from torch import nn
        return nn.GroupNorm(layer["groups"], _channels(layer, in_shape), eps=layer["eps"])

    def from_torch(self, m, in_shape):
        if not m.affine:
            raise ModelError("affine=False is not supported (affine=True only)")
        if m.num_channels != in_shape[0]:
            raise ModelError(f"num_channels {m.num_channels} but the input has {in_shape[0]} channels")
        return {"groups": int(m.num_groups), "eps": float(m.eps)}


# -- activations ------------------------------------------------------------------------

class _Activation(LayerRule):
    """An elementwise activation: FW (x) → y, BW_INPUT (dy, y) → dx (x for GELU)."""

    op: OpCode
    torch_name: str
    #: backward reads the forward input (GELU) instead of the output
    reads_x = False

    def fattrs(self, layer) -> tuple[float, ...]:
        return ()

    int8 = int8_after_int8 = int8_before_int8 = True

    def forward(self, e, layer, x, train):
        if e.is_q8(layer):  # ACT_Q8: int8 in and out, the f32 activation in between
            y, (x,) = e.q8_node(OpCode.ACT_Q8, OpFn.FW, [x], "out", e.dims(x), iattrs=(self.op,),
                                fattrs=self.fattrs(layer))
            return y, (x if self.reads_x else y)
        y = e.act("out", e.dims(x))
        e.node(self.op, OpFn.FW, [x], [y], fattrs=self.fattrs(layer))
        return y, (x if self.reads_x else y)

    def backward(self, e, layer, t, dy, need_dx):
        if not need_dx:
            return None
        if e.is_q8(layer):
            return e.q8_node(OpCode.ACT_Q8, OpFn.BW_INPUT, [dy, t], "in.grad", e.dims(t), grad=True,
                             iattrs=(self.op,), fattrs=self.fattrs(layer))[0]
        dx = e.grad("in.grad", e.dims(t))
        e.node(self.op, OpFn.BW_INPUT, [dy, t], [dx], fattrs=self.fattrs(layer))
        return dx

    def torch_module(self, layer, in_shape):
        from torch import nn
        return getattr(nn, self.torch_name)()


@register
class ReLU6(_Activation):
    type, op, torch_name = "relu6", OpCode.RELU6, "ReLU6"
    torch_types = ("ReLU6",)


@register
class ELU(_Activation):
    """nn.ELU(alpha), alpha ≥ 0 (the y-based gradient needs sign(y) = sign(x))."""

    type, op, torch_name = "elu", OpCode.ELU, "ELU"
    torch_types = ("ELU",)

    def parse(self, d):
        return {"alpha": float_attr(d, "alpha", 1.0, lo=0.0)}

    def fattrs(self, layer):
        return (layer["alpha"],)

    def torch_module(self, layer, in_shape):
        from torch import nn
        return nn.ELU(alpha=layer["alpha"])

    def from_torch(self, m, in_shape):
        if not m.alpha >= 0:
            raise ModelError(f"alpha={m.alpha} is not supported (alpha >= 0 only)")
        return {"alpha": float(m.alpha)}


@register
class GELU(_Activation):
    """nn.GELU() (exact erf form; approximate='tanh' is refused)."""

    type, op, torch_name = "gelu", OpCode.GELU, "GELU"
    torch_types = ("GELU",)
    reads_x = True

    def parse(self, d):
        approx = d.get("approximate", "none")
        if approx != "none":
            raise ModelError(f"attribute 'approximate' = {approx!r}: only the exact form ('none') is supported")
        return {}

    def from_torch(self, m, in_shape):
        if m.approximate != "none":
            raise ModelError(f"approximate={m.approximate!r} is not supported (exact GELU only)")
        return {}


@register
class Sigmoid(_Activation):
    type, op, torch_name = "sigmoid", OpCode.SIGMOID, "Sigmoid"
    torch_types = ("Sigmoid",)


@register
class Tanh(_Activation):
    type, op, torch_name = "tanh", OpCode.TANH, "Tanh"
    torch_types = ("Tanh",)


# -- dropout --------------------------------------------------------------------------

def dropout_seed(layer_name: str) -> int:
    """The initial xorshift32 state of a dropout layer: a hash of its name, odd (never
    the fixed point 0) and with bit 30 clear, so the bits read as a finite float (the
    blob stores every initial value through a float32 array)."""
    return (zlib.crc32(layer_name.encode()) & 0xBFFFFFFF) | 1


@register
class Dropout(LayerRule):
    """nn.Dropout(p), 0 ≤ p < 1. Training: y = x·mask/(1 − p) with a 1-bit mask per
    element drawn on the device (xorshift32, docs/ops/norm_act.md); eval: identity."""

    type = "dropout"
    mode_dependent = True
    torch_types = ("Dropout",)

    def parse(self, d):
        p = float_attr(d, "p", 0.5, lo=0.0, hi=1.0)
        if p >= 1.0:
            raise ModelError(f"attribute 'p' = {p!r}: want 0 <= p < 1")
        return {"p": p}

    int8 = int8_after_int8 = int8_before_int8 = True  # DROPOUT_Q8 (training; eval has no node)

    def forward(self, e, layer, x, train):
        if not train:
            return x, None  # the identity: no node, the output is the input tensor
        q8 = e.is_q8(layer)
        x = e.to_q8(x) if q8 else x
        dims = e.dims(x)
        y = e.act_q8("out", dims) if q8 else e.act("out", dims)
        mask = e.saved("mask", ((_elems(dims) + 7) // 8,), batched=True, dtype=DType.U8)
        seed = np.array([dropout_seed(layer.name)], np.uint32).view(np.int32)
        state = e.g.add_tensor(Tensor(f"{layer.name}.rng_state", (1,), DType.I32, TensorFlag.PARAM, init=seed))
        if q8:
            e.node(OpCode.DROPOUT_Q8, OpFn.FW, [x, e.qexp[x]], [y, e.qexp[y], mask, state], fattrs=(layer["p"],))
        else:
            e.node(OpCode.DROPOUT, OpFn.FW, [x], [y, mask, state], iattrs=(DROPOUT_TRAIN,), fattrs=(layer["p"],))
        return y, mask

    def backward(self, e, layer, mask, dy, need_dx):
        if not need_dx:
            return None
        if e.is_q8(layer):
            return e.q8_node(OpCode.DROPOUT_Q8, OpFn.BW_INPUT, [dy], "in.grad", e.dims(dy), grad=True,
                             more_ins=(mask,), fattrs=(layer["p"],))[0]
        dx = e.grad("in.grad", e.dims(dy))
        e.node(OpCode.DROPOUT, OpFn.BW_INPUT, [dy, mask], [dx], iattrs=(DROPOUT_TRAIN,), fattrs=(layer["p"],))
        return dx

    def torch_module(self, layer, in_shape):
        from torch import nn
        return nn.Dropout(layer["p"])

    def from_torch(self, m, in_shape):
        if not 0 <= m.p < 1:
            raise ModelError(f"p={m.p} is not supported (0 <= p < 1)")
        return {"p": float(m.p)}


# -- ONNX ---------------------------------------------------------------------------------

def _onnx_batchnorm(a, w, shape):
    if len(w) < 4 or any(v is None for v in w[:4]):
        raise ModelError("BatchNormalization needs constant scale, B, mean and var")
    if a.get("training_mode", 0):
        raise ModelError("training_mode=1 is not supported")
    scale, bias, mean, var = (np.asarray(v, np.float32).reshape(-1) for v in w[:4])
    # ONNX momentum is the weight of the old value (PyTorch's is the new one's)
    # (both float32 in the file: print them back to 7 significant digits, 0.8 → 0.2)
    attrs = {"eps": float(f"{a.get('epsilon', 1e-5):.7g}"), "momentum": float(f"{1.0 - a.get('momentum', 0.9):.7g}")}
    return "batchnorm", attrs, {"weight": scale, "bias": bias, "running_mean": mean, "running_var": var}


def _onnx_layernorm(a, w, shape):
    axis = int(a.get("axis", -1))
    if axis not in (-1, len(shape)):  # ONNX shapes include the batch dimension
        raise ModelError(f"axis={axis}: only normalisation over the last dimension is supported")
    if a.get("stash_type", 1) != 1:
        raise ModelError("stash_type other than float is not supported")
    scale = np.asarray(w[0], np.float32).reshape(-1)
    bias = np.asarray(w[1], np.float32).reshape(-1) if len(w) > 1 and w[1] is not None else np.zeros_like(scale)
    return "layernorm", {"eps": float(f"{a.get('epsilon', 1e-5):.7g}")}, {"weight": scale, "bias": bias}


def _onnx_elu(a, w, shape):
    return "elu", {"alpha": float(a.get("alpha", 1.0))}, {}


def _onnx_gelu(a, w, shape):
    approx = a.get("approximate", b"none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    if approx != "none":
        raise ModelError(f"approximate={approx} is not supported (exact GELU only)")
    return "gelu", {}, {}


def _onnx_clip(a, w, shape):
    """Clip(0, 6) is ReLU6 (what torch.onnx exports nn.ReLU6 as)."""
    lo = a.get("min", w[0] if len(w) > 0 and w[0] is not None else None)
    hi = a.get("max", w[1] if len(w) > 1 and w[1] is not None else None)
    if lo is None or hi is None or float(np.asarray(lo)) != 0.0 or float(np.asarray(hi)) != 6.0:
        raise ModelError(f"Clip({lo}, {hi}) is not supported (only Clip(0, 6) = ReLU6)")
    return "relu6", {}, {}


def _simple(t):
    return lambda a, w, shape: (t, {}, {})


register_onnx("BatchNormalization", _onnx_batchnorm)
register_onnx("LayerNormalization", _onnx_layernorm)
register_onnx("Elu", _onnx_elu)
register_onnx("Gelu", _onnx_gelu)
register_onnx("Clip", _onnx_clip)
register_onnx("Sigmoid", _simple("sigmoid"))
register_onnx("Tanh", _simple("tanh"))
