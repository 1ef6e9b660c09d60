"""Golden tests of the conv and pooling kernels (ep_conv_pool.h) against PyTorch.

Each kernel is called through ctypes (tests/conv_pool_lib.py) on random float32
inputs and compared with PyTorch run in float64 on the very same float32 values
(outputs, and gradients from torch.autograd). Per-side padding, which nn.Conv2d
and the pools only take symmetric, is applied as an explicit F.pad (zeros for
conv and average pooling, −∞ for max pooling) followed by an unpadded op.

Tolerances are per element, from the standard error analysis of recursive
summation (Higham, "Accuracy and Stability of Numerical Algorithms", ch. 3), as in
test_runtime_ops.py: with u = 2⁻²⁴, a float32 sum of m terms, each a product
rounded once (or an exact value), is within γₘ·Σ|termᵢ| of the exact sum, for ANY
order of summation (the kernels block and reorder their sums), γₘ = m·u/(1 − m·u),
taken with a 1 % margin (m·u ≪ 0.01 here). Σ|termᵢ| is computed exactly the way
the value is, by the same PyTorch op on |x|, |w|, |dy| (a conv of absolute values
is the sum of absolute products). The term counts m are upper bounds (taps in the
padding are skipped, never added). Errors of a wrong index, tap, sign or padding
side are of the size of the values themselves, orders of magnitude above these
bounds: the test_bound_catches_* tests check that for plausible bugs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import conv_pool_lib as cp
import native_lib as nl

U = 2.0 ** -24  # float32 unit roundoff


def gamma(m: int) -> float:
    """γₘ with the 1 % margin of the module docstring."""
    return 1.01 * m * U


def assert_within(got, ref, bound, what: str) -> None:
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    err = np.abs(got - ref)
    bad = ~(err <= bound)  # NaN (an unwritten element) counts as a failure
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} elements beyond the bound; worst error "
                           f"{np.nanmax(err):.3g}, bound there {np.broadcast_to(bound, err.shape)[bad][0]:.3g}")


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, np.float64), dtype=torch.float64, requires_grad=grad)


@pytest.fixture
def rng(request):
    """A generator seeded from the test id: reproducible, different per case."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


# -- conv2d -------------------------------------------------------------------------

def conv_ref(x, w, b, stride, pad, dilation, groups):
    """y = conv(pad(x)) in float64 (x, w, b: torch tensors). pad = (top, bottom, left, right)."""
    t, bt, l, r = pad
    return F.conv2d(F.pad(x, (l, r, t, bt)), w, b, stride, 0, dilation, groups)


# (n, c_in, h, w, c_out, (kh, kw), stride, pad (top, bottom, left, right), dilation, groups, bias)
CONV_CASES = {
    "3x3_pad1_b1": (1, 3, 7, 9, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True),
    "3x3_odd_nopad_b3": (3, 5, 9, 11, 6, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1, True),
    "3x5_stride2_asympad": (3, 4, 10, 13, 5, (3, 5), (2, 2), (1, 2, 0, 3), (1, 1), 1, True),
    "stride_gt_kernel": (2, 3, 11, 12, 4, (2, 2), (3, 3), (1, 0, 2, 1), (1, 1), 1, False),
    "stride_3x4_k2x1": (3, 2, 10, 13, 5, (2, 1), (3, 4), (0, 2, 1, 0), (1, 1), 1, True),
    "dilation2": (3, 4, 12, 11, 8, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1, True),
    "dilation2x3_stride2x3_asym": (2, 3, 13, 14, 5, (3, 2), (2, 3), (0, 1, 3, 0), (2, 3), 1, True),
    "dilation2_stride2": (1, 2, 9, 10, 4, (3, 3), (2, 2), (2, 1, 0, 2), (2, 2), 1, True),
    "groups2": (3, 6, 8, 9, 10, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, True),
    "groups2_cog8_stride2": (2, 4, 9, 9, 16, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 2, True),
    "groups3": (1, 9, 7, 7, 12, (3, 3), (1, 1), (0, 2, 1, 0), (1, 1), 3, False),
    "groups4_cig4": (3, 16, 5, 6, 8, (2, 3), (1, 2), (1, 0, 1, 1), (1, 1), 4, True),
    "depthwise3x3": (3, 6, 9, 10, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 6, True),
    "depthwise_stride2_asym": (2, 5, 11, 9, 5, (3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 5, False),
    "depthwise_dilation2": (1, 4, 10, 11, 4, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 4, True),
    "depthwise_mult2": (2, 4, 8, 8, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4, True),
    "pointwise": (3, 8, 5, 7, 12, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True),
    "pointwise_odd_b1": (1, 5, 3, 3, 7, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, False),
    "pointwise_groups2": (2, 6, 4, 5, 10, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 2, True),
    "pointwise_1ch": (1, 1, 1, 1, 1, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True),
    "1x1_stride2": (2, 4, 7, 7, 6, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1, True),
    "1x1_padded": (1, 3, 4, 5, 5, (1, 1), (1, 1), (1, 0, 0, 2), (1, 1), 1, True),
    "kernel_eq_input": (3, 4, 5, 6, 7, (5, 6), (1, 1), (0, 0, 0, 0), (1, 1), 1, True),
    "kernel_eq_input_padded": (1, 2, 3, 4, 5, (3, 4), (2, 2), (1, 1, 2, 1), (1, 1), 1, True),
    "pad_ge_kernel": (1, 2, 3, 3, 4, (2, 2), (1, 1), (3, 2, 2, 3), (1, 1), 1, True),
    "conv1d": (3, 5, 1, 37, 7, (1, 5), (1, 2), (0, 0, 2, 1), (1, 2), 1, True),
    "conv1d_depthwise": (2, 6, 1, 23, 6, (1, 7), (1, 1), (0, 0, 3, 3), (1, 1), 6, False),
    # wide kernels with 'same' padding: border column blocks split off their partial taps
    "depthwise_wide_padded": (2, 3, 1, 90, 3, (1, 64), (1, 1), (0, 0, 32, 31), (1, 1), 3, True),
    "wide_padded_stride2_dil2": (1, 2, 3, 70, 5, (2, 20), (1, 2), (1, 0, 19, 17), (1, 2), 1, True),
    # EEGNet (input [1][C = 22][T], T shortened): temporal conv (1, 64), 'same' padding
    "eegnet_temporal": (2, 1, 22, 80, 8, (1, 64), (1, 1), (0, 0, 32, 31), (1, 1), 1, False),
    # depthwise spatial conv (C, 1), depth multiplier D = 2 and D = 1
    "eegnet_spatial_D2": (2, 8, 22, 40, 16, (22, 1), (1, 1), (0, 0, 0, 0), (1, 1), 8, False),
    "eegnet_spatial_D1": (3, 8, 22, 33, 8, (22, 1), (1, 1), (0, 0, 0, 0), (1, 1), 8, True),
    # separable conv: depthwise (1, 16) then pointwise 16 -> 16
    "eegnet_separable_dw": (2, 16, 1, 21, 16, (1, 16), (1, 1), (0, 0, 8, 7), (1, 1), 16, False),
    "eegnet_separable_pw": (2, 16, 1, 21, 16, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, False),
}


def conv_case(rng, case):
    n, ci, h, w, co, (kh, kw), stride, pad, dil, groups, bias = case
    x = rand(rng, n, ci, h, w)
    wt = rand(rng, co, ci // groups, kh, kw)
    b = rand(rng, co) if bias else None
    geo = dict(stride=stride, pad=pad, dilation=dil, groups=groups)
    return x, wt, b, geo


@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv2d(rng, name):
    case = CONV_CASES[name]
    x, wt, b, geo = conv_case(rng, case)
    p = cp.conv_params(x.shape, wt.shape, **geo)
    assert cp.conv2d_params_ok(p)
    n, ci, co, groups = x.shape[0], x.shape[1], wt.shape[0], geo["groups"]
    kh, kw = wt.shape[2:]
    tg = dict(stride=geo["stride"], pad=geo["pad"], dilation=geo["dilation"], groups=groups)

    # forward: y = b + Σ of ≤ K = (ci/groups)·kh·kw products → γ_{K+1}·(|b| + Σ|w·x|)
    xt, wtt = t64(x, True), t64(wt, True)
    bt = t64(b, True) if b is not None else None
    y_ref = conv_ref(xt, wtt, bt, **tg)
    abs_b = torch.abs(bt.detach()) if b is not None else None
    mag = conv_ref(t64(np.abs(x)), t64(np.abs(wt)), abs_b, **tg).numpy()
    y = cp.conv2d_fw(x, wt, b, **geo)
    assert_within(y, y_ref.detach().numpy(), gamma(ci // groups * kh * kw + 1) * mag, "y")

    # gradients of Σ y·dy
    dy = rand(rng, *y.shape)
    y_ref.backward(t64(dy))
    # dx sums ≤ (co/groups)·kh·kw products w·dy → γ·Σ|w·dy| (the same gradient on |w|, |dy|)
    xa = t64(x, True)
    conv_ref(xa, t64(np.abs(wt)), None, **tg).backward(t64(np.abs(dy)))
    dx = cp.conv2d_bw_input(dy, wt, x.shape, **geo)
    assert_within(dx, xt.grad.numpy(), gamma(co // groups * kh * kw) * xa.grad.numpy(), "dx")

    # dw, db sum over the batch and the output pixels: ≤ n·ho·wo terms each
    m = n * y.shape[2] * y.shape[3]
    wa = t64(np.abs(wt), True)
    conv_ref(t64(np.abs(x)), wa, None, **tg).backward(t64(np.abs(dy)))
    dw, db = cp.conv2d_bw_param(dy, x, wt.shape, bias=b is not None, **geo)
    assert_within(dw, wtt.grad.numpy(), gamma(m) * wa.grad.numpy(), "dw")
    if b is not None:
        assert_within(db, bt.grad.numpy(), gamma(m) * np.abs(dy.astype(np.float64)).sum(axis=(0, 2, 3)), "db")
    else:
        assert db is None


def test_conv2d_bias_null_is_zero_bias(rng):
    """b = NULL gives exactly what b = 0 gives (same operations, 0 + v = v exactly)."""
    x, wt, _, geo = conv_case(rng, CONV_CASES["3x5_stride2_asympad"])
    zero = np.zeros(wt.shape[0], np.float32)
    np.testing.assert_array_equal(cp.conv2d_fw(x, wt, None, **geo), cp.conv2d_fw(x, wt, zero, **geo))
    x, wt, _, geo = conv_case(rng, CONV_CASES["pointwise_odd_b1"])
    zero = np.zeros(wt.shape[0], np.float32)
    np.testing.assert_array_equal(cp.conv2d_fw(x, wt, None, **geo), cp.conv2d_fw(x, wt, zero, **geo))


def test_conv2d_single_sample_param_grads_are_exact_sums(rng):
    """One sample, one output pixel (kernel = input): dw = dy·x and db = dy, exactly."""
    x = rand(rng, 1, 3, 4, 5)
    dy = rand(rng, 1, 6, 1, 1)
    dw, db = cp.conv2d_bw_param(dy, x, (6, 3, 4, 5))
    np.testing.assert_array_equal(dw, dy[0, :, :, :, None] * x[0][None])
    np.testing.assert_array_equal(db, dy[0, :, 0, 0])


def test_conv2d_stride_skips_get_zero_gradient():
    """Columns a stride > kernel never reads get dx = 0 (written, not left as is)."""
    dy = np.ones((1, 1, 1, 3), np.float32)
    w = np.ones((1, 1, 1, 2), np.float32)
    dx = cp.conv2d_bw_input(dy, w, (1, 1, 1, 11), stride=(1, 4))
    np.testing.assert_array_equal(dx[0, 0, 0], [1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0])


def test_conv2d_params_ok():
    good = cp.conv_params((2, 4, 8, 8), (6, 2, 3, 3), stride=(2, 1), pad=(1, 0, 2, 1), groups=2)
    assert cp.conv2d_params_ok(good)
    bad = [
        cp.conv_params((2, 4, 8, 8), (6, 2, 3, 3), groups=3),        # 3 does not divide 4
        cp.conv_params((2, 4, 2, 8), (6, 4, 3, 3)),                   # kernel taller than input
        cp.conv_params((2, 4, 8, 8), (6, 4, 3, 3), dilation=(0, 1)),  # dilation 0
    ]
    wrong_out = cp.conv_params((2, 4, 8, 8), (6, 4, 3, 3))
    wrong_out.w_out += 1
    for p in [*bad, wrong_out]:
        assert not cp.conv2d_params_ok(p)


def test_bound_catches_swapped_padding(rng):
    """Padding left/right swapped (an adapter bug) is far outside the forward bound."""
    x, wt, b, geo = conv_case(rng, CONV_CASES["3x5_stride2_asympad"])
    t, bt, l, r = geo["pad"]
    y = cp.conv2d_fw(x, wt, b, **geo)
    wrong = dict(geo, pad=(t, bt, r, l))
    tg = {k: v for k, v in wrong.items()}
    ref = conv_ref(t64(x), t64(wt), t64(b), **tg).numpy()
    mag = conv_ref(t64(np.abs(x)), t64(np.abs(wt)), t64(np.abs(b)), **tg).numpy()
    assert ref.shape == y.shape
    with pytest.raises(AssertionError):
        assert_within(y, ref, gamma(wt[0].size + 1) * mag, "y")


def test_bound_catches_unflipped_kernel_in_bw_input(rng):
    """dx computed with the kernel not flipped (a classic transposed-conv bug) fails the bound."""
    x, wt, _, geo = conv_case(rng, CONV_CASES["3x3_odd_nopad_b3"])
    y = cp.conv2d_fw(x, wt, None, **geo)
    dy = rand(rng, *y.shape)
    dx = cp.conv2d_bw_input(dy, wt, x.shape, **geo)
    # the buggy dx: the true gradient of a conv with the kernel rotated by 180°
    xt = t64(x, True)
    conv_ref(xt, t64(wt[:, :, ::-1, ::-1].copy()), None, (1, 1), (0, 0, 0, 0), (1, 1), 1).backward(t64(dy))
    xa = t64(x, True)
    conv_ref(xa, t64(np.abs(wt)), None, (1, 1), (0, 0, 0, 0), (1, 1), 1).backward(t64(np.abs(dy)))
    with pytest.raises(AssertionError):
        assert_within(dx, xt.grad.numpy(), gamma(wt.shape[0] * 9) * xa.grad.numpy(), "dx")


def test_bound_catches_off_by_one_in_bw_param(rng):
    """dw from dy shifted by one output column fails the bound."""
    x, wt, _, geo = conv_case(rng, CONV_CASES["dilation2"])
    y = cp.conv2d_fw(x, wt, None, **geo)
    dy = rand(rng, *y.shape)
    dw, _ = cp.conv2d_bw_param(dy, x, wt.shape, bias=False, **geo)
    tg = dict(stride=geo["stride"], pad=geo["pad"], dilation=geo["dilation"], groups=1)
    wb = t64(wt, True)
    conv_ref(t64(x), wb, None, **tg).backward(t64(np.roll(dy, 1, axis=3)))
    wa = t64(np.abs(wt), True)
    conv_ref(t64(np.abs(x)), wa, None, **tg).backward(t64(np.abs(dy)))
    with pytest.raises(AssertionError):
        assert_within(dw, wb.grad.numpy(), gamma(dy[:, 0].size) * wa.grad.numpy(), "dw")


# -- pooling -------------------------------------------------------------------------

# (n, c, h, w, kernel, stride, pad (top, bottom, left, right))
POOL_CASES = {
    "2x2_s2": (1, 1, 4, 4, (2, 2), (2, 2), (0, 0, 0, 0)),
    "3x3_s2_pad1_b3": (3, 5, 9, 11, (3, 3), (2, 2), (1, 1, 1, 1)),
    "3x2_s1_asym": (2, 3, 7, 10, (3, 2), (1, 1), (1, 0, 0, 1)),
    "stride_gt_kernel": (3, 2, 11, 13, (2, 2), (3, 4), (0, 1, 1, 0)),
    "kernel_eq_input": (2, 4, 5, 7, (5, 7), (1, 1), (0, 0, 0, 0)),
    "kernel_eq_input_padded": (1, 2, 3, 4, (3, 4), (1, 2), (1, 1, 1, 2)),
    "column_odd": (1, 3, 13, 1, (3, 1), (2, 1), (1, 1, 0, 0)),
    "eegnet_1x4": (3, 16, 1, 37, (1, 4), (1, 4), (0, 0, 0, 0)),
    "eegnet_1x8": (2, 16, 1, 43, (1, 8), (1, 8), (0, 0, 0, 0)),
    "3x3_s1_pad1": (2, 3, 8, 8, (3, 3), (1, 1), (1, 1, 1, 1)),
}


def pool_case(rng, case):
    n, c, h, w, kernel, stride, pad = case
    return rand(rng, n, c, h, w), dict(kernel=kernel, stride=stride, pad=pad)


def avg_ref(x, kernel, stride, pad, count_include_pad):
    """avg pool of a float64 tensor; the divisor of count_include_pad=False is the
    same sum pool applied to the mask of real (unpadded) elements."""
    t, b, l, r = pad
    s = F.avg_pool2d(F.pad(x, (l, r, t, b)), kernel, stride, divisor_override=1)
    if count_include_pad:
        return s / (kernel[0] * kernel[1])
    mask = F.pad(torch.ones_like(x), (l, r, t, b))
    return s / F.avg_pool2d(mask, kernel, stride, divisor_override=1)


def max_ref(x, kernel, stride, pad):
    t, b, l, r = pad
    return F.max_pool2d(F.pad(x, (l, r, t, b), value=-np.inf), kernel, stride)


def windows_over_an_element(kernel, stride) -> int:
    """Most windows that can cover one input element."""
    return -(-kernel[0] // stride[0]) * -(-kernel[1] // stride[1])


@pytest.mark.parametrize("include", [True, False], ids=["incl_pad", "excl_pad"])
@pytest.mark.parametrize("name", list(POOL_CASES))
def test_avgpool2d(rng, name, include):
    x, geo = pool_case(rng, POOL_CASES[name])
    p = cp.pool_params(x.shape, count_include_pad=include, **geo)
    assert cp.pool2d_params_ok(p)
    k = geo["kernel"][0] * geo["kernel"][1]
    xt = t64(x, True)
    y_ref = avg_ref(xt, count_include_pad=include, **geo)
    y = cp.avgpool2d_fw(x, count_include_pad=include, **geo)
    # a sum of ≤ k terms (γ_{k−1}) then one division (u): ≤ γ_{k+1}·(Σ|x|)/D
    mag = avg_ref(t64(np.abs(x)), count_include_pad=include, **geo).numpy()
    assert_within(y, y_ref.detach().numpy(), gamma(k + 1) * mag, "y")
    if include:  # symmetric small padding: PyTorch's own op agrees with the F.pad form
        t, b, l, r = geo["pad"]
        if t == b and l == r and 2 * t <= geo["kernel"][0] and 2 * l <= geo["kernel"][1]:
            native = F.avg_pool2d(t64(x), geo["kernel"], geo["stride"], (t, l), count_include_pad=True)
            assert_within(y, native.numpy(), gamma(k + 1) * mag, "y vs F.avg_pool2d")

    dy = rand(rng, *y.shape)
    y_ref.backward(t64(dy))
    # each dx element sums ≤ m quotients dy/D, each rounded once: ≤ γ_{m+1}·Σ|dy|/D
    xa = t64(x, True)
    avg_ref(xa, count_include_pad=include, **geo).backward(t64(np.abs(dy)))
    dx = cp.avgpool2d_bw_input(dy, x.shape, count_include_pad=include, **geo)
    m = windows_over_an_element(geo["kernel"], geo["stride"])
    assert_within(dx, xt.grad.numpy(), gamma(m + 1) * xa.grad.numpy(), "dx")


@pytest.mark.parametrize("name", list(POOL_CASES))
def test_maxpool2d(rng, name):
    x, geo = pool_case(rng, POOL_CASES[name])
    xt = t64(x, True)
    y_ref = max_ref(xt, **geo)
    y = cp.maxpool2d_fw(x, **geo)
    np.testing.assert_array_equal(y, y_ref.detach().numpy())  # a selection: exact
    dy = rand(rng, *y.shape)
    y_ref.backward(t64(dy))
    # dx: the dy of every window that selected the element, summed (≤ m terms, exact
    # when windows do not overlap): ≤ γ_m·Σ|dy| over those windows
    xa = t64(x, True)
    max_ref(xa, **geo).backward(t64(np.abs(dy)))
    m = windows_over_an_element(geo["kernel"], geo["stride"])
    assert_within(cp.maxpool2d_bw_input(dy, x, **geo), xt.grad.numpy(), gamma(m) * xa.grad.numpy(), "dx")


@pytest.mark.parametrize("name", ["3x2_s1_asym", "3x3_s1_pad1", "kernel_eq_input", "2x2_s2"])
def test_maxpool2d_ties_go_to_the_first_element(rng, name):
    """Values from {0, 1, 2}: most windows hold ties; PyTorch picks the first in scan order."""
    _, geo = pool_case(rng, POOL_CASES[name])
    n, c, h, w = POOL_CASES[name][:4]
    x = rng.integers(0, 3, (n, c, h, w)).astype(np.float32)
    xt = t64(x, True)
    y_ref = max_ref(xt, **geo)
    y = cp.maxpool2d_fw(x, **geo)
    np.testing.assert_array_equal(y, y_ref.detach().numpy())
    dy = rng.uniform(1, 2, y.shape).astype(np.float32)  # positive: nothing cancels
    y_ref.backward(t64(dy))
    xa = t64(x, True)
    max_ref(xa, **geo).backward(t64(dy))
    m = windows_over_an_element(geo["kernel"], geo["stride"])
    assert_within(cp.maxpool2d_bw_input(dy, x, **geo), xt.grad.numpy(), gamma(m) * xa.grad.numpy(), "dx")


def test_maxpool2d_all_equal_window_takes_the_first_valid_element():
    """Constant input with padding: each window's gradient lands on its first element
    inside the input (never on padding)."""
    x = np.full((1, 1, 3, 3), 5.0, np.float32)
    geo = dict(kernel=(2, 2), stride=(2, 2), pad=(1, 0, 1, 0))
    y = cp.maxpool2d_fw(x, **geo)
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 2), 5.0))
    dy = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], np.float32)
    dx = cp.maxpool2d_bw_input(dy, x, **geo)
    np.testing.assert_array_equal(dx[0, 0], [[1, 2, 0], [3, 4, 0], [0, 0, 0]])


def test_maxpool2d_nan_wins_like_pytorch(rng):
    x = rand(rng, 1, 2, 6, 6)
    x[0, 0, 1, 2] = np.nan
    x[0, 1, 4, 4] = np.nan
    x[0, 1, 4, 5] = np.nan  # two NaNs in a window: the last one wins
    geo = POOL_CASES["3x3_s1_pad1"]
    geo = dict(kernel=(3, 3), stride=(1, 1), pad=(1, 1, 1, 1))
    xt = t64(x, True)
    y_ref = max_ref(xt, **geo)
    y = cp.maxpool2d_fw(x, **geo)
    np.testing.assert_array_equal(y, y_ref.detach().numpy())  # NaN where PyTorch has NaN
    dy = rng.uniform(1, 2, y.shape).astype(np.float32)
    y_ref.backward(t64(dy))
    xa = t64(x, True)
    max_ref(xa, **geo).backward(t64(dy))
    assert_within(cp.maxpool2d_bw_input(dy, x, **geo), xt.grad.numpy(), gamma(9) * xa.grad.numpy(), "dx")


def test_pool_window_entirely_in_padding_is_zero():
    """Pads ≥ kernel (PyTorch refuses them): such windows output 0 and pass no gradient."""
    x = np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)
    geo = dict(kernel=(1, 1), stride=(1, 1), pad=(1, 0, 0, 0))
    for fw in (cp.avgpool2d_fw, cp.maxpool2d_fw):
        y = fw(x, **geo)
        np.testing.assert_array_equal(y[0, 0], [[0, 0], [1, 2], [3, 4]])
    dy = np.array([[[[9.0, 9.0], [1.0, 2.0], [3.0, 4.0]]]], np.float32)
    np.testing.assert_array_equal(cp.maxpool2d_bw_input(dy, x, **geo)[0, 0], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(cp.avgpool2d_bw_input(dy, x.shape, **geo)[0, 0], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(
        cp.avgpool2d_bw_input(dy, x.shape, count_include_pad=False, **geo)[0, 0], [[1, 2], [3, 4]])


def test_pool2d_params_ok():
    assert cp.pool2d_params_ok(cp.pool_params((1, 2, 5, 5), (3, 3), (2, 2), (1, 0, 0, 1)))
    bad = cp.pool_params((1, 2, 5, 5), (3, 3), (2, 2))
    bad.h_out += 1
    assert not cp.pool2d_params_ok(bad)
    assert not cp.pool2d_params_ok(cp.pool_params((1, 2, 2, 5), (3, 3), (1, 1)))


def test_bound_catches_max_ties_to_the_last_element(rng):
    """Ties resolved to the LAST element (mirror the input, pool, mirror back) fail the check."""
    x = rng.integers(0, 2, (2, 3, 6, 6)).astype(np.float32)
    geo = dict(kernel=(3, 3), stride=(1, 1), pad=(0, 0, 0, 0))
    dy = rng.uniform(1, 2, (2, 3, 4, 4)).astype(np.float32)
    dx = cp.maxpool2d_bw_input(dy, x, **geo)
    xt = t64(x[:, :, ::-1, ::-1].copy(), True)
    max_ref(xt, **geo).backward(t64(dy[:, :, ::-1, ::-1].copy()))
    last = xt.grad.numpy()[:, :, ::-1, ::-1]
    with pytest.raises(AssertionError):
        assert_within(dx, last, gamma(9) * np.abs(last), "dx")


def test_bound_catches_a_wrong_avg_divisor(rng):
    """count_include_pad mixed up: the border outputs are off by a factor, far beyond the bound."""
    x, geo = pool_case(rng, POOL_CASES["3x3_s2_pad1_b3"])
    y = cp.avgpool2d_fw(x, count_include_pad=False, **geo)
    ref = avg_ref(t64(x), count_include_pad=True, **geo).numpy()
    mag = avg_ref(t64(np.abs(x)), count_include_pad=True, **geo).numpy()
    with pytest.raises(AssertionError):
        assert_within(y, ref, gamma(10) * mag, "y")


# -- global average pooling --------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 9), (2, 16, 1, 13), (1, 3, 2, 2),
                                   (3, 4, 1, 1), (2, 7, 5, 3)])
def test_global_avgpool(rng, shape):
    x = rand(rng, *shape)
    hw = shape[2] * shape[3]
    xt = t64(x, True)
    y_ref = xt.mean(dim=(2, 3))
    y = cp.global_avgpool_fw(x)
    # a sum of hw terms in 4 partial sums (γ_{hw−1}, any order) and one division (u)
    assert_within(y, y_ref.detach().numpy(), gamma(hw + 1) * np.abs(x.astype(np.float64)).mean(axis=(2, 3)), "y")
    dy = rand(rng, shape[0], shape[1])
    y_ref.backward(t64(dy))
    ref = xt.grad.numpy()
    # dx = dy / hw: one rounding
    assert_within(cp.global_avgpool_bw_input(dy, shape), ref, U * np.abs(ref), "dx")


def test_bound_catches_global_avgpool_dropping_the_tail(rng):
    """A sum that drops the last (hw mod 4) elements (a classic unrolling bug) fails the bound."""
    x = rand(rng, 2, 3, 3, 5)
    x64 = x.astype(np.float64).reshape(2, 3, 15)
    buggy = x64[:, :, :12].sum(axis=2) / 15
    with pytest.raises(AssertionError):
        assert_within(buggy, x64.mean(axis=2), gamma(16) * np.abs(x64).mean(axis=2), "y")


# -- the same under AddressSanitizer + UBSan ------------------------------------------

@pytest.mark.skipif(os.environ.get("EP_NATIVE_VARIANT") == "sanitize", reason="already sanitized")
def test_under_sanitizers():
    """Every test above again, against the -fsanitize=address,undefined library: an
    out-of-bounds read of x, w, b or dy (exact-size NumPy buffers, malloc'd through
    PYTHONMALLOC=malloc) or any UB in the index arithmetic aborts the subprocess."""
    tests = Path(__file__).parent
    cmd = [sys.executable, "-m", "pytest", "-q", "--capture=sys", "-p", "no:cacheprovider",
           "-k", "not test_under_sanitizers", str(Path(__file__))]
    nl.build("sanitize")
    proc = subprocess.run(cmd, env=nl.sanitized_env(), capture_output=True, text=True,
                          cwd=tests.parent, timeout=600)
    assert proc.returncode == 0, proc.stderr[:6000] + proc.stdout[-3000:]
    assert " passed" in proc.stdout
