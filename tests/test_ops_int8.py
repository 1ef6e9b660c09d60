"""The int8 ops (firmware/runtime/ops/ep_q8_*.c) against their NumPy reference
(host/quant.py), bit for bit, on every build: the runtime library (ctypes), the
native firmware, and the emulated boards — the Cortex-M4F twice, with the DSP SIMD
inner loops (the normal build) and with -DEP_Q8_PORTABLE (plain C), the Cortex-M7,
the Cortex-M55, and GAP9's RISC-V core.

Each case builds a one-op (or few-op) graph whose int8 inputs are initial values of
the blob (tests/int8_lib.py), runs it over max_batch samples, reads every output
back and compares it with the reference: codes and exponents must be EQUAL, and
f32 outputs equal as bit patterns. Integer sums are exact in any order, and the
float boundaries use only IEEE-exact operations (docs/ops/int8.md), so there is no
tolerance anywhere in the device-vs-reference comparison.

Then: the reference against PyTorch (the int8 ops approximate the fp32 ops within
an error bound derived from the quantisation steps), rejection of malformed nodes,
and a short int8 training run on real data (scikit-learn digits) on the native
build, bit-exact against the reference at every step, with accuracy near fp32's.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import int8_lib as il
import native_lib as nl
from host import quant as q
from host.ids import DType, OpCode, OpFn, TensorFlag

B, P, T = TensorFlag.BATCHED, TensorFlag.PARAM, TensorFlag.TRAINABLE
FW, BWI, BWP = OpFn.FW, OpFn.BW_INPUT, OpFn.BW_PARAM

#: the builds every op runs on: the runtime library and native firmware (portable C, x86), the
#: Cortex-M4F with SMLAD, and gap9 (RISC-V, portable C). EDGEPROP_EXHAUSTIVE=1 adds the M4F's
#: portable build, the M7 and the M55 (the same DSP code as the M4F): about 4 more minutes.
_BOARDS = ("mps2-an386", "gap9") + (("mps2-an386-portable", "mps2-an500", "mps3-an547")
                                    if os.environ.get("EDGEPROP_EXHAUSTIVE") else ())
TARGETS = ["lib", "native"] + [pytest.param(b, marks=pytest.mark.emulated) for b in _BOARDS]


@pytest.fixture(scope="module", params=TARGETS)
def target(request):
    """A factory (QGraph, blob) → runner on one build; boards boot once per module."""
    name = request.param
    if name == "lib":
        yield lambda qg, blob: il.LibRunner(qg, blob)
        return
    from conftest import _require_firmware
    from host.device import Device
    from host.emulator import start
    from host.link import Link

    board_name = name.removesuffix("-portable")
    board = _require_firmware(board_name)
    elf = il.portable_firmware(board_name) if name.endswith("-portable") else None
    with start(board, elf=elf) as running, Link.open(running.url, timeout=60.0) as lk:
        dev = Device(lk)
        dev.hello()
        yield lambda qg, blob: il.DeviceRunner(name, dev, qg, blob)


@pytest.fixture
def rng(request):
    """Seeded from the test id (without the target): the same codes on every build."""
    return np.random.default_rng(zlib.crc32(request.node.originalname.encode() +
                                            str(request.node.callspec.params.get("case", "")).encode()))


def codes(rng, shape, sparsity=0.1) -> np.ndarray:
    """Random int8 codes over the whole range (-128 included: the ops accept it), some zeros."""
    c = rng.integers(-128, 128, size=shape)
    c[rng.random(shape) < sparsity] = 0
    return c.astype(np.int8)


def run_eval(target, qg: il.QGraph):
    r = target(qg, qg.blob())
    r.run(np.zeros((qg.max_batch, 1), np.float32), np.zeros(qg.max_batch, np.int64))
    return r


def assert_same(got, want, what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if got.dtype.kind == "f":
        got, want = got.view(np.uint32), np.asarray(want, np.float32).view(np.uint32)
    bad = got != want
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} elements differ, first at "
                           f"{np.argwhere(bad)[0].tolist()}: {got[bad][0]} != {want[bad][0]}")


def assert_exp(runner, name: str, want: int) -> None:
    assert int(runner.read(name)[0]) == want, f"{name}: {int(runner.read(name)[0])} != {want}"


# -- the reference's own rules ---------------------------------------------------------------

def test_rshift_round_rules():
    v = np.array([5, -5, 6, -6, 7, -7, 2**31 - 1, -(2**31)], np.int64)
    assert q.rshift_round(v, 1).tolist() == [3, -2, 3, -3, 4, -3, 2**30, -(2**30)]  # half up
    assert q.rshift_round(v, 32).tolist() == [0] * 8
    assert q.rshift_round(np.array([1, -1, 3]), -31).tolist() == [2**31 - 1, -(2**31), 2**31 - 1]
    assert q.rshift_round(np.array([3, -3]), -2).tolist() == [12, -12]


def test_exponent_and_quantize_rules():
    assert q.exp_for_maxabs(np.float32(1.0)) == -6          # 1.0 → code 64
    assert q.exp_for_maxabs(np.float32(127.0)) == 0
    assert q.exp_for_maxabs(np.float32(0.0)) == q.FEXP_MIN
    assert q.exp_for_maxabs(np.float32(np.inf)) == q.FEXP_MAX
    x = np.array([0.5, 1.5, 2.5, -2.5, 126.6, 1e30, -1e30, np.nan], np.float32)
    assert q.quantize_with(x, 0).tolist() == [0, 2, 2, -2, 127, 127, -127, 0]  # ties to even, saturated


def test_lr_fixed_is_accurate_to_16_bits():
    for lr in (1.0, 0.05, 3e-4, 0.3, 7.0):
        lq, sh = q.lr_fixed(lr)
        assert 2**15 <= lq < 2**16
        assert abs(lq * 2.0**-sh - lr) <= lr * 2.0**-16


# -- QUANTIZE / DEQUANTIZE ------------------------------------------------------------------------

def test_quantize_dequantize(target, rng):
    mb, k = 4, 37
    qg = il.QGraph("quantize", mb, input_dims=(k,))
    qg.add("q", (k,), DType.S8, B)
    qg.exp("e")
    qg.add("y", (k,), DType.F32, B)
    qg.node(OpCode.QUANTIZE, FW, ["input"], ["q", "e"])
    qg.node(OpCode.DEQUANTIZE, FW, ["q", "e"], ["y"])
    qg.readable("q", "e", "y")
    r = target(qg, qg.blob())
    for n, scale in ((4, 3.7), (3, 1e-3), (1, 250.0)):
        x = (rng.standard_normal((mb, k)) * scale).astype(np.float32)
        x[0, :3] = [0.0, -0.0, x[0, 3] / 2]
        r.run(x[:n], np.zeros(n, np.int64))
        want_q, want_e = q.quantize(x[:n])
        assert_same(r.read("q", n), want_q, f"q (n={n})")
        assert_exp(r, "e", want_e)
        assert_same(r.read("y", n), q.dequantize(want_q, want_e), f"y (n={n})")


# -- LINEAR_Q8 ----------------------------------------------------------------------------------------

# (max_batch, rows per sample R, K, M, bias, exponent spread of W)
LINEAR_CASES = {
    "odd_k_bias": (3, 1, 37, 10, True, 3),
    "k64_m16": (4, 1, 64, 16, True, 4),
    "tokens_r3": (2, 3, 8, 5, False, 2),
    "single_m1": (1, 1, 9, 1, True, 0),
    "m7_k130_wide_spread": (5, 1, 130, 7, True, 6),  # spread > 4: folded exponents, defined result
}


def linear_inputs(rng, mb, R, K, M, spread):
    x = codes(rng, (mb, R * K))
    w = codes(rng, (M, K))
    e_w = (-9 + rng.integers(-spread, 1, M)).astype(np.int32)
    b = rng.integers(-(2**20), 2**20, M).astype(np.int32)
    return x, w, e_w, b


@pytest.mark.parametrize("sums", ["batch_sums", "sample_sums"])
@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_linear_q8(target, rng, case, sums):
    """Per-sample sums (iattr[0] = 1 on fw and bw_input) give the same bits as the batch's."""
    mb, R, K, M, bias, spread = LINEAR_CASES[case]
    per = sums == "sample_sums"
    attrs = (1,) if per else ()
    x, w, e_w, b = linear_inputs(rng, mb, R, K, M, spread)
    dy = codes(rng, (mb, R * M))
    e_x, e_b, e_dy = -7, -20, -12
    rows = mb * R
    qg = il.QGraph("linear_q8", mb)
    qg.add("x", (R * K,), DType.S8, B, x)
    qg.exp("e_x", e_x)
    qg.add("W", (M, K), DType.S8, P, w)
    qg.exp("e_w", e_w, M)
    qg.add("b", (M,), DType.I32, P, b)
    qg.exp("e_b", e_b)
    qg.add("dy", (R * M,), DType.S8, B, dy)
    qg.exp("e_dy", e_dy)
    for name, dims in (("y", (R * M,)), ("dx", (R * K,))):
        qg.add(name, dims, DType.S8, B)
        qg.exp("e_" + name)
    qg.add("dW", (M, K), DType.F32)
    qg.add("db", (M,), DType.F32)
    qg.add("gW", (M, K), DType.I32)
    qg.add("gb", (M,), DType.I32)
    qg.exp("e_g", None, 2)
    for fn in ("fw", "bw_input", "bw_param"):
        qg.scratch("s_" + fn, q.linear_scratch_bytes(fn, rows, M, K, R if per else None))
    fw_in = ["x", "e_x", "W", "e_w"] + (["b", "e_b"] if bias else [])
    qg.node(OpCode.LINEAR_Q8, FW, fw_in, ["y", "e_y", "s_fw"], attrs)
    qg.node(OpCode.LINEAR_Q8, BWI, ["dy", "e_dy", "W", "e_w"], ["dx", "e_dx", "s_bw_input"], attrs)
    qg.node(OpCode.LINEAR_Q8, BWP, ["dy", "e_dy", "x", "e_x"], ["dW", "db", "s_bw_param"])
    qg.node(OpCode.LINEAR_Q8, BWP, ["dy", "e_dy", "x", "e_x"], ["gW", "gb", "e_g", "s_bw_param"])
    qg.readable("y", "e_y", "dx", "e_dx", "dW", "db", "gW", "gb", "e_g")
    r = run_eval(target, qg)

    y, e_y = q.linear_fw(x.reshape(rows, K), e_x, w, e_w, b if bias else None, e_b)
    assert_same(r.read("y"), y.reshape(mb, R * M), "y")
    assert_exp(r, "e_y", e_y)
    dx, e_dx = q.linear_bw_input(dy.reshape(rows, M), e_dy, w, e_w)
    assert_same(r.read("dx"), dx.reshape(mb, R * K), "dx")
    assert_exp(r, "e_dx", e_dx)
    gw, gb, (e_gw, e_gb) = q.linear_bw_param(dy.reshape(rows, M), e_dy, x.reshape(rows, K), e_x)
    assert_same(r.read("gW"), gw, "gW")
    assert_same(r.read("gb"), gb, "gb")
    assert r.read("e_g").tolist() == [e_gw, e_gb]
    assert_same(r.read("dW"), q.acc_to_f32(gw, e_gw), "dW f32")
    assert_same(r.read("db"), q.acc_to_f32(gb, e_gb), "db f32")


# -- CONV2D_Q8 ----------------------------------------------------------------------------------------

# (max_batch, c_in, h, w, c_out, (kh, kw), stride, pad (t, b, l, r), dilation, groups, bias)
CONV_CASES = {
    "3x3_pad1": (2, 3, 7, 9, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True),
    "3x5_stride2_asympad": (2, 4, 10, 13, 5, (3, 5), (2, 2), (1, 2, 0, 3), (1, 1), 1, True),
    "dilation2": (1, 4, 12, 11, 6, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1, False),
    "groups2": (2, 6, 8, 9, 10, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, True),
    "depthwise3x3": (3, 6, 9, 10, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 6, True),
    "depthwise_mult2": (2, 4, 8, 8, 8, (3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 4, False),
    "pointwise": (2, 8, 5, 7, 12, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True),
    "16x16_two_chunks": (1, 3, 16, 16, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True),
    "conv1d_long_rows": (2, 2, 1, 150, 3, (1, 5), (1, 1), (0, 0, 2, 2), (1, 1), 1, True),
    # EEGNet shapes (shortened): temporal (1, 16) 'same', depthwise spatial (C, 1) D = 2, separable
    "eegnet_temporal": (2, 1, 6, 40, 4, (1, 16), (1, 1), (0, 0, 8, 7), (1, 1), 1, False),
    "eegnet_spatial_D2": (2, 4, 6, 20, 8, (6, 1), (1, 1), (0, 0, 0, 0), (1, 1), 4, False),
    "eegnet_separable_dw": (2, 8, 1, 21, 8, (1, 8), (1, 1), (0, 0, 4, 3), (1, 1), 8, False),
    # the direct path of one-channel groups (ep_q8_corr_s16): taps a dilation apart, bands
    # of rows (the plane of 30 rows of 142 does not fit the scratch at once), a 1-D
    # depthwise conv, and padding beyond the kernel's reach (bw_input keeps the im2col)
    "depthwise_dilation2": (2, 3, 9, 11, 3, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 3, True),
    "depthwise_bands": (1, 2, 30, 140, 2, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, True),
    "depthwise_1d": (2, 4, 1, 30, 4, (1, 5), (1, 1), (0, 0, 2, 2), (1, 1), 4, True),
    "depthwise_pad_beyond_kernel": (1, 2, 5, 6, 2, (3, 3), (1, 1), (3, 3, 3, 3), (1, 1), 2, False),
    # the column path (one-column kernels over all input rows, ep_q8_rows_mac / ep_q8_dot_s8):
    # an odd row count and a row length that is no multiple of 4; kernel rows in the padding
    # (input rows 1 and 4 of 5 only); more rows than one weight table holds (64)
    "column_odd_rows_tail": (2, 3, 5, 23, 6, (5, 1), (1, 1), (0, 0, 0, 0), (1, 1), 3, True),
    "column_padded_dilated": (2, 2, 5, 18, 4, (3, 1), (1, 1), (2, 0, 0, 0), (3, 1), 2, False),
    "column_70_rows": (1, 1, 70, 9, 2, (70, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, False),
}


def conv_inputs(rng, case):
    mb, ci, h, w, co, (kh, kw), stride, pad, dil, groups, bias = case
    g = q.ConvGeom(stride, pad, dil, groups)
    ho, wo = g.out_shape(h, w, kh, kw)
    x = codes(rng, (mb, ci, h, w))
    wt = codes(rng, (co, ci // groups, kh, kw))
    e_w = (-8 + rng.integers(-4, 1, co)).astype(np.int32)
    b = rng.integers(-(2**22), 2**22, co).astype(np.int32) if bias else None
    dy = codes(rng, (mb, co, ho, wo))
    return g, x, wt, e_w, b, dy


def conv_act_dims(c, h, w, one_d):
    """[C][H][W], or [C][L] for a 1-D conv (input H = 1, as CONV2D)."""
    return (c, w) if one_d else (c, h, w)


def conv_w_dims(wt, h):
    return (wt.shape[0], wt.shape[1], wt.shape[3]) if h == 1 else wt.shape


@pytest.mark.parametrize("per_sample", [False, True], ids=["batch_sums", "sample_sums"])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_q8(target, rng, case, per_sample):
    """Every fn against the reference; with per_sample (iattr[9]) fw and bw_input keep one
    sample's int32 sums and make them twice: the same bits."""
    mb, ci, h, w, co, (kh, kw), *_ = CONV_CASES[case]
    bias = CONV_CASES[case][-1]
    g, x, wt, e_w, b, dy = conv_inputs(rng, CONV_CASES[case])
    ho, wo = dy.shape[2:]
    e_x, e_b, e_dy = -6, -21, -11
    qg = il.QGraph("conv2d_q8", mb)
    qg.add("x", conv_act_dims(ci, h, w, h == 1), DType.S8, B, x)
    qg.exp("e_x", e_x)
    qg.add("W", conv_w_dims(wt, h), DType.S8, P, wt)
    qg.exp("e_w", e_w, co)
    if bias:
        qg.add("b", (co,), DType.I32, P, b)
        qg.exp("e_b", e_b)
    qg.add("dy", conv_act_dims(co, ho, wo, h == 1), DType.S8, B, dy)
    qg.exp("e_dy", e_dy)
    qg.add("y", conv_act_dims(co, ho, wo, h == 1), DType.S8, B)
    qg.exp("e_y")
    qg.add("dx", conv_act_dims(ci, h, w, h == 1), DType.S8, B)
    qg.exp("e_dx")
    qg.add("dW", conv_w_dims(wt, h), DType.F32)
    qg.add("db", (co,), DType.F32)
    qg.add("gW", conv_w_dims(wt, h), DType.I32)
    qg.add("gb", (co,), DType.I32)
    qg.exp("e_g", None, 2)
    for fn in ("fw", "bw_input", "bw_param"):
        qg.scratch("s_" + fn, q.conv_scratch_bytes(fn, mb, (ci, h, w), wt.shape, g, per_sample))
    fw_in = ["x", "e_x", "W", "e_w"] + (["b", "e_b"] if bias else [])
    sums = tuple(g.iattrs) + (1,) if per_sample else g.iattrs
    qg.node(OpCode.CONV2D_Q8, FW, fw_in, ["y", "e_y", "s_fw"], sums)
    qg.node(OpCode.CONV2D_Q8, BWI, ["dy", "e_dy", "W", "e_w"], ["dx", "e_dx", "s_bw_input"], sums)
    qg.node(OpCode.CONV2D_Q8, BWP, ["dy", "e_dy", "x", "e_x"], ["dW", "db", "s_bw_param"], g.iattrs)
    qg.node(OpCode.CONV2D_Q8, BWP, ["dy", "e_dy", "x", "e_x"], ["gW", "gb", "e_g", "s_bw_param"], g.iattrs)
    qg.readable("y", "e_y", "dx", "e_dx", "dW", "db", "gW", "gb", "e_g")
    r = run_eval(target, qg)

    y, e_y = q.conv_fw(x, e_x, wt, e_w, g, b, e_b)
    assert_same(r.read("y").reshape(y.shape), y, "y")
    assert_exp(r, "e_y", e_y)
    dx, e_dx = q.conv_bw_input(dy, e_dy, wt, e_w, x.shape, g)
    assert_same(r.read("dx").reshape(dx.shape), dx, "dx")
    assert_exp(r, "e_dx", e_dx)
    gw, gb, (e_gw, e_gb) = q.conv_bw_param(dy, e_dy, x, e_x, wt.shape, g)
    assert_same(r.read("gW").reshape(gw.shape), gw, "gW")
    assert_same(r.read("gb"), gb, "gb")
    assert r.read("e_g").tolist() == [e_gw, e_gb]
    assert_same(r.read("dW").reshape(gw.shape), q.acc_to_f32(gw, e_gw), "dW f32")
    assert_same(r.read("db"), q.acc_to_f32(gb, e_gb), "db f32")


# -- RELU_Q8, SGD_Q8, REQUANT_WEIGHTS --------------------------------------------------------------

def test_relu_q8(target, rng):
    mb, k = 3, 29
    x, dy = codes(rng, (mb, k)), codes(rng, (mb, k))
    qg = il.QGraph("relu_q8", mb)
    qg.add("x", (k,), DType.S8, B, x)
    qg.exp("e_x", -5)
    qg.add("dy", (k,), DType.S8, B, dy)
    qg.exp("e_dy", -13)
    qg.add("y", (k,), DType.S8, B)
    qg.exp("e_y")
    qg.add("dx", (k,), DType.S8, B)
    qg.exp("e_dx")
    qg.node(OpCode.RELU_Q8, FW, ["x", "e_x"], ["y", "e_y"])
    qg.node(OpCode.RELU_Q8, BWI, ["dy", "e_dy", "y"], ["dx", "e_dx"])
    qg.readable("y", "e_y", "dx", "e_dx")
    r = run_eval(target, qg)
    y, e_y = q.relu_fw(x, -5)
    assert_same(r.read("y"), y, "y")
    assert_exp(r, "e_y", e_y)
    dx, e_dx = q.relu_bw(dy, -13, y)
    assert_same(r.read("dx"), dx, "dx")
    assert_exp(r, "e_dx", e_dx)


@pytest.mark.parametrize("case", ["s8_per_channel", "i32_bias", "s8_coarse_and_fine"])
def test_sgd_q8(target, rng, case):
    """Three EVALs of the same SGD_Q8 step: the PRNG state carries over between them."""
    M, K = 6, 11
    if case == "i32_bias":
        p0 = rng.integers(-(2**28), 2**28, (M,)).astype(np.int32)
        g = rng.integers(-(2**20), 2**20, (M,)).astype(np.int32)
        e_p, e_g, lr, dt = np.array([-20], np.int32), -14, 0.05, DType.I32
    else:
        p0 = codes(rng, (M, K))
        g = rng.integers(-(2**24), 2**24, (M, K)).astype(np.int32)
        e_p, e_g, lr, dt = (-8 + rng.integers(-4, 1, M)).astype(np.int32), -22, 0.1, DType.S8
        if case == "s8_coarse_and_fine":  # steps far below and far above one code (s > 32 and s ≤ 0)
            g[:3] = rng.integers(-3, 4, (3, K))
            g[3:] = rng.integers(-(2**30), 2**30, (M - 3, K))
            e_g = -40
            e_p[3:] = -80
    lr_q, lr_shift = q.lr_fixed(lr)
    qg = il.QGraph("sgd_q8", 1)
    qg.add("p", p0.shape, dt, P | T, p0)
    qg.add("g", g.shape, DType.I32, init=g)
    qg.exp("e_g", [e_g, 0], 2)
    qg.exp("e_p", e_p, e_p.size)
    qg.add("rng", (1,), DType.I32, P, np.array([12345], np.int32))
    qg.node(OpCode.SGD_Q8, FW, ["g", "e_g", "e_p"], ["p", "rng"], (lr_q, lr_shift, 0))
    r = target(qg, qg.blob())
    p, state = p0, 12345
    for _ in range(3):
        r.run(np.zeros((1, 1), np.float32), [0])
        p, state = q.sgd_q8(p, g, e_g, e_p, lr_q, lr_shift, state)
        assert_same(r.read("p"), p, "p")
        assert int(r.read("rng")[0]) & 0xFFFFFFFF == state
    assert (p != p0).any()


def test_requant_weights(target, rng):
    w = (rng.standard_normal((5, 3, 2, 2)) * np.array([1.0, 0.01, 3.0, 1e-9, 0.2])[:, None, None, None]).astype(np.float32)
    w[3] = 0.0
    b = (rng.standard_normal(5) * 0.3).astype(np.float32)
    e_b = q.bias_exponent(b)
    qg = il.QGraph("requant", 1)
    qg.add("w", w.shape, DType.F32, P | T, w)
    qg.add("b", b.shape, DType.F32, P | T, b)
    qg.exp("e_b", e_b)
    qg.add("wq", w.shape, DType.S8, P)
    qg.exp("e_w", None, 5)
    qg.add("bq", b.shape, DType.I32, P)
    qg.node(OpCode.REQUANT_WEIGHTS, FW, ["w"], ["wq", "e_w"], (q.SPREAD,))
    qg.node(OpCode.REQUANT_WEIGHTS, FW, ["b", "e_b"], ["bq"])
    qg.readable("e_w")
    r = run_eval(target, qg)
    wq, e_w = q.quantize_weights(w, q.SPREAD)
    assert_same(r.read("wq"), wq, "wq")
    assert_same(r.read("e_w"), e_w, "e_w")
    assert e_w.max() - e_w.min() == q.SPREAD  # the 1e-9 and zero channels were raised
    assert_same(r.read("bq"), q.quantize_bias(b, e_b), "bq")


def test_the_two_cortex_m4_builds_differ_in_their_inner_loop():
    """The portable build really runs plain C: its inner products have no SMLAD, the
    normal build's do (so the bit-exact tests above compare two different codes)."""
    import shutil
    import subprocess

    objdump = shutil.which("arm-none-eabi-objdump")
    if objdump is None:
        pytest.skip("arm-none-eabi-objdump not found (install binutils-arm-none-eabi)")
    from conftest import _require_firmware
    from host.emulator import firmware_path

    simd = firmware_path(_require_firmware("mps2-an386"))
    portable = il.portable_firmware("mps2-an386")

    def smlads(elf, fn) -> int:
        dis = subprocess.run([objdump, "-d", f"--disassemble={fn}", str(elf)], capture_output=True,
                             text=True, check=True).stdout
        assert f"<{fn}>:" in dis
        return dis.count("smlad")

    # the panel kernel, and the direct correlation of the depthwise convs
    for fn in ("ep_q8_dot_s16_core", "ep_q8_corr_s16"):
        assert smlads(simd, fn) >= 4 and smlads(portable, fn) == 0, fn


@pytest.mark.parametrize("opt", ["-O0", "-Og", "-O2 -fno-omit-frame-pointer"])
def test_the_smlad_kernel_builds_for_debugging(opt):
    """The SMLAD tile's asm uses r7, Thumb's frame pointer in debug builds: it saves r7
    itself rather than naming it, so -O0 and frame-pointer builds of the M4 compile."""
    import shutil
    import subprocess

    from host.boards import REPO_ROOT, load_board

    tc = load_board("mps2-an386").toolchain
    cc = shutil.which(tc["prefix"] + "gcc")
    if cc is None:
        pytest.skip(f"{tc['prefix']}gcc not found (make setup installs it)")
    fw = REPO_ROOT / "firmware"
    proc = subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", *opt.split(), *tc["cflags"],
                           f"-I{fw / 'runtime'}", f"-I{fw / 'port'}", "-c", "-o", os.devnull,
                           str(fw / "runtime" / "ops" / "ep_q8_core.c")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# -- BATCHNORM_Q8, ACT_Q8: DEQUANTIZE → the f32 node → QUANTIZE, as one node ---------------------
# Their reference is that chain of nodes on the same build (the f32 kernels are checked
# against PyTorch by tests/test_ops_norm_act.py, QUANTIZE/DEQUANTIZE against host.quant
# above): every output must be the same bits. In place where the op allows it.

BNQ, ACTQ, F32 = OpCode.BATCHNORM_Q8, OpCode.ACT_Q8, DType.F32
BNQ_STATS, BNQ_TRAIN, BNQ_EVAL = 2, 0, 1


def _bnq_graph(fused: bool, dims, mb, x, dy, gamma, beta, rm, rv) -> il.QGraph:
    C, eps, mom = dims[0], 1e-5, 0.1
    qg = il.QGraph("bnq" if fused else "bnq_chain", mb)
    qg.add("x", dims, DType.S8, B, x)
    qg.exp("e_x", -6)
    qg.add("dy", dims, DType.S8, B, dy)
    qg.exp("e_dy", -13)
    for name, v in (("gamma", gamma), ("beta", beta), ("rm", rm), ("rv", rv)):
        qg.add(name, (C,), F32, P, v)
    qg.add("saved", (2 * C,), F32)
    qg.add("y", dims, DType.S8, B)
    qg.add("dg", (C,), F32)
    qg.add("db", (C,), F32)
    for e in ("e_y", "e_dx", "e_ye"):
        qg.exp(e)
    if fused:  # dx over dy, and the eval forward (last) over x
        qg.inplace("dx", "dy")
        qg.inplace("ye", "x")
        qg.scratch("k3", 12 * C)
        qg.node(BNQ, FW, ["x", "e_x"], ["saved", "rm", "rv"], (BNQ_STATS,), (eps, mom))
        qg.node(BNQ, FW, ["x", "e_x", "gamma", "beta", "saved"], ["y", "e_y"], (BNQ_TRAIN,), (eps,))
        qg.node(BNQ, BWP, ["dy", "e_dy", "x", "e_x", "saved"], ["dg", "db"], (BNQ_TRAIN,), (eps,))
        qg.node(BNQ, BWI, ["dy", "e_dy", "x", "e_x", "gamma", "saved"], ["dx", "e_dx", "k3"], (BNQ_TRAIN,), (eps,))
        qg.node(BNQ, FW, ["x", "e_x", "gamma", "beta", "rm", "rv"], ["ye", "e_ye"], (BNQ_EVAL,), (eps,))
    else:
        for name in ("xf", "dyf", "yf", "dxf", "yef"):
            qg.add(name, dims, F32, B)
        qg.add("dx", dims, DType.S8, B)
        qg.add("ye", dims, DType.S8, B)
        qg.node(OpCode.DEQUANTIZE, FW, ["x", "e_x"], ["xf"])
        qg.node(OpCode.BATCHNORM, FW, ["xf", "gamma", "beta"], ["yf", "saved", "rm", "rv"], (BNQ_TRAIN,), (eps, mom))
        qg.node(OpCode.QUANTIZE, FW, ["yf"], ["y", "e_y"])
        qg.node(OpCode.DEQUANTIZE, FW, ["dy", "e_dy"], ["dyf"])
        qg.node(OpCode.BATCHNORM, BWP, ["dyf", "xf", "saved"], ["dg", "db"], (BNQ_TRAIN,), (eps,))
        qg.node(OpCode.BATCHNORM, BWI, ["dyf", "xf", "gamma", "saved"], ["dxf"], (BNQ_TRAIN,), (eps,))
        qg.node(OpCode.QUANTIZE, FW, ["dxf"], ["dx", "e_dx"])
        qg.node(OpCode.BATCHNORM, FW, ["xf", "gamma", "beta", "rm", "rv"], ["yef"], (BNQ_EVAL,), (eps,))
        qg.node(OpCode.QUANTIZE, FW, ["yef"], ["ye", "e_ye"])
    return qg


def _read(runner, names) -> dict:
    """Every named output, read before the next graph replaces this one on a device."""
    return {name: runner.read(name) for name in names}


def _fused_is_chain(target, build, names) -> dict:
    """build(True): a graph of the int8 node(s); build(False): the same inputs through
    DEQUANTIZE → the f32 node → QUANTIZE. Both run on target, and every named output must
    be the same bits. Returns the int8 node's outputs."""
    got = []
    for fused in (True, False):
        qg = build(fused)
        qg.readable(*names)
        got.append(_read(run_eval(target, qg), names))
    for name in names:
        assert_same(got[0][name], got[1][name], name)
    return got[0]


BNQ_OUTPUTS = ("saved", "rm", "rv", "y", "e_y", "dx", "e_dx", "dg", "db", "ye", "e_ye")


@pytest.mark.parametrize("case", ["conv", "conv_code_tables", "sequence", "features", "one_value"])
def test_batchnorm_q8_is_the_f32_chain(target, rng, case):
    """conv_code_tables: 144 elements per channel, so the forward maps them through a table
    of the channel's 256 code values (BNQ_TABLE_MIN); the others element by element."""
    dims, mb = {"conv": ((5, 3, 7), 3), "conv_code_tables": ((3, 8, 9), 2), "sequence": ((4, 9), 2),
                "features": ((6,), 5), "one_value": ((3,), 1)}[case]
    C = dims[0]
    x, dy = codes(rng, (mb, *dims)), codes(rng, (mb, *dims))
    gamma, beta, rm = (rng.standard_normal(C).astype(np.float32) for _ in range(3))
    rv = (rng.random(C) + 0.5).astype(np.float32)
    fused = _fused_is_chain(target, lambda f: _bnq_graph(f, dims, mb, x, dy, gamma, beta, rm, rv), BNQ_OUTPUTS)
    assert np.abs(fused["y"]).max() > 60  # the codes use their range (not all 0)


ACTS = {"relu6": (OpCode.RELU6, 0.0), "elu": (OpCode.ELU, 0.7), "gelu": (OpCode.GELU, 0.0),
        "sigmoid": (OpCode.SIGMOID, 0.0), "tanh": (OpCode.TANH, 0.0)}


def _actq_graph(fused: bool, act: str, mb, k, x, dy) -> il.QGraph:
    op, alpha = ACTS[act]
    fattrs = (alpha,) if op == OpCode.ELU else ()
    t = "x" if op == OpCode.GELU else "y"  # what the backward reads
    qg = il.QGraph("actq" if fused else "actq_chain", mb)
    qg.add("x", (k,), DType.S8, B, x)
    qg.exp("e_x", -4)  # codes up to ±7.9: both sides of ReLU6's 6
    qg.add("dy", (k,), DType.S8, B, dy)
    qg.exp("e_dy", -9)
    qg.add("y", (k,), DType.S8, B)
    for e in ("e_y", "e_dx"):
        qg.exp(e)
    if fused:  # dx over dy
        qg.inplace("dx", "dy")
        qg.node(ACTQ, FW, ["x", "e_x"], ["y", "e_y"], (op,), fattrs)
        qg.node(ACTQ, BWI, ["dy", "e_dy", t, f"e_{t}"], ["dx", "e_dx"], (op,), fattrs)
    else:
        for name in ("xf", "yf", "tf", "dyf", "dxf"):
            qg.add(name, (k,), F32, B)
        qg.add("dx", (k,), DType.S8, B)
        qg.node(OpCode.DEQUANTIZE, FW, ["x", "e_x"], ["xf"])
        qg.node(op, FW, ["xf"], ["yf"], (), fattrs)
        qg.node(OpCode.QUANTIZE, FW, ["yf"], ["y", "e_y"])
        qg.node(OpCode.DEQUANTIZE, FW, [t, f"e_{t}"], ["tf"])  # the backward's t: from the codes
        qg.node(OpCode.DEQUANTIZE, FW, ["dy", "e_dy"], ["dyf"])
        qg.node(op, BWI, ["dyf", "tf"], ["dxf"], (), fattrs)
        qg.node(OpCode.QUANTIZE, FW, ["dxf"], ["dx", "e_dx"])
    return qg


@pytest.mark.parametrize("act", [*ACTS, "relu6-kept-small"])
def test_act_q8_is_the_f32_chain(target, rng, act):
    mb, k = 3, 77  # 231 elements: several 32-element chunks and a short last one
    x, dy = codes(rng, (mb, k)), codes(rng, (mb, k))
    if act == "relu6-kept-small":  # the large dy only where x ≤ 0 (derivative 0): the kept
        act, dy = "relu6", np.where(x > 0, dy // 6, dy).astype(np.int8)  # fit e_dy − 2 (codes ·4)
    fused = _fused_is_chain(target, lambda f: _actq_graph(f, act, mb, k, x, dy), ("y", "e_y", "dx", "e_dx"))
    assert np.abs(fused["dx"]).max() > 60


def test_act_q8_in_place_forward():
    """y over x: the same codes as out of place (the runtime library)."""
    mb, k, rng = 2, 40, np.random.default_rng(5)
    x, dy = codes(rng, (mb, k)), codes(rng, (mb, k))
    fused = _actq_graph(True, "elu", mb, k, x, dy)
    fused.readable("y", "e_y")
    want = run_eval(lambda qg, blob: il.LibRunner(qg, blob), fused)
    qg = il.QGraph("actq_inplace", mb)
    qg.add("x", (k,), DType.S8, B, x)
    qg.exp("e_x", -4)
    qg.inplace("y", "x")
    qg.exp("e_y")
    qg.node(ACTQ, FW, ["x", "e_x"], ["y", "e_y"], (OpCode.ELU,), (0.7,))
    qg.readable("y", "e_y")
    got = run_eval(lambda qg, blob: il.LibRunner(qg, blob), qg)
    assert_same(got.read("y"), want.read("y"), "y")
    assert_same(got.read("e_y"), want.read("e_y"), "e_y")


# dims (C, H, W) or (C, L), iattrs (kh kw sh sw pads×4 count_include_pad)[, x's exponent].
# The integer forms (ep_q8_pool.c) take the forward, and a backward whose windows do not
# overlap; overlapping windows (3x3) and an average over x at exponent 110 (its window
# sums could overflow f32) keep the f32 kernels on scratch planes.
POOL_CASES = {
    "2x2": ((3, 6, 8), (2, 2, 2, 2, 0, 0, 0, 0, 1)),
    "eeg_1x4": ((4, 18), (1, 4, 1, 4, 0, 0, 0, 0, 1)),
    "3x3_pad_exclusive": ((2, 7, 5), (3, 3, 2, 1, 1, 1, 1, 1, 0)),
    "2x2_pad_exclusive": ((2, 5, 7), (2, 2, 2, 2, 1, 1, 1, 1, 0)),
    "2x2_exponent_110": ((3, 6, 8), (2, 2, 2, 2, 0, 0, 0, 0, 1), 110),
    # x's codes within ±20: the outputs' exponent falls below x's (the max pool's codes shift)
    "3x3_small_codes": ((2, 7, 5), (3, 3, 2, 1, 1, 1, 1, 1, 0)),
}


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_pool2d_q8_is_the_f32_chain(target, rng, case, kind):
    """AVGPOOL2D_Q8 and MAXPOOL2D_Q8 (whose backward reads x's codes: overlapping windows
    in the 3×3 case, where dx sums several dy)."""
    dims, attrs, *e_x = POOL_CASES[case]
    is_max = kind == "max"
    if is_max:
        attrs = attrs[:-1] + (0,)  # count_include_pad is the average's
    op_q8, op = (OpCode.MAXPOOL2D_Q8, OpCode.MAXPOOL2D) if is_max else (OpCode.AVGPOOL2D_Q8, OpCode.AVGPOOL2D)
    mb = 3
    kh, kw, sh, sw, pt, pb, pl, pr, _ = attrs
    h, w = (dims[1], dims[2]) if len(dims) == 3 else (1, dims[1])
    ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    out = (dims[0], ho, wo) if len(dims) == 3 else (dims[0], wo)
    x, dy = codes(rng, (mb, *dims)), codes(rng, (mb, *out))
    if case.endswith("small_codes"):
        x = np.clip(x, -20, 20).astype(np.int8)
    names = ("y", "e_y", "dx", "e_dx")
    x_in = ["x", "e_x"] if is_max else []

    def build(fused):
        qg = il.QGraph("poolq" if fused else "poolq_chain", mb)
        qg.add("x", dims, DType.S8, B, x)
        qg.exp("e_x", e_x[0] if e_x else -5)
        qg.add("dy", out, DType.S8, B, dy)
        qg.exp("e_dy", -10)
        qg.add("y", out, DType.S8, B)
        qg.add("dx", dims, DType.S8, B)
        qg.exp("e_y")
        qg.exp("e_dx")
        if fused:
            qg.scratch("s", 4 * ((2 if is_max else 1) * h * w + ho * wo))
            qg.node(op_q8, FW, ["x", "e_x"], ["y", "e_y", "s"], attrs)
            qg.node(op_q8, BWI, ["dy", "e_dy"] + x_in, ["dx", "e_dx", "s"], attrs)
        else:
            for name, d in (("xf", dims), ("yf", out), ("dyf", out), ("dxf", dims)):
                qg.add(name, d, F32, B)
            qg.node(OpCode.DEQUANTIZE, FW, ["x", "e_x"], ["xf"])
            qg.node(op, FW, ["xf"], ["yf"], attrs)
            qg.node(OpCode.QUANTIZE, FW, ["yf"], ["y", "e_y"])
            qg.node(OpCode.DEQUANTIZE, FW, ["dy", "e_dy"], ["dyf"])
            qg.node(op, BWI, ["dyf"] + (["xf"] if is_max else []), ["dxf"], attrs)
            qg.node(OpCode.QUANTIZE, FW, ["dxf"], ["dx", "e_dx"])
        return qg

    got = _fused_is_chain(target, build, names)
    assert np.abs(got["y"]).max() > 60 and np.abs(got["dx"]).max() > 60


def test_dropout_q8_is_the_f32_chain(target, rng):
    """The same mask (drawn 32 elements at a time: the same stream as all at once), state,
    codes and exponents as DEQUANTIZE → DROPOUT → QUANTIZE; dx over dy."""
    mb, k, p_drop = 3, 45, 0.25  # 135 elements: not a multiple of 8 or 32
    x, dy = codes(rng, (mb, k)), codes(rng, (mb, k))
    seed = np.array([0x2545F491], np.uint32).view(np.int32)
    names = ("y", "e_y", "dx", "e_dx", "mask", "state")

    def build(fused):
        qg = il.QGraph("dropq" if fused else "dropq_chain", mb)
        qg.add("x", (k,), DType.S8, B, x)
        qg.exp("e_x", -5)
        qg.add("dy", (k,), DType.S8, B, dy)
        qg.exp("e_dy", -10)
        qg.add("y", (k,), DType.S8, B)
        qg.exp("e_y")
        qg.exp("e_dx")
        qg.add("mask", ((k + 7) // 8,), DType.U8, B)
        qg.add("state", (1,), DType.I32, P, seed)
        if fused:
            qg.inplace("dx", "dy")
            qg.node(OpCode.DROPOUT_Q8, FW, ["x", "e_x"], ["y", "e_y", "mask", "state"], (), (p_drop,))
            qg.node(OpCode.DROPOUT_Q8, BWI, ["dy", "e_dy", "mask"], ["dx", "e_dx"], (), (p_drop,))
        else:
            qg.add("dx", (k,), DType.S8, B)
            for name in ("xf", "yf", "dyf", "dxf"):
                qg.add(name, (k,), F32, B)
            qg.node(OpCode.DEQUANTIZE, FW, ["x", "e_x"], ["xf"])
            qg.node(OpCode.DROPOUT, FW, ["xf"], ["yf", "mask", "state"], (0,), (p_drop,))
            qg.node(OpCode.QUANTIZE, FW, ["yf"], ["y", "e_y"])
            qg.node(OpCode.DEQUANTIZE, FW, ["dy", "e_dy"], ["dyf"])
            qg.node(OpCode.DROPOUT, BWI, ["dyf", "mask"], ["dxf"], (0,), (p_drop,))
            qg.node(OpCode.QUANTIZE, FW, ["dxf"], ["dx", "e_dx"])
        return qg

    got = _fused_is_chain(target, build, names)
    kept = np.unpackbits(got["mask"].reshape(-1), bitorder="little")[:mb * k]
    assert 0.6 < kept.mean() < 0.9  # about 1 - p kept


# (e_a, e_b): ADD_Q8's integer sums (exponents ≤ 16 apart: 2 and 16, either way round, the
# float boundaries) and its f32 fallback (17 and 40 apart)
ADD_EXPONENTS = [(-6, -4), (-4, -6), (0, -16), (-126, -126), (120, 118), (0, -17), (-30, 10)]


@pytest.mark.parametrize("exps", ADD_EXPONENTS, ids=[f"{a}_{b}" for a, b in ADD_EXPONENTS])
def test_add_q8_is_the_f32_chain(target, rng, exps):
    """ADD_Q8 = QUANTIZE(DEQUANTIZE a + DEQUANTIZE b), the two at different exponents; y
    over a (in place)."""
    mb, k = 3, 50
    a, b = codes(rng, (mb, k)), codes(rng, (mb, k))
    names = ("y", "e_y")

    def build(fused):
        qg = il.QGraph("addq" if fused else "addq_chain", mb)
        qg.add("a", (k,), DType.S8, B, a)
        qg.exp("e_a", exps[0])
        qg.add("b", (k,), DType.S8, B, b)
        qg.exp("e_b", exps[1])
        qg.exp("e_y")
        if fused:
            qg.inplace("y", "a")
            qg.node(OpCode.ADD_Q8, FW, ["a", "e_a", "b", "e_b"], ["y", "e_y"])
        else:
            qg.add("y", (k,), DType.S8, B)
            for name in ("af", "bf", "yf"):
                qg.add(name, (k,), F32, B)
            qg.node(OpCode.DEQUANTIZE, FW, ["a", "e_a"], ["af"])
            qg.node(OpCode.DEQUANTIZE, FW, ["b", "e_b"], ["bf"])
            qg.node(OpCode.ADD, FW, ["af", "bf"], ["yf"])
            qg.node(OpCode.QUANTIZE, FW, ["yf"], ["y", "e_y"])
        return qg

    got = _fused_is_chain(target, build, names)
    assert np.abs(got["y"]).max() > 60


@pytest.mark.parametrize("dims", [(3, 5, 6), (4, 9)], ids=["2d", "1d"])
def test_global_avgpool_q8_is_the_f32_chain(target, rng, dims):
    mb, C = 3, dims[0]
    hw = int(np.prod(dims[1:]))
    x, dy = codes(rng, (mb, *dims)), codes(rng, (mb, C))
    names = ("y", "e_y", "dx", "e_dx")

    def build(fused):
        qg = il.QGraph("gapq" if fused else "gapq_chain", mb)
        qg.add("x", dims, DType.S8, B, x)
        qg.exp("e_x", -5)
        qg.add("dy", (C,), DType.S8, B, dy)
        qg.exp("e_dy", -8)
        qg.add("y", (C,), DType.S8, B)
        qg.add("dx", dims, DType.S8, B)
        qg.exp("e_y")
        qg.exp("e_dx")
        if fused:
            qg.scratch("s", 4 * hw)
            qg.node(OpCode.GLOBAL_AVGPOOL_Q8, FW, ["x", "e_x"], ["y", "e_y", "s"])
            qg.node(OpCode.GLOBAL_AVGPOOL_Q8, BWI, ["dy", "e_dy"], ["dx", "e_dx", "s"])
        else:
            for name, d in (("xf", dims), ("yf", (C,)), ("dyf", (C,)), ("dxf", dims)):
                qg.add(name, d, F32, B)
            qg.node(OpCode.DEQUANTIZE, FW, ["x", "e_x"], ["xf"])
            qg.node(OpCode.GLOBAL_AVGPOOL, FW, ["xf"], ["yf"])
            qg.node(OpCode.QUANTIZE, FW, ["yf"], ["y", "e_y"])
            qg.node(OpCode.DEQUANTIZE, FW, ["dy", "e_dy"], ["dyf"])
            qg.node(OpCode.GLOBAL_AVGPOOL, BWI, ["dyf"], ["dxf"])
            qg.node(OpCode.QUANTIZE, FW, ["dxf"], ["dx", "e_dx"])
        return qg

    got = _fused_is_chain(target, build, names)
    assert np.abs(got["dx"]).max() > 60


def _bnq_parse(mutate) -> str:
    dims, mb = (4, 5), 2
    z = np.zeros((mb, *dims), np.int8)
    qg = _bnq_graph(True, dims, mb, z, z, *(np.ones(4, np.float32),) * 4)
    mutate(qg)
    p = nl.parse(qg.blob())
    return p.why if p.status else ""


def _bnq_node(k, **kw):
    def f(qg):
        for attr, v in kw.items():
            setattr(qg.g.nodes[k], attr, v(qg) if callable(v) else v)
    return f


@pytest.mark.parametrize("mutate, why", [
    (_bnq_node(0, iattrs=(3,)), "mode"),
    (_bnq_node(2, iattrs=(1,)), "backward only in train mode"),
    (_bnq_node(1, fattrs=(1e-5, 0.1)), "momentum"),
    (_bnq_node(0, fattrs=(0.0, 0.1)), "eps"),
    (_bnq_node(3, outputs=lambda qg: qg.g.nodes[3].outputs[:2]), "wrong inputs or outputs"),
    (lambda qg: setattr(qg.g.tensors[qg.names["k3"]], "dims", (47,)), "scratch"),
    (_bnq_node(1, inputs=lambda qg: qg.g.nodes[1].inputs[:4] + [qg.names["rm"]]), "saved [2C]"),
    (_bnq_node(2, inputs=lambda qg: [qg.names["saved"]] + qg.g.nodes[2].inputs[1:]), "one shape"),
    (lambda qg: qg.spans.__setitem__("dx", qg.names["x"]), "overlaps"),  # dx over x, not dy
])
def test_malformed_batchnorm_q8_is_refused(mutate, why):
    assert _bnq_parse(lambda qg: None) == ""
    got = _bnq_parse(mutate)
    assert why in got, got


def _pool_drop_graph(pool_scratch=4 * (18 + 5), pool_attrs=(1, 4, 1, 4, 0, 0, 0, 0, 1), p_drop=0.5,
                     mask_elems=2, state_dims=(1,), drop_y=None) -> bytes:
    qg = il.QGraph("pd_bad", 2)
    qg.add("x", (4, 18), DType.S8, B)
    qg.exp("e_x", 0)
    qg.add("y", (4, 4), DType.S8, B)
    qg.exp("e_y")
    qg.scratch("s", pool_scratch)
    qg.node(OpCode.AVGPOOL2D_Q8, FW, ["x", "e_x"], ["y", "e_y", "s"], pool_attrs)
    qg.add("mask", (mask_elems,), DType.U8, B)
    qg.add("state", state_dims, DType.I32, P)
    qg.exp("e_z")
    if drop_y is None:
        qg.add("z", (4, 4), DType.S8, B)
    qg.node(OpCode.DROPOUT_Q8, FW, ["y", "e_y"], [drop_y or "z", "e_z", "mask", "state"], (), (p_drop,))
    return qg.blob()


@pytest.mark.parametrize("kw, why", [
    (dict(pool_scratch=40), "scratch"),
    (dict(pool_attrs=(1, 8, 1, 4, 0, 0, 0, 0, 1)), "output size"),
    (dict(pool_attrs=(1, 4, 1, 4, 0, 0, 0, 0, 2)), "count_include_pad"),
    (dict(p_drop=1.5), "p (fattr[0])"),
    (dict(mask_elems=1), "mask"),
    (dict(state_dims=(2,)), "state"),
    (dict(drop_y="e_y"), "dropout_q8"),
])
def test_malformed_pool_and_dropout_q8_are_refused(kw, why):
    assert nl.parse(_pool_drop_graph()).status == 0
    p = nl.parse(_pool_drop_graph(**kw))
    assert p.status != 0 and why in p.why, (p.status, p.why)


def _add_gap_graph(b_elems=6, gap_scratch=16, gap_y=(2,)) -> bytes:
    qg = il.QGraph("ag_bad", 2)
    qg.add("a", (6,), DType.S8, B)
    qg.add("b", (b_elems,), DType.S8, B)
    qg.exp("e_a", 0)
    qg.exp("e_b", 0)
    qg.exp("e_y")
    qg.add("y", (6,), DType.S8, B)
    qg.node(OpCode.ADD_Q8, FW, ["a", "e_a", "b", "e_b"], ["y", "e_y"])
    qg.add("x", (2, 4), DType.S8, B)
    qg.exp("e_x", 0)
    qg.add("g", gap_y, DType.S8, B)
    qg.exp("e_g")
    qg.scratch("s", gap_scratch)
    qg.node(OpCode.GLOBAL_AVGPOOL_Q8, FW, ["x", "e_x"], ["g", "e_g", "s"])
    return qg.blob()


@pytest.mark.parametrize("kw, why", [
    (dict(b_elems=5), "add_q8: a, b, y"),
    (dict(gap_scratch=8), "global_avgpool_q8"),
    (dict(gap_y=(3,)), "global_avgpool_q8"),
])
def test_malformed_add_and_global_avgpool_q8_are_refused(kw, why):
    assert nl.parse(_add_gap_graph()).status == 0
    p = nl.parse(_add_gap_graph(**kw))
    assert p.status != 0 and why in p.why, (p.status, p.why)


@pytest.mark.parametrize("fattrs, iattrs, why", [
    ((0.0,), (OpCode.RELU,), "iattr[0] must name"),
    ((-1.0,), (OpCode.ELU,), "alpha"),
    ((0.5,), (OpCode.TANH,), "alpha"),
])
def test_malformed_act_q8_is_refused(fattrs, iattrs, why):
    qg = il.QGraph("actq_bad", 1)
    qg.add("x", (8,), DType.S8, B)
    qg.exp("e_x", 0)
    qg.add("y", (8,), DType.S8, B)
    qg.exp("e_y")
    qg.node(ACTQ, FW, ["x", "e_x"], ["y", "e_y"], iattrs, fattrs)
    p = nl.parse(qg.blob())
    assert p.status != 0 and why in p.why, p.why


# -- malformed nodes are refused --------------------------------------------------------------------

def _linear_graph(mutate=None) -> bytes:
    M, K, mb = 4, 6, 2
    qg = il.QGraph("bad", mb)
    qg.add("x", (K,), DType.S8, B)
    qg.exp("e_x", 0)
    qg.add("W", (M, K), DType.S8, P)
    qg.exp("e_w", 0, M)
    qg.add("y", (M,), DType.S8, B)
    qg.exp("e_y")
    qg.scratch("s", q.linear_scratch_bytes("fw", mb, M, K))
    node = dict(ins=["x", "e_x", "W", "e_w"], outs=["y", "e_y", "s"], iattrs=())
    if mutate:
        mutate(qg, node)
    qg.node(OpCode.LINEAR_Q8, FW, node["ins"], node["outs"], node["iattrs"])
    return qg.blob()


def _set_tensor(name, **kw):
    def f(qg, node):
        t = qg.g.tensors[qg.names[name]]
        for k, v in kw.items():
            setattr(t, k, v)
    return f


BAD_NODES = {
    "W is f32": (_set_tensor("W", dtype=DType.F32), "W s8"),
    "x is unbatched": (_set_tensor("x", flags=TensorFlag(0)), "batched"),
    "e_w of the wrong size": (_set_tensor("e_w", dims=(3,)), "e_w"),
    "scratch too small": (_set_tensor("s", dims=(8,)), "scratch"),
    "scratch is a parameter": (_set_tensor("s", flags=P), "scratch"),
    "x shape not R*K": (_set_tensor("x", dims=(7,)), "R*K"),
    "e_y is e_x": (lambda qg, node: node["outs"].__setitem__(1, "e_x"), "disjoint"),
    "missing output": (lambda qg, node: node["outs"].pop(), "needs"),
    "per-sample flag not 0/1": (lambda qg, node: node.__setitem__("iattrs", (2,)), "iattr[0] (per-sample sums) 0 or 1"),
    "non-zero iattr[1]": (lambda qg, node: node.__setitem__("iattrs", (0, 1)), "other attrs 0"),
}


@pytest.mark.parametrize("case", list(BAD_NODES))
def test_malformed_linear_q8_is_refused(case):
    assert nl.parse(_linear_graph()).status == 0
    mutate, why = BAD_NODES[case]
    p = nl.parse(_linear_graph(mutate))
    assert p.status != 0 and why in p.why, (p.status, p.why)


def _update_graph(lr_shift=3, rng_dims=(1,), spread=2, p_flags=P | T) -> bytes:
    qg = il.QGraph("bad_upd", 1)
    qg.add("p", (3, 4), DType.S8, p_flags)
    qg.add("g", (3, 4), DType.I32)
    qg.exp("e_g", 0, 2)
    qg.exp("e_p", 0, 3)
    qg.add("rng", rng_dims, DType.I32, P)
    qg.add("w", (3, 4), DType.F32, P)
    qg.add("wq", (3, 4), DType.S8, P)
    qg.exp("e_wq", 0, 3)
    qg.node(OpCode.SGD_Q8, FW, ["g", "e_g", "e_p"], ["p", "rng"], (100, lr_shift, 1))
    qg.node(OpCode.REQUANT_WEIGHTS, FW, ["w"], ["wq", "e_wq"], (spread,))
    return qg.blob()


@pytest.mark.parametrize("kw, why", [
    (dict(lr_shift=63), "lr_shift"),
    (dict(rng_dims=(2,)), "rng"),
    (dict(p_flags=P), "TRAINABLE"),
    (dict(spread=5), "spread"),
])
def test_malformed_updates_are_refused(kw, why):
    assert nl.parse(_update_graph()).status == 0
    p = nl.parse(_update_graph(**kw))
    assert p.status != 0 and why in p.why, (p.status, p.why)


def test_oversized_sums_are_refused():
    """bw_input sums over M = 8192 outputs could overflow int32: refused at parse."""
    M, K, mb = 8192, 2, 1
    qg = il.QGraph("big", mb)
    qg.add("dy", (M,), DType.S8, B)
    qg.exp("e_dy", 0)
    qg.add("W", (M, K), DType.S8, P)
    qg.exp("e_w", 0, M)
    qg.add("dx", (K,), DType.S8, B)
    qg.exp("e_dx")
    qg.scratch("s", q.linear_scratch_bytes("bw_input", mb, M, K))
    qg.node(OpCode.LINEAR_Q8, BWI, ["dy", "e_dy", "W", "e_w"], ["dx", "e_dx", "s"])
    p = nl.parse(qg.blob(), arena_bytes=1 << 26)
    assert p.status != 0 and "8191" in p.why


# -- the reference against PyTorch -------------------------------------------------------------------

def _quantized_layer(rng, w_shape, bias=True):
    w = (rng.standard_normal(w_shape) * 0.3).astype(np.float32)
    w[0] *= 0.2  # a channel with a smaller range: per-channel exponents matter
    b = (rng.standard_normal(w_shape[0]) * 0.5).astype(np.float32)
    wq, e_w = q.quantize_weights(w)
    e_b = q.bias_exponent(b)
    return w, b, wq, e_w, q.quantize_bias(b, e_b), e_b


def _step(e) -> np.ndarray:
    return np.asarray([2.0 ** int(v) for v in np.atleast_1d(e)])


def test_reference_linear_approximates_fp32_within_the_quantisation_bound():
    """|y_int8 - y_fp32| ≤ |x|·δw + δx·|W| + K·δx·δw + δb + δy per element, where a step
    δ = 2^e is a whole code step: rounding costs half a step and saturating the one
    value that rounds to 128 another half (x, W), the bias code is exact to half a step
    at its exponent and half a step again when moved to the accumulator, and the
    requantised output is off by at most one step (rounding + saturation)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 40)).astype(np.float32)
    w, b, wq, e_w, bq, e_b = _quantized_layer(rng, (9, 40))
    xq, e_x = q.quantize(x)
    y, e_y = q.linear_fw(xq, e_x, wq, e_w, bq, e_b)
    ref = F.linear(torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64),
                   torch.tensor(b, dtype=torch.float64)).numpy()
    dw, dx = _step(e_w), 2.0 ** e_x
    bound = (np.abs(x) @ np.broadcast_to(dw[:, None], w.shape).T + dx * np.abs(w).sum(1) + 40 * dx * dw
             + 2.0 ** e_b + _step(e_x + e_w) + 2.0 ** e_y)
    err = np.abs(q.dequantize(y, e_y) - ref)
    assert (err <= bound).all(), (err / bound).max()
    # the worst-case bound grows with K; the typical error is far smaller (rounding
    # errors are independent and cancel): 2 % of the output's spread, fixed seed
    assert np.sqrt((err**2).mean()) < 0.02 * ref.std()
    # an off-by-one exponent (a plausible bug) breaks it
    assert (np.abs(q.dequantize(y, e_y + 1) - ref) > bound).any()

    # bw_input: dx = dy W, weights folded exactly (spread ≤ SPREAD)
    g = rng.standard_normal((6, 9)).astype(np.float32)
    gq, e_g = q.quantize(g)
    gx, e_gx = q.linear_bw_input(gq, e_g, wq, e_w)
    ref = g.astype(np.float64) @ w
    bound = np.abs(g) @ np.broadcast_to(dw[:, None], w.shape) + 2.0 ** e_g * np.abs(w).sum(0) + 9 * 2.0 ** e_g * dw.max() + 2.0 ** e_gx
    assert (np.abs(q.dequantize(gx, e_gx) - ref) <= bound).all()

    # bw_param: the int sums are exact, so dW is dyᵀx of the quantised values (f32-rounded)
    gw, gb, (e_gw, e_gb) = q.linear_bw_param(gq, e_g, xq, e_x)
    exact = q.dequantize(gq, e_g).astype(np.float64).T @ q.dequantize(xq, e_x).astype(np.float64)
    np.testing.assert_allclose(q.acc_to_f32(gw, e_gw), exact, rtol=2.0 ** -24, atol=0)


def test_reference_conv_approximates_fp32_within_the_quantisation_bound():
    """The same bound as the linear test for a grouped, strided, padded conv: every
    output sums ≤ C_in/groups·kh·kw products (padding taps are exact zeros)."""
    rng = np.random.default_rng(6)
    g = q.ConvGeom((2, 1), (1, 0, 2, 1), (1, 1), 2)
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    w, b, wq, e_w, bq, e_b = _quantized_layer(rng, (6, 2, 3, 3))
    xq, e_x = q.quantize(x)
    y, e_y = q.conv_fw(xq, e_x, wq, e_w, g, bq, e_b)
    t64 = lambda a: torch.tensor(np.asarray(a, np.float64))  # noqa: E731
    conv = lambda xx, ww: F.conv2d(F.pad(xx, (2, 1, 1, 0)), ww, None, (2, 1), 0, 1, 2)  # noqa: E731
    ref = (conv(t64(x), t64(w)) + t64(b)[None, :, None, None]).numpy()
    dw = np.broadcast_to(_step(e_w)[:, None, None, None], w.shape)
    dx = 2.0 ** e_x
    bound = (conv(t64(np.abs(x)), t64(dw)) + conv(t64(np.full_like(x, dx)), t64(np.abs(w) + dw))).numpy() \
        + (2.0 ** e_b + _step(e_x + e_w))[None, :, None, None] + 2.0 ** e_y
    err = np.abs(q.dequantize(y, e_y) - ref)
    assert (err <= bound).all(), (err / bound).max()
    assert np.sqrt((err**2).mean()) < 0.02 * ref.std()
    assert (np.abs(q.dequantize(y, e_y + 1) - ref) > bound).any()


# -- int8 training on real data ------------------------------------------------------------------------

HIDDEN, BATCH, EPOCHS, LR = 32, 16, 2, 0.1


def _mlp_init(features, classes, seed=0):
    """PyTorch's nn.Linear initialisation, seeded: U(±1/√fan_in) for weights and biases."""
    r = np.random.default_rng(seed)
    shapes = [(HIDDEN, features), (classes, HIDDEN)]
    return [((r.uniform(-1, 1, s) / np.sqrt(s[1])).astype(np.float32),
             (r.uniform(-1, 1, s[0]) / np.sqrt(s[1])).astype(np.float32)) for s in shapes]


class Int8Mlp:
    """A 2-layer int8 MLP as a training graph, and the same training step in NumPy.

    mode "sr": int8 weights and int32 biases trained in place by SGD_Q8 (stochastic
    rounding); mode "master": f32 master weights trained by the f32 SGD op, then
    REQUANT_WEIGHTS to the int8 codes the forward pass uses. The loss is the f32
    SOFTMAX_CE on dequantised logits; its gradient is quantised again. The reference
    computes SOFTMAX_CE with the very kernel the device runs (ctypes): that op has its
    own golden tests against PyTorch, and exp() differs between libms, so using it
    here keeps the comparison about the int8 arithmetic."""

    def __init__(self, features, classes, mode, init):
        self.mode, self.classes = mode, classes
        self.lr_q, self.lr_shift = q.lr_fixed(LR)
        self.s = {"rng": 2463534242}
        qg = il.QGraph(f"mlp-{mode}", BATCH, input_dims=(features,), num_classes=classes)
        dims = {1: (features, HIDDEN), 2: (HIDDEN, classes)}
        for i, (w, b) in enumerate(init, 1):
            wq, e_w = q.quantize_weights(w, headroom=1 if mode == "sr" else 0)
            e_b = q.bias_exponent(b)
            self.s.update({f"W{i}": wq, f"e_W{i}": e_w, f"b{i}": q.quantize_bias(b, e_b), f"e_b{i}": e_b})
            code_flags = P | T if mode == "sr" else P
            qg.add(f"W{i}", w.shape, DType.S8, code_flags, wq)
            qg.add(f"e_W{i}", (w.shape[0],), DType.I32, P, e_w)  # model state: PARAM
            qg.add(f"b{i}", b.shape, DType.I32, code_flags, self.s[f"b{i}"])
            qg.add(f"e_b{i}", (1,), DType.I32, P, np.array([e_b]))
            if mode == "master":
                self.s.update({f"W{i}f": w.copy(), f"b{i}f": b.copy()})
                qg.add(f"W{i}f", w.shape, DType.F32, P | T, w)
                qg.add(f"b{i}f", b.shape, DType.F32, P | T, b)
            k, m = dims[i]
            gdt = DType.I32 if mode == "sr" else DType.F32
            qg.add(f"gW{i}", w.shape, gdt)
            qg.add(f"gb{i}", b.shape, gdt)
            qg.exp(f"eg{i}", None, 2)
            qg.scratch(f"s_fw{i}", q.linear_scratch_bytes("fw", BATCH, m, k))
            qg.scratch(f"s_bwp{i}", q.linear_scratch_bytes("bw_param", BATCH, m, k))
        qg.add("rng", (1,), DType.I32, P, np.array([self.s["rng"]], np.int64).astype(np.uint32).view(np.int32))
        qg.scratch("s_bwi2", q.linear_scratch_bytes("bw_input", BATCH, classes, HIDDEN))
        for name, n in (("xq", features), ("h1", HIDDEN), ("a1", HIDDEN), ("z", classes), ("dz", classes),
                        ("da1", HIDDEN), ("dh1", HIDDEN)):
            qg.add(name, (n,), DType.S8, B)
            qg.exp("e_" + name)
        for name in ("logits", "probs", "dlogits"):
            qg.add(name, (classes,), DType.F32, B)
        N = OpCode
        qg.node(N.QUANTIZE, FW, ["input"], ["xq", "e_xq"])
        qg.node(N.LINEAR_Q8, FW, ["xq", "e_xq", "W1", "e_W1", "b1", "e_b1"], ["h1", "e_h1", "s_fw1"])
        qg.node(N.RELU_Q8, FW, ["h1", "e_h1"], ["a1", "e_a1"])
        qg.node(N.LINEAR_Q8, FW, ["a1", "e_a1", "W2", "e_W2", "b2", "e_b2"], ["z", "e_z", "s_fw2"])
        qg.node(N.DEQUANTIZE, FW, ["z", "e_z"], ["logits"])
        qg.node(N.SOFTMAX_CE, FW, ["logits", "labels"], ["probs", "stats"])
        n_fw = len(qg.g.nodes)
        qg.node(N.SOFTMAX_CE, BWI, ["probs", "labels"], ["dlogits"])
        qg.node(N.QUANTIZE, FW, ["dlogits"], ["dz", "e_dz"])
        gouts = lambda i: [f"gW{i}", f"gb{i}"] + ([f"eg{i}"] if mode == "sr" else []) + [f"s_bwp{i}"]  # noqa: E731
        qg.node(N.LINEAR_Q8, BWP, ["dz", "e_dz", "a1", "e_a1"], gouts(2))
        qg.node(N.LINEAR_Q8, BWI, ["dz", "e_dz", "W2", "e_W2"], ["da1", "e_da1", "s_bwi2"])
        qg.node(N.RELU_Q8, BWI, ["da1", "e_da1", "a1"], ["dh1", "e_dh1"])
        qg.node(N.LINEAR_Q8, BWP, ["dh1", "e_dh1", "xq", "e_xq"], gouts(1))
        for i in (2, 1):
            if mode == "sr":
                lr = (self.lr_q, self.lr_shift)
                qg.node(N.SGD_Q8, FW, [f"gW{i}", f"eg{i}", f"e_W{i}"], [f"W{i}", "rng"], (*lr, 0))
                qg.node(N.SGD_Q8, FW, [f"gb{i}", f"eg{i}", f"e_b{i}"], [f"b{i}", "rng"], (*lr, 1))
            else:
                qg.node(N.SGD, FW, [f"gW{i}"], [f"W{i}f"], (), (LR, 0.0))
                qg.node(N.SGD, FW, [f"gb{i}"], [f"b{i}f"], (), (LR, 0.0))
                qg.node(N.REQUANT_WEIGHTS, FW, [f"W{i}f"], [f"W{i}", f"e_W{i}"], (q.SPREAD,))
                qg.node(N.REQUANT_WEIGHTS, FW, [f"b{i}f", f"e_b{i}"], [f"b{i}"])
        self.qg = qg
        self.blob = qg.blob(eval_nodes=n_fw, train_loss_end=n_fw)

    def param_names(self):
        names = ["W1", "e_W1", "b1", "W2", "e_W2", "b2"]
        return names + (["rng"] if self.mode == "sr" else ["W1f", "b1f", "W2f", "b2f"])

    def ref_step(self, x, y) -> float:
        """One training step of the reference on self.s; returns the loss."""
        s = self.s
        xq, e_xq = q.quantize(x)
        h1, e_h1 = q.linear_fw(xq, e_xq, s["W1"], s["e_W1"], s["b1"], s["e_b1"])
        a1, e_a1 = q.relu_fw(h1, e_h1)
        z, e_z = q.linear_fw(a1, e_a1, s["W2"], s["e_W2"], s["b2"], s["e_b2"])
        probs, loss, _ = nl.softmax_ce_fw(q.dequantize(z, e_z), y)
        dz, e_dz = q.quantize(nl.softmax_ce_bw(probs, y))
        g2 = q.linear_bw_param(dz, e_dz, a1, e_a1)
        da1, e_da1 = q.linear_bw_input(dz, e_dz, s["W2"], s["e_W2"])
        dh1, e_dh1 = q.relu_bw(da1, e_da1, a1)
        g1 = q.linear_bw_param(dh1, e_dh1, xq, e_xq)
        for i, (gw, gb, (e_gw, e_gb)) in ((2, g2), (1, g1)):
            if self.mode == "sr":
                s[f"W{i}"], s["rng"] = q.sgd_q8(s[f"W{i}"], gw, e_gw, s[f"e_W{i}"], self.lr_q, self.lr_shift, s["rng"])
                s[f"b{i}"], s["rng"] = q.sgd_q8(s[f"b{i}"], gb, e_gb, s[f"e_b{i}"], self.lr_q, self.lr_shift, s["rng"])
            else:
                lr, zero = np.float32(LR), np.float32(0.0)
                for p, g, e in ((f"W{i}f", gw, e_gw), (f"b{i}f", gb, e_gb)):
                    s[p] = s[p] - lr * (q.acc_to_f32(g, e) + zero * s[p])  # ep_sgd_update_f32, weight decay 0
                s[f"W{i}"], s[f"e_W{i}"] = q.quantize_weights(s[f"W{i}f"])
                s[f"b{i}"] = q.quantize_bias(s[f"b{i}f"], s[f"e_b{i}"])
        return loss


def _batches(n, epochs, seed=1):
    r = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = r.permutation(n)
        for i in range(0, n - BATCH + 1, BATCH):
            yield perm[i:i + BATCH]


def _fp32_accuracy(ds, init) -> float:
    """The same MLP, init, batches and learning rate in PyTorch float32."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(ds.features, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, ds.classes))
    with torch.no_grad():
        for layer, (w, b) in zip((model[0], model[2]), init):
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(b))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for idx in _batches(len(ds.x_train), EPOCHS):
        opt.zero_grad()
        F.cross_entropy(model(torch.from_numpy(ds.x_train[idx])), torch.from_numpy(ds.y_train[idx])).backward()
        opt.step()
    with torch.no_grad():
        return float((model(torch.from_numpy(ds.x_test)).argmax(1).numpy() == ds.y_test).mean())


@pytest.fixture(scope="module")
def native_device():
    from conftest import _require_firmware
    from host.device import Device
    from host.emulator import start
    from host.link import Link

    with start(_require_firmware("native")) as running, Link.open(running.url, timeout=30.0) as lk:
        dev = Device(lk)
        dev.hello()
        yield dev


@pytest.mark.parametrize("mode", ["sr", "master"])
def test_int8_mlp_trains_on_digits_bit_exact_every_step(native_device, mode):
    from host.datasets import load_dataset

    ds = load_dataset("digits")
    init = _mlp_init(ds.features, ds.classes)
    net = Int8Mlp(ds.features, ds.classes, mode, init)
    r = il.DeviceRunner("native", native_device, net.qg, net.blob)
    for step, idx in enumerate(_batches(len(ds.x_train), EPOCHS)):
        x, y = ds.x_train[idx], ds.y_train[idx]
        got = r.run(x, y, train=True)
        want = net.ref_step(x, y)
        assert np.float32(got.loss) == np.float32(want), f"step {step}: loss {got.loss} != {want}"
        if step >= 32 and step % 16:  # every parameter after each of the first 32 steps, then every 16th
            continue
        for name in net.param_names():
            ref = np.asarray(net.s[name]) if name != "rng" else np.array([net.s["rng"]], np.uint32).view(np.int32)
            assert_same(r.read(name).reshape(np.shape(ref)), ref.astype(r.read(name).dtype), f"step {step}: {name}")
    assert step + 1 == EPOCHS * (len(ds.x_train) // BATCH)

    correct = 0
    for i in range(0, len(ds.x_test), BATCH):
        correct += r.run(ds.x_test[i:i + BATCH], ds.y_test[i:i + BATCH]).correct
    acc, acc32 = correct / len(ds.x_test), _fp32_accuracy(ds, init)
    print(f"\n{mode}: int8 test accuracy {acc:.4f}, fp32 {acc32:.4f} after {step + 1} steps")
    # a short run (2 epochs): int8 within 3 points of fp32 (the 1.5-point
    # target is for full runs, reported by the benchmark)
    assert acc >= acc32 - 0.03, (acc, acc32)
    assert acc > 0.8


def test_under_sanitizers():
    """The op tests on the runtime library again, built with -fsanitize=address,undefined:
    an out-of-bounds access of a tensor or scratch, a signed overflow or a bad shift in
    the int8 kernels aborts the subprocess (arena buffers are exact-size NumPy arrays)."""
    import subprocess
    import sys
    from pathlib import Path

    cmd = [sys.executable, "-m", "pytest", "-q", "--capture=sys", "-p", "no:cacheprovider",
           "-k", "lib and not mlp and not test_under_sanitizers", str(Path(__file__))]
    nl.build("sanitize")
    proc = subprocess.run(cmd, env=nl.sanitized_env(), capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=600)
    assert proc.returncode == 0, proc.stderr[:6000] + proc.stdout[-3000:]
    assert " passed" in proc.stdout


# -- MHSA_Q8 ------------------------------------------------------------------------------

MQ_T, MQ_D, MQ_H = 5, 8, 2
MQ_SAVED = 3 * MQ_D + MQ_H * MQ_T  # per token: qkv [3D], then the sample's P rows


def _mq_params(rng) -> dict:
    D = MQ_D
    return {"w_in": (rng.standard_normal((3 * D, D)) * 0.5).astype(np.float32),
            "b_in": (rng.standard_normal(3 * D) * 0.1).astype(np.float32),
            "w_out": (rng.standard_normal((D, D)) * 0.3).astype(np.float32),
            "b_out": (rng.standard_normal(D) * 0.1).astype(np.float32)}


def _mq_add_params(qg, prm, names=("w_in", "b_in", "w_out", "b_out")) -> None:
    for k in names:
        qg.add(k, prm[k].shape, F32, P, prm[k])


def _mq_scratch(qg) -> None:
    qg.scratch("s", 4 * (6 * MQ_T * MQ_D + (MQ_H + 1) * MQ_T * MQ_T))


def _mq_saved_codes(saved_f32: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """QUANTIZE of the f32 saved state as two tensors, qkv and P (the forward's saved codes)."""
    mb, T, D = saved_f32.shape[0], MQ_T, MQ_D
    flat = saved_f32.reshape(mb, -1)
    (cq, eq), (cp, ep) = q.quantize(flat[:, :3 * T * D]), q.quantize(flat[:, 3 * T * D:])
    return np.concatenate([cq, cp], axis=1).reshape(saved_f32.shape), [eq, ep]


def test_mhsa_q8_forward_is_the_f32_chain(target, rng):
    mb, T, D, H = 3, MQ_T, MQ_D, MQ_H
    x, prm = codes(rng, (mb, T, D)), _mq_params(rng)
    got = []
    for fused in (True, False):
        qg = il.QGraph("mhsaq_fw" if fused else "mhsaq_fw_chain", mb)
        qg.add("x", (T, D), DType.S8, B, x)
        qg.exp("e_x", -6)
        _mq_add_params(qg, prm)
        qg.add("y", (T, D), DType.S8, B)
        qg.exp("e_y")
        if fused:
            _mq_scratch(qg)
            qg.add("saved", (T, MQ_SAVED), DType.S8, B)
            qg.exp("e_s", n=2)
            qg.node(OpCode.MHSA_Q8, FW, ["x", "e_x", "w_in", "b_in", "w_out", "b_out", "s"],
                    ["y", "e_y", "saved", "e_s"], (H,))
            names = ("y", "e_y", "saved", "e_s")
        else:
            qg.add("xf", (T, D), F32, B)
            qg.add("yf", (T, D), F32, B)
            qg.add("saved", (T, MQ_SAVED), F32, B)
            qg.add("sf", (T, D + T), F32)
            qg.node(OpCode.DEQUANTIZE, FW, ["x", "e_x"], ["xf"])
            qg.node(OpCode.MHSA, FW, ["xf", "w_in", "b_in", "w_out", "b_out", "sf"], ["yf", "saved"], (H,))
            qg.node(OpCode.QUANTIZE, FW, ["yf"], ["y", "e_y"])
            names = ("y", "e_y", "saved")
        qg.readable(*names)
        got.append(_read(run_eval(target, qg), names))
    fused, chain = got
    assert_same(fused["y"], chain["y"], "y")
    assert_same(fused["e_y"], chain["e_y"], "e_y")
    want, e_want = _mq_saved_codes(chain["saved"])
    assert_same(fused["saved"], want, "saved codes")
    assert_same(fused["e_s"], np.array(e_want, np.int32), "saved exponents")
    assert np.abs(fused["y"]).max() > 60 and np.abs(want).max() > 60


@pytest.mark.parametrize("want_dx", [True, False], ids=["dx", "dqkv_only"])
def test_mhsa_q8_backward_is_the_f32_chain(target, rng, want_dx):
    """From saved codes (any: the backward only dequantizes them) through DEQUANTIZE →
    MHSA's backward → QUANTIZE, dqkv quantised between the input and the parameter
    gradient; bw_param's running sums over samples match the f32 kernel's over the batch."""
    mb, T, D, H = 3, MQ_T, MQ_D, MQ_H
    x, dy, prm = codes(rng, (mb, T, D)), codes(rng, (mb, T, D)), _mq_params(rng)
    saved = codes(rng, (mb, T, MQ_SAVED))
    P_codes = rng.integers(0, 128, size=(mb, H * T * T))  # probabilities are ≥ 0
    saved.reshape(mb, -1)[:, 3 * T * D:] = P_codes
    e_s = [-5, -7]
    grads = {"dw_in": (3 * D, D), "db_in": (3 * D,), "dw_out": (D, D), "db_out": (D,)}
    got = []
    for fused in (True, False):
        qg = il.QGraph("mhsaq_bw" if fused else "mhsaq_bw_chain", mb)
        qg.add("dy", (T, D), DType.S8, B, dy)
        qg.exp("e_dy", -9)
        qg.add("x", (T, D), DType.S8, B, x)
        qg.exp("e_x", -6)
        _mq_add_params(qg, prm, ("w_in", "w_out"))
        qg.add("dqkv", (T, 3 * D), DType.S8, B)
        qg.add("dx", (T, D), DType.S8, B)
        qg.exp("e_dx")
        for k, shape in grads.items():
            qg.add(k, shape, F32)
        if fused:
            qg.scratch("s", 4 * (9 * T * D + (H + 1) * T * T))
            qg.add("saved", (T, MQ_SAVED), DType.S8, B, saved)
            qg.exp("e_s", e_s, n=2)
            qg.exp("e_bw", n=3)
            outs = ["dqkv", "e_bw"] + (["dx", "e_dx"] if want_dx else [])
            qg.node(OpCode.MHSA_Q8, BWI, ["dy", "e_dy", "w_in", "w_out", "saved", "e_s", "s"], outs, (H,))
            qg.node(OpCode.MHSA_Q8, BWP, ["dy", "e_dy", "x", "e_x", "saved", "dqkv", "e_bw", "s"], list(grads), (H,))
            names = outs + list(grads)
        else:
            flat = saved.reshape(mb, -1)
            sf = np.concatenate([q.dequantize(flat[:, :3 * T * D], e_s[0]), q.dequantize(flat[:, 3 * T * D:], e_s[1])], 1)
            qg.add("savedf", (T, MQ_SAVED), F32, B, sf)
            for k in ("dyf", "xf", "dxf"):
                qg.add(k, (T, D), F32, B)
            for k in ("dqkvf", "dqkvd"):
                qg.add(k, (T, 3 * D), F32, B)
            qg.exp("e_dqkv")
            qg.add("sf", (T, D + T), F32)
            qg.node(OpCode.DEQUANTIZE, FW, ["dy", "e_dy"], ["dyf"])
            qg.node(OpCode.DEQUANTIZE, FW, ["x", "e_x"], ["xf"])
            qg.node(OpCode.MHSA, BWI, ["dyf", "w_in", "w_out", "savedf", "sf"], ["dqkvf"] + (["dxf"] if want_dx else []), (H,))
            if want_dx:
                qg.node(OpCode.QUANTIZE, FW, ["dxf"], ["dx", "e_dx"])
            qg.node(OpCode.QUANTIZE, FW, ["dqkvf"], ["dqkv", "e_dqkv"])
            qg.node(OpCode.DEQUANTIZE, FW, ["dqkv", "e_dqkv"], ["dqkvd"])
            qg.node(OpCode.MHSA, BWP, ["dyf", "xf", "savedf", "dqkvd", "sf"], list(grads), (H,))
            names = ["dqkv", "e_dqkv"] + (["dx", "e_dx"] if want_dx else []) + list(grads)
        qg.readable(*names)
        got.append(_read(run_eval(target, qg), names))
    fused, chain = got
    assert fused["e_bw"].tolist() == e_s + [int(chain["e_dqkv"][0])]
    for name in chain:
        if name != "e_dqkv":
            assert_same(fused[name], chain[name], name)
    assert np.abs(fused["dqkv"]).max() > 60
    if want_dx:
        assert np.abs(fused["dx"]).max() > 60


def _mq_bad_graph(e_s_n=2, heads=MQ_H, scratch=None, saved_cols=MQ_SAVED, y_dtype=DType.S8) -> bytes:
    qg = il.QGraph("mhsaq_bad", 2)
    T, D = MQ_T, MQ_D
    qg.add("x", (T, D), DType.S8, B)
    qg.exp("e_x", 0)
    _mq_add_params(qg, _mq_params(np.random.default_rng(0)))
    qg.add("y", (T, D), y_dtype, B)
    qg.exp("e_y")
    qg.add("saved", (T, saved_cols), DType.S8, B)
    qg.exp("e_s", n=e_s_n)
    qg.scratch("s", scratch if scratch is not None else 4 * (6 * T * D + (MQ_H + 1) * T * T))
    qg.node(OpCode.MHSA_Q8, FW, ["x", "e_x", "w_in", "b_in", "w_out", "b_out", "s"], ["y", "e_y", "saved", "e_s"],
            (heads,))
    return qg.blob()


@pytest.mark.parametrize("kw, why", [
    (dict(e_s_n=1), "i32 [2] exponent"),
    (dict(heads=3), "heads (iattr[0])"),
    (dict(scratch=64), "scratch"),
    (dict(saved_cols=MQ_SAVED - 1), "saved must be"),
    (dict(y_dtype=F32), "mhsa_q8: want"),
])
def test_malformed_mhsa_q8_is_refused(kw, why):
    assert nl.parse(_mq_bad_graph()).status == 0
    p = nl.parse(_mq_bad_graph(**kw))
    assert p.status != 0 and why in p.why, (p.status, p.why)


@pytest.mark.parametrize("x_dims, scratch, why", [
    ((4, 17), 4 * (2 * 18 + 4), "x must be batched s8 shaped like dx"),
    ((4, 18), 4 * (18 + 4), "scratch"),
])
def test_malformed_maxpool2d_q8_is_refused(x_dims, scratch, why):
    def blob(x_dims=(4, 18), scratch=4 * (2 * 18 + 4)):
        qg = il.QGraph("maxq_bad", 2)
        qg.add("dy", (4, 4), DType.S8, B)
        qg.exp("e_dy", 0)
        qg.add("x", x_dims, DType.S8, B)
        qg.exp("e_x", 0)
        qg.add("dx", (4, 18), DType.S8, B)
        qg.exp("e_dx")
        qg.scratch("s", scratch)
        qg.node(OpCode.MAXPOOL2D_Q8, BWI, ["dy", "e_dy", "x", "e_x"], ["dx", "e_dx", "s"], (1, 4, 1, 4, 0, 0, 0, 0, 0))
        return qg.blob()
    assert nl.parse(blob()).status == 0
    p = nl.parse(blob(x_dims, scratch))
    assert p.status != 0 and why in p.why, (p.status, p.why)


# -- LAYERNORM_Q8, TRANSPOSE over codes -----------------------------------------------------

LNQ = OpCode.LAYERNORM_Q8


@pytest.mark.parametrize("dims", [(5, 8), (12,), (2, 3, 7)], ids=["tokens", "features", "rank3"])
def test_layernorm_q8_is_the_f32_chain(target, rng, dims):
    mb, D, eps = 3, dims[-1], 1e-5
    R = int(np.prod(dims)) // D
    x, dy = codes(rng, (mb, *dims)), codes(rng, (mb, *dims))
    gamma, beta = (rng.standard_normal(D).astype(np.float32) for _ in range(2))
    names = ("y", "e_y", "saved", "dx", "e_dx", "dg", "db")

    def build(fused):
        qg = il.QGraph("lnq" if fused else "lnq_chain", mb)
        qg.add("x", dims, DType.S8, B, x)
        qg.exp("e_x", -6)
        qg.add("dy", dims, DType.S8, B, dy)
        qg.exp("e_dy", -11)
        qg.add("gamma", (D,), F32, P, gamma)
        qg.add("beta", (D,), F32, P, beta)
        qg.add("saved", (2 * R,), F32, B)
        qg.add("y", dims, DType.S8, B)
        qg.add("dg", (D,), F32)
        qg.add("db", (D,), F32)
        qg.exp("e_y")
        qg.exp("e_dx")
        if fused:  # dx over dy
            qg.inplace("dx", "dy")
            qg.scratch("s", 12 * D)
            qg.node(LNQ, FW, ["x", "e_x", "gamma", "beta"], ["y", "e_y", "saved", "s"], (), (eps,))
            qg.node(LNQ, BWP, ["dy", "e_dy", "x", "e_x", "saved"], ["dg", "db", "s"], (), (eps,))
            qg.node(LNQ, BWI, ["dy", "e_dy", "x", "e_x", "gamma", "saved"], ["dx", "e_dx", "s"], (), (eps,))
        else:
            for name in ("xf", "dyf", "yf", "dxf"):
                qg.add(name, dims, F32, B)
            qg.add("dx", dims, DType.S8, B)
            qg.node(OpCode.DEQUANTIZE, FW, ["x", "e_x"], ["xf"])
            qg.node(OpCode.LAYERNORM, FW, ["xf", "gamma", "beta"], ["yf", "saved"], (), (eps,))
            qg.node(OpCode.QUANTIZE, FW, ["yf"], ["y", "e_y"])
            qg.node(OpCode.DEQUANTIZE, FW, ["dy", "e_dy"], ["dyf"])
            qg.node(OpCode.LAYERNORM, BWP, ["dyf", "xf", "saved"], ["dg", "db"], (), (eps,))
            qg.node(OpCode.LAYERNORM, BWI, ["dyf", "xf", "gamma", "saved"], ["dxf"], (), (eps,))
            qg.node(OpCode.QUANTIZE, FW, ["dxf"], ["dx", "e_dx"])
        return qg

    got = _fused_is_chain(target, build, names)
    assert np.abs(got["y"]).max() > 60 and np.abs(got["dx"]).max() > 60


def test_transpose_moves_int8_codes(target, rng):
    """TRANSPOSE over s8 tensors: the codes move, forward and backward (their exponent is the
    graph's, shared)."""
    mb, A, Bd = 3, 5, 7
    x, dy = codes(rng, (mb, A, Bd)), codes(rng, (mb, Bd, A))
    qg = il.QGraph("transpose_s8", mb)
    qg.add("x", (A, Bd), DType.S8, B, x)
    qg.add("dy", (Bd, A), DType.S8, B, dy)
    qg.add("y", (Bd, A), DType.S8, B)
    qg.add("dx", (A, Bd), DType.S8, B)
    qg.node(OpCode.TRANSPOSE, FW, ["x"], ["y"])
    qg.node(OpCode.TRANSPOSE, BWI, ["dy"], ["dx"])
    qg.readable("y", "dx")
    got = _read(run_eval(target, qg), ("y", "dx"))
    assert_same(got["y"], x.transpose(0, 2, 1), "y")
    assert_same(got["dx"], dy.transpose(0, 2, 1), "dx")


@pytest.mark.parametrize("kw, why", [
    (dict(scratch=12 * 8 - 1), "scratch >= 12*D"),
    (dict(saved=9), "saved batched f32 [2R]"),
    (dict(eps=0.0), "eps (fattr[0])"),
    (dict(y_dtype=F32), "layernorm_q8"),
])
def test_malformed_layernorm_q8_is_refused(kw, why):
    def blob(scratch=12 * 8, saved=10, eps=1e-5, y_dtype=DType.S8):
        qg = il.QGraph("lnq_bad", 2)
        qg.add("x", (5, 8), DType.S8, B)
        qg.exp("e_x", 0)
        qg.add("gamma", (8,), F32, P)
        qg.add("beta", (8,), F32, P)
        qg.add("y", (5, 8), y_dtype, B)
        qg.exp("e_y")
        qg.add("saved", (saved,), F32, B)
        qg.scratch("s", scratch)
        qg.node(LNQ, FW, ["x", "e_x", "gamma", "beta"], ["y", "e_y", "saved", "s"], (), (eps,))
        return qg.blob()
    assert nl.parse(blob()).status == 0
    p = nl.parse(blob(**kw))
    assert p.status != 0 and why in p.why, (p.status, p.why)


def test_seqpool_q8_is_the_f32_chain(target, rng):
    """SEQPOOL_Q8: forward, input gradient and the g/c gradients (running sums over the
    samples, as SEQPOOL's over the batch)."""
    mb, T, D = 3, 7, 6
    x, dy = codes(rng, (mb, T, D)), codes(rng, (mb, D))
    g = (rng.standard_normal((1, D)) * 0.5).astype(np.float32)
    cb = np.array([0.1], np.float32)
    names = ("y", "e_y", "wts", "dx", "e_dx", "dg", "dc")

    def build(fused):
        qg = il.QGraph("seqq" if fused else "seqq_chain", mb)
        qg.add("x", (T, D), DType.S8, B, x)
        qg.exp("e_x", -5)
        qg.add("dy", (D,), DType.S8, B, dy)
        qg.exp("e_dy", -10)
        qg.add("g", (1, D), F32, P, g)
        qg.add("c", (1,), F32, P, cb)
        qg.add("y", (D,), DType.S8, B)
        qg.add("wts", (T,), F32, B)
        qg.add("dx", (T, D), DType.S8, B)
        qg.add("dg", (1, D), F32)
        qg.add("dc", (1,), F32)
        qg.exp("e_y")
        qg.exp("e_dx")
        if fused:
            for fn in ("fw", "bwp", "bwi"):
                qg.scratch("s_" + fn, 4 * (2 * T * D + D))
            qg.node(OpCode.SEQPOOL_Q8, FW, ["x", "e_x", "g", "c"], ["y", "e_y", "wts", "s_fw"])
            qg.node(OpCode.SEQPOOL_Q8, BWP, ["dy", "e_dy", "x", "e_x", "wts"], ["dg", "dc", "s_bwp"])
            qg.node(OpCode.SEQPOOL_Q8, BWI, ["dy", "e_dy", "x", "e_x", "g", "wts"], ["dx", "e_dx", "s_bwi"])
        else:
            qg.add("xf", (T, D), F32, B)
            qg.add("dxf", (T, D), F32, B)
            qg.add("yf", (D,), F32, B)
            qg.add("dyf", (D,), F32, B)
            qg.node(OpCode.DEQUANTIZE, FW, ["x", "e_x"], ["xf"])
            qg.node(OpCode.SEQPOOL, FW, ["xf", "g", "c"], ["yf", "wts"])
            qg.node(OpCode.QUANTIZE, FW, ["yf"], ["y", "e_y"])
            qg.node(OpCode.DEQUANTIZE, FW, ["dy", "e_dy"], ["dyf"])
            qg.node(OpCode.SEQPOOL, BWP, ["dyf", "xf", "wts"], ["dg", "dc"])
            qg.node(OpCode.SEQPOOL, BWI, ["dyf", "xf", "g", "wts"], ["dxf"])
            qg.node(OpCode.QUANTIZE, FW, ["dxf"], ["dx", "e_dx"])
        return qg

    got = _fused_is_chain(target, build, names)
    assert np.abs(got["y"]).max() > 60 and np.abs(got["dx"]).max() > 60


@pytest.mark.parametrize("kw, why", [
    (dict(scratch=4 * (2 * 7 * 6)), "scratch >= 4*(2*T*D + D)"),
    (dict(wts=6), "wts batched f32 [T]"),
    (dict(y=(5,)), "seqpool_q8"),
])
def test_malformed_seqpool_q8_is_refused(kw, why):
    def blob(scratch=4 * (2 * 7 * 6 + 6), wts=7, y=(6,)):
        qg = il.QGraph("seqq_bad", 2)
        qg.add("x", (7, 6), DType.S8, B)
        qg.exp("e_x", 0)
        qg.add("g", (1, 6), F32, P)
        qg.add("c", (1,), F32, P)
        qg.add("y", y, DType.S8, B)
        qg.exp("e_y")
        qg.add("wts", (wts,), F32, B)
        qg.scratch("s", scratch)
        qg.node(OpCode.SEQPOOL_Q8, FW, ["x", "e_x", "g", "c"], ["y", "e_y", "wts", "s"])
        return qg.blob()
    assert nl.parse(blob()).status == 0
    p = nl.parse(blob(**kw))
    assert p.status != 0 and why in p.why, (p.status, p.why)
