/*
 * ep_q8_update.c — weight updates of int8 training (docs/ops/int8.md):
 *   SGD_Q8           FW in (g i32, e_g i32 [k], e_p i32 [C | 1])  out (p s8 | i32, rng i32 [1])
 *                    iattr [0] lr_q (≥ 1) [1] lr_shift (≤ 62) [2] which e_g element; lr = lr_q · 2^-lr_shift.
 *                    int8 weights (or int32 bias codes) updated in place with stochastic
 *                    rounding; g is the int32 gradient of LINEAR_Q8/CONV2D_Q8 bw_param.
 *   REQUANT_WEIGHTS  FW in (w f32 [C, ...])           out (q s8 [C, ...], e i32 [C])  iattr [0] spread ≤ 4
 *                    FW in (b f32 [C], e_b i32 [1])   out (q i32 [C])
 *                    f32 master weights (trained by SGD/ADAM...) → the int8 codes the
 *                    int8 forward uses.
 */
#include "ep_q8.h"

static bool unbatched(const ep_model_t *m, uint16_t t) {
    return (m->tensors[t].flags & EP_TF_BATCHED) == 0;
}

/* ---- SGD_Q8 ------------------------------------------------------------------------- */

static ep_status_t sgd_q8_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn != EP_FN_FW || nd->n_in != 3 || nd->n_out != 2) {
        return ep_reject(why, EP_WHY("sgd_q8.fw: needs inputs (g, e_g, e_p) and outputs (p, rng)"));
    }
    const uint16_t g = nd->in[0], eg = nd->in[1], ep = nd->in[2], p = nd->out[0], rng = nd->out[1];
    const ep_tensor_t *pt = &m->tensors[p];
    if ((pt->dtype != EP_DTYPE_S8 && pt->dtype != EP_DTYPE_I32) || (pt->flags & EP_TF_TRAINABLE) == 0) {
        return ep_reject(why, EP_WHY("sgd_q8: p must be a TRAINABLE s8 or i32 parameter"));
    }
    if (m->tensors[g].dtype != EP_DTYPE_I32 || !unbatched(m, g) || !ep_same_shape(m, g, p)) {
        return ep_reject(why, EP_WHY("sgd_q8: g must be an unbatched i32 of p's shape"));
    }
    const ep_tensor_t *et = &m->tensors[ep];
    if (!ep_q8_is_exp(m, ep, et->elems) || pt->elems % et->elems != 0 || (et->elems != 1 && et->elems != pt->dims[0])) {
        return ep_reject(why, EP_WHY("sgd_q8: e_p must be an unbatched i32 [1] or [p dims[0]]"));
    }
    if (!ep_q8_is_exp(m, eg, m->tensors[eg].elems) || nd->iattr[2] >= m->tensors[eg].elems) {
        return ep_reject(why, EP_WHY("sgd_q8: e_g must be an unbatched i32 and iattr[2] one of its indices"));
    }
    if (!ep_q8_is_exp(m, rng, 1)) {
        return ep_reject(why, EP_WHY("sgd_q8: rng must be an unbatched i32 [1] (xorshift32 state)"));
    }
    if (nd->iattr[0] == 0 || nd->iattr[1] > 62 || !ep_iattrs_zero_from(nd, 3) || !ep_fattrs_zero(nd)) {
        return ep_reject(why, EP_WHY("sgd_q8: want iattr lr_q >= 1, lr_shift <= 62, index; the rest 0"));
    }
    if (!ep_outputs_disjoint(m, nd, -1)) {
        return ep_reject(why, EP_WHY("sgd_q8: p or rng overlaps an input or each other"));
    }
    return EP_OK;
}

static void sgd_q8_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_tensor_t *pt = &c->model->tensors[nd->out[0]];
    const ep_q8_sgd_params_t sp = {.lr_q = nd->iattr[0], .lr_shift = nd->iattr[1]};
    const bool s8 = pt->dtype == EP_DTYPE_S8;
    ep_q8_sgd(&sp, pt->elems, ep_ctx_i32(c, nd->in[0]), ep_ctx_i32(c, nd->in[1])[nd->iattr[2]], ep_ctx_i32(c, nd->in[2]),
              c->model->tensors[nd->in[2]].elems, s8 ? ep_ctx_s8(c, nd->out[0]) : NULL,
              s8 ? NULL : ep_ctx_i32(c, nd->out[0]), (uint32_t *)(void *)ep_ctx_i32(c, nd->out[1]));
}

const ep_op_t ep_op_sgd_q8 = {.name = "sgd_q8", .prepare = sgd_q8_prepare, .fn = {[EP_FN_FW] = sgd_q8_fw}};

/* ---- REQUANT_WEIGHTS ------------------------------------------------------------------ */

static ep_status_t requant_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn != EP_FN_FW) {
        return ep_reject(why, EP_WHY("requant_weights: only fw"));
    }
    if (!ep_fattrs_zero(nd)) {
        return ep_reject(why, EP_WHY("requant_weights: fattrs must be 0"));
    }
    if (nd->n_in == 1 && nd->n_out == 2) {
        const uint16_t w = nd->in[0], q = nd->out[0], e = nd->out[1];
        if (m->tensors[w].dtype != EP_DTYPE_F32 || !unbatched(m, w) || m->tensors[q].dtype != EP_DTYPE_S8 ||
            !unbatched(m, q) || !ep_same_shape(m, w, q) || !ep_q8_is_exp(m, e, m->tensors[w].dims[0])) {
            return ep_reject(why, EP_WHY("requant_weights: want w f32 [C, ...], q s8 of its shape, e i32 [C], all unbatched"));
        }
        if (nd->iattr[0] > EP_Q8_SPREAD || !ep_iattrs_zero_from(nd, 1)) {
            return ep_reject(why, EP_WHY("requant_weights: iattr[0] (exponent spread) must be <= 4, the rest 0"));
        }
    } else if (nd->n_in == 2 && nd->n_out == 1) {
        const uint16_t b = nd->in[0], q = nd->out[0];
        if (!ep_tensor_is(m, b, EP_DTYPE_F32, false, 1) || !ep_tensor_is(m, q, EP_DTYPE_I32, false, 1) ||
            !ep_same_shape(m, b, q) || !ep_q8_is_exp(m, nd->in[1], 1)) {
            return ep_reject(why, EP_WHY("requant_weights (bias): want b f32 [C], e_b i32 [1], q i32 [C], unbatched"));
        }
        if (!ep_iattrs_zero_from(nd, 0)) {
            return ep_reject(why, EP_WHY("requant_weights (bias): iattrs must be 0"));
        }
    } else {
        return ep_reject(why, EP_WHY("requant_weights: needs (w) -> (q, e) or (b, e_b) -> (q)"));
    }
    if (!ep_outputs_disjoint(m, nd, -1)) {
        return ep_reject(why, EP_WHY("requant_weights: outputs overlap inputs or each other"));
    }
    return EP_OK;
}

static void requant_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_tensor_t *wt = &c->model->tensors[nd->in[0]];
    if (nd->n_in == 1) {
        const uint32_t C = wt->dims[0];
        ep_q8_quantize_weights(C, wt->elems / C, nd->iattr[0], ep_ctx_f32(c, nd->in[0]), ep_ctx_s8(c, nd->out[0]),
                               ep_ctx_i32(c, nd->out[1]));
    } else {
        ep_q8_quantize_bias(wt->elems, ep_ctx_f32(c, nd->in[0]), ep_q8_ctx_exp(c, nd->in[1], 0),
                            ep_ctx_i32(c, nd->out[0]));
    }
}

const ep_op_t ep_op_requant_weights = {
    .name = "requant_weights", .prepare = requant_prepare, .fn = {[EP_FN_FW] = requant_fw}};
