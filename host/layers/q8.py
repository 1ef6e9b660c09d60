"""The int8 side of the linear and conv rules (docs/ops/int8.md, `--dtype int8|mixed`).

An int8 layer reads an S8 activation with its I32 [1] exponent (the emitter
converts f32 inputs with QUANTIZE), runs LINEAR_Q8 / CONV2D_Q8 on int8 weights
with per-output-channel exponents, and writes an S8 output with a dynamic
exponent. Its weights come from post-training quantisation of the f32 values
(host.quant.quantize_weights, bias_exponent, quantize_bias):

- a frozen layer keeps only the int8 codes on the device (the f32 weights are
  never uploaded: a quarter of the memory);
- a trained layer keeps f32 master weights, the optimizer steps them, and
  REQUANT_WEIGHTS refreshes the int8 codes after each step ("fp32 master weights":
  updates smaller than an int8 step accumulate instead of being lost).

Backward: BW_INPUT turns the int8 error into the int8 input error; BW_PARAM
returns f32 gradients for the master weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import quant
from ..ids import DType, OpCode, OpFn, TensorFlag


@dataclass
class Q8Params:
    w: int        # S8 codes [C_out, ...]
    e_w: int      # I32 [C_out]
    b: int | None  # I32 codes [C_out]
    e_b: int | None  # I32 [1]


def params(e, layer, with_bias: bool) -> Q8Params:
    """The int8 codes of the current layer's weights (made once per layer, from the f32 values)."""
    key = f"{layer.name}.weight.q8"
    if key in e.params:
        return e.q8_cache[layer.name]
    w = np.asarray(e.values[f"{layer.name}.weight"], np.float32)
    wq, ew = quant.quantize_weights(w)
    flags = TensorFlag.PARAM
    t_w = e.g.add_tensor(_t(key, w.shape, DType.S8, flags, wq))
    t_ew = e.g.add_tensor(_t(f"{layer.name}.weight.exp", (w.shape[0],), DType.I32, flags, ew))
    t_b = t_eb = None
    if with_bias:
        b = np.asarray(e.values[f"{layer.name}.bias"], np.float32)
        eb = quant.bias_exponent(b)
        t_b = e.g.add_tensor(_t(f"{layer.name}.bias.q32", b.shape, DType.I32, flags, quant.quantize_bias(b, eb)))
        t_eb = e.g.add_tensor(_t(f"{layer.name}.bias.exp", (1,), DType.I32, flags, np.array([eb], np.int32)))
    for i in (t_w, t_ew, t_b, t_eb):
        if i is not None:
            e.params[e.g.tensors[i].name] = i
            e.param_names[i] = e.g.tensors[i].name
    e.q8_cache[layer.name] = Q8Params(t_w, t_ew, t_b, t_eb)
    return e.q8_cache[layer.name]


def _t(name, dims, dtype, flags, init):
    from ..graph import Tensor

    return Tensor(name, tuple(int(d) for d in dims), dtype, flags, init=np.ascontiguousarray(init))


def forward(e, layer, op: OpCode, x: int, out_dims, iattrs, scratch: int, with_bias: bool) -> tuple[int, int]:
    """y = requant(x ⊛ W + b) in int8; returns (y, the int8 x backward reads); exponents in e.qexp."""
    p = params(e, layer, with_bias)
    x = e.to_q8(x)
    y = e.act_q8("out", out_dims)
    ins = [x, e.qexp[x], p.w, p.e_w] + ([p.b, p.e_b] if with_bias else [])
    e.node(op, OpFn.FW, ins, [y, e.qexp[y], e.scratch_bytes("fw.scratch", scratch)], iattrs=iattrs)
    return y, x


def backward(e, layer, op: OpCode, x: int, dy: int, need_dx: bool, iattrs, scratch: dict[str, int],
             with_bias: bool) -> int | None:
    """The int8 layer's gradients: f32 dW/db for the master weights (then the optimizer
    and REQUANT_WEIGHTS), and the int8 input error if an earlier layer needs it."""
    p = params(e, layer, with_bias)
    dy = e.to_q8(dy)
    w = e.params.get(f"{layer.name}.weight")  # None: a frozen int8 layer keeps only its codes
    b = e.params.get(f"{layer.name}.bias") if with_bias else None
    trains = w is not None and e.is_trainable(w)
    grads = []
    if trains:
        grads = [(w, e.param_grad(w))] + ([(b, e.param_grad(b))] if b is not None else [])
        outs = [gp for _, gp in grads]
        if b is None:  # BW_PARAM always writes db: a scratch for a layer without bias
            outs.append(e.scratch("db.unused", e.g.tensors[w].dims[0]))
        e.node(op, OpFn.BW_PARAM, [dy, e.qexp[dy], x, e.qexp[x]],
               outs + [e.scratch_bytes("bw_param.scratch", scratch["bw_param_f32"])], iattrs=iattrs)
    dx = None
    if need_dx:
        dx = e.act_q8("in.grad", e.dims(x), grad=True)
        e.node(op, OpFn.BW_INPUT, [dy, e.qexp[dy], p.w, p.e_w],
               [dx, e.qexp[dx], e.scratch_bytes("bw_input.scratch", scratch["bw_input"])], iattrs=iattrs)
    for param, gp in grads:
        e.update(param, gp, then=lambda em, param=param: _requant(em, p, param, param == w))
    return dx


def _requant(e, p: Q8Params, master: int, is_weight: bool) -> None:
    """After a master weight's step: its int8 codes again (REQUANT_WEIGHTS)."""
    if is_weight:
        e.node(OpCode.REQUANT_WEIGHTS, OpFn.FW, [master], [p.w, p.e_w], iattrs=(quant.SPREAD,))
    else:
        e.node(OpCode.REQUANT_WEIGHTS, OpFn.FW, [master, p.e_b], [p.b])
