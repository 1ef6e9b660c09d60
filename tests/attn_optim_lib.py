"""ctypes wrappers of the attention / tensor / loss / optimizer kernels
(firmware/runtime/ops/ep_attn_optim.h).

The Structure classes mirror the C params structs field for field. The wrappers
take and return NumPy float32 arrays. Every buffer a kernel writes (outputs,
saved state, scratch, in-place state) lives inside a guarded buffer: GUARD
sentinel elements on both sides, checked after the call, so a write outside the
documented extent fails even without the sanitizers; fresh outputs are pre-filled
with NaN, so an element the kernel forgot to write shows up. Inputs are exact-size
NumPy arrays (under the sanitizers an over-read of them is reported).
"""

from __future__ import annotations

import ctypes as C
from functools import cache

import numpy as np

import native_lib as nl

F32P = C.POINTER(C.c_float)
GUARD, SENTINEL = nl.GUARD, nl.SENTINEL
U32 = C.c_uint32
F32 = C.c_float


def _struct(name, fields):
    return type(name, (C.Structure,), {"_fields_": fields})


MhsaParams = _struct("MhsaParams", [(f, U32) for f in ("n", "t", "d", "heads")])
SeqpoolParams = _struct("SeqpoolParams", [(f, U32) for f in ("n", "t", "d")])
SoftmaxParams = _struct("SoftmaxParams", [("rows", U32), ("cols", U32)])
AddParams = _struct("AddParams", [("count", U32)])
ConcatParams = _struct("ConcatParams", [(f, U32) for f in ("n", "c0", "c1", "inner")])
TransposeParams = _struct("TransposeParams", [(f, U32) for f in ("n", "a", "b")])
MseParams = _struct("MseParams", [("n", U32), ("c", U32)])
SgdMomentumParams = _struct("SgdMomentumParams", [
    ("count", U32), ("step", U32), ("nesterov", U32), ("lr", F32), ("momentum", F32),
    ("dampening", F32), ("weight_decay", F32), ("grad_scale", F32)])
AdamParams = _struct("AdamParams", [
    ("count", U32), ("step", U32), ("decoupled", U32), ("lr", F32), ("beta1", F32),
    ("beta2", F32), ("eps", F32), ("weight_decay", F32), ("grad_scale", F32)])
ClipNormParams = _struct("ClipNormParams", [("count", U32), ("max_norm", F32)])

_P = C.POINTER
_SIGNATURES = {
    "ep_mhsa_saved_bytes": (U32, [_P(MhsaParams)]),
    "ep_mhsa_scratch_bytes": (U32, [_P(MhsaParams)]),
    "ep_mhsa_fw_f32": (None, [_P(MhsaParams)] + [F32P] * 8),
    "ep_mhsa_bw_qkv_f32": (None, [_P(MhsaParams)] + [F32P] * 5),
    "ep_mhsa_bw_input_f32": (None, [_P(MhsaParams)] + [F32P] * 7),
    "ep_mhsa_bw_param_f32": (None, [_P(MhsaParams)] + [F32P] * 9),
    "ep_seqpool_fw_f32": (None, [_P(SeqpoolParams)] + [F32P] * 5),
    "ep_seqpool_bw_input_f32": (None, [_P(SeqpoolParams)] + [F32P] * 5),
    "ep_seqpool_bw_param_f32": (None, [_P(SeqpoolParams)] + [F32P] * 5),
    "ep_softmax_fw_f32": (None, [_P(SoftmaxParams), F32P, F32P]),
    "ep_softmax_bw_f32": (None, [_P(SoftmaxParams), F32P, F32P, F32P]),
    "ep_add_fw_f32": (None, [_P(AddParams), F32P, F32P, F32P]),
    "ep_accumulate_f32": (None, [_P(AddParams), F32P, F32P]),
    "ep_concat_fw_f32": (None, [_P(ConcatParams), F32P, F32P, F32P]),
    "ep_concat_bw_f32": (None, [_P(ConcatParams), F32P, F32P, F32P]),
    "ep_transpose_fw_f32": (None, [_P(TransposeParams), F32P, F32P]),
    "ep_transpose_bw_f32": (None, [_P(TransposeParams), F32P, F32P]),
    "ep_mse_fw_f32": (None, [_P(MseParams), F32P, F32P, F32P]),
    "ep_mse_bw_f32": (None, [_P(MseParams), F32P, F32P, F32P]),
    "ep_sgd_momentum_update_f32": (None, [_P(SgdMomentumParams), F32P, F32P, F32P]),
    "ep_adam_update_f32": (None, [_P(AdamParams), F32P, F32P, F32P, F32P]),
    "ep_clip_norm_sumsq_f32": (None, [_P(ClipNormParams), F32P, F32P]),
    "ep_clip_norm_scale_f32": (None, [_P(ClipNormParams), F32P, F32P]),
}


@cache
def lib() -> C.CDLL:
    """The runtime library (native_lib builds every ops/*.c) with these signatures declared."""
    return nl.declare(_SIGNATURES)


_f32, _p, Buf = nl.f32, nl.fptr, nl.Guarded


# -- mhsa -----------------------------------------------------------------------------

def mhsa_params(n, t, d, heads) -> MhsaParams:
    return MhsaParams(n, t, d, heads)


def mhsa_saved_floats(p: MhsaParams) -> int:
    b = lib().ep_mhsa_saved_bytes(C.byref(p))
    assert b % 4 == 0
    return b // 4


def mhsa_scratch_floats(p: MhsaParams) -> int:
    b = lib().ep_mhsa_scratch_bytes(C.byref(p))
    assert b % 4 == 0
    return b // 4


def mhsa_fw(x, w_in, b_in, w_out, b_out, heads):
    """(y, saved): saved as a flat float32 array in the layout of ep_attn_optim.h."""
    x, w_in, b_in, w_out, b_out = map(_f32, (x, w_in, b_in, w_out, b_out))
    n, t, d = x.shape
    p = mhsa_params(n, t, d, heads)
    y, saved, scratch = Buf((n, t, d)), Buf((mhsa_saved_floats(p),)), Buf((mhsa_scratch_floats(p),))
    lib().ep_mhsa_fw_f32(C.byref(p), _p(x), _p(w_in), _p(b_in), _p(w_out), _p(b_out), y.ptr(),
                         saved.ptr(), scratch.ptr())
    scratch.get()
    return y.get(), saved.get()


def mhsa_unpack_saved(saved, n, t, d, heads):
    """(qkv [n][T][3D], P [n][H][T][T]) views of a saved buffer."""
    per = 3 * t * d + heads * t * t
    s = np.asarray(saved).reshape(n, per)
    return s[:, :3 * t * d].reshape(n, t, 3 * d), s[:, 3 * t * d:].reshape(n, heads, t, t)


def mhsa_bw_input(dy, w_in, w_out, saved, heads):
    """(dqkv, dx)."""
    dy, w_in, w_out, saved = map(_f32, (dy, w_in, w_out, saved))
    n, t, d = dy.shape
    p = mhsa_params(n, t, d, heads)
    assert saved.size == mhsa_saved_floats(p)
    dqkv, dx, scratch = Buf((n, t, 3 * d)), Buf((n, t, d)), Buf((mhsa_scratch_floats(p),))
    lib().ep_mhsa_bw_input_f32(C.byref(p), _p(dy), _p(w_in), _p(w_out), _p(saved), dqkv.ptr(),
                               dx.ptr(), scratch.ptr())
    scratch.get()
    return dqkv.get(), dx.get()


def mhsa_bw_qkv(dy, w_out, saved, heads):
    dy, w_out, saved = map(_f32, (dy, w_out, saved))
    n, t, d = dy.shape
    p = mhsa_params(n, t, d, heads)
    dqkv, scratch = Buf((n, t, 3 * d)), Buf((mhsa_scratch_floats(p),))
    lib().ep_mhsa_bw_qkv_f32(C.byref(p), _p(dy), _p(w_out), _p(saved), dqkv.ptr(), scratch.ptr())
    scratch.get()
    return dqkv.get()


def mhsa_bw_param(dy, x, saved, dqkv, heads):
    """(dw_in, db_in, dw_out, db_out)."""
    dy, x, saved, dqkv = map(_f32, (dy, x, saved, dqkv))
    n, t, d = dy.shape
    p = mhsa_params(n, t, d, heads)
    outs = [Buf((3 * d, d)), Buf((3 * d,)), Buf((d, d)), Buf((d,))]
    scratch = Buf((mhsa_scratch_floats(p),))
    lib().ep_mhsa_bw_param_f32(C.byref(p), _p(dy), _p(x), _p(saved), _p(dqkv),
                               *[o.ptr() for o in outs], scratch.ptr())
    scratch.get()
    return tuple(o.get() for o in outs)


# -- seqpool --------------------------------------------------------------------------

def seqpool_fw(x, g, c):
    """(y [n][D], wts [n][T])."""
    x, g, c = _f32(x), _f32(g).reshape(-1), _f32(c).reshape(-1)
    n, t, d = x.shape
    p = SeqpoolParams(n, t, d)
    y, w = Buf((n, d)), Buf((n, t))
    lib().ep_seqpool_fw_f32(C.byref(p), _p(x), _p(g), _p(c), y.ptr(), w.ptr())
    return y.get(), w.get()


def seqpool_bw_input(dy, x, g, wts):
    dy, x, g, wts = _f32(dy), _f32(x), _f32(g).reshape(-1), _f32(wts)
    n, t, d = x.shape
    p = SeqpoolParams(n, t, d)
    dx = Buf((n, t, d))
    lib().ep_seqpool_bw_input_f32(C.byref(p), _p(dy), _p(x), _p(g), _p(wts), dx.ptr())
    return dx.get()


def seqpool_bw_param(dy, x, wts):
    """(dg [D], dc [1])."""
    dy, x, wts = _f32(dy), _f32(x), _f32(wts)
    n, t, d = x.shape
    p = SeqpoolParams(n, t, d)
    dg, dc = Buf((d,)), Buf((1,))
    lib().ep_seqpool_bw_param_f32(C.byref(p), _p(dy), _p(x), _p(wts), dg.ptr(), dc.ptr())
    return dg.get(), dc.get()


# -- softmax --------------------------------------------------------------------------

def softmax_fw(x, in_place=False):
    x = _f32(x)
    p = SoftmaxParams(x.size // x.shape[-1], x.shape[-1])
    if in_place:
        b = Buf.of(x)
        lib().ep_softmax_fw_f32(C.byref(p), b.ptr(), b.ptr())
        return b.get()
    y = Buf(x.shape)
    lib().ep_softmax_fw_f32(C.byref(p), _p(x), y.ptr())
    return y.get()


def softmax_bw(dy, y, alias=None):
    """dx; alias = "dy" or "y" runs in place over that input."""
    dy, y = _f32(dy), _f32(y)
    p = SoftmaxParams(y.size // y.shape[-1], y.shape[-1])
    if alias == "dy":
        b = Buf.of(dy)
        lib().ep_softmax_bw_f32(C.byref(p), b.ptr(), _p(y), b.ptr())
    elif alias == "y":
        b = Buf.of(y)
        lib().ep_softmax_bw_f32(C.byref(p), _p(dy), b.ptr(), b.ptr())
    else:
        b = Buf(y.shape)
        lib().ep_softmax_bw_f32(C.byref(p), _p(dy), _p(y), b.ptr())
    return b.get()


# -- tensor ops -----------------------------------------------------------------------

def add_fw(a, b, alias=None):
    """a + b; alias = "a", "b" or "both" writes over that input."""
    a, b = _f32(a), _f32(b)
    p = AddParams(a.size)
    if alias == "both":
        y = Buf.of(a)
        lib().ep_add_fw_f32(C.byref(p), y.ptr(), y.ptr(), y.ptr())
    elif alias in ("a", "b"):
        y = Buf.of(a if alias == "a" else b)
        other = b if alias == "a" else a
        args = (y.ptr(), _p(other)) if alias == "a" else (_p(other), y.ptr())
        lib().ep_add_fw_f32(C.byref(p), *args, y.ptr())
    else:
        y = Buf(a.shape)
        lib().ep_add_fw_f32(C.byref(p), _p(a), _p(b), y.ptr())
    return y.get()


def accumulate(dst, src):
    """dst + src as ep_accumulate_f32 computes it in place (returns the new dst)."""
    src = _f32(src)
    d = Buf.of(dst)
    lib().ep_accumulate_f32(C.byref(AddParams(src.size)), _p(src), d.ptr())
    return d.get()


def concat_fw(a, b):
    a, b = _f32(a), _f32(b)
    n, c0 = a.shape[:2]
    c1 = b.shape[1]
    inner = int(np.prod(a.shape[2:], dtype=np.int64))
    p = ConcatParams(n, c0, c1, inner)
    y = Buf((n, c0 + c1) + a.shape[2:])
    lib().ep_concat_fw_f32(C.byref(p), _p(a), _p(b), y.ptr())
    return y.get()


def concat_bw(dy, c0):
    dy = _f32(dy)
    n, c = dy.shape[:2]
    inner = int(np.prod(dy.shape[2:], dtype=np.int64))
    p = ConcatParams(n, c0, c - c0, inner)
    da, db = Buf((n, c0) + dy.shape[2:]), Buf((n, c - c0) + dy.shape[2:])
    lib().ep_concat_bw_f32(C.byref(p), _p(dy), da.ptr(), db.ptr())
    return da.get(), db.get()


def transpose_fw(x):
    x = _f32(x)
    n, a, b = x.shape
    y = Buf((n, b, a))
    lib().ep_transpose_fw_f32(C.byref(TransposeParams(n, a, b)), _p(x), y.ptr())
    return y.get()


def transpose_bw(dy):
    """dx [n][a][b] from dy [n][b][a]."""
    dy = _f32(dy)
    n, b, a = dy.shape
    dx = Buf((n, a, b))
    lib().ep_transpose_bw_f32(C.byref(TransposeParams(n, a, b)), _p(dy), dx.ptr())
    return dx.get()


# -- mse ------------------------------------------------------------------------------

def mse_fw(pred, target) -> float:
    pred, target = _f32(pred), _f32(target)
    p = MseParams(pred.shape[0], pred.size // pred.shape[0])
    loss = Buf((1,))
    lib().ep_mse_fw_f32(C.byref(p), _p(pred), _p(target), loss.ptr())
    return float(loss.get()[0])


def mse_bw(pred, target, alias=None):
    pred, target = _f32(pred), _f32(target)
    p = MseParams(pred.shape[0], pred.size // pred.shape[0])
    if alias == "pred":
        d = Buf.of(pred)
        lib().ep_mse_bw_f32(C.byref(p), d.ptr(), _p(target), d.ptr())
    elif alias == "target":
        d = Buf.of(target)
        lib().ep_mse_bw_f32(C.byref(p), _p(pred), d.ptr(), d.ptr())
    else:
        d = Buf(pred.shape)
        lib().ep_mse_bw_f32(C.byref(p), _p(pred), _p(target), d.ptr())
    return d.get()


# -- optimizers -----------------------------------------------------------------------

def sgd_momentum_step(param, buf, grad, *, step, lr, momentum=0.0, dampening=0.0,
                      weight_decay=0.0, nesterov=False, grad_scale=1.0, buf_null=False):
    """(new param, new buf); buf_null passes NULL for buf (allowed when momentum == 0)."""
    grad = _f32(grad)
    p = SgdMomentumParams(grad.size, step, int(nesterov), lr, momentum, dampening, weight_decay,
                          grad_scale)
    w, b = Buf.of(param), (None if buf_null else Buf.of(buf))
    lib().ep_sgd_momentum_update_f32(C.byref(p), _p(grad), w.ptr(), None if b is None else b.ptr())
    return w.get(), (None if b is None else b.get())


def adam_step(param, m, v, grad, *, step, lr, beta1, beta2, eps, weight_decay=0.0,
              decoupled=False, grad_scale=1.0):
    """(new param, new m, new v)."""
    grad = _f32(grad)
    p = AdamParams(grad.size, step, int(decoupled), lr, beta1, beta2, eps, weight_decay, grad_scale)
    w, mb, vb = Buf.of(param), Buf.of(m), Buf.of(v)
    lib().ep_adam_update_f32(C.byref(p), _p(grad), w.ptr(), mb.ptr(), vb.ptr())
    return w.get(), mb.get(), vb.get()


def clip_norm_sumsq(x, acc=0.0) -> float:
    x = _f32(x)
    a = Buf.of(np.array([acc], np.float32))
    lib().ep_clip_norm_sumsq_f32(C.byref(ClipNormParams(x.size, 0.0)), _p(x), a.ptr())
    return float(a.get()[0])


def clip_norm_scale(x, sumsq, max_norm):
    x = _f32(x)
    s = np.array([sumsq], np.float32)
    b = Buf.of(x)
    lib().ep_clip_norm_scale_f32(C.byref(ClipNormParams(x.size, max_norm)), _p(s), b.ptr())
    return b.get()
