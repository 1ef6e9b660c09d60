/*
 * ep_seqpool.c — CCT sequence pooling: softmax-over-tokens attention weights from a
 * Linear(D, 1) (g, c), y = Σ_t w_t x_t; forward, input gradient, g/c gradients.
 * fw saves the weights w [n][T] (T floats per sample); the backward kernels
 * recompute e_t = dy · x_t instead of keeping it in scratch. Multiply-adds are
 * fmaf (one VFMA.F32 on Cortex-M4F; -std=c11 does not contract a*b+c).
 */
#include <math.h>

#include "ep_attn_optim.h"
#include "ep_ops.h"

/* Σ_j a[j] b[j] with 4 interleaved partial sums. */
static float dot(uint32_t D, const float *restrict a, const float *restrict b) {
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    uint32_t j = 0;
    for (; j + 4 <= D; j += 4) {
        s0 = fmaf(a[j], b[j], s0);
        s1 = fmaf(a[j + 1], b[j + 1], s1);
        s2 = fmaf(a[j + 2], b[j + 2], s2);
        s3 = fmaf(a[j + 3], b[j + 3], s3);
    }
    for (; j < D; j++) {
        s0 = fmaf(a[j], b[j], s0);
    }
    return (s0 + s1) + (s2 + s3);
}

/* r = Σ_t w_t (dy · x_t) for one sample. */
static float weighted_e(uint32_t T, uint32_t D, const float *restrict dy, const float *restrict x,
                        const float *restrict w) {
    float r = 0.0f;
    for (uint32_t t = 0; t < T; t++, x += D) {
        r += w[t] * dot(D, dy, x);
    }
    return r;
}

void ep_seqpool_fw_f32(const ep_seqpool_params_t *p, const float *restrict x,
                       const float *restrict g, const float *restrict c, float *restrict y,
                       float *restrict wts) {
    const uint32_t n = p->n, T = p->t, D = p->d;
    const float bias = c[0];
    for (uint32_t i = 0; i < n; i++, x += T * D, y += D, wts += T) {
        for (uint32_t t = 0; t < T; t++) {
            wts[t] = dot(D, x + t * D, g) + bias;
        }
        const ep_softmax_params_t sp = {.rows = 1, .cols = T};
        ep_softmax_fw_f32(&sp, wts, wts); /* the SOFTMAX kernel, in place (allowed) */
        /* y = Σ_t w_t x_t, 4 tokens per pass over y */
        for (uint32_t j = 0; j < D; j++) {
            y[j] = 0.0f;
        }
        uint32_t t = 0;
        for (; t + 4 <= T; t += 4) {
            const float *x0 = x + t * D, *x1 = x0 + D, *x2 = x1 + D, *x3 = x2 + D;
            const float w0 = wts[t], w1 = wts[t + 1], w2 = wts[t + 2], w3 = wts[t + 3];
            for (uint32_t j = 0; j < D; j++) {
                y[j] = fmaf(w3, x3[j], fmaf(w2, x2[j], fmaf(w1, x1[j], fmaf(w0, x0[j], y[j]))));
            }
        }
        for (; t < T; t++) {
            const float *xt = x + t * D;
            const float w = wts[t];
            for (uint32_t j = 0; j < D; j++) {
                y[j] = fmaf(w, xt[j], y[j]);
            }
        }
    }
}

void ep_seqpool_bw_input_f32(const ep_seqpool_params_t *p, const float *restrict dy,
                             const float *restrict x, const float *restrict g,
                             const float *restrict wts, float *restrict dx) {
    const uint32_t n = p->n, T = p->t, D = p->d;
    for (uint32_t i = 0; i < n; i++, dy += D, x += T * D, dx += T * D, wts += T) {
        const float r = weighted_e(T, D, dy, x, wts);
        for (uint32_t t = 0; t < T; t++) {
            const float *xt = x + t * D;
            float *dxt = dx + t * D;
            const float w = wts[t];
            const float dl = w * (dot(D, dy, xt) - r);
            for (uint32_t j = 0; j < D; j++) {
                dxt[j] = fmaf(dl, g[j], w * dy[j]);
            }
        }
    }
}

/* dg, dc: running sums over the samples and tokens in order, from 0 or (acc) from their values. */
static void bw_param(const ep_seqpool_params_t *p, const float *restrict dy, const float *restrict x,
                     const float *restrict wts, float *restrict dg, float *restrict dc, int acc) {
    const uint32_t n = p->n, T = p->t, D = p->d;
    for (uint32_t j = 0; j < D && !acc; j++) {
        dg[j] = 0.0f;
    }
    float sc = acc ? dc[0] : 0.0f;
    for (uint32_t i = 0; i < n; i++, dy += D, x += T * D, wts += T) {
        const float r = weighted_e(T, D, dy, x, wts);
        for (uint32_t t = 0; t < T; t++) {
            const float *xt = x + t * D;
            const float dl = wts[t] * (dot(D, dy, xt) - r);
            sc += dl;
            for (uint32_t j = 0; j < D; j++) {
                dg[j] = fmaf(dl, xt[j], dg[j]);
            }
        }
    }
    dc[0] = sc;
}

void ep_seqpool_bw_param_f32(const ep_seqpool_params_t *p, const float *restrict dy,
                             const float *restrict x, const float *restrict wts,
                             float *restrict dg, float *restrict dc) {
    bw_param(p, dy, x, wts, dg, dc, 0);
}

void ep_seqpool_bw_param_add_f32(const ep_seqpool_params_t *p, const float *restrict dy,
                                 const float *restrict x, const float *restrict wts,
                                 float *restrict dg, float *restrict dc) {
    bw_param(p, dy, x, wts, dg, dc, 1);
}

/* ------------------------------------------------------------------------- */
/* Registry: SEQPOOL (contract: docs/ops/attn_optim.md)                       */
/* ------------------------------------------------------------------------- */

/* x/dx: batched f32 [T][D]. */
static bool is_tokens(const ep_model_t *m, uint16_t t) {
    return ep_tensor_is(m, t, EP_DTYPE_F32, true, 2);
}

static bool is_batched_f32(const ep_model_t *m, uint16_t t, uint32_t elems) {
    const ep_tensor_t *x = &m->tensors[t];
    return x->dtype == EP_DTYPE_F32 && (x->flags & EP_TF_BATCHED) != 0 && x->elems == elems;
}

static bool is_unbatched_f32(const ep_model_t *m, uint16_t t, uint32_t elems) {
    const ep_tensor_t *x = &m->tensors[t];
    return x->dtype == EP_DTYPE_F32 && (x->flags & EP_TF_BATCHED) == 0 && x->elems == elems;
}

/* No output overlaps an input or another output. */
static bool outs_disjoint(const ep_model_t *m, const ep_node_t *nd) {
    for (uint8_t o = 0; o < nd->n_out; o++) {
        for (uint8_t i = 0; i < nd->n_in; i++) {
            if (ep_overlap(m, nd->out[o], nd->in[i])) {
                return false;
            }
        }
        for (uint8_t j = (uint8_t)(o + 1); j < nd->n_out; j++) {
            if (ep_overlap(m, nd->out[o], nd->out[j])) {
                return false;
            }
        }
    }
    return true;
}

static ep_status_t seqpool_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn == EP_FN_FW) {
        if (nd->n_in != 3 || nd->n_out != 2) {
            return ep_reject(why, EP_WHY("seqpool.fw: needs inputs (x, g, c) and outputs (y, wts)"));
        }
        const uint16_t x = nd->in[0];
        if (!is_tokens(m, x)) {
            return ep_reject(why, EP_WHY("seqpool.fw: x must be batched f32 [T][D]"));
        }
        const uint32_t T = m->tensors[x].dims[0], D = m->tensors[x].dims[1];
        if (!is_unbatched_f32(m, nd->in[1], D) || !is_unbatched_f32(m, nd->in[2], 1)) {
            return ep_reject(why, EP_WHY("seqpool.fw: g must be an unbatched f32 of D elements, c of 1"));
        }
        if (!is_batched_f32(m, nd->out[0], D) || !is_batched_f32(m, nd->out[1], T)) {
            return ep_reject(why, EP_WHY("seqpool.fw: y must be batched f32 of D elements, wts of T"));
        }
        if (!outs_disjoint(m, nd)) {
            return ep_reject(why, EP_WHY("seqpool.fw: y or wts overlaps another tensor of the node"));
        }
        return EP_OK;
    }
    if (nd->fn == EP_FN_BW_INPUT) {
        if (nd->n_in != 4 || nd->n_out != 1) {
            return ep_reject(why, EP_WHY("seqpool.bw_input: needs inputs (dy, x, g, wts) and output (dx)"));
        }
        const uint16_t x = nd->in[1], dx = nd->out[0];
        if (!is_tokens(m, x) || !is_tokens(m, dx) || !ep_same_shape(m, x, dx)) {
            return ep_reject(why, EP_WHY("seqpool.bw_input: x and dx must be batched f32 [T][D]"));
        }
        const uint32_t T = m->tensors[x].dims[0], D = m->tensors[x].dims[1];
        if (!is_batched_f32(m, nd->in[0], D) || !is_unbatched_f32(m, nd->in[2], D) ||
            !is_batched_f32(m, nd->in[3], T)) {
            return ep_reject(why, EP_WHY("seqpool.bw_input: want dy batched f32 of D elements, g unbatched of D, wts batched of T"));
        }
        if (!outs_disjoint(m, nd)) {
            return ep_reject(why, EP_WHY("seqpool.bw_input: dx overlaps an input"));
        }
        return EP_OK;
    }
    if (nd->fn == EP_FN_BW_PARAM) {
        if (nd->n_in != 3 || nd->n_out != 2) {
            return ep_reject(why, EP_WHY("seqpool.bw_param: needs inputs (dy, x, wts) and outputs (dg, dc)"));
        }
        const uint16_t x = nd->in[1];
        if (!is_tokens(m, x)) {
            return ep_reject(why, EP_WHY("seqpool.bw_param: x must be batched f32 [T][D]"));
        }
        const uint32_t T = m->tensors[x].dims[0], D = m->tensors[x].dims[1];
        if (!is_batched_f32(m, nd->in[0], D) || !is_batched_f32(m, nd->in[2], T)) {
            return ep_reject(why, EP_WHY("seqpool.bw_param: want dy batched f32 of D elements, wts of T"));
        }
        if (!is_unbatched_f32(m, nd->out[0], D) || !is_unbatched_f32(m, nd->out[1], 1)) {
            return ep_reject(why, EP_WHY("seqpool.bw_param: dg must be an unbatched f32 of D elements, dc of 1"));
        }
        if (!outs_disjoint(m, nd)) {
            return ep_reject(why, EP_WHY("seqpool.bw_param: dg or dc overlaps another tensor of the node"));
        }
        return EP_OK;
    }
    return ep_reject(why, EP_WHY("seqpool: unknown fn"));
}

static ep_seqpool_params_t seqpool_shape(const ep_ctx_t *c, uint16_t x) {
    const ep_tensor_t *t = &c->model->tensors[x];
    const ep_seqpool_params_t p = {c->n, t->dims[0], t->dims[1]};
    return p;
}

static void seqpool_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_seqpool_params_t p = seqpool_shape(c, nd->in[0]);
    ep_seqpool_fw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->in[2]),
                      ep_ctx_f32(c, nd->out[0]), ep_ctx_f32(c, nd->out[1]));
}

static void seqpool_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_seqpool_params_t p = seqpool_shape(c, nd->in[1]);
    ep_seqpool_bw_input_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->in[2]),
                            ep_ctx_f32(c, nd->in[3]), ep_ctx_f32(c, nd->out[0]));
}

static void seqpool_bw_param(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_seqpool_params_t p = seqpool_shape(c, nd->in[1]);
    ep_seqpool_bw_param_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->in[2]),
                            ep_ctx_f32(c, nd->out[0]), ep_ctx_f32(c, nd->out[1]));
}

const ep_op_t ep_op_seqpool = {
    .name = "seqpool",
    .prepare = seqpool_prepare,
    .fn = {[EP_FN_FW] = seqpool_fw, [EP_FN_BW_INPUT] = seqpool_bw_input, [EP_FN_BW_PARAM] = seqpool_bw_param},
};
