/*
 * ep_pool2d.c — AvgPool2d and MaxPool2d kernels (forward and input gradient) with
 * per-side padding, documented in ep_conv_pool.h. Max-pool backward saves nothing:
 * it re-runs the forward scan over x to find each window's selected element.
 *
 * The valid part of each window is computed once per output row (rows) and once
 * per output element (columns); the loops over a window then run without tests
 * (max pooling compares by nature).
 */
#include <math.h>

#include "ep_conv_pool.h"
#include "ep_parallel.h"
#include "ep_ops.h"

bool ep_pool2d_params_ok(const ep_pool2d_params_t *p) {
    if (p->n == 0 || p->c == 0 || p->h_in == 0 || p->w_in == 0 || p->kh == 0 || p->kw == 0 ||
        p->sh == 0 || p->sw == 0) {
        return false;
    }
    const uint32_t ho = ep_conv_out_len(p->h_in, p->pad_top, p->pad_bottom, p->kh, p->sh, 1);
    const uint32_t wo = ep_conv_out_len(p->w_in, p->pad_left, p->pad_right, p->kw, p->sw, 1);
    return ho != 0 && wo != 0 && p->h_out == ho && p->w_out == wo;
}

/* The input range [*i0, *i1) covered by window o along one axis, clipped to [0, in). */
static void window(uint32_t o, uint32_t s, uint32_t pad, uint32_t k, uint32_t in, uint32_t *i0,
                   uint32_t *i1) {
    const uint32_t start = o * s; /* window start + pad */
    uint32_t lo = start < pad ? 0 : start - pad;
    uint32_t hi = start + k <= pad ? 0 : start + k - pad;
    if (hi > in) {
        hi = in;
    }
    if (lo > hi) {
        lo = hi;
    }
    *i0 = lo;
    *i1 = hi;
}

/* Divisor of window (rows nr, columns nc inside the input); 0 = empty window. */
static float divisor(const ep_pool2d_params_t *p, uint32_t nr, uint32_t nc) {
    if (nr == 0 || nc == 0) {
        return 0.0f;
    }
    return p->count_include_pad ? (float)(p->kh * p->kw) : (float)(nr * nc);
}

void ep_pool2d_window(const ep_pool2d_params_t *p, uint32_t oy, uint32_t ox, uint32_t *y0, uint32_t *y1,
                      uint32_t *x0, uint32_t *x1, float *d) {
    window(oy, p->sh, p->pad_top, p->kh, p->h_in, y0, y1);
    window(ox, p->sw, p->pad_left, p->kw, p->w_in, x0, x1);
    *d = divisor(p, *y1 - *y0, *x1 - *x0);
}

static void avgpool2d_fw_f32_planes(const ep_pool2d_params_t *p, const float *restrict x, float *restrict y) {
    const uint32_t W = p->w_in, hw = p->h_in * W, Wo = p->w_out, nc_all = p->n * p->c;
    for (uint32_t ch = 0; ch < nc_all; ch++, x += hw) {
        for (uint32_t oy = 0; oy < p->h_out; oy++) {
            uint32_t y0, y1;
            window(oy, p->sh, p->pad_top, p->kh, p->h_in, &y0, &y1);
            for (uint32_t ox = 0; ox < Wo; ox++, y++) {
                uint32_t x0, x1;
                window(ox, p->sw, p->pad_left, p->kw, W, &x0, &x1);
                const float d = divisor(p, y1 - y0, x1 - x0);
                if (d == 0.0f) {
                    *y = 0.0f;
                    continue;
                }
                float s = 0.0f;
                const float *r = x + y0 * W;
                for (uint32_t iy = y0; iy < y1; iy++, r += W) {
                    for (uint32_t ix = x0; ix < x1; ix++) {
                        s += r[ix];
                    }
                }
                *y = s / d;
            }
        }
    }
}

static void avgpool2d_bw_input_f32_planes(const ep_pool2d_params_t *p, const float *restrict dy,
                               float *restrict dx) {
    const uint32_t W = p->w_in, hw = p->h_in * W, Wo = p->w_out, nc_all = p->n * p->c;
    for (uint32_t j = 0; j < nc_all * hw; j++) {
        dx[j] = 0.0f;
    }
    for (uint32_t ch = 0; ch < nc_all; ch++, dx += hw) {
        for (uint32_t oy = 0; oy < p->h_out; oy++) {
            uint32_t y0, y1;
            window(oy, p->sh, p->pad_top, p->kh, p->h_in, &y0, &y1);
            for (uint32_t ox = 0; ox < Wo; ox++, dy++) {
                uint32_t x0, x1;
                window(ox, p->sw, p->pad_left, p->kw, W, &x0, &x1);
                const float d = divisor(p, y1 - y0, x1 - x0);
                if (d == 0.0f) {
                    continue;
                }
                const float gv = *dy / d;
                float *r = dx + y0 * W;
                for (uint32_t iy = y0; iy < y1; iy++, r += W) {
                    for (uint32_t ix = x0; ix < x1; ix++) {
                        r[ix] += gv;
                    }
                }
            }
        }
    }
}

/*
 * The element max pooling selects in the window rows [y0, y1) × columns [x0, x1)
 * of channel xc (non-empty window): PyTorch's scan, −∞ start, take v if v > max or
 * v is NaN. Returns its offset in the channel; *m gets its value.
 */
static uint32_t max_select(const float *xc, uint32_t W, uint32_t y0, uint32_t y1, uint32_t x0,
                           uint32_t x1, float *m) {
    float best = -INFINITY;
    uint32_t at = y0 * W + x0;
    const float *r = xc + y0 * W;
    for (uint32_t iy = y0; iy < y1; iy++, r += W) {
        for (uint32_t ix = x0; ix < x1; ix++) {
            const float v = r[ix];
            if (v > best || isnan(v)) {
                best = v;
                at = iy * W + ix;
            }
        }
    }
    *m = best;
    return at;
}

static void maxpool2d_fw_f32_planes(const ep_pool2d_params_t *p, const float *restrict x, float *restrict y) {
    const uint32_t W = p->w_in, hw = p->h_in * W, Wo = p->w_out, nc_all = p->n * p->c;
    for (uint32_t ch = 0; ch < nc_all; ch++, x += hw) {
        for (uint32_t oy = 0; oy < p->h_out; oy++) {
            uint32_t y0, y1;
            window(oy, p->sh, p->pad_top, p->kh, p->h_in, &y0, &y1);
            for (uint32_t ox = 0; ox < Wo; ox++, y++) {
                uint32_t x0, x1;
                window(ox, p->sw, p->pad_left, p->kw, W, &x0, &x1);
                float m = 0.0f;
                if (y1 > y0 && x1 > x0) {
                    (void)max_select(x, W, y0, y1, x0, x1, &m);
                }
                *y = m;
            }
        }
    }
}

static void maxpool2d_bw_input_f32_planes(const ep_pool2d_params_t *p, const float *restrict dy,
                               const float *restrict x, float *restrict dx) {
    const uint32_t W = p->w_in, hw = p->h_in * W, Wo = p->w_out, nc_all = p->n * p->c;
    for (uint32_t j = 0; j < nc_all * hw; j++) {
        dx[j] = 0.0f;
    }
    for (uint32_t ch = 0; ch < nc_all; ch++, x += hw, dx += hw) {
        for (uint32_t oy = 0; oy < p->h_out; oy++) {
            uint32_t y0, y1;
            window(oy, p->sh, p->pad_top, p->kh, p->h_in, &y0, &y1);
            for (uint32_t ox = 0; ox < Wo; ox++, dy++) {
                uint32_t x0, x1;
                window(ox, p->sw, p->pad_left, p->kw, W, &x0, &x1);
                if (y1 > y0 && x1 > x0) {
                    float m;
                    dx[max_select(x, W, y0, y1, x0, x1, &m)] += *dy;
                }
            }
        }
    }
}

/*
 * On a cluster (ep_parallel.h) the kernels split the n·c planes: each plane (its
 * outputs, or its input gradient, zeroing included) is done by one core with the
 * serial code above, run on a contiguous block of planes as if they were one
 * sample of that many channels. Results do not depend on the core count.
 */
typedef struct {
    const ep_pool2d_params_t *p;
    const float *a, *b; /* inputs: x, or dy (and x for max) */
    float *out;
    uint32_t kind; /* 0 avg fw, 1 avg bw_input, 2 max fw, 3 max bw_input */
} pool_job_t;

static void pool_planes(const pool_job_t *j, uint32_t c0, uint32_t c1) {
    ep_pool2d_params_t q = *j->p;
    const uint32_t hw = q.h_in * q.w_in, howo = q.h_out * q.w_out;
    q.n = 1;
    q.c = c1 - c0;
    switch (j->kind) {
    case 0:
        avgpool2d_fw_f32_planes(&q, j->a + c0 * hw, j->out + c0 * howo);
        break;
    case 1:
        avgpool2d_bw_input_f32_planes(&q, j->a + c0 * howo, j->out + c0 * hw);
        break;
    case 2:
        maxpool2d_fw_f32_planes(&q, j->a + c0 * hw, j->out + c0 * howo);
        break;
    default:
        maxpool2d_bw_input_f32_planes(&q, j->a + c0 * howo, j->b + c0 * hw, j->out + c0 * hw);
        break;
    }
}

static void pool_core(void *arg) {
    const pool_job_t *j = arg;
    uint32_t lo, hi;
    ep_par_range(j->p->n * j->p->c, &lo, &hi);
    if (lo < hi) {
        pool_planes(j, lo, hi);
    }
}

static void pool_run(const pool_job_t *j) {
    if (ep_par_num_cores() > 1) {
        ep_par_fork(0, pool_core, (void *)j);
    } else {
        pool_planes(j, 0, j->p->n * j->p->c);
    }
}

void ep_avgpool2d_fw_f32(const ep_pool2d_params_t *p, const float *restrict x, float *restrict y) {
    const pool_job_t j = {p, x, NULL, y, 0};
    pool_run(&j);
}

void ep_avgpool2d_bw_input_f32(const ep_pool2d_params_t *p, const float *restrict dy,
                               float *restrict dx) {
    const pool_job_t j = {p, dy, NULL, dx, 1};
    pool_run(&j);
}

void ep_maxpool2d_fw_f32(const ep_pool2d_params_t *p, const float *restrict x, float *restrict y) {
    const pool_job_t j = {p, x, NULL, y, 2};
    pool_run(&j);
}

void ep_maxpool2d_bw_input_f32(const ep_pool2d_params_t *p, const float *restrict dy,
                               const float *restrict x, float *restrict dx) {
    const pool_job_t j = {p, dy, x, dx, 3};
    pool_run(&j);
}

/* ------------------------------------------------------------------------- */
/* AVGPOOL2D and MAXPOOL2D nodes (docs/ops/conv_pool.md)                      */
/* ------------------------------------------------------------------------- */

/*
 * iattr: [0] kh, [1] kw, [2] sh, [3] sw, [4] pad_top, [5] pad_bottom, [6] pad_left,
 * [7] pad_right, [8] count_include_pad (avg: 0 or 1; max: 0); [9..11] and every
 * fattr 0. x/dx batched f32 [C][H][W] (2-D) or [C][L] (1-D: kh = sh = 1, no
 * top/bottom pad), y/dy batched f32 [C][H_out][W_out] of the same rank. Each pad
 * is at most half its kernel (PyTorch's rule: no window lies in the padding only).
 */
enum { POOL_KH, POOL_KW, POOL_SH, POOL_SW, POOL_PT, POOL_PB, POOL_PL, POOL_PR, POOL_CIP, POOL_N_IATTR };

static bool pool_is_act(const ep_model_t *m, uint16_t t, uint8_t dtype) {
    const ep_tensor_t *x = &m->tensors[t];
    return x->dtype == dtype && (x->flags & EP_TF_BATCHED) != 0 && (x->rank == 2 || x->rank == 3);
}

ep_pool2d_params_t ep_pool2d_geom(const ep_model_t *m, const ep_node_t *nd, uint16_t x, uint16_t y) {
    const ep_tensor_t *xt = &m->tensors[x], *yt = &m->tensors[y];
    const bool two_d = xt->rank == 3;
    const uint16_t *a = nd->iattr;
    ep_pool2d_params_t p = {
        .n = 1, .c = xt->dims[0], .h_in = two_d ? xt->dims[1] : 1u, .w_in = xt->dims[two_d ? 2 : 1],
        .h_out = two_d ? yt->dims[1] : 1u, .w_out = yt->dims[two_d ? 2 : 1],
        .kh = a[POOL_KH], .kw = a[POOL_KW], .sh = a[POOL_SH], .sw = a[POOL_SW],
        .pad_top = a[POOL_PT], .pad_bottom = a[POOL_PB], .pad_left = a[POOL_PL], .pad_right = a[POOL_PR],
        .count_include_pad = a[POOL_CIP],
    };
    return p;
}

/* Checks shared by both ops and fns over x (or dx) and y (or dy). */
/* The reason, naming the op the node belongs to. */
#define POOL_WHY(msg) (is_max ? EP_WHY("maxpool2d: " msg) : EP_WHY("avgpool2d: " msg))

ep_status_t ep_pool2d_check(const ep_model_t *m, const ep_node_t *nd, uint16_t x, uint16_t y, bool is_max,
                            uint8_t dtype, const char **why) {
    if (!pool_is_act(m, x, dtype) || !pool_is_act(m, y, dtype) || m->tensors[x].rank != m->tensors[y].rank ||
        m->tensors[x].dims[0] != m->tensors[y].dims[0]) {
        return ep_reject(why, POOL_WHY("x/dx and y/dy must be batched [C][H][W] or [C][L] (f32, s8 for the int8 pools), same rank and C"));
    }
    for (uint8_t i = POOL_N_IATTR; i < EP_NODE_IATTRS; i++) {
        if (nd->iattr[i] != 0) {
            return ep_reject(why, POOL_WHY("iattr[9..11] must be 0"));
        }
    }
    for (uint8_t i = 0; i < EP_NODE_FATTRS; i++) {
        if (nd->fattr[i] != 0.0f) {
            return ep_reject(why, POOL_WHY("fattrs must be 0"));
        }
    }
    const ep_pool2d_params_t p = ep_pool2d_geom(m, nd, x, y);
    if (p.kh == 0 || p.kw == 0) {
        return ep_reject(why, POOL_WHY("zero kernel"));
    }
    if (p.sh == 0 || p.sw == 0) {
        return ep_reject(why, POOL_WHY("zero stride"));
    }
    if (p.count_include_pad > (is_max ? 0u : 1u)) {
        return ep_reject(why, POOL_WHY("iattr[8] count_include_pad must be 0/1 (avgpool) or 0 (maxpool)"));
    }
    if (m->tensors[x].rank == 2 && (p.kh != 1 || p.sh != 1 || p.pad_top != 0 || p.pad_bottom != 0)) {
        return ep_reject(why, POOL_WHY("1-D node needs kh = sh = 1 and no top/bottom padding"));
    }
    if (2u * p.pad_top > p.kh || 2u * p.pad_bottom > p.kh || 2u * p.pad_left > p.kw || 2u * p.pad_right > p.kw) {
        return ep_reject(why, POOL_WHY("a pad exceeds half its kernel"));
    }
    const uint32_t ho = ep_conv_out_len(p.h_in, p.pad_top, p.pad_bottom, p.kh, p.sh, 1);
    const uint32_t wo = ep_conv_out_len(p.w_in, p.pad_left, p.pad_right, p.kw, p.sw, 1);
    if (ho == 0 || wo == 0) {
        return ep_reject(why, POOL_WHY("kernel larger than the padded input"));
    }
    if (ho != p.h_out || wo != p.w_out) {
        return ep_reject(why, POOL_WHY("y/dy spatial dims differ from the output size of x, kernel, stride, padding"));
    }
    if (!ep_pool2d_params_ok(&p)) {
        return ep_reject(why, POOL_WHY("shape rejected by ep_pool2d_params_ok"));
    }
    return EP_OK;
}

#undef POOL_WHY

static ep_status_t avgpool2d_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    ep_status_t st;
    if (nd->fn == EP_FN_FW) {
        if (nd->n_in != 1 || nd->n_out != 1) {
            return ep_reject(why, EP_WHY("avgpool2d.fw: needs input (x) and output (y)"));
        }
        if ((st = ep_pool2d_check(m, nd, nd->in[0], nd->out[0], false, EP_DTYPE_F32, why)) != EP_OK) {
            return st;
        }
        if (ep_overlap(m, nd->out[0], nd->in[0])) {
            return ep_reject(why, EP_WHY("avgpool2d.fw: y overlaps x"));
        }
        return EP_OK;
    }
    if (nd->fn == EP_FN_BW_INPUT) {
        if (nd->n_in != 1 || nd->n_out != 1) {
            return ep_reject(why, EP_WHY("avgpool2d.bw_input: needs input (dy) and output (dx)"));
        }
        if ((st = ep_pool2d_check(m, nd, nd->out[0], nd->in[0], false, EP_DTYPE_F32, why)) != EP_OK) {
            return st;
        }
        if (ep_overlap(m, nd->out[0], nd->in[0])) {
            return ep_reject(why, EP_WHY("avgpool2d.bw_input: dx overlaps dy"));
        }
        return EP_OK;
    }
    return ep_reject(why, EP_WHY("avgpool2d: only fw and bw_input exist"));
}

static ep_status_t maxpool2d_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    ep_status_t st;
    if (nd->fn == EP_FN_FW) {
        if (nd->n_in != 1 || nd->n_out != 1) {
            return ep_reject(why, EP_WHY("maxpool2d.fw: needs input (x) and output (y)"));
        }
        if ((st = ep_pool2d_check(m, nd, nd->in[0], nd->out[0], true, EP_DTYPE_F32, why)) != EP_OK) {
            return st;
        }
        if (ep_overlap(m, nd->out[0], nd->in[0])) {
            return ep_reject(why, EP_WHY("maxpool2d.fw: y overlaps x"));
        }
        return EP_OK;
    }
    if (nd->fn == EP_FN_BW_INPUT) {
        if (nd->n_in != 2 || nd->n_out != 1) {
            return ep_reject(why, EP_WHY("maxpool2d.bw_input: needs inputs (dy, x) and output (dx)"));
        }
        const uint16_t dy = nd->in[0], x = nd->in[1], dx = nd->out[0];
        if ((st = ep_pool2d_check(m, nd, dx, dy, true, EP_DTYPE_F32, why)) != EP_OK) {
            return st;
        }
        if (!pool_is_act(m, x, EP_DTYPE_F32) || !ep_same_shape(m, x, dx)) {
            return ep_reject(why, EP_WHY("maxpool2d.bw_input: x must be batched f32 shaped like dx"));
        }
        if (ep_overlap(m, dx, dy) || ep_overlap(m, dx, x)) {
            return ep_reject(why, EP_WHY("maxpool2d.bw_input: dx overlaps an input"));
        }
        return EP_OK;
    }
    return ep_reject(why, EP_WHY("maxpool2d: only fw and bw_input exist"));
}

static void avgpool2d_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    ep_pool2d_params_t p = ep_pool2d_geom(c->model, nd, nd->in[0], nd->out[0]);
    p.n = c->n;
    ep_avgpool2d_fw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->out[0]));
}

static void avgpool2d_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    ep_pool2d_params_t p = ep_pool2d_geom(c->model, nd, nd->out[0], nd->in[0]);
    p.n = c->n;
    ep_avgpool2d_bw_input_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->out[0]));
}

static void maxpool2d_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    ep_pool2d_params_t p = ep_pool2d_geom(c->model, nd, nd->in[0], nd->out[0]);
    p.n = c->n;
    ep_maxpool2d_fw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->out[0]));
}

static void maxpool2d_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    ep_pool2d_params_t p = ep_pool2d_geom(c->model, nd, nd->out[0], nd->in[0]);
    p.n = c->n;
    ep_maxpool2d_bw_input_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->out[0]));
}

const ep_op_t ep_op_avgpool2d = {
    .name = "avgpool2d",
    .prepare = avgpool2d_prepare,
    .fn = {[EP_FN_FW] = avgpool2d_fw, [EP_FN_BW_INPUT] = avgpool2d_bw_input, [EP_FN_BW_PARAM] = NULL},
};

const ep_op_t ep_op_maxpool2d = {
    .name = "maxpool2d",
    .prepare = maxpool2d_prepare,
    .fn = {[EP_FN_FW] = maxpool2d_fw, [EP_FN_BW_INPUT] = maxpool2d_bw_input, [EP_FN_BW_PARAM] = NULL},
};
