/*
 * ep_softmax.c — row-wise softmax over the last dim and its input gradient (which
 * needs only the forward output y). Both may run in place.
 */
#include <math.h>

#include "ep_attn_optim.h"
#include "ep_ops.h"

void ep_softmax_fw_f32(const ep_softmax_params_t *p, const float *x, float *y) {
    const uint32_t rows = p->rows, C = p->cols;
    for (uint32_t r = 0; r < rows; r++, x += C, y += C) {
        float mx = x[0];
        for (uint32_t j = 1; j < C; j++) {
            mx = x[j] > mx ? x[j] : mx;
        }
        float sum = 0.0f;
        for (uint32_t j = 0; j < C; j++) {
            const float e = expf(x[j] - mx);
            y[j] = e;
            sum += e;
        }
        const float inv = 1.0f / sum;
        for (uint32_t j = 0; j < C; j++) {
            y[j] *= inv;
        }
    }
}

void ep_softmax_bw_f32(const ep_softmax_params_t *p, const float *dy, const float *y, float *dx) {
    const uint32_t rows = p->rows, C = p->cols;
    for (uint32_t r = 0; r < rows; r++, dy += C, y += C, dx += C) {
        float s0 = 0.0f, s1 = 0.0f;
        uint32_t j = 0;
        for (; j + 2 <= C; j += 2) {
            s0 += y[j] * dy[j];
            s1 += y[j + 1] * dy[j + 1];
        }
        for (; j < C; j++) {
            s0 += y[j] * dy[j];
        }
        const float s = s0 + s1;
        for (j = 0; j < C; j++) {
            dx[j] = y[j] * (dy[j] - s);
        }
    }
}

/* ------------------------------------------------------------------------- */
/* Registry: SOFTMAX over the last dim (contract: docs/ops/attn_optim.md)     */
/* ------------------------------------------------------------------------- */

static bool is_act(const ep_model_t *m, uint16_t t) {
    return m->tensors[t].dtype == EP_DTYPE_F32 && (m->tensors[t].flags & EP_TF_BATCHED) != 0;
}

static ep_status_t softmax_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn == EP_FN_FW) {
        if (nd->n_in != 1 || nd->n_out != 1) {
            return ep_reject(why, EP_WHY("softmax.fw: needs input (x) and output (y)"));
        }
        const uint16_t x = nd->in[0], y = nd->out[0];
        if (!is_act(m, x) || !is_act(m, y) || !ep_same_shape(m, x, y)) {
            return ep_reject(why, EP_WHY("softmax.fw: x and y must be batched f32 of the same shape"));
        }
        if (!ep_disjoint_or_same(m, y, x)) {
            return ep_reject(why, EP_WHY("softmax.fw: y partially overlaps x"));
        }
        return EP_OK;
    }
    if (nd->fn == EP_FN_BW_INPUT) {
        if (nd->n_in != 2 || nd->n_out != 1) {
            return ep_reject(why, EP_WHY("softmax.bw_input: needs inputs (dy, y) and output (dx)"));
        }
        const uint16_t dy = nd->in[0], y = nd->in[1], dx = nd->out[0];
        if (!is_act(m, dy) || !is_act(m, y) || !is_act(m, dx) || !ep_same_shape(m, dy, y) ||
            !ep_same_shape(m, dy, dx)) {
            return ep_reject(why, EP_WHY("softmax.bw_input: dy, y and dx must be batched f32 of the same shape"));
        }
        if (!ep_disjoint_or_same(m, dx, dy) || !ep_disjoint_or_same(m, dx, y)) {
            return ep_reject(why, EP_WHY("softmax.bw_input: dx partially overlaps an input"));
        }
        return EP_OK;
    }
    return ep_reject(why, EP_WHY("softmax: only fw and bw_input exist"));
}

/* Rows of the last dim over the batch: n · (elements / last dim). */
static ep_softmax_params_t softmax_shape(const ep_ctx_t *c, uint16_t t) {
    const ep_tensor_t *x = &c->model->tensors[t];
    const uint32_t cols = x->dims[x->rank - 1];
    const ep_softmax_params_t p = {c->n * (x->elems / cols), cols};
    return p;
}

static void softmax_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_softmax_params_t p = softmax_shape(c, nd->in[0]);
    ep_softmax_fw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->out[0]));
}

static void softmax_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_softmax_params_t p = softmax_shape(c, nd->in[0]);
    ep_softmax_bw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->out[0]));
}

const ep_op_t ep_op_softmax = {
    .name = "softmax",
    .prepare = softmax_prepare,
    .fn = {[EP_FN_FW] = softmax_fw, [EP_FN_BW_INPUT] = softmax_bw_input},
};
