/*
 * ep_q8_core.c — the shared int8 rules of ep_q8.h: the int16 inner product (SMLAD
 * or plain C), requantisation, the float boundaries and the integer SGD step.
 */
#include <math.h>
#include <string.h>

#include "ep_q8.h"

#if defined(__ARM_FEATURE_DSP) && !defined(EP_Q8_PORTABLE)
#include <arm_acle.h>
#define EP_Q8_SIMD 1
#else
#define EP_Q8_SIMD 0
#endif

/* ---- the inner product ------------------------------------------------------ */

#if EP_Q8_SIMD
/* Two int16 lanes of a row, read as one word (rows are 4-aligned, t even). */
static inline int16x2_t pair(const int16_t *p, uint32_t t) {
    int16x2_t v;
    memcpy(&v, p + t, sizeof v);
    return v;
}
#define MAC(acc, x, y) ((acc) = __smlad((x), (y), (acc)))
#else
/* Portable: the same sums, one product per lane. */
#define MAC2(acc, pa, pb, t) ((acc) += (int32_t)(pa)[t] * (pb)[t] + (int32_t)(pa)[(t) + 1] * (pb)[(t) + 1])
#endif

/* One output: Σ_t a[t] b[t]. */
static int32_t dot1(uint32_t T, const int16_t *restrict a, const int16_t *restrict b) {
    int32_t s = 0;
#if EP_Q8_SIMD
    for (uint32_t t = 0; t < T; t += 2) {
        MAC(s, pair(a, t), pair(b, t));
    }
#else
    for (uint32_t t = 0; t < T; t += 2) {
        MAC2(s, a, b, t);
    }
#endif
    return s;
}

#if EP_Q8_SIMD
/*
 * SMLAD tiles of 2 rows × 2 columns: each step of two t loads 4 words (post-
 * incremented pointers) and runs 4 SMLADs (8 MACs): 10 instructions with the loop test; 4 accumulators, 4 pointers, an
 * end pointer and 4 operands fit the M4's 13 free registers without spilling.
 */
static inline void tile2x2(uint32_t T, const int16_t *pa0, const int16_t *pa1, const int16_t *pb0,
                           const int16_t *pb1, int32_t *c0, int32_t *c1) {
    int32_t s00 = 0, s01 = 0, s10 = 0, s11 = 0;
    const int16_t *end = pa0 + T;
    while (pa0 < end) {
        const int16x2_t x0 = pair(pa0, 0), x1 = pair(pa1, 0), w0 = pair(pb0, 0), w1 = pair(pb1, 0);
        pa0 += 2;
        pa1 += 2;
        pb0 += 2;
        pb1 += 2;
        MAC(s00, x0, w0);
        MAC(s01, x0, w1);
        MAC(s10, x1, w0);
        MAC(s11, x1, w1);
    }
    c0[0] += s00;
    c0[1] += s01;
    c1[0] += s10;
    c1[1] += s11;
}

void ep_q8_dot_s16(uint32_t R, uint32_t Q, uint32_t T, const int16_t *restrict a, const int16_t *restrict b,
                   int32_t *restrict c, uint32_t ldc) {
    uint32_t r = 0;
    for (; r + 2 <= R; r += 2) {
        const int16_t *a0 = a + r * T, *a1 = a0 + T;
        int32_t *c0 = c + r * ldc, *c1 = c0 + ldc;
        uint32_t q = 0;
        for (; q + 2 <= Q; q += 2) {
            tile2x2(T, a0, a1, b + q * T, b + (q + 1) * T, c0 + q, c1 + q);
        }
        if (q < Q) {
            c0[q] += dot1(T, a0, b + q * T);
            c1[q] += dot1(T, a1, b + q * T);
        }
    }
    if (r < R) {
        const int16_t *ar = a + r * T;
        int32_t *cr = c + r * ldc;
        for (uint32_t q = 0; q < Q; q++) {
            cr[q] += dot1(T, ar, b + q * T);
        }
    }
}
#else
/* Portable: tiles of 4 rows × 2 columns of plain int32 multiply-adds. */
void ep_q8_dot_s16(uint32_t R, uint32_t Q, uint32_t T, const int16_t *restrict a, const int16_t *restrict b,
                   int32_t *restrict c, uint32_t ldc) {
    uint32_t r = 0;
    for (; r + 4 <= R; r += 4) {
        const int16_t *a0 = a + r * T, *a1 = a0 + T, *a2 = a1 + T, *a3 = a2 + T;
        int32_t *c0 = c + r * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
        uint32_t q = 0;
        for (; q + 2 <= Q; q += 2) {
            const int16_t *b0 = b + q * T, *b1 = b0 + T;
            int32_t s00 = 0, s01 = 0, s10 = 0, s11 = 0, s20 = 0, s21 = 0, s30 = 0, s31 = 0;
            for (uint32_t t = 0; t < T; t += 2) {
                MAC2(s00, a0, b0, t); MAC2(s01, a0, b1, t);
                MAC2(s10, a1, b0, t); MAC2(s11, a1, b1, t);
                MAC2(s20, a2, b0, t); MAC2(s21, a2, b1, t);
                MAC2(s30, a3, b0, t); MAC2(s31, a3, b1, t);
            }
            c0[q] += s00; c0[q + 1] += s01;
            c1[q] += s10; c1[q + 1] += s11;
            c2[q] += s20; c2[q + 1] += s21;
            c3[q] += s30; c3[q + 1] += s31;
        }
        for (; q < Q; q++) {
            const int16_t *b0 = b + q * T;
            c0[q] += dot1(T, a0, b0);
            c1[q] += dot1(T, a1, b0);
            c2[q] += dot1(T, a2, b0);
            c3[q] += dot1(T, a3, b0);
        }
    }
    for (; r < R; r++) {
        const int16_t *ar = a + r * T;
        int32_t *cr = c + r * ldc;
        for (uint32_t q = 0; q < Q; q++) {
            cr[q] += dot1(T, ar, b + q * T);
        }
    }
}
#endif

/* ---- packing ---------------------------------------------------------------------- */

void ep_q8_pack(const int8_t *restrict src, uint32_t I, uint32_t J, uint32_t si, uint32_t sj,
                const int32_t *restrict e_j, int32_t e_lo, int16_t *restrict dst, uint32_t Jp) {
    for (uint32_t i = 0; i < I; i++) {
        const int8_t *s = src + i * si;
        int16_t *d = dst + i * Jp;
        if (e_j == NULL && sj == 1) {
            for (uint32_t j = 0; j < J; j++) {
                d[j] = s[j];
            }
        } else if (e_j == NULL) {
            for (uint32_t j = 0, o = 0; j < J; j++, o += sj) {
                d[j] = s[o];
            }
        } else {
            for (uint32_t j = 0, o = 0; j < J; j++, o += sj) {
                int32_t sh = ep_q8_exp(e_j[j]) - e_lo;
                sh = sh < 0 ? 0 : (sh > EP_Q8_SPREAD ? EP_Q8_SPREAD : sh);
                d[j] = (int16_t)(s[o] * (1 << sh));
            }
        }
        for (uint32_t j = J; j < Jp; j++) {
            d[j] = 0;
        }
    }
}

int32_t ep_q8_weight_exp_lo(const int32_t *e_w, uint32_t n) {
    int32_t lo = INT32_MAX, hi = INT32_MIN;
    for (uint32_t i = 0; i < n; i++) {
        const int32_t e = ep_q8_exp(e_w[i]);
        lo = e < lo ? e : lo;
        hi = e > hi ? e : hi;
    }
    return lo > hi - EP_Q8_SPREAD ? lo : hi - EP_Q8_SPREAD;
}

/* ---- requantisation ------------------------------------------------------------ */

int32_t ep_q8_requant(const int32_t *restrict acc, uint32_t outer, uint32_t C, uint32_t inner, int32_t e_base,
                      const int32_t *restrict e_ch, int8_t *restrict y) {
    int32_t e_out = INT32_MIN;
    for (uint32_t c = 0; c < C; c++) {
        uint32_t mag = 0;
        for (uint32_t o = 0; o < outer; o++) {
            const int32_t *p = acc + (o * C + c) * inner;
            for (uint32_t i = 0; i < inner; i++) {
                const uint32_t m = p[i] < 0 ? 0u - (uint32_t)p[i] : (uint32_t)p[i];
                mag = m > mag ? m : mag;
            }
        }
        const int32_t e = ep_q8_bitlen(mag) + e_base + (e_ch ? ep_q8_exp(e_ch[c]) : 0) - 7;
        e_out = e > e_out ? e : e_out;
    }
    for (uint32_t c = 0; c < C; c++) {
        const int32_t s = e_out - (e_base + (e_ch ? ep_q8_exp(e_ch[c]) : 0));
        for (uint32_t o = 0; o < outer; o++) {
            const uint32_t base = (o * C + c) * inner;
            for (uint32_t i = 0; i < inner; i++) {
                y[base + i] = ep_q8_sat8(ep_q8_rshift_round(acc[base + i], s));
            }
        }
    }
    return e_out;
}

/* ---- float boundaries ------------------------------------------------------------ */

int32_t ep_q8_exp_for_maxabs(float a) {
    uint32_t bits;
    memcpy(&bits, &a, sizeof bits);
    const uint32_t biased = (bits >> 23) & 0xFFu;
    int32_t E;
    if (biased == 0xFFu) {
        E = (bits & 0x7FFFFFu) ? -125 : 128; /* NaN : inf */
    } else if (biased == 0) {
        E = -125; /* 0 and subnormals */
    } else {
        E = (int32_t)biased - 126;
    }
    const int32_t e = E - 7;
    return e < EP_Q8_FEXP_MIN ? EP_Q8_FEXP_MIN : (e > EP_Q8_FEXP_MAX ? EP_Q8_FEXP_MAX : e);
}

int8_t ep_q8_quantize1(float x, int32_t e) {
    if (x != x) {
        return 0;
    }
    const float v = rintf(x * ep_q8_pow2f(-e));
    return (int8_t)(v >= 127.0f ? 127 : (v <= -127.0f ? -127 : (int32_t)v));
}

static float absmax_f32(uint32_t count, const float *x) {
    float m = 0.0f;
    for (uint32_t i = 0; i < count; i++) {
        const float a = fabsf(x[i]);
        m = a > m ? a : m; /* NaN never wins */
    }
    return m;
}

int32_t ep_q8_quantize_f32(uint32_t count, const float *restrict x, int8_t *restrict q) {
    const int32_t e = ep_q8_exp_for_maxabs(absmax_f32(count, x));
    for (uint32_t i = 0; i < count; i++) {
        q[i] = ep_q8_quantize1(x[i], e);
    }
    return e;
}

void ep_q8_dequantize_f32(uint32_t count, const int8_t *restrict q, int32_t e, float *restrict y) {
    e = e < EP_Q8_FEXP_MIN ? EP_Q8_FEXP_MIN : (e > EP_Q8_FEXP_MAX ? EP_Q8_FEXP_MAX : e);
    const float s = ep_q8_pow2f(e);
    for (uint32_t i = 0; i < count; i++) {
        y[i] = (float)q[i] * s;
    }
}

void ep_q8_acc_to_f32(uint32_t count, const int32_t *restrict acc, int32_t e, float *restrict y) {
    e = e < -126 ? -126 : (e > 127 ? 127 : e);
    const float s = ep_q8_pow2f(e);
    for (uint32_t i = 0; i < count; i++) {
        y[i] = (float)acc[i] * s;
    }
}

void ep_q8_quantize_weights(uint32_t C, uint32_t per, uint32_t spread, const float *restrict w,
                            int8_t *restrict q, int32_t *restrict e) {
    int32_t e_max = INT32_MIN;
    for (uint32_t c = 0; c < C; c++) {
        e[c] = ep_q8_exp_for_maxabs(absmax_f32(per, w + c * per));
        e_max = e[c] > e_max ? e[c] : e_max;
    }
    for (uint32_t c = 0; c < C; c++) {
        if (e[c] < e_max - (int32_t)spread) {
            e[c] = e_max - (int32_t)spread;
        }
        for (uint32_t i = 0; i < per; i++) {
            q[c * per + i] = ep_q8_quantize1(w[c * per + i], e[c]);
        }
    }
}

void ep_q8_quantize_bias(uint32_t count, const float *restrict b, int32_t e, int32_t *restrict q) {
    e = e < -126 ? -126 : (e > 126 ? 126 : e);
    const float s = ep_q8_pow2f(-e);
    for (uint32_t i = 0; i < count; i++) {
        if (b[i] != b[i]) {
            q[i] = 0;
            continue;
        }
        const float v = rintf(b[i] * s);
        q[i] = v >= 2147483648.0f ? INT32_MAX : (v <= -2147483648.0f ? -INT32_MAX : (int32_t)v);
    }
}

/* ---- integer SGD with stochastic rounding ----------------------------------------- */

/* floor(v / 2^s) plus a rounding-up decided by u (s in 1..62), see ep_q8_sgd. */
static int64_t sround(int64_t v, int32_t s, uint32_t u) {
    const int64_t fl = v >> s; /* arithmetic shift: floor */
    const uint64_t frac = (uint64_t)(v - fl * ((int64_t)1 << s));
    const bool up = s <= 32 ? (uint64_t)(u >> (32 - s)) < frac : (uint64_t)u < (frac >> (s - 32));
    return fl + (up ? 1 : 0);
}

void ep_q8_sgd(const ep_q8_sgd_params_t *sp, uint32_t count, const int32_t *restrict g, int32_t e_g,
               const int32_t *restrict e_p, uint32_t n_ep, int8_t *restrict p8, int32_t *restrict p32,
               uint32_t *restrict rng) {
    const uint32_t per = count / n_ep;
    for (uint32_t i = 0; i < count; i++) {
        const int64_t v = (int64_t)g[i] * (int64_t)sp->lr_q;
        int32_t s = (int32_t)sp->lr_shift + ep_q8_exp(e_p[i / per]) - ep_q8_exp(e_g);
        s = s > 62 ? 62 : s;
        const uint32_t u = ep_q8_xorshift32(rng);
        int64_t d;
        if (s > 0) {
            d = sround(v, s, u);
        } else {
            /* exact left shift, saturated to ±2^62 (beyond any parameter's range) */
            const int32_t ls = -s;
            const int64_t lim = (int64_t)1 << 62;
            if (ls > 62) {
                d = v > 0 ? lim : (v < 0 ? -lim : 0);
            } else {
                const int64_t bound = (int64_t)1 << (62 - ls);
                d = v >= bound ? lim : (v <= -bound ? -lim : v * ((int64_t)1 << ls));
            }
        }
        if (p8) {
            const int64_t nv = (int64_t)p8[i] - d;
            p8[i] = (int8_t)(nv > 127 ? 127 : (nv < -127 ? -127 : nv));
        } else {
            const int64_t nv = (int64_t)p32[i] - d;
            p32[i] = (int32_t)(nv > INT32_MAX ? INT32_MAX : (nv < -INT32_MAX ? -INT32_MAX : nv));
        }
    }
}
