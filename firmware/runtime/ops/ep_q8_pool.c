/*
 * ep_q8_pool.c — int8 average and max pooling (the CONV op family, zephyr/Kconfig):
 *
 *   AVGPOOL2D_Q8       FW        in (x s8, e_x)     out (y s8, e_y, scratch)
 *                      BW_INPUT  in (dy s8, e_dy)   out (dx s8, e_dx, scratch)
 *   MAXPOOL2D_Q8       FW        in (x s8, e_x)     out (y s8, e_y, scratch)
 *                      BW_INPUT  in (dy s8, e_dy, x s8, e_x)  out (dx s8, e_dx, scratch)
 *   GLOBAL_AVGPOOL_Q8  FW        in (x s8, e_x)     out (y s8, e_y, scratch)
 *                      BW_INPUT  in (dy s8, e_dy)   out (dx s8, e_dx, scratch)
 *
 * The f32 nodes they stand for: AVGPOOL2D, MAXPOOL2D and GLOBAL_AVGPOOL, whose kernels run on one
 * dequantized (sample, channel) plane at a time in the node's scratch.
 * Each computes exactly what DEQUANTIZE, the f32 node and QUANTIZE compute in a row,
 * bit for bit, without the f32 tensors (docs/ops/int8.md, "The layers between convs in
 * int8"): operands are read from their codes (code · 2^e, exact, as DEQUANTIZE), and an
 * int8 output takes two passes: the largest magnitude first (its exponent, as QUANTIZE
 * picks it), then the codes. The average and max pools take integer forms where those
 * are exact (below: no scratch planes, split by plane over a cluster); the rest runs on
 * one core, the planes sharing the node's one scratch plane.
 */
#include <stddef.h>

#include "ep_conv_pool.h"
#include "ep_q8.h"

/* ---- AVGPOOL2D_Q8, MAXPOOL2D_Q8 ------------------------------------------------------- */

/*
 * iattrs as AVGPOOL2D / MAXPOOL2D (kh kw sh sw pad×4 count_include_pad); x/dx [C][H][W]
 * or [C][L] and y/dy batched s8 with i32 [1] exponents; the max pool's backward also
 * reads (x, e_x), its selection recomputed from x as MAXPOOL2D's is. Scratch an
 * unbatched s8 of at least 4·(H·W + H_out·W_out) bytes (4·(2·H·W + H_out·W_out) for
 * the max pool): one plane of each side in f32 (and x's for the max pool's backward).
 */
static uint64_t pool_q8_scratch(const ep_pool2d_params_t *p, bool is_max) {
    const uint64_t hw = (uint64_t)p->h_in * p->w_in;
    return 4u * ((is_max ? 2u : 1u) * hw + (uint64_t)p->h_out * p->w_out);
}

static ep_status_t pool_q8_prepare(const ep_model_t *m, const ep_node_t *nd, bool is_max, const char **why) {
    const bool fw = nd->fn == EP_FN_FW;
    const uint8_t n_in = !fw && is_max ? 4 : 2;
    if ((!fw && nd->fn != EP_FN_BW_INPUT) || nd->n_in != n_in || nd->n_out != 3) {
        return ep_reject(why, is_max ? EP_WHY("maxpool2d_q8: needs fw (x, e_x) -> (y, e_y, scratch) or bw_input (dy, e_dy, x, e_x) -> (dx, e_dx, scratch)")
                                     : EP_WHY("avgpool2d_q8: needs fw (x, e_x) -> (y, e_y, scratch) or bw_input (dy, e_dy) -> (dx, e_dx, scratch)"));
    }
    const uint16_t x = fw ? nd->in[0] : nd->out[0], y = fw ? nd->out[0] : nd->in[0];
    const ep_status_t st = ep_pool2d_check(m, nd, x, y, is_max, EP_DTYPE_S8, why);
    if (st != EP_OK) {
        return st;
    }
    const ep_pool2d_params_t p = ep_pool2d_geom(m, nd, x, y);
    if (!ep_q8_is_exp(m, nd->in[1], 1) || !ep_q8_is_exp(m, nd->out[1], 1) ||
        !ep_q8_scratch_ok(m, nd->out[2], pool_q8_scratch(&p, is_max))) {
        return ep_reject(why, is_max ? EP_WHY("maxpool2d_q8: exponents must be i32 [1], scratch an unbatched s8 of >= 4*(2*H*W + H_out*W_out) bytes")
                                     : EP_WHY("avgpool2d_q8: exponents must be i32 [1], scratch an unbatched s8 of >= 4*(H*W + H_out*W_out) bytes"));
    }
    if (n_in == 4 && (!ep_same_shape(m, nd->in[2], x) || m->tensors[nd->in[2]].dtype != EP_DTYPE_S8 ||
                      (m->tensors[nd->in[2]].flags & EP_TF_BATCHED) == 0 || !ep_q8_is_exp(m, nd->in[3], 1))) {
        return ep_reject(why, EP_WHY("maxpool2d_q8: x must be batched s8 shaped like dx, with an i32 [1] exponent"));
    }
    if (!ep_outputs_disjoint(m, nd, -1)) {
        return ep_reject(why, is_max ? EP_WHY("maxpool2d_q8: outputs overlap inputs or each other")
                                     : EP_WHY("avgpool2d_q8: outputs overlap inputs or each other"));
    }
    return EP_OK;
}

static ep_status_t avgpool2d_q8_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    return pool_q8_prepare(m, nd, false, why);
}

static ep_status_t maxpool2d_q8_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    return pool_q8_prepare(m, nd, true, why);
}

typedef struct {
    ep_pool2d_params_t p;
    bool fw, is_max;
    const int8_t *a, *x; /* the node's input (x or dy), and x for the max pool's backward */
    float sa, sx;
    float *buf;
    int8_t *out; /* the integer forms' output */
} pool_q8_t;

static void dequant_plane(const int8_t *a, float s, uint32_t len, float *dst) {
    for (uint32_t j = 0; j < len; j++) {
        dst[j] = (float)a[j] * s;
    }
}

/* One pass over the n·C planes, where the integer forms below do not apply: the f32
 * average pooling or either pool's input gradient of each dequantized plane in the
 * scratch; out NULL: the largest magnitude (returned), else codes at e. */
static float pool_q8_pass(const pool_q8_t *q, int32_t e, int8_t *out) {
    const ep_pool2d_params_t *p = &q->p;
    const uint32_t hw = p->h_in * p->w_in, howo = p->h_out * p->w_out;
    const uint32_t in = q->fw ? hw : howo, res = q->fw ? howo : hw;
    float *src = q->buf, *dst = q->buf + in, *xs = dst + res;
    ep_pool2d_params_t one = *p;
    one.n = one.c = 1;
    float amax = 0.0f;
    for (uint32_t k = 0; k < p->n * p->c; k++) {
        dequant_plane(q->a + k * in, q->sa, in, src);
        if (q->fw) {
            ep_avgpool2d_fw_f32(&one, src, dst);
        } else if (q->is_max) {
            dequant_plane(q->x + k * hw, q->sx, hw, xs);
            ep_maxpool2d_bw_input_f32(&one, src, xs, dst);
        } else {
            ep_avgpool2d_bw_input_f32(&one, src, dst);
        }
        amax = ep_q8_chunk_out(dst, res, out != NULL ? out + k * res : NULL, e, amax);
    }
    return amax;
}

/*
 * The integer forms, where the f32 pooling of dequantized codes is exact up to its one
 * rounding (so they give its bits without the scratch planes, and split by plane over a
 * cluster through ep_q8_two_pass):
 *   - the average's window sum: integers times 2^e add exactly in f32 (|sum| < 2^24; e ≤
 *     EP_Q8_POOL_EXP_MAX keeps it finite), so it is the codes' integer sum · 2^e, then the
 *     kernel's one division by D;
 *   - the max: the value of the largest code (the scan takes the first largest);
 *   - a backward whose windows do not overlap: each input element gets at most one
 *     window's share (0 + v = v): dy/D, or dy at the max's first largest code.
 * Overlapping backward windows (and an average above EP_Q8_POOL_EXP_MAX) take the f32
 * path. (An integer max-pool backward with overlap, summing dy's codes in an int32
 * plane, measured slower than it: two scans of every window against one.)
 */
#define EP_Q8_POOL_EXP_MAX 100

static bool pool_q8_overlap(const ep_pool2d_params_t *p) {
    return p->sh < p->kh || p->sw < p->kw;
}

static bool pool_q8_int_ok(const pool_q8_t *q, int32_t e_a) {
    if (q->fw) {
        return q->is_max || e_a <= EP_Q8_POOL_EXP_MAX;
    }
    return !pool_q8_overlap(&q->p);
}

/* Window (oy, ox) as ep_pool2d_window gives it; inline when there is no padding (every
 * window then starts inside the input). */
static inline void pool_q8_window(const ep_pool2d_params_t *p, bool unpadded, uint32_t oy, uint32_t ox, uint32_t *y0,
                                  uint32_t *y1, uint32_t *x0, uint32_t *x1, float *d) {
    if (!unpadded) {
        ep_pool2d_window(p, oy, ox, y0, y1, x0, x1, d);
        return;
    }
    *y0 = oy * p->sh;
    *x0 = ox * p->sw;
    *y1 = *y0 + p->kh < p->h_in ? *y0 + p->kh : p->h_in;
    *x1 = *x0 + p->kw < p->w_in ? *x0 + p->kw : p->w_in;
    *d = p->count_include_pad ? (float)(p->kh * p->kw) : (float)((*y1 - *y0) * (*x1 - *x0));
}

/* The largest code of the window (its first, in the scan's order, at *at) and the codes' sum. */
static int32_t window_max(const int8_t *x, uint32_t W, uint32_t y0, uint32_t y1, uint32_t x0, uint32_t x1,
                          uint32_t *at) {
    int32_t best = -129;
    const int8_t *bp = x;
    for (uint32_t iy = y0; iy < y1; iy++) {
        for (const int8_t *r = x + iy * W + x0, *end = x + iy * W + x1; r < end; r++) {
            const int32_t v = *r;
            bp = v > best ? r : bp;
            best = v > best ? v : best;
        }
    }
    *at = (uint32_t)(bp - x);
    return best;
}

static int32_t window_sum(const int8_t *x, uint32_t W, uint32_t y0, uint32_t y1, uint32_t x0, uint32_t x1) {
    int32_t sum = 0;
    for (uint32_t iy = y0; iy < y1; iy++) {
        for (uint32_t ix = x0; ix < x1; ix++) {
            sum += x[iy * W + ix];
        }
    }
    return sum;
}

/* Plane k's codes at the input's exponent, o[len] (first pass: what it holds), to codes at
 * exponent e: a left shift where exact (the usual case: the pool picks among the codes,
 * so the exponent can only fall), else QUANTIZE of the exact value code · s. */
static void pool_q8_rescale(int8_t *o, uint32_t len, float s, int32_t e) {
    const float qs = ep_q8_quant_scale(e);
    const int32_t k = ep_q8_code_shift(s, qs);
    for (uint32_t j = 0; k != 0 && j < len; j++) {
        o[j] = k > 0 ? (int8_t)(o[j] * (1 << k)) : ep_q8_quantize_s((float)o[j] * s, qs);
    }
}

/* The largest code of the window (the max pool's value: no position needed). */
static int32_t window_max_code(const int8_t *x, uint32_t W, uint32_t y0, uint32_t y1, uint32_t x0, uint32_t x1) {
    int32_t best = -129;
    for (uint32_t iy = y0; iy < y1; iy++) {
        const int8_t *r = x + iy * W;
        for (uint32_t ix = x0; ix < x1; ix++) {
            best = r[ix] > best ? r[ix] : best;
        }
    }
    return best;
}

/*
 * The max pool's forward in integers: the first pass writes each window's largest code
 * (at x's exponent) and returns the largest magnitude; the second rescales those codes to
 * the output's exponent (one scan of the windows instead of two).
 */
static float maxpool_q8_fw_pass(const pool_q8_t *q, uint32_t k0, uint32_t k1, const int32_t *e) {
    const ep_pool2d_params_t *p = &q->p;
    const bool unpadded = (p->pad_top | p->pad_bottom | p->pad_left | p->pad_right) == 0;
    const uint32_t W = p->w_in, hw = p->h_in * W, howo = p->h_out * p->w_out;
    int32_t mag = 0;
    for (uint32_t k = k0; k < k1; k++) {
        int8_t *o = q->out + k * howo;
        if (e != NULL) {
            pool_q8_rescale(o, howo, q->sa, *e);
            continue;
        }
        const int8_t *xk = q->a + k * hw;
        for (uint32_t oy = 0, at = 0; oy < p->h_out; oy++) {
            for (uint32_t ox = 0; ox < p->w_out; ox++, at++) {
                uint32_t y0, y1, x0, x1;
                float d;
                pool_q8_window(p, unpadded, oy, ox, &y0, &y1, &x0, &x1, &d);
                const int32_t m = y1 == y0 || x1 == x0 ? 0 : window_max_code(xk, W, y0, y1, x0, x1);
                o[at] = (int8_t)m;
                mag = m > mag ? m : (-m > mag ? -m : mag);
            }
        }
    }
    return (float)mag * q->sa;
}

static float pool_q8_int_pass(void *arg, uint32_t k0, uint32_t k1, const int32_t *e) {
    const pool_q8_t *q = arg;
    if (q->is_max && q->fw) {
        return maxpool_q8_fw_pass(q, k0, k1, e);
    }
    const ep_pool2d_params_t *p = &q->p;
    const bool fw = q->fw, is_max = q->is_max;
    const bool unpadded = (p->pad_top | p->pad_bottom | p->pad_left | p->pad_right) == 0;
    const uint32_t W = p->w_in, hw = p->h_in * W, howo = p->h_out * p->w_out;
    const float sa = q->sa, qs = e != NULL ? ep_q8_quant_scale(*e) : 0.0f;
    float amax = 0.0f;
    for (uint32_t k = k0; k < k1; k++) {
        const int8_t *xk = fw ? q->a + k * hw : (is_max ? q->x + k * hw : NULL), *dy = q->a + k * howo;
        int8_t *o = q->out + k * (fw ? howo : hw);
        for (uint32_t j = 0; e != NULL && !fw && j < hw; j++) {
            o[j] = 0; /* elements in no window */
        }
        for (uint32_t oy = 0, at = 0; oy < p->h_out; oy++) {
            for (uint32_t ox = 0; ox < p->w_out; ox++, at++) {
                uint32_t y0, y1, x0, x1, best_at = 0;
                float d, v;
                pool_q8_window(p, unpadded, oy, ox, &y0, &y1, &x0, &x1, &d);
                if (y1 == y0 || x1 == x0) {
                    if (fw && e != NULL) {
                        o[at] = 0;
                    }
                    continue;
                }
                if (fw) { /* the average (the max pool's forward is above) */
                    v = (float)window_sum(xk, W, y0, y1, x0, x1) * sa / d;
                } else {
                    if (is_max) {
                        (void)window_max(xk, W, y0, y1, x0, x1, &best_at);
                    }
                    v = is_max ? (float)dy[at] * sa : (float)dy[at] * sa / d;
                }
                if (e == NULL) {
                    amax = ep_q8_maxabs_step(amax, v);
                } else if (fw || is_max) {
                    o[fw ? at : best_at] = ep_q8_quantize_s(v, qs);
                } else {
                    const int8_t code = ep_q8_quantize_s(v, qs);
                    for (uint32_t iy = y0; iy < y1; iy++) {
                        for (uint32_t ix = x0; ix < x1; ix++) {
                            o[iy * W + ix] = code;
                        }
                    }
                }
            }
        }
    }
    return amax;
}

static void pool_q8_run(const ep_ctx_t *c, const ep_node_t *nd, bool is_max) {
    const bool fw = nd->fn == EP_FN_FW;
    pool_q8_t q = {.p = ep_pool2d_geom(c->model, nd, fw ? nd->in[0] : nd->out[0], fw ? nd->out[0] : nd->in[0]),
                   .fw = fw, .is_max = is_max, .a = ep_ctx_s8(c, nd->in[0]), .sa = ep_q8_ctx_scale(c, nd->in[1]),
                   .buf = ep_ctx_f32(c, nd->out[2])};
    q.p.n = c->n;
    if (!fw && is_max) {
        q.x = ep_ctx_s8(c, nd->in[2]);
        q.sx = ep_q8_ctx_scale(c, nd->in[3]);
    }
    if (pool_q8_int_ok(&q, ep_q8_exp(ep_ctx_i32(c, nd->in[1])[0]))) {
        q.out = ep_ctx_s8(c, nd->out[0]);
        const uint64_t work = (uint64_t)q.p.n * q.p.c * q.p.h_in * q.p.w_in * EP_Q8_PAR_ELEM;
        ep_ctx_i32(c, nd->out[1])[0] = ep_q8_two_pass(q.p.n * q.p.c, work, pool_q8_int_pass, &q);
        return;
    }
    const int32_t e = ep_q8_exp_for_maxabs(pool_q8_pass(&q, 0, NULL));
    pool_q8_pass(&q, e, ep_ctx_s8(c, nd->out[0]));
    ep_ctx_i32(c, nd->out[1])[0] = e;
}

static void avgpool2d_q8_run(const ep_ctx_t *c, const ep_node_t *nd) {
    pool_q8_run(c, nd, false);
}

static void maxpool2d_q8_run(const ep_ctx_t *c, const ep_node_t *nd) {
    pool_q8_run(c, nd, true);
}

const ep_op_t ep_op_avgpool2d_q8 = {
    .name = "avgpool2d_q8",
    .prepare = avgpool2d_q8_prepare,
    .fn = {[EP_FN_FW] = avgpool2d_q8_run, [EP_FN_BW_INPUT] = avgpool2d_q8_run, [EP_FN_BW_PARAM] = NULL},
};

const ep_op_t ep_op_maxpool2d_q8 = {
    .name = "maxpool2d_q8",
    .prepare = maxpool2d_q8_prepare,
    .fn = {[EP_FN_FW] = maxpool2d_q8_run, [EP_FN_BW_INPUT] = maxpool2d_q8_run, [EP_FN_BW_PARAM] = NULL},
};
/* ---- GLOBAL_AVGPOOL_Q8 ---------------------------------------------------------------- */

/* x/dx batched s8 [C][...] (rank 2..4, hw = the product past C), y/dy batched s8 of C
 * elements, exponents i32 [1], scratch an unbatched s8 of ≥ 4·hw bytes (one plane in f32);
 * no attributes. */
static ep_status_t global_avgpool_q8_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    const bool fw = nd->fn == EP_FN_FW;
    if ((!fw && nd->fn != EP_FN_BW_INPUT) || nd->n_in != 2 || nd->n_out != 3 || !ep_iattrs_zero_from(nd, 0) ||
        !ep_fattrs_zero(nd)) {
        return ep_reject(why, EP_WHY("global_avgpool_q8: needs fw (x, e_x) -> (y, e_y, scratch) or bw_input (dy, e_dy) -> (dx, e_dx, scratch), no attributes"));
    }
    const uint16_t x = fw ? nd->in[0] : nd->out[0], y = fw ? nd->out[0] : nd->in[0];
    const ep_tensor_t *xt = &m->tensors[x], *yt = &m->tensors[y];
    if (!ep_q8_is_batched(m, x, EP_DTYPE_S8) || xt->rank < 2 || !ep_q8_is_batched(m, y, EP_DTYPE_S8) ||
        yt->dims[0] != xt->dims[0] || yt->elems != yt->dims[0] || !ep_q8_is_exp(m, nd->in[1], 1) ||
        !ep_q8_is_exp(m, nd->out[1], 1) || !ep_q8_scratch_ok(m, nd->out[2], 4u * (uint64_t)(xt->elems / xt->dims[0]))) {
        return ep_reject(why, EP_WHY("global_avgpool_q8: x/dx batched s8 [C][...], y/dy batched s8 [C], i32 [1] exponents, scratch >= 4*hw bytes"));
    }
    if (!ep_outputs_disjoint(m, nd, -1)) {
        return ep_reject(why, EP_WHY("global_avgpool_q8: outputs overlap inputs or each other"));
    }
    return EP_OK;
}

/* One pass over the n·C planes (the f32 kernel on one plane, n = c = 1). */
static float gap_q8_pass(uint32_t planes, uint32_t hw, bool fw, const int8_t *a, float sa, float *buf, int32_t e,
                         int8_t *out) {
    const ep_global_avgpool_params_t one = {1, 1, hw};
    const uint32_t in = fw ? hw : 1u, res = fw ? 1u : hw;
    float y1, amax = 0.0f;
    for (uint32_t k = 0; k < planes; k++) {
        float *src = fw ? buf : &y1, *dst = fw ? &y1 : buf;
        for (uint32_t j = 0; j < in; j++) {
            src[j] = (float)a[k * in + j] * sa;
        }
        if (fw) {
            ep_global_avgpool_fw_f32(&one, src, dst);
        } else {
            ep_global_avgpool_bw_input_f32(&one, src, dst);
        }
        amax = ep_q8_chunk_out(dst, res, out != NULL ? out + k * res : NULL, e, amax);
    }
    return amax;
}

static void global_avgpool_q8_run(const ep_ctx_t *c, const ep_node_t *nd) {
    const bool fw = nd->fn == EP_FN_FW;
    const ep_tensor_t *xt = &c->model->tensors[fw ? nd->in[0] : nd->out[0]];
    const uint32_t planes = c->n * xt->dims[0], hw = xt->elems / xt->dims[0];
    const int8_t *a = ep_ctx_s8(c, nd->in[0]);
    const float sa = ep_q8_ctx_scale(c, nd->in[1]);
    float *buf = ep_ctx_f32(c, nd->out[2]);
    const int32_t e = ep_q8_exp_for_maxabs(gap_q8_pass(planes, hw, fw, a, sa, buf, 0, NULL));
    gap_q8_pass(planes, hw, fw, a, sa, buf, e, ep_ctx_s8(c, nd->out[0]));
    ep_ctx_i32(c, nd->out[1])[0] = e;
}

const ep_op_t ep_op_global_avgpool_q8 = {
    .name = "global_avgpool_q8",
    .prepare = global_avgpool_q8_prepare,
    .fn = {[EP_FN_FW] = global_avgpool_q8_run, [EP_FN_BW_INPUT] = global_avgpool_q8_run, [EP_FN_BW_PARAM] = NULL},
};
