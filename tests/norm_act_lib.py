"""ctypes wrappers of the normalisation / activation / dropout kernels
(firmware/runtime/ops/ep_norm_act.h).

The structs mirror ep_batchnorm_params_t, ep_layernorm_params_t,
ep_groupnorm_params_t, ep_act_params_t and ep_dropout_params_t field for field.
The wrappers take and return NumPy arrays; every fresh output buffer has GUARD
sentinel elements on both sides and is pre-filled with NaN inside (0xA5 bytes for
the dropout mask); the wrappers assert after the call that the sentinels are
intact (a write outside the documented extent fails even without the sanitizers)
and the NaN fill shows an element the kernel forgot to write. In-place variants
take `out=` (the very array passed as the input).
"""

from __future__ import annotations

import ctypes as C
from functools import cache

import native_lib as nl
import numpy as np

F32P = C.POINTER(C.c_float)
U8P = C.POINTER(C.c_uint8)
GUARD, SENTINEL, SENTINEL_U8 = nl.GUARD, nl.SENTINEL, nl.SENTINEL_U8


class BatchNormParams(C.Structure):
    _fields_ = [("n", C.c_uint32), ("c", C.c_uint32), ("hw", C.c_uint32),
                ("eps", C.c_float), ("momentum", C.c_float)]


class LayerNormParams(C.Structure):
    _fields_ = [("rows", C.c_uint32), ("d", C.c_uint32), ("eps", C.c_float)]


class GroupNormParams(C.Structure):
    _fields_ = [("n", C.c_uint32), ("c", C.c_uint32), ("hw", C.c_uint32), ("groups", C.c_uint32),
                ("eps", C.c_float)]


class ActParams(C.Structure):
    _fields_ = [("count", C.c_uint32), ("alpha", C.c_float)]


class DropoutParams(C.Structure):
    _fields_ = [("count", C.c_uint32), ("p_drop", C.c_float), ("state", C.POINTER(C.c_uint32))]


_BP, _LP, _GP = C.POINTER(BatchNormParams), C.POINTER(LayerNormParams), C.POINTER(GroupNormParams)
_AP, _DP = C.POINTER(ActParams), C.POINTER(DropoutParams)
ACTS = ("relu6", "elu", "gelu", "sigmoid", "tanh")

_SIGNATURES = {
    "ep_batchnorm_fw_train_f32": (None, [_BP, F32P, F32P, F32P, F32P, F32P, F32P, F32P]),
    "ep_batchnorm_fw_eval_f32": (None, [_BP, F32P, F32P, F32P, F32P, F32P, F32P]),
    "ep_batchnorm_bw_input_train_f32": (None, [_BP, F32P, F32P, F32P, F32P, F32P]),
    "ep_batchnorm_bw_input_eval_f32": (None, [_BP, F32P, F32P, F32P, F32P]),
    "ep_batchnorm_bw_param_train_f32": (None, [_BP, F32P, F32P, F32P, F32P, F32P]),
    "ep_batchnorm_bw_param_eval_f32": (None, [_BP, F32P, F32P, F32P, F32P, F32P, F32P]),
    "ep_layernorm_fw_f32": (None, [_LP, F32P, F32P, F32P, F32P, F32P]),
    "ep_layernorm_bw_input_f32": (None, [_LP, F32P, F32P, F32P, F32P, F32P]),
    "ep_layernorm_bw_param_f32": (None, [_LP, F32P, F32P, F32P, F32P, F32P]),
    "ep_groupnorm_fw_f32": (None, [_GP, F32P, F32P, F32P, F32P, F32P]),
    "ep_groupnorm_bw_input_f32": (None, [_GP, F32P, F32P, F32P, F32P, F32P]),
    "ep_groupnorm_bw_param_f32": (None, [_GP, F32P, F32P, F32P, F32P, F32P]),
    "ep_dropout_fw_train_f32": (None, [_DP, F32P, F32P, U8P]),
    "ep_dropout_fw_eval_f32": (None, [_DP, F32P, F32P]),
    "ep_dropout_bw_f32": (None, [_DP, F32P, U8P, F32P]),
}
for _a in ACTS:
    _SIGNATURES[f"ep_{_a}_fw_f32"] = (None, [_AP, F32P, F32P])
    _SIGNATURES[f"ep_{_a}_bw_f32"] = (None, [_AP, F32P, F32P, F32P])


@cache
def lib() -> C.CDLL:
    """The runtime library (native_lib builds every ops/*.c) with these signatures declared."""
    return nl.declare(_SIGNATURES)


# -- buffers ------------------------------------------------------------------------

_f32, _p = nl.f32, nl.fptr


def _Out(shape, dtype=np.float32, init=None):  # noqa: N802 - an output inside guards
    return nl.Guarded(shape, init, dtype)


def _run_out(out, shape, call):
    """call(ptr) into a fresh guarded buffer, or into `out` (in place)."""
    if out is not None:
        call(_p(out))
        return out
    o = _Out(shape)
    call(o.ptr())
    return o.get()


# -- batchnorm ----------------------------------------------------------------------

def bn_params(x_shape, eps=1e-5, momentum=0.1) -> BatchNormParams:
    """x_shape = (n, c, *spatial); hw = product of spatial (1 if none)."""
    n, c = x_shape[0], x_shape[1]
    hw = int(np.prod(x_shape[2:])) if len(x_shape) > 2 else 1
    return BatchNormParams(n, c, hw, eps, momentum)


def bn_fw_train(x, gamma, beta, running_mean=None, running_var=None, eps=1e-5, momentum=0.1, out=None):
    """(y, saved [2c], new running_mean, new running_var); running stats None → NULL; out=x
    runs in place."""
    x, gamma, beta = _f32(x), _f32(gamma), _f32(beta)
    p = bn_params(x.shape, eps, momentum)
    saved = _Out((2 * p.c,))
    track = running_mean is not None
    rm = _Out((p.c,), init=running_mean) if track else None
    rv = _Out((p.c,), init=running_var) if track else None
    y = _run_out(out, x.shape, lambda yp: lib().ep_batchnorm_fw_train_f32(
        C.byref(p), _p(x if out is None else out), _p(gamma), _p(beta), yp, saved.ptr(),
        rm.ptr() if track else None, rv.ptr() if track else None))
    return y, saved.get(), (rm.get() if track else None), (rv.get() if track else None)


def bn_fw_eval(x, gamma, beta, running_mean, running_var, eps=1e-5, out=None):
    x = _f32(x)
    g, b, rm, rv = map(_f32, (gamma, beta, running_mean, running_var))
    p = bn_params(x.shape, eps)
    return _run_out(out, x.shape, lambda y: lib().ep_batchnorm_fw_eval_f32(
        C.byref(p), _p(x if out is None else out), _p(g), _p(b), _p(rm), _p(rv), y))


def bn_bw_input_train(dy, x, gamma, saved, out=None):
    dy, x, g, s = map(_f32, (dy, x, gamma, saved))
    p = bn_params(x.shape)
    return _run_out(out, x.shape, lambda dx: lib().ep_batchnorm_bw_input_train_f32(
        C.byref(p), _p(dy if out is None else out), _p(x), _p(g), _p(s), dx))


def bn_bw_input_eval(dy, gamma, running_var, eps=1e-5, out=None):
    dy, g, rv = map(_f32, (dy, gamma, running_var))
    p = bn_params(dy.shape, eps)
    return _run_out(out, dy.shape, lambda dx: lib().ep_batchnorm_bw_input_eval_f32(
        C.byref(p), _p(dy if out is None else out), _p(g), _p(rv), dx))


def bn_bw_param_train(dy, x, saved):
    dy, x, s = map(_f32, (dy, x, saved))
    p = bn_params(x.shape)
    dg, db = _Out((p.c,)), _Out((p.c,))
    lib().ep_batchnorm_bw_param_train_f32(C.byref(p), _p(dy), _p(x), _p(s), dg.ptr(), db.ptr())
    return dg.get(), db.get()


def bn_bw_param_eval(dy, x, running_mean, running_var, eps=1e-5):
    dy, x, rm, rv = map(_f32, (dy, x, running_mean, running_var))
    p = bn_params(x.shape, eps)
    dg, db = _Out((p.c,)), _Out((p.c,))
    lib().ep_batchnorm_bw_param_eval_f32(C.byref(p), _p(dy), _p(x), _p(rm), _p(rv), dg.ptr(), db.ptr())
    return dg.get(), db.get()


# -- layernorm ----------------------------------------------------------------------

def ln_params(x_shape, eps=1e-5) -> LayerNormParams:
    d = x_shape[-1]
    return LayerNormParams(int(np.prod(x_shape)) // d, d, eps)


def ln_fw(x, gamma, beta, eps=1e-5, out=None):
    """(y, saved [2·rows]); out=x runs in place."""
    x, g, b = map(_f32, (x, gamma, beta))
    p = ln_params(x.shape, eps)
    saved = _Out((2 * p.rows,))
    y = _run_out(out, x.shape, lambda yp: lib().ep_layernorm_fw_f32(
        C.byref(p), _p(x if out is None else out), _p(g), _p(b), yp, saved.ptr()))
    return y, saved.get()


def ln_bw_input(dy, x, gamma, saved, out=None):
    dy, x, g, s = map(_f32, (dy, x, gamma, saved))
    p = ln_params(x.shape)
    return _run_out(out, x.shape, lambda dx: lib().ep_layernorm_bw_input_f32(
        C.byref(p), _p(dy if out is None else out), _p(x), _p(g), _p(s), dx))


def ln_bw_param(dy, x, saved):
    dy, x, s = map(_f32, (dy, x, saved))
    p = ln_params(x.shape)
    dg, db = _Out((p.d,)), _Out((p.d,))
    lib().ep_layernorm_bw_param_f32(C.byref(p), _p(dy), _p(x), _p(s), dg.ptr(), db.ptr())
    return dg.get(), db.get()


# -- groupnorm ----------------------------------------------------------------------

def gn_params(x_shape, groups, eps=1e-5) -> GroupNormParams:
    n, c = x_shape[0], x_shape[1]
    hw = int(np.prod(x_shape[2:])) if len(x_shape) > 2 else 1
    return GroupNormParams(n, c, hw, groups, eps)


def gn_fw(x, gamma, beta, groups, eps=1e-5, out=None):
    """(y, saved [2·n·G]); out=x runs in place."""
    x, g, b = map(_f32, (x, gamma, beta))
    p = gn_params(x.shape, groups, eps)
    saved = _Out((2 * p.n * groups,))
    y = _run_out(out, x.shape, lambda yp: lib().ep_groupnorm_fw_f32(
        C.byref(p), _p(x if out is None else out), _p(g), _p(b), yp, saved.ptr()))
    return y, saved.get()


def gn_bw_input(dy, x, gamma, saved, groups, out=None):
    dy, x, g, s = map(_f32, (dy, x, gamma, saved))
    p = gn_params(x.shape, groups)
    return _run_out(out, x.shape, lambda dx: lib().ep_groupnorm_bw_input_f32(
        C.byref(p), _p(dy if out is None else out), _p(x), _p(g), _p(s), dx))


def gn_bw_param(dy, x, saved, groups):
    dy, x, s = map(_f32, (dy, x, saved))
    p = gn_params(x.shape, groups)
    dg, db = _Out((p.c,)), _Out((p.c,))
    lib().ep_groupnorm_bw_param_f32(C.byref(p), _p(dy), _p(x), _p(s), dg.ptr(), db.ptr())
    return dg.get(), db.get()


# -- activations --------------------------------------------------------------------

def act_fw(name: str, x, alpha: float = 1.0, out=None) -> np.ndarray:
    """y = act(x); out=x runs in place."""
    x = _f32(x)
    p = ActParams(x.size, alpha)
    fn = getattr(lib(), f"ep_{name}_fw_f32")
    return _run_out(out, x.shape, lambda y: fn(C.byref(p), _p(x if out is None else out), y))


def act_bw(name: str, dy, t, alpha: float = 1.0, out=None) -> np.ndarray:
    """dx from dy and t (y, or x for gelu); out=dy (or out=t) runs in place."""
    dy, t = _f32(dy), _f32(t)
    p = ActParams(dy.size, alpha)
    fn = getattr(lib(), f"ep_{name}_bw_f32")
    if out is not None:
        fn(C.byref(p), _p(out if out is dy else dy), _p(out if out is t else t), _p(out))
        return out
    o = _Out(dy.shape)
    fn(C.byref(p), _p(dy), _p(t), o.ptr())
    return o.get()


# -- dropout ------------------------------------------------------------------------

def mask_bytes(count: int) -> int:
    return (count + 7) // 8


def dropout_fw_train(x, p_drop: float, state: int, out=None):
    """(y, mask bytes, new state)."""
    x = _f32(x)
    st = C.c_uint32(state)
    p = DropoutParams(x.size, p_drop, C.pointer(st))
    mask = _Out((mask_bytes(x.size),), np.uint8)
    y = _run_out(out, x.shape, lambda yp: lib().ep_dropout_fw_train_f32(
        C.byref(p), _p(x if out is None else out), yp, mask.ptr()))
    return y, mask.get(), st.value


def dropout_fw_eval(x, out=None):
    x = _f32(x)
    p = DropoutParams(x.size, 0.5, None)
    return _run_out(out, x.shape, lambda yp: lib().ep_dropout_fw_eval_f32(
        C.byref(p), _p(x if out is None else out), yp))


def dropout_bw(dy, mask, p_drop: float, out=None):
    dy = _f32(dy)
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    p = DropoutParams(dy.size, p_drop, None)
    return _run_out(out, dy.shape, lambda dxp: lib().ep_dropout_bw_f32(
        C.byref(p), _p(dy if out is None else out), m.ctypes.data_as(U8P), dxp))


def xorshift_keep(count: int, p_drop: float, state: int):
    """The host's reproduction of the kernel's PRNG (ep_norm_act.h): (keep bool[count], new state)."""
    s = state & 0xFFFFFFFF or 0x6D2B79F5
    thr = int(np.float32(p_drop) * np.float32(16777216.0))
    keep = np.empty(count, bool)
    for k in range(count):
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        keep[k] = (s >> 8) >= thr
    return keep, s


def unpack_mask(mask: np.ndarray, count: int) -> np.ndarray:
    return np.unpackbits(np.asarray(mask, np.uint8), bitorder="little")[:count].astype(bool)
