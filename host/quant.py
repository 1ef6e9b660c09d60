"""The exact integer arithmetic of int8 training, in NumPy: the reference the device
matches bit for bit (firmware/runtime/ep_q8.h, ops/ep_q8_*.c; docs/ops/int8.md).

Numbers. An int8 tensor `q` with exponent `e` stands for the reals ``q * 2**e``
(symmetric, codes in [-127, 127]). Scales are powers of two, so rescaling is an
integer shift and nothing here depends on float rounding except at the float
boundaries (QUANTIZE, DEQUANTIZE, REQUANT_WEIGHTS, f32 gradients), which use only
IEEE-exact single-precision operations both sides do identically (a product with a
power of two, ``rint`` ties-to-even, int<->float conversion).

  - activations and back-propagated errors: one exponent per tensor, chosen at run
    time from the tensor's largest magnitude (dynamic);
  - weights: one exponent per output channel, spread at most ``SPREAD``;
  - biases: int32 codes with one exponent;
  - accumulators: int32 (the device's prepare() bounds the term counts so they
    never overflow; here everything is int64, which then gives the same values).

The op functions below are written from the maths (einsum over taps, matrix
products), not from the device's loop structure, so a test comparing the two checks
the tiling, packing and im2col of the C kernels too.

Post-training quantisation (`quantize_weights`, `bias_exponent`,
`activation_exponent`, `ptq_layer`) turns fp32 weights and calibration activations
into the int8 codes and exponents a blob starts from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: exponents read from tensors are clamped to ± this (ep_q8.h EP_Q8_EXP_LIMIT)
EXP_LIMIT = 4096
#: largest per-channel weight exponent spread (EP_Q8_SPREAD)
SPREAD = 4
#: float boundary exponents (EP_Q8_FEXP_MIN/MAX): 2^e and 2^-e both normal floats
FEXP_MIN, FEXP_MAX = -126, 120
BIAS_LIMIT = 1 << 30
INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)
#: term-count limits of the int32 sums (EP_Q8_MAX_TERMS_*)
MAX_TERMS_FW, MAX_TERMS_BW_INPUT, MAX_TERMS_BW_PARAM = 65535, 8191, 131071
#: output positions per im2col chunk of the conv kernels (EP_Q8_CONV_CHUNK)
CONV_CHUNK = 128
#: the state a zero xorshift32 state is replaced with
XORSHIFT_ZERO_SEED = 0x6D2B79F5


# -- scalar rules ----------------------------------------------------------------------

def clamp_exp(e):
    """An exponent read from a tensor, clamped to [-EXP_LIMIT, EXP_LIMIT]."""
    return np.clip(np.asarray(e, np.int64), -EXP_LIMIT, EXP_LIMIT)


def rshift_round(v, s: int) -> np.ndarray:
    """floor((v + 2^(s-1)) / 2^s) for s > 0 (0 for s ≥ 32); v·2^-s saturated to int32 for s ≤ 0."""
    v = np.asarray(v, np.int64)
    s = int(s)
    if s >= 32:
        return np.zeros_like(v)
    if s > 0:
        return (v + (1 << (s - 1))) >> s
    if s == 0:
        return v.copy()
    if s <= -31:
        return np.where(v > 0, INT32_MAX, np.where(v < 0, INT32_MIN, 0)).astype(np.int64)
    return np.clip(v << -s, INT32_MIN, INT32_MAX)


def sat8(v) -> np.ndarray:
    return np.clip(np.asarray(v, np.int64), -127, 127).astype(np.int8)


def pow2f(e: int) -> np.float32:
    """2^e as float32 (e in [-126, 127]), exact."""
    return np.array([(int(e) + 127) << 23], np.uint32).view(np.float32)[0]


def exp_for_maxabs(a) -> int:
    """Exponent for int8 codes of reals of largest magnitude a: with a = m·2^E, m in
    [0.5, 1), clamp(E - 7, FEXP_MIN, FEXP_MAX); 0/subnormal/NaN count as E = -125, inf as 128."""
    bits = int(np.array([a], np.float32).view(np.uint32)[0])
    biased = (bits >> 23) & 0xFF
    if biased == 0xFF:
        E = -125 if bits & 0x7FFFFF else 128
    elif biased == 0:
        E = -125
    else:
        E = biased - 126
    return int(np.clip(E - 7, FEXP_MIN, FEXP_MAX))


def absmax(x) -> np.float32:
    """max |x| over the finite-or-inf values (NaN never wins), 0 for an empty array."""
    a = np.abs(np.asarray(x, np.float32)).ravel()
    a = a[~np.isnan(a)]
    return np.float32(a.max()) if a.size else np.float32(0.0)


def quantize_with(x, e: int) -> np.ndarray:
    """sat8(rint(x · 2^-e)), NaN → 0 (e within the float boundary range)."""
    x = np.asarray(x, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.rint(x * pow2f(-e))
    v = np.where(np.isnan(v), 0.0, v)
    return np.clip(v, -127, 127).astype(np.int8)


def bitlen(m: int) -> int:
    return int(m).bit_length()


# -- the ops' arithmetic -----------------------------------------------------------------

def quantize(x) -> tuple[np.ndarray, int]:
    """QUANTIZE: (codes, exponent) of an f32 tensor, one exponent for all of it."""
    e = exp_for_maxabs(absmax(x))
    return quantize_with(x, e), e


def dequantize(q, e: int) -> np.ndarray:
    """DEQUANTIZE: q · 2^clamp(e, FEXP_MIN, FEXP_MAX), exact."""
    e = int(np.clip(e, FEXP_MIN, FEXP_MAX))
    return np.asarray(q, np.int8).astype(np.float32) * pow2f(e)


def acc_to_f32(acc, e: int) -> np.ndarray:
    """int32 sums → f32: float(acc) (round to nearest even) · 2^clamp(e, -126, 127)."""
    e = int(np.clip(e, -126, 127))
    with np.errstate(over="ignore", under="ignore"):
        return np.asarray(acc, np.int64).astype(np.int32).astype(np.float32) * pow2f(e)


def requant(acc, e_base: int, e_ch=None) -> tuple[np.ndarray, int]:
    """acc [outer, C, inner] (channel c at exponent e_base + e_ch[c]) → (int8 codes, e_out)."""
    acc = np.asarray(acc, np.int64)
    C = acc.shape[1]
    E = np.full(C, int(e_base), np.int64) + (clamp_exp(e_ch) if e_ch is not None else 0)
    mags = np.abs(acc).max(axis=(0, 2)) if acc.size else np.zeros(C, np.int64)
    e_out = max(bitlen(int(m)) + int(E[c]) - 7 for c, m in enumerate(mags))
    y = np.empty(acc.shape, np.int8)
    for c in range(C):
        y[:, c, :] = sat8(rshift_round(acc[:, c, :], e_out - int(E[c])))
    return y, e_out


def bias_at(b, e_b: int, E) -> np.ndarray:
    """Bias codes moved to accumulator exponents E (per channel), clamped to ±BIAS_LIMIT."""
    b = np.asarray(b, np.int64)
    out = np.array([rshift_round(b[c], int(E[c]) - int(e_b)) for c in range(b.size)], np.int64)
    return np.clip(out, -BIAS_LIMIT, BIAS_LIMIT)


def weight_exp_lo(e_w) -> int:
    """The exponent the backward passes fold the weights to: max(min e_w, max e_w - SPREAD)."""
    e = clamp_exp(e_w)
    return int(max(e.min(), e.max() - SPREAD))


def folded_shifts(e_w) -> np.ndarray:
    """Per output channel, the shift d = clamp(e_w - e_lo, 0, SPREAD) folded into dy."""
    return np.clip(clamp_exp(e_w) - weight_exp_lo(e_w), 0, SPREAD)


# -- LINEAR_Q8 -------------------------------------------------------------------------------

def linear_fw(x, e_x, w, e_w, b=None, e_b=0) -> tuple[np.ndarray, int]:
    """y [rows, M] codes and exponent of y = x Wᵀ + b (x [rows, K] int8, W [M, K])."""
    x = np.asarray(x, np.int64)
    w = np.asarray(w, np.int64)
    e_x = int(clamp_exp(e_x))
    E = e_x + clamp_exp(e_w)
    acc = x @ w.T
    if b is not None:
        acc = acc + bias_at(b, int(clamp_exp(e_b)), E)[None, :]
    y, e = requant(acc[:, :, None], e_x, e_w)
    return y[:, :, 0], e


def linear_bw_input(dy, e_dy, w, e_w) -> tuple[np.ndarray, int]:
    """dx [rows, K] codes and exponent of dx = dy W, the per-channel weight exponents
    folded into dy as shifts (exact while their spread is ≤ SPREAD)."""
    d = folded_shifts(e_w)
    dys = np.asarray(dy, np.int64) << d[None, :]
    acc = dys @ np.asarray(w, np.int64)
    y, e = requant(acc.reshape(-1, 1, 1), int(clamp_exp(e_dy)) + weight_exp_lo(e_w))
    return y.reshape(acc.shape), e


def linear_bw_param(dy, e_dy, x, e_x):
    """(dW int sums [M, K], db int sums [M], (e_dW, e_db)) of dW = dyᵀ x, db = Σ dy."""
    dy = np.asarray(dy, np.int64)
    dw = dy.T @ np.asarray(x, np.int64)
    db = dy.sum(axis=0)
    e_dy = int(clamp_exp(e_dy))
    return dw, db, (e_dy + int(clamp_exp(e_x)), e_dy)


#: the int8 layer functions with a scratch (BW_PARAM: f32 gradients for master weights, or
#: int32 sums for SGD_Q8)
SCRATCH_FNS = ("fw", "bw_input", "bw_param")


def linear_scratch_bytes(fn: str, rows: int, M: int, K: int, sample_rows: int | None = None) -> int:
    """Scratch bytes LINEAR_Q8's fn needs for `rows` = max_batch × rows per sample
    (fn: "fw", "bw_input", "bw_param"). BW_PARAM sums into dW itself, f32 or int32 alike
    (4 bytes a weight either way), so its scratch holds only the widened operands.
    sample_rows (the rows of one sample) for per-sample sums (iattr[0], fw and
    bw_input): one sample's int32 sums and operands, plus fw's M magnitudes."""
    Kp, Mp, Rp = K + K % 2, M + M % 2, rows + rows % 2
    per_sample = sample_rows is not None and fn != "bw_param"
    if per_sample:
        rows = sample_rows
    return {"fw": 4 * rows * M + (4 * M if per_sample else 0) + 2 * rows * Kp + 2 * M * Kp,
            "bw_input": 4 * rows * K + 2 * rows * Mp + 2 * K * Mp,
            "bw_param": 2 * M * Rp + 2 * K * Rp}[fn]


# -- CONV2D_Q8 -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConvGeom:
    """nn.Conv2d geometry with per-side padding (top, bottom, left, right)."""

    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def out_shape(self, h: int, w: int, kh: int, kw: int) -> tuple[int, int]:
        t, b, l, r = self.pad
        return ((h + t + b - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1,
                (w + l + r - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1)

    @property
    def iattrs(self) -> tuple[int, ...]:
        return (*self.stride, *self.pad, *self.dilation, self.groups)


def _taps(g: ConvGeom, kh: int, kw: int, ho: int, wo: int):
    """For each tap (ki, kj): the strided slices of the padded input it reads."""
    (sh, sw), (dh, dw) = g.stride, g.dilation
    for ki in range(kh):
        for kj in range(kw):
            yield ki, kj, (slice(ki * dh, ki * dh + sh * (ho - 1) + 1, sh),
                           slice(kj * dw, kj * dw + sw * (wo - 1) + 1, sw))


def _padded(x, g: ConvGeom) -> np.ndarray:
    t, b, l, r = g.pad
    return np.pad(np.asarray(x, np.int64), ((0, 0), (0, 0), (t, b), (l, r)))


def conv_acc_fw(x, w, g: ConvGeom) -> np.ndarray:
    """Σ over taps of x·W as int64: x [n, Ci, H, W], w [Co, Ci/G, kh, kw] → [n, Co, Ho, Wo]."""
    x = np.asarray(x, np.int64)
    n, ci, h, wd = x.shape
    co, cig, kh, kw = w.shape
    G = g.groups
    ho, wo = g.out_shape(h, wd, kh, kw)
    xp = _padded(x, g)
    wg = np.asarray(w, np.int64).reshape(G, co // G, cig, kh, kw)
    acc = np.zeros((n, G, co // G, ho, wo), np.int64)
    for ki, kj, (si, sj) in _taps(g, kh, kw, ho, wo):
        xt = xp[:, :, si, sj].reshape(n, G, cig, ho, wo)
        acc += np.einsum("ngchw,goc->ngohw", xt, wg[:, :, :, ki, kj])
    return acc.reshape(n, co, ho, wo)


def conv_fw(x, e_x, w, e_w, g: ConvGeom, b=None, e_b=0) -> tuple[np.ndarray, int]:
    acc = conv_acc_fw(x, w, g)
    e_x = int(clamp_exp(e_x))
    if b is not None:
        acc = acc + bias_at(b, int(clamp_exp(e_b)), e_x + clamp_exp(e_w))[None, :, None, None]
    n, co, ho, wo = acc.shape
    y, e = requant(acc.reshape(n, co, ho * wo), e_x, e_w)
    return y.reshape(acc.shape), e


def conv_bw_input(dy, e_dy, w, e_w, x_shape, g: ConvGeom) -> tuple[np.ndarray, int]:
    n, ci, h, wd = x_shape
    co, cig, kh, kw = w.shape
    G = g.groups
    _, _, ho, wo = dy.shape
    dys = (np.asarray(dy, np.int64) << folded_shifts(e_w)[None, :, None, None]).reshape(n, G, co // G, ho, wo)
    wg = np.asarray(w, np.int64).reshape(G, co // G, cig, kh, kw)
    t, b, l, r = g.pad
    dxp = np.zeros((n, G, cig, h + t + b, wd + l + r), np.int64)
    for ki, kj, (si, sj) in _taps(g, kh, kw, ho, wo):
        dxp[:, :, :, si, sj] += np.einsum("ngohw,goc->ngchw", dys, wg[:, :, :, ki, kj])
    acc = dxp[:, :, :, t:t + h, l:l + wd].reshape(n, ci, h, wd)
    y, e = requant(acc.reshape(-1, 1, 1), int(clamp_exp(e_dy)) + weight_exp_lo(e_w))
    return y.reshape(acc.shape), e


def conv_bw_param(dy, e_dy, x, e_x, w_shape, g: ConvGeom):
    """(dW int sums, db int sums, (e_dW, e_db))."""
    x = np.asarray(x, np.int64)
    n, ci, h, wd = x.shape
    co, cig, kh, kw = w_shape
    G = g.groups
    _, _, ho, wo = dy.shape
    dyg = np.asarray(dy, np.int64).reshape(n, G, co // G, ho, wo)
    xp = _padded(x, g)
    dw = np.zeros((G, co // G, cig, kh, kw), np.int64)
    for ki, kj, (si, sj) in _taps(g, kh, kw, ho, wo):
        xt = xp[:, :, si, sj].reshape(n, G, cig, ho, wo)
        dw[:, :, :, ki, kj] = np.einsum("ngohw,ngchw->goc", dyg, xt)
    e_dy = int(clamp_exp(e_dy))
    return dw.reshape(w_shape), np.asarray(dy, np.int64).sum(axis=(0, 2, 3)), (e_dy + int(clamp_exp(e_x)), e_dy)


def conv_scratch_bytes(fn: str, n: int, x_chw, w_shape, g: ConvGeom, per_sample: bool = False) -> int:
    """Scratch bytes CONV2D_Q8's fn needs for n = max_batch (fn as linear_scratch_bytes).
    per_sample (iattr[9], fw and bw_input): int32 sums for one sample instead of the batch
    (the kernel makes them twice), plus fw's C_out magnitudes."""
    ci, h, wd = x_chw
    co, cig, kh, kw = w_shape
    G = g.groups
    cog = co // G
    ho, wo = g.out_shape(h, wd, kh, kw)
    J = cig * kh * kw
    Jp, COgp = J + J % 2, cog + cog % 2
    rows = max(1, min(CONV_CHUNK // wo, ho))
    CHP = rows * wo
    CHPp = CHP + CHP % 2
    # fw and bw_param also hold the int8 tap-major im2col chunk (J * CHP bytes)
    if per_sample and fn != "bw_param":
        n = 1
    return {"fw": 4 * n * co * ho * wo + (4 * co if per_sample else 0) + 2 * co * Jp + 2 * CHP * Jp + J * CHP,
            "bw_input": 4 * n * ci * h * wd + 2 * G * J * COgp + 2 * CHP * COgp + 4 * CHP * J,
            "bw_param": 2 * cog * CHPp + 2 * J * CHPp + J * CHP}[fn]


# -- element-wise ------------------------------------------------------------------------------

def relu_fw(x, e_x) -> tuple[np.ndarray, int]:
    return np.maximum(np.asarray(x, np.int8), 0).astype(np.int8), int(e_x)


def relu_bw(dy, e_dy, y) -> tuple[np.ndarray, int]:
    return np.where(np.asarray(y, np.int8) > 0, dy, 0).astype(np.int8), int(e_dy)


# -- weight updates ----------------------------------------------------------------------------

def xorshift32(state: int, count: int) -> tuple[np.ndarray, int]:
    """count successive xorshift32 (13, 17, 5) outputs from state, and the new state."""
    x = int(state) & 0xFFFFFFFF or XORSHIFT_ZERO_SEED
    out = np.empty(count, np.uint32)
    for i in range(count):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out[i] = x
    return out, x


def lr_fixed(lr: float) -> tuple[int, int]:
    """(lr_q, lr_shift) with lr ≈ lr_q · 2^-lr_shift, lr_q in [2^15, 2^16) (16 significant bits)."""
    if not 0 < lr < 2**15:
        raise ValueError(f"int8 SGD learning rate {lr} outside (0, 32768)")
    shift = 15 - int(np.floor(np.log2(lr)))
    q = int(round(lr * 2.0**shift))
    if q >= 1 << 16:
        q, shift = q // 2, shift - 1
    if shift > 62:
        raise ValueError(f"int8 SGD learning rate {lr} too small for a 62-bit shift")
    if shift < 0:
        q, shift = q << -shift, 0
    return q, shift


def sgd_q8(p, g, e_g: int, e_p, lr_q: int, lr_shift: int, rng: int) -> tuple[np.ndarray, int]:
    """SGD_Q8 on int8 (or int32) parameter codes p with int32 gradient sums g at
    exponent e_g: returns (new p, new rng state). Element i uses e_p[i // (size / len(e_p))]."""
    p = np.asarray(p)
    g = np.asarray(g, np.int64).ravel()
    e_p = clamp_exp(np.atleast_1d(e_p))
    per = g.size // e_p.size
    s = np.minimum(int(lr_shift) + np.repeat(e_p, per) - int(clamp_exp(e_g)), 62)
    v = g * int(lr_q)
    u, state = xorshift32(rng, g.size)
    u = u.astype(np.int64)
    d = np.zeros_like(v)
    pos = s > 0
    sp = np.where(pos, s, 1)
    fl = v >> sp
    frac = v - (fl << sp)
    up_small = (u >> np.clip(32 - sp, 0, 31)) < frac
    up_big = u < (frac >> np.clip(sp - 32, 0, 62))
    up = np.where(sp <= 32, up_small, up_big)
    d = np.where(pos, fl + up, d)
    ls = np.where(pos, 0, -s)
    lim = np.int64(1) << 62
    bound = np.int64(1) << np.clip(62 - ls, 0, 62)
    with np.errstate(over="ignore"):
        shifted = v << np.clip(ls, 0, 62)
    left = np.where(v >= bound, lim, np.where(v <= -bound, -lim, shifted))
    left = np.where(ls > 62, np.sign(v) * lim, left)
    d = np.where(pos, d, left)
    if p.dtype == np.int8:
        out = np.clip(p.astype(np.int64).ravel() - d, -127, 127).astype(np.int8)
    else:
        out = np.clip(p.astype(np.int64).ravel() - d, -INT32_MAX, INT32_MAX).astype(np.int32)
    return out.reshape(p.shape), state


# -- post-training quantisation ------------------------------------------------------------------

#: bits of headroom of weights whose codes train in place (SGD_Q8 keeps their exponents): the
#: weights may grow 4x before saturating, at 5 significant bits to start with. Measured on the
#: digits MLP from random weights (3 epochs, tests/test_int8_training.py, fp32 95.3 %):
#: headroom 1 → 87.2 %, 2 → 93.9 %, 3 → 94.7 %; 2 keeps more resolution for fine-tuning.
SR_HEADROOM = 2


def quantize_weights(w, spread: int = SPREAD, headroom: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel int8 codes of f32 weights w [C, ...] and their exponents
    (REQUANT_WEIGHTS, headroom 0): e_c from the channel's max |w|, raised to max e -
    spread, plus `headroom` bits. Int8-weight training (SGD_Q8) keeps the exponents
    fixed, so it starts from SR_HEADROOM."""
    w = np.asarray(w, np.float32)
    C = w.shape[0]
    flat = w.reshape(C, -1)
    e = np.array([exp_for_maxabs(absmax(flat[c])) for c in range(C)], np.int64)
    e = np.maximum(e, e.max() - spread) + headroom
    q = np.stack([quantize_with(flat[c], int(e[c])) for c in range(C)])
    return q.reshape(w.shape), e.astype(np.int32)


def quantize_bias(b, e_b: int) -> np.ndarray:
    """int32 bias codes rint(b · 2^-e_b), e_b clamped to [-126, 126], saturated, NaN → 0."""
    e = int(np.clip(e_b, -126, 126))
    b = np.asarray(b, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.rint(b * pow2f(-e))
    v = np.where(np.isnan(v), 0.0, v).astype(np.float64)
    return np.clip(v, -INT32_MAX, INT32_MAX).astype(np.int32)


def bias_exponent(b) -> int:
    """Exponent for int32 bias codes: 30 bits below the largest |b| but no coarser than
    2^-20 (room for the bias to grow to ±2^11 during training)."""
    a = absmax(b)
    E = exp_for_maxabs(a) + 7  # a < 2^E
    return int(max(E - 30, -20))


def activation_exponent(calibration) -> int:
    """The exponent QUANTIZE would pick for the calibration activations as one tensor."""
    return exp_for_maxabs(absmax(calibration))


@dataclass
class QuantizedLayer:
    """A layer's post-training-quantised parameters, as LINEAR_Q8 / CONV2D_Q8 take them."""

    w: np.ndarray      # int8 codes [C_out, ...]
    e_w: np.ndarray    # int32 [C_out]
    b: np.ndarray      # int32 codes [C_out]
    e_b: int
    e_x: int           # initial (calibration) exponent of the layer's input

    def dequantized(self) -> tuple[np.ndarray, np.ndarray]:
        shape = (-1,) + (1,) * (self.w.ndim - 1)
        w = self.w.astype(np.float32) * np.array([pow2f(int(e)) for e in self.e_w], np.float32).reshape(shape)
        return w, self.b.astype(np.float64) * 2.0 ** self.e_b


def ptq_layer(w, b, calibration_input, spread: int = SPREAD, headroom: int = 0) -> QuantizedLayer:
    """Post-training quantisation of one layer from its fp32 weights and the
    activations it sees on the calibration set (headroom: see quantize_weights; 1
    for layers trained with SGD_Q8, 0 for frozen ones and fp32-master training)."""
    q, e = quantize_weights(w, spread, headroom)
    b = np.zeros(np.asarray(w).shape[0], np.float32) if b is None else np.asarray(b, np.float32)
    e_b = bias_exponent(b)
    return QuantizedLayer(q, e, quantize_bias(b, e_b), e_b, activation_exponent(calibration_input))
