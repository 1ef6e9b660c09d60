/*
 * ep_batchnorm.c — BATCHNORM kernels (training with batch statistics and running
 * averages, eval with running statistics; input and affine gradients), and the
 * moment / gradient-sum reductions shared with LayerNorm and GroupNorm.
 *
 * A channel's m = n·hw values are n contiguous runs of hw, one per sample, a
 * stride c·hw apart; every reduction walks the runs with 4 partial sums. The
 * per-element passes hoist everything per channel (scale, shift, means) so the
 * inner loop is one subtract and one fused multiply-add per element.
 */
#include <math.h>
#include <stddef.h>

#include "ep_norm_act.h"
#include "ep_parallel.h"
#include "ep_ops.h"

void ep_norm_moments_f32(const float *x, uint32_t reps, uint32_t len, uint32_t stride, float *mean,
                         float *var) {
    EP_NORM_MOMENTS_BODY(float, EP_NORM_LOAD_F32);
}

void ep_norm_dsums_f32(const float *dy, const float *x, uint32_t reps, uint32_t len, uint32_t stride,
                       float mean, float *sdy, float *sdyx) {
    EP_NORM_DSUMS_BODY(float, EP_NORM_LOAD_F32, float, EP_NORM_LOAD_F32);
}

/* y = (x − mean)·scale + shift over one channel's n runs of hw (y may alias x exactly). */
static void bn_apply(const float *x, float *y, uint32_t n, uint32_t hw, uint32_t stride, float mean,
                     float scale, float shift) {
    for (uint32_t i = 0; i < n; i++) {
        const float *xi = x + i * stride;
        float *yi = y + i * stride;
        for (uint32_t j = 0; j < hw; j++) {
            yi[j] = fmaf(xi[j] - mean, scale, shift);
        }
    }
}

/*
 * On a cluster (ep_parallel.h) every kernel splits the channels: a channel's
 * statistics, outputs and parameter gradients are computed by one core with the
 * serial code, so results do not depend on the core count. bn_args_t carries a
 * kernel's arguments to the cores; each *_chs function does channels [c0, c1).
 */
typedef struct {
    const ep_batchnorm_params_t *p;
    const float *in[5];
    float *out[4];
} bn_args_t;

typedef void (*bn_chs_fn_t)(const bn_args_t *a, uint32_t c0, uint32_t c1);

typedef struct {
    bn_chs_fn_t fn;
    const bn_args_t *a;
} bn_job_t;

static void bn_core(void *arg) {
    const bn_job_t *j = arg;
    uint32_t lo, hi;
    ep_par_range(j->a->p->c, &lo, &hi);
    j->fn(j->a, lo, hi);
}

static void bn_run(bn_chs_fn_t fn, const bn_args_t *a) {
    if (ep_par_num_cores() > 1 && a->p->c > 1) {
        const bn_job_t j = {fn, a};
        ep_par_fork(0, bn_core, (void *)&j);
    } else {
        fn(a, 0, a->p->c);
    }
}

static void fw_train_chs(const bn_args_t *a, uint32_t c0, uint32_t c1) {
    const ep_batchnorm_params_t *p = a->p;
    const float *x = a->in[0], *restrict gamma = a->in[1], *restrict beta = a->in[2];
    float *y = a->out[0], *restrict saved = a->out[1];
    float *restrict running_mean = a->out[2], *restrict running_var = a->out[3];
    const uint32_t n = p->n, C = p->c, hw = p->hw, stride = C * hw;
    for (uint32_t ch = c0; ch < c1; ch++) {
        float mean, var;
        ep_norm_moments_f32(x + ch * hw, n, hw, stride, &mean, &var);
        ep_bn_store_stats(p, ch, mean, var, saved, running_mean, running_var);
        bn_apply(x + ch * hw, y + ch * hw, n, hw, stride, mean, saved[C + ch] * gamma[ch], beta[ch]);
    }
}

void ep_batchnorm_fw_train_f32(const ep_batchnorm_params_t *p, const float *x,
                               const float *restrict gamma, const float *restrict beta,
                               float *y, float *restrict saved,
                               float *restrict running_mean, float *restrict running_var) {
    const bn_args_t a = {p, {x, gamma, beta}, {y, saved, running_mean, running_var}};
    bn_run(fw_train_chs, &a);
}

static void fw_eval_chs(const bn_args_t *a, uint32_t c0, uint32_t c1) {
    const ep_batchnorm_params_t *p = a->p;
    const float *x = a->in[0], *restrict gamma = a->in[1], *restrict beta = a->in[2];
    const float *restrict running_mean = a->in[3], *restrict running_var = a->in[4];
    float *y = a->out[0];
    const uint32_t n = p->n, C = p->c, hw = p->hw, stride = C * hw;
    for (uint32_t ch = c0; ch < c1; ch++) {
        const float scale = gamma[ch] / sqrtf(running_var[ch] + p->eps);
        bn_apply(x + ch * hw, y + ch * hw, n, hw, stride, running_mean[ch], scale, beta[ch]);
    }
}

void ep_batchnorm_fw_eval_f32(const ep_batchnorm_params_t *p, const float *x, const float *restrict gamma,
                              const float *restrict beta, const float *restrict running_mean,
                              const float *restrict running_var, float *y) {
    const bn_args_t a = {p, {x, gamma, beta, running_mean, running_var}, {y}};
    bn_run(fw_eval_chs, &a);
}

static void bw_input_train_chs(const bn_args_t *a, uint32_t c0, uint32_t c1) {
    const ep_batchnorm_params_t *p = a->p;
    const float *dy = a->in[0], *restrict x = a->in[1], *restrict gamma = a->in[2], *restrict saved = a->in[3];
    float *dx = a->out[0];
    const uint32_t n = p->n, C = p->c, hw = p->hw, stride = C * hw;
    const float inv_m = 1.0f / ((float)n * (float)hw);
    for (uint32_t ch = c0; ch < c1; ch++) {
        const float mean = saved[ch], k = saved[C + ch];
        float sdy, sdyx;
        ep_norm_dsums_f32(dy + ch * hw, x + ch * hw, n, hw, stride, mean, &sdy, &sdyx);
        /* dx = a·(dy − Σdy/m − (x − mean)·k²·Σ(dy(x − mean))/m) */
        const float ga = gamma[ch] * k;
        const float c1v = sdy * inv_m;
        const float c2 = k * k * sdyx * inv_m;
        for (uint32_t i = 0; i < n; i++) {
            const float *xi = x + i * stride + ch * hw, *gi = dy + i * stride + ch * hw;
            float *di = dx + i * stride + ch * hw;
            for (uint32_t j = 0; j < hw; j++) {
                di[j] = ga * fmaf(-(xi[j] - mean), c2, gi[j] - c1v);
            }
        }
    }
}

void ep_batchnorm_bw_input_train_f32(const ep_batchnorm_params_t *p, const float *dy,
                                     const float *restrict x, const float *restrict gamma,
                                     const float *restrict saved, float *dx) {
    const bn_args_t a = {p, {dy, x, gamma, saved}, {dx}};
    bn_run(bw_input_train_chs, &a);
}

static void bw_input_eval_chs(const bn_args_t *a, uint32_t c0, uint32_t c1) {
    const ep_batchnorm_params_t *p = a->p;
    const float *dy = a->in[0], *restrict gamma = a->in[1], *restrict running_var = a->in[2];
    float *dx = a->out[0];
    const uint32_t n = p->n, C = p->c, hw = p->hw, stride = C * hw;
    for (uint32_t ch = c0; ch < c1; ch++) {
        const float scale = gamma[ch] / sqrtf(running_var[ch] + p->eps);
        for (uint32_t i = 0; i < n; i++) {
            const float *gi = dy + i * stride + ch * hw;
            float *di = dx + i * stride + ch * hw;
            for (uint32_t j = 0; j < hw; j++) {
                di[j] = gi[j] * scale;
            }
        }
    }
}

void ep_batchnorm_bw_input_eval_f32(const ep_batchnorm_params_t *p, const float *dy,
                                    const float *restrict gamma, const float *restrict running_var,
                                    float *dx) {
    const bn_args_t a = {p, {dy, gamma, running_var}, {dx}};
    bn_run(bw_input_eval_chs, &a);
}

static void bw_param_train_chs(const bn_args_t *a, uint32_t c0, uint32_t c1) {
    const ep_batchnorm_params_t *p = a->p;
    const float *restrict dy = a->in[0], *restrict x = a->in[1], *restrict saved = a->in[2];
    float *restrict dgamma = a->out[0], *restrict dbeta = a->out[1];
    const uint32_t n = p->n, C = p->c, hw = p->hw;
    for (uint32_t ch = c0; ch < c1; ch++) {
        float sdy, sdyx;
        ep_norm_dsums_f32(dy + ch * hw, x + ch * hw, n, hw, C * hw, saved[ch], &sdy, &sdyx);
        dgamma[ch] = sdyx * saved[C + ch];
        dbeta[ch] = sdy;
    }
}

void ep_batchnorm_bw_param_train_f32(const ep_batchnorm_params_t *p, const float *restrict dy,
                                     const float *restrict x, const float *restrict saved,
                                     float *restrict dgamma, float *restrict dbeta) {
    const bn_args_t a = {p, {dy, x, saved}, {dgamma, dbeta}};
    bn_run(bw_param_train_chs, &a);
}

static void bw_param_eval_chs(const bn_args_t *a, uint32_t c0, uint32_t c1) {
    const ep_batchnorm_params_t *p = a->p;
    const float *restrict dy = a->in[0], *restrict x = a->in[1];
    const float *restrict running_mean = a->in[2], *restrict running_var = a->in[3];
    float *restrict dgamma = a->out[0], *restrict dbeta = a->out[1];
    const uint32_t n = p->n, C = p->c, hw = p->hw;
    for (uint32_t ch = c0; ch < c1; ch++) {
        float sdy, sdyx;
        ep_norm_dsums_f32(dy + ch * hw, x + ch * hw, n, hw, C * hw, running_mean[ch], &sdy, &sdyx);
        dgamma[ch] = sdyx / sqrtf(running_var[ch] + p->eps);
        dbeta[ch] = sdy;
    }
}

void ep_batchnorm_bw_param_eval_f32(const ep_batchnorm_params_t *p, const float *restrict dy,
                                    const float *restrict x, const float *restrict running_mean,
                                    const float *restrict running_var, float *restrict dgamma,
                                    float *restrict dbeta) {
    const bn_args_t a = {p, {dy, x, running_mean, running_var}, {dgamma, dbeta}};
    bn_run(bw_param_eval_chs, &a);
}

/* ------------------------------------------------------------------------- */
/* BATCHNORM node (docs/ops/norm_act.md)                                      */
/* ------------------------------------------------------------------------- */

/*
 * iattr[0] mode: 0 = train (batch statistics; fw updates the running averages),
 * 1 = eval (running statistics). fattr[0] eps > 0 on every node; fattr[1] momentum
 * in [0, 1] on the train fw only. Everything else 0. x (and y, dy, dx) is batched
 * f32 [C], [C][L] or [C][H][W]; C = dims[0], hw = the rest. gamma, beta,
 * running_mean, running_var and the gradients are unbatched f32 [C]; saved is
 * unbatched f32 [2·C].
 *
 *   fw  train  in (x, gamma, beta)                      out (y, saved, running_mean, running_var)
 *                                                                              y may alias x
 *   fw  eval   in (x, gamma, beta, running_mean, running_var)  out (y)        y may alias x
 *   bwi train  in (dy, x, gamma, saved)                 out (dx)               dx may alias dy
 *   bwi eval   in (dy, gamma, running_var)              out (dx)               dx may alias dy
 *   bwp train  in (dy, x, saved)                        out (dgamma, dbeta)
 *   bwp eval   in (dy, x, running_mean, running_var)    out (dgamma, dbeta)
 */
enum { BN_MODE_TRAIN = 0, BN_MODE_EVAL = 1 };

static bool bn_is_act(const ep_model_t *m, uint16_t t) {
    const ep_tensor_t *x = &m->tensors[t];
    return x->dtype == EP_DTYPE_F32 && (x->flags & EP_TF_BATCHED) != 0 && x->rank >= 1 && x->rank <= 3;
}

/* An unbatched f32 rank-1 vector of exactly `len` elements. */
static bool bn_is_vec(const ep_model_t *m, uint16_t t, uint32_t len) {
    return ep_tensor_is(m, t, EP_DTYPE_F32, false, 1) && m->tensors[t].elems == len;
}

/* Activation a (x/y/dy/dx) and b have the same shape, both batched f32 of rank 1..3. */
static bool bn_same_act(const ep_model_t *m, uint16_t a, uint16_t b) {
    return bn_is_act(m, a) && bn_is_act(m, b) && ep_same_shape(m, a, b);
}

static ep_status_t batchnorm_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    const uint16_t mode = nd->iattr[0];
    if (mode != BN_MODE_TRAIN && mode != BN_MODE_EVAL) {
        return ep_reject(why, EP_WHY("batchnorm: iattr[0] (mode) must be 0 (train) or 1 (eval)"));
    }
    for (uint8_t i = 1; i < EP_NODE_IATTRS; i++) {
        if (nd->iattr[i] != 0) {
            return ep_reject(why, EP_WHY("batchnorm: iattr[1..11] must be 0"));
        }
    }
    if (!(nd->fattr[0] > 0.0f)) {
        return ep_reject(why, EP_WHY("batchnorm: eps (fattr[0]) must be > 0"));
    }
    const bool fw_train = nd->fn == EP_FN_FW && mode == BN_MODE_TRAIN;
    if (fw_train ? !(nd->fattr[1] >= 0.0f && nd->fattr[1] <= 1.0f) : nd->fattr[1] != 0.0f) {
        return ep_reject(why, EP_WHY("batchnorm: momentum (fattr[1]) must be in [0, 1] on the train fw, 0 elsewhere"));
    }
    for (uint8_t i = 2; i < EP_NODE_FATTRS; i++) {
        if (nd->fattr[i] != 0.0f) {
            return ep_reject(why, EP_WHY("batchnorm: fattr[2..5] must be 0"));
        }
    }
    switch (nd->fn) {
    case EP_FN_FW: {
        const bool train = mode == BN_MODE_TRAIN;
        if (train ? (nd->n_in != 3 || nd->n_out != 4) : (nd->n_in != 5 || nd->n_out != 1)) {
            return ep_reject(why, EP_WHY("batchnorm.fw: needs (x, gamma, beta) -> (y, saved, running_mean, running_var) in train mode, (x, gamma, beta, running_mean, running_var) -> (y) in eval mode"));
        }
        const uint16_t x = nd->in[0], y = nd->out[0];
        if (!bn_same_act(m, x, y)) {
            return ep_reject(why, EP_WHY("batchnorm.fw: x and y must be batched f32 [C], [C][L] or [C][H][W] of the same shape"));
        }
        const uint32_t C = m->tensors[x].dims[0];
        const uint16_t rm = train ? nd->out[2] : nd->in[3], rv = train ? nd->out[3] : nd->in[4];
        if (!bn_is_vec(m, nd->in[1], C) || !bn_is_vec(m, nd->in[2], C) || !bn_is_vec(m, rm, C) || !bn_is_vec(m, rv, C)) {
            return ep_reject(why, EP_WHY("batchnorm.fw: gamma, beta, running_mean and running_var must be unbatched f32 [C]"));
        }
        if (train && !bn_is_vec(m, nd->out[1], 2u * C)) {
            return ep_reject(why, EP_WHY("batchnorm.fw: saved must be an unbatched f32 [2*C]"));
        }
        if (!ep_outputs_disjoint(m, nd, 0)) {
            return ep_reject(why, EP_WHY("batchnorm.fw: an output overlaps an input or another output (only y may alias x exactly)"));
        }
        return EP_OK;
    }
    case EP_FN_BW_INPUT: {
        const bool train = mode == BN_MODE_TRAIN;
        if (nd->n_in != (train ? 4 : 3) || nd->n_out != 1) {
            return ep_reject(why, EP_WHY("batchnorm.bw_input: needs (dy, x, gamma, saved) -> (dx) in train mode, (dy, gamma, running_var) -> (dx) in eval mode"));
        }
        const uint16_t dy = nd->in[0], dx = nd->out[0];
        if (!bn_same_act(m, dy, dx) || (train && !bn_same_act(m, dy, nd->in[1]))) {
            return ep_reject(why, EP_WHY("batchnorm.bw_input: dy, x and dx must be batched f32 [C], [C][L] or [C][H][W] of the same shape"));
        }
        const uint32_t C = m->tensors[dy].dims[0];
        const bool vecs = train ? bn_is_vec(m, nd->in[2], C) && bn_is_vec(m, nd->in[3], 2u * C)
                                : bn_is_vec(m, nd->in[1], C) && bn_is_vec(m, nd->in[2], C);
        if (!vecs) {
            return ep_reject(why, EP_WHY("batchnorm.bw_input: gamma/running_var must be unbatched f32 [C], saved [2*C]"));
        }
        if (!ep_outputs_disjoint(m, nd, 0)) {
            return ep_reject(why, EP_WHY("batchnorm.bw_input: dx overlaps an input (only dy exactly)"));
        }
        return EP_OK;
    }
    case EP_FN_BW_PARAM: {
        const bool train = mode == BN_MODE_TRAIN;
        if (nd->n_in != (train ? 3 : 4) || nd->n_out != 2) {
            return ep_reject(why, EP_WHY("batchnorm.bw_param: needs (dy, x, saved) -> (dgamma, dbeta) in train mode, (dy, x, running_mean, running_var) -> (dgamma, dbeta) in eval mode"));
        }
        const uint16_t dy = nd->in[0], x = nd->in[1];
        if (!bn_same_act(m, dy, x)) {
            return ep_reject(why, EP_WHY("batchnorm.bw_param: dy and x must be batched f32 [C], [C][L] or [C][H][W] of the same shape"));
        }
        const uint32_t C = m->tensors[x].dims[0];
        const bool vecs = train ? bn_is_vec(m, nd->in[2], 2u * C) : bn_is_vec(m, nd->in[2], C) && bn_is_vec(m, nd->in[3], C);
        if (!vecs || !bn_is_vec(m, nd->out[0], C) || !bn_is_vec(m, nd->out[1], C)) {
            return ep_reject(why, EP_WHY("batchnorm.bw_param: dgamma, dbeta, running_mean, running_var must be unbatched f32 [C], saved [2*C]"));
        }
        if (!ep_outputs_disjoint(m, nd, -1)) {
            return ep_reject(why, EP_WHY("batchnorm.bw_param: dgamma or dbeta overlaps another tensor of the node"));
        }
        return EP_OK;
    }
    default:
        return ep_reject(why, EP_WHY("batchnorm: unknown fn"));
    }
}

/* Kernel shape of a node from its activation tensor t. */
static ep_batchnorm_params_t bn_shape(const ep_ctx_t *c, const ep_node_t *nd, uint16_t t) {
    const ep_tensor_t *x = &c->model->tensors[t];
    const ep_batchnorm_params_t p = {.n = c->n, .c = x->dims[0], .hw = x->elems / x->dims[0],
                                     .eps = nd->fattr[0], .momentum = nd->fattr[1]};
    return p;
}

static void batchnorm_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_batchnorm_params_t p = bn_shape(c, nd, nd->in[0]);
    if (nd->iattr[0] == BN_MODE_TRAIN) {
        ep_batchnorm_fw_train_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->in[2]),
                                  ep_ctx_f32(c, nd->out[0]), ep_ctx_f32(c, nd->out[1]), ep_ctx_f32(c, nd->out[2]),
                                  ep_ctx_f32(c, nd->out[3]));
    } else {
        ep_batchnorm_fw_eval_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->in[2]),
                                 ep_ctx_f32(c, nd->in[3]), ep_ctx_f32(c, nd->in[4]), ep_ctx_f32(c, nd->out[0]));
    }
}

static void batchnorm_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_batchnorm_params_t p = bn_shape(c, nd, nd->in[0]);
    if (nd->iattr[0] == BN_MODE_TRAIN) {
        ep_batchnorm_bw_input_train_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]),
                                        ep_ctx_f32(c, nd->in[2]), ep_ctx_f32(c, nd->in[3]), ep_ctx_f32(c, nd->out[0]));
    } else {
        ep_batchnorm_bw_input_eval_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]),
                                       ep_ctx_f32(c, nd->in[2]), ep_ctx_f32(c, nd->out[0]));
    }
}

static void batchnorm_bw_param(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_batchnorm_params_t p = bn_shape(c, nd, nd->in[0]);
    if (nd->iattr[0] == BN_MODE_TRAIN) {
        ep_batchnorm_bw_param_train_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]),
                                        ep_ctx_f32(c, nd->in[2]), ep_ctx_f32(c, nd->out[0]), ep_ctx_f32(c, nd->out[1]));
    } else {
        ep_batchnorm_bw_param_eval_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]),
                                       ep_ctx_f32(c, nd->in[2]), ep_ctx_f32(c, nd->in[3]), ep_ctx_f32(c, nd->out[0]),
                                       ep_ctx_f32(c, nd->out[1]));
    }
}

const ep_op_t ep_op_batchnorm = {
    .name = "batchnorm",
    .prepare = batchnorm_prepare,
    .fn = {[EP_FN_FW] = batchnorm_fw, [EP_FN_BW_INPUT] = batchnorm_bw_input, [EP_FN_BW_PARAM] = batchnorm_bw_param},
};
