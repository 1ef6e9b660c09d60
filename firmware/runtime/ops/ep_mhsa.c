/*
 * ep_mhsa.c — multi-head self-attention as CCT uses it (nn.MultiheadAttention,
 * batch_first, q = k = v = x, biases, no mask, no dropout): forward, the gradient
 * w.r.t. the in-projection output (dqkv), the input gradient and the parameter
 * gradients. Shapes, saved state and scratch: see ep_attn_optim.h.
 *
 * Every product (projections, scores, P V and the backward products) is one of
 * three small GEMM helpers with explicit leading dimensions, so a head's columns
 * of qkv [T][3D] are used in place (no copies):
 *   gemm_nt  C[i][j] = init + α Σ_k A[i][k] B[j][k]   (both operands contiguous in k)
 *   gemm_nn  C[i][j] =        α Σ_k A[i][k] B[k][j]
 *   gemm_tn  C[i][j] = init + α Σ_k A[k][i] B[k][j]   (sums over rows: weight gradients)
 * Each runs 4×4 output tiles with 16 accumulators in registers: per k, 8 loads
 * feed 16 multiply-accumulates (about 0.6 MAC per instruction on Cortex-M4F, where
 * each fmaf is one VFMA.F32: -std=c11 forbids contracting a*b+c, and a separate
 * multiply and add would cost two FPU instructions per MAC). Edge rows/columns
 * (sizes not multiples of 4) use 1×4 / 4×1 / 1×1 tiles. No branch or division
 * inside a k loop; all index products are hoisted into pointer bumps.
 */
#include <math.h>
#include <stddef.h>

#include "ep_attn_optim.h"
#include "ep_ops.h"
#include "ep_parallel.h"

#define FMA4(s0, s1, s2, s3, x, y0, y1, y2, y3) \
    do {                                         \
        s0 = fmaf(x, y0, s0);                    \
        s1 = fmaf(x, y1, s1);                    \
        s2 = fmaf(x, y2, s2);                    \
        s3 = fmaf(x, y3, s3);                    \
    } while (0)

/* The value a gemm output starts from: bias[j] (gemm_nt), the old C (acc), or 0. */
#define STORE4(c, j, init0, init1, init2, init3, s0, s1, s2, s3) \
    do {                                                        \
        (c)[(j)] = (init0) + alpha * (s0);                      \
        (c)[(j) + 1] = (init1) + alpha * (s1);                  \
        (c)[(j) + 2] = (init2) + alpha * (s2);                  \
        (c)[(j) + 3] = (init3) + alpha * (s3);                  \
    } while (0)

static inline float bias_at(const float *bias, uint32_t j) {
    return bias != NULL ? bias[j] : 0.0f;
}

/* C[i][j] = bias[j] (or 0 if bias is NULL) + α Σ_{k<K} A[i·lda + k] B[j·ldb + k], i < R, j < N. */
static void gemm_nt(uint32_t R, uint32_t N, uint32_t K, float alpha, const float *restrict A,
                    uint32_t lda, const float *restrict B, uint32_t ldb, float *restrict C,
                    uint32_t ldc, const float *restrict bias) {
    uint32_t i = 0;
    for (; i + 4 <= R; i += 4) {
        const float *a0 = A + i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        float *c0 = C + i * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
        uint32_t j = 0;
        for (; j + 4 <= N; j += 4) {
            const float *b0 = B + j * ldb, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
            float s00 = 0.0f, s01 = 0.0f, s02 = 0.0f, s03 = 0.0f, s10 = 0.0f, s11 = 0.0f, s12 = 0.0f,
                  s13 = 0.0f, s20 = 0.0f, s21 = 0.0f, s22 = 0.0f, s23 = 0.0f, s30 = 0.0f, s31 = 0.0f,
                  s32 = 0.0f, s33 = 0.0f;
            for (uint32_t k = 0; k < K; k++) {
                const float y0 = b0[k], y1 = b1[k], y2 = b2[k], y3 = b3[k];
                FMA4(s00, s01, s02, s03, a0[k], y0, y1, y2, y3);
                FMA4(s10, s11, s12, s13, a1[k], y0, y1, y2, y3);
                FMA4(s20, s21, s22, s23, a2[k], y0, y1, y2, y3);
                FMA4(s30, s31, s32, s33, a3[k], y0, y1, y2, y3);
            }
            const float i0 = bias_at(bias, j), i1 = bias_at(bias, j + 1), i2 = bias_at(bias, j + 2),
                        i3 = bias_at(bias, j + 3);
            STORE4(c0, j, i0, i1, i2, i3, s00, s01, s02, s03);
            STORE4(c1, j, i0, i1, i2, i3, s10, s11, s12, s13);
            STORE4(c2, j, i0, i1, i2, i3, s20, s21, s22, s23);
            STORE4(c3, j, i0, i1, i2, i3, s30, s31, s32, s33);
        }
        for (; j < N; j++) { /* 4 rows × 1 column */
            const float *b0 = B + j * ldb;
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
            for (uint32_t k = 0; k < K; k++) {
                const float y = b0[k];
                s0 = fmaf(a0[k], y, s0);
                s1 = fmaf(a1[k], y, s1);
                s2 = fmaf(a2[k], y, s2);
                s3 = fmaf(a3[k], y, s3);
            }
            const float i0 = bias_at(bias, j);
            c0[j] = i0 + alpha * s0;
            c1[j] = i0 + alpha * s1;
            c2[j] = i0 + alpha * s2;
            c3[j] = i0 + alpha * s3;
        }
    }
    for (; i < R; i++) { /* 1 row × 4 columns, then 1 × 1 */
        const float *a0 = A + i * lda;
        float *c0 = C + i * ldc;
        uint32_t j = 0;
        for (; j + 4 <= N; j += 4) {
            const float *b0 = B + j * ldb, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
            for (uint32_t k = 0; k < K; k++) {
                FMA4(s0, s1, s2, s3, a0[k], b0[k], b1[k], b2[k], b3[k]);
            }
            STORE4(c0, j, bias_at(bias, j), bias_at(bias, j + 1), bias_at(bias, j + 2),
                   bias_at(bias, j + 3), s0, s1, s2, s3);
        }
        for (; j < N; j++) {
            const float *b0 = B + j * ldb;
            float s = 0.0f;
            for (uint32_t k = 0; k < K; k++) {
                s = fmaf(a0[k], b0[k], s);
            }
            c0[j] = bias_at(bias, j) + alpha * s;
        }
    }
}

/* C[i][j] = α Σ_{k<K} A[i·lda + k] B[k·ldb + j], i < R, j < N. */
static void gemm_nn(uint32_t R, uint32_t N, uint32_t K, float alpha, const float *restrict A,
                    uint32_t lda, const float *restrict B, uint32_t ldb, float *restrict C,
                    uint32_t ldc) {
    uint32_t i = 0;
    for (; i + 4 <= R; i += 4) {
        const float *a0 = A + i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        float *c0 = C + i * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
        uint32_t j = 0;
        for (; j + 4 <= N; j += 4) {
            const float *bk = B + j;
            float s00 = 0.0f, s01 = 0.0f, s02 = 0.0f, s03 = 0.0f, s10 = 0.0f, s11 = 0.0f, s12 = 0.0f,
                  s13 = 0.0f, s20 = 0.0f, s21 = 0.0f, s22 = 0.0f, s23 = 0.0f, s30 = 0.0f, s31 = 0.0f,
                  s32 = 0.0f, s33 = 0.0f;
            for (uint32_t k = 0; k < K; k++, bk += ldb) {
                const float y0 = bk[0], y1 = bk[1], y2 = bk[2], y3 = bk[3];
                FMA4(s00, s01, s02, s03, a0[k], y0, y1, y2, y3);
                FMA4(s10, s11, s12, s13, a1[k], y0, y1, y2, y3);
                FMA4(s20, s21, s22, s23, a2[k], y0, y1, y2, y3);
                FMA4(s30, s31, s32, s33, a3[k], y0, y1, y2, y3);
            }
            STORE4(c0, j, 0.0f, 0.0f, 0.0f, 0.0f, s00, s01, s02, s03);
            STORE4(c1, j, 0.0f, 0.0f, 0.0f, 0.0f, s10, s11, s12, s13);
            STORE4(c2, j, 0.0f, 0.0f, 0.0f, 0.0f, s20, s21, s22, s23);
            STORE4(c3, j, 0.0f, 0.0f, 0.0f, 0.0f, s30, s31, s32, s33);
        }
        for (; j < N; j++) {
            const float *bk = B + j;
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
            for (uint32_t k = 0; k < K; k++, bk += ldb) {
                const float y = bk[0];
                s0 = fmaf(a0[k], y, s0);
                s1 = fmaf(a1[k], y, s1);
                s2 = fmaf(a2[k], y, s2);
                s3 = fmaf(a3[k], y, s3);
            }
            c0[j] = alpha * s0;
            c1[j] = alpha * s1;
            c2[j] = alpha * s2;
            c3[j] = alpha * s3;
        }
    }
    for (; i < R; i++) {
        const float *a0 = A + i * lda;
        float *c0 = C + i * ldc;
        uint32_t j = 0;
        for (; j + 4 <= N; j += 4) {
            const float *bk = B + j;
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
            for (uint32_t k = 0; k < K; k++, bk += ldb) {
                FMA4(s0, s1, s2, s3, a0[k], bk[0], bk[1], bk[2], bk[3]);
            }
            STORE4(c0, j, 0.0f, 0.0f, 0.0f, 0.0f, s0, s1, s2, s3);
        }
        for (; j < N; j++) {
            const float *bk = B + j;
            float s = 0.0f;
            for (uint32_t k = 0; k < K; k++, bk += ldb) {
                s = fmaf(a0[k], bk[0], s);
            }
            c0[j] = alpha * s;
        }
    }
}

/* C[i][j] = (acc ? C[i][j] : 0) + α Σ_{k<K} A[k·lda + i] B[k·ldb + j], i < R, j < N. */
static void gemm_tn(uint32_t R, uint32_t N, uint32_t K, float alpha, const float *restrict A,
                    uint32_t lda, const float *restrict B, uint32_t ldb, float *restrict C,
                    uint32_t ldc, int acc) {
    uint32_t i = 0;
    for (; i + 4 <= R; i += 4) {
        float *c0 = C + i * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
        uint32_t j = 0;
        for (; j + 4 <= N; j += 4) {
            const float *ak = A + i, *bk = B + j;
            float s00 = 0.0f, s01 = 0.0f, s02 = 0.0f, s03 = 0.0f, s10 = 0.0f, s11 = 0.0f, s12 = 0.0f,
                  s13 = 0.0f, s20 = 0.0f, s21 = 0.0f, s22 = 0.0f, s23 = 0.0f, s30 = 0.0f, s31 = 0.0f,
                  s32 = 0.0f, s33 = 0.0f;
            for (uint32_t k = 0; k < K; k++, ak += lda, bk += ldb) {
                const float y0 = bk[0], y1 = bk[1], y2 = bk[2], y3 = bk[3];
                FMA4(s00, s01, s02, s03, ak[0], y0, y1, y2, y3);
                FMA4(s10, s11, s12, s13, ak[1], y0, y1, y2, y3);
                FMA4(s20, s21, s22, s23, ak[2], y0, y1, y2, y3);
                FMA4(s30, s31, s32, s33, ak[3], y0, y1, y2, y3);
            }
            if (acc) {
                STORE4(c0, j, c0[j], c0[j + 1], c0[j + 2], c0[j + 3], s00, s01, s02, s03);
                STORE4(c1, j, c1[j], c1[j + 1], c1[j + 2], c1[j + 3], s10, s11, s12, s13);
                STORE4(c2, j, c2[j], c2[j + 1], c2[j + 2], c2[j + 3], s20, s21, s22, s23);
                STORE4(c3, j, c3[j], c3[j + 1], c3[j + 2], c3[j + 3], s30, s31, s32, s33);
            } else {
                STORE4(c0, j, 0.0f, 0.0f, 0.0f, 0.0f, s00, s01, s02, s03);
                STORE4(c1, j, 0.0f, 0.0f, 0.0f, 0.0f, s10, s11, s12, s13);
                STORE4(c2, j, 0.0f, 0.0f, 0.0f, 0.0f, s20, s21, s22, s23);
                STORE4(c3, j, 0.0f, 0.0f, 0.0f, 0.0f, s30, s31, s32, s33);
            }
        }
        for (; j < N; j++) {
            const float *ak = A + i, *bk = B + j;
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
            for (uint32_t k = 0; k < K; k++, ak += lda, bk += ldb) {
                const float y = bk[0];
                s0 = fmaf(ak[0], y, s0);
                s1 = fmaf(ak[1], y, s1);
                s2 = fmaf(ak[2], y, s2);
                s3 = fmaf(ak[3], y, s3);
            }
            c0[j] = (acc ? c0[j] : 0.0f) + alpha * s0;
            c1[j] = (acc ? c1[j] : 0.0f) + alpha * s1;
            c2[j] = (acc ? c2[j] : 0.0f) + alpha * s2;
            c3[j] = (acc ? c3[j] : 0.0f) + alpha * s3;
        }
    }
    for (; i < R; i++) {
        float *c0 = C + i * ldc;
        uint32_t j = 0;
        for (; j + 4 <= N; j += 4) {
            const float *ak = A + i, *bk = B + j;
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
            for (uint32_t k = 0; k < K; k++, ak += lda, bk += ldb) {
                FMA4(s0, s1, s2, s3, ak[0], bk[0], bk[1], bk[2], bk[3]);
            }
            if (acc) {
                STORE4(c0, j, c0[j], c0[j + 1], c0[j + 2], c0[j + 3], s0, s1, s2, s3);
            } else {
                STORE4(c0, j, 0.0f, 0.0f, 0.0f, 0.0f, s0, s1, s2, s3);
            }
        }
        for (; j < N; j++) {
            const float *ak = A + i, *bk = B + j;
            float s = 0.0f;
            for (uint32_t k = 0; k < K; k++, ak += lda, bk += ldb) {
                s = fmaf(ak[0], bk[0], s);
            }
            c0[j] = (acc ? c0[j] : 0.0f) + alpha * s;
        }
    }
}

/* In-place softmax of one row of S elements (the SOFTMAX kernel, which allows y = x). */
static void softmax_row(uint32_t S, float *row) {
    const ep_softmax_params_t p = {.rows = 1, .cols = S};
    ep_softmax_fw_f32(&p, row, row);
}

static uint32_t per_sample(const ep_mhsa_params_t *p) {
    return 3 * p->t * p->d + p->heads * p->t * p->t;
}

uint32_t ep_mhsa_saved_bytes(const ep_mhsa_params_t *p) {
    return 4 * p->n * per_sample(p);
}

uint32_t ep_mhsa_scratch_bytes(const ep_mhsa_params_t *p) {
    return 4 * (p->t * p->d + p->t * p->t);
}

/*
 * On a cluster (ep_parallel.h) each kernel is one fork whose phases are separated
 * by ep_par_barrier(): a phase's products are split into blocks of output (every
 * element of a gemm is one fmaf chain over k whichever tile computes it, so any
 * partition gives the serial bits), and the row-wise steps (softmax, its
 * backward) into bands of rows. Results do not depend on the core count; on one
 * core every product is one call over its whole output, as a plain loop would do.
 */
enum { GEMM_NT, GEMM_NN, GEMM_TN };

typedef struct {
    uint8_t kind;
    int acc;            /* gemm_tn: add to C */
    uint32_t R, N, K;
    float alpha;
    const float *A, *B, *bias;
    uint32_t lda, ldb, ldc;
    float *C;
} gemm_t;

/* Rows [r0, r1) × columns [j0, j1) of a gemm. */
static void gemm_block(const gemm_t *g, uint32_t r0, uint32_t r1, uint32_t j0, uint32_t j1) {
    float *C = g->C + r0 * g->ldc + j0;
    switch (g->kind) {
    case GEMM_NT:
        gemm_nt(r1 - r0, j1 - j0, g->K, g->alpha, g->A + r0 * g->lda, g->lda, g->B + j0 * g->ldb, g->ldb, C,
                g->ldc, g->bias ? g->bias + j0 : NULL);
        break;
    case GEMM_NN:
        gemm_nn(r1 - r0, j1 - j0, g->K, g->alpha, g->A + r0 * g->lda, g->lda, g->B + j0, g->ldb, C, g->ldc);
        break;
    default:
        gemm_tn(r1 - r0, j1 - j0, g->K, g->alpha, g->A + r0, g->lda, g->B + j0, g->ldb, C, g->ldc, g->acc);
        break;
    }
}

/* This core's share of a gemm: blocks of 4 rows × 4 columns (1 column when there are
 * too few to keep every core busy), numbered row-major, a contiguous run per core. */
static void gemm_share(const gemm_t *g) {
    const uint32_t cores = ep_par_num_cores();
    if (cores == 1) {
        gemm_block(g, 0, g->R, 0, g->N);
        return;
    }
    const uint32_t rb = (g->R + 3) / 4, unit = rb * ((g->N + 3) / 4) >= 2 * cores ? 4 : 1;
    const uint32_t qb = (g->N + unit - 1) / unit;
    uint32_t lo, hi;
    ep_par_range(rb * qb, &lo, &hi);
    while (lo < hi) {
        const uint32_t band = lo / qb, b0 = lo % qb, b1 = hi - band * qb < qb ? hi - band * qb : qb;
        const uint32_t r0 = 4 * band, r1 = r0 + 4 < g->R ? r0 + 4 : g->R;
        gemm_block(g, r0, r1, b0 * unit, b1 * unit < g->N ? b1 * unit : g->N);
        lo = band * qb + b1;
    }
}

static void gemm_nt_share(uint32_t R, uint32_t N, uint32_t K, float alpha, const float *A, uint32_t lda,
                          const float *B, uint32_t ldb, float *C, uint32_t ldc, const float *bias) {
    const gemm_t g = {GEMM_NT, 0, R, N, K, alpha, A, B, bias, lda, ldb, ldc, C};
    gemm_share(&g);
}

static void gemm_nn_share(uint32_t R, uint32_t N, uint32_t K, float alpha, const float *A, uint32_t lda,
                          const float *B, uint32_t ldb, float *C, uint32_t ldc) {
    const gemm_t g = {GEMM_NN, 0, R, N, K, alpha, A, B, NULL, lda, ldb, ldc, C};
    gemm_share(&g);
}

static void gemm_tn_share(uint32_t R, uint32_t N, uint32_t K, float alpha, const float *A, uint32_t lda,
                          const float *B, uint32_t ldb, float *C, uint32_t ldc, int acc) {
    const gemm_t g = {GEMM_TN, acc, R, N, K, alpha, A, B, NULL, lda, ldb, ldc, C};
    gemm_share(&g);
}

/* This core's (head, band of rows) items of a T-row per-head step: *b_rows rows per
 * band (4 on a cluster, all T on one core). Returns the item range in lo/hi. */
static uint32_t head_items(uint32_t H, uint32_t T, uint32_t *lo, uint32_t *hi, uint32_t *b_rows) {
    *b_rows = ep_par_num_cores() > 1 ? 4 : T;
    const uint32_t bands = (T + *b_rows - 1) / *b_rows;
    ep_par_range(H * bands, lo, hi);
    return bands;
}

/* out[m] (+)= Σ_r y[r][m] over rows × M (bias gradients), for this core's columns. */
static void col_sum_share(uint32_t rows, uint32_t M, const float *restrict y, float *restrict out, int acc) {
    uint32_t m0, m1;
    ep_par_range(M, &m0, &m1);
    for (uint32_t m = m0; m < m1 && !acc; m++) {
        out[m] = 0.0f;
    }
    for (uint32_t r = 0; r < rows; r++, y += M) {
        for (uint32_t m = m0; m < m1; m++) {
            out[m] += y[m];
        }
    }
}

/* O = [P_0 V_0 | … | P_{H-1} V_{H-1}] [T][D] of one sample, from its saved qkv and P:
 * this core's (head, band) items. */
static void attn_out_share(const ep_mhsa_params_t *p, const float *restrict qkv, const float *restrict P,
                           float *restrict O) {
    const uint32_t T = p->t, D = p->d, H = p->heads, E = D / H;
    uint32_t lo, hi, br;
    const uint32_t bands = head_items(H, T, &lo, &hi, &br);
    for (uint32_t it = lo; it < hi; it++) {
        const uint32_t h = it / bands, r0 = (it % bands) * br, r1 = r0 + br < T ? r0 + br : T;
        gemm_nn(r1 - r0, E, T, 1.0f, P + h * T * T + r0 * T, T, qkv + 2 * D + h * E, 3 * D, O + r0 * D + h * E, D);
    }
}

typedef struct {
    const ep_mhsa_params_t *p;
    int acc; /* bw_param: add to the gradients */
    const float *x, *w_in, *b_in, *w_out, *b_out, *dy, *saved, *dqkv_in;
    float *y, *saved_out, *scratch, *dqkv, *dx, *dw_in, *db_in, *dw_out, *db_out;
} mhsa_args_t;

static void fw_core(void *arg) {
    const mhsa_args_t *a = arg;
    const ep_mhsa_params_t *p = a->p;
    const uint32_t n = p->n, T = p->t, D = p->d, H = p->heads, E = D / H, ld = 3 * D;
    const float scale = 1.0f / sqrtf((float)E);
    const uint32_t stride = per_sample(p);
    const float *x = a->x;
    float *y = a->y, *saved = a->saved_out;
    for (uint32_t i = 0; i < n; i++, x += T * D, y += T * D, saved += stride) {
        float *qkv = saved, *P = saved + 3 * T * D;
        gemm_nt_share(T, ld, D, 1.0f, x, D, a->w_in, D, qkv, ld, a->b_in);
        ep_par_barrier();
        uint32_t lo, hi, br;
        const uint32_t bands = head_items(H, T, &lo, &hi, &br);
        for (uint32_t it = lo; it < hi; it++) { /* scores and softmax, a band of rows of a head */
            const uint32_t h = it / bands, r0 = (it % bands) * br, r1 = r0 + br < T ? r0 + br : T;
            float *Ph = P + h * T * T;
            gemm_nt(r1 - r0, T, E, scale, qkv + r0 * ld + h * E, ld, qkv + D + h * E, ld, Ph + r0 * T, T, NULL);
            for (uint32_t t = r0; t < r1; t++) {
                softmax_row(T, Ph + t * T);
            }
        }
        ep_par_barrier();
        attn_out_share(p, qkv, P, a->scratch);
        ep_par_barrier();
        gemm_nt_share(T, D, D, 1.0f, a->scratch, D, a->w_out, D, y, D, a->b_out);
        ep_par_barrier(); /* the next sample rewrites the scratch this one read */
    }
}

void ep_mhsa_fw_f32(const ep_mhsa_params_t *p, const float *restrict x, const float *restrict w_in,
                    const float *restrict b_in, const float *restrict w_out,
                    const float *restrict b_out, float *restrict y, float *restrict saved,
                    float *restrict scratch) {
    const mhsa_args_t a = {.p = p, .x = x, .w_in = w_in, .b_in = b_in, .w_out = w_out, .b_out = b_out,
                           .y = y, .saved_out = saved, .scratch = scratch};
    ep_par_fork(0, fw_core, (void *)&a);
}

static void bw_qkv_core(void *arg) {
    const mhsa_args_t *a = arg;
    const ep_mhsa_params_t *p = a->p;
    const uint32_t n = p->n, T = p->t, D = p->d, H = p->heads, E = D / H, ld = 3 * D;
    const float scale = 1.0f / sqrtf((float)E);
    const uint32_t stride = per_sample(p);
    float *dO = a->scratch, *dS = a->scratch + T * D;
    const float *dy = a->dy, *saved = a->saved;
    float *dqkv = a->dqkv;
    const uint32_t br = ep_par_num_cores() > 1 ? 4 : T, bands = (T + br - 1) / br;
    for (uint32_t i = 0; i < n; i++, dy += T * D, dqkv += T * ld, saved += stride) {
        const float *qkv = saved, *P = saved + 3 * T * D;
        gemm_nn_share(T, D, D, 1.0f, dy, D, a->w_out, D, dO, D);
        ep_par_barrier();
        for (uint32_t h = 0; h < H; h++) {
            const float *Ph = P + h * T * T;
            const float *q = qkv + h * E, *k = q + D, *v = k + D;
            const float *dOh = dO + h * E;
            /* dP = dO_h V_hᵀ, then dS = P ⊙ (dP − rowsum(P ⊙ dP)) row by row, in place */
            uint32_t lo, hi;
            ep_par_range(bands, &lo, &hi);
            for (uint32_t b = lo; b < hi; b++) {
                const uint32_t r0 = b * br, r1 = r0 + br < T ? r0 + br : T;
                gemm_nt(r1 - r0, T, E, 1.0f, dOh + r0 * D, D, v, ld, dS + r0 * T, T, NULL);
                for (uint32_t t = r0; t < r1; t++) {
                    float *ds = dS + t * T;
                    const float *pr = Ph + t * T;
                    float r = 0.0f;
                    for (uint32_t s = 0; s < T; s++) {
                        r += pr[s] * ds[s];
                    }
                    for (uint32_t s = 0; s < T; s++) {
                        ds[s] = pr[s] * (ds[s] - r);
                    }
                }
            }
            ep_par_barrier();
            float *dq = dqkv + h * E, *dk = dq + D, *dv = dk + D;
            gemm_nn_share(T, E, T, scale, dS, T, k, ld, dq, ld);      /* dQ = s · dS K   */
            gemm_tn_share(T, E, T, scale, dS, T, q, ld, dk, ld, 0);   /* dK = s · dSᵀ Q  */
            gemm_tn_share(T, E, T, 1.0f, Ph, T, dOh, D, dv, ld, 0);   /* dV = Pᵀ dO      */
            ep_par_barrier(); /* the next head rewrites dS */
        }
    }
}

static void bw_input_core(void *arg) {
    const mhsa_args_t *a = arg;
    const ep_mhsa_params_t *p = a->p;
    bw_qkv_core(arg); /* ends on a barrier: dqkv is complete */
    gemm_nn_share(p->n * p->t, p->d, 3 * p->d, 1.0f, a->dqkv, 3 * p->d, a->w_in, p->d, a->dx, p->d);
}

void ep_mhsa_bw_qkv_f32(const ep_mhsa_params_t *p, const float *restrict dy,
                        const float *restrict w_out, const float *restrict saved,
                        float *restrict dqkv, float *restrict scratch) {
    const mhsa_args_t a = {.p = p, .dy = dy, .w_out = w_out, .saved = saved, .dqkv = dqkv, .scratch = scratch};
    ep_par_fork(0, bw_qkv_core, (void *)&a);
}

void ep_mhsa_bw_input_f32(const ep_mhsa_params_t *p, const float *restrict dy,
                          const float *restrict w_in, const float *restrict w_out,
                          const float *restrict saved, float *restrict dqkv, float *restrict dx,
                          float *restrict scratch) {
    const mhsa_args_t a = {.p = p, .dy = dy, .w_in = w_in, .w_out = w_out, .saved = saved, .dqkv = dqkv,
                           .dx = dx, .scratch = scratch};
    ep_par_fork(0, bw_input_core, (void *)&a);
}

/* Sample by sample, each gradient a running sum over the samples in order (the first
 * overwrites unless a->acc): per sample the same products as over the whole batch, so a
 * call per sample with accumulation (MHSA_Q8) gives these bits. */
static void bw_param_core(void *arg) {
    const mhsa_args_t *a = arg;
    const ep_mhsa_params_t *p = a->p;
    const uint32_t n = p->n, T = p->t, D = p->d, stride = per_sample(p);
    const float *dy = a->dy, *x = a->x, *saved = a->saved, *dqkv = a->dqkv_in;
    for (uint32_t i = 0; i < n; i++, dy += T * D, x += T * D, dqkv += 3 * T * D, saved += stride) {
        const int acc = a->acc || i > 0;
        gemm_tn_share(3 * D, D, T, 1.0f, dqkv, 3 * D, x, D, a->dw_in, D, acc);
        col_sum_share(T, 3 * D, dqkv, a->db_in, acc);
        col_sum_share(T, D, dy, a->db_out, acc);
        attn_out_share(p, saved, saved + 3 * T * D, a->scratch);
        ep_par_barrier();
        gemm_tn_share(D, D, T, 1.0f, dy, D, a->scratch, D, a->dw_out, D, acc);
        ep_par_barrier(); /* the next sample rewrites the scratch */
    }
}

static void bw_param(const ep_mhsa_params_t *p, const float *dy, const float *x, const float *saved,
                     const float *dqkv, float *dw_in, float *db_in, float *dw_out, float *db_out, float *scratch,
                     int acc) {
    const mhsa_args_t a = {.p = p, .acc = acc, .dy = dy, .x = x, .saved = saved, .dqkv_in = dqkv, .dw_in = dw_in,
                           .db_in = db_in, .dw_out = dw_out, .db_out = db_out, .scratch = scratch};
    ep_par_fork(0, bw_param_core, (void *)&a);
}

void ep_mhsa_bw_param_f32(const ep_mhsa_params_t *p, const float *restrict dy,
                          const float *restrict x, const float *restrict saved,
                          const float *restrict dqkv, float *restrict dw_in, float *restrict db_in,
                          float *restrict dw_out, float *restrict db_out, float *restrict scratch) {
    bw_param(p, dy, x, saved, dqkv, dw_in, db_in, dw_out, db_out, scratch, 0);
}

void ep_mhsa_bw_param_add_f32(const ep_mhsa_params_t *p, const float *restrict dy,
                              const float *restrict x, const float *restrict saved,
                              const float *restrict dqkv, float *restrict dw_in, float *restrict db_in,
                              float *restrict dw_out, float *restrict db_out, float *restrict scratch) {
    bw_param(p, dy, x, saved, dqkv, dw_in, db_in, dw_out, db_out, scratch, 1);
}

/* ------------------------------------------------------------------------- */
/* Registry: MHSA (contract: docs/ops/attn_optim.md)                          */
/*   FW        in [x, w_in, b_in, w_out, b_out, scratch]  out [y, saved]       */
/*   BW_INPUT  in [dy, w_in, w_out, saved, scratch]       out [dqkv(, dx)]     */
/*   BW_PARAM  in [dy, x, saved, dqkv, scratch]    out [dw_in, db_in, dw_out, db_out] */
/*   iattr[0] = heads (≥ 1, divides D); x, y, dy, dx batched f32 [T][D].      */
/* ------------------------------------------------------------------------- */

static bool is_f32(const ep_model_t *m, uint16_t t, bool batched, uint64_t elems) {
    const ep_tensor_t *x = &m->tensors[t];
    return x->dtype == EP_DTYPE_F32 && ((x->flags & EP_TF_BATCHED) != 0) == batched && x->elems == elems;
}

static bool is_mat(const ep_model_t *m, uint16_t t, uint32_t rows, uint32_t cols) {
    return ep_tensor_is(m, t, EP_DTYPE_F32, false, 2) && m->tensors[t].dims[0] == rows &&
           m->tensors[t].dims[1] == cols;
}

static bool is_vec(const ep_model_t *m, uint16_t t, uint32_t len) {
    return ep_tensor_is(m, t, EP_DTYPE_F32, false, 1) && m->tensors[t].dims[0] == len;
}

/* The scratch input: unbatched f32 of at least (T·D + T·T) floats. */
static bool scratch_ok(const ep_model_t *m, uint16_t s, uint32_t T, uint32_t D) {
    const ep_tensor_t *x = &m->tensors[s];
    return x->dtype == EP_DTYPE_F32 && (x->flags & EP_TF_BATCHED) == 0 &&
           (uint64_t)x->elems >= (uint64_t)T * D + (uint64_t)T * T;
}

/* Saved state per sample: T·(3D + H·T) floats. */
static bool saved_ok(const ep_model_t *m, uint16_t s, uint32_t T, uint32_t D, uint32_t H) {
    return is_f32(m, s, true, (uint64_t)T * (3u * (uint64_t)D + (uint64_t)H * T));
}

/* Outputs disjoint from every input and each other; the scratch input (written)
 * disjoint from every other input. */
static bool node_disjoint(const ep_model_t *m, const ep_node_t *nd, uint16_t scratch) {
    for (uint8_t o = 0; o < nd->n_out; o++) {
        for (uint8_t i = 0; i < nd->n_in; i++) {
            if (ep_overlap(m, nd->out[o], nd->in[i])) {
                return false;
            }
        }
        for (uint8_t j = (uint8_t)(o + 1); j < nd->n_out; j++) {
            if (ep_overlap(m, nd->out[o], nd->out[j])) {
                return false;
            }
        }
    }
    for (uint8_t i = 0; i < nd->n_in; i++) {
        if (nd->in[i] != scratch && ep_overlap(m, nd->in[i], scratch)) {
            return false;
        }
    }
    return true;
}

static ep_status_t mhsa_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    static const uint8_t n_in[3] = {6, 5, 5};
    if (nd->fn > EP_FN_BW_PARAM) {
        return ep_reject(why, EP_WHY("mhsa: unknown fn"));
    }
    const bool fw = nd->fn == EP_FN_FW, bwi = nd->fn == EP_FN_BW_INPUT;
    const bool outs_ok = fw ? nd->n_out == 2 : bwi ? (nd->n_out == 1 || nd->n_out == 2) : nd->n_out == 4;
    if (nd->n_in != n_in[nd->fn] || !outs_ok) {
        return ep_reject(why, fw    ? EP_WHY("mhsa.fw: needs inputs (x, w_in, b_in, w_out, b_out, scratch) and outputs (y, saved)")
                              : bwi ? EP_WHY("mhsa.bw_input: needs inputs (dy, w_in, w_out, saved, scratch) and outputs (dqkv[, dx])")
                                    : EP_WHY("mhsa.bw_param: needs inputs (dy, x, saved, dqkv, scratch) and outputs (dw_in, db_in, dw_out, db_out)"));
    }
    /* the [T][D] activation that fixes the shapes: x (fw) or dy (bw) */
    const uint16_t a = nd->in[0];
    if (!ep_tensor_is(m, a, EP_DTYPE_F32, true, 2)) {
        return ep_reject(why, fw    ? EP_WHY("mhsa.fw: x must be batched f32 [T][D]")
                              : bwi ? EP_WHY("mhsa.bw_input: dy must be batched f32 [T][D]")
                                    : EP_WHY("mhsa.bw_param: dy must be batched f32 [T][D]"));
    }
    const uint32_t T = m->tensors[a].dims[0], D = m->tensors[a].dims[1], H = nd->iattr[0];
    if (H == 0 || D % H != 0) {
        return ep_reject(why, EP_WHY("mhsa: heads (iattr[0]) must be >= 1 and divide D"));
    }
    if (3u * D > 0xFFFFu) {
        return ep_reject(why, EP_WHY("mhsa: 3·D does not fit a tensor dim"));
    }
    if (fw) {
        const uint16_t x = nd->in[0], y = nd->out[0];
        if (!ep_tensor_is(m, y, EP_DTYPE_F32, true, 2) || !ep_same_shape(m, x, y)) {
            return ep_reject(why, EP_WHY("mhsa.fw: y must be batched f32 shaped like x [T][D]"));
        }
        if (!is_mat(m, nd->in[1], 3 * D, D) || !is_vec(m, nd->in[2], 3 * D) || !is_mat(m, nd->in[3], D, D) ||
            !is_vec(m, nd->in[4], D)) {
            return ep_reject(why, EP_WHY("mhsa.fw: want w_in f32 [3D][D], b_in [3D], w_out [D][D], b_out [D]"));
        }
        if (!saved_ok(m, nd->out[1], T, D, H)) {
            return ep_reject(why, EP_WHY("mhsa.fw: saved must be batched f32 of T*(3D + heads*T) elements"));
        }
        if (!scratch_ok(m, nd->in[5], T, D)) {
            return ep_reject(why, EP_WHY("mhsa.fw: scratch must be unbatched f32 of >= T*D + T*T elements"));
        }
        if (!node_disjoint(m, nd, nd->in[5])) {
            return ep_reject(why, EP_WHY("mhsa.fw: y, saved or scratch overlaps another tensor of the node"));
        }
        return EP_OK;
    }
    if (bwi) {
        if (!is_mat(m, nd->in[1], 3 * D, D) || !is_mat(m, nd->in[2], D, D)) {
            return ep_reject(why, EP_WHY("mhsa.bw_input: want w_in f32 [3D][D] and w_out [D][D]"));
        }
        if (!saved_ok(m, nd->in[3], T, D, H)) {
            return ep_reject(why, EP_WHY("mhsa.bw_input: saved must be batched f32 of T*(3D + heads*T) elements"));
        }
        if (!scratch_ok(m, nd->in[4], T, D)) {
            return ep_reject(why, EP_WHY("mhsa.bw_input: scratch must be unbatched f32 of >= T*D + T*T elements"));
        }
        if (!is_f32(m, nd->out[0], true, 3ull * T * D)) {
            return ep_reject(why, EP_WHY("mhsa.bw_input: dqkv must be batched f32 of T*3D elements"));
        }
        if (nd->n_out == 2 && (!ep_tensor_is(m, nd->out[1], EP_DTYPE_F32, true, 2) || !ep_same_shape(m, nd->out[1], a))) {
            return ep_reject(why, EP_WHY("mhsa.bw_input: dx must be batched f32 shaped like dy [T][D]"));
        }
        if (!node_disjoint(m, nd, nd->in[4])) {
            return ep_reject(why, EP_WHY("mhsa.bw_input: dqkv, dx or scratch overlaps another tensor of the node"));
        }
        return EP_OK;
    }
    if (!ep_tensor_is(m, nd->in[1], EP_DTYPE_F32, true, 2) || !ep_same_shape(m, nd->in[1], a)) {
        return ep_reject(why, EP_WHY("mhsa.bw_param: x must be batched f32 shaped like dy [T][D]"));
    }
    if (!saved_ok(m, nd->in[2], T, D, H)) {
        return ep_reject(why, EP_WHY("mhsa.bw_param: saved must be batched f32 of T*(3D + heads*T) elements"));
    }
    if (!is_f32(m, nd->in[3], true, 3ull * T * D)) {
        return ep_reject(why, EP_WHY("mhsa.bw_param: dqkv must be batched f32 of T*3D elements"));
    }
    if (!scratch_ok(m, nd->in[4], T, D)) {
        return ep_reject(why, EP_WHY("mhsa.bw_param: scratch must be unbatched f32 of >= T*D elements"));
    }
    if (!is_mat(m, nd->out[0], 3 * D, D) || !is_vec(m, nd->out[1], 3 * D) || !is_mat(m, nd->out[2], D, D) ||
        !is_vec(m, nd->out[3], D)) {
        return ep_reject(why, EP_WHY("mhsa.bw_param: want dw_in f32 [3D][D], db_in [3D], dw_out [D][D], db_out [D]"));
    }
    if (!node_disjoint(m, nd, nd->in[4])) {
        return ep_reject(why, EP_WHY("mhsa.bw_param: a gradient or scratch overlaps another tensor of the node"));
    }
    return EP_OK;
}

static ep_mhsa_params_t mhsa_shape(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_tensor_t *a = &c->model->tensors[nd->in[0]];
    const ep_mhsa_params_t p = {c->n, a->dims[0], a->dims[1], nd->iattr[0]};
    return p;
}

static void mhsa_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_mhsa_params_t p = mhsa_shape(c, nd);
    ep_mhsa_fw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->in[2]),
                   ep_ctx_f32(c, nd->in[3]), ep_ctx_f32(c, nd->in[4]), ep_ctx_f32(c, nd->out[0]),
                   ep_ctx_f32(c, nd->out[1]), ep_ctx_f32(c, nd->in[5]));
}

static void mhsa_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_mhsa_params_t p = mhsa_shape(c, nd);
    if (nd->n_out == 1) { /* a layer whose dx nobody needs: dqkv for bw_param only */
        ep_mhsa_bw_qkv_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[2]), ep_ctx_f32(c, nd->in[3]),
                           ep_ctx_f32(c, nd->out[0]), ep_ctx_f32(c, nd->in[4]));
        return;
    }
    ep_mhsa_bw_input_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->in[2]),
                         ep_ctx_f32(c, nd->in[3]), ep_ctx_f32(c, nd->out[0]), ep_ctx_f32(c, nd->out[1]),
                         ep_ctx_f32(c, nd->in[4]));
}

static void mhsa_bw_param(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_mhsa_params_t p = mhsa_shape(c, nd);
    ep_mhsa_bw_param_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->in[2]),
                         ep_ctx_f32(c, nd->in[3]), ep_ctx_f32(c, nd->out[0]), ep_ctx_f32(c, nd->out[1]),
                         ep_ctx_f32(c, nd->out[2]), ep_ctx_f32(c, nd->out[3]), ep_ctx_f32(c, nd->in[4]));
}

const ep_op_t ep_op_mhsa = {
    .name = "mhsa",
    .prepare = mhsa_prepare,
    .fn = {[EP_FN_FW] = mhsa_fw, [EP_FN_BW_INPUT] = mhsa_bw_input, [EP_FN_BW_PARAM] = mhsa_bw_param},
};
