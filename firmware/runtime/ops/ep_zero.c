/*
 * ep_zero.c — ZERO: set a tensor to 0.
 *
 * Gradient accumulation sums a parameter's gradients over several TRAIN
 * requests into a persistent accumulator; after the optimizer has applied it,
 * a ZERO node starts the next sum. FW: no inputs, out [t], any f32 or i32
 * tensor (batched: the current batch's rows; unbatched: all of it).
 */
#include <string.h>

#include "ep_ops.h"

static ep_status_t zero_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn != EP_FN_FW || nd->n_in != 0 || nd->n_out != 1) {
        return ep_reject(why, EP_WHY("zero.fw: needs no input and one output"));
    }
    const ep_tensor_t *t = &m->tensors[nd->out[0]];
    if (t->dtype != EP_DTYPE_F32 && t->dtype != EP_DTYPE_I32) {
        return ep_reject(why, EP_WHY("zero.fw: the output must be f32 or i32"));
    }
    return EP_OK;
}

static void zero_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_tensor_t *t = &c->model->tensors[nd->out[0]];
    const uint32_t rows = (t->flags & EP_TF_BATCHED) ? c->n : 1u;
    memset(c->arena + t->offset, 0, (size_t)rows * t->elems * 4u);
}

const ep_op_t ep_op_zero = {
    .name = "zero",
    .prepare = zero_prepare,
    .fn = {[EP_FN_FW] = zero_fw},
};
