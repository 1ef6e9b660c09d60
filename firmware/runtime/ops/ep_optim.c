/*
 * ep_optim.c — optimizers over a flat parameter (torch.optim semantics): SGD with
 * momentum / dampening / nesterov / L2 weight decay, Adam and AdamW with bias
 * correction; and gradient clipping by global L2 norm (sum of squares into an
 * accumulator per tensor, then one scale per tensor). Gradient accumulation over
 * micro-batches is ep_accumulate_f32 (ep_tensor.c) plus grad_scale = 1/k here.
 */
#include <math.h>

#include "ep_attn_optim.h"
#include "ep_ops.h"
#include "ep_parallel.h"

/* Elementwise updates run on the cluster (ep_parallel.h) over a split of the elements:
 * each element's arithmetic is the same on any core, so results do not depend on the
 * core count. Below this many elements per core, fewer cores are used. */
#define OPTIM_MIN_PER_CORE 64u

typedef struct {
    const void *p;
    const float *grad;
    float *param, *s1, *s2;
} optim_args_t;

static void sgd_momentum_core(void *arg) {
    const optim_args_t *a = arg;
    const ep_sgd_momentum_params_t *p = a->p;
    const float *restrict grad = a->grad;
    float *restrict param = a->param, *restrict buf = a->s1;
    uint32_t lo, count;
    ep_par_range(p->count, &lo, &count);
    grad += lo;
    param += lo;
    buf += lo;
    count -= lo;
    const float lr = p->lr, mu = p->momentum, wd = p->weight_decay, gs = p->grad_scale;
    const float keep = 1.0f - p->dampening;
    if (mu == 0.0f) {
        for (uint32_t i = 0; i < count; i++) {
            const float g = gs * grad[i] + wd * param[i];
            param[i] -= lr * g;
        }
        return;
    }
    const int first = p->step <= 1, nesterov = p->nesterov != 0;
    for (uint32_t i = 0; i < count; i++) {
        const float g = gs * grad[i] + wd * param[i];
        const float b = first ? g : mu * buf[i] + keep * g;
        buf[i] = b;
        param[i] -= lr * (nesterov ? g + mu * b : b);
    }
}

void ep_sgd_momentum_update_f32(const ep_sgd_momentum_params_t *p, const float *restrict grad,
                                float *restrict param, float *restrict buf) {
    optim_args_t a = {.p = p, .grad = grad, .param = param, .s1 = buf};
    ep_par_fork(ep_par_team_for(p->count, OPTIM_MIN_PER_CORE), sgd_momentum_core, &a);
}

/* 1 − βᵗ without cancellation: −expm1(t · log(β)), log(β) = log1p(β − 1) (β − 1 exact). */
static float one_minus_pow(float beta, uint32_t t) {
    return -expm1f((float)t * log1pf(beta - 1.0f));
}

static void adam_core(void *arg) {
    const optim_args_t *a = arg;
    const ep_adam_params_t *p = a->p;
    const float *restrict grad = a->grad;
    float *restrict param = a->param, *restrict m = a->s1, *restrict v = a->s2;
    uint32_t lo, count;
    ep_par_range(p->count, &lo, &count);
    grad += lo;
    param += lo;
    m += lo;
    v += lo;
    count -= lo;
    const float lr = p->lr, b1 = p->beta1, b2 = p->beta2, eps = p->eps, gs = p->grad_scale;
    const float wd_l2 = p->decoupled ? 0.0f : p->weight_decay;
    const float decay = p->decoupled ? 1.0f - lr * p->weight_decay : 1.0f;
    const float step_size = lr / one_minus_pow(b1, p->step);
    const float bc2_sqrt = sqrtf(one_minus_pow(b2, p->step));
    const float c1 = 1.0f - b1, c2 = 1.0f - b2;
    for (uint32_t i = 0; i < count; i++) {
        const float w = param[i] * decay;
        const float g = gs * grad[i] + wd_l2 * w;
        const float mi = m[i] + c1 * (g - m[i]);
        const float vi = b2 * v[i] + c2 * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] = w - step_size * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    }
}

void ep_adam_update_f32(const ep_adam_params_t *p, const float *restrict grad,
                        float *restrict param, float *restrict m, float *restrict v) {
    optim_args_t a = {.p = p, .grad = grad, .param = param, .s1 = m, .s2 = v};
    ep_par_fork(ep_par_team_for(p->count, OPTIM_MIN_PER_CORE), adam_core, &a);
}

void ep_clip_norm_sumsq_f32(const ep_clip_norm_params_t *p, const float *restrict x,
                            float *restrict acc) {
    const uint32_t count = p->count;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    uint32_t i = 0;
    for (; i + 4 <= count; i += 4) {
        s0 += x[i] * x[i];
        s1 += x[i + 1] * x[i + 1];
        s2 += x[i + 2] * x[i + 2];
        s3 += x[i + 3] * x[i + 3];
    }
    for (; i < count; i++) {
        s0 += x[i] * x[i];
    }
    acc[0] += (s0 + s1) + (s2 + s3);
}

void ep_clip_norm_scale_f32(const ep_clip_norm_params_t *p, const float *restrict sumsq,
                            float *restrict x) {
    const float coef = p->max_norm / (sqrtf(sumsq[0]) + 1e-6f);
    if (coef >= 1.0f) {
        return;
    }
    const uint32_t count = p->count;
    for (uint32_t i = 0; i < count; i++) {
        x[i] *= coef;
    }
}

/* ------------------------------------------------------------------------- */
/* Registry: SGD_MOMENTUM, ADAM, CLIP_NORM (contracts: docs/ops/attn_optim.md) */
/* ------------------------------------------------------------------------- */

/* An unbatched, trainable f32 parameter. */
static bool is_trainable_f32(const ep_model_t *m, uint16_t t) {
    const ep_tensor_t *x = &m->tensors[t];
    return x->dtype == EP_DTYPE_F32 && (x->flags & (EP_TF_BATCHED | EP_TF_TRAINABLE)) == EP_TF_TRAINABLE;
}

/* Optimizer state: an unbatched, untrained f32 that persists between steps: a PARAM, or
 * the arena copy of one kept in L3 (EP_TF_L3_COPY: stored back after the step). */
static bool is_state_f32(const ep_model_t *m, uint16_t t) {
    const ep_tensor_t *x = &m->tensors[t];
    return x->dtype == EP_DTYPE_F32 && (x->flags & (EP_TF_BATCHED | EP_TF_TRAINABLE)) == 0 &&
           (x->flags & (EP_TF_PARAM | EP_TF_L3_COPY)) != 0;
}

/* A step counter: state f32 [1]. */
static bool is_counter(const ep_model_t *m, uint16_t t) {
    return is_state_f32(m, t) && m->tensors[t].rank == 1 && m->tensors[t].dims[0] == 1;
}

/* An unbatched f32 gradient shaped like param. */
static bool is_grad_of(const ep_model_t *m, uint16_t g, uint16_t p) {
    const ep_tensor_t *x = &m->tensors[g];
    return x->dtype == EP_DTYPE_F32 && (x->flags & EP_TF_BATCHED) == 0 && ep_same_shape(m, g, p);
}

/* No two of the k tensors share a byte. */
static bool pairwise_disjoint(const ep_model_t *m, const uint16_t *t, uint8_t k) {
    for (uint8_t i = 0; i < k; i++) {
        for (uint8_t j = (uint8_t)(i + 1); j < k; j++) {
            if (ep_overlap(m, t[i], t[j])) {
                return false;
            }
        }
    }
    return true;
}

/* grad_scale (1/k after k accumulated batches): in (0, 1]. */
static bool scale_ok(float s) {
    return s > 0.0f && s <= 1.0f;
}

/*
 * Advance a step counter held as f32 in the arena and return the step being taken
 * (≥ 1). The arena value comes from the blob or a checkpoint, so it is clamped
 * into [0, 2^24 − 1] before the increment (no UB converting NaN or huge values);
 * from 2^24 steps on it stays at 2^24, where both bias corrections are 1 anyway.
 */
static uint32_t next_step(float *t) {
    float v = t[0];
    if (!(v >= 0.0f)) {
        v = 0.0f;
    } else if (v > 16777215.0f) {
        v = 16777215.0f;
    }
    v = floorf(v) + 1.0f;
    t[0] = v;
    return (uint32_t)v;
}

static ep_status_t sgd_momentum_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn != EP_FN_FW) {
        return ep_reject(why, EP_WHY("sgd_momentum: only fw exists"));
    }
    if (nd->n_in != 1 || (nd->n_out != 2 && nd->n_out != 3)) {
        return ep_reject(why, EP_WHY("sgd_momentum.fw: needs input (grad) and outputs (param, velocity[, t])"));
    }
    const uint16_t g = nd->in[0], p = nd->out[0], vel = nd->out[1];
    if (!is_trainable_f32(m, p)) {
        return ep_reject(why, EP_WHY("sgd_momentum.fw: param must be an unbatched trainable f32 tensor"));
    }
    if (!is_grad_of(m, g, p)) {
        return ep_reject(why, EP_WHY("sgd_momentum.fw: grad must be an unbatched f32 tensor shaped like param"));
    }
    if (!is_state_f32(m, vel) || !ep_same_shape(m, vel, p)) {
        return ep_reject(why, EP_WHY("sgd_momentum.fw: velocity must be untrained PARAM f32 state shaped like param"));
    }
    if (nd->n_out == 3 && !is_counter(m, nd->out[2])) {
        return ep_reject(why, EP_WHY("sgd_momentum.fw: t must be untrained PARAM f32 state of dims [1]"));
    }
    const uint16_t all[4] = {g, p, vel, nd->out[2]};
    if (!pairwise_disjoint(m, all, (uint8_t)(1 + nd->n_out))) {
        return ep_reject(why, EP_WHY("sgd_momentum.fw: grad, param, velocity and t must be disjoint"));
    }
    const float lr = nd->fattr[0], mu = nd->fattr[1], wd = nd->fattr[2], damp = nd->fattr[3];
    if (!(lr >= 0.0f) || !(mu >= 0.0f) || !(wd >= 0.0f) || !(damp >= 0.0f && damp <= 1.0f)) {
        return ep_reject(why, EP_WHY("sgd_momentum.fw: want lr, momentum, weight_decay >= 0 and dampening in [0, 1]"));
    }
    if (!scale_ok(nd->fattr[4])) {
        return ep_reject(why, EP_WHY("sgd_momentum.fw: grad_scale (fattr[4]) must be in (0, 1]"));
    }
    if (nd->iattr[0] > 1) {
        return ep_reject(why, EP_WHY("sgd_momentum.fw: nesterov (iattr[0]) must be 0 or 1"));
    }
    if (nd->iattr[0] == 1 && (mu == 0.0f || damp != 0.0f)) {
        return ep_reject(why, EP_WHY("sgd_momentum.fw: nesterov needs momentum > 0 and zero dampening"));
    }
    if (nd->n_out == 2 && damp != 0.0f) {
        return ep_reject(why, EP_WHY("sgd_momentum.fw: dampening needs a step counter t (the first step is undampened)"));
    }
    return EP_OK;
}

static void sgd_momentum_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    /* Without a counter, velocity starts at 0 and dampening is 0, so every step may take
     * the general formula: momentum · 0 + g is torch's first-step buf = g exactly. */
    const uint32_t step = nd->n_out == 3 ? next_step(ep_ctx_f32(c, nd->out[2])) : 2u;
    const ep_sgd_momentum_params_t p = {
        .count = c->model->tensors[nd->out[0]].elems, .step = step, .nesterov = nd->iattr[0],
        .lr = nd->fattr[0], .momentum = nd->fattr[1], .dampening = nd->fattr[3],
        .weight_decay = nd->fattr[2], .grad_scale = nd->fattr[4]};
    ep_sgd_momentum_update_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->out[0]), ep_ctx_f32(c, nd->out[1]));
}

const ep_op_t ep_op_sgd_momentum = {
    .name = "sgd_momentum",
    .prepare = sgd_momentum_prepare,
    .fn = {[EP_FN_FW] = sgd_momentum_fw},
};

static ep_status_t adam_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn != EP_FN_FW) {
        return ep_reject(why, EP_WHY("adam: only fw exists"));
    }
    if (nd->n_in != 1 || nd->n_out != 4) {
        return ep_reject(why, EP_WHY("adam.fw: needs input (grad) and outputs (param, m, v, t)"));
    }
    const uint16_t g = nd->in[0], p = nd->out[0], mt = nd->out[1], vt = nd->out[2], t = nd->out[3];
    if (!is_trainable_f32(m, p)) {
        return ep_reject(why, EP_WHY("adam.fw: param must be an unbatched trainable f32 tensor"));
    }
    if (!is_grad_of(m, g, p)) {
        return ep_reject(why, EP_WHY("adam.fw: grad must be an unbatched f32 tensor shaped like param"));
    }
    if (!is_state_f32(m, mt) || !ep_same_shape(m, mt, p) || !is_state_f32(m, vt) || !ep_same_shape(m, vt, p)) {
        return ep_reject(why, EP_WHY("adam.fw: m and v must be untrained PARAM f32 state shaped like param"));
    }
    if (!is_counter(m, t)) {
        return ep_reject(why, EP_WHY("adam.fw: t must be untrained PARAM f32 state of dims [1]"));
    }
    const uint16_t all[5] = {g, p, mt, vt, t};
    if (!pairwise_disjoint(m, all, 5)) {
        return ep_reject(why, EP_WHY("adam.fw: grad, param, m, v and t must be disjoint"));
    }
    const float lr = nd->fattr[0], b1 = nd->fattr[1], b2 = nd->fattr[2], eps = nd->fattr[3], wd = nd->fattr[4];
    if (!(lr >= 0.0f) || !(b1 >= 0.0f && b1 < 1.0f) || !(b2 >= 0.0f && b2 < 1.0f) || !(eps > 0.0f) || !(wd >= 0.0f)) {
        return ep_reject(why, EP_WHY("adam.fw: want lr >= 0, betas in [0, 1), eps > 0, weight_decay >= 0"));
    }
    if (!scale_ok(nd->fattr[5])) {
        return ep_reject(why, EP_WHY("adam.fw: grad_scale (fattr[5]) must be in (0, 1]"));
    }
    if (nd->iattr[0] > 1) {
        return ep_reject(why, EP_WHY("adam.fw: iattr[0] must be 0 (Adam) or 1 (AdamW)"));
    }
    return EP_OK;
}

static void adam_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_adam_params_t p = {
        .count = c->model->tensors[nd->out[0]].elems, .step = next_step(ep_ctx_f32(c, nd->out[3])),
        .decoupled = nd->iattr[0], .lr = nd->fattr[0], .beta1 = nd->fattr[1], .beta2 = nd->fattr[2],
        .eps = nd->fattr[3], .weight_decay = nd->fattr[4], .grad_scale = nd->fattr[5]};
    ep_adam_update_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->out[0]), ep_ctx_f32(c, nd->out[1]),
                       ep_ctx_f32(c, nd->out[2]));
}

const ep_op_t ep_op_adam = {
    .name = "adam",
    .prepare = adam_prepare,
    .fn = {[EP_FN_FW] = adam_fw},
};

/* An unbatched f32 tensor (a parameter gradient). */
static bool is_unbatched_f32(const ep_model_t *m, uint16_t t) {
    return m->tensors[t].dtype == EP_DTYPE_F32 && (m->tensors[t].flags & EP_TF_BATCHED) == 0;
}

/*
 * CLIP_NORM FW, two phases (iattr[0]):
 *   0  sum of squares: in [g1..gk] (k ≤ 6), out [sumsq f32 [1]]; iattr[1] = 1 zeroes
 *      sumsq first (the first node of a clip), 0 adds to it;
 *   1  scale: in [sumsq], out [g1..gk] (k ≤ 4), in place; fattr[0] = max_norm > 0.
 */
static ep_status_t clip_norm_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn != EP_FN_FW) {
        return ep_reject(why, EP_WHY("clip_norm: only fw exists"));
    }
    if (nd->iattr[0] > 1) {
        return ep_reject(why, EP_WHY("clip_norm.fw: iattr[0] must be 0 (sum of squares) or 1 (scale)"));
    }
    const bool sum = nd->iattr[0] == 0;
    const uint8_t k = sum ? nd->n_in : nd->n_out;
    if ((sum ? nd->n_out : nd->n_in) != 1 || k < 1) {
        return ep_reject(why, EP_WHY("clip_norm.fw: want (g1..gk) -> (sumsq) or (sumsq) -> (g1..gk)"));
    }
    const uint16_t s = sum ? nd->out[0] : nd->in[0];
    const uint16_t *gs = sum ? nd->in : nd->out;
    if (!ep_tensor_is(m, s, EP_DTYPE_F32, false, 1) || m->tensors[s].dims[0] != 1) {
        return ep_reject(why, EP_WHY("clip_norm.fw: sumsq must be an unbatched f32 [1]"));
    }
    for (uint8_t i = 0; i < k; i++) {
        if (!is_unbatched_f32(m, gs[i])) {
            return ep_reject(why, EP_WHY("clip_norm.fw: gradients must be unbatched f32"));
        }
        if (ep_overlap(m, gs[i], s)) {
            return ep_reject(why, EP_WHY("clip_norm.fw: a gradient overlaps sumsq"));
        }
    }
    if (sum) {
        if (nd->iattr[1] > 1) {
            return ep_reject(why, EP_WHY("clip_norm.fw: iattr[1] (reset) must be 0 or 1"));
        }
        return EP_OK;
    }
    if (!pairwise_disjoint(m, gs, k)) {
        return ep_reject(why, EP_WHY("clip_norm.fw: the scaled gradients must be disjoint"));
    }
    if (!(nd->fattr[0] > 0.0f)) {
        return ep_reject(why, EP_WHY("clip_norm.fw: max_norm (fattr[0]) must be > 0"));
    }
    return EP_OK;
}

static void clip_norm_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    if (nd->iattr[0] == 0) {
        float *s = ep_ctx_f32(c, nd->out[0]);
        if (nd->iattr[1]) {
            s[0] = 0.0f;
        }
        for (uint8_t i = 0; i < nd->n_in; i++) {
            const ep_clip_norm_params_t p = {c->model->tensors[nd->in[i]].elems, 0.0f};
            ep_clip_norm_sumsq_f32(&p, ep_ctx_f32(c, nd->in[i]), s);
        }
        return;
    }
    for (uint8_t i = 0; i < nd->n_out; i++) {
        const ep_clip_norm_params_t p = {c->model->tensors[nd->out[i]].elems, nd->fattr[0]};
        ep_clip_norm_scale_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->out[i]));
    }
}

const ep_op_t ep_op_clip_norm = {
    .name = "clip_norm",
    .prepare = clip_norm_prepare,
    .fn = {[EP_FN_FW] = clip_norm_fw},
};
