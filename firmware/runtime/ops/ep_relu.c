/*
 * ep_relu.c — RELU: y = max(x, 0) and its input gradient; both may run in place.
 *
 * The backward needs only where x > 0. When nothing else keeps y for backward,
 * the forward also writes that as a bit mask (output 1: a batched u8 of
 * ceil(E / 8) bytes per sample of E elements, bit i % 8 of byte i / 8), and the
 * backward reads the mask instead of y: 1/32 of the memory held across the step.
 */
#include "ep_ops.h"

static bool is_act(const ep_model_t *m, uint16_t t) {
    return m->tensors[t].dtype == EP_DTYPE_F32 && (m->tensors[t].flags & EP_TF_BATCHED) != 0;
}

/* A bit mask of activation a: batched u8 [ceil(E / 8)]. */
static bool is_mask_of(const ep_model_t *m, uint16_t mask, uint16_t a) {
    return ep_tensor_is(m, mask, EP_DTYPE_U8, true, 1) && m->tensors[mask].elems == (m->tensors[a].elems + 7u) / 8u;
}

static ep_status_t relu_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn == EP_FN_FW) {
        if (nd->n_in != 1 || (nd->n_out != 1 && nd->n_out != 2)) {
            return ep_reject(why, EP_WHY("relu.fw: needs input (x) and outputs (y) or (y, mask)"));
        }
        if (nd->n_out == 2 && (!is_mask_of(m, nd->out[1], nd->in[0]) || ep_overlap(m, nd->out[1], nd->in[0]) ||
                               ep_overlap(m, nd->out[1], nd->out[0]))) {
            return ep_reject(why, EP_WHY("relu.fw: mask must be a batched u8 [ceil(E/8)] apart from x and y"));
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
            return ep_reject(why, EP_WHY("relu.bw_input: needs inputs (dy, y or mask) and output (dx)"));
        }
        const uint16_t dy = nd->in[0], y = nd->in[1], dx = nd->out[0];
        const bool y_ok = is_act(m, y) ? ep_same_shape(m, dy, y) : is_mask_of(m, y, dy);
        if (!is_act(m, dy) || !y_ok || !is_act(m, dx) || !ep_same_shape(m, dy, dx)) {
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
    if (nd->n_out == 2) {  /* the mask first: y may overwrite x in place */
        ep_relu_mask_u8(&d, ep_ctx_f32(c, nd->in[0]), c->arena + c->model->tensors[nd->out[1]].offset);
    }
    ep_relu_fw_f32(&d, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->out[0]));
}

static void relu_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_tensor_t *y = &c->model->tensors[nd->in[1]];
    const ep_dims_t d = {c->n, c->model->tensors[nd->in[0]].elems};
    if (y->dtype == EP_DTYPE_U8) {
        ep_relu_bw_mask_f32(&d, ep_ctx_f32(c, nd->in[0]), c->arena + y->offset, ep_ctx_f32(c, nd->out[0]));
    } else {
        ep_relu_bw_f32(&d, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->out[0]));
    }
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

void ep_relu_mask_u8(const ep_dims_t *d, const float *x, uint8_t *mask) {
    const uint32_t bytes = (d->c + 7u) / 8u;
    for (uint32_t s = 0; s < d->n; s++) {
        const float *xs = x + (size_t)s * d->c;
        uint8_t *ms = mask + (size_t)s * bytes;
        for (uint32_t b = 0; b < bytes; b++) {
            uint8_t v = 0;
            for (uint32_t i = 8u * b; i < d->c && i < 8u * b + 8u; i++) {
                v |= (uint8_t)((xs[i] > 0.0f) << (i % 8u));
            }
            ms[b] = v;
        }
    }
}

void ep_relu_bw_mask_f32(const ep_dims_t *d, const float *dy, const uint8_t *mask, float *dx) {
    const uint32_t bytes = (d->c + 7u) / 8u;
    for (uint32_t s = 0; s < d->n; s++) {
        const uint8_t *ms = mask + (size_t)s * bytes;
        const size_t row = (size_t)s * d->c;
        for (uint32_t i = 0; i < d->c; i++) {
            dx[row + i] = (ms[i / 8u] >> (i % 8u)) & 1u ? dy[row + i] : 0.0f;
        }
    }
}
