"""Layer rules for attention, sequence pooling, softmax and transpose
(firmware/runtime/ops/ep_attn_optim.h; node contracts in docs/ops/attn_optim.md).

Layer types and their PyTorch twins:

- ``softmax``: over the last dimension, as ``nn.Softmax(dim=-1)``;
- ``transpose``: a rank-2 sample [A][B] → [B][A] (what CCT needs between its conv
  tokenizer [D][T] and the transformer [T][D]), as ``Transpose()`` below;
- ``mhsa`` (``heads``): multi-head self-attention over [T][D], as ``SelfAttention(D,
  heads)`` below, an ``nn.MultiheadAttention(batch_first=True)`` whose forward(x) is
  ``attn(x, x, x, need_weights=False)[0]``; parameters in_proj_weight, in_proj_bias,
  out_proj.weight, out_proj.bias;
- ``seqpool``: CCT's sequence pooling [T][D] → [D], as ``SeqPool(D)`` below
  (attention_pool = nn.Linear(D, 1), softmax over the tokens, weighted sum).

The PyTorch classes (Transpose, SelfAttention, SeqPool) are importable from this
module (``from host.layers.attn_optim import SeqPool``) for use in one's own
models; they are built on first access, so the host core does not need PyTorch.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from ..errors import ModelError
from ..graph import Tensor
from ..ids import DType, OpCode, OpFn, TensorFlag
from . import B, LayerRule, int_attr, register, register_onnx, uniform

_TORCH_CLASSES = ("Transpose", "SelfAttention", "SeqPool")


@cache
def _torch_classes() -> dict:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Transpose(nn.Module):
        """Swap the two dims of a rank-2 sample: x [n][A][B] → [n][B][A]."""

        def forward(self, x):
            return x.transpose(1, 2)

    class SelfAttention(nn.MultiheadAttention):
        """nn.MultiheadAttention(embed_dim, num_heads, batch_first=True) over one
        sequence: forward(x) = attention(x, x, x) without weights. Its state_dict is
        nn.MultiheadAttention's (in_proj_weight, in_proj_bias, out_proj.*)."""

        def __init__(self, embed_dim: int, num_heads: int, **kw):
            kw.setdefault("batch_first", True)
            super().__init__(embed_dim, num_heads, **kw)

        def forward(self, x):  # the signature differs from nn.MultiheadAttention's on purpose
            return super().forward(x, x, x, need_weights=False)[0]

    class SeqPool(nn.Module):
        """CCT sequence pooling: w = softmax_T(attention_pool(x)), y = Σ_t w_t x_t."""

        def __init__(self, embed_dim: int):
            super().__init__()
            self.attention_pool = nn.Linear(embed_dim, 1)

        def forward(self, x):
            w = F.softmax(self.attention_pool(x), dim=1)            # [n][T][1]
            return torch.matmul(w.transpose(-1, -2), x).squeeze(-2)  # [n][D]

    out = {}
    for cls in (Transpose, SelfAttention, SeqPool):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__  # picklable as host.layers.attn_optim.X
        out[cls.__name__] = cls
    return out


def __getattr__(name: str):
    if name in _TORCH_CLASSES:
        return _torch_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _tokens(layer, in_shape) -> tuple[int, int]:
    """(T, D) of a [T][D] input."""
    if len(in_shape) != 2:
        raise ModelError(f"layer {layer.name!r} ({layer.type}): wants a [tokens][dim] input, got {tuple(in_shape)}",
                         hint="put a transpose (from [dim][tokens]) or a reshape before it")
    return int(in_shape[0]), int(in_shape[1])


@register
class SoftmaxRule(LayerRule):
    """Softmax over the last dimension (nn.Softmax(dim=-1))."""

    type = "softmax"
    torch_types = ("Softmax",)

    def forward(self, e, layer, x, train):
        y = e.act("out", e.dims(x))
        e.node(OpCode.SOFTMAX, OpFn.FW, [x], [y])
        return y, y

    def backward(self, e, layer, y, dy, need_dx):
        if not need_dx:
            return None
        dx = e.grad("in.grad", e.dims(y))
        e.node(OpCode.SOFTMAX, OpFn.BW_INPUT, [dy, y], [dx])
        return dx

    def torch_module(self, layer, in_shape):
        import torch.nn as nn
        return nn.Softmax(dim=-1)

    def from_torch(self, m, in_shape):
        if m.dim not in (-1, len(in_shape)):
            raise ModelError(f"nn.Softmax(dim={m.dim}) is not supported: only the last dimension (dim=-1)")
        return {}


@register
class TransposeRule(LayerRule):
    """[A][B] → [B][A] per sample (a copy: the bytes move)."""

    type = "transpose"
    torch_types = ("Transpose",)

    def out_shape(self, layer, in_shape):
        a, b = _tokens(layer, in_shape)
        return (b, a)

    #: over int8 codes the bytes move and the exponent stays (TRANSPOSE takes s8 tensors):
    #: no rounding, so it is int8 wherever its input is
    int8 = int8_after_int8 = True

    def forward(self, e, layer, x, train):
        dims = self.out_shape(layer, e.dims(x))
        y = e.act_q8("out", dims, exp=e.qexp[x]) if e.is_q8(layer) else e.act("out", dims)
        e.node(OpCode.TRANSPOSE, OpFn.FW, [x], [y])
        return y, e.dims(x)

    def backward(self, e, layer, in_dims, dy, need_dx):
        if not need_dx:
            return None
        if e.is_q8(layer):
            dy = e.to_q8(dy)
            dx = e.act_q8("in.grad", in_dims, grad=True, exp=e.qexp[dy])
        else:
            dx = e.grad("in.grad", in_dims)
        e.node(OpCode.TRANSPOSE, OpFn.BW_INPUT, [dy], [dx])
        return dx

    def torch_module(self, layer, in_shape):
        return _torch_classes()["Transpose"]()

    def from_torch(self, m, in_shape):
        self.out_shape(_Named("transpose"), in_shape)
        return {}


class _Named:
    """A stand-in layer for error messages raised before a layer exists."""

    def __init__(self, type_: str):
        self.name, self.type = type_, type_


@register
class MhsaRule(LayerRule):
    """Multi-head self-attention over [T][D] (q = k = v = x, biases, no mask, no dropout)."""

    type = "mhsa"
    torch_types = ("SelfAttention",)

    def parse(self, d):
        return {"heads": int_attr(d, "heads")}

    def out_shape(self, layer, in_shape):
        T, D = _tokens(layer, in_shape)
        H = layer["heads"]
        if D % H:
            raise ModelError(f"layer {layer.name!r}: heads {H} must divide the dim {D}")
        if 3 * D + H * T > 0xFFFF:  # the widest tensor dim it needs: saved [T][3D + H·T]
            raise ModelError(f"layer {layer.name!r}: {T} tokens of dim {D} with {H} heads is too large "
                             f"(3·dim + heads·tokens must be ≤ 65535)")
        return tuple(in_shape)

    def param_shapes(self, layer, in_shape):
        _, D = _tokens(layer, in_shape)
        return {"in_proj_weight": (3 * D, D), "in_proj_bias": (3 * D,),
                "out_proj.weight": (D, D), "out_proj.bias": (D,)}

    def init_params(self, layer, in_shape, rng):
        # nn.MultiheadAttention._reset_parameters: xavier_uniform_ on in_proj_weight
        # (fan_in D, fan_out 3D), zero biases; out_proj.weight keeps nn.Linear's U(±1/√D)
        _, D = _tokens(layer, in_shape)
        return {"in_proj_weight": uniform(rng, float(np.sqrt(6.0 / (D + 3 * D))), (3 * D, D)),
                "in_proj_bias": np.zeros(3 * D, np.float32),
                "out_proj.weight": uniform(rng, 1.0 / np.sqrt(D), (D, D)),
                "out_proj.bias": np.zeros(D, np.float32)}

    @staticmethod
    def _scratch(e, layer, what: str, T: int, D: int) -> int:
        # (T·D + T·T) floats (ep_mhsa_scratch_bytes), one per node so it lives for that node only
        return e.g.add_tensor(Tensor(f"{layer.name}.{what}.scratch", (T, D + T)))

    #: MHSA_Q8: int8 in and out, the saved qkv and probabilities as int8 codes (a quarter of
    #: the f32 saved state), f32 weights and gradients
    int8 = True

    @staticmethod
    def q8_scratch_bytes(T: int, D: int, H: int, fw: bool) -> int:
        """MHSA_Q8's scratch (ep_q8_attn.c): two sample rows, a sample's saved state, MHSA's
        own scratch and, in the backward, a sample's dqkv, in floats."""
        return 4 * ((6 if fw else 9) * T * D + (H + 1) * T * T)

    def forward(self, e, layer, x, train):
        if e.is_q8(layer):
            return self._forward_q8(e, layer, x)
        T, D = _tokens(layer, e.dims(x))
        H = layer["heads"]
        y = e.act("out", (T, D))
        saved = e.saved("saved", (T, 3 * D + H * T), batched=True)  # qkv [T][3D] then P [H][T][T]
        e.node(OpCode.MHSA, OpFn.FW,
               [x, *self._params(e), self._scratch(e, layer, "fw", T, D)],
               [y, saved], iattrs=(H,))
        return y, (x, saved)

    def _params(self, e):
        return [e.param(k) for k in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")]

    def _forward_q8(self, e, layer, x):
        x = e.to_q8(x)
        T, D = _tokens(layer, e.dims(x))
        H = layer["heads"]
        y = e.act_q8("out", (T, D))
        st = e.saved("saved", (T, 3 * D + H * T), batched=True, dtype=DType.S8)  # qkv codes, then P codes
        e_st = e.saved("saved.exp", (2,), dtype=DType.I32)
        e.node(OpCode.MHSA_Q8, OpFn.FW,
               [x, e.qexp[x], *self._params(e), e.scratch_bytes("fw.scratch", self.q8_scratch_bytes(T, D, H, fw=True))],
               [y, e.qexp[y], st, e_st], iattrs=(H,))
        return y, (x, (st, e_st))

    def _backward_q8(self, e, layer, saved, dy, need_dx):
        x, (st, e_st) = saved
        T, D = e.dims(x)
        H = layer["heads"]
        params = self._params(e)
        trains = e.is_trainable(params[0])  # an int8 layer trains whole or not at all
        if not trains and not need_dx:
            return None
        dy = e.to_q8(dy)
        # dqkv codes; e_bw = the saved state's two exponents passed on, then dqkv's
        dqkv = e.g.add_tensor(Tensor(f"{layer.name}.qkv.grad", (T, 3 * D), DType.S8, B | TensorFlag.GRAD))
        e_bw = e.saved("bw.exp", (3,), dtype=DType.I32)
        outs = [dqkv, e_bw]
        dx = None
        if need_dx:
            dx = e.act_q8("in.grad", (T, D), grad=True)
            outs += [dx, e.qexp[dx]]
        nbytes = self.q8_scratch_bytes(T, D, H, fw=False)
        e.node(OpCode.MHSA_Q8, OpFn.BW_INPUT, [dy, e.qexp[dy], params[0], params[2], st, e_st,
                                               e.scratch_bytes("bw_input.scratch", nbytes)], outs, iattrs=(H,))
        if trains:
            grads = [e.param_grad(p) for p in params]
            e.node(OpCode.MHSA_Q8, OpFn.BW_PARAM, [dy, e.qexp[dy], x, e.qexp[x], st, dqkv, e_bw,
                                                   e.scratch_bytes("bw_param.scratch", nbytes)], grads, iattrs=(H,))
            for p, gp in zip(params, grads):
                e.update(p, gp)
        return dx

    def backward(self, e, layer, saved, dy, need_dx):
        if e.is_q8(layer):
            return self._backward_q8(e, layer, saved, dy, need_dx)
        x, st = saved
        T, D = e.dims(x)
        H = layer["heads"]
        params = self._params(e)
        trains = [p for p in params if e.is_trainable(p)]
        if not trains and not need_dx:
            return None
        # bw_input (or bw_qkv alone, n_out 1) writes dqkv, which bw_param then reads
        dqkv = e.grad("qkv.grad", (T, 3 * D))
        dx = e.grad("in.grad", (T, D)) if need_dx else None
        e.node(OpCode.MHSA, OpFn.BW_INPUT, [dy, params[0], params[2], st, self._scratch(e, layer, "bw_input", T, D)],
               [dqkv] + ([dx] if need_dx else []), iattrs=(H,))
        if e.is_trainable(params[0]) or e.is_trainable(params[2]):
            grads = [e.param_grad(p) for p in params]
            e.node(OpCode.MHSA, OpFn.BW_PARAM, [dy, x, st, dqkv, self._scratch(e, layer, "bw_param", T, D)],
                   grads, iattrs=(H,))
            for p, gp in zip(params, grads):
                if e.is_trainable(p):
                    e.update(p, gp)
        else:  # bias-only: the projections' biases are dqkv and dy summed over tokens
            for b, g, width in ((params[1], dqkv, 3 * D), (params[3], dy, D)):
                if e.is_trainable(b):
                    e.bias_grad(b, g, width, 1)
        return dx

    def torch_module(self, layer, in_shape):
        _, D = _tokens(layer, in_shape)
        return _torch_classes()["SelfAttention"](D, layer["heads"])

    def from_torch(self, m, in_shape):
        _, D = _tokens(_Named("mhsa"), in_shape)
        problems = []
        if not m.batch_first:
            problems.append("batch_first=False")
        if m.dropout:
            problems.append(f"dropout={m.dropout}")
        if m.in_proj_bias is None:
            problems.append("bias=False")
        if m.bias_k is not None:
            problems.append("add_bias_kv=True")
        if m.add_zero_attn:
            problems.append("add_zero_attn=True")
        if not m._qkv_same_embed_dim:
            problems.append("kdim/vdim different from embed_dim")
        if problems:
            raise ModelError(f"SelfAttention with {', '.join(problems)} is not supported")
        if m.embed_dim != D:
            raise ModelError(f"embed_dim {m.embed_dim} but the input's last dimension is {D}")
        return {"heads": int(m.num_heads)}


@register
class SeqPoolRule(LayerRule):
    """CCT sequence pooling [T][D] → [D]: softmax over tokens of a Linear(D, 1) score."""

    type = "seqpool"
    torch_types = ("SeqPool",)

    def out_shape(self, layer, in_shape):
        return (_tokens(layer, in_shape)[1],)

    def param_shapes(self, layer, in_shape):
        D = _tokens(layer, in_shape)[1]
        return {"attention_pool.weight": (1, D), "attention_pool.bias": (1,)}

    def init_params(self, layer, in_shape, rng):
        D = _tokens(layer, in_shape)[1]
        bound = 1.0 / np.sqrt(D)  # nn.Linear(D, 1)
        return {"attention_pool.weight": uniform(rng, bound, (1, D)),
                "attention_pool.bias": uniform(rng, bound, (1,))}

    #: SEQPOOL_Q8: int8 tokens in, int8 pooled features out (what the classifier quantises
    #: anyway), the f32 kernels on one dequantized sample at a time
    int8 = int8_after_int8 = int8_before_int8 = True

    def forward(self, e, layer, x, train):
        T, D = _tokens(layer, e.dims(x))
        wts = e.saved("wts", (T,), batched=True)
        g, c = e.param("attention_pool.weight"), e.param("attention_pool.bias")
        if e.is_q8(layer):
            y, (x,) = e.q8_node(OpCode.SEQPOOL_Q8, OpFn.FW, [x], "out", (D,), more_ins=(g, c), more_outs=(wts,),
                                scratch=self._q8_scratch("fw", T, D))
            return y, (x, wts)
        y = e.act("out", (D,))
        e.node(OpCode.SEQPOOL, OpFn.FW, [x, g, c], [y, wts])
        return y, (x, wts)

    @staticmethod
    def _q8_scratch(fn: str, T: int, D: int) -> tuple[str, int]:
        """SEQPOOL_Q8's scratch of fn: a sample's tokens twice and one feature row, in f32."""
        return f"{fn}.scratch", 4 * (2 * T * D + D)

    def backward(self, e, layer, saved, dy, need_dx):
        x, wts = saved
        g, c = e.param("attention_pool.weight"), e.param("attention_pool.bias")
        q8 = e.is_q8(layer)
        if q8:
            dy = e.to_q8(dy)
        trains = e.is_trainable(g) or e.is_trainable(c)
        if trains:
            dg, dc = e.param_grad(g), e.param_grad(c)
            if q8:
                e.node(OpCode.SEQPOOL_Q8, OpFn.BW_PARAM, [dy, e.qexp[dy], x, e.qexp[x], wts],
                       [dg, dc, e.scratch_bytes(*self._q8_scratch("bw_param", *e.dims(x)))])
            else:
                e.node(OpCode.SEQPOOL, OpFn.BW_PARAM, [dy, x, wts], [dg, dc])
        dx = None
        if need_dx and q8:
            dx, _ = e.q8_node(OpCode.SEQPOOL_Q8, OpFn.BW_INPUT, [dy, x], "in.grad", e.dims(x), grad=True,
                              more_ins=(g, wts), scratch=self._q8_scratch("bw_input", *e.dims(x)))
        elif need_dx:
            dx = e.grad("in.grad", e.dims(x))
            e.node(OpCode.SEQPOOL, OpFn.BW_INPUT, [dy, x, g, wts], [dx])
        if trains:
            for p, gp in ((g, dg), (c, dc)):
                if e.is_trainable(p):
                    e.update(p, gp)
        return dx

    def torch_module(self, layer, in_shape):
        return _torch_classes()["SeqPool"](_tokens(layer, in_shape)[1])

    def from_torch(self, m, in_shape):
        D = _tokens(_Named("seqpool"), in_shape)[1]
        if m.attention_pool.in_features != D or m.attention_pool.bias is None:
            raise ModelError(f"SeqPool wants attention_pool = nn.Linear({D}, 1) with bias")
        return {}


# -- ONNX ----------------------------------------------------------------------------

def _onnx_softmax(a, w, shape):
    axis = a.get("axis", -1)
    if axis not in (-1, len(shape)):
        raise ModelError(f"Softmax over axis {axis}: only the last axis is supported")
    return "softmax", {}, {}


def _onnx_transpose(a, w, shape):
    perm = list(a.get("perm", []))
    if len(shape) != 2 or perm != [0, 2, 1]:
        raise ModelError(f"Transpose with perm {perm} of a {len(shape) + 1}-d tensor: only [0, 2, 1] "
                         f"(swap the two dims of a rank-2 sample) is supported")
    return "transpose", {}, {}


register_onnx("Softmax", _onnx_softmax)
register_onnx("Transpose", _onnx_transpose)
