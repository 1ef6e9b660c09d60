/*
 * ep_q8_attn.c — int8 multi-head self-attention and sequence pooling (the ATTENTION op
 * family, zephyr/Kconfig):
 *
 *   MHSA_Q8  FW        in (x s8, e_x, w_in, b_in, w_out, b_out, scratch)     out (y s8, e_y, saved s8, e_saved)
 *            BW_INPUT  in (dy s8, e_dy, w_in, w_out, saved, e_saved, scratch) out (dqkv s8, e_bw[, dx s8, e_dx])
 *            BW_PARAM  in (dy, e_dy, x, e_x, saved, dqkv, e_bw, scratch)    out (dw_in, db_in, dw_out, db_out)
 *   SEQPOOL_Q8  FW        in (x s8, e_x, g, c)                 out (y s8, e_y, wts, scratch)
 *               BW_INPUT  in (dy s8, e_dy, x, e_x, g, wts)     out (dx s8, e_dx, scratch)
 *               BW_PARAM  in (dy, e_dy, x, e_x, wts)           out (dg, dc, scratch)
 *
 * MHSA (ep_mhsa.c) with int8 activations and errors, and what it keeps between its
 * functions as int8 codes: the forward's saved qkv [T][3D] and probabilities P [H][T][T]
 * of every sample (exponents e_saved[0], [1]: a quarter of the f32 saved state, the
 * largest thing an attention layer keeps), and the gradient dqkv [T][3D] the input
 * gradient hands the parameter gradient. e_bw (i32 [3]) is e_saved passed on, then
 * dqkv's exponent, so the parameter gradient reads both from one tensor. Parameters and
 * their gradients stay f32.
 *
 * Each function computes exactly what DEQUANTIZE, the f32 MHSA node and QUANTIZE compute
 * in a row, bit for bit, with the saved state quantised as two tensors (qkv, P) and dqkv
 * as one: the f32 kernels run on one sample at a time over dequantized copies in the
 * scratch (per sample they make the batch call's bits: every product is a chain over one
 * sample's rows, and bw_param's gradients are running sums over the samples,
 * ep_mhsa_bw_param_add_f32), so no f32 tensor of the batch exists. An int8 output takes
 * two passes (its exponent is the whole batch's largest magnitude): the forward and the
 * input gradient each run twice.
 *
 * iattr[0] heads (≥ 1, divides D), everything else 0. x, y, dy, dx batched s8 [T][D];
 * e_x, e_y, e_dy, e_dx i32 [1], e_saved i32 [2], e_bw i32 [3]; saved batched s8
 * [T][3D + H·T]; dqkv batched s8 [T][3D]; weights f32 as MHSA's; scratch an unbatched s8
 * of 4·(6·T·D + (H+1)·T²) bytes (fw) or 4·(9·T·D + (H+1)·T²) (bw_input, bw_param).
 */
#include "ep_attn_optim.h"
#include "ep_q8.h"

typedef struct {
    ep_mhsa_params_t p1;              /* one sample */
    uint32_t n, td, qkv, probs;       /* samples, T·D, 3·T·D, H·T·T */
    float *a, *b, *saved, *mhsa, *dq; /* scratch: two T·D rows, one sample's saved, MHSA's
                                         scratch, one sample's dqkv (backward only) */
} mq_t;

static uint64_t scratch_floats(bool fw, uint64_t T, uint64_t D, uint64_t H) {
    return (fw ? 6 : 9) * T * D + (H + 1) * T * T;
}

static mq_t mq_setup(const ep_ctx_t *c, const ep_node_t *nd, uint16_t act, uint16_t scratch) {
    const ep_tensor_t *x = &c->model->tensors[act];
    const uint32_t T = x->dims[0], D = x->dims[1], H = nd->iattr[0];
    mq_t q = {.p1 = {1, T, D, H}, .n = c->n, .td = T * D, .qkv = 3 * T * D, .probs = H * T * T};
    q.a = (float *)(void *)ep_ctx_s8(c, scratch);
    q.b = q.a + q.td;
    q.saved = q.b + q.td;
    q.mhsa = q.saved + q.qkv + q.probs;
    q.dq = q.mhsa + q.td + T * T;
    return q;
}

/* Sample i's saved codes, dequantized into q->saved. */
static void mq_saved_in(const mq_t *q, const int8_t *saved, const int32_t *e, uint32_t i) {
    const int8_t *s = saved + i * (q->qkv + q->probs);
    ep_q8_dequantize_f32(q->qkv, s, e[0], q->saved);
    ep_q8_dequantize_f32(q->probs, s + q->qkv, e[1], q->saved + q->qkv);
}

static void mhsa_q8_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const mq_t q = mq_setup(c, nd, nd->in[0], nd->in[6]);
    const int8_t *x = ep_ctx_s8(c, nd->in[0]);
    const int32_t e_x = ep_ctx_i32(c, nd->in[1])[0];
    const float *w_in = ep_ctx_f32(c, nd->in[2]), *b_in = ep_ctx_f32(c, nd->in[3]);
    const float *w_out = ep_ctx_f32(c, nd->in[4]), *b_out = ep_ctx_f32(c, nd->in[5]);
    int8_t *y = ep_ctx_s8(c, nd->out[0]), *saved = ep_ctx_s8(c, nd->out[2]);
    int32_t *e_y = ep_ctx_i32(c, nd->out[1]), *e_s = ep_ctx_i32(c, nd->out[3]);
    float amax[3] = {0.0f, 0.0f, 0.0f}; /* y, qkv, P */
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < q.n; i++) {
            ep_q8_dequantize_f32(q.td, x + i * q.td, e_x, q.a);
            ep_mhsa_fw_f32(&q.p1, q.a, w_in, b_in, w_out, b_out, q.b, q.saved, q.mhsa);
            int8_t *s = saved + i * (q.qkv + q.probs); /* pass 0: magnitudes only (NULL outputs) */
            amax[0] = ep_q8_chunk_out(q.b, q.td, pass == 0 ? NULL : y + i * q.td, *e_y, amax[0]);
            amax[1] = ep_q8_chunk_out(q.saved, q.qkv, pass == 0 ? NULL : s, e_s[0], amax[1]);
            amax[2] = ep_q8_chunk_out(q.saved + q.qkv, q.probs, pass == 0 ? NULL : s + q.qkv, e_s[1], amax[2]);
        }
        if (pass == 0) {
            *e_y = ep_q8_exp_for_maxabs(amax[0]);
            e_s[0] = ep_q8_exp_for_maxabs(amax[1]);
            e_s[1] = ep_q8_exp_for_maxabs(amax[2]);
        }
    }
}

static void mhsa_q8_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const mq_t q = mq_setup(c, nd, nd->in[0], nd->in[6]);
    const int8_t *dy = ep_ctx_s8(c, nd->in[0]), *saved = ep_ctx_s8(c, nd->in[4]);
    const int32_t e_dy = ep_ctx_i32(c, nd->in[1])[0], *e_s = ep_ctx_i32(c, nd->in[5]);
    const float *w_in = ep_ctx_f32(c, nd->in[2]), *w_out = ep_ctx_f32(c, nd->in[3]);
    int8_t *dqkv = ep_ctx_s8(c, nd->out[0]), *dx = nd->n_out == 4 ? ep_ctx_s8(c, nd->out[2]) : NULL;
    int32_t *e_bw = ep_ctx_i32(c, nd->out[1]), e_dx = 0;
    float amax[2] = {0.0f, 0.0f}; /* dqkv, dx */
    e_bw[0] = e_s[0];
    e_bw[1] = e_s[1];
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < q.n; i++) {
            ep_q8_dequantize_f32(q.td, dy + i * q.td, e_dy, q.a);
            mq_saved_in(&q, saved, e_bw, i);
            if (dx != NULL) {
                ep_mhsa_bw_input_f32(&q.p1, q.a, w_in, w_out, q.saved, q.dq, q.b, q.mhsa);
            } else {
                ep_mhsa_bw_qkv_f32(&q.p1, q.a, w_out, q.saved, q.dq, q.mhsa);
            }
            amax[0] = ep_q8_chunk_out(q.dq, q.qkv, pass == 0 ? NULL : dqkv + i * q.qkv, e_bw[2], amax[0]);
            if (dx != NULL) {
                amax[1] = ep_q8_chunk_out(q.b, q.td, pass == 0 ? NULL : dx + i * q.td, e_dx, amax[1]);
            }
        }
        if (pass == 0) {
            e_bw[2] = ep_q8_exp_for_maxabs(amax[0]);
            e_dx = ep_q8_exp_for_maxabs(amax[1]);
        }
    }
    if (dx != NULL) {
        ep_ctx_i32(c, nd->out[3])[0] = e_dx;
    }
}

static void mhsa_q8_bw_param(const ep_ctx_t *c, const ep_node_t *nd) {
    const mq_t q = mq_setup(c, nd, nd->in[0], nd->in[7]);
    const int8_t *dy = ep_ctx_s8(c, nd->in[0]), *x = ep_ctx_s8(c, nd->in[2]), *saved = ep_ctx_s8(c, nd->in[4]);
    const int8_t *dqkv = ep_ctx_s8(c, nd->in[5]);
    const int32_t e_dy = ep_ctx_i32(c, nd->in[1])[0], e_x = ep_ctx_i32(c, nd->in[3])[0];
    const int32_t *e_bw = ep_ctx_i32(c, nd->in[6]);
    float *g[4];
    for (uint8_t k = 0; k < 4; k++) {
        g[k] = ep_ctx_f32(c, nd->out[k]);
    }
    for (uint32_t i = 0; i < q.n; i++) {
        ep_q8_dequantize_f32(q.td, dy + i * q.td, e_dy, q.a);
        ep_q8_dequantize_f32(q.td, x + i * q.td, e_x, q.b);
        ep_q8_dequantize_f32(q.qkv, dqkv + i * q.qkv, e_bw[2], q.dq);
        mq_saved_in(&q, saved, e_bw, i);
        (i == 0 ? ep_mhsa_bw_param_f32 : ep_mhsa_bw_param_add_f32)(&q.p1, q.a, q.b, q.saved, q.dq, g[0], g[1],
                                                                   g[2], g[3], q.mhsa);
    }
}

/* ---- prepare ------------------------------------------------------------------------ */

static bool mq_act(const ep_model_t *m, uint16_t t, uint32_t T, uint32_t D) {
    const ep_tensor_t *x = &m->tensors[t];
    return ep_tensor_is(m, t, EP_DTYPE_S8, true, 2) && x->dims[0] == T && x->dims[1] == D;
}

static bool mq_f32(const ep_model_t *m, uint16_t t, bool batched, uint32_t rank, uint32_t d0, uint32_t d1) {
    const ep_tensor_t *x = &m->tensors[t];
    return ep_tensor_is(m, t, EP_DTYPE_F32, batched, (uint8_t)rank) && x->dims[0] == d0 && (rank == 1 || x->dims[1] == d1);
}

static ep_status_t mhsa_q8_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    static const uint8_t n_in[3] = {7, 7, 8};
    if (nd->fn > EP_FN_BW_PARAM) {
        return ep_reject(why, EP_WHY("mhsa_q8: unknown fn"));
    }
    const bool fw = nd->fn == EP_FN_FW, bwi = nd->fn == EP_FN_BW_INPUT;
    const bool outs_ok = bwi ? (nd->n_out == 2 || nd->n_out == 4) : nd->n_out == 4;
    if (nd->n_in != n_in[nd->fn] || !outs_ok) {
        return ep_reject(why, EP_WHY("mhsa_q8: wrong inputs or outputs for its fn (docs/ops/int8.md)"));
    }
    if (!ep_iattrs_zero_from(nd, 1) || !ep_fattrs_zero(nd)) {
        return ep_reject(why, EP_WHY("mhsa_q8: iattr[1..11] and fattrs must be 0"));
    }
    const ep_tensor_t *a = &m->tensors[nd->in[0]];
    if (!ep_tensor_is(m, nd->in[0], EP_DTYPE_S8, true, 2) || !ep_q8_is_exp(m, nd->in[1], 1)) {
        return ep_reject(why, EP_WHY("mhsa_q8: x (fw) or dy (bw) must be batched s8 [T][D] with an i32 [1] exponent"));
    }
    const uint32_t T = a->dims[0], D = a->dims[1], H = nd->iattr[0];
    if (H == 0 || D % H != 0 || 3u * D + H * T > 0xFFFFu) {
        return ep_reject(why, EP_WHY("mhsa_q8: heads (iattr[0]) must be >= 1 and divide D, and 3D + heads*T fit a dim"));
    }
    const uint16_t saved = fw ? nd->out[2] : nd->in[4];
    const uint16_t e_saved = fw ? nd->out[3] : bwi ? nd->in[5] : nd->in[6];
    const uint16_t scratch = nd->in[fw || bwi ? 6 : 7];
    if (!ep_tensor_is(m, saved, EP_DTYPE_S8, true, 2) || m->tensors[saved].dims[0] != T ||
        m->tensors[saved].dims[1] != 3u * D + H * T || !ep_q8_is_exp(m, e_saved, nd->fn == EP_FN_BW_PARAM ? 3 : 2)) {
        return ep_reject(why, EP_WHY("mhsa_q8: saved must be batched s8 [T][3D + heads*T] with an i32 [2] exponent (i32 [3] e_bw in bw_param)"));
    }
    if (!ep_q8_scratch_ok(m, scratch, 4u * scratch_floats(fw, T, D, H))) {
        return ep_reject(why, EP_WHY("mhsa_q8: scratch must be unbatched s8 of >= 4*(6*T*D + (heads+1)*T*T) bytes (9*T*D in the backward)"));
    }
    const uint16_t dqkv = bwi ? nd->out[0] : nd->in[5];
    bool ok = fw || (ep_tensor_is(m, dqkv, EP_DTYPE_S8, true, 2) && m->tensors[dqkv].dims[0] == T &&
                     m->tensors[dqkv].dims[1] == 3u * D);
    if (fw) {
        ok = mq_f32(m, nd->in[2], false, 2, 3 * D, D) && mq_f32(m, nd->in[3], false, 1, 3 * D, 0) &&
             mq_f32(m, nd->in[4], false, 2, D, D) && mq_f32(m, nd->in[5], false, 1, D, 0) &&
             mq_act(m, nd->out[0], T, D) && ep_q8_is_exp(m, nd->out[1], 1);
    } else if (bwi) {
        ok = ok && mq_f32(m, nd->in[2], false, 2, 3 * D, D) && mq_f32(m, nd->in[3], false, 2, D, D) &&
             ep_q8_is_exp(m, nd->out[1], 3) &&
             (nd->n_out == 2 || (mq_act(m, nd->out[2], T, D) && ep_q8_is_exp(m, nd->out[3], 1)));
    } else {
        ok = ok && mq_act(m, nd->in[2], T, D) && ep_q8_is_exp(m, nd->in[3], 1) &&
             mq_f32(m, nd->out[0], false, 2, 3 * D, D) && mq_f32(m, nd->out[1], false, 1, 3 * D, 0) &&
             mq_f32(m, nd->out[2], false, 2, D, D) && mq_f32(m, nd->out[3], false, 1, D, 0);
    }
    if (!ok) {
        return ep_reject(why, EP_WHY("mhsa_q8: want weights f32 as mhsa's (w_in [3D][D], b_in [3D], w_out [D][D], b_out [D]), y/dx s8 [T][D] with an exponent, dqkv batched s8 [T][3D], e_bw i32 [3]"));
    }
    if (!ep_outputs_disjoint(m, nd, -1)) {
        return ep_reject(why, EP_WHY("mhsa_q8: an output overlaps an input or another output"));
    }
    for (uint8_t i = 0; i < nd->n_in; i++) {
        if (nd->in[i] != scratch && ep_overlap(m, nd->in[i], scratch)) {
            return ep_reject(why, EP_WHY("mhsa_q8: the scratch overlaps another input"));
        }
    }
    return EP_OK;
}

const ep_op_t ep_op_mhsa_q8 = {
    .name = "mhsa_q8",
    .prepare = mhsa_q8_prepare,
    .fn = {[EP_FN_FW] = mhsa_q8_fw, [EP_FN_BW_INPUT] = mhsa_q8_bw_input, [EP_FN_BW_PARAM] = mhsa_q8_bw_param},
};

/* ---- SEQPOOL_Q8 ------------------------------------------------------------------------ */

/*
 * SEQPOOL over int8 tokens: x, dx batched s8 [T][D], y, dy batched s8 [D], exponents
 * i32 [1]; g, dg unbatched f32 [D], c, dc [1]; wts batched f32 [T] (SEQPOOL's); scratch
 * an unbatched s8 of ≥ 4·(2·T·D + D) bytes. No attributes. As MHSA_Q8: the f32 kernels
 * one sample at a time over dequantized copies (the parameter gradients are running sums
 * over the samples, ep_seqpool_bw_param_add_f32), an int8 output in two passes.
 */
/* An unbatched f32 of `elems` elements, any rank (g is Linear(D, 1).weight, [1][D]). */
static bool sq_vec(const ep_model_t *m, uint16_t t, uint32_t elems) {
    const ep_tensor_t *x = &m->tensors[t];
    return x->dtype == EP_DTYPE_F32 && (x->flags & EP_TF_BATCHED) == 0 && x->elems == elems;
}

static ep_status_t seqpool_q8_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    static const uint8_t n_in[3] = {4, 6, 5}, n_out[3] = {4, 3, 3};
    if (nd->fn > EP_FN_BW_PARAM || nd->n_in != n_in[nd->fn] || nd->n_out != n_out[nd->fn] ||
        !ep_iattrs_zero_from(nd, 0) || !ep_fattrs_zero(nd)) {
        return ep_reject(why, EP_WHY("seqpool_q8: wrong inputs, outputs or attributes for its fn (docs/ops/int8.md)"));
    }
    const bool fw = nd->fn == EP_FN_FW;
    const uint16_t x = fw ? nd->in[0] : nd->in[2], pooled = fw ? nd->out[0] : nd->in[0];
    if (!ep_tensor_is(m, x, EP_DTYPE_S8, true, 2) || !ep_q8_is_batched(m, pooled, EP_DTYPE_S8) ||
        !ep_q8_is_exp(m, fw ? nd->in[1] : nd->in[3], 1) || !ep_q8_is_exp(m, fw ? nd->out[1] : nd->in[1], 1)) {
        return ep_reject(why, EP_WHY("seqpool_q8: x must be batched s8 [T][D], y/dy batched s8 [D], each with an i32 [1] exponent"));
    }
    const uint32_t T = m->tensors[x].dims[0], D = m->tensors[x].dims[1];
    const uint16_t wts = fw ? nd->out[2] : nd->in[nd->fn == EP_FN_BW_INPUT ? 5 : 4];
    const uint16_t scratch = fw ? nd->out[3] : nd->out[2];
    bool ok = m->tensors[pooled].elems == D && ep_q8_is_batched(m, wts, EP_DTYPE_F32) && m->tensors[wts].elems == T &&
              ep_q8_scratch_ok(m, scratch, 4u * (2u * (uint64_t)T * D + D));
    if (fw) {
        ok = ok && sq_vec(m, nd->in[2], D) && sq_vec(m, nd->in[3], 1);
    } else if (nd->fn == EP_FN_BW_INPUT) {
        ok = ok && sq_vec(m, nd->in[4], D) && mq_act(m, nd->out[0], T, D) && ep_q8_is_exp(m, nd->out[1], 1);
    } else {
        ok = ok && sq_vec(m, nd->out[0], D) && sq_vec(m, nd->out[1], 1);
    }
    if (!ok) {
        return ep_reject(why, EP_WHY("seqpool_q8: want g, dg unbatched f32 [D], c, dc [1], wts batched f32 [T], dx like x with an exponent, scratch >= 4*(2*T*D + D) bytes"));
    }
    if (!ep_outputs_disjoint(m, nd, -1)) {
        return ep_reject(why, EP_WHY("seqpool_q8: an output overlaps an input or another output"));
    }
    return EP_OK;
}

typedef struct {
    ep_seqpool_params_t p1; /* one sample */
    uint32_t n, td, d;
    float *a, *b, *v; /* scratch: two T·D rows and one D row */
} sq_t;

static sq_t sq_setup(const ep_ctx_t *c, uint16_t x, uint16_t scratch) {
    const ep_tensor_t *t = &c->model->tensors[x];
    sq_t q = {.p1 = {1, t->dims[0], t->dims[1]}, .n = c->n, .td = t->dims[0] * t->dims[1], .d = t->dims[1]};
    q.a = ep_ctx_f32(c, scratch);
    q.b = q.a + q.td;
    q.v = q.b + q.td;
    return q;
}

static void seqpool_q8_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const sq_t q = sq_setup(c, nd->in[0], nd->out[3]);
    const int8_t *x = ep_ctx_s8(c, nd->in[0]);
    const int32_t e_x = ep_ctx_i32(c, nd->in[1])[0];
    const float *g = ep_ctx_f32(c, nd->in[2]), *cb = ep_ctx_f32(c, nd->in[3]);
    float *wts = ep_ctx_f32(c, nd->out[2]), amax = 0.0f;
    int8_t *y = ep_ctx_s8(c, nd->out[0]);
    int32_t e_y = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < q.n; i++) {
            ep_q8_dequantize_f32(q.td, x + i * q.td, e_x, q.a);
            ep_seqpool_fw_f32(&q.p1, q.a, g, cb, q.v, wts + i * q.p1.t);
            amax = ep_q8_chunk_out(q.v, q.d, pass == 0 ? NULL : y + i * q.d, e_y, amax);
        }
        e_y = pass == 0 ? ep_q8_exp_for_maxabs(amax) : e_y;
    }
    ep_ctx_i32(c, nd->out[1])[0] = e_y;
}

static void seqpool_q8_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const sq_t q = sq_setup(c, nd->in[2], nd->out[2]);
    const int8_t *dy = ep_ctx_s8(c, nd->in[0]), *x = ep_ctx_s8(c, nd->in[2]);
    const int32_t e_dy = ep_ctx_i32(c, nd->in[1])[0], e_x = ep_ctx_i32(c, nd->in[3])[0];
    const float *g = ep_ctx_f32(c, nd->in[4]), *wts = ep_ctx_f32(c, nd->in[5]);
    int8_t *dx = ep_ctx_s8(c, nd->out[0]);
    float amax = 0.0f;
    int32_t e_dx = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < q.n; i++) {
            ep_q8_dequantize_f32(q.d, dy + i * q.d, e_dy, q.v);
            ep_q8_dequantize_f32(q.td, x + i * q.td, e_x, q.a);
            ep_seqpool_bw_input_f32(&q.p1, q.v, q.a, g, wts + i * q.p1.t, q.b);
            amax = ep_q8_chunk_out(q.b, q.td, pass == 0 ? NULL : dx + i * q.td, e_dx, amax);
        }
        e_dx = pass == 0 ? ep_q8_exp_for_maxabs(amax) : e_dx;
    }
    ep_ctx_i32(c, nd->out[1])[0] = e_dx;
}

static void seqpool_q8_bw_param(const ep_ctx_t *c, const ep_node_t *nd) {
    const sq_t q = sq_setup(c, nd->in[2], nd->out[2]);
    const int8_t *dy = ep_ctx_s8(c, nd->in[0]), *x = ep_ctx_s8(c, nd->in[2]);
    const int32_t e_dy = ep_ctx_i32(c, nd->in[1])[0], e_x = ep_ctx_i32(c, nd->in[3])[0];
    const float *wts = ep_ctx_f32(c, nd->in[4]);
    float *dg = ep_ctx_f32(c, nd->out[0]), *dc = ep_ctx_f32(c, nd->out[1]);
    for (uint32_t i = 0; i < q.n; i++) {
        ep_q8_dequantize_f32(q.d, dy + i * q.d, e_dy, q.v);
        ep_q8_dequantize_f32(q.td, x + i * q.td, e_x, q.a);
        (i == 0 ? ep_seqpool_bw_param_f32 : ep_seqpool_bw_param_add_f32)(&q.p1, q.v, q.a, wts + i * q.p1.t, dg, dc);
    }
}

const ep_op_t ep_op_seqpool_q8 = {
    .name = "seqpool_q8",
    .prepare = seqpool_q8_prepare,
    .fn = {[EP_FN_FW] = seqpool_q8_fw, [EP_FN_BW_INPUT] = seqpool_q8_bw_input, [EP_FN_BW_PARAM] = seqpool_q8_bw_param},
};
