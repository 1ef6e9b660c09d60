/*
 * ep_q8_linear.c — LINEAR_Q8: the int8 linear layer (docs/ops/int8.md).
 *
 * Shapes as LINEAR: W s8 [M, K]; a sample holds R rows, y has R·M elements and x
 * R·K. rows = n·R. Every fn takes a scratch tensor (unbatched s8, at least
 * host.quant.linear_scratch_bytes() for max_batch) the host planner places; it holds
 * int32 accumulators and the int16 operands of ep_q8_dot_s16 (the larger / the
 * transposed one as A panels, the other as B rows; see ep_q8.h).
 *
 *   FW        in (x, e_x, W, e_w[M], [b i32 [M], e_b])  out (y, e_y, scratch)
 *             y = requant(b·2^e_b + Σ_k x·W)  (int32 sums at exponent e_x + e_w[m])
 *   BW_INPUT  in (dy, e_dy, W, e_w[M])                  out (dx, e_dx, scratch)
 *             dx = requant(Σ_m (dy · 2^d_m) · W)  at exponent e_dy + e_lo
 * iattr[0] (FW and BW_INPUT; 0 or 1): per-sample sums. 0 keeps the int32 sums of all
 * rows before requantising; 1 keeps one sample's R rows and makes them twice, a first
 * pass for the output exponent (ep_q8_acc_mags), a second for the codes (and FW keeps
 * the M magnitudes after them). The same bits either way; 1 needs the scratch of R rows
 * instead of n·R, for about twice the instructions.
 *   BW_PARAM  in (dy, e_dy, x, e_x)  out (dW f32, db f32, scratch)            f32 mode
 *                                    out (dW i32, db i32, e_g i32 [2], scratch) int mode
 *             dW = Σ_rows dy·x at 2^(e_dy + e_x), db = Σ_rows dy at 2^e_dy; the sums
 *             are made in dW's own bytes, then the f32 mode converts them there
 *             (ep_q8_acc_to_f32, in place), the int mode keeps them and sets
 *             e_g = (e_dy + e_x, e_dy) for SGD_Q8.
 */
#include "ep_q8.h"

enum { L_FW, L_BWI, L_BWP };

/* Scratch bytes of one fn for `rows` rows (n·R; with per-sample sums R), W [M, K]. */
static uint64_t scratch_bytes(int fn, uint64_t rows, uint64_t M, uint64_t K, bool per_sample) {
    const uint64_t Kp = K + (K & 1), Mp = M + (M & 1), Rp = rows + (rows & 1);
    switch (fn) {
    case L_FW:
        return 4 * rows * M + (per_sample ? 4 * M : 0) + 2 * rows * Kp + 2 * M * Kp;
    case L_BWI:
        return 4 * rows * K + 2 * rows * Mp + 2 * K * Mp;
    default: /* L_BWP: the sums go into dW itself (f32 or i32: 4 bytes a weight) */
        return 2 * M * Rp + 2 * K * Rp;
    }
}

/* W s8 [M, K] unbatched; out (y/dy) s8 batched of R·M, in (x/dx) s8 batched of R·K elements. */
static bool shapes_ok(const ep_model_t *m, uint16_t w, uint8_t wdtype, uint16_t out, uint16_t in) {
    if (!ep_tensor_is(m, w, wdtype, false, 2) || !ep_q8_is_batched(m, out, EP_DTYPE_S8) ||
        !ep_q8_is_batched(m, in, EP_DTYPE_S8)) {
        return false;
    }
    const uint32_t M = m->tensors[w].dims[0], K = m->tensors[w].dims[1];
    const uint32_t rows = m->tensors[out].elems / M;
    return rows * M == m->tensors[out].elems && (uint64_t)rows * K == m->tensors[in].elems;
}

static ep_status_t prepare_fw(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if ((nd->n_in != 4 && nd->n_in != 6) || nd->n_out != 3) {
        return ep_reject(why, EP_WHY("linear_q8.fw: needs inputs (x, e_x, W, e_w[, b, e_b]) and outputs (y, e_y, scratch)"));
    }
    const uint16_t x = nd->in[0], w = nd->in[2], y = nd->out[0];
    if (!shapes_ok(m, w, EP_DTYPE_S8, y, x)) {
        return ep_reject(why, EP_WHY("linear_q8.fw: want W s8 [M, K], x and y batched s8 of R*K and R*M elements"));
    }
    const uint32_t M = m->tensors[w].dims[0], K = m->tensors[w].dims[1];
    if (!ep_q8_is_exp(m, nd->in[1], 1) || !ep_q8_is_exp(m, nd->in[3], M) || !ep_q8_is_exp(m, nd->out[1], 1)) {
        return ep_reject(why, EP_WHY("linear_q8.fw: e_x, e_y must be i32 [1] and e_w i32 [M]"));
    }
    if (nd->n_in == 6 && (!ep_tensor_is(m, nd->in[4], EP_DTYPE_I32, false, 1) || m->tensors[nd->in[4]].dims[0] != M ||
                          !ep_q8_is_exp(m, nd->in[5], 1))) {
        return ep_reject(why, EP_WHY("linear_q8.fw: b must be an unbatched i32 [M] and e_b an i32 [1]"));
    }
    if (K > EP_Q8_MAX_TERMS_FW) {
        return ep_reject(why, EP_WHY("linear_q8.fw: K above 65535 could overflow the int32 sums"));
    }
    const bool per_sample = nd->iattr[0] != 0;
    const uint64_t rows = (per_sample ? 1u : (uint64_t)m->max_batch) * (m->tensors[y].elems / M);
    if (!ep_q8_scratch_ok(m, nd->out[2], scratch_bytes(L_FW, rows, M, K, per_sample))) {
        return ep_reject(why, EP_WHY("linear_q8.fw: scratch must be an unbatched s8 of ep_q8 linear fw scratch bytes"));
    }
    if (nd->iattr[0] > 1 || !(ep_iattrs_zero_from(nd, 1) && ep_fattrs_zero(nd)) || !ep_outputs_disjoint(m, nd, -1)) {
        return ep_reject(why, EP_WHY("linear_q8.fw: iattr[0] (per-sample sums) 0 or 1, other attrs 0, outputs disjoint from inputs and each other"));
    }
    return EP_OK;
}

static ep_status_t prepare_bw_input(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->n_in != 4 || nd->n_out != 3) {
        return ep_reject(why, EP_WHY("linear_q8.bw_input: needs inputs (dy, e_dy, W, e_w) and outputs (dx, e_dx, scratch)"));
    }
    const uint16_t dy = nd->in[0], w = nd->in[2], dx = nd->out[0];
    if (!shapes_ok(m, w, EP_DTYPE_S8, dy, dx)) {
        return ep_reject(why, EP_WHY("linear_q8.bw_input: want W s8 [M, K], dx and dy batched s8 of R*K and R*M elements"));
    }
    const uint32_t M = m->tensors[w].dims[0], K = m->tensors[w].dims[1];
    if (!ep_q8_is_exp(m, nd->in[1], 1) || !ep_q8_is_exp(m, nd->in[3], M) || !ep_q8_is_exp(m, nd->out[1], 1)) {
        return ep_reject(why, EP_WHY("linear_q8.bw_input: e_dy, e_dx must be i32 [1] and e_w i32 [M]"));
    }
    if (M > EP_Q8_MAX_TERMS_BW_INPUT) {
        return ep_reject(why, EP_WHY("linear_q8.bw_input: M above 8191 could overflow the int32 sums"));
    }
    const bool per_sample = nd->iattr[0] != 0;
    const uint64_t rows = (per_sample ? 1u : (uint64_t)m->max_batch) * (m->tensors[dy].elems / M);
    if (!ep_q8_scratch_ok(m, nd->out[2], scratch_bytes(L_BWI, rows, M, K, per_sample))) {
        return ep_reject(why, EP_WHY("linear_q8.bw_input: scratch too small or not an unbatched s8"));
    }
    if (nd->iattr[0] > 1 || !(ep_iattrs_zero_from(nd, 1) && ep_fattrs_zero(nd)) || !ep_outputs_disjoint(m, nd, -1)) {
        return ep_reject(why, EP_WHY("linear_q8.bw_input: iattr[0] (per-sample sums) 0 or 1, other attrs 0, outputs disjoint from inputs and each other"));
    }
    return EP_OK;
}

static ep_status_t prepare_bw_param(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    const bool f32 = nd->n_out == 3;
    if (nd->n_in != 4 || (nd->n_out != 3 && nd->n_out != 4)) {
        return ep_reject(why, EP_WHY("linear_q8.bw_param: needs inputs (dy, e_dy, x, e_x) and outputs (dW, db, scratch) or (dW, db, e_g, scratch)"));
    }
    const uint16_t dy = nd->in[0], x = nd->in[2], dw = nd->out[0], db = nd->out[1];
    const uint8_t gt = f32 ? EP_DTYPE_F32 : EP_DTYPE_I32;
    if (!shapes_ok(m, dw, gt, dy, x)) {
        return ep_reject(why, EP_WHY("linear_q8.bw_param: want dW f32 or i32 [M, K], x and dy batched s8 of R*K and R*M elements"));
    }
    const uint32_t M = m->tensors[dw].dims[0], K = m->tensors[dw].dims[1];
    if (!ep_tensor_is(m, db, gt, false, 1) || m->tensors[db].dims[0] != M) {
        return ep_reject(why, EP_WHY("linear_q8.bw_param: db must be unbatched [M] of dW's dtype"));
    }
    if (!ep_q8_is_exp(m, nd->in[1], 1) || !ep_q8_is_exp(m, nd->in[3], 1) || (!f32 && !ep_q8_is_exp(m, nd->out[2], 2))) {
        return ep_reject(why, EP_WHY("linear_q8.bw_param: e_dy, e_x must be i32 [1], e_g i32 [2]"));
    }
    const uint64_t rows = (uint64_t)m->max_batch * (m->tensors[dy].elems / M);
    if (rows > EP_Q8_MAX_TERMS_BW_PARAM) {
        return ep_reject(why, EP_WHY("linear_q8.bw_param: max_batch x rows above 131071 could overflow the int32 sums"));
    }
    if (!ep_q8_scratch_ok(m, nd->out[f32 ? 2 : 3], scratch_bytes(L_BWP, rows, M, K, false))) {
        return ep_reject(why, EP_WHY("linear_q8.bw_param: scratch too small or not an unbatched s8"));
    }
    if (!(ep_iattrs_zero_from(nd, 0) && ep_fattrs_zero(nd)) || !ep_outputs_disjoint(m, nd, -1)) {
        return ep_reject(why, EP_WHY("linear_q8.bw_param: attrs must be 0 and outputs disjoint from inputs and each other"));
    }
    return EP_OK;
}

static ep_status_t linear_q8_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    switch (nd->fn) {
    case EP_FN_FW:
        return prepare_fw(m, nd, why);
    case EP_FN_BW_INPUT:
        return prepare_bw_input(m, nd, why);
    case EP_FN_BW_PARAM:
        return prepare_bw_param(m, nd, why);
    default:
        return ep_reject(why, EP_WHY("linear_q8: unknown fn"));
    }
}

/* ---- node functions ------------------------------------------------------------------ */

/* acc [rows][M] = the bias at each row's exponents (or 0). */
static void fw_init(const ep_ctx_t *c, const ep_node_t *nd, uint32_t rows, uint32_t M, int32_t e_x, const int32_t *e_w,
                    int32_t *acc) {
    if (nd->n_in == 6) {
        const int32_t *b = ep_ctx_i32(c, nd->in[4]);
        const int32_t e_b = ep_q8_ctx_exp(c, nd->in[5], 0);
        for (uint32_t j = 0; j < M; j++) {
            acc[j] = ep_q8_bias_at(b[j], e_b, e_x + ep_q8_exp(e_w[j]));
        }
    } else {
        for (uint32_t j = 0; j < M; j++) {
            acc[j] = 0;
        }
    }
    for (uint32_t r = 1; r < rows; r++) {
        for (uint32_t j = 0; j < M; j++) {
            acc[r * M + j] = acc[j];
        }
    }
}

static void linear_q8_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_tensor_t *wt = &c->model->tensors[nd->in[2]];
    const uint32_t M = wt->dims[0], K = wt->dims[1], Kp = ep_q8_even(K), R = c->model->tensors[nd->out[0]].elems / M;
    const bool per_sample = nd->iattr[0] != 0;
    const uint32_t rows = c->n * R, acc_rows = per_sample ? R : rows;
    const int32_t e_x = ep_q8_ctx_exp(c, nd->in[1], 0);
    const int32_t *e_w = ep_ctx_i32(c, nd->in[3]);
    const int8_t *x = ep_ctx_s8(c, nd->in[0]);
    int8_t *y = ep_ctx_s8(c, nd->out[0]);
    int32_t *acc = (int32_t *)(void *)ep_ctx_s8(c, nd->out[2]);
    uint32_t *mags = (uint32_t *)(void *)(acc + acc_rows * M);
    int16_t *x16 = (int16_t *)(void *)(mags + (per_sample ? M : 0)), *w16 = x16 + acc_rows * Kp;

    ep_q8_pack_panels(ep_ctx_s8(c, nd->in[2]), M, K, K, 1, w16, Kp); /* W as panels: 4 outputs per tile */
    if (!per_sample) {
        fw_init(c, nd, rows, M, e_x, e_w, acc);
        ep_q8_pack(x, rows, K, K, 1, NULL, 0, x16, Kp);
        ep_q8_dot_s16(M, rows, Kp, w16, x16, acc, M, true);
        ep_ctx_i32(c, nd->out[1])[0] = ep_q8_requant(acc, rows, M, 1, e_x, e_w, y);
        return;
    }
    int32_t e_y = 0;
    for (uint32_t j = 0; j < M; j++) {
        mags[j] = 0;
    }
    for (int pass = 0; pass < 2; pass++) { /* the sample's sums: their magnitudes, then their codes */
        for (uint32_t i = 0; i < c->n; i++) {
            fw_init(c, nd, R, M, e_x, e_w, acc);
            ep_q8_pack(x + i * R * K, R, K, K, 1, NULL, 0, x16, Kp);
            ep_q8_dot_s16(M, R, Kp, w16, x16, acc, M, true);
            if (pass == 0) {
                ep_q8_acc_mags(acc, R, M, 1, mags);
            } else {
                ep_q8_requant_apply(acc, R, M, 1, e_x, e_w, e_y, y + i * R * M);
            }
        }
        e_y = ep_q8_requant_exp(mags, M, e_x, e_w);
    }
    ep_ctx_i32(c, nd->out[1])[0] = e_y;
}

static void linear_q8_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_tensor_t *wt = &c->model->tensors[nd->in[2]];
    const uint32_t M = wt->dims[0], K = wt->dims[1], Mp = ep_q8_even(M), R = c->model->tensors[nd->in[0]].elems / M;
    const bool per_sample = nd->iattr[0] != 0;
    const uint32_t rows = c->n * R, acc_rows = per_sample ? R : rows;
    const int32_t *e_w = ep_ctx_i32(c, nd->in[3]);
    const int32_t e_lo = ep_q8_weight_exp_lo(e_w, M), e_base = ep_q8_ctx_exp(c, nd->in[1], 0) + e_lo;
    const int8_t *dy = ep_ctx_s8(c, nd->in[0]);
    int8_t *dx = ep_ctx_s8(c, nd->out[0]);
    int32_t *acc = (int32_t *)(void *)ep_ctx_s8(c, nd->out[2]);
    int16_t *dy16 = (int16_t *)(void *)(acc + acc_rows * K), *wt16 = dy16 + acc_rows * Mp;

    ep_q8_pack_panels(ep_ctx_s8(c, nd->in[2]), K, M, 1, K, wt16, Mp); /* Wᵀ [K][M] as panels */
    if (!per_sample) {
        ep_q8_pack(dy, rows, M, M, 1, e_w, e_lo, dy16, Mp);
        ep_q8_dot_s16(K, rows, Mp, wt16, dy16, acc, K, false);
        ep_ctx_i32(c, nd->out[1])[0] = ep_q8_requant(acc, rows * K, 1, 1, e_base, NULL, dx);
        return;
    }
    uint32_t mag = 0;
    int32_t e_dx = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < c->n; i++) {
            ep_q8_pack(dy + i * R * M, R, M, M, 1, e_w, e_lo, dy16, Mp);
            ep_q8_dot_s16(K, R, Mp, wt16, dy16, acc, K, false);
            if (pass == 0) {
                ep_q8_acc_mags(acc, R * K, 1, 1, &mag);
            } else {
                ep_q8_requant_apply(acc, R * K, 1, 1, e_base, NULL, e_dx, dx + i * R * K);
            }
        }
        e_dx = ep_q8_requant_exp(&mag, 1, e_base, NULL);
    }
    ep_ctx_i32(c, nd->out[1])[0] = e_dx;
}

static void linear_q8_bw_param(const ep_ctx_t *c, const ep_node_t *nd) {
    const bool f32 = nd->n_out == 3;
    const ep_tensor_t *wt = &c->model->tensors[nd->out[0]];
    const uint32_t M = wt->dims[0], K = wt->dims[1];
    const uint32_t rows = c->n * (c->model->tensors[nd->in[0]].elems / M), Rp = ep_q8_even(rows);
    const int32_t e_dy = ep_q8_ctx_exp(c, nd->in[1], 0), e_x = ep_q8_ctx_exp(c, nd->in[3], 0);
    const int8_t *dy = ep_ctx_s8(c, nd->in[0]);
    int8_t *scratch = ep_ctx_s8(c, nd->out[f32 ? 2 : 3]);
    int32_t *acc = ep_ctx_i32(c, nd->out[0]); /* the sums in dW's own bytes, f32 mode too */
    int16_t *dyt = (int16_t *)(void *)scratch, *xt = dyt + M * Rp;

    ep_q8_pack(dy, M, rows, 1, M, NULL, 0, dyt, Rp);                        /* dyᵀ [M][rows] */
    ep_q8_pack_panels(ep_ctx_s8(c, nd->in[2]), K, rows, 1, K, xt, Rp);      /* xᵀ [K][rows] as panels */
    ep_q8_dot_s16(K, M, Rp, xt, dyt, acc, K, false);                     /* overwrites acc */
    if (f32) {
        ep_q8_acc_to_f32(M * K, acc, e_dy + e_x, ep_ctx_f32(c, nd->out[0])); /* in place */
    } else {
        int32_t *eg = ep_ctx_i32(c, nd->out[2]);
        eg[0] = e_dy + e_x;
        eg[1] = e_dy;
    }
    for (uint32_t j = 0; j < M; j++) {
        int32_t s = 0; /* |s| ≤ 128 · rows < 2^31 */
        for (uint32_t r = 0; r < rows; r++) {
            s += dy[r * M + j];
        }
        if (f32) {
            ep_q8_acc_to_f32(1, &s, e_dy, ep_ctx_f32(c, nd->out[1]) + j);
        } else {
            ep_ctx_i32(c, nd->out[1])[j] = s;
        }
    }
}

const ep_op_t ep_op_linear_q8 = {
    .name = "linear_q8",
    .prepare = linear_q8_prepare,
    .fn = {[EP_FN_FW] = linear_q8_fw, [EP_FN_BW_INPUT] = linear_q8_bw_input, [EP_FN_BW_PARAM] = linear_q8_bw_param},
};
