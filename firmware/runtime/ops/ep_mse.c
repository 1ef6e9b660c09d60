/*
 * ep_mse.c — MSE loss (nn.MSELoss, mean over all n·c elements): the loss value and
 * the gradient of the mean loss w.r.t. the prediction.
 */
#include "ep_attn_optim.h"
#include "ep_ops.h"

void ep_mse_fw_f32(const ep_mse_params_t *p, const float *restrict pred,
                   const float *restrict target, float *restrict loss) {
    const uint32_t count = p->n * p->c;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    uint32_t i = 0;
    for (; i + 4 <= count; i += 4) {
        const float d0 = pred[i] - target[i], d1 = pred[i + 1] - target[i + 1];
        const float d2 = pred[i + 2] - target[i + 2], d3 = pred[i + 3] - target[i + 3];
        s0 += d0 * d0;
        s1 += d1 * d1;
        s2 += d2 * d2;
        s3 += d3 * d3;
    }
    for (; i < count; i++) {
        const float d = pred[i] - target[i];
        s0 += d * d;
    }
    loss[0] = ((s0 + s1) + (s2 + s3)) / (float)count;
}

void ep_mse_bw_f32(const ep_mse_params_t *p, const float *pred, const float *target, float *dpred) {
    const uint32_t count = p->n * p->c;
    const float k = 2.0f / (float)count;
    for (uint32_t i = 0; i < count; i++) {
        dpred[i] = k * (pred[i] - target[i]);
    }
}

/* ------------------------------------------------------------------------- */
/* Registry: MSE loss (contract: docs/blob.md, docs/ops/attn_optim.md)        */
/* ------------------------------------------------------------------------- */

static bool is_act(const ep_model_t *m, uint16_t t) {
    return m->tensors[t].dtype == EP_DTYPE_F32 && (m->tensors[t].flags & EP_TF_BATCHED) != 0;
}

static ep_status_t mse_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn != EP_FN_FW && nd->fn != EP_FN_BW_INPUT) {
        return ep_reject(why, EP_WHY("mse: only fw and bw_input exist"));
    }
    if (nd->n_in != 2 || nd->n_out != 1) {
        return ep_reject(why, nd->fn == EP_FN_FW ? EP_WHY("mse.fw: needs inputs (y, target) and output (stats)")
                                                 : EP_WHY("mse.bw_input: needs inputs (y, target) and output (dy)"));
    }
    const uint16_t y = nd->in[0], target = nd->in[1], out = nd->out[0];
    if (!is_act(m, y) || !is_act(m, target) || m->tensors[y].elems != m->tensors[target].elems) {
        return ep_reject(why, nd->fn == EP_FN_FW ? EP_WHY("mse.fw: y and target must be batched f32 of equal elements")
                                                 : EP_WHY("mse.bw_input: y and target must be batched f32 of equal elements"));
    }
    if (nd->fn == EP_FN_FW) {
        if (!ep_tensor_is(m, out, EP_DTYPE_F32, false, 1) || m->tensors[out].dims[0] != 2) {
            return ep_reject(why, EP_WHY("mse.fw: stats must be an unbatched f32 [2]"));
        }
        if (ep_overlap(m, out, y) || ep_overlap(m, out, target)) {
            return ep_reject(why, EP_WHY("mse.fw: stats overlaps y or target"));
        }
        return EP_OK;
    }
    if (!is_act(m, out) || m->tensors[out].elems != m->tensors[y].elems) {
        return ep_reject(why, EP_WHY("mse.bw_input: dy must be batched f32 with the elements of y"));
    }
    if (!ep_disjoint_or_same(m, out, y) || !ep_disjoint_or_same(m, out, target)) {
        return ep_reject(why, EP_WHY("mse.bw_input: dy partially overlaps y or target"));
    }
    return EP_OK;
}

static void mse_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_mse_params_t p = {c->n, c->model->tensors[nd->in[0]].elems};
    float *stats = ep_ctx_f32(c, nd->out[0]);
    ep_mse_fw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), stats);
    stats[1] = 0.0f; /* no accuracy for a regression loss */
}

static void mse_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_mse_params_t p = {c->n, c->model->tensors[nd->in[0]].elems};
    ep_mse_bw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->out[0]));
}

const ep_op_t ep_op_mse = {
    .name = "mse",
    .prepare = mse_prepare,
    .fn = {[EP_FN_FW] = mse_fw, [EP_FN_BW_INPUT] = mse_bw_input},
};
