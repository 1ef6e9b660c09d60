/*
 * ep_layernorm.c — LAYERNORM kernels: normalisation over the last d elements of
 * each row with a per-element affine (gamma, beta), its input gradient and its
 * parameter gradients. Statistics: ep_norm_moments_f32 (ep_batchnorm.c).
 */
#include <math.h>

#include "ep_norm_act.h"
#include "ep_ops.h"
#include "ep_parallel.h"

/*
 * On a cluster (ep_parallel.h): fw and bw_input split the rows, bw_param the D
 * columns (each column's sum over the rows keeps its serial order), so results do
 * not depend on the core count. ln_args_t carries a kernel's arguments to the cores.
 */
typedef struct {
    const ep_layernorm_params_t *p;
    const float *in[4];
    float *out[2];
    int acc; /* bw_param: add to the gradients */
} ln_args_t;

typedef void (*ln_part_fn_t)(const ln_args_t *a, uint32_t lo, uint32_t hi);

typedef struct {
    ln_part_fn_t fn;
    const ln_args_t *a;
    uint32_t count;
} ln_job_t;

static void ln_core(void *arg) {
    const ln_job_t *j = arg;
    uint32_t lo, hi;
    ep_par_range(j->count, &lo, &hi);
    j->fn(j->a, lo, hi);
}

static void ln_run(ln_part_fn_t fn, const ln_args_t *a, uint32_t count) {
    if (ep_par_num_cores() > 1 && count > 1) {
        const ln_job_t j = {fn, a, count};
        ep_par_fork(0, ln_core, (void *)&j);
    } else {
        fn(a, 0, count);
    }
}

static void fw_rows(const ln_args_t *a, uint32_t r0, uint32_t r1) {
    const ep_layernorm_params_t *p = a->p;
    const float *x = a->in[0], *restrict gamma = a->in[1], *restrict beta = a->in[2];
    float *y = a->out[0], *restrict saved = a->out[1];
    const uint32_t rows = p->rows, D = p->d;
    for (uint32_t r = r0; r < r1; r++) {
        const float *xr = x + r * D;
        float *yr = y + r * D;
        float mean, var;
        ep_norm_moments_f32(xr, 1, D, D, &mean, &var);
        const float k = 1.0f / sqrtf(var + p->eps);
        saved[r] = mean;
        saved[rows + r] = k;
        for (uint32_t j = 0; j < D; j++) {
            yr[j] = fmaf((xr[j] - mean) * k, gamma[j], beta[j]);
        }
    }
}

void ep_layernorm_fw_f32(const ep_layernorm_params_t *p, const float *x, const float *restrict gamma,
                         const float *restrict beta, float *y, float *restrict saved) {
    const ln_args_t a = {p, {x, gamma, beta}, {y, saved}, 0};
    ln_run(fw_rows, &a, p->rows);
}

static void bw_input_rows(const ln_args_t *a, uint32_t r0, uint32_t r1) {
    const ep_layernorm_params_t *p = a->p;
    const float *dy = a->in[0], *restrict x = a->in[1], *restrict gamma = a->in[2], *restrict saved = a->in[3];
    float *dx = a->out[0];
    const uint32_t rows = p->rows, D = p->d;
    const float inv_d = 1.0f / (float)D;
    for (uint32_t r = r0; r < r1; r++) {
        const float *xr = x + r * D, *gr = dy + r * D;
        float *dr = dx + r * D;
        const float mean = saved[r], k = saved[rows + r];
        /* s = Σ dy·gamma, t = Σ dy·gamma·(x − mean), 4 partial sums each */
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f, t0 = 0.0f, t1 = 0.0f, t2 = 0.0f, t3 = 0.0f;
        uint32_t j = 0;
        for (; j + 4 <= D; j += 4) {
            const float g0 = gr[j] * gamma[j], g1 = gr[j + 1] * gamma[j + 1];
            const float g2 = gr[j + 2] * gamma[j + 2], g3 = gr[j + 3] * gamma[j + 3];
            s0 += g0;
            s1 += g1;
            s2 += g2;
            s3 += g3;
            t0 = fmaf(g0, xr[j] - mean, t0);
            t1 = fmaf(g1, xr[j + 1] - mean, t1);
            t2 = fmaf(g2, xr[j + 2] - mean, t2);
            t3 = fmaf(g3, xr[j + 3] - mean, t3);
        }
        for (; j < D; j++) {
            const float g = gr[j] * gamma[j];
            s0 += g;
            t0 = fmaf(g, xr[j] - mean, t0);
        }
        /* dx = k·(g − s/D − (x − mean)·k²·t/D) */
        const float c1 = ((s0 + s1) + (s2 + s3)) * inv_d;
        const float c2 = k * k * ((t0 + t1) + (t2 + t3)) * inv_d;
        for (j = 0; j < D; j++) {
            dr[j] = k * fmaf(-(xr[j] - mean), c2, fmaf(gr[j], gamma[j], -c1));
        }
    }
}

void ep_layernorm_bw_input_f32(const ep_layernorm_params_t *p, const float *dy, const float *restrict x,
                               const float *restrict gamma, const float *restrict saved, float *dx) {
    const ln_args_t a = {p, {dy, x, gamma, saved}, {dx}, 0};
    ln_run(bw_input_rows, &a, p->rows);
}

static void bw_param_cols(const ln_args_t *a, uint32_t j0, uint32_t j1) {
    const ep_layernorm_params_t *p = a->p;
    const float *restrict dy = a->in[0], *restrict x = a->in[1], *restrict saved = a->in[2];
    float *restrict dgamma = a->out[0], *restrict dbeta = a->out[1];
    const uint32_t rows = p->rows, D = p->d;
    /* column sums over rows: the first row initialises (overwrite) unless a->acc, the others add */
    if (!a->acc) {
        const float mean = saved[0], k = saved[rows];
        for (uint32_t j = j0; j < j1; j++) {
            dgamma[j] = dy[j] * ((x[j] - mean) * k);
            dbeta[j] = dy[j];
        }
    }
    for (uint32_t r = a->acc ? 0 : 1; r < rows; r++) {
        const float *xr = x + r * D, *gr = dy + r * D;
        const float mean = saved[r], k = saved[rows + r];
        for (uint32_t j = j0; j < j1; j++) {
            dgamma[j] = fmaf(gr[j], (xr[j] - mean) * k, dgamma[j]);
            dbeta[j] += gr[j];
        }
    }
}

void ep_layernorm_bw_param_f32(const ep_layernorm_params_t *p, const float *restrict dy,
                               const float *restrict x, const float *restrict saved,
                               float *restrict dgamma, float *restrict dbeta) {
    const ln_args_t a = {p, {dy, x, saved}, {dgamma, dbeta}, 0};
    ln_run(bw_param_cols, &a, p->d);
}

void ep_layernorm_bw_param_add_f32(const ep_layernorm_params_t *p, const float *restrict dy,
                                   const float *restrict x, const float *restrict saved,
                                   float *restrict dgamma, float *restrict dbeta) {
    const ln_args_t a = {p, {dy, x, saved}, {dgamma, dbeta}, 1};
    ln_run(bw_param_cols, &a, p->d);
}

/* ------------------------------------------------------------------------- */
/* LAYERNORM node (docs/ops/norm_act.md)                                      */
/* ------------------------------------------------------------------------- */

/*
 * fattr[0] eps > 0; every other attribute 0. x (y, dy, dx) is batched f32 of any
 * rank; D = its last dim, R = elements / D rows per sample. gamma, beta and their
 * gradients are unbatched f32 [D]; saved is BATCHED f32 [2·R] (the kernel stores
 * [mean[n·R] | inv_std[n·R]], which fits the n samples' 2·R floats).
 *
 *   fw        in (x, gamma, beta)        out (y, saved)       y may alias x
 *   bw_input  in (dy, x, gamma, saved)   out (dx)             dx may alias dy
 *   bw_param  in (dy, x, saved)          out (dgamma, dbeta)
 */
static bool ln_is_act(const ep_model_t *m, uint16_t t) {
    const ep_tensor_t *x = &m->tensors[t];
    return x->dtype == EP_DTYPE_F32 && (x->flags & EP_TF_BATCHED) != 0;
}

static bool ln_same_act(const ep_model_t *m, uint16_t a, uint16_t b) {
    return ln_is_act(m, a) && ln_is_act(m, b) && ep_same_shape(m, a, b);
}

static uint32_t ln_d(const ep_model_t *m, uint16_t x) {
    return m->tensors[x].dims[m->tensors[x].rank - 1];
}

/* An unbatched f32 [len]. */
static bool ln_is_vec(const ep_model_t *m, uint16_t t, uint32_t len) {
    return ep_tensor_is(m, t, EP_DTYPE_F32, false, 1) && m->tensors[t].elems == len;
}

/* saved: a batched f32 [2·R] for activation x. */
static bool ln_is_saved(const ep_model_t *m, uint16_t s, uint16_t x) {
    return ep_tensor_is(m, s, EP_DTYPE_F32, true, 1) && m->tensors[s].elems == 2u * (m->tensors[x].elems / ln_d(m, x));
}

static ep_status_t layernorm_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    for (uint8_t i = 0; i < EP_NODE_IATTRS; i++) {
        if (nd->iattr[i] != 0) {
            return ep_reject(why, EP_WHY("layernorm: iattrs must be 0"));
        }
    }
    if (!(nd->fattr[0] > 0.0f)) {
        return ep_reject(why, EP_WHY("layernorm: eps (fattr[0]) must be > 0"));
    }
    for (uint8_t i = 1; i < EP_NODE_FATTRS; i++) {
        if (nd->fattr[i] != 0.0f) {
            return ep_reject(why, EP_WHY("layernorm: fattr[1..5] must be 0"));
        }
    }
    switch (nd->fn) {
    case EP_FN_FW: {
        if (nd->n_in != 3 || nd->n_out != 2) {
            return ep_reject(why, EP_WHY("layernorm.fw: needs inputs (x, gamma, beta) and outputs (y, saved)"));
        }
        const uint16_t x = nd->in[0];
        if (!ln_same_act(m, x, nd->out[0])) {
            return ep_reject(why, EP_WHY("layernorm.fw: x and y must be batched f32 of the same shape"));
        }
        if (!ln_is_vec(m, nd->in[1], ln_d(m, x)) || !ln_is_vec(m, nd->in[2], ln_d(m, x))) {
            return ep_reject(why, EP_WHY("layernorm.fw: gamma and beta must be unbatched f32 [D], D = x's last dim"));
        }
        if (!ln_is_saved(m, nd->out[1], x)) {
            return ep_reject(why, EP_WHY("layernorm.fw: saved must be a batched f32 [2*R], R = x elements / D"));
        }
        if (!ep_outputs_disjoint(m, nd, 0)) {
            return ep_reject(why, EP_WHY("layernorm.fw: y or saved overlaps another tensor of the node (only y over x exactly)"));
        }
        return EP_OK;
    }
    case EP_FN_BW_INPUT: {
        if (nd->n_in != 4 || nd->n_out != 1) {
            return ep_reject(why, EP_WHY("layernorm.bw_input: needs inputs (dy, x, gamma, saved) and output (dx)"));
        }
        const uint16_t dy = nd->in[0], x = nd->in[1];
        if (!ln_same_act(m, dy, x) || !ln_same_act(m, dy, nd->out[0])) {
            return ep_reject(why, EP_WHY("layernorm.bw_input: dy, x and dx must be batched f32 of the same shape"));
        }
        if (!ln_is_vec(m, nd->in[2], ln_d(m, x)) || !ln_is_saved(m, nd->in[3], x)) {
            return ep_reject(why, EP_WHY("layernorm.bw_input: gamma must be an unbatched f32 [D], saved a batched f32 [2*R]"));
        }
        if (!ep_outputs_disjoint(m, nd, 0)) {
            return ep_reject(why, EP_WHY("layernorm.bw_input: dx overlaps an input (only dy exactly)"));
        }
        return EP_OK;
    }
    case EP_FN_BW_PARAM: {
        if (nd->n_in != 3 || nd->n_out != 2) {
            return ep_reject(why, EP_WHY("layernorm.bw_param: needs inputs (dy, x, saved) and outputs (dgamma, dbeta)"));
        }
        const uint16_t dy = nd->in[0], x = nd->in[1];
        if (!ln_same_act(m, dy, x)) {
            return ep_reject(why, EP_WHY("layernorm.bw_param: dy and x must be batched f32 of the same shape"));
        }
        if (!ln_is_saved(m, nd->in[2], x) || !ln_is_vec(m, nd->out[0], ln_d(m, x)) ||
            !ln_is_vec(m, nd->out[1], ln_d(m, x))) {
            return ep_reject(why, EP_WHY("layernorm.bw_param: dgamma and dbeta must be unbatched f32 [D], saved a batched f32 [2*R]"));
        }
        if (!ep_outputs_disjoint(m, nd, -1)) {
            return ep_reject(why, EP_WHY("layernorm.bw_param: dgamma or dbeta overlaps another tensor of the node"));
        }
        return EP_OK;
    }
    default:
        return ep_reject(why, EP_WHY("layernorm: unknown fn"));
    }
}

static ep_layernorm_params_t ln_shape(const ep_ctx_t *c, const ep_node_t *nd, uint16_t x) {
    const uint32_t D = ln_d(c->model, x);
    const ep_layernorm_params_t p = {.rows = c->n * (c->model->tensors[x].elems / D), .d = D, .eps = nd->fattr[0]};
    return p;
}

static void layernorm_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_layernorm_params_t p = ln_shape(c, nd, nd->in[0]);
    ep_layernorm_fw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->in[2]),
                        ep_ctx_f32(c, nd->out[0]), ep_ctx_f32(c, nd->out[1]));
}

static void layernorm_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_layernorm_params_t p = ln_shape(c, nd, nd->in[1]);
    ep_layernorm_bw_input_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->in[2]),
                              ep_ctx_f32(c, nd->in[3]), ep_ctx_f32(c, nd->out[0]));
}

static void layernorm_bw_param(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_layernorm_params_t p = ln_shape(c, nd, nd->in[1]);
    ep_layernorm_bw_param_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->in[2]),
                              ep_ctx_f32(c, nd->out[0]), ep_ctx_f32(c, nd->out[1]));
}

const ep_op_t ep_op_layernorm = {
    .name = "layernorm",
    .prepare = layernorm_prepare,
    .fn = {[EP_FN_FW] = layernorm_fw, [EP_FN_BW_INPUT] = layernorm_bw_input, [EP_FN_BW_PARAM] = layernorm_bw_param},
};
