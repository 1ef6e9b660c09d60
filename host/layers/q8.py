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
  updates smaller than an int8 step accumulate instead of being lost);
- or, with TrainConfig.int8_updates "sr" (where masters do not fit), the codes
  themselves train: BW_PARAM returns int32 gradient sums and SGD_Q8 steps the codes
  in place with stochastic rounding, at exponents fixed by PTQ with
  quant.SR_HEADROOM bits of headroom. No f32 copy of the layer exists on the device.

Backward: BW_INPUT turns the int8 error into the int8 input error; BW_PARAM
returns f32 gradients for the master weights (or int32 sums for SGD_Q8).
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
    sr = layer.name in e.q8_sr  # the codes train (SGD_Q8): exponents stay fixed, so room to grow
    wq, ew = quant.quantize_weights(w, headroom=quant.SR_HEADROOM if sr else 0)
    flags = TensorFlag.PARAM
    codes = flags | (TensorFlag.TRAINABLE if sr else TensorFlag(0))
    t_w = e.g.add_tensor(_t(key, w.shape, DType.S8, codes, wq))
    t_ew = e.g.add_tensor(_t(f"{layer.name}.weight.exp", (w.shape[0],), DType.I32, flags, ew))
    t_b = t_eb = None
    if with_bias:
        b = np.asarray(e.values[f"{layer.name}.bias"], np.float32)
        eb = quant.bias_exponent(b)
        t_b = e.g.add_tensor(_t(f"{layer.name}.bias.q32", b.shape, DType.I32, codes, quant.quantize_bias(b, eb)))
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
    e.node(op, OpFn.FW, ins, [y, e.qexp[y], e.scratch_bytes("fw.scratch", scratch)], iattrs=_sums(e, op, iattrs))
    return y, x


def _sums(e, op: OpCode, iattrs) -> tuple[int, ...]:
    """FW and BW_INPUT iattrs: per-sample sums (TrainConfig.int8_sums) are a conv's iattr[9] = 1
    and a linear layer's iattr[0] = 1."""
    if not e.q8_sample_sums:
        return tuple(iattrs)
    return tuple(iattrs) + (1,) if op == OpCode.CONV2D_Q8 else (1,)


def backward(e, layer, op: OpCode, x: int, dy: int, need_dx: bool, iattrs, scratch: dict[str, int],
             with_bias: bool) -> int | None:
    """The int8 layer's gradients: f32 dW/db for the master weights (then the optimizer
    and REQUANT_WEIGHTS), and the int8 input error if an earlier layer needs it."""
    p = params(e, layer, with_bias)
    dy = e.to_q8(dy)
    if layer.name in e.q8_sr:
        return _backward_sr(e, layer, op, p, x, dy, need_dx, iattrs, scratch)
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
               outs + [e.scratch_bytes("bw_param.scratch", scratch["bw_param"])], iattrs=iattrs)
    dx = _input_error(e, op, p, x, dy, need_dx, iattrs, scratch)
    for param, gp in grads:
        e.update(param, gp, then=lambda em, param=param: _requant(em, p, param, param == w))
    return dx


def _input_error(e, op: OpCode, p: Q8Params, x: int, dy: int, need_dx: bool, iattrs,
                 scratch: dict[str, int]) -> int | None:
    """The int8 input error dx from dy and the weight codes (BW_INPUT), if an earlier layer
    needs it; emitted before any step changes the codes."""
    if not need_dx:
        return None
    dx = e.act_q8("in.grad", e.dims(x), grad=True)
    e.node(op, OpFn.BW_INPUT, [dy, e.qexp[dy], p.w, p.e_w],
           [dx, e.qexp[dx], e.scratch_bytes("bw_input.scratch", scratch["bw_input"])], iattrs=_sums(e, op, iattrs))
    return dx


def _backward_sr(e, layer, op: OpCode, p: Q8Params, x: int, dy: int, need_dx: bool, iattrs,
                 scratch: dict[str, int]) -> int | None:
    """Backward of an int8 layer whose codes train in place: int32 gradient sums (BW_PARAM's
    int form), the input error from the codes before their step, then SGD_Q8 on the weight
    codes (e_g[0] = e_dy + e_x) and the bias codes (e_g[1] = e_dy)."""
    from ..graph import Tensor

    C = e.g.tensors[p.w].dims[0]
    gw = e.g.add_tensor(Tensor(f"{layer.name}.weight.q8.grad", e.g.tensors[p.w].dims, DType.I32))
    gb = e.g.add_tensor(Tensor(f"{layer.name}.bias.q32.grad", (C,), DType.I32))  # a scratch without bias
    eg = e.g.add_tensor(Tensor(f"{layer.name}.grad.exp", (2,), DType.I32))
    e.node(op, OpFn.BW_PARAM, [dy, e.qexp[dy], x, e.qexp[x]],
           [gw, gb, eg, e.scratch_bytes("bw_param.scratch", scratch["bw_param"])], iattrs=iattrs)
    dx = _input_error(e, op, p, x, dy, need_dx, iattrs, scratch)
    if e.q8_rng is None:  # xorshift32 state (nonzero), a parameter: checkpoints keep it
        e.q8_rng = e.g.add_tensor(_t("int8.sgd_rng", (1,), DType.I32, TensorFlag.PARAM,
                                     np.array([quant.XORSHIFT_ZERO_SEED], np.int32)))
        e.params["int8.sgd_rng"] = e.q8_rng
        e.param_names[e.q8_rng] = "int8.sgd_rng"
    lr_q, lr_shift = quant.lr_fixed(e.lr)
    e.node(OpCode.SGD_Q8, OpFn.FW, [gw, eg, p.e_w], [p.w, e.q8_rng], iattrs=(lr_q, lr_shift, 0))
    if p.b is not None:
        e.node(OpCode.SGD_Q8, OpFn.FW, [gb, eg, p.e_b], [p.b, e.q8_rng], iattrs=(lr_q, lr_shift, 1))
    return dx


def dequantized(prog, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """f32 weights and biases of the int8 layers whose codes trained in place (read back
    from a device as codes and exponents), under the names of the model's parameters."""
    out = {}
    for idx, name in prog.param_names.items():
        t = prog.graph.tensors[idx]
        if not (t.flags & TensorFlag.TRAINABLE) or not name.endswith((".weight.q8", ".bias.q32")):
            continue
        layer = name.rsplit(".", 2)[0]
        if name.endswith(".weight.q8"):
            e_w = np.asarray(values[f"{layer}.weight.exp"], np.int64).reshape(-1, *([1] * (len(t.dims) - 1)))
            out[f"{layer}.weight"] = (values[name].astype(np.float64) * np.exp2(e_w)).astype(np.float32)
        else:
            e_b = int(np.asarray(values[f"{layer}.bias.exp"]).reshape(-1)[0])
            out[f"{layer}.bias"] = (values[name].astype(np.float64) * 2.0**e_b).astype(np.float32)
    return out


def _requant(e, p: Q8Params, master: int, is_weight: bool) -> None:
    """After a master weight's step: its int8 codes again (REQUANT_WEIGHTS)."""
    if is_weight:
        e.node(OpCode.REQUANT_WEIGHTS, OpFn.FW, [master], [p.w, p.e_w], iattrs=(quant.SPREAD,))
    else:
        e.node(OpCode.REQUANT_WEIGHTS, OpFn.FW, [master, p.e_b], [p.b])
