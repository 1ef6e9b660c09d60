/*
 * ep_q8_core.c — the shared int8 rules of ep_q8.h: the int16 inner product (SMLAD
 * panel kernel or plain C) and its packing, requantisation, the float boundaries and
 * the integer SGD step.
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
/* A word (two int16 lanes, or four int8) from any address: LDR handles unaligned. */
static inline uint32_t ld32(const void *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void st32(void *p, uint32_t v) {
    memcpy(p, &v, sizeof v);
}

/* Bytes 1 and 3 of w sign-extended to two int16 lanes (ACLE has no rotated form). */
static inline uint32_t sxtb16_ror8(uint32_t w) {
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(w));
    return r;
}

static inline uint32_t sxtb16(uint32_t w) {
    return (uint32_t)__sxtb16((int8x4_t)w);
}

/* PKHBT / PKHTB: (lo of a, lo of b) and (hi of a, hi of b); in asm, as GCC builds them
 * from masks and shifts in 2 instructions each. */
static inline uint32_t pack_lo(uint32_t a, uint32_t b) {
    uint32_t r;
    __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

static inline uint32_t pack_hi(uint32_t a, uint32_t b) {
    uint32_t r;
    __asm__("pkhtb %0, %2, %1, asr #16" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

#define MAC(acc, x, y) ((acc) = __smlad((int16x2_t)(x), (int16x2_t)(y), (acc)))

#else
#define MAC2(acc, pa, pb) ((acc) += (int32_t)(pa)[0] * (pb)[0] + (int32_t)(pa)[1] * (pb)[1])
#endif

/*
 * A panel of h < 4 rows (the last one), or any panel in the portable build: plain
 * loops over the t-pairs (SMLAD per word with SIMD, two products without).
 */
static void panel_rest(uint32_t h, uint32_t Q, uint32_t T, const int16_t *ap, const int16_t *b, int32_t *c,
                       uint32_t ldc, bool accumulate) {
    for (uint32_t q = 0; q < Q; q++) {
        const int16_t *bq = b + q * T;
        int32_t *cq = c + q * ldc;
        for (uint32_t i = 0; i < h; i++) {
            int32_t s = accumulate ? cq[i] : 0;
            const int16_t *p = ap + 2 * i;
            for (uint32_t t = 0; t < T; t += 2, p += 2 * h) {
#if EP_Q8_SIMD
                MAC(s, ld32(p), ld32(bq + t));
#else
                MAC2(s, p, bq + t);
#endif
            }
            cq[i] = s;
        }
    }
}

#if EP_Q8_SIMD
/*
 * Full panels: a 4×1 tile per (panel, B row), the whole row loop in one asm block
 * with fixed registers: sums r0-r3, A words r8-r11 (ascending for LDM), B words
 * r4 r5, pa r6, pb r7, pair count r12, c pointer lr; the rest lives in ctx[] (its
 * address pushed on the stack). r7 is saved and restored by the block itself, not
 * named as an operand: it is the Thumb frame pointer in -O0 and
 * -fno-omit-frame-pointer builds, where GCC refuses it as an asm operand.
 *   inner: per two t-pairs one LDRD (two B words) and two LDMs (two panel columns),
 *          8 SMLADs: 11 instructions for 16 MACs; 8 t-pairs per loop test (46 for
 *          64 MACs, 1.39 MAC/instruction), then pairs of t-pairs, then a single one;
 *   per B row: sums from c (2 LDRD) or zero, 2 STRD, about 14 more instructions
 *          (pb simply runs on into the next row).
 * ctx: [0] panel start, [1] t-pairs, [2] ldc in bytes, [3] rows left, [4] B.
 */
#define EP_Q8_ROWS_LOOP(INIT)                                                                             \
    __asm__ volatile("push   {r7, r12}\n\t"                                                                \
                     "ldr    r7, [r12, #16]\n"                                                          \
                     "1:\n\t"                                                                             \
                     "ldr    r12, [sp, #4]\n\t"                                                           \
                     "ldr    r6, [r12, #0]\n\t" INIT "ldr    r12, [r12, #4]\n\t"                          \
                     "subs   r12, r12, #8\n\t"                                                            \
                     "blt    3f\n"                                                                        \
                     "2:\n\t" EP_Q8_STEP2 EP_Q8_STEP2 EP_Q8_STEP2 EP_Q8_STEP2                             \
                     "subs   r12, r12, #8\n\t"                                                            \
                     "bge    2b\n"                                                                        \
                     "3:\n\t"                                                                             \
                     "adds   r12, r12, #6\n\t"                                                            \
                     "blt    5f\n"                                                                        \
                     "4:\n\t" EP_Q8_STEP2 "subs   r12, r12, #2\n\t"                                       \
                     "bge    4b\n"                                                                        \
                     "5:\n\t"                                                                             \
                     "adds   r12, r12, #2\n\t"                                                            \
                     "beq    6f\n\t"                                                                      \
                     "ldr    r4, [r7], #4\n\t"                                                            \
                     "ldmia  r6!, {r8, r9, r10, r11}\n\t"                                                 \
                     "smlad  r0, r8, r4, r0\n\t"                                                          \
                     "smlad  r1, r9, r4, r1\n\t"                                                          \
                     "smlad  r2, r10, r4, r2\n\t"                                                         \
                     "smlad  r3, r11, r4, r3\n"                                                           \
                     "6:\n\t"                                                                             \
                     "strd   r0, r1, [lr]\n\t"                                                            \
                     "strd   r2, r3, [lr, #8]\n\t"                                                        \
                     "ldr    r12, [sp, #4]\n\t"                                                           \
                     "ldr    r4, [r12, #8]\n\t"                                                           \
                     "add    lr, lr, r4\n\t"                                                              \
                     "ldr    r4, [r12, #12]\n\t"                                                          \
                     "subs   r4, r4, #1\n\t"                                                              \
                     "str    r4, [r12, #12]\n\t"                                                          \
                     "bne    1b\n\t"                                                                      \
                     "pop    {r7, r12}\n"                                                                 \
                     : "+r"(pc_lr)                                                                        \
                     : "r"(ctx_r12)                                                                       \
                     : "r0", "r1", "r2", "r3", "r4", "r5", "r6", "r8", "r9", "r10", "r11", "cc", "memory")

#define EP_Q8_STEP2                                                                                       \
    "ldrd   r4, r5, [r7], #8\n\t"                                                                         \
    "ldmia  r6!, {r8, r9, r10, r11}\n\t"                                                                  \
    "smlad  r0, r8, r4, r0\n\t"                                                                           \
    "smlad  r1, r9, r4, r1\n\t"                                                                           \
    "smlad  r2, r10, r4, r2\n\t"                                                                          \
    "smlad  r3, r11, r4, r3\n\t"                                                                          \
    "ldmia  r6!, {r8, r9, r10, r11}\n\t"                                                                  \
    "smlad  r0, r8, r5, r0\n\t"                                                                           \
    "smlad  r1, r9, r5, r1\n\t"                                                                           \
    "smlad  r2, r10, r5, r2\n\t"                                                                          \
    "smlad  r3, r11, r5, r3\n\t"

void ep_q8_dot_s16_core(uint32_t R, uint32_t Q, uint32_t T, const int16_t *restrict a, const int16_t *restrict b,
                        int32_t *restrict c, uint32_t ldc, bool accumulate) {
    uint32_t r = 0;
    if (Q != 0) {
        for (; r + EP_Q8_PANEL <= R; r += EP_Q8_PANEL) {
            uintptr_t ctx[5] = {(uintptr_t)(a + r * T), T / 2, 4 * ldc, Q, (uintptr_t)b};
            register int32_t *pc_lr __asm__("lr") = c + r;
            register uintptr_t *ctx_r12 __asm__("r12") = ctx;
            if (accumulate) {
                EP_Q8_ROWS_LOOP("ldrd   r0, r1, [lr]\n\t"
                                "ldrd   r2, r3, [lr, #8]\n\t");
            } else {
                EP_Q8_ROWS_LOOP("movs   r0, #0\n\t"
                                "movs   r1, #0\n\t"
                                "movs   r2, #0\n\t"
                                "movs   r3, #0\n\t");
            }
        }
    }
    if (r < R) {
        panel_rest(R - r, Q, T, a + r * T, b, c + r, ldc, accumulate);
    }
}
#else
/*
 * Portable: full panels in 4×2 tiles of plain int32 multiply-adds (8 sums, each
 * loaded A pair used twice, each B pair four times); odd B rows and the last
 * partial panel through panel_rest.
 */
void ep_q8_dot_s16_core(uint32_t R, uint32_t Q, uint32_t T, const int16_t *restrict a, const int16_t *restrict b,
                        int32_t *restrict c, uint32_t ldc, bool accumulate) {
    uint32_t r = 0;
    for (; r + EP_Q8_PANEL <= R; r += EP_Q8_PANEL) {
        const int16_t *ap = a + r * T;
        uint32_t q = 0;
        for (; q + 2 <= Q; q += 2) {
            const int16_t *b0 = b + q * T, *b1 = b0 + T, *p = ap;
            int32_t *c0 = c + q * ldc + r, *c1 = c0 + ldc;
            int32_t s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
            if (accumulate) {
                s00 = c0[0]; s01 = c0[1]; s02 = c0[2]; s03 = c0[3];
                s10 = c1[0]; s11 = c1[1]; s12 = c1[2]; s13 = c1[3];
            }
            for (uint32_t t = 0; t < T; t += 2, p += 8) {
                MAC2(s00, p, b0 + t); MAC2(s01, p + 2, b0 + t); MAC2(s02, p + 4, b0 + t); MAC2(s03, p + 6, b0 + t);
                MAC2(s10, p, b1 + t); MAC2(s11, p + 2, b1 + t); MAC2(s12, p + 4, b1 + t); MAC2(s13, p + 6, b1 + t);
            }
            c0[0] = s00; c0[1] = s01; c0[2] = s02; c0[3] = s03;
            c1[0] = s10; c1[1] = s11; c1[2] = s12; c1[3] = s13;
        }
        if (q < Q) {
            panel_rest(EP_Q8_PANEL, 1, T, ap, b + q * T, c + q * ldc + r, ldc, accumulate);
        }
    }
    if (r < R) {
        panel_rest(R - r, Q, T, a + r * T, b, c + r, ldc, accumulate);
    }
}
#endif

/*
 * On a cluster (GAP9) the products fork over the team, each core taking whole A panels
 * (rows r of c): every sum is made by one core exactly as the serial loop makes it, so
 * the bits do not depend on the core count. Products below EP_Q8_PAR_MACS per core stay
 * on the calling core.
 */
typedef struct {
    uint32_t R, Q, T, ldc;
    const int16_t *a, *b;
    int32_t *c;
    bool accumulate;
} dot_job_t;

static void dot_range(void *arg, uint32_t lo, uint32_t hi) {
    const dot_job_t *j = arg;
    ep_q8_dot_s16_core(hi - lo, j->Q, j->T, j->a + lo * j->T, j->b, j->c + lo, j->ldc, j->accumulate);
}

void ep_q8_dot_s16(uint32_t R, uint32_t Q, uint32_t T, const int16_t *restrict a, const int16_t *restrict b,
                   int32_t *restrict c, uint32_t ldc, bool accumulate) {
    dot_job_t j = {R, Q, T, ldc, a, b, c, accumulate};
    ep_q8_split(R, EP_Q8_PANEL, ep_q8_team_for((uint64_t)R * Q * T), dot_range, &j);
}

/* ---- rows of int8 times weights (convs with one-column kernels) ------------------- */

/* Rows per weight table of ep_q8_rows_mac's SIMD loop (pairs held on the stack). */
#define ROWS_CHUNK 64u

void ep_q8_rows_mac(const int8_t *src, uint32_t rs, uint32_t K, const int16_t *wk, uint32_t ws, uint32_t n,
                    int32_t *out) {
#if EP_Q8_SIMD
    /* Four outputs per step in registers; per two rows k, k + 1: one LDR of each row's four
     * codes, SXTB16 (ROR 8) and PKHBT/PKHTB into (row k, row k + 1) pairs per output, four
     * SMLADs against the weight pair. An odd last row: SMLABB/SMLATB. */
    for (uint32_t k0 = 0; k0 < K; k0 += ROWS_CHUNK) {
        const uint32_t kn = K - k0 < ROWS_CHUNK ? K - k0 : ROWS_CHUNK, pairs = kn / 2;
        const int8_t *base = src + k0 * rs;
        uint32_t wp[ROWS_CHUNK / 2];
        for (uint32_t k = 0; k < pairs; k++) {
            wp[k] = (uint16_t)wk[(k0 + 2 * k) * ws] | ((uint32_t)(uint16_t)wk[(k0 + 2 * k + 1) * ws] << 16);
        }
        const int32_t wlast = kn & 1u ? wk[(k0 + kn - 1) * ws] : 0;
        uint32_t w = 0;
        for (; w + 4 <= n; w += 4) {
            int32_t s0 = out[w], s1 = out[w + 1], s2 = out[w + 2], s3 = out[w + 3];
            const int8_t *r = base + w;
            for (uint32_t k = 0; k < pairs; k++, r += 2 * rs) {
                const uint32_t x0 = ld32(r), x1 = ld32(r + rs);
                const uint32_t a = sxtb16(x0), b = sxtb16(x1), c = sxtb16_ror8(x0), d = sxtb16_ror8(x1);
                s0 = (int32_t)__smlad((int16x2_t)pack_lo(a, b), (int16x2_t)wp[k], s0);
                s1 = (int32_t)__smlad((int16x2_t)pack_lo(c, d), (int16x2_t)wp[k], s1);
                s2 = (int32_t)__smlad((int16x2_t)pack_hi(a, b), (int16x2_t)wp[k], s2);
                s3 = (int32_t)__smlad((int16x2_t)pack_hi(c, d), (int16x2_t)wp[k], s3);
            }
            if (kn & 1u) {
                const uint32_t x0 = ld32(r), a = sxtb16(x0), c = sxtb16_ror8(x0);
                s0 = (int32_t)__smlabb((int32_t)a, wlast, s0);
                s1 = (int32_t)__smlabb((int32_t)c, wlast, s1);
                s2 = (int32_t)__smlatb((int32_t)a, wlast, s2);
                s3 = (int32_t)__smlatb((int32_t)c, wlast, s3);
            }
            out[w] = s0;
            out[w + 1] = s1;
            out[w + 2] = s2;
            out[w + 3] = s3;
        }
        for (; w < n; w++) {
            int32_t t = out[w];
            for (uint32_t k = 0; k < kn; k++) {
                t += (int32_t)base[k * rs + w] * wk[(k0 + k) * ws];
            }
            out[w] = t;
        }
    }
#else
    for (uint32_t w = 0; w < n; w++) {
        int32_t t = out[w];
        for (uint32_t k = 0; k < K; k++) {
            t += (int32_t)src[k * rs + w] * wk[k * ws];
        }
        out[w] = t;
    }
#endif
}

int32_t ep_q8_sum_s8(const int8_t *a, uint32_t n) {
    int32_t s = 0;
    uint32_t i = 0;
#if EP_Q8_SIMD
    for (; i + 4 <= n; i += 4) { /* four codes per LDR, two per SMLAD with (1, 1) */
        const uint32_t x = ld32(a + i);
        s = (int32_t)__smlad((int16x2_t)sxtb16(x), (int16x2_t)0x00010001u, s);
        s = (int32_t)__smlad((int16x2_t)sxtb16_ror8(x), (int16x2_t)0x00010001u, s);
    }
#endif
    for (; i < n; i++) {
        s += a[i];
    }
    return s;
}

int32_t ep_q8_dot_s8(const int8_t *a, const int8_t *b, uint32_t n) {
    int32_t s = 0;
    uint32_t i = 0;
#if EP_Q8_SIMD
    for (; i + 4 <= n; i += 4) { /* four codes per LDR: lanes (0, 2) and (1, 3) of both */
        const uint32_t x = ld32(a + i), y = ld32(b + i);
        s = (int32_t)__smlad((int16x2_t)sxtb16(x), (int16x2_t)sxtb16(y), s);
        s = (int32_t)__smlad((int16x2_t)sxtb16_ror8(x), (int16x2_t)sxtb16_ror8(y), s);
    }
#endif
    for (; i < n; i++) {
        s += (int32_t)a[i] * b[i];
    }
    return s;
}

/* ---- direct correlation (the depthwise convs) -------------------------------------- */

/* Taps v and v + 1 of a kernel row, sv apart in the plane, as one word of two lanes:
 * one (unaligned) LDR when they are adjacent. */
static inline uint32_t tap_pair(const int16_t *p, uint32_t sv) {
    if (sv == 1) {
        uint32_t v;
        memcpy(&v, p, sizeof v);
        return v;
    }
    return (uint32_t)(uint16_t)p[0] | (uint32_t)(uint16_t)p[sv] << 16;
}

static inline int32_t mac_pair(int32_t s, uint32_t k, uint32_t x) {
#if EP_Q8_SIMD
    return __smlad((int16x2_t)k, (int16x2_t)x, s);
#else
    return s + (int32_t)(int16_t)k * (int16_t)x + (int32_t)(int16_t)(k >> 16) * (int16_t)(x >> 16);
#endif
}

void ep_q8_corr_s16(const int16_t *restrict in, uint32_t ldi, uint32_t A, uint32_t B, uint32_t sa, uint32_t sb,
                         const int16_t *restrict k, uint32_t U, uint32_t V, uint32_t su, uint32_t sv,
                         int32_t *restrict out, uint32_t ldo) {
    if (U == 3 && V == 4 && sv == 1) { /* 3×3 (and 3×4) kernels, dilation 1 along rows: taps in registers */
        const uint32_t k0 = tap_pair(k, 1), k1 = tap_pair(k + 2, 1), k2 = tap_pair(k + 4, 1), k3 = tap_pair(k + 6, 1),
                       k4 = tap_pair(k + 8, 1), k5 = tap_pair(k + 10, 1);
        const uint32_t r1 = su * ldi, r2 = 2 * su * ldi;
        for (uint32_t a = 0; a < A; a++) {
            const int16_t *x = in + a * sa * ldi;
            int32_t *o = out + a * ldo;
            for (uint32_t b = 0; b < B; b++, x += sb) {
                int32_t s = mac_pair(o[b], k0, tap_pair(x, 1));
                s = mac_pair(s, k1, tap_pair(x + 2, 1));
                s = mac_pair(s, k2, tap_pair(x + r1, 1));
                s = mac_pair(s, k3, tap_pair(x + r1 + 2, 1));
                s = mac_pair(s, k4, tap_pair(x + r2, 1));
                o[b] = mac_pair(s, k5, tap_pair(x + r2 + 2, 1));
            }
        }
        return;
    }
    if (B == 3 && sb == 1 && sv == 1) { /* bw_param of 3-wide kernels: three sums share each k word */
        for (uint32_t a = 0; a < A; a++) {
            int32_t *o = out + a * ldo, s0 = o[0], s1 = o[1], s2 = o[2];
            for (uint32_t u = 0; u < U; u++) {
                const int16_t *x = in + (a * sa + u * su) * ldi, *ku = k + u * V;
                for (uint32_t v = 0; v < V; v += 2) {
                    const uint32_t kv = tap_pair(ku + v, 1);
                    s0 = mac_pair(s0, kv, tap_pair(x + v, 1));
                    s1 = mac_pair(s1, kv, tap_pair(x + v + 1, 1));
                    s2 = mac_pair(s2, kv, tap_pair(x + v + 2, 1));
                }
            }
            o[0] = s0;
            o[1] = s1;
            o[2] = s2;
        }
        return;
    }
    for (uint32_t a = 0; a < A; a++) {
        int32_t *o = out + a * ldo;
        for (uint32_t b = 0; b < B; b++) {
            int32_t s = o[b];
            for (uint32_t u = 0; u < U; u++) {
                const int16_t *x = in + (a * sa + u * su) * ldi + b * sb, *ku = k + u * V;
                uint32_t v = 0;
                for (; v + 4 <= V; v += 4) {
                    s = mac_pair(s, tap_pair(ku + v, 1), tap_pair(x + v * sv, sv));
                    s = mac_pair(s, tap_pair(ku + v + 2, 1), tap_pair(x + (v + 2) * sv, sv));
                }
                if (v < V) {
                    s = mac_pair(s, tap_pair(ku + v, 1), tap_pair(x + v * sv, sv));
                }
            }
            o[b] = s;
        }
    }
}

/* ---- packing ---------------------------------------------------------------------- */

/* s[j·sj], or 0 past J. */
static inline int16_t widen(const int8_t *s, uint32_t j, uint32_t J, uint32_t sj) {
    return j < J ? s[j * sj] : 0;
}

/*
 * B rows. With SIMD a contiguous row without shifts goes a word at a time: LDR,
 * SXTB16, SXTB16 ROR 8, two STRs per four codes (the kpos order is exactly what
 * they produce). Everything else, and the tail, element by element in kpos order;
 * with shifts column by column, so each d_j is worked out once.
 */
void ep_q8_pack(const int8_t *restrict src, uint32_t I, uint32_t J, uint32_t si, uint32_t sj,
                const int32_t *restrict e_j, int32_t e_lo, int16_t *restrict dst, uint32_t Jp) {
    if (e_j != NULL) { /* column by column: one shift per j, not per element */
        for (uint32_t j = 0; j < Jp; j++) {
            int16_t *d = dst + ep_q8_kpos(j, Jp);
            if (j >= J) {
                for (uint32_t i = 0; i < I; i++) {
                    d[i * Jp] = 0;
                }
                continue;
            }
            int32_t sh = ep_q8_exp(e_j[j]) - e_lo;
            sh = sh < 0 ? 0 : (sh > EP_Q8_SPREAD ? EP_Q8_SPREAD : sh);
            const int8_t *s = src + j * sj;
            for (uint32_t i = 0; i < I; i++) {
                d[i * Jp] = (int16_t)(s[i * si] * (1 << sh));
            }
        }
        return;
    }
    for (uint32_t i = 0; i < I; i++) {
        const int8_t *s = src + i * si;
        int16_t *d = dst + i * Jp;
        uint32_t j = 0;
#if EP_Q8_SIMD
        if (sj == 1) {
            for (; j + 4 <= J; j += 4) {
                const uint32_t w = ld32(s + j);
                st32(d + j, sxtb16(w));
                st32(d + j + 2, sxtb16_ror8(w));
            }
        }
#endif
        for (; j + 4 <= Jp; j += 4) { /* complete groups: t0, t2, t1, t3 */
            d[j] = widen(s, j, J, sj);
            d[j + 1] = widen(s, j + 2, J, sj);
            d[j + 2] = widen(s, j + 1, J, sj);
            d[j + 3] = widen(s, j + 3, J, sj);
        }
        for (; j < Jp; j++) { /* a trailing half group keeps its order */
            d[j] = widen(s, j, J, sj);
        }
    }
}

/*
 * A panels. With SIMD, for full panels:
 *   st = 1: each row's word of four codes → SXTB16 / SXTB16 ROR 8 → the row's
 *           words of two t-pairs (4 LDR, 8 SXTB16, 8 STR per 16 codes);
 *   sr = 1: the panel's four rows at one t are one word; two such words (t, t')
 *           → SXTB16s → PKHBT/PKHTB give the four rows' (t, t') words.
 * Partial panels, other strides and the tails go element by element.
 */
void ep_q8_pack_panels(const int8_t *restrict src, uint32_t R, uint32_t T, uint32_t sr, uint32_t st,
                       int16_t *restrict dst, uint32_t Tp) {
    for (uint32_t r0 = 0; r0 < R; r0 += EP_Q8_PANEL) {
        const uint32_t h = R - r0 < EP_Q8_PANEL ? R - r0 : EP_Q8_PANEL;
        const int8_t *s = src + r0 * sr;
        int16_t *d = dst + r0 * Tp; /* t-pair p of row i: d[p·2h + 2i] */
        uint32_t t = 0;
#if EP_Q8_SIMD
        if (h == EP_Q8_PANEL && st == 1) {
            for (; t + 4 <= T; t += 4) {
                const uint32_t w0 = ld32(s + t), w1 = ld32(s + sr + t), w2 = ld32(s + 2 * sr + t),
                               w3 = ld32(s + 3 * sr + t);
                int16_t *o = d + 4 * t;
                st32(o, sxtb16(w0));
                st32(o + 2, sxtb16(w1));
                st32(o + 4, sxtb16(w2));
                st32(o + 6, sxtb16(w3));
                st32(o + 8, sxtb16_ror8(w0));
                st32(o + 10, sxtb16_ror8(w1));
                st32(o + 12, sxtb16_ror8(w2));
                st32(o + 14, sxtb16_ror8(w3));
            }
        } else if (h == EP_Q8_PANEL && sr == 1) {
            for (; t + 4 <= T; t += 4) {
                int16_t *o = d + 4 * t;
                for (uint32_t u = 0; u < 2; u++, o += 8) { /* pairs (t, t+2), (t+1, t+3) */
                    const uint32_t wa = ld32(s + (t + u) * st), wb = ld32(s + (t + u + 2) * st);
                    const uint32_t a02 = sxtb16(wa), a13 = sxtb16_ror8(wa);
                    const uint32_t b02 = sxtb16(wb), b13 = sxtb16_ror8(wb);
                    st32(o, pack_lo(a02, b02));
                    st32(o + 2, pack_lo(a13, b13));
                    st32(o + 4, pack_hi(a02, b02));
                    st32(o + 6, pack_hi(a13, b13));
                }
            }
        }
#endif
        for (; t < Tp; t++) {
            const uint32_t k = ep_q8_kpos(t, Tp);
            int16_t *o = d + (k >> 1) * 2 * h + (k & 1u);
            for (uint32_t i = 0; i < h; i++) {
                o[2 * i] = t < T ? s[i * sr + t * st] : 0;
            }
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

/* |v| as unsigned (2^31 for INT32_MIN). */
static inline uint32_t mag32(int32_t v) {
    return v < 0 ? 0u - (uint32_t)v : (uint32_t)v;
}

/* OR of |p[i]| over n: its bit length is that of the largest |p[i]| (no compare per element). */
static uint32_t mag_or(const int32_t *restrict p, uint32_t n) {
    uint32_t m = 0, i = 0;
    for (; i + 4 <= n; i += 4) {
        m |= mag32(p[i]) | mag32(p[i + 1]) | mag32(p[i + 2]) | mag32(p[i + 3]);
    }
    for (; i < n; i++) {
        m |= mag32(p[i]);
    }
    return m;
}

/*
 * y = sat8(rshift_round(v, s)) over n. For 1 ≤ s ≤ 31 without 64-bit arithmetic:
 * floor((v + 2^(s-1)) / 2^s) = (v >> s) + bit s-1 of v (v = q·2^s + r: r + 2^(s-1)
 * carries into q exactly when bit s-1 of r is set).
 */
static void shift_sat(const int32_t *restrict p, uint32_t n, int32_t s, int8_t *restrict y) {
#if EP_Q8_SIMD
    /* Four at a time: QADD of 2^(s-1) (it saturates only above INT32_MAX − 2^(s-1), where
     * both forms give 127 for s ≤ 24), ASR, SSAT to [-128, 127], the four bytes in one
     * word (PKHBT, UXTB16), then SSUB8 + SEL for the −127 floor of all four, one STR. */
    if (s >= 1 && s <= 24) {
        const int32_t half = 1 << (s - 1);
        const uint32_t floor4 = 0x81818181u; /* −127 in every byte */
        uint32_t i = 0;
        for (; i + 4 <= n; i += 4) {
            const int32_t a = __ssat(__qadd(p[i], half) >> s, 8), b = __ssat(__qadd(p[i + 1], half) >> s, 8);
            const int32_t c = __ssat(__qadd(p[i + 2], half) >> s, 8), d = __ssat(__qadd(p[i + 3], half) >> s, 8);
            /* (a, c) and (b, d) as halfword pairs, then UXTB16: bytes a, c and b, d */
            const uint32_t ac = pack_lo((uint32_t)a, (uint32_t)c), bd = pack_lo((uint32_t)b, (uint32_t)d);
            const uint32_t w = (uint32_t)__uxtb16((int8x4_t)ac) | ((uint32_t)__uxtb16((int8x4_t)bd) << 8);
            uint32_t t;
            __asm__("ssub8 %0, %1, %2\n\tsel %0, %1, %2" : "=&r"(t) : "r"(w), "r"(floor4) : "cc");
            st32(y + i, t);
        }
        p += i; /* the last n mod 4 through the loop below */
        y += i;
        n -= i;
    }
#endif
    if (s >= 1 && s <= 31) {
        for (uint32_t i = 0; i < n; i++) {
            const int32_t v = p[i];
            y[i] = ep_q8_sat8((v >> s) + ((v >> (s - 1)) & 1));
        }
    } else {
        for (uint32_t i = 0; i < n; i++) {
            y[i] = ep_q8_sat8(ep_q8_rshift_round(p[i], s));
        }
    }
}

/* The exponent channel c's sums (OR of magnitudes mag) ask for. */
static int32_t chan_exp(uint32_t mag, int32_t e_base, const int32_t *e_ch, uint32_t c) {
    return ep_q8_bitlen(mag) + e_base + (e_ch ? ep_q8_exp(e_ch[c]) : 0) - 7;
}

void ep_q8_acc_mags(const int32_t *restrict acc, uint32_t outer, uint32_t C, uint32_t inner, uint32_t *restrict mag) {
    for (uint32_t c = 0; c < C; c++) {
        for (uint32_t o = 0; o < outer; o++) {
            mag[c] |= mag_or(acc + (o * C + c) * inner, inner);
        }
    }
}

int32_t ep_q8_requant_exp(const uint32_t *mag, uint32_t C, int32_t e_base, const int32_t *e_ch) {
    int32_t e_out = INT32_MIN;
    for (uint32_t c = 0; c < C; c++) {
        const int32_t e = chan_exp(mag[c], e_base, e_ch, c);
        e_out = e > e_out ? e : e_out;
    }
    return e_out;
}

void ep_q8_requant_apply(const int32_t *restrict acc, uint32_t outer, uint32_t C, uint32_t inner, int32_t e_base,
                         const int32_t *restrict e_ch, int32_t e_out, int8_t *restrict y) {
    for (uint32_t c = 0; c < C; c++) {
        const int32_t s = e_out - (e_base + (e_ch ? ep_q8_exp(e_ch[c]) : 0));
        for (uint32_t o = 0; o < outer; o++) {
            const uint32_t base = (o * C + c) * inner;
            shift_sat(acc + base, inner, s, y + base);
        }
    }
}

/*
 * Requantisation on a cluster: each core the magnitudes of its channels (or, for one
 * exponent, its run of elements), a barrier, the output exponent from all of them (an OR
 * and a max: exact in any order), then its channels' (elements') codes.
 */
typedef struct {
    const int32_t *acc;
    uint32_t outer, C, inner;
    int32_t e_base;
    const int32_t *e_ch;
    int8_t *y;
    uint32_t part[EP_Q8_MAX_TEAM]; /* magnitudes (one run) or exponents (channels) */
    int32_t e_out;
} rq_job_t;

static void rq_core(void *arg) {
    rq_job_t *j = arg;
    const uint32_t id = ep_par_core_id(), team = ep_par_num_cores();
    uint32_t lo, hi;
    if (j->C == 1 && j->outer == 1 && j->e_ch == NULL) {
        ep_par_range(j->inner, &lo, &hi);
        j->part[id] = lo < hi ? mag_or(j->acc + lo, hi - lo) : 0;
        ep_par_barrier();
        uint32_t mag = 0;
        for (uint32_t k = 0; k < team; k++) {
            mag |= j->part[k];
        }
        const int32_t e = chan_exp(mag, j->e_base, NULL, 0);
        if (lo < hi) {
            shift_sat(j->acc + lo, hi - lo, e - j->e_base, j->y + lo);
        }
        j->e_out = id == 0 ? e : j->e_out;
        return;
    }
    ep_par_range(j->C, &lo, &hi);
    int32_t e_out = INT32_MIN;
    for (uint32_t c = lo; c < hi; c++) {
        uint32_t mag = 0;
        for (uint32_t o = 0; o < j->outer; o++) {
            mag |= mag_or(j->acc + (o * j->C + c) * j->inner, j->inner);
        }
        const int32_t e = chan_exp(mag, j->e_base, j->e_ch, c);
        e_out = e > e_out ? e : e_out;
    }
    j->part[id] = (uint32_t)e_out;
    ep_par_barrier();
    for (uint32_t k = 0; k < team; k++) {
        e_out = (int32_t)j->part[k] > e_out ? (int32_t)j->part[k] : e_out;
    }
    for (uint32_t c = lo; c < hi; c++) {
        const int32_t s = e_out - (j->e_base + (j->e_ch ? ep_q8_exp(j->e_ch[c]) : 0));
        for (uint32_t o = 0; o < j->outer; o++) {
            const uint32_t base = (o * j->C + c) * j->inner;
            shift_sat(j->acc + base, j->inner, s, j->y + base);
        }
    }
    j->e_out = id == 0 ? e_out : j->e_out;
}

int32_t ep_q8_requant(const int32_t *restrict acc, uint32_t outer, uint32_t C, uint32_t inner, int32_t e_base,
                      const int32_t *restrict e_ch, int8_t *restrict y) {
    if (e_ch == NULL && C != 0) { /* one exponent: the whole tensor is one run */
        inner *= outer * C;
        outer = C = 1;
    }
    const uint64_t count = (uint64_t)outer * C * inner;
    uint32_t team = ep_q8_team_for(count * EP_Q8_PAR_ELEM);
    team = team > EP_Q8_MAX_TEAM ? EP_Q8_MAX_TEAM : team;
    if (team > 1 && (C > 1 || inner >= team)) {
        rq_job_t j = {acc, outer, C, inner, e_base, e_ch, y, {0}, INT32_MIN};
        ep_par_fork(team, rq_core, &j);
        return j.e_out;
    }
    int32_t e_out = INT32_MIN;
    for (uint32_t c = 0; c < C; c++) {
        uint32_t mag = 0;
        for (uint32_t o = 0; o < outer; o++) {
            mag |= mag_or(acc + (o * C + c) * inner, inner);
        }
        const int32_t e = chan_exp(mag, e_base, e_ch, c);
        e_out = e > e_out ? e : e_out;
    }
    ep_q8_requant_apply(acc, outer, C, inner, e_base, e_ch, e_out, y);
    return e_out;
}

/* ---- two passes on a cluster ------------------------------------------------------ */

typedef struct {
    ep_q8_pass_t pass;
    void *arg;
    uint32_t units;
    float part[EP_Q8_MAX_TEAM];
    int32_t e;
} tp_job_t;

static void tp_core(void *arg) {
    tp_job_t *j = arg;
    const uint32_t id = ep_par_core_id(), team = ep_par_num_cores();
    uint32_t lo, hi;
    ep_par_range(j->units, &lo, &hi);
    j->part[id] = lo < hi ? j->pass(j->arg, lo, hi, NULL) : 0.0f;
    ep_par_barrier();
    float amax = 0.0f;
    for (uint32_t k = 0; k < team; k++) {
        amax = ep_q8_maxabs_step(amax, j->part[k]);
    }
    const int32_t e = ep_q8_exp_for_maxabs(amax);
    if (lo < hi) {
        (void)j->pass(j->arg, lo, hi, &e);
    }
    j->e = id == 0 ? e : j->e;
}

int32_t ep_q8_two_pass(uint32_t units, uint64_t work, ep_q8_pass_t pass, void *arg) {
    uint32_t team = ep_q8_team_for(work);
    team = team > EP_Q8_MAX_TEAM ? EP_Q8_MAX_TEAM : team;
    if (team <= 1 || units < team) {
        const int32_t e = ep_q8_exp_for_maxabs(pass(arg, 0, units, NULL));
        (void)pass(arg, 0, units, &e);
        return e;
    }
    tp_job_t j = {pass, arg, units, {0.0f}, 0};
    ep_par_fork(team, tp_core, &j);
    return j.e;
}

typedef struct {
    ep_q8_range_fn_t fn;
    void *arg;
    uint32_t n, unit;
} split_job_t;

static void split_core(void *arg) {
    const split_job_t *j = arg;
    uint32_t lo, hi;
    ep_par_range_unit(j->n, j->unit, &lo, &hi);
    if (lo < hi) {
        j->fn(j->arg, lo, hi);
    }
}

void ep_q8_split(uint32_t n, uint32_t unit, uint32_t team, ep_q8_range_fn_t fn, void *arg) {
    const uint32_t units = (n + unit - 1) / unit;
    team = team < units ? team : units;
    if (team <= 1) {
        fn(arg, 0, n);
        return;
    }
    split_job_t j = {fn, arg, n, unit};
    ep_par_fork(team, split_core, &j);
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

static float absmax_f32(uint32_t count, const float *x) {
    float m = 0.0f;
    for (uint32_t i = 0; i < count; i++) {
        m = ep_q8_maxabs_step(m, x[i]);
    }
    return m;
}

int32_t ep_q8_quantize_f32(uint32_t count, const float *restrict x, int8_t *restrict q) {
    const int32_t e = ep_q8_exp_for_maxabs(absmax_f32(count, x));
    const float s = ep_q8_quant_scale(e);
    for (uint32_t i = 0; i < count; i++) {
        q[i] = ep_q8_quantize_s(x[i], s);
    }
    return e;
}

float ep_q8_chunk_out(const float *f, uint32_t len, int8_t *out, int32_t e, float amax) {
    if (out == NULL) {
        for (uint32_t j = 0; j < len; j++) {
            amax = ep_q8_maxabs_step(amax, f[j]);
        }
        return amax;
    }
    const float s = ep_q8_quant_scale(e);
    for (uint32_t j = 0; j < len; j++) {
        out[j] = ep_q8_quantize_s(f[j], s);
    }
    return amax;
}

void ep_q8_codes_seen(const int8_t *q, uint32_t runs, uint32_t len, uint32_t stride, uint8_t *seen) {
    for (uint32_t u = 0; u < 256u; u++) {
        seen[u] = 0;
    }
    for (uint32_t r = 0; r < runs; r++, q += stride) {
        for (uint32_t j = 0; j < len; j++) {
            seen[(uint8_t)q[j]] = 1;
        }
    }
}

float ep_q8_code_table(const float *f, uint32_t u0, uint32_t len, const uint8_t *seen, int8_t *table, int32_t e,
                       float amax) {
    if (seen != NULL) {
        for (uint32_t j = 0; j < len; j++) {
            if (seen[u0 + j]) {
                amax = ep_q8_maxabs_step(amax, f[j]);
            }
        }
        return amax;
    }
    const float s = ep_q8_quant_scale(e);
    for (uint32_t j = 0; j < len; j++) {
        table[u0 + j] = ep_q8_quantize_s(f[j], s);
    }
    return amax;
}

void ep_q8_codes_map(const int8_t *table, const int8_t *q, uint32_t runs, uint32_t len, uint32_t stride, int8_t *out) {
    for (uint32_t r = 0; r < runs; r++, q += stride, out += stride) {
        for (uint32_t j = 0; j < len; j++) {
            out[j] = table[(uint8_t)q[j]];
        }
    }
}

void ep_q8_dequantize_f32(uint32_t count, const int8_t *restrict q, int32_t e, float *restrict y) {
    const float s = ep_q8_dequant_scale(e);
    for (uint32_t i = 0; i < count; i++) {
        y[i] = (float)q[i] * s;
    }
}

void ep_q8_acc_to_f32(uint32_t count, const int32_t *acc, int32_t e, float *y) {
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
