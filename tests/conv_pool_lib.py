"""ctypes wrappers of the conv and pooling kernels (firmware/runtime/ops/ep_conv_pool.h).

The structs mirror ep_conv2d_params_t, ep_pool2d_params_t and
ep_global_avgpool_params_t field for field. The wrappers take and return NumPy
float32 arrays; every output buffer is allocated with GUARD sentinel elements on
both sides, pre-filled with NaN inside, and the wrappers assert after the call
that the sentinels are intact (a write outside the documented extent fails even
without the sanitizers) — the NaN fill shows an element the kernel forgot to write.
"""

from __future__ import annotations

import ctypes as C
from functools import cache

import numpy as np

import native_lib as nl

F32P = C.POINTER(C.c_float)
GUARD, SENTINEL = nl.GUARD, nl.SENTINEL


class Conv2dParams(C.Structure):
    _fields_ = [(name, C.c_uint32) for name in (
        "n", "c_in", "h_in", "w_in", "c_out", "h_out", "w_out", "kh", "kw", "sh", "sw",
        "pad_top", "pad_bottom", "pad_left", "pad_right", "dh", "dw", "groups")]


class Pool2dParams(C.Structure):
    _fields_ = [(name, C.c_uint32) for name in (
        "n", "c", "h_in", "w_in", "h_out", "w_out", "kh", "kw", "sh", "sw",
        "pad_top", "pad_bottom", "pad_left", "pad_right", "count_include_pad")]


class GlobalAvgPoolParams(C.Structure):
    _fields_ = [("n", C.c_uint32), ("c", C.c_uint32), ("hw", C.c_uint32)]


_CP, _PP, _GP = C.POINTER(Conv2dParams), C.POINTER(Pool2dParams), C.POINTER(GlobalAvgPoolParams)
_SIGNATURES = {
    "ep_conv2d_params_ok": (C.c_bool, [_CP]),
    "ep_conv2d_fw_f32": (None, [_CP, F32P, F32P, F32P, F32P]),
    "ep_conv2d_bw_input_f32": (None, [_CP, F32P, F32P, F32P]),
    "ep_conv2d_bw_param_f32": (None, [_CP, F32P, F32P, F32P, F32P]),
    "ep_pool2d_params_ok": (C.c_bool, [_PP]),
    "ep_avgpool2d_fw_f32": (None, [_PP, F32P, F32P]),
    "ep_avgpool2d_bw_input_f32": (None, [_PP, F32P, F32P]),
    "ep_maxpool2d_fw_f32": (None, [_PP, F32P, F32P]),
    "ep_maxpool2d_bw_input_f32": (None, [_PP, F32P, F32P, F32P]),
    "ep_global_avgpool_fw_f32": (None, [_GP, F32P, F32P]),
    "ep_global_avgpool_bw_input_f32": (None, [_GP, F32P, F32P]),
}


@cache
def lib() -> C.CDLL:
    """The runtime library (native_lib builds every ops/*.c) with these signatures declared."""
    return nl.declare(_SIGNATURES)


def out_len(n: int, pad_lo: int, pad_hi: int, k: int, s: int, d: int = 1) -> int:
    """PyTorch's floor-mode output length (0 if the window does not fit)."""
    span = n + pad_lo + pad_hi - d * (k - 1) - 1
    return span // s + 1 if span >= 0 else 0


# -- buffers ------------------------------------------------------------------------

_f32, _p = nl.f32, nl.fptr


def _Out(shape):  # noqa: N802 - an output buffer: NaN inside guards
    return nl.Guarded(shape)


# -- conv2d -------------------------------------------------------------------------

def conv_params(x_shape, w_shape, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1),
                groups=1) -> Conv2dParams:
    """pad = (top, bottom, left, right)."""
    n, c_in, h, w = x_shape
    c_out, _, kh, kw = w_shape
    t, b, l, r = pad
    ho = out_len(h, t, b, kh, stride[0], dilation[0])
    wo = out_len(w, l, r, kw, stride[1], dilation[1])
    return Conv2dParams(n, c_in, h, w, c_out, ho, wo, kh, kw, stride[0], stride[1], t, b, l, r,
                        dilation[0], dilation[1], groups)


def conv2d_params_ok(p: Conv2dParams) -> bool:
    return bool(lib().ep_conv2d_params_ok(C.byref(p)))


def conv2d_fw(x, w, b, **geo) -> np.ndarray:
    """y; b may be None (the kernel gets NULL)."""
    x, w = _f32(x), _f32(w)
    p = conv_params(x.shape, w.shape, **geo)
    y = _Out((p.n, p.c_out, p.h_out, p.w_out))
    b = None if b is None else _f32(b)
    lib().ep_conv2d_fw_f32(C.byref(p), _p(x), _p(w), None if b is None else _p(b), y.ptr())
    return y.get()


def conv2d_bw_input(dy, w, x_shape, **geo) -> np.ndarray:
    dy, w = _f32(dy), _f32(w)
    p = conv_params(x_shape, w.shape, **geo)
    assert dy.shape == (p.n, p.c_out, p.h_out, p.w_out)
    dx = _Out(tuple(x_shape))
    lib().ep_conv2d_bw_input_f32(C.byref(p), _p(dy), _p(w), dx.ptr())
    return dx.get()


def conv2d_bw_param(dy, x, w_shape, bias=True, **geo):
    """(dw, db); db is None when bias=False (the kernel gets NULL)."""
    dy, x = _f32(dy), _f32(x)
    p = conv_params(x.shape, w_shape, **geo)
    assert dy.shape == (p.n, p.c_out, p.h_out, p.w_out)
    dw = _Out(tuple(w_shape))
    db = _Out((p.c_out,)) if bias else None
    lib().ep_conv2d_bw_param_f32(C.byref(p), _p(dy), _p(x), dw.ptr(), db.ptr() if bias else None)
    return dw.get(), (db.get() if bias else None)


# -- pooling ------------------------------------------------------------------------

def pool_params(x_shape, kernel, stride, pad=(0, 0, 0, 0), count_include_pad=True) -> Pool2dParams:
    n, c, h, w = x_shape
    kh, kw = kernel
    t, b, l, r = pad
    return Pool2dParams(n, c, h, w, out_len(h, t, b, kh, stride[0]), out_len(w, l, r, kw, stride[1]),
                        kh, kw, stride[0], stride[1], t, b, l, r, int(count_include_pad))


def pool2d_params_ok(p: Pool2dParams) -> bool:
    return bool(lib().ep_pool2d_params_ok(C.byref(p)))


def _pool_fw(fn: str, x, **geo) -> np.ndarray:
    x = _f32(x)
    p = pool_params(x.shape, **geo)
    y = _Out((p.n, p.c, p.h_out, p.w_out))
    getattr(lib(), fn)(C.byref(p), _p(x), y.ptr())
    return y.get()


def avgpool2d_fw(x, **geo) -> np.ndarray:
    return _pool_fw("ep_avgpool2d_fw_f32", x, **geo)


def maxpool2d_fw(x, **geo) -> np.ndarray:
    return _pool_fw("ep_maxpool2d_fw_f32", x, **geo)


def avgpool2d_bw_input(dy, x_shape, **geo) -> np.ndarray:
    dy = _f32(dy)
    p = pool_params(x_shape, **geo)
    assert dy.shape == (p.n, p.c, p.h_out, p.w_out)
    dx = _Out(tuple(x_shape))
    lib().ep_avgpool2d_bw_input_f32(C.byref(p), _p(dy), dx.ptr())
    return dx.get()


def maxpool2d_bw_input(dy, x, **geo) -> np.ndarray:
    dy, x = _f32(dy), _f32(x)
    p = pool_params(x.shape, **geo)
    assert dy.shape == (p.n, p.c, p.h_out, p.w_out)
    dx = _Out(x.shape)
    lib().ep_maxpool2d_bw_input_f32(C.byref(p), _p(dy), _p(x), dx.ptr())
    return dx.get()


# -- global average pooling ------------------------------------------------------------

def global_avgpool_fw(x) -> np.ndarray:
    """x [n][c][h][w] (or [n][c][hw]) -> [n][c]."""
    x = _f32(x)
    n, c = x.shape[:2]
    p = GlobalAvgPoolParams(n, c, x.size // (n * c))
    y = _Out((n, c))
    lib().ep_global_avgpool_fw_f32(C.byref(p), _p(x), y.ptr())
    return y.get()


def global_avgpool_bw_input(dy, x_shape) -> np.ndarray:
    dy = _f32(dy)
    n, c = x_shape[:2]
    p = GlobalAvgPoolParams(n, c, int(np.prod(x_shape[2:])))
    dx = _Out(tuple(x_shape))
    lib().ep_global_avgpool_bw_input_f32(C.byref(p), _p(dy), dx.ptr())
    return dx.get()
