/*
 * ep_linear.c — LINEAR: y = x Wᵀ + b, its input gradient and its parameter gradients.
 *
 * As nn.Linear, the layer maps rows of K to rows of M: a sample holds R rows
 * (R = 1 for a feature vector, R = T tokens for a transformer's [T][D]), so
 * y has R·M elements per sample and x has R·K. Everything follows from the
 * tensors: M and K from W [M, K], R = y elements / M. x may have any shape with
 * R·K elements (a flatten layer before a linear one costs nothing).
 */
#include <math.h>

#include "ep_ops.h"
#include "ep_parallel.h"

static bool is_batched_f32(const ep_model_t *m, uint16_t t) {
    return m->tensors[t].dtype == EP_DTYPE_F32 && (m->tensors[t].flags & EP_TF_BATCHED) != 0;
}

/* W is an unbatched f32 [M, K]; out (y, dy) has R·M and in (x, dx) R·K elements per sample. */
static bool shapes_ok(const ep_model_t *m, uint16_t w, uint16_t out, uint16_t in) {
    if (!ep_tensor_is(m, w, EP_DTYPE_F32, false, 2) || !is_batched_f32(m, out) || !is_batched_f32(m, in)) {
        return false;
    }
    const uint32_t M = m->tensors[w].dims[0], K = m->tensors[w].dims[1];
    const uint32_t rows = m->tensors[out].elems / M;
    return rows * M == m->tensors[out].elems && (uint64_t)rows * K == m->tensors[in].elems;
}

/* An unbatched f32 [M] vector, M from W [M, K]. */
static bool is_bias(const ep_model_t *m, uint16_t t, uint16_t w) {
    return ep_tensor_is(m, t, EP_DTYPE_F32, false, 1) && m->tensors[t].dims[0] == m->tensors[w].dims[0];
}

static ep_status_t prepare_fw(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->n_in != 3 || nd->n_out != 1) {
        return ep_reject(why, EP_WHY("linear.fw: needs inputs (x, W, b) and output (y)"));
    }
    const uint16_t x = nd->in[0], w = nd->in[1], b = nd->in[2], y = nd->out[0];
    if (!shapes_ok(m, w, y, x)) {
        return ep_reject(why, EP_WHY("linear.fw: want W f32 [M, K], x and y batched f32 of R*K and R*M elements"));
    }
    if (!is_bias(m, b, w)) {
        return ep_reject(why, EP_WHY("linear.fw: b is not an unbatched f32 [M] matching y[M]"));
    }
    if (ep_overlap(m, y, x) || ep_overlap(m, y, w) || ep_overlap(m, y, b)) {
        return ep_reject(why, EP_WHY("linear.fw: y overlaps an input"));
    }
    return EP_OK;
}

static ep_status_t prepare_bw_input(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->n_in != 2 || nd->n_out != 1) {
        return ep_reject(why, EP_WHY("linear.bw_input: needs inputs (dy, W) and output (dx)"));
    }
    const uint16_t dy = nd->in[0], w = nd->in[1], dx = nd->out[0];
    if (!shapes_ok(m, w, dy, dx)) {
        return ep_reject(why, EP_WHY("linear.bw_input: want W f32 [M, K], dx and dy batched f32 of R*K and R*M elements"));
    }
    if (ep_overlap(m, dx, dy) || ep_overlap(m, dx, w)) {
        return ep_reject(why, EP_WHY("linear.bw_input: dx overlaps an input"));
    }
    return EP_OK;
}

static ep_status_t prepare_bw_param(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->n_in != 2 || nd->n_out != 2) {
        return ep_reject(why, EP_WHY("linear.bw_param: needs inputs (dy, x) and outputs (dW, db)"));
    }
    const uint16_t dy = nd->in[0], x = nd->in[1], dw = nd->out[0], db = nd->out[1];
    if (!shapes_ok(m, dw, dy, x)) {
        return ep_reject(why, EP_WHY("linear.bw_param: want dW f32 [M, K], x and dy batched f32 of R*K and R*M elements"));
    }
    if (!is_bias(m, db, dw)) {
        return ep_reject(why, EP_WHY("linear.bw_param: db is not an unbatched f32 [M] matching dy[M]"));
    }
    if (ep_overlap(m, dw, dy) || ep_overlap(m, dw, x) || ep_overlap(m, db, dy) ||
        ep_overlap(m, db, x) || ep_overlap(m, dw, db)) {
        return ep_reject(why, EP_WHY("linear.bw_param: dW or db overlaps another tensor of the node"));
    }
    return EP_OK;
}

static ep_status_t linear_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    switch (nd->fn) {
    case EP_FN_FW:
        return prepare_fw(m, nd, why);
    case EP_FN_BW_INPUT:
        return prepare_bw_input(m, nd, why);
    case EP_FN_BW_PARAM:
        return prepare_bw_param(m, nd, why);
    default:
        return ep_reject(why, EP_WHY("linear: unknown fn"));
    }
}

/* n·R rows of K → M, from W (or dW) [M, K] and the row count of out. */
static ep_linear_params_t shapes(const ep_ctx_t *c, uint16_t w, uint16_t out) {
    const uint32_t M = c->model->tensors[w].dims[0], K = c->model->tensors[w].dims[1];
    const uint32_t rows = c->n * (c->model->tensors[out].elems / M);
    const ep_linear_params_t p = {.in = {rows, K}, .out = {rows, M}};
    return p;
}

static void linear_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_linear_params_t p = shapes(c, nd->in[1], nd->out[0]);
    ep_linear_fw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->in[2]),
                     ep_ctx_f32(c, nd->out[0]));
}

static void linear_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_linear_params_t p = shapes(c, nd->in[1], nd->in[0]);
    ep_linear_bw_input_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->out[0]));
}

static void linear_bw_param(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_linear_params_t p = shapes(c, nd->out[0], nd->in[0]);
    ep_linear_bw_param_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->out[0]),
                           ep_ctx_f32(c, nd->out[1]));
}

const ep_op_t ep_op_linear = {
    .name = "linear",
    .prepare = linear_prepare,
    .fn = {[EP_FN_FW] = linear_fw, [EP_FN_BW_INPUT] = linear_bw_input, [EP_FN_BW_PARAM] = linear_bw_param},
};

/*
 * The three kernels are one product shape: c[r][q] = init[q] + Σ_t A(r, t) · B(q, t)
 * for r < R, q < Q, t < T, with A(r, t) = a[r·ar + t·at] and B(q, t) = b[q·bq + t·bt]:
 *   fw        y  = x  Wᵀ + b   R = rows, Q = M, T = K   a = x  (K, 1)  b = W (K, 1)
 *   bw_input  dx = dy W        R = rows, Q = K, T = M   a = dy (M, 1)  b = W (1, K)
 *   bw_param  dW = dyᵀ x       R = M,    Q = K, T = rows a = dy (1, M) b = x (1, K)
 * Tiles of 4×4 outputs live in 16 registers (the last R % 4 rows: 2×4 and 1×4,
 * so a core whose share ends the product is not slowed by a scalar tail); each
 * step of t loads 4 values of A and 4 of B for 16 fused multiply-adds (fmaf: one
 * VFMA on the M4F, and one rounding per term instead of two). Sums run in t order from init (or 0).
 * c's rows are ldc apart (Q for a whole product, more for a core's block of columns).
 */
static void product_f32(uint32_t R, uint32_t Q, uint32_t T, const float *restrict a, uint32_t ar, uint32_t at,
                        const float *restrict b, uint32_t bq, uint32_t bt, const float *restrict init,
                        float *restrict c, uint32_t ldc) {
    uint32_t r = 0;
    for (; r + 4 <= R; r += 4) {
        const float *a0 = a + r * ar, *a1 = a0 + ar, *a2 = a1 + ar, *a3 = a2 + ar;
        float *c0 = c + r * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
        uint32_t q = 0;
        for (; q + 4 <= Q; q += 4) {
            const float *b0 = b + q * bq, *b1 = b0 + bq, *b2 = b1 + bq, *b3 = b2 + bq;
            float s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33;
            s00 = s10 = s20 = s30 = init ? init[q] : 0.0f;
            s01 = s11 = s21 = s31 = init ? init[q + 1] : 0.0f;
            s02 = s12 = s22 = s32 = init ? init[q + 2] : 0.0f;
            s03 = s13 = s23 = s33 = init ? init[q + 3] : 0.0f;
#define EP_TILE_STEP(x0, x1, x2, x3, w0, w1, w2, w3)                                                         \
    do {                                                                                                    \
        s00 = fmaf(x0, w0, s00); s01 = fmaf(x0, w1, s01); s02 = fmaf(x0, w2, s02); s03 = fmaf(x0, w3, s03); \
        s10 = fmaf(x1, w0, s10); s11 = fmaf(x1, w1, s11); s12 = fmaf(x1, w2, s12); s13 = fmaf(x1, w3, s13); \
        s20 = fmaf(x2, w0, s20); s21 = fmaf(x2, w1, s21); s22 = fmaf(x2, w2, s22); s23 = fmaf(x2, w3, s23); \
        s30 = fmaf(x3, w0, s30); s31 = fmaf(x3, w1, s31); s32 = fmaf(x3, w2, s32); s33 = fmaf(x3, w3, s33); \
    } while (0)
            uint32_t t = 0, ia = 0, ib = 0;
            if (at == 1 && bt == 1) {
                /* both contiguous in t (fw): two steps per pass, so loads use immediate offsets */
                for (; t + 2 <= T; t += 2, ia += 2, ib += 2) {
                    EP_TILE_STEP(a0[ia], a1[ia], a2[ia], a3[ia], b0[ib], b1[ib], b2[ib], b3[ib]);
                    EP_TILE_STEP(a0[ia + 1], a1[ia + 1], a2[ia + 1], a3[ia + 1],
                                 b0[ib + 1], b1[ib + 1], b2[ib + 1], b3[ib + 1]);
                }
            } else if (ar == 1 && bq == 1) {
                /* the 4 rows and the 4 columns are each adjacent (bw_param): one pointer each */
                for (; t < T; t++, ia += at, ib += bt) {
                    const float *pa = a0 + ia, *pb = b0 + ib;
                    EP_TILE_STEP(pa[0], pa[1], pa[2], pa[3], pb[0], pb[1], pb[2], pb[3]);
                }
            } else if (at == 1 && bq == 1) {
                /* rows contiguous in t, the 4 columns adjacent (bw_input) */
                for (; t + 2 <= T; t += 2, ia += 2, ib += 2 * bt) {
                    const float *pb = b0 + ib, *pb1 = pb + bt;
                    EP_TILE_STEP(a0[ia], a1[ia], a2[ia], a3[ia], pb[0], pb[1], pb[2], pb[3]);
                    EP_TILE_STEP(a0[ia + 1], a1[ia + 1], a2[ia + 1], a3[ia + 1], pb1[0], pb1[1], pb1[2], pb1[3]);
                }
            }
            for (; t < T; t++, ia += at, ib += bt) {
                EP_TILE_STEP(a0[ia], a1[ia], a2[ia], a3[ia], b0[ib], b1[ib], b2[ib], b3[ib]);
            }
#undef EP_TILE_STEP
            c0[q] = s00; c0[q + 1] = s01; c0[q + 2] = s02; c0[q + 3] = s03;
            c1[q] = s10; c1[q + 1] = s11; c1[q + 2] = s12; c1[q + 3] = s13;
            c2[q] = s20; c2[q + 1] = s21; c2[q + 2] = s22; c2[q + 3] = s23;
            c3[q] = s30; c3[q + 1] = s31; c3[q + 2] = s32; c3[q + 3] = s33;
        }
        for (; q < Q; q++) { /* the last Q % 4 columns of these 4 rows */
            const float *bq0 = b + q * bq;
            float s0, s1, s2, s3;
            s0 = s1 = s2 = s3 = init ? init[q] : 0.0f;
            for (uint32_t t = 0, ia = 0, ib = 0; t < T; t++, ia += at, ib += bt) {
                const float w = bq0[ib];
                s0 = fmaf(a0[ia], w, s0);
                s1 = fmaf(a1[ia], w, s1);
                s2 = fmaf(a2[ia], w, s2);
                s3 = fmaf(a3[ia], w, s3);
            }
            c0[q] = s0; c1[q] = s1; c2[q] = s2; c3[q] = s3;
        }
    }
    for (; r + 2 <= R; r += 2) { /* two of the last R % 4 rows: tiles of 2 × 4 */
        const float *a0 = a + r * ar, *a1 = a0 + ar;
        float *c0 = c + r * ldc, *c1 = c0 + ldc;
        uint32_t q = 0;
        for (; q + 4 <= Q; q += 4) {
            const float *b0 = b + q * bq, *b1 = b0 + bq, *b2 = b1 + bq, *b3 = b2 + bq;
            float s00, s01, s02, s03, s10, s11, s12, s13;
            s00 = s10 = init ? init[q] : 0.0f;
            s01 = s11 = init ? init[q + 1] : 0.0f;
            s02 = s12 = init ? init[q + 2] : 0.0f;
            s03 = s13 = init ? init[q + 3] : 0.0f;
            for (uint32_t t = 0, ia = 0, ib = 0; t < T; t++, ia += at, ib += bt) {
                const float x0 = a0[ia], x1 = a1[ia], w0 = b0[ib], w1 = b1[ib], w2 = b2[ib], w3 = b3[ib];
                s00 = fmaf(x0, w0, s00); s01 = fmaf(x0, w1, s01); s02 = fmaf(x0, w2, s02); s03 = fmaf(x0, w3, s03);
                s10 = fmaf(x1, w0, s10); s11 = fmaf(x1, w1, s11); s12 = fmaf(x1, w2, s12); s13 = fmaf(x1, w3, s13);
            }
            c0[q] = s00; c0[q + 1] = s01; c0[q + 2] = s02; c0[q + 3] = s03;
            c1[q] = s10; c1[q + 1] = s11; c1[q + 2] = s12; c1[q + 3] = s13;
        }
        for (; q < Q; q++) {
            const float *bq0 = b + q * bq;
            float s0, s1;
            s0 = s1 = init ? init[q] : 0.0f;
            for (uint32_t t = 0, ia = 0, ib = 0; t < T; t++, ia += at, ib += bt) {
                s0 = fmaf(a0[ia], bq0[ib], s0);
                s1 = fmaf(a1[ia], bq0[ib], s1);
            }
            c0[q] = s0; c1[q] = s1;
        }
    }
    if (r < R) { /* the last row: tiles of 1 × 4 */
        const float *ar0 = a + r * ar;
        float *cr = c + r * ldc;
        uint32_t q = 0;
        for (; q + 4 <= Q; q += 4) {
            const float *b0 = b + q * bq, *b1 = b0 + bq, *b2 = b1 + bq, *b3 = b2 + bq;
            float s0 = init ? init[q] : 0.0f, s1 = init ? init[q + 1] : 0.0f;
            float s2 = init ? init[q + 2] : 0.0f, s3 = init ? init[q + 3] : 0.0f;
            for (uint32_t t = 0, ia = 0, ib = 0; t < T; t++, ia += at, ib += bt) {
                const float x = ar0[ia];
                s0 = fmaf(x, b0[ib], s0); s1 = fmaf(x, b1[ib], s1); s2 = fmaf(x, b2[ib], s2); s3 = fmaf(x, b3[ib], s3);
            }
            cr[q] = s0; cr[q + 1] = s1; cr[q + 2] = s2; cr[q + 3] = s3;
        }
        for (; q < Q; q++) {
            const float *bq0 = b + q * bq;
            float s = init ? init[q] : 0.0f;
            for (uint32_t t = 0, ia = 0, ib = 0; t < T; t++, ia += at, ib += bt) {
                s = fmaf(ar0[ia], bq0[ib], s);
            }
            cr[q] = s;
        }
    }
}

/*
 * The product on the cluster: every element of c is one fmaf chain over t from
 * init, whichever tile computes it, so any partition of c gives the serial bits
 * (bit-identical at any core count). c is cut into blocks of 4 rows × U columns
 * (U = 4, or 1 when there are too few 4×4 blocks to keep every core busy),
 * numbered row-major; each core takes a contiguous run of blocks, one product
 * call per row band. For bw_param the cores also share db's elements.
 */
typedef struct {
    uint32_t R, Q, T, ar, at, bq, bt;
    const float *a, *b, *init;
    float *c;
    /* bw_param: db[m] = Σ_i dy[i][m] over n rows of M */
    uint32_t n, M;
    const float *dy;
    float *db;
} product_args_t;

static void product_core(void *arg) {
    const product_args_t *p = arg;
    const uint32_t cores = ep_par_num_cores();
    const uint32_t rb = (p->R + 3) / 4, unit = rb * ((p->Q + 3) / 4) >= 2 * cores ? 4 : 1;
    const uint32_t qb = (p->Q + unit - 1) / unit;
    uint32_t lo, hi;
    ep_par_range(rb * qb, &lo, &hi);
    while (lo < hi) {
        const uint32_t band = lo / qb, b0 = lo % qb, b1 = hi - band * qb < qb ? hi - band * qb : qb;
        const uint32_t r0 = 4 * band, nr = p->R - r0 < 4 ? p->R - r0 : 4;
        const uint32_t q0 = b0 * unit, q1 = b1 * unit < p->Q ? b1 * unit : p->Q;
        product_f32(nr, q1 - q0, p->T, p->a + r0 * p->ar, p->ar, p->at, p->b + q0 * p->bq, p->bq, p->bt,
                    p->init ? p->init + q0 : NULL, p->c + r0 * p->Q + q0, p->Q);
        lo = band * qb + b1;
    }
    if (p->db) {
        ep_par_range(p->M, &lo, &hi);
        for (uint32_t m = lo; m < hi; m++) {
            float s = 0.0f;
            for (uint32_t i = 0; i < p->n; i++) {
                s += p->dy[i * p->M + m];
            }
            p->db[m] = s;
        }
    }
}

/* On one core (every port without a cluster) the serial product, unchanged. */
static void product_run(const product_args_t *a) {
    if (ep_par_num_cores() > 1) {
        ep_par_fork(0, product_core, (void *)a);
        return;
    }
    product_f32(a->R, a->Q, a->T, a->a, a->ar, a->at, a->b, a->bq, a->bt, a->init, a->c, a->Q);
    if (a->db) {
        for (uint32_t m = 0; m < a->M; m++) {
            float s = 0.0f;
            for (uint32_t i = 0; i < a->n; i++) {
                s += a->dy[i * a->M + m];
            }
            a->db[m] = s;
        }
    }
}

void ep_linear_fw_f32(const ep_linear_params_t *p, const float *restrict x, const float *restrict w,
                      const float *restrict b, float *restrict y) {
    const uint32_t n = p->in.n, K = p->in.c, M = p->out.c;
    const product_args_t a = {.R = n, .Q = M, .T = K, .a = x, .ar = K, .at = 1, .b = w, .bq = K, .bt = 1,
                              .init = b, .c = y};
    product_run(&a);
}

void ep_linear_bw_input_f32(const ep_linear_params_t *p, const float *restrict dy,
                            const float *restrict w, float *restrict dx) {
    const uint32_t n = p->in.n, K = p->in.c, M = p->out.c;
    const product_args_t a = {.R = n, .Q = K, .T = M, .a = dy, .ar = M, .at = 1, .b = w, .bq = 1, .bt = K,
                              .c = dx};
    product_run(&a);
}

void ep_linear_bw_param_f32(const ep_linear_params_t *p, const float *restrict dy,
                            const float *restrict x, float *restrict dw, float *restrict db) {
    const uint32_t n = p->in.n, K = p->in.c, M = p->out.c;
    const product_args_t a = {.R = M, .Q = K, .T = n, .a = dy, .ar = 1, .at = M, .b = x, .bq = 1, .bt = K,
                              .c = dw, .n = n, .M = M, .dy = dy, .db = db};
    product_run(&a);
}
