/*
 * ep_q8_attn.c — int8 multi-head self-attention (the ATTENTION op family, zephyr/Kconfig):
 *
 *   MHSA_Q8  FW        in (x s8, e_x, w_in, b_in, w_out, b_out, scratch)    out (y s8, e_y, saved s8, e_saved)
 *            BW_INPUT  in (dy s8, e_dy, w_in, w_out, saved, e_saved, scratch) out (dqkv f32[, dx s8, e_dx])
 *            BW_PARAM  in (dy, e_dy, x, e_x, saved, e_saved, dqkv, scratch)  out (dw_in, db_in, dw_out, db_out)
 *
 * MHSA (ep_mhsa.c) with int8 activations and errors, and its saved state, qkv [T][3D]
 * and the probabilities P [H][T][T] of every sample, kept as int8 codes: qkv with
 * exponent e_saved[0], P with e_saved[1] (a quarter of the f32 saved state, which is
 * the largest thing an attention layer keeps). Parameters, their gradients and dqkv
 * (alive from bw_input to bw_param only) stay f32.
 *
 * Each function computes exactly what DEQUANTIZE, the f32 MHSA node and QUANTIZE compute
 * in a row, bit for bit, with the saved state quantised as two tensors (qkv, P) by the
 * forward and dequantized by the backward: the f32 kernels run on one sample at a time
 * over dequantized copies in the scratch (per sample they make the batch call's bits:
 * every product is a chain over one sample's rows, and bw_param's gradients are running
 * sums over the samples, ep_mhsa_bw_param_add_f32), so no f32 tensor of the batch
 * exists. An int8 output takes two passes (its exponent is the whole batch's largest
 * magnitude): the forward runs twice, the input gradient's dx = dqkv w_in twice.
 *
 * iattr[0] heads (≥ 1, divides D), everything else 0. x, y, dy, dx batched s8 [T][D];
 * exponents i32 [1], e_saved i32 [2]; saved batched s8 [T][3D + H·T]; dqkv batched
 * f32 [T][3D]; weights f32 as MHSA's; scratch unbatched s8 of ep_mhsa_q8_scratch bytes.
 */
#include "ep_attn_optim.h"
#include "ep_q8.h"

typedef struct {
    ep_mhsa_params_t p1;         /* one sample */
    uint32_t n, td, qkv, probs;  /* samples, T·D, 3·T·D, H·T·T */
    float *a, *b, *saved, *mhsa; /* scratch: two T·D rows, one sample's saved, MHSA's scratch */
} mq_t;

static uint64_t scratch_floats(uint64_t T, uint64_t D, uint64_t H) {
    return 6 * T * D + (H + 1) * T * T;
}

static mq_t mq_setup(const ep_ctx_t *c, const ep_node_t *nd, uint16_t act, uint16_t scratch) {
    const ep_tensor_t *x = &c->model->tensors[act];
    const uint32_t T = x->dims[0], D = x->dims[1], H = nd->iattr[0];
    mq_t q = {.p1 = {1, T, D, H}, .n = c->n, .td = T * D, .qkv = 3 * T * D, .probs = H * T * T};
    q.a = (float *)(void *)ep_ctx_s8(c, scratch);
    q.b = q.a + q.td;
    q.saved = q.b + q.td;
    q.mhsa = q.saved + q.qkv + q.probs;
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
            int8_t *s = saved + i * (q.qkv + q.probs);
            if (pass == 0) {
                amax[0] = ep_q8_chunk_out(q.b, q.td, NULL, 0, amax[0]);
                amax[1] = ep_q8_chunk_out(q.saved, q.qkv, NULL, 0, amax[1]);
                amax[2] = ep_q8_chunk_out(q.saved + q.qkv, q.probs, NULL, 0, amax[2]);
            } else {
                (void)ep_q8_chunk_out(q.b, q.td, y + i * q.td, *e_y, 0.0f);
                (void)ep_q8_chunk_out(q.saved, q.qkv, s, e_s[0], 0.0f);
                (void)ep_q8_chunk_out(q.saved + q.qkv, q.probs, s + q.qkv, e_s[1], 0.0f);
            }
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
    float *dqkv = ep_ctx_f32(c, nd->out[0]);
    const bool want_dx = nd->n_out == 3;
    float amax = 0.0f;
    for (uint32_t i = 0; i < q.n; i++) {
        ep_q8_dequantize_f32(q.td, dy + i * q.td, e_dy, q.a);
        mq_saved_in(&q, saved, e_s, i);
        float *dqkv_i = dqkv + i * q.qkv;
        if (want_dx) {
            ep_mhsa_bw_input_f32(&q.p1, q.a, w_in, w_out, q.saved, dqkv_i, q.b, q.mhsa);
            amax = ep_q8_chunk_out(q.b, q.td, NULL, 0, amax);
        } else {
            ep_mhsa_bw_qkv_f32(&q.p1, q.a, w_out, q.saved, dqkv_i, q.mhsa);
        }
    }
    if (!want_dx) {
        return;
    }
    const int32_t e_dx = ep_q8_exp_for_maxabs(amax);
    int8_t *dx = ep_ctx_s8(c, nd->out[1]);
    for (uint32_t i = 0; i < q.n; i++) { /* dqkv is final: only dx = dqkv w_in again */
        ep_mhsa_bw_dx_f32(&q.p1, dqkv + i * q.qkv, w_in, q.b);
        (void)ep_q8_chunk_out(q.b, q.td, dx + i * q.td, e_dx, 0.0f);
    }
    ep_ctx_i32(c, nd->out[2])[0] = e_dx;
}

static void mhsa_q8_bw_param(const ep_ctx_t *c, const ep_node_t *nd) {
    const mq_t q = mq_setup(c, nd, nd->in[0], nd->in[7]);
    const int8_t *dy = ep_ctx_s8(c, nd->in[0]), *x = ep_ctx_s8(c, nd->in[2]), *saved = ep_ctx_s8(c, nd->in[4]);
    const int32_t e_dy = ep_ctx_i32(c, nd->in[1])[0], e_x = ep_ctx_i32(c, nd->in[3])[0];
    const int32_t *e_s = ep_ctx_i32(c, nd->in[5]);
    const float *dqkv = ep_ctx_f32(c, nd->in[6]);
    float *g[4];
    for (uint8_t k = 0; k < 4; k++) {
        g[k] = ep_ctx_f32(c, nd->out[k]);
    }
    for (uint32_t i = 0; i < q.n; i++) {
        ep_q8_dequantize_f32(q.td, dy + i * q.td, e_dy, q.a);
        ep_q8_dequantize_f32(q.td, x + i * q.td, e_x, q.b);
        mq_saved_in(&q, saved, e_s, i);
        (i == 0 ? ep_mhsa_bw_param_f32 : ep_mhsa_bw_param_add_f32)(&q.p1, q.a, q.b, q.saved, dqkv + i * q.qkv,
                                                                   g[0], g[1], g[2], g[3], q.mhsa);
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
    const bool outs_ok = bwi ? (nd->n_out == 1 || nd->n_out == 3) : nd->n_out == 4;
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
    const uint16_t saved = fw ? nd->out[2] : nd->in[4], e_saved = fw ? nd->out[3] : nd->in[5];
    const uint16_t scratch = nd->in[fw || bwi ? 6 : 7];
    if (!ep_tensor_is(m, saved, EP_DTYPE_S8, true, 2) || m->tensors[saved].dims[0] != T ||
        m->tensors[saved].dims[1] != 3u * D + H * T || !ep_q8_is_exp(m, e_saved, 2)) {
        return ep_reject(why, EP_WHY("mhsa_q8: saved must be batched s8 [T][3D + heads*T] with an i32 [2] exponent"));
    }
    if (!ep_q8_scratch_ok(m, scratch, 4u * scratch_floats(T, D, H))) {
        return ep_reject(why, EP_WHY("mhsa_q8: scratch must be unbatched s8 of >= 4*(6*T*D + (heads+1)*T*T) bytes"));
    }
    bool ok;
    if (fw) {
        ok = mq_f32(m, nd->in[2], false, 2, 3 * D, D) && mq_f32(m, nd->in[3], false, 1, 3 * D, 0) &&
             mq_f32(m, nd->in[4], false, 2, D, D) && mq_f32(m, nd->in[5], false, 1, D, 0) &&
             mq_act(m, nd->out[0], T, D) && ep_q8_is_exp(m, nd->out[1], 1);
    } else if (bwi) {
        ok = mq_f32(m, nd->in[2], false, 2, 3 * D, D) && mq_f32(m, nd->in[3], false, 2, D, D) &&
             mq_f32(m, nd->out[0], true, 2, T, 3 * D) &&
             (nd->n_out == 1 || (mq_act(m, nd->out[1], T, D) && ep_q8_is_exp(m, nd->out[2], 1)));
    } else {
        ok = mq_act(m, nd->in[2], T, D) && ep_q8_is_exp(m, nd->in[3], 1) && mq_f32(m, nd->in[6], true, 2, T, 3 * D) &&
             mq_f32(m, nd->out[0], false, 2, 3 * D, D) && mq_f32(m, nd->out[1], false, 1, 3 * D, 0) &&
             mq_f32(m, nd->out[2], false, 2, D, D) && mq_f32(m, nd->out[3], false, 1, D, 0);
    }
    if (!ok) {
        return ep_reject(why, EP_WHY("mhsa_q8: want weights f32 as mhsa's (w_in [3D][D], b_in [3D], w_out [D][D], b_out [D]), y/dx s8 [T][D] with an exponent, dqkv batched f32 [T][3D]"));
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
