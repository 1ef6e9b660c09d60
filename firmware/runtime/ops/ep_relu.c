/* ep_relu.c — RELU: y = max(x, 0) and its input gradient; both may run in place. */
#include "ep_ops.h"

static bool is_act(const ep_model_t *m, uint16_t t) {
    return m->tensors[t].dtype == EP_DTYPE_F32 && (m->tensors[t].flags & EP_TF_BATCHED) != 0;
}

static ep_status_t relu_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn == EP_FN_FW) {
        if (nd->n_in != 1 || nd->n_out != 1) {
            return ep_reject(why, EP_WHY("relu.fw: needs input (x) and output (y)"));
        }
        const uint16_t x = nd->in[0], y = nd->out[0];
        if (!is_act(m, x) || !is_act(m, y) || !ep_same_shape(m, x, y)) {
            return ep_reject(why, EP_WHY("relu.fw: x and y must be batched f32 of the same shape"));
        }
        if (!ep_disjoint_or_same(m, y, x)) {
            return ep_reject(why, EP_WHY("relu.fw: y partially overlaps x"));
        }
        return EP_OK;
    }
    if (nd->fn == EP_FN_BW_INPUT) {
        if (nd->n_in != 2 || nd->n_out != 1) {
            return ep_reject(why, EP_WHY("relu.bw_input: needs inputs (dy, y) and output (dx)"));
        }
        const uint16_t dy = nd->in[0], y = nd->in[1], dx = nd->out[0];
        if (!is_act(m, dy) || !is_act(m, y) || !is_act(m, dx) || !ep_same_shape(m, dy, y) ||
            !ep_same_shape(m, dy, dx)) {
            return ep_reject(why, EP_WHY("relu.bw_input: dy, y and dx must be batched f32 of the same shape"));
        }
        if (!ep_disjoint_or_same(m, dx, dy) || !ep_disjoint_or_same(m, dx, y)) {
            return ep_reject(why, EP_WHY("relu.bw_input: dx partially overlaps an input"));
        }
        return EP_OK;
    }
    return ep_reject(why, EP_WHY("relu: only fw and bw_input exist"));
}

static void relu_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_dims_t d = {c->n, c->model->tensors[nd->in[0]].elems};
    ep_relu_fw_f32(&d, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->out[0]));
}

static void relu_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_dims_t d = {c->n, c->model->tensors[nd->in[0]].elems};
    ep_relu_bw_f32(&d, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->out[0]));
}

const ep_op_t ep_op_relu = {
    .name = "relu",
    .prepare = relu_prepare,
    .fn = {[EP_FN_FW] = relu_fw, [EP_FN_BW_INPUT] = relu_bw_input, [EP_FN_BW_PARAM] = NULL},
};

void ep_relu_fw_f32(const ep_dims_t *d, const float *x, float *y) {
    const uint32_t count = d->n * d->c;
    for (uint32_t i = 0; i < count; i++) {
        const float v = x[i];
        y[i] = v < 0.0f ? 0.0f : v;
    }
}

void ep_relu_bw_f32(const ep_dims_t *d, const float *dy, const float *y, float *dx) {
    const uint32_t count = d->n * d->c;
    for (uint32_t i = 0; i < count; i++) {
        dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
    }
}
