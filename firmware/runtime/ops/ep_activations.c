/*
 * ep_activations.c — elementwise activations RELU6, ELU, GELU (exact), SIGMOID and
 * TANH: forward and input gradient. One pass over count contiguous elements each;
 * no restrict (exact in-place aliasing is allowed, see ep_norm_act.h), every
 * element is read before the same index is written.
 */
#include <math.h>

#include "ep_norm_act.h"
#include "ep_ops.h"

void ep_relu6_fw_f32(const ep_act_params_t *p, const float *x, float *y) {
    const uint32_t count = p->count;
    for (uint32_t i = 0; i < count; i++) {
        const float v = x[i];
        y[i] = v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v); /* NaN falls through both: propagates */
    }
}

void ep_relu6_bw_f32(const ep_act_params_t *p, const float *dy, const float *y, float *dx) {
    const uint32_t count = p->count;
    for (uint32_t i = 0; i < count; i++) {
        const float v = y[i];
        dx[i] = (v > 0.0f && v < 6.0f) ? dy[i] : 0.0f;
    }
}

void ep_elu_fw_f32(const ep_act_params_t *p, const float *x, float *y) {
    const uint32_t count = p->count;
    const float alpha = p->alpha;
    for (uint32_t i = 0; i < count; i++) {
        const float v = x[i];
        y[i] = v > 0.0f ? v : alpha * expm1f(v); /* expm1f: accurate near 0; → −alpha for v ≪ 0 */
    }
}

void ep_elu_bw_f32(const ep_act_params_t *p, const float *dy, const float *y, float *dx) {
    const uint32_t count = p->count;
    const float alpha = p->alpha;
    for (uint32_t i = 0; i < count; i++) {
        const float v = y[i];
        /* x ≤ 0: d/dx alpha(e^x − 1) = alpha·e^x = y + alpha */
        dx[i] = v > 0.0f ? dy[i] : dy[i] * (v + alpha);
    }
}

#define EP_SQRT1_2 0.70710678118654752f
#define EP_INV_SQRT_2PI 0.39894228040143268f

void ep_gelu_fw_f32(const ep_act_params_t *p, const float *x, float *y) {
    const uint32_t count = p->count;
    for (uint32_t i = 0; i < count; i++) {
        const float v = x[i];
        /* Φ(v) = erfc(−v/√2)/2: no cancellation for v ≪ 0 (unlike (1 + erf)/2) */
        y[i] = v * (0.5f * erfcf(-v * EP_SQRT1_2));
    }
}

void ep_gelu_bw_f32(const ep_act_params_t *p, const float *dy, const float *x, float *dx) {
    const uint32_t count = p->count;
    for (uint32_t i = 0; i < count; i++) {
        const float v = x[i];
        const float cdf = 0.5f * erfcf(-v * EP_SQRT1_2);
        const float pdf = EP_INV_SQRT_2PI * expf(-0.5f * v * v); /* 0, not NaN, for |v| ≥ 14 */
        dx[i] = dy[i] * fmaf(v, pdf, cdf);
    }
}

void ep_sigmoid_fw_f32(const ep_act_params_t *p, const float *x, float *y) {
    const uint32_t count = p->count;
    for (uint32_t i = 0; i < count; i++) {
        /* expf(−x) overflows to +Inf for x < −88.7: 1/Inf = 0, the limit */
        y[i] = 1.0f / (1.0f + expf(-x[i]));
    }
}

void ep_sigmoid_bw_f32(const ep_act_params_t *p, const float *dy, const float *y, float *dx) {
    const uint32_t count = p->count;
    for (uint32_t i = 0; i < count; i++) {
        const float v = y[i];
        dx[i] = dy[i] * (v * (1.0f - v));
    }
}

void ep_tanh_fw_f32(const ep_act_params_t *p, const float *x, float *y) {
    const uint32_t count = p->count;
    for (uint32_t i = 0; i < count; i++) {
        y[i] = tanhf(x[i]);
    }
}

void ep_tanh_bw_f32(const ep_act_params_t *p, const float *dy, const float *y, float *dx) {
    const uint32_t count = p->count;
    for (uint32_t i = 0; i < count; i++) {
        const float v = y[i];
        dx[i] = dy[i] * fmaf(-v, v, 1.0f); /* 1 − y², one rounding */
    }
}

/* ------------------------------------------------------------------------- */
/* RELU6, ELU, GELU, SIGMOID, TANH nodes (docs/ops/norm_act.md)               */
/* ------------------------------------------------------------------------- */

/*
 *   fw        in (x)      out (y)    y may alias x exactly
 *   bw_input  in (dy, t)  out (dx)   t = the forward output y (x for GELU);
 *                                    dx may alias dy or t exactly
 * All batched f32 of one shape. ELU: fattr[0] = alpha ≥ 0 on both fns; every
 * other attribute (all of them for the other ops) 0.
 */
static bool act_is(const ep_model_t *m, uint16_t t) {
    return m->tensors[t].dtype == EP_DTYPE_F32 && (m->tensors[t].flags & EP_TF_BATCHED) != 0;
}

static bool act_same(const ep_model_t *m, uint16_t a, uint16_t b) {
    return act_is(m, a) && act_is(m, b) && ep_same_shape(m, a, b);
}

/* 0: ok; 1: arity; 2: shapes; 3: overlap. */
static int act_check(const ep_model_t *m, const ep_node_t *nd) {
    if (nd->fn == EP_FN_FW) {
        if (nd->n_in != 1 || nd->n_out != 1) {
            return 1;
        }
        if (!act_same(m, nd->in[0], nd->out[0])) {
            return 2;
        }
        return ep_disjoint_or_same(m, nd->out[0], nd->in[0]) ? 0 : 3;
    }
    if (nd->n_in != 2 || nd->n_out != 1) {
        return 1;
    }
    if (!act_same(m, nd->in[0], nd->in[1]) || !act_same(m, nd->in[0], nd->out[0])) {
        return 2;
    }
    return ep_disjoint_or_same(m, nd->out[0], nd->in[0]) && ep_disjoint_or_same(m, nd->out[0], nd->in[1]) ? 0 : 3;
}

/* Attributes: all 0, except fattr[0] when `alpha_used` (ELU), which must be ≥ 0. */
static bool act_attrs_ok(const ep_node_t *nd, bool alpha_used) {
    for (uint8_t i = 0; i < EP_NODE_IATTRS; i++) {
        if (nd->iattr[i] != 0) {
            return false;
        }
    }
    for (uint8_t i = 0; i < EP_NODE_FATTRS; i++) {
        if (i == 0 && alpha_used ? !(nd->fattr[0] >= 0.0f) : nd->fattr[i] != 0.0f) {
            return false;
        }
    }
    return true;
}

static ep_act_params_t act_params(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_act_params_t p = {.count = (uint32_t)c->n * c->model->tensors[nd->in[0]].elems, .alpha = nd->fattr[0]};
    return p;
}

/* prepare, adapters and the ep_op_t of one activation; `t` names what bw reads. */
#define EP_ACT_OP(NAME, ALPHA, T, ATTR_WHY)                                                                   \
    static ep_status_t NAME##_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {           \
        if (!act_attrs_ok(nd, ALPHA)) {                                                                       \
            return ep_reject(why, EP_WHY(ATTR_WHY));                                                          \
        }                                                                                                     \
        switch (act_check(m, nd)) {                                                                           \
        case 0:                                                                                               \
            return EP_OK;                                                                                     \
        case 1:                                                                                               \
            return ep_reject(why, nd->fn == EP_FN_FW ? EP_WHY(#NAME ".fw: needs input (x) and output (y)")   \
                                                     : EP_WHY(#NAME ".bw_input: needs inputs (dy, " T        \
                                                              ") and output (dx)"));                         \
        case 2:                                                                                               \
            return ep_reject(why, EP_WHY(#NAME ": x, y, dy, dx must be batched f32 of the same shape"));    \
        default:                                                                                              \
            return ep_reject(why, EP_WHY(#NAME ": the output partially overlaps an input"));                 \
        }                                                                                                     \
    }                                                                                                         \
    static void NAME##_fw(const ep_ctx_t *c, const ep_node_t *nd) {                                           \
        const ep_act_params_t p = act_params(c, nd);                                                          \
        ep_##NAME##_fw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->out[0]));                          \
    }                                                                                                         \
    static void NAME##_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {                                     \
        const ep_act_params_t p = act_params(c, nd);                                                          \
        ep_##NAME##_bw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->out[0])); \
    }                                                                                                         \
    const ep_op_t ep_op_##NAME = {                                                                            \
        .name = #NAME,                                                                                        \
        .prepare = NAME##_prepare,                                                                            \
        .fn = {[EP_FN_FW] = NAME##_fw, [EP_FN_BW_INPUT] = NAME##_bw_input, [EP_FN_BW_PARAM] = NULL},          \
    }

EP_ACT_OP(relu6, false, "y", "relu6: attributes must be 0");
EP_ACT_OP(elu, true, "y", "elu: alpha (fattr[0]) must be >= 0, every other attribute 0");
EP_ACT_OP(gelu, false, "x", "gelu: attributes must be 0");
EP_ACT_OP(sigmoid, false, "y", "sigmoid: attributes must be 0");
EP_ACT_OP(tanh, false, "y", "tanh: attributes must be 0");
