/* ep_softmax_ce.c — SOFTMAX_CE: softmax, mean cross-entropy and accuracy; its input gradient. */
#include <math.h>

#include "ep_ops.h"

/* logits/probs/dlogits: batched f32 [num_classes], so every label < num_classes indexes a row. */
static bool is_class_vector(const ep_model_t *m, uint16_t t) {
    return ep_tensor_is(m, t, EP_DTYPE_F32, true, 1) && m->tensors[t].dims[0] == m->num_classes;
}

static ep_status_t softmax_ce_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn == EP_FN_FW) {
        if (nd->n_in != 2 || nd->n_out != 2) {
            return ep_reject(why, EP_WHY("softmax_ce.fw: needs inputs (logits, labels) and outputs (probs, stats)"));
        }
        const uint16_t z = nd->in[0], lab = nd->in[1], p = nd->out[0], s = nd->out[1];
        if (!is_class_vector(m, z) || !is_class_vector(m, p)) {
            return ep_reject(why, EP_WHY("softmax_ce.fw: logits and probs must be batched f32 [num_classes]"));
        }
        if (lab != m->label_tensor) {
            return ep_reject(why, EP_WHY("softmax_ce.fw: labels must be the model's label tensor"));
        }
        if (!ep_tensor_is(m, s, EP_DTYPE_F32, false, 1) || m->tensors[s].dims[0] != 2) {
            return ep_reject(why, EP_WHY("softmax_ce.fw: stats must be an unbatched f32 [2]"));
        }
        if (ep_overlap(m, p, z) || ep_overlap(m, p, lab) || ep_overlap(m, p, s) || ep_overlap(m, s, z) ||
            ep_overlap(m, s, lab)) {
            return ep_reject(why, EP_WHY("softmax_ce.fw: probs or stats overlaps another tensor of the node"));
        }
        return EP_OK;
    }
    if (nd->fn == EP_FN_BW_INPUT) {
        if (nd->n_in != 2 || nd->n_out != 1) {
            return ep_reject(why, EP_WHY("softmax_ce.bw_input: needs inputs (probs, labels) and output (dlogits)"));
        }
        const uint16_t p = nd->in[0], lab = nd->in[1], dz = nd->out[0];
        if (!is_class_vector(m, p) || !is_class_vector(m, dz)) {
            return ep_reject(why, EP_WHY("softmax_ce.bw_input: probs and dlogits must be batched f32 [num_classes]"));
        }
        if (lab != m->label_tensor) {
            return ep_reject(why, EP_WHY("softmax_ce.bw_input: labels must be the model's label tensor"));
        }
        if (!ep_disjoint_or_same(m, dz, p) || ep_overlap(m, dz, lab)) {
            return ep_reject(why, EP_WHY("softmax_ce.bw_input: dlogits overlaps an input"));
        }
        return EP_OK;
    }
    return ep_reject(why, EP_WHY("softmax_ce: only fw and bw_input exist"));
}

static void softmax_ce_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_dims_t d = {c->n, c->model->tensors[nd->in[0]].elems};
    ep_softmax_ce_fw_f32(&d, ep_ctx_f32(c, nd->in[0]), ep_ctx_i32(c, nd->in[1]), ep_ctx_f32(c, nd->out[0]),
                         ep_ctx_f32(c, nd->out[1]));
}

static void softmax_ce_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_dims_t d = {c->n, c->model->tensors[nd->in[0]].elems};
    ep_softmax_ce_bw_f32(&d, ep_ctx_f32(c, nd->in[0]), ep_ctx_i32(c, nd->in[1]), ep_ctx_f32(c, nd->out[0]));
}

const ep_op_t ep_op_softmax_ce = {
    .name = "softmax_ce",
    .prepare = softmax_ce_prepare,
    .fn = {[EP_FN_FW] = softmax_ce_fw, [EP_FN_BW_INPUT] = softmax_ce_bw_input, [EP_FN_BW_PARAM] = NULL},
};

void ep_softmax_ce_fw_f32(const ep_dims_t *d, const float *restrict logits,
                          const int32_t *restrict labels, float *restrict probs,
                          float *restrict stats) {
    const uint32_t n = d->n, C = d->c;
    float loss = 0.0f;
    uint32_t correct = 0;
    for (uint32_t i = 0; i < n; i++, logits += C, probs += C) {
        float zmax = logits[0];
        uint32_t arg = 0;
        for (uint32_t j = 1; j < C; j++) {
            if (logits[j] > zmax) {
                zmax = logits[j];
                arg = j;
            }
        }
        float sum = 0.0f;
        for (uint32_t j = 0; j < C; j++) {
            const float e = expf(logits[j] - zmax);
            probs[j] = e;
            sum += e;
        }
        const float inv = 1.0f / sum;
        for (uint32_t j = 0; j < C; j++) {
            probs[j] *= inv;
        }
        const uint32_t y = (uint32_t)labels[i];
        loss += logf(sum) - (logits[y] - zmax);
        correct += arg == y;
    }
    stats[0] = loss / (float)n;
    stats[1] = (float)correct;
}

void ep_softmax_ce_bw_f32(const ep_dims_t *d, const float *probs, const int32_t *labels,
                          float *dlogits) {
    const uint32_t n = d->n, C = d->c;
    const float fn = (float)n;
    for (uint32_t i = 0; i < n; i++, probs += C, dlogits += C) {
        const uint32_t y = (uint32_t)labels[i];
        for (uint32_t j = 0; j < C; j++) {
            dlogits[j] = (probs[j] - (j == y ? 1.0f : 0.0f)) / fn;
        }
    }
}
