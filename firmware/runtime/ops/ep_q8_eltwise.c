/*
 * ep_q8_eltwise.c — the int8 boundary and element-wise ops (docs/ops/int8.md):
 *   QUANTIZE    FW  in (x f32)            out (q s8, e i32[1])       dynamic exponent
 *   DEQUANTIZE  FW  in (q s8, e i32[1])   out (y f32)
 *   RELU_Q8     FW  in (x s8, e i32[1])   out (y s8, e_y i32[1])     y may alias x
 *               BW  in (dy s8, e i32[1], y s8) out (dx s8, e_dx i32[1])  dx may alias dy
 * x/q/y share one shape and batchedness (batched: one exponent for the whole batch).
 */
#include "ep_q8.h"

static bool same_elems(const ep_model_t *m, uint16_t a, uint16_t b) {
    const ep_tensor_t *x = &m->tensors[a], *y = &m->tensors[b];
    return x->elems == y->elems && (x->flags & EP_TF_BATCHED) == (y->flags & EP_TF_BATCHED);
}

/* ---- QUANTIZE -------------------------------------------------------------------- */

static ep_status_t quantize_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn != EP_FN_FW || nd->n_in != 1 || nd->n_out != 2) {
        return ep_reject(why, EP_WHY("quantize.fw: needs input (x) and outputs (q, e)"));
    }
    const uint16_t x = nd->in[0], q = nd->out[0], e = nd->out[1];
    if (m->tensors[x].dtype != EP_DTYPE_F32 || m->tensors[q].dtype != EP_DTYPE_S8 || !same_elems(m, x, q)) {
        return ep_reject(why, EP_WHY("quantize: want x f32 and q s8 of the same size and batchedness"));
    }
    if (!ep_q8_is_exp(m, e, 1)) {
        return ep_reject(why, EP_WHY("quantize: e must be an unbatched i32 [1]"));
    }
    if (!(ep_iattrs_zero_from(nd, 0) && ep_fattrs_zero(nd)) || !ep_outputs_disjoint(m, nd, -1)) {
        return ep_reject(why, EP_WHY("quantize: attrs must be 0 and outputs disjoint from x and each other"));
    }
    return EP_OK;
}

static void quantize_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    ep_ctx_i32(c, nd->out[1])[0] =
        ep_q8_quantize_f32(ep_q8_count(c, nd->in[0]), ep_ctx_f32(c, nd->in[0]), ep_ctx_s8(c, nd->out[0]));
}

const ep_op_t ep_op_quantize = {.name = "quantize", .prepare = quantize_prepare, .fn = {[EP_FN_FW] = quantize_fw}};

/* ---- DEQUANTIZE -------------------------------------------------------------------- */

static ep_status_t dequantize_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn != EP_FN_FW || nd->n_in != 2 || nd->n_out != 1) {
        return ep_reject(why, EP_WHY("dequantize.fw: needs inputs (q, e) and output (y)"));
    }
    const uint16_t q = nd->in[0], e = nd->in[1], y = nd->out[0];
    if (m->tensors[q].dtype != EP_DTYPE_S8 || m->tensors[y].dtype != EP_DTYPE_F32 || !same_elems(m, q, y)) {
        return ep_reject(why, EP_WHY("dequantize: want q s8 and y f32 of the same size and batchedness"));
    }
    if (!ep_q8_is_exp(m, e, 1)) {
        return ep_reject(why, EP_WHY("dequantize: e must be an unbatched i32 [1]"));
    }
    if (!(ep_iattrs_zero_from(nd, 0) && ep_fattrs_zero(nd)) || !ep_outputs_disjoint(m, nd, -1)) {
        return ep_reject(why, EP_WHY("dequantize: attrs must be 0 and y disjoint from the inputs"));
    }
    return EP_OK;
}

static void dequantize_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    ep_q8_dequantize_f32(ep_q8_count(c, nd->in[0]), ep_ctx_s8(c, nd->in[0]), ep_ctx_i32(c, nd->in[1])[0],
                         ep_ctx_f32(c, nd->out[0]));
}

const ep_op_t ep_op_dequantize = {
    .name = "dequantize", .prepare = dequantize_prepare, .fn = {[EP_FN_FW] = dequantize_fw}};

/* ---- RELU_Q8 ---------------------------------------------------------------------- */

static ep_status_t relu_q8_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (!(ep_iattrs_zero_from(nd, 0) && ep_fattrs_zero(nd))) {
        return ep_reject(why, EP_WHY("relu_q8: attrs must be 0"));
    }
    if (nd->fn == EP_FN_FW) {
        if (nd->n_in != 2 || nd->n_out != 2) {
            return ep_reject(why, EP_WHY("relu_q8.fw: needs inputs (x, e) and outputs (y, e_y)"));
        }
        const uint16_t x = nd->in[0], y = nd->out[0];
        if (!ep_q8_is_batched(m, x, EP_DTYPE_S8) || m->tensors[y].dtype != EP_DTYPE_S8 || !same_elems(m, x, y) ||
            !ep_q8_is_exp(m, nd->in[1], 1) || !ep_q8_is_exp(m, nd->out[1], 1)) {
            return ep_reject(why, EP_WHY("relu_q8.fw: want x, y batched s8 of one size, e and e_y i32 [1]"));
        }
        if (!ep_outputs_disjoint(m, nd, 0)) {
            return ep_reject(why, EP_WHY("relu_q8.fw: outputs overlap inputs (only y over x exactly is allowed)"));
        }
        return EP_OK;
    }
    if (nd->fn == EP_FN_BW_INPUT) {
        if (nd->n_in != 3 || nd->n_out != 2) {
            return ep_reject(why, EP_WHY("relu_q8.bw_input: needs inputs (dy, e, y) and outputs (dx, e_dx)"));
        }
        const uint16_t dy = nd->in[0], y = nd->in[2], dx = nd->out[0];
        if (!ep_q8_is_batched(m, dy, EP_DTYPE_S8) || m->tensors[y].dtype != EP_DTYPE_S8 ||
            m->tensors[dx].dtype != EP_DTYPE_S8 || !same_elems(m, dy, y) || !same_elems(m, dy, dx) ||
            !ep_q8_is_exp(m, nd->in[1], 1) || !ep_q8_is_exp(m, nd->out[1], 1)) {
            return ep_reject(why, EP_WHY("relu_q8.bw_input: want dy, y, dx batched s8 of one size, e and e_dx i32 [1]"));
        }
        if (!ep_outputs_disjoint(m, nd, 0)) {
            return ep_reject(why, EP_WHY("relu_q8.bw_input: outputs overlap inputs (only dx over dy exactly is allowed)"));
        }
        return EP_OK;
    }
    return ep_reject(why, EP_WHY("relu_q8: unknown fn"));
}

static void relu_q8_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const uint32_t count = ep_q8_count(c, nd->in[0]);
    const int8_t *x = ep_ctx_s8(c, nd->in[0]);
    int8_t *y = ep_ctx_s8(c, nd->out[0]);
    for (uint32_t i = 0; i < count; i++) {
        y[i] = x[i] > 0 ? x[i] : 0;
    }
    ep_ctx_i32(c, nd->out[1])[0] = ep_ctx_i32(c, nd->in[1])[0];
}

static void relu_q8_bw(const ep_ctx_t *c, const ep_node_t *nd) {
    const uint32_t count = ep_q8_count(c, nd->in[0]);
    const int8_t *dy = ep_ctx_s8(c, nd->in[0]), *y = ep_ctx_s8(c, nd->in[2]);
    int8_t *dx = ep_ctx_s8(c, nd->out[0]);
    for (uint32_t i = 0; i < count; i++) {
        dx[i] = y[i] > 0 ? dy[i] : 0;
    }
    ep_ctx_i32(c, nd->out[1])[0] = ep_ctx_i32(c, nd->in[1])[0];
}

const ep_op_t ep_op_relu_q8 = {
    .name = "relu_q8",
    .prepare = relu_q8_prepare,
    .fn = {[EP_FN_FW] = relu_q8_fw, [EP_FN_BW_INPUT] = relu_q8_bw},
};
