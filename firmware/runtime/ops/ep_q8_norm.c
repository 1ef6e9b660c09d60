/*
 * ep_q8_norm.c — int8 batch norm, layer norm and dropout (the NORM op family, zephyr/Kconfig):
 *
 *   BATCHNORM_Q8  FW  stats  in (x s8, e_x)                       out (saved, running_mean, running_var)
 *                 FW  train  in (x, e_x, gamma, beta, saved)       out (y s8, e_y)        y may alias x
 *                 FW  eval   in (x, e_x, gamma, beta, rm, rv)      out (y, e_y)           y may alias x
 *                 BW_INPUT   in (dy s8, e_dy, x, e_x, gamma, saved) out (dx s8, e_dx, scratch)  dx may alias dy
 *                 BW_PARAM   in (dy, e_dy, x, e_x, saved)          out (dgamma, dbeta)
 *   LAYERNORM_Q8  FW         in (x s8, e_x, gamma, beta)          out (y s8, e_y, saved, scratch)  y may alias x
 *                 BW_INPUT   in (dy s8, e_dy, x, e_x, gamma, saved) out (dx s8, e_dx, scratch)  dx may alias dy
 *                 BW_PARAM   in (dy, e_dy, x, e_x, saved)          out (dgamma, dbeta, scratch)
 *   DROPOUT_Q8    FW         in (x s8, e_x)                       out (y s8, e_y, mask, state)  y may alias x
 *                 BW_INPUT   in (dy s8, e_dy, mask)               out (dx s8, e_dx)      dx may alias dy
 *
 * The f32 nodes they stand for: BATCHNORM (its reductions are the f32 kernels' own loop
 * bodies, EP_NORM_MOMENTS_BODY / EP_NORM_VAR_BODY / EP_NORM_DSUMS_BODY of ep_norm_act.h,
 * over the codes; the mean's pass, exact in f32, as an integer sum), LAYERNORM (the f32
 * kernels on one dequantized row at a time) and DROPOUT in train mode (the f32 kernel on
 * short chunks). The batch norm's training
 * forward is two nodes (stats, then train) because a node has at most four outputs.
 * Each computes exactly what DEQUANTIZE, the f32 node and QUANTIZE compute in a row,
 * bit for bit, without the f32 tensors (docs/ops/int8.md, "The layers between convs in
 * int8"): operands are read from their codes (code · 2^e, exact, as DEQUANTIZE), and an
 * int8 output takes two passes: the largest magnitude first (its exponent, as QUANTIZE
 * picks it), then the codes. On a cluster the batch norm splits by channel (its codes
 * and input gradient through ep_q8_two_pass, its statistics and parameter gradient
 * through ep_q8_split); the layer norm and dropout run on one core.
 */
#include <math.h>
#include <stddef.h>

#include "ep_norm_act.h"
#include "ep_q8.h"

enum { BNQ_TRAIN = 0, BNQ_EVAL = 1, BNQ_STATS = 2 };

#define LOAD_S8(p, j) ((float)(p)[j] * s)
#define LOAD_S8_G(p, j) ((float)(p)[j] * sg)
#define LOAD_S8_X(p, j) ((float)(p)[j] * sx)

static void moments_s8(const int8_t *x, float s, uint32_t reps, uint32_t len, uint32_t stride, float *mean,
                       float *var) {
    EP_NORM_MOMENTS_BODY(int8_t, LOAD_S8);
}

static void dsums_s8(const int8_t *dy, float sg, const int8_t *x, float sx, uint32_t reps, uint32_t len,
                     uint32_t stride, float mean, float *sdy, float *sdyx) {
    EP_NORM_DSUMS_BODY(int8_t, LOAD_S8_G, int8_t, LOAD_S8_X);
}

/* A channel with at least this many elements goes through a code table (ep_q8.h): the
 * map of its 256 code values computed once, then a lookup per element. */
#define BNQ_TABLE_MIN 128u

/* The reductions through tables of the 256 code values, each the f32 body's own operand:
 * xv[x] = x·s for the moments; gv[g] = g·sg and xm[x] = x·sx − mean for the dsums (xm − 0
 * is xm exactly). Two lookups per element instead of two conversions and scalings. */
#define LOAD_T_V(p, j) (xv[(uint8_t)(p)[j]])
#define LOAD_T_G(p, j) (gv[(uint8_t)(p)[j]])
#define LOAD_T_X(p, j) (xm[(uint8_t)(p)[j]])

static void moments_tab(const int8_t *x, const float *xv, uint32_t reps, uint32_t len, uint32_t stride, float *mean,
                        float *var) {
    EP_NORM_MOMENTS_BODY(int8_t, LOAD_T_V);
}

/* The moments' first pass sums (x − x0)·s, integers times 2^e: with fewer than 2^24 / 255
 * elements and e ≤ 100 every partial sum is exact in f32 (and finite), so the body's
 * ((s0 + s1) + (s2 + s3)) is the codes' integer sum · s, bit for bit. Then the second
 * pass through a table of x − mu. */
#define BNQ_INT_MEAN_MAX 65793u

static void moments_int(const int8_t *x, const float *xv, float s, uint32_t reps, uint32_t len, uint32_t stride,
                        float *mean, float *var) {
    const float x0 = xv[(uint8_t)x[0]];
    const float m_ = (float)reps * (float)len;
    int32_t sum = 0;
    for (uint32_t r = 0; r < reps; r++) {
        sum += ep_q8_sum_s8(x + r * stride, len);
    }
    sum -= (int32_t)x[0] * (int32_t)(reps * len);
    const float mu = x0 + ((float)sum * s) / m_;
    float xd[256];
    for (uint32_t u = 0; u < 256u; u++) {
        xd[u] = xv[u] - mu;
    }
#define LOAD_T_D(p, j) (xd[(uint8_t)(p)[j]])
    EP_NORM_VAR_BODY(int8_t, LOAD_T_D, 0.0f);
#undef LOAD_T_D
}

static void dsums_tab(const int8_t *dy, const float *gv, const int8_t *x, const float *xm, uint32_t reps, uint32_t len,
                      uint32_t stride, float *sdy, float *sdyx) {
    const float mean = 0.0f;
    EP_NORM_DSUMS_BODY(int8_t, LOAD_T_G, int8_t, LOAD_T_X);
}

/* moments_s8 / dsums_s8 over reps runs of len, through the tables where they pay. */
static void bnq_moments(const int8_t *x, float s, uint32_t reps, uint32_t len, uint32_t stride, float *mean,
                        float *var) {
    if (reps * len < BNQ_TABLE_MIN) {
        moments_s8(x, s, reps, len, stride, mean, var);
        return;
    }
    float xv[256];
    for (uint32_t u = 0; u < 256u; u++) {
        xv[u] = (float)(int8_t)(uint8_t)u * s;
    }
    if (reps * len < BNQ_INT_MEAN_MAX && s <= 0x1p100f) {
        moments_int(x, xv, s, reps, len, stride, mean, var);
    } else {
        moments_tab(x, xv, reps, len, stride, mean, var);
    }
}

static void bnq_dsums(const int8_t *dy, float sg, const int8_t *x, float sx, uint32_t reps, uint32_t len,
                      uint32_t stride, float mean, float *sdy, float *sdyx) {
    if (reps * len < BNQ_TABLE_MIN) {
        dsums_s8(dy, sg, x, sx, reps, len, stride, mean, sdy, sdyx);
        return;
    }
    float gv[256], xm[256];
    for (uint32_t u = 0; u < 256u; u++) {
        const float v = (float)(int8_t)(uint8_t)u;
        gv[u] = v * sg;
        xm[u] = v * sx - mean;
    }
    dsums_tab(dy, gv, x, xm, reps, len, stride, sdy, sdyx);
}

/* ---- BATCHNORM_Q8 ------------------------------------------------------------------- */

typedef struct {
    ep_batchnorm_params_t p;
    const int8_t *x;
    float sx;
    const float *gamma, *beta, *mean, *var_or_inv; /* per channel */
    bool eval;
} bnq_apply_t;

/* The per-channel (mean, scale) of the f32 kernels: train scale = inv_std·gamma (fw_train),
 * eval scale = gamma/sqrt(running_var + eps) (fw_eval). */
static void bnq_channel(const bnq_apply_t *a, uint32_t ch, float *mean, float *scale) {
    *mean = a->mean[ch];
    *scale = a->eval ? a->gamma[ch] / sqrtf(a->var_or_inv[ch] + a->p.eps) : a->var_or_inv[ch] * a->gamma[ch];
}

/* One (sample, channel) run of hw elements of the affine map y = (x − mean)·scale + beta (the
 * f32 kernels' expression): its codes at scale qs into out, or (out NULL) the largest
 * magnitude so far. Scalars in registers: the int8 stores cannot make the compiler reload them. */
static float bnq_run(const int8_t *x, float sx, uint32_t hw, float mean, float scale, float beta, int8_t *out,
                     float qs, float amax) { /* out may be x (y over x): element j is read before it is written */
    if (out == NULL) {
        for (uint32_t j = 0; j < hw; j++) {
            amax = ep_q8_maxabs_step(amax, fmaf((float)x[j] * sx - mean, scale, beta));
        }
        return amax;
    }
    for (uint32_t j = 0; j < hw; j++) {
        out[j] = ep_q8_quantize_s(fmaf((float)x[j] * sx - mean, scale, beta), qs);
    }
    return amax;
}

/* The channel's map over the 256 code values (the same expression as bnq_run): with seen,
 * the largest magnitude over the codes seen; with table, their codes at exponent e. */
static float bnq_codes(float sx, float mean, float scale, float beta, const uint8_t *seen, int8_t *table, int32_t e,
                       float amax) {
    float f[EP_Q8_CHUNK];
    for (uint32_t u0 = 0; u0 < 256u; u0 += EP_Q8_CHUNK) {
        for (uint32_t j = 0; j < EP_Q8_CHUNK; j++) {
            f[j] = fmaf((float)(int8_t)(uint8_t)(u0 + j) * sx - mean, scale, beta);
        }
        amax = ep_q8_code_table(f, u0, EP_Q8_CHUNK, seen, table, e, amax);
    }
    return amax;
}

/* bnq_apply's two passes over channels [c0, c1) (ep_q8_two_pass). */
typedef struct {
    const bnq_apply_t *a;
    int8_t *y;
} bnq_fw_t;

static float bnq_apply_pass(void *arg, uint32_t c0, uint32_t c1, const int32_t *e) {
    const bnq_apply_t *a = ((const bnq_fw_t *)arg)->a;
    int8_t *y = ((const bnq_fw_t *)arg)->y;
    const uint32_t n = a->p.n, C = a->p.c, hw = a->p.hw;
    const bool tables = n * hw >= BNQ_TABLE_MIN;
    const float qs = e != NULL ? ep_q8_quant_scale(*e) : 0.0f;
    uint8_t seen[256];
    int8_t table[256];
    float amax = 0.0f;
    for (uint32_t ch = c0; ch < c1; ch++) {
        float mean, scale;
        bnq_channel(a, ch, &mean, &scale);
        if (tables && e == NULL) {
            ep_q8_codes_seen(a->x + ch * hw, n, hw, C * hw, seen);
            amax = bnq_codes(a->sx, mean, scale, a->beta[ch], seen, NULL, 0, amax);
        } else if (tables) {
            (void)bnq_codes(a->sx, mean, scale, a->beta[ch], NULL, table, *e, 0.0f);
            ep_q8_codes_map(table, a->x + ch * hw, n, hw, C * hw, y + ch * hw);
        } else {
            for (uint32_t i = 0; i < n; i++) {
                const uint32_t at = (i * C + ch) * hw;
                amax = bnq_run(a->x + at, a->sx, hw, mean, scale, a->beta[ch], e == NULL ? NULL : y + at, qs, amax);
            }
        }
    }
    return amax;
}

/* The forward's codes: the largest magnitude, then the codes, channel by channel (split
 * over a cluster's cores by channel). */
static int32_t bnq_apply(const bnq_apply_t *a, int8_t *y) {
    bnq_fw_t f = {a, y};
    return ep_q8_two_pass(a->p.c, (uint64_t)a->p.n * a->p.c * a->p.hw * EP_Q8_PAR_ELEM, bnq_apply_pass, &f);
}

/* One (sample, channel) run of the input gradient dx = k0·((g − k1) − (x − mean)·k2) (the f32
 * bw_input's expression, k = gamma·inv_std, Σdy/m, inv_std²·Σdy(x − mean)/m): codes or magnitude. */
static float bnq_dx_run(const int8_t *g, float sg, const int8_t *restrict x, float sx, uint32_t hw,
                        const float *k3, float mean, int8_t *out, float qs, float amax) { /* out may be g (dx over dy) */
    const float k0 = k3[0], k1 = k3[1], k2 = k3[2];
    if (out == NULL) {
        for (uint32_t j = 0; j < hw; j++) {
            amax = ep_q8_maxabs_step(amax, k0 * fmaf(-((float)x[j] * sx - mean), k2, (float)g[j] * sg - k1));
        }
        return amax;
    }
    for (uint32_t j = 0; j < hw; j++) {
        out[j] = ep_q8_quantize_s(k0 * fmaf(-((float)x[j] * sx - mean), k2, (float)g[j] * sg - k1), qs);
    }
    return amax;
}

/* One channel's input gradient through two tables of its 256 code values: the x side
 * −(x − mean) and the dy side g − k1, so dx = k0·fmaf(xa[x], k2, gb[g]) (bnq_dx_run's
 * expression, operand by operand) costs two lookups per element. n runs of hw, stride apart. */
static float bnq_dx_tables(const int8_t *g, float sg, const int8_t *x, float sx, uint32_t n, uint32_t hw,
                           uint32_t stride, const float *k3, float mean, int8_t *out, float qs, float amax) {
    const float k0 = k3[0], k1 = k3[1], k2 = k3[2];
    float xa[256], gb[256];
    for (uint32_t u = 0; u < 256u; u++) {
        const float v = (float)(int8_t)(uint8_t)u;
        xa[u] = -(v * sx - mean);
        gb[u] = v * sg - k1;
    }
    for (uint32_t i = 0; i < n; i++, g += stride, x += stride) {
        if (out == NULL) {
            for (uint32_t j = 0; j < hw; j++) {
                amax = ep_q8_maxabs_step(amax, k0 * fmaf(xa[(uint8_t)x[j]], k2, gb[(uint8_t)g[j]]));
            }
        } else {
            for (uint32_t j = 0; j < hw; j++) { /* out may be g (dx over dy) */
                out[j] = ep_q8_quantize_s(k0 * fmaf(xa[(uint8_t)x[j]], k2, gb[(uint8_t)g[j]]), qs);
            }
            out += stride;
        }
    }
    return amax;
}

/* bnq_bw_input's two passes over channels [c0, c1): the first also makes each channel's
 * sums and factors k3 (its own channels', so the second finds them on the same core). */
typedef struct {
    const ep_batchnorm_params_t *p;
    const int8_t *dy, *x;
    float sg, sx;
    const float *gamma, *saved;
    float *k3;
    int8_t *dx;
} bnq_bwi_t;

static float bnq_bw_input_pass(void *arg, uint32_t c0, uint32_t c1, const int32_t *e) {
    const bnq_bwi_t *b = arg;
    const ep_batchnorm_params_t *p = b->p;
    const uint32_t n = p->n, C = p->c, hw = p->hw, stride = C * hw;
    const float inv_m = 1.0f / ((float)n * (float)hw), qs = e != NULL ? ep_q8_quant_scale(*e) : 0.0f;
    const bool tables = n * hw >= BNQ_TABLE_MIN;
    float amax = 0.0f;
    for (uint32_t ch = c0; ch < c1; ch++) {
        const float mean = b->saved[ch];
        float *k3 = b->k3 + 3 * ch;
        if (e == NULL) {
            const float k = b->saved[C + ch];
            float sdy, sdyx;
            bnq_dsums(b->dy + ch * hw, b->sg, b->x + ch * hw, b->sx, n, hw, stride, mean, &sdy, &sdyx);
            k3[0] = b->gamma[ch] * k;
            k3[1] = sdy * inv_m;
            k3[2] = k * k * sdyx * inv_m;
        }
        for (uint32_t i = 0; i < n && !tables; i++) {
            const uint32_t at = i * stride + ch * hw;
            amax = bnq_dx_run(b->dy + at, b->sg, b->x + at, b->sx, hw, k3, mean, e == NULL ? NULL : b->dx + at, qs,
                              amax);
        }
        if (tables) {
            amax = bnq_dx_tables(b->dy + ch * hw, b->sg, b->x + ch * hw, b->sx, n, hw, stride, k3, mean,
                                 e == NULL ? NULL : b->dx + ch * hw, qs, amax);
        }
    }
    return amax;
}

static int32_t bnq_bw_input(const ep_batchnorm_params_t *p, const int8_t *dy, float sg, const int8_t *x, float sx,
                            const float *gamma, const float *saved, float *k3, int8_t *dx) {
    bnq_bwi_t b = {p, dy, x, sg, sx, gamma, saved, k3, dx};
    return ep_q8_two_pass(p->c, (uint64_t)p->n * p->c * p->hw * EP_Q8_PAR_ELEM, bnq_bw_input_pass, &b);
}

/*
 * iattr[0] mode (0 train, 1 eval, 2 stats); fattr[0] eps > 0 on every node, fattr[1]
 * momentum in [0, 1] on the stats node only; everything else 0. x, y, dy, dx are
 * batched s8 of one shape [C], [C][L] or [C][H][W]; exponents unbatched i32 [1];
 * gamma, beta, running statistics and their gradients unbatched f32 [C]; saved
 * unbatched f32 [2C]; the bw_input scratch an unbatched s8 of ≥ 12·C bytes.
 */
static bool bnq_is_act(const ep_model_t *m, uint16_t t) {
    const ep_tensor_t *x = &m->tensors[t];
    return x->dtype == EP_DTYPE_S8 && (x->flags & EP_TF_BATCHED) != 0 && x->rank >= 1 && x->rank <= 3;
}

static bool bnq_vec(const ep_model_t *m, uint16_t t, uint32_t len) {
    return ep_tensor_is(m, t, EP_DTYPE_F32, false, 1) && m->tensors[t].elems == len;
}

static ep_status_t batchnorm_q8_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    const uint16_t mode = nd->iattr[0];
    if (mode > BNQ_STATS || (nd->fn != EP_FN_FW && mode != BNQ_TRAIN) || nd->fn > EP_FN_BW_PARAM) {
        return ep_reject(why, EP_WHY("batchnorm_q8: mode (iattr[0]) must be 0 train, 1 eval or 2 stats; backward only in train mode"));
    }
    if (!ep_iattrs_zero_from(nd, 1) || !(nd->fattr[0] > 0.0f)) {
        return ep_reject(why, EP_WHY("batchnorm_q8: eps (fattr[0]) must be > 0 and iattr[1..11] 0"));
    }
    const bool stats = nd->fn == EP_FN_FW && mode == BNQ_STATS;
    if (stats ? !(nd->fattr[1] >= 0.0f && nd->fattr[1] <= 1.0f) : nd->fattr[1] != 0.0f) {
        return ep_reject(why, EP_WHY("batchnorm_q8: momentum (fattr[1]) must be in [0, 1] on the stats node, 0 elsewhere"));
    }
    for (uint8_t i = 2; i < EP_NODE_FATTRS; i++) {
        if (nd->fattr[i] != 0.0f) {
            return ep_reject(why, EP_WHY("batchnorm_q8: fattr[2..5] must be 0"));
        }
    }
    static const uint8_t n_in[3][3] = {{5, 6, 2}, {6, 0, 0}, {5, 0, 0}}; /* [fn][mode] */
    static const uint8_t n_out[3][3] = {{2, 2, 3}, {3, 0, 0}, {2, 0, 0}};
    if (nd->n_in != n_in[nd->fn][mode] || nd->n_out != n_out[nd->fn][mode]) {
        return ep_reject(why, EP_WHY("batchnorm_q8: wrong inputs or outputs for its fn and mode (docs/ops/int8.md)"));
    }
    const bool bw = nd->fn != EP_FN_FW;
    const uint16_t x = bw ? nd->in[2] : nd->in[0];
    if (!bnq_is_act(m, x) || !ep_q8_is_exp(m, bw ? nd->in[3] : nd->in[1], 1) ||
        (bw && (!bnq_is_act(m, nd->in[0]) || !ep_same_shape(m, nd->in[0], x) || !ep_q8_is_exp(m, nd->in[1], 1)))) {
        return ep_reject(why, EP_WHY("batchnorm_q8: x and dy must be batched s8 [C], [C][L] or [C][H][W] of one shape, each with an i32 [1] exponent"));
    }
    const uint32_t C = m->tensors[x].dims[0];
    bool vecs;
    int alias_in = -1;
    if (stats) {
        vecs = bnq_vec(m, nd->out[0], 2u * C) && bnq_vec(m, nd->out[1], C) && bnq_vec(m, nd->out[2], C);
    } else if (!bw) {
        vecs = bnq_vec(m, nd->in[2], C) && bnq_vec(m, nd->in[3], C) &&
               (mode == BNQ_TRAIN ? bnq_vec(m, nd->in[4], 2u * C) : bnq_vec(m, nd->in[4], C) && bnq_vec(m, nd->in[5], C)) &&
               bnq_is_act(m, nd->out[0]) && ep_same_shape(m, nd->out[0], x) && ep_q8_is_exp(m, nd->out[1], 1);
        alias_in = 0;
    } else if (nd->fn == EP_FN_BW_INPUT) {
        vecs = bnq_vec(m, nd->in[4], C) && bnq_vec(m, nd->in[5], 2u * C) && bnq_is_act(m, nd->out[0]) &&
               ep_same_shape(m, nd->out[0], x) && ep_q8_is_exp(m, nd->out[1], 1) &&
               ep_q8_scratch_ok(m, nd->out[2], 12u * (uint64_t)C);
        alias_in = 0;
    } else {
        vecs = bnq_vec(m, nd->in[4], 2u * C) && bnq_vec(m, nd->out[0], C) && bnq_vec(m, nd->out[1], C);
    }
    if (!vecs) {
        return ep_reject(why, EP_WHY("batchnorm_q8: gamma, beta, running statistics, gradients must be unbatched f32 [C], saved [2C], y/dx like x with an exponent, scratch >= 12*C bytes"));
    }
    if (!ep_outputs_disjoint(m, nd, alias_in)) {
        return ep_reject(why, EP_WHY("batchnorm_q8: an output overlaps an input or another output (only y over x, dx over dy exactly)"));
    }
    return EP_OK;
}

static ep_batchnorm_params_t bnq_shape(const ep_ctx_t *c, const ep_node_t *nd, uint16_t t) {
    const ep_tensor_t *x = &c->model->tensors[t];
    const ep_batchnorm_params_t p = {.n = c->n, .c = x->dims[0], .hw = x->elems / x->dims[0],
                                     .eps = nd->fattr[0], .momentum = nd->fattr[1]};
    return p;
}

/* The stats node over channels [c0, c1): moments, saved and running statistics. */
typedef struct {
    const ep_batchnorm_params_t *p;
    const int8_t *x;
    float s;
    float *saved, *rm, *rv;
} bnq_stats_t;

static void bnq_stats(void *arg, uint32_t c0, uint32_t c1) {
    const bnq_stats_t *t = arg;
    const ep_batchnorm_params_t *p = t->p;
    for (uint32_t ch = c0; ch < c1; ch++) {
        float mean, var;
        bnq_moments(t->x + ch * p->hw, t->s, p->n, p->hw, p->c * p->hw, &mean, &var);
        ep_bn_store_stats(p, ch, mean, var, t->saved, t->rm, t->rv);
    }
}

static void batchnorm_q8_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_batchnorm_params_t p = bnq_shape(c, nd, nd->in[0]);
    const int8_t *x = ep_ctx_s8(c, nd->in[0]);
    const float s = ep_q8_ctx_scale(c, nd->in[1]);
    if (nd->iattr[0] == BNQ_STATS) {
        bnq_stats_t st = {&p, x, s, ep_ctx_f32(c, nd->out[0]), ep_ctx_f32(c, nd->out[1]), ep_ctx_f32(c, nd->out[2])};
        ep_q8_split(p.c, 1, ep_q8_team_for((uint64_t)p.n * p.c * p.hw * EP_Q8_PAR_ELEM), bnq_stats, &st);
        return;
    }
    const bool eval = nd->iattr[0] == BNQ_EVAL;
    const float *stats = ep_ctx_f32(c, nd->in[4]);
    const bnq_apply_t a = {p, x, s, ep_ctx_f32(c, nd->in[2]), ep_ctx_f32(c, nd->in[3]), stats,
                           eval ? ep_ctx_f32(c, nd->in[5]) : stats + p.c, eval};
    ep_ctx_i32(c, nd->out[1])[0] = bnq_apply(&a, ep_ctx_s8(c, nd->out[0]));
}

static void batchnorm_q8_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_batchnorm_params_t p = bnq_shape(c, nd, nd->in[2]);
    ep_ctx_i32(c, nd->out[1])[0] =
        bnq_bw_input(&p, ep_ctx_s8(c, nd->in[0]), ep_q8_ctx_scale(c, nd->in[1]), ep_ctx_s8(c, nd->in[2]),
                     ep_q8_ctx_scale(c, nd->in[3]), ep_ctx_f32(c, nd->in[4]), ep_ctx_f32(c, nd->in[5]),
                     ep_ctx_f32(c, nd->out[2]), ep_ctx_s8(c, nd->out[0]));
}

/* dgamma, dbeta of channels [c0, c1). */
typedef struct {
    const ep_batchnorm_params_t *p;
    const int8_t *dy, *x;
    float sg, sx;
    const float *saved;
    float *dgamma, *dbeta;
} bnq_bwp_t;

static void bnq_bw_param(void *arg, uint32_t c0, uint32_t c1) {
    const bnq_bwp_t *b = arg;
    const ep_batchnorm_params_t *p = b->p;
    for (uint32_t ch = c0; ch < c1; ch++) {
        float sdy, sdyx;
        bnq_dsums(b->dy + ch * p->hw, b->sg, b->x + ch * p->hw, b->sx, p->n, p->hw, p->c * p->hw, b->saved[ch], &sdy,
                  &sdyx);
        b->dgamma[ch] = sdyx * b->saved[p->c + ch];
        b->dbeta[ch] = sdy;
    }
}

static void batchnorm_q8_bw_param(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_batchnorm_params_t p = bnq_shape(c, nd, nd->in[2]);
    const int8_t *dy = ep_ctx_s8(c, nd->in[0]), *x = ep_ctx_s8(c, nd->in[2]);
    const float sg = ep_q8_ctx_scale(c, nd->in[1]), sx = ep_q8_ctx_scale(c, nd->in[3]);
    const float *saved = ep_ctx_f32(c, nd->in[4]);
    bnq_bwp_t b = {&p, dy, x, sg, sx, saved, ep_ctx_f32(c, nd->out[0]), ep_ctx_f32(c, nd->out[1])};
    ep_q8_split(p.c, 1, ep_q8_team_for((uint64_t)p.n * p.c * p.hw * EP_Q8_PAR_ELEM), bnq_bw_param, &b);
}

const ep_op_t ep_op_batchnorm_q8 = {
    .name = "batchnorm_q8",
    .prepare = batchnorm_q8_prepare,
    .fn = {[EP_FN_FW] = batchnorm_q8_fw, [EP_FN_BW_INPUT] = batchnorm_q8_bw_input,
           [EP_FN_BW_PARAM] = batchnorm_q8_bw_param},
};

/* ---- LAYERNORM_Q8 ---------------------------------------------------------------------- */

/*
 * fattr[0] eps > 0, everything else 0. x, y, dy, dx batched s8 of one shape, D its last
 * dim and R = elements / D rows per sample; exponents i32 [1]; gamma, beta and their
 * gradients unbatched f32 [D]; saved batched f32 [2R] (LAYERNORM's layout: the means of
 * all n·R rows, then their inverse deviations); scratch an unbatched s8 of ≥ 12·D bytes.
 * The f32 kernels run one row at a time (rows = 1) over dequantized rows in the scratch:
 * a row's results are the batch call's, and the parameter gradients are column sums
 * over the rows in order (ep_layernorm_bw_param_add_f32 continues them).
 */
static ep_status_t layernorm_q8_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    static const uint8_t n_in[3] = {4, 6, 5}, n_out[3] = {4, 3, 3};
    if (nd->fn > EP_FN_BW_PARAM || nd->n_in != n_in[nd->fn] || nd->n_out != n_out[nd->fn]) {
        return ep_reject(why, EP_WHY("layernorm_q8: wrong inputs or outputs for its fn (docs/ops/int8.md)"));
    }
    if (!ep_iattrs_zero_from(nd, 0) || !(nd->fattr[0] > 0.0f)) {
        return ep_reject(why, EP_WHY("layernorm_q8: eps (fattr[0]) must be > 0 and iattrs 0"));
    }
    for (uint8_t i = 1; i < EP_NODE_FATTRS; i++) {
        if (nd->fattr[i] != 0.0f) {
            return ep_reject(why, EP_WHY("layernorm_q8: fattr[1..5] must be 0"));
        }
    }
    const bool fw = nd->fn == EP_FN_FW;
    const uint16_t x = fw ? nd->in[0] : nd->in[2];
    const ep_tensor_t *xt = &m->tensors[x];
    if (!ep_q8_is_batched(m, x, EP_DTYPE_S8) || xt->rank < 1 || !ep_q8_is_exp(m, fw ? nd->in[1] : nd->in[3], 1) ||
        (!fw && (!ep_q8_is_batched(m, nd->in[0], EP_DTYPE_S8) || !ep_same_shape(m, nd->in[0], x) ||
                 !ep_q8_is_exp(m, nd->in[1], 1)))) {
        return ep_reject(why, EP_WHY("layernorm_q8: x and dy must be batched s8 of one shape, each with an i32 [1] exponent"));
    }
    const uint32_t D = xt->dims[xt->rank - 1], R = xt->elems / D;
    const uint16_t saved = fw ? nd->out[2] : nd->in[nd->fn == EP_FN_BW_INPUT ? 5 : 4];
    const uint16_t scratch = fw ? nd->out[3] : nd->out[2];
    bool ok = ep_q8_is_batched(m, saved, EP_DTYPE_F32) && m->tensors[saved].elems == 2u * R &&
              ep_q8_scratch_ok(m, scratch, 12u * (uint64_t)D);
    if (fw) {
        ok = ok && bnq_vec(m, nd->in[2], D) && bnq_vec(m, nd->in[3], D) && ep_q8_is_batched(m, nd->out[0], EP_DTYPE_S8) &&
             ep_same_shape(m, nd->out[0], x) && ep_q8_is_exp(m, nd->out[1], 1);
    } else if (nd->fn == EP_FN_BW_INPUT) {
        ok = ok && bnq_vec(m, nd->in[4], D) && ep_q8_is_batched(m, nd->out[0], EP_DTYPE_S8) &&
             ep_same_shape(m, nd->out[0], x) && ep_q8_is_exp(m, nd->out[1], 1);
    } else {
        ok = ok && bnq_vec(m, nd->out[0], D) && bnq_vec(m, nd->out[1], D);
    }
    if (!ok) {
        return ep_reject(why, EP_WHY("layernorm_q8: gamma, beta, gradients unbatched f32 [D], saved batched f32 [2R], y/dx like x with an exponent, scratch >= 12*D bytes"));
    }
    if (!ep_outputs_disjoint(m, nd, nd->fn == EP_FN_BW_PARAM ? -1 : 0)) {
        return ep_reject(why, EP_WHY("layernorm_q8: an output overlaps an input or another output (only y over x, dx over dy exactly)"));
    }
    return EP_OK;
}

typedef struct {
    ep_layernorm_params_t row; /* one row: rows = 1 */
    uint32_t rows;             /* n·R */
    float *a, *b, *c;          /* scratch: three rows of D floats */
} lnq_t;

static lnq_t lnq_setup(const ep_ctx_t *c, const ep_node_t *nd, uint16_t x, uint16_t scratch) {
    const ep_tensor_t *t = &c->model->tensors[x];
    const uint32_t D = t->dims[t->rank - 1];
    lnq_t q = {.row = {1, D, nd->fattr[0]}, .rows = c->n * (t->elems / D)};
    q.a = ep_ctx_f32(c, scratch);
    q.b = q.a + D;
    q.c = q.b + D;
    return q;
}

static void layernorm_q8_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const lnq_t q = lnq_setup(c, nd, nd->in[0], nd->out[3]);
    const uint32_t D = q.row.d;
    const int8_t *x = ep_ctx_s8(c, nd->in[0]);
    const int32_t e_x = ep_ctx_i32(c, nd->in[1])[0];
    const float *gamma = ep_ctx_f32(c, nd->in[2]), *beta = ep_ctx_f32(c, nd->in[3]);
    float *saved = ep_ctx_f32(c, nd->out[2]);
    int8_t *y = ep_ctx_s8(c, nd->out[0]);
    float amax = 0.0f, sv[2];
    int32_t e_y = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t r = 0; r < q.rows; r++) {
            ep_q8_dequantize_f32(D, x + r * D, e_x, q.a);
            ep_layernorm_fw_f32(&q.row, q.a, gamma, beta, q.b, sv);
            saved[r] = sv[0]; /* the same values in both passes */
            saved[q.rows + r] = sv[1];
            amax = ep_q8_chunk_out(q.b, D, pass == 0 ? NULL : y + r * D, e_y, amax);
        }
        e_y = pass == 0 ? ep_q8_exp_for_maxabs(amax) : e_y;
    }
    ep_ctx_i32(c, nd->out[1])[0] = e_y;
}

static void layernorm_q8_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const lnq_t q = lnq_setup(c, nd, nd->in[2], nd->out[2]);
    const uint32_t D = q.row.d;
    const int8_t *dy = ep_ctx_s8(c, nd->in[0]), *x = ep_ctx_s8(c, nd->in[2]);
    const int32_t e_dy = ep_ctx_i32(c, nd->in[1])[0], e_x = ep_ctx_i32(c, nd->in[3])[0];
    const float *gamma = ep_ctx_f32(c, nd->in[4]), *saved = ep_ctx_f32(c, nd->in[5]);
    int8_t *dx = ep_ctx_s8(c, nd->out[0]);
    float amax = 0.0f;
    int32_t e_dx = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t r = 0; r < q.rows; r++) {
            const float sv[2] = {saved[r], saved[q.rows + r]};
            ep_q8_dequantize_f32(D, dy + r * D, e_dy, q.a);
            ep_q8_dequantize_f32(D, x + r * D, e_x, q.b);
            ep_layernorm_bw_input_f32(&q.row, q.a, q.b, gamma, sv, q.c);
            amax = ep_q8_chunk_out(q.c, D, pass == 0 ? NULL : dx + r * D, e_dx, amax);
        }
        e_dx = pass == 0 ? ep_q8_exp_for_maxabs(amax) : e_dx;
    }
    ep_ctx_i32(c, nd->out[1])[0] = e_dx;
}

static void layernorm_q8_bw_param(const ep_ctx_t *c, const ep_node_t *nd) {
    const lnq_t q = lnq_setup(c, nd, nd->in[2], nd->out[2]);
    const uint32_t D = q.row.d;
    const int8_t *dy = ep_ctx_s8(c, nd->in[0]), *x = ep_ctx_s8(c, nd->in[2]);
    const int32_t e_dy = ep_ctx_i32(c, nd->in[1])[0], e_x = ep_ctx_i32(c, nd->in[3])[0];
    const float *saved = ep_ctx_f32(c, nd->in[4]);
    float *dgamma = ep_ctx_f32(c, nd->out[0]), *dbeta = ep_ctx_f32(c, nd->out[1]);
    for (uint32_t r = 0; r < q.rows; r++) {
        const float sv[2] = {saved[r], saved[q.rows + r]};
        ep_q8_dequantize_f32(D, dy + r * D, e_dy, q.a);
        ep_q8_dequantize_f32(D, x + r * D, e_x, q.b);
        (r == 0 ? ep_layernorm_bw_param_f32 : ep_layernorm_bw_param_add_f32)(&q.row, q.a, q.b, sv, dgamma, dbeta);
    }
}

const ep_op_t ep_op_layernorm_q8 = {
    .name = "layernorm_q8",
    .prepare = layernorm_q8_prepare,
    .fn = {[EP_FN_FW] = layernorm_q8_fw, [EP_FN_BW_INPUT] = layernorm_q8_bw_input,
           [EP_FN_BW_PARAM] = layernorm_q8_bw_param},
};

/* ---- DROPOUT_Q8 ------------------------------------------------------------------------ */

/*
 * The training dropout only (the eval forward is the identity: no node). fattr[0] p in
 * [0, 1], everything else 0. x, y, dy, dx batched s8 of one element count E per sample,
 * exponents i32 [1]; mask a batched u8 [ceil(E/8)]; state an unbatched i32 [1] (as
 * DROPOUT). The forward's first pass draws the mask (the f32 kernel on 32-element
 * chunks: the same stream and bits as over the whole batch at once), the second applies
 * it (x·scale where kept, the f32 kernel's product).
 */
static ep_status_t dropout_q8_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    const bool fw = nd->fn == EP_FN_FW;
    if ((!fw && nd->fn != EP_FN_BW_INPUT) || nd->n_in != (fw ? 2 : 3) || nd->n_out != (fw ? 4 : 2)) {
        return ep_reject(why, EP_WHY("dropout_q8: needs fw (x, e_x) -> (y, e_y, mask, state) or bw_input (dy, e_dy, mask) -> (dx, e_dx)"));
    }
    if (!ep_iattrs_zero_from(nd, 0) || !(nd->fattr[0] >= 0.0f && nd->fattr[0] <= 1.0f)) {
        return ep_reject(why, EP_WHY("dropout_q8: p (fattr[0]) must be in [0, 1], iattrs 0"));
    }
    for (uint8_t i = 1; i < EP_NODE_FATTRS; i++) {
        if (nd->fattr[i] != 0.0f) {
            return ep_reject(why, EP_WHY("dropout_q8: fattr[1..5] must be 0"));
        }
    }
    const uint16_t x = nd->in[0], mask = fw ? nd->out[2] : nd->in[2];
    const uint32_t E = m->tensors[x].elems;
    bool ok = ep_q8_is_batched(m, x, EP_DTYPE_S8) && ep_q8_is_batched(m, nd->out[0], EP_DTYPE_S8) &&
              m->tensors[nd->out[0]].elems == E && ep_q8_is_exp(m, nd->in[1], 1) && ep_q8_is_exp(m, nd->out[1], 1) &&
              ep_tensor_is(m, mask, EP_DTYPE_U8, true, 1) && m->tensors[mask].elems == (E >> 3) + ((E & 7u) != 0u);
    if (fw) {
        ok = ok && ep_tensor_is(m, nd->out[3], EP_DTYPE_I32, false, 1) && m->tensors[nd->out[3]].elems == 1;
    }
    if (!ok) {
        return ep_reject(why, EP_WHY("dropout_q8: x, y, dy, dx batched s8 of one size with i32 [1] exponents, mask a batched u8 [ceil(E/8)], state an i32 [1]"));
    }
    if (!ep_outputs_disjoint(m, nd, 0)) {
        return ep_reject(why, EP_WHY("dropout_q8: an output overlaps an input or another output (only y over x, dx over dy exactly)"));
    }
    return EP_OK;
}

/* One pass in 32-element chunks: draw (the fw's first pass) or apply the mask to the
 * dequantized codes; out NULL: the largest magnitude (returned), else codes at e. */
static float dropout_q8_pass(const ep_node_t *nd, uint32_t count, const int8_t *a, float sa, uint8_t *mask,
                             uint32_t *state, int32_t e, int8_t *out) {
    float f[EP_Q8_CHUNK], amax = 0.0f;
    for (uint32_t i0 = 0; i0 < count; i0 += EP_Q8_CHUNK) {
        const uint32_t len = count - i0 < EP_Q8_CHUNK ? count - i0 : EP_Q8_CHUNK;
        const ep_dropout_params_t p = {.count = len, .p_drop = nd->fattr[0], .state = state};
        for (uint32_t j = 0; j < len; j++) {
            f[j] = (float)a[i0 + j] * sa;
        }
        if (state != NULL) {
            ep_dropout_fw_train_f32(&p, f, f, mask + i0 / 8u);
        } else {
            ep_dropout_bw_f32(&p, f, mask + i0 / 8u, f);
        }
        amax = ep_q8_chunk_out(f, len, out != NULL ? out + i0 : NULL, e, amax);
    }
    return amax;
}

static void dropout_q8_run(const ep_ctx_t *c, const ep_node_t *nd) {
    const bool fw = nd->fn == EP_FN_FW;
    const uint32_t count = ep_q8_count(c, nd->in[0]);
    const int8_t *a = ep_ctx_s8(c, nd->in[0]);
    const float sa = ep_q8_ctx_scale(c, nd->in[1]);
    uint8_t *mask = c->arena + c->model->tensors[fw ? nd->out[2] : nd->in[2]].offset;
    uint32_t *state = fw ? (uint32_t *)(void *)ep_ctx_i32(c, nd->out[3]) : NULL;
    const int32_t e = ep_q8_exp_for_maxabs(dropout_q8_pass(nd, count, a, sa, mask, state, 0, NULL));
    dropout_q8_pass(nd, count, a, sa, mask, NULL, e, ep_ctx_s8(c, nd->out[0])); /* apply the mask drawn */
    ep_ctx_i32(c, nd->out[1])[0] = e;
}

const ep_op_t ep_op_dropout_q8 = {
    .name = "dropout_q8",
    .prepare = dropout_q8_prepare,
    .fn = {[EP_FN_FW] = dropout_q8_run, [EP_FN_BW_INPUT] = dropout_q8_run, [EP_FN_BW_PARAM] = NULL},
};
