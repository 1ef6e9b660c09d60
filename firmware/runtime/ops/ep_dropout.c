/*
 * ep_dropout.c — DROPOUT kernels: training forward with a 1-bit keep mask drawn
 * from xorshift32 (state in/out through the params), eval identity, backward
 * from the saved mask. The PRNG and mask format are specified in ep_norm_act.h so
 * the host can reproduce them bit for bit.
 */
#include <stddef.h>

#include "ep_norm_act.h"
#include "ep_ops.h"

#define EP_DROPOUT_STATE0 0x6D2B79F5u

void ep_dropout_fw_train_f32(const ep_dropout_params_t *p, const float *x, float *y,
                             uint8_t *restrict mask) {
    const uint32_t count = p->count;
    const uint32_t thr = (uint32_t)(p->p_drop * 16777216.0f); /* p·2^24, exact; p ≤ 1 */
    const float scale = ep_dropout_scale(p);
    uint32_t s = *p->state;
    if (s == 0u) {
        s = EP_DROPOUT_STATE0;
    }
    uint32_t k = 0;
    for (; k < count; k += 8) {
        const uint32_t end = count - k < 8u ? count - k : 8u; /* once per byte, not per element */
        uint32_t bits = 0;
        for (uint32_t b = 0; b < end; b++) {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            const uint32_t keep = (s >> 8) >= thr;
            bits |= keep << b;
            y[k + b] = keep ? x[k + b] * scale : 0.0f;
        }
        mask[k >> 3] = (uint8_t)bits;
    }
    *p->state = s;
}

void ep_dropout_fw_eval_f32(const ep_dropout_params_t *p, const float *x, float *y) {
    if (x == y) {
        return;
    }
    const uint32_t count = p->count;
    for (uint32_t k = 0; k < count; k++) {
        y[k] = x[k];
    }
}

void ep_dropout_bw_f32(const ep_dropout_params_t *p, const float *dy, const uint8_t *restrict mask,
                       float *dx) {
    const uint32_t count = p->count;
    const float scale = ep_dropout_scale(p);
    for (uint32_t k = 0; k < count; k += 8) {
        const uint32_t end = count - k < 8u ? count - k : 8u;
        const uint32_t bits = mask[k >> 3];
        for (uint32_t b = 0; b < end; b++) {
            dx[k + b] = ((bits >> b) & 1u) ? dy[k + b] * scale : 0.0f;
        }
    }
}

/* ------------------------------------------------------------------------- */
/* DROPOUT node (docs/ops/norm_act.md)                                        */
/* ------------------------------------------------------------------------- */

/*
 * iattr[0] mode: 0 = train, 1 = eval (identity; fw only). fattr[0] p_drop in
 * [0, 1] on train nodes, 0 on the eval fw. Everything else 0. x, y, dy, dx are
 * batched f32 of one shape (E elements per sample); mask is a batched u8 [⌈E/8⌉]
 * (n·⌈E/8⌉ ≥ ⌈n·E/8⌉ bytes: the kernel's bits for n samples); state an unbatched
 * i32 [1] holding the xorshift32 state.
 *
 *   fw train  in (x)         out (y, mask, state)   y may alias x exactly; state read and advanced
 *   fw eval   in (x)         out (y)                y may alias x exactly
 *   bw_input  in (dy, mask)  out (dx)               dx may alias dy exactly
 */
enum { DROPOUT_TRAIN = 0, DROPOUT_EVAL = 1 };

static bool dropout_same(const ep_model_t *m, uint16_t a, uint16_t b) {
    const ep_tensor_t *x = &m->tensors[a], *y = &m->tensors[b];
    return x->dtype == EP_DTYPE_F32 && y->dtype == EP_DTYPE_F32 && (x->flags & EP_TF_BATCHED) != 0 &&
           (y->flags & EP_TF_BATCHED) != 0 && ep_same_shape(m, a, b);
}

static bool dropout_is_mask(const ep_model_t *m, uint16_t mask, uint16_t x) {
    const uint32_t e = m->tensors[x].elems;
    return ep_tensor_is(m, mask, EP_DTYPE_U8, true, 1) && m->tensors[mask].elems == (e >> 3) + ((e & 7u) != 0u);
}

static ep_status_t dropout_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    const uint16_t mode = nd->iattr[0];
    if (mode != DROPOUT_TRAIN && !(mode == DROPOUT_EVAL && nd->fn == EP_FN_FW)) {
        return ep_reject(why, EP_WHY("dropout: iattr[0] (mode) must be 0 (train), or 1 (eval) on fw"));
    }
    for (uint8_t i = 1; i < EP_NODE_IATTRS; i++) {
        if (nd->iattr[i] != 0) {
            return ep_reject(why, EP_WHY("dropout: iattr[1..11] must be 0"));
        }
    }
    const float p = nd->fattr[0];
    if (mode == DROPOUT_TRAIN ? !(p >= 0.0f && p <= 1.0f) : p != 0.0f) {
        return ep_reject(why, EP_WHY("dropout: p (fattr[0]) must be in [0, 1] (0 on the eval fw)"));
    }
    for (uint8_t i = 1; i < EP_NODE_FATTRS; i++) {
        if (nd->fattr[i] != 0.0f) {
            return ep_reject(why, EP_WHY("dropout: fattr[1..5] must be 0"));
        }
    }
    if (nd->fn == EP_FN_FW) {
        const bool train = mode == DROPOUT_TRAIN;
        if (nd->n_in != 1 || nd->n_out != (train ? 3 : 1)) {
            return ep_reject(why, EP_WHY("dropout.fw: needs (x) -> (y, mask, state) in train mode, (x) -> (y) in eval mode"));
        }
        const uint16_t x = nd->in[0], y = nd->out[0];
        if (!dropout_same(m, x, y)) {
            return ep_reject(why, EP_WHY("dropout.fw: x and y must be batched f32 of the same shape"));
        }
        if (!ep_disjoint_or_same(m, y, x)) {
            return ep_reject(why, EP_WHY("dropout.fw: y partially overlaps x"));
        }
        if (!train) {
            return EP_OK;
        }
        const uint16_t mask = nd->out[1], state = nd->out[2];
        if (!dropout_is_mask(m, mask, x)) {
            return ep_reject(why, EP_WHY("dropout.fw: mask must be a batched u8 [ceil(E/8)], E = x elements"));
        }
        if (!ep_tensor_is(m, state, EP_DTYPE_I32, false, 1) || m->tensors[state].elems != 1) {
            return ep_reject(why, EP_WHY("dropout.fw: state must be an unbatched i32 [1]"));
        }
        if (ep_overlap(m, mask, x) || ep_overlap(m, mask, y) || ep_overlap(m, state, x) || ep_overlap(m, state, y) ||
            ep_overlap(m, mask, state)) {
            return ep_reject(why, EP_WHY("dropout.fw: mask or state overlaps another tensor of the node"));
        }
        return EP_OK;
    }
    if (nd->fn == EP_FN_BW_INPUT) {
        if (nd->n_in != 2 || nd->n_out != 1) {
            return ep_reject(why, EP_WHY("dropout.bw_input: needs inputs (dy, mask) and output (dx)"));
        }
        const uint16_t dy = nd->in[0], mask = nd->in[1], dx = nd->out[0];
        if (!dropout_same(m, dy, dx)) {
            return ep_reject(why, EP_WHY("dropout.bw_input: dy and dx must be batched f32 of the same shape"));
        }
        if (!dropout_is_mask(m, mask, dy)) {
            return ep_reject(why, EP_WHY("dropout.bw_input: mask must be a batched u8 [ceil(E/8)], E = dy elements"));
        }
        if (!ep_disjoint_or_same(m, dx, dy) || ep_overlap(m, dx, mask)) {
            return ep_reject(why, EP_WHY("dropout.bw_input: dx overlaps the mask or partially dy"));
        }
        return EP_OK;
    }
    return ep_reject(why, EP_WHY("dropout: only fw and bw_input exist"));
}

static void dropout_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const uint32_t count = (uint32_t)c->n * c->model->tensors[nd->in[0]].elems;
    if (nd->iattr[0] == DROPOUT_EVAL) {
        const ep_dropout_params_t p = {.count = count, .p_drop = 0.0f, .state = NULL};
        ep_dropout_fw_eval_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->out[0]));
        return;
    }
    const ep_dropout_params_t p = {.count = count, .p_drop = nd->fattr[0],
                                   .state = (uint32_t *)(void *)ep_ctx_i32(c, nd->out[2])};
    ep_dropout_fw_train_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->out[0]),
                            c->arena + c->model->tensors[nd->out[1]].offset);
}

static void dropout_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_dropout_params_t p = {.count = (uint32_t)c->n * c->model->tensors[nd->in[0]].elems,
                                   .p_drop = nd->fattr[0], .state = NULL};
    ep_dropout_bw_f32(&p, ep_ctx_f32(c, nd->in[0]), c->arena + c->model->tensors[nd->in[1]].offset,
                      ep_ctx_f32(c, nd->out[0]));
}

const ep_op_t ep_op_dropout = {
    .name = "dropout",
    .prepare = dropout_prepare,
    .fn = {[EP_FN_FW] = dropout_fw, [EP_FN_BW_INPUT] = dropout_bw_input, [EP_FN_BW_PARAM] = NULL},
};
