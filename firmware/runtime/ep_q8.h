/*
 * ep_q8.h — the int8 training arithmetic: numbers, kernels and their exact rules.
 *
 * Every rule here has a NumPy twin in host/quant.py and the two agree bit for bit
 * (tests/test_ops_int8.py); docs/ops/int8.md explains the choices.
 *
 * Numbers
 *   An int8 tensor q with exponent e stands for the reals q · 2^e (symmetric, no
 *   zero point; codes in [-127, 127], -128 is never produced but accepted).
 *   Scales are powers of two, so every rescaling is an integer shift and C and
 *   NumPy agree without any float arithmetic in the hot paths.
 *     activations, errors   one exponent per tensor (I32 [1]), chosen at run time
 *                           from the tensor's largest magnitude (dynamic);
 *     weights               one exponent per output channel (I32 [C_out]), fixed
 *                           between REQUANT_WEIGHTS runs; the spread
 *                           max(e) - min(e) is at most EP_Q8_SPREAD (see bw_input);
 *     biases                int32 codes with one exponent (I32 [1]);
 *     accumulators          int32, exact (no overflow: every prepare() bounds the
 *                           number of terms, see EP_Q8_MAX_TERMS_*).
 *   Exponents read from tensors are clamped to [-EP_Q8_EXP_LIMIT, EP_Q8_EXP_LIMIT]
 *   first, so sums of two never overflow, whatever an untrusted blob holds.
 *
 * Requantisation (int32 accumulators → int8 with a fresh exponent)
 *   Channel c of acc has exponent E_c. The output exponent is
 *       e_out = max_c (bitlen(max |acc| over channel c) + E_c) - 7
 *   (bitlen(0) = 0), and y = sat8(rshift_round(acc, e_out - E_c)), where
 *   rshift_round(v, s) = floor((v + 2^(s-1)) / 2^s) for s > 0 (round half up),
 *   v · 2^-s saturated to int32 for s ≤ 0, and 0 for s ≥ 32; sat8 clamps to
 *   [-127, 127] (only a value rounded up to 128 ever needs it).
 *
 * Float boundaries (QUANTIZE, DEQUANTIZE, REQUANT_WEIGHTS, f32 gradients) use
 * only operations that IEEE 754 defines exactly and that C and NumPy both do in
 * single precision: a product with a power of two made from its bit pattern, rint
 * (ties to even; ep_q8_quantize_s), int ↔ float conversion, comparisons. No fused multiply-add can
 * arise (no a·b + c anywhere), so -ffp-contract does not matter.
 *
 * SIMD: on cores with the DSP extension (__ARM_FEATURE_DSP: Cortex-M4/M7/M33/M55)
 * the inner products run two 16-bit MACs per SMLAD; -DEP_Q8_PORTABLE forces the
 * plain C loops. Integer sums are exact in any order, so both give the same bits.
 */
#ifndef EP_Q8_H
#define EP_Q8_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "ep_ops.h"
#include "ep_parallel.h"

/** Exponents read from tensors are clamped to ± this before any arithmetic. */
#define EP_Q8_EXP_LIMIT 4096
/** Largest weight-exponent spread the backward pass represents exactly. */
#define EP_Q8_SPREAD 4
/** Float boundary exponents: 2^e and 2^-e must both be normal floats. */
#define EP_Q8_FEXP_MIN (-126)
#define EP_Q8_FEXP_MAX 120
/** Bias codes added to an accumulator are clamped to ± this (headroom for the MACs). */
#define EP_Q8_BIAS_LIMIT (1 << 30)

/*
 * Largest number of products summed into one int32 (checked by prepare()):
 *   fw       |x|,|w| ≤ 128: T · 2^14 + 2^30 (bias) < 2^31
 *   bw_input |dy · 2^spread| ≤ 2^11, |w| ≤ 128: T · 2^18 < 2^31
 *   bw_param |dy|, |x| ≤ 128: T · 2^14 < 2^31 (T = samples × positions)
 */
#define EP_Q8_MAX_TERMS_FW 65535u
#define EP_Q8_MAX_TERMS_BW_INPUT 8191u
#define EP_Q8_MAX_TERMS_BW_PARAM 131071u

/** Output positions per im2col chunk of the conv kernels (scratch size, see docs). */
#define EP_Q8_CONV_CHUNK 128u

/* ------------------------------------------------------------------------- */
/* Scalar rules                                                              */
/* ------------------------------------------------------------------------- */

/** An exponent read from a tensor, clamped to [-EP_Q8_EXP_LIMIT, EP_Q8_EXP_LIMIT]. */
static inline int32_t ep_q8_exp(int32_t e) {
    return e < -EP_Q8_EXP_LIMIT ? -EP_Q8_EXP_LIMIT : (e > EP_Q8_EXP_LIMIT ? EP_Q8_EXP_LIMIT : e);
}

/** rshift_round of the header comment. */
static inline int32_t ep_q8_rshift_round(int32_t v, int32_t s) {
    if (s >= 32) {
        return 0;
    }
    if (s > 0) {
        return (int32_t)(((int64_t)v + ((int64_t)1 << (s - 1))) >> s);
    }
    if (s == 0 || v == 0) {
        return v;
    }
    if (s <= -31) {
        return v > 0 ? INT32_MAX : INT32_MIN;
    }
    const int64_t w = (int64_t)v * ((int64_t)1 << -s);
    return w > INT32_MAX ? INT32_MAX : (w < INT32_MIN ? INT32_MIN : (int32_t)w);
}

/** A bias code b (exponent e_b) moved to an accumulator of exponent E, clamped to ±EP_Q8_BIAS_LIMIT. */
static inline int32_t ep_q8_bias_at(int32_t b, int32_t e_b, int32_t E) {
    const int32_t v = ep_q8_rshift_round(b, E - e_b);
    return v > EP_Q8_BIAS_LIMIT ? EP_Q8_BIAS_LIMIT : (v < -EP_Q8_BIAS_LIMIT ? -EP_Q8_BIAS_LIMIT : v);
}

static inline int8_t ep_q8_sat8(int32_t v) {
    return (int8_t)(v > 127 ? 127 : (v < -127 ? -127 : v));
}

/** Number of bits of |v| (0 for 0, 32 for INT32_MIN). */
static inline int32_t ep_q8_bitlen(uint32_t mag) {
    int32_t n = 0;
    while (mag != 0) {
        n++;
        mag >>= 1;
    }
    return n;
}

/** 2^e as a float, e in [-126, 127], built from its bit pattern (exact). */
static inline float ep_q8_pow2f(int32_t e) {
    union {
        uint32_t u;
        float f;
    } b = {.u = (uint32_t)(e + 127) << 23};
    return b.f;
}

/** The factor DEQUANTIZE multiplies codes by: 2^clamp(e, EP_Q8_FEXP_MIN, EP_Q8_FEXP_MAX). */
static inline float ep_q8_dequant_scale(int32_t e) {
    return ep_q8_pow2f(e < EP_Q8_FEXP_MIN ? EP_Q8_FEXP_MIN : (e > EP_Q8_FEXP_MAX ? EP_Q8_FEXP_MAX : e));
}

/**
 * Exponent for int8 codes of reals whose largest magnitude is a (a ≥ 0 or NaN):
 * with a = m · 2^E, m in [0.5, 1), e = clamp(E - 7, EP_Q8_FEXP_MIN, EP_Q8_FEXP_MAX);
 * 0, subnormal and NaN count as 2^-126 (E = -125), +inf as E = 128.
 */
int32_t ep_q8_exp_for_maxabs(float a);

/**
 * sat8(rint(x · s)) with NaN → 0, for s = 2^-e (ep_q8_quant_scale). Inline in the
 * two-pass loops, no libm call (Cortex-M4F has no VRINT):
 *   - on Arm cores with a single-precision FPU, VCVTR: float to int32 in the FPSCR's
 *     rounding mode (round to nearest, ties to even: the reset value, which nothing here
 *     changes), saturating, NaN → 0; then SSAT and the −127 clamp: 5–6 instructions.
 *   - elsewhere (and with -DEP_Q8_PORTABLE, which the tests compare against), the 1.5·2^23
 *     addition: IEEE single precision rounds the sum to an integer, ties to even, exactly
 *     as rintf, for |v| ≤ 2^22; v is first clamped to ±128, which saturates the same.
 */
static inline int8_t ep_q8_quantize_s(float x, float s) {
    float v = x * s;
#if defined(__ARM_FP) && (__ARM_FP & 4) && defined(__thumb2__) && !defined(EP_Q8_PORTABLE)
    int32_t r;
    __asm__("vcvtr.s32.f32 %1, %1\n\tvmov %0, %1\n\tssat %0, #8, %0" : "=r"(r), "+t"(v));
    return (int8_t)(r < -127 ? -127 : r);
#else
    if (v != v) {
        return 0;
    }
    v = v > 128.0f ? 128.0f : (v < -128.0f ? -128.0f : v);
    const int32_t r = (int32_t)((v + 12582912.0f) - 12582912.0f);
    return (int8_t)(r > 127 ? 127 : (r < -127 ? -127 : r));
#endif
}

/** The factor ep_q8_quantize_s takes for exponent e in [EP_Q8_FEXP_MIN, EP_Q8_FEXP_MAX]: 2^-e. */
static inline float ep_q8_quant_scale(int32_t e) {
    return ep_q8_pow2f(-e);
}

/** k with s · qs = 2^k exactly, 0 ≤ k ≤ 7, else -1: codes at scale s (2^e) re-expressed at
 * qs (2^-e') by a left shift of k, exact, where an int8 form's output exponent fell
 * below its input's (its outputs are some of its input codes, or 0). */
static inline int32_t ep_q8_code_shift(float s, float qs) {
    const float f = s * qs;
    for (int32_t k = 0; k < 8; k++) {
        if (f == (float)(1u << k)) {
            return k;
        }
    }
    return -1;
}

/** sat8(rint(x · 2^-e)) with NaN → 0; e in [EP_Q8_FEXP_MIN, EP_Q8_FEXP_MAX]. */
static inline int8_t ep_q8_quantize1(float x, int32_t e) {
    return ep_q8_quantize_s(x, ep_q8_quant_scale(e));
}

/* ------------------------------------------------------------------------- */
/* Kernels                                                                   */
/* ------------------------------------------------------------------------- */

/*
 * Packed operands of ep_q8_dot_s16. Both are int16 widened from int8 codes, with
 * the contraction index t (length T, even; 0 beyond the real length) stored at
 * ep_q8_kpos(t, T): inside every complete group of four the pairs are (t0, t2),
 * (t1, t3), which is what SXTB16 and SXTB16 ROR 8 make of one word of four int8,
 * so contiguous int8 widens four at a time with no shuffling. Both operands use the
 * same order, so every pair of lanes still multiplies matching t and the sums are
 * unchanged.
 *   B ("rows")    [Q][T] row-major (ep_q8_pack).
 *   A ("panels")  rows in panels of EP_Q8_PANEL (the last one holds R mod 4 when
 *                 that is not 0) starting at a + r0·T; inside a panel of h rows the
 *                 words (int16 pairs) of every t-pair follow each other row by row:
 *                 element (r0 + i, t) is at a[r0·T + (kpos/2)·2h + 2i + kpos%2]
 *                 (ep_q8_pack_panels). One LDM then fetches a whole panel column.
 * Both take R·T (Q·T) int16, as plain rows would.
 */
#define EP_Q8_PANEL 4u

/** Position of contraction index t in a packed row of even length T (see above). */
static inline uint32_t ep_q8_kpos(uint32_t t, uint32_t T) {
    return (t | 3u) < T ? (t & ~3u) | ((t & 1u) << 1) | ((t >> 1) & 1u) : t;
}

/**
 * The one inner product every int8 MAC runs through:
 *   c[q·ldc + r] (+)= Σ_{t < T} A(r, t) · B(q, t)   for r < R, q < Q
 * A packed as panels, B as rows (see above), T even, both 4-byte aligned; c int32,
 * 4-byte aligned, disjoint from both (a panel's 4 sums are contiguous in c: one
 * LDRD/STRD pair per tile). accumulate: add to c, else overwrite it. The caller
 * guarantees no partial sum overflows (EP_Q8_MAX_TERMS_*).
 */
void ep_q8_dot_s16(uint32_t R, uint32_t Q, uint32_t T, const int16_t *restrict a, const int16_t *restrict b,
                   int32_t *restrict c, uint32_t ldc, bool accumulate);

/** MACs a core should get before an int8 product or node splits its work over a cluster. */
#define EP_Q8_PAR_MACS 256u
/** What one element of an element-wise pass counts for, in MACs, against EP_Q8_PAR_MACS. */
#define EP_Q8_PAR_ELEM 4u
/** The largest team the int8 forms split over (partial results on the stack). */
#define EP_Q8_MAX_TEAM 16u

/** Cores for `macs` MACs of work: the whole team when each core gets EP_Q8_PAR_MACS, else 1. */
static inline uint32_t ep_q8_team_for(uint64_t macs) {
    const uint32_t cores = ep_par_num_cores();
    return cores > 1 && macs >= (uint64_t)EP_Q8_PAR_MACS * cores ? cores : 1u;
}

/**
 * ep_q8_dot_s16 forks over the cluster (GAP9), each core taking whole A panels, when
 * the product is large enough; called from the main program only. Inside a fork (a
 * node that splits its own work) the _core forms run on the calling core alone.
 */
void ep_q8_dot_s16_core(uint32_t R, uint32_t Q, uint32_t T, const int16_t *restrict a, const int16_t *restrict b,
                        int32_t *restrict c, uint32_t ldc, bool accumulate);

/**
 * Direct 2-D correlation over int16, for the depthwise convs (one input channel per
 * group: no im2col, every input widened once):
 *   out[a·ldo + b] += Σ_{u < U} Σ_{v < V} k[u·V + v] · in[(a·sa + u·su)·ldi + b·sb + v·sv]
 * for a < A, b < B; V even (a kernel row padded with zero taps, whose plane elements
 * must still be readable). Taps v, v + 1 go through one SMLAD with SIMD, and when
 * sv = 1 the plane's pair is one LDR. The caller bounds the sums (EP_Q8_MAX_TERMS_*) and
 * splits the work over a cluster (it does not fork).
 */
void ep_q8_corr_s16(const int16_t *restrict in, uint32_t ldi, uint32_t A, uint32_t B, uint32_t sa, uint32_t sb,
                    const int16_t *restrict k, uint32_t U, uint32_t V, uint32_t su, uint32_t sv,
                    int32_t *restrict out, uint32_t ldo);

/**
 * Widen int8 to the B rows of ep_q8_dot_s16, with a stride for each axis:
 *   B(i, j) = src[i·si + j·sj] · 2^d_j   (j < J),   0 for J ≤ j < Jp
 * stored at dst[i·Jp + ep_q8_kpos(j, Jp)]. d_j = clamp(ep_q8_exp(e_j[j]) - e_lo,
 * 0, EP_Q8_SPREAD), or 0 when e_j is NULL (the per-channel weight exponents folded
 * into dy by the backward passes).
 */
void ep_q8_pack(const int8_t *restrict src, uint32_t I, uint32_t J, uint32_t si, uint32_t sj,
                const int32_t *restrict e_j, int32_t e_lo, int16_t *restrict dst, uint32_t Jp);

/** p[0..n) = v, four stores per step (the sums' bias or zero before a conv's products). */
static inline void ep_q8_fill32(int32_t *p, int32_t v, uint32_t n) {
    uint32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        p[i] = v;
        p[i + 1] = v;
        p[i + 2] = v;
        p[i + 3] = v;
    }
    for (; i < n; i++) {
        p[i] = v;
    }
}

/**
 * out[w] += Σ_{k<K} src[k·rs + w] · wk[k·ws] for w < n: K int8 rows (rs apart) times one
 * int16 weight each, into int32 sums (a conv whose kernel is one column: EEGNet's
 * spatial filter). With SIMD, two rows per SMLAD.
 */
void ep_q8_rows_mac(const int8_t *src, uint32_t rs, uint32_t K, const int16_t *wk, uint32_t ws, uint32_t n,
                    int32_t *out);

/** Σ_{i<n} a[i] over int8 (four codes per load with SIMD). */
int32_t ep_q8_sum_s8(const int8_t *a, uint32_t n);

/** Σ_{i<n} a[i]·b[i] over int8 (two per SMLAD with SIMD). */
int32_t ep_q8_dot_s8(const int8_t *a, const int8_t *b, uint32_t n);

/**
 * Widen int8 to the A panels of ep_q8_dot_s16: A(r, t) = src[r·sr + t·st] for
 * t < T, 0 for T ≤ t < Tp (Tp even), r < R. Fast with SIMD when st = 1 (rows
 * contiguous) or sr = 1 (a panel's rows contiguous: a transposed source).
 */
void ep_q8_pack_panels(const int8_t *restrict src, uint32_t R, uint32_t T, uint32_t sr, uint32_t st,
                       int16_t *restrict dst, uint32_t Tp);

/**
 * The exponent the backward passes fold weights to: e_lo = max(min e_w, max e_w -
 * EP_Q8_SPREAD) over the n clamped exponents e_w.
 */
int32_t ep_q8_weight_exp_lo(const int32_t *e_w, uint32_t n);

/**
 * Requantise acc [outer][C][inner] (channel c has exponent e_base + e_ch[c], or
 * e_base for all when e_ch is NULL) into y; returns the output exponent. See
 * "Requantisation" above. e_ch entries are clamped with ep_q8_exp() here; e_base
 * is a sum of clamped exponents.
 */
int32_t ep_q8_requant(const int32_t *restrict acc, uint32_t outer, uint32_t C, uint32_t inner, int32_t e_base,
                      const int32_t *restrict e_ch, int8_t *restrict y);

/**
 * ep_q8_requant in parts, for sums made a piece at a time (per-sample accumulators,
 * CONV2D_Q8 iattr[9]): OR the magnitudes of acc's channels into mag[C] (acc laid out
 * as in ep_q8_requant), the output exponent from all the pieces' mag, then each
 * piece's codes at that exponent. The result is ep_q8_requant's over the whole.
 */
void ep_q8_acc_mags(const int32_t *restrict acc, uint32_t outer, uint32_t C, uint32_t inner, uint32_t *restrict mag);
int32_t ep_q8_requant_exp(const uint32_t *mag, uint32_t C, int32_t e_base, const int32_t *e_ch);
void ep_q8_requant_apply(const int32_t *restrict acc, uint32_t outer, uint32_t C, uint32_t inner, int32_t e_base,
                         const int32_t *restrict e_ch, int32_t e_out, int8_t *restrict y);

/* ---- the int8 forms of f32 nodes (ep_q8_eltwise.c, ep_q8_norm.c, ep_q8_pool.c) ---- */

/** Elements per chunk: operands are dequantized into a stack buffer this long. */
#define EP_Q8_CHUNK 32u

/** The running largest magnitude m (≥ 0) after v: NaN never wins. QUANTIZE's rule. */
static inline float ep_q8_maxabs_step(float m, float v) {
    const float a = fabsf(v);
    return a > m ? a : m;
}

/**
 * The end of a chunk of f32 results f[len]: their codes at exponent e into out (a
 * two-pass node's second pass), or, with out NULL (the first), the largest magnitude
 * so far given amax. Returns amax.
 */
float ep_q8_chunk_out(const float *f, uint32_t len, int8_t *out, int32_t e, float amax);

/** Work on units [u0, u1) whose outputs no other unit writes (channels, say). */
typedef void (*ep_q8_range_fn_t)(void *arg, uint32_t u0, uint32_t u1);

/**
 * fn over [0, n) on `team` cores of a cluster (ep_q8_team_for; 1 or a port without a
 * cluster: one call on the calling core), each core a chunk of whole units of `unit`.
 * fn may find its core with ep_par_core_id() (0 on the calling core).
 */
void ep_q8_split(uint32_t n, uint32_t unit, uint32_t team, ep_q8_range_fn_t fn, void *arg);

/**
 * One pass of a two-pass int8 output over units [u0, u1) (channels, chunks of elements):
 * with e NULL, the largest magnitude of the f32 results (0 if none); else their codes at
 * exponent *e. Returns the largest magnitude (ignored in the second pass).
 */
typedef float (*ep_q8_pass_t)(void *arg, uint32_t u0, uint32_t u1, const int32_t *e);

/**
 * Run both passes over `units` and return the output exponent (ep_q8_exp_for_maxabs of the
 * largest magnitude). On a cluster, with `work` (in MACs) enough for the team, the units
 * split over the cores: each core's largest magnitude, a barrier, their max (exact in any
 * order), then each core's codes; so the bits do not depend on the core count. A pass
 * must only write its own units' outputs.
 */
int32_t ep_q8_two_pass(uint32_t units, uint64_t work, ep_q8_pass_t pass, void *arg);

/*
 * Code tables: where an int8 form's output depends on one input code (an activation; a
 * batch norm per channel), its f32 function needs computing for the 256 code values
 * only, and the largest output magnitude is the largest over the codes present.
 *   ep_q8_codes_seen  seen[256] (indexed by the code's byte) = 1 for every code of q's
 *                     runs: `runs` runs of `len` codes, `stride` apart (overwrites seen);
 *   ep_q8_code_table  for f[len], the results of codes (int8_t)(u0 + j): with seen, the
 *                     largest magnitude over the codes seen (given amax so far, returned);
 *                     with table, their codes at exponent e into table[u0 + j];
 *   ep_q8_codes_map   out = table[q] over the same runs (out may be q exactly).
 */
void ep_q8_codes_seen(const int8_t *q, uint32_t runs, uint32_t len, uint32_t stride, uint8_t *seen);
float ep_q8_code_table(const float *f, uint32_t u0, uint32_t len, const uint8_t *seen, int8_t *table, int32_t e,
                       float amax);
void ep_q8_codes_map(const int8_t *table, const int8_t *q, uint32_t runs, uint32_t len, uint32_t stride, int8_t *out);

/** QUANTIZE over count floats: returns e = ep_q8_exp_for_maxabs(max |x|), q = quantize1(x, e). */
int32_t ep_q8_quantize_f32(uint32_t count, const float *restrict x, int8_t *restrict q);

/** DEQUANTIZE: y = q · 2^clamp(e, EP_Q8_FEXP_MIN, EP_Q8_FEXP_MAX) (exact). */
void ep_q8_dequantize_f32(uint32_t count, const int8_t *restrict q, int32_t e, float *restrict y);

/** int32 sums → f32: y = float(acc) · 2^clamp(e, -126, 127) (one rounding, to nearest even).
 *  y may be acc's own memory (in place, element by element); no other overlap. */
void ep_q8_acc_to_f32(uint32_t count, const int32_t *acc, int32_t e, float *y);

/**
 * Per-channel int8 codes of f32 weights w [C][per] (REQUANT_WEIGHTS, and host
 * post-training quantisation): e_c from the channel's max |w|, raised to
 * max_c e_c - spread where lower (spread ≤ EP_Q8_SPREAD), then q = quantize1(w, e_c).
 */
void ep_q8_quantize_weights(uint32_t C, uint32_t per, uint32_t spread, const float *restrict w,
                            int8_t *restrict q, int32_t *restrict e);

/** Bias codes: q = rint(b · 2^-e), e clamped to [-126, 126], saturated to ±(2^31 - 1), NaN → 0. */
void ep_q8_quantize_bias(uint32_t count, const float *restrict b, int32_t e, int32_t *restrict q);

/** xorshift32 (Marsaglia 2003: 13, 17, 5) over *state; a zero state is first set to 0x6D2B79F5. */
static inline uint32_t ep_q8_xorshift32(uint32_t *state) {
    uint32_t x = *state ? *state : 0x6D2B79F5u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    return x;
}

/** SGD_Q8 settings: lr = lr_q · 2^-lr_shift. */
typedef struct {
    uint32_t lr_q;     /**< 1..65535 */
    uint32_t lr_shift; /**< 0..62 */
} ep_q8_sgd_params_t;

/**
 * SGD on integer parameters with stochastic rounding (QAS-scaled, see docs):
 *   v = g[i] · lr_q (int64), s = lr_shift + e_p(i) - e_g (clamped to ≤ 62),
 *   Δ = floor(v / 2^s) + [u < frac]  (s > 0; u from one xorshift32 draw per element)
 *   Δ = v · 2^-s saturated            (s ≤ 0; a draw is still taken)
 *   p[i] = clamp(p[i] - Δ, -lim, lim)
 * frac is v - floor(v / 2^s)·2^s; for s ≤ 32 the test is (u >> (32 - s)) < frac,
 * for s > 32 it is u < (frac >> (s - 32)). e_p(i) = e_p[i / (count / n_ep)].
 * p is int8 (lim 127) when p8 is non-NULL, else int32 p32 (lim 2^31 - 1).
 */
void ep_q8_sgd(const ep_q8_sgd_params_t *sp, uint32_t count, const int32_t *restrict g, int32_t e_g,
               const int32_t *restrict e_p, uint32_t n_ep, int8_t *restrict p8, int32_t *restrict p32,
               uint32_t *restrict rng);

/* ------------------------------------------------------------------------- */
/* Helpers for the int8 nodes                                                */
/* ------------------------------------------------------------------------- */

/** True if t is an unbatched I32 tensor of `elems` elements (an exponent vector). */
static inline bool ep_q8_is_exp(const ep_model_t *m, uint16_t t, uint32_t elems) {
    const ep_tensor_t *x = &m->tensors[t];
    return x->dtype == EP_DTYPE_I32 && (x->flags & EP_TF_BATCHED) == 0 && x->elems == elems;
}

/** True if t has this dtype and is batched. */
static inline bool ep_q8_is_batched(const ep_model_t *m, uint16_t t, uint8_t dtype) {
    return m->tensors[t].dtype == dtype && (m->tensors[t].flags & EP_TF_BATCHED) != 0;
}

/** True if t is an unbatched S8 scratch tensor of at least `bytes` bytes. */
static inline bool ep_q8_scratch_ok(const ep_model_t *m, uint16_t t, uint64_t bytes) {
    const ep_tensor_t *x = &m->tensors[t];
    return x->dtype == EP_DTYPE_S8 && (x->flags & (EP_TF_BATCHED | EP_TF_PARAM)) == 0 && x->elems >= bytes;
}

static inline int8_t *ep_ctx_s8(const ep_ctx_t *c, uint16_t t) {
    return (int8_t *)(void *)(c->arena + c->model->tensors[t].offset);
}

/** Elements of t in this batch (× n if batched). */
static inline uint32_t ep_q8_count(const ep_ctx_t *c, uint16_t t) {
    const ep_tensor_t *x = &c->model->tensors[t];
    return x->elems * ((x->flags & EP_TF_BATCHED) ? c->n : 1u);
}

/** DEQUANTIZE's factor for the exponent in I32 [1] tensor t. */
static inline float ep_q8_ctx_scale(const ep_ctx_t *c, uint16_t t) {
    return ep_q8_dequant_scale(ep_ctx_i32(c, t)[0]);
}

/** The clamped exponent stored in element i of I32 tensor t. */
static inline int32_t ep_q8_ctx_exp(const ep_ctx_t *c, uint16_t t, uint32_t i) {
    return ep_q8_exp(ep_ctx_i32(c, t)[i]);
}

/** Round n up to even (int16 rows of the inner product). */
static inline uint32_t ep_q8_even(uint32_t n) {
    return n + (n & 1u);
}

#endif /* EP_Q8_H */
