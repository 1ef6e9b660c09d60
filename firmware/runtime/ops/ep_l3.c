/*
 * ep_l3.c — the L3 tier (ep_runtime.h, "L3 tier"): persistent tensors that do not
 * fit the arena live in the board's L3 memory, and these two ops move them:
 *
 *   L3_LOAD   FW: in [src (L3)], out [dst (arena)]: dst = src, L3 → arena
 *   L3_STORE  FW: in [src (arena)], out [dst (L3)]: dst = src, arena → L3
 *
 * The host compiler puts an L3_LOAD before each run of nodes that use an L3
 * tensor (they work on its arena copy) and an L3_STORE after a run that writes
 * it. Both tensors have the same dtype, elements and bytes; the arena copy is
 * not BATCHED (neither is the L3 tensor: a PARAM). No attributes. The copy goes
 * through the model's ep_l3_t (on GAP9 a uDMA transfer from HyperRAM), all
 * `bytes` of the tensor.
 */
#include "ep_ops.h"

static ep_status_t l3_prepare(const ep_model_t *m, const ep_node_t *nd, bool load, const char **why) {
    if (nd->fn != EP_FN_FW || nd->n_in != 1 || nd->n_out != 1 || !ep_iattrs_zero_from(nd, 0) ||
        !ep_fattrs_zero(nd)) {
        return ep_reject(why, EP_WHY("l3_load/l3_store.fw: needs (src) -> (dst) and no attributes"));
    }
    const ep_tensor_t *src = &m->tensors[nd->in[0]], *dst = &m->tensors[nd->out[0]];
    const ep_tensor_t *l3 = load ? src : dst, *arena = load ? dst : src;
    if (!(l3->flags & EP_TF_L3) || (arena->flags & (EP_TF_L3 | EP_TF_BATCHED))) {
        return ep_reject(why, EP_WHY("l3_load/l3_store: one L3 tensor (load: the input, store: the output) and an unbatched arena one"));
    }
    if (src->dtype != dst->dtype || src->elems != dst->elems || src->bytes != dst->bytes) {
        return ep_reject(why, EP_WHY("l3_load/l3_store: src and dst differ in dtype, elements or bytes"));
    }
    return EP_OK;
}

static ep_status_t l3_load_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    return l3_prepare(m, nd, true, why);
}

static ep_status_t l3_store_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    return l3_prepare(m, nd, false, why);
}

static void l3_load_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_tensor_t *src = &c->model->tensors[nd->in[0]], *dst = &c->model->tensors[nd->out[0]];
    c->model->l3->read(src->offset, c->arena + dst->offset, src->bytes);
}

static void l3_store_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_tensor_t *src = &c->model->tensors[nd->in[0]], *dst = &c->model->tensors[nd->out[0]];
    c->model->l3->write(dst->offset, c->arena + src->offset, src->bytes);
}

const ep_op_t ep_op_l3_load = {
    .name = "l3_load",
    .prepare = l3_load_prepare,
    .fn = {[EP_FN_FW] = l3_load_fw},
};

const ep_op_t ep_op_l3_store = {
    .name = "l3_store",
    .prepare = l3_store_prepare,
    .fn = {[EP_FN_FW] = l3_store_fw},
};
