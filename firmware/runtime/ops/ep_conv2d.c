/*
 * ep_conv2d.c — Conv2d kernels (Conv1d = H 1): forward, input gradient, weight and
 * bias gradients, with per-side padding, stride, dilation and groups. Documented
 * in ep_conv_pool.h.
 *
 * No test or division per multiply-accumulate: valid kernel rows are found once
 * per output row, valid kernel columns once per border column (interior columns
 * use every tap), and the MAC loops run over those ranges. Accumulators live in
 * registers (16 per tile where the shapes allow). Every MAC is an fmaf(): -std=c11
 * forbids the compiler to contract a*b+c, and a separate multiply and add would
 * cost two FPU instructions per MAC; with fpv4-sp-d16 fmaf is one VFMA.F32 (and
 * one rounding instead of two, so the error bounds only get tighter).
 *
 * On a cluster (ep_parallel.h) the three kernels split their outputs into work
 * items — (sample, group, block of 4 output channels) for fw and bw_input, and
 * (group, block of 4 output channels, block of 4 input channels, kernel row,
 * block of 4 kernel columns) for the weight gradient — and each core takes a
 * contiguous run of items. Blocks start on multiples of 4, so every output is
 * computed by the same tile, in the same order, as in the serial loop: results
 * are bit-identical at any core count. On one core a run of items covering a
 * whole (sample, group) is one call, as before.
 */
#include <math.h>
#include <stddef.h>

#include "ep_conv_pool.h"
#include "ep_ops.h"
#include "ep_parallel.h"

#if defined(__GNUC__)
#define INLINE inline __attribute__((always_inline))
#define NOINLINE __attribute__((noinline)) /* tiles keep their own register allocation */
#else
#define INLINE inline
#define NOINLINE
#endif

bool ep_conv2d_params_ok(const ep_conv2d_params_t *p) {
    if (p->n == 0 || p->c_in == 0 || p->c_out == 0 || p->groups == 0 || p->h_in == 0 ||
        p->w_in == 0 || p->kh == 0 || p->kw == 0 || p->sh == 0 || p->sw == 0 || p->dh == 0 ||
        p->dw == 0) {
        return false;
    }
    if (p->c_in % p->groups != 0 || p->c_out % p->groups != 0) {
        return false;
    }
    const uint32_t ho = ep_conv_out_len(p->h_in, p->pad_top, p->pad_bottom, p->kh, p->sh, p->dh);
    const uint32_t wo = ep_conv_out_len(p->w_in, p->pad_left, p->pad_right, p->kw, p->sw, p->dw);
    return ho != 0 && wo != 0 && p->h_out == ho && p->w_out == wo;
}

static bool is_pointwise(const ep_conv2d_params_t *p) {
    return p->kh == 1 && p->kw == 1 && p->sh == 1 && p->sw == 1 && p->pad_top == 0 &&
           p->pad_bottom == 0 && p->pad_left == 0 && p->pad_right == 0;
}

/*
 * Taps of output position o along one axis: the k in [*k0, *k1) with
 * 0 ≤ o·s + k·d − pad < in. Empty ranges come back as *k0 == *k1.
 */
static void tap_range(uint32_t o, uint32_t s, uint32_t pad, uint32_t d, uint32_t k, uint32_t in,
                      uint32_t *k0, uint32_t *k1) {
    const uint32_t base = o * s;
    uint32_t lo = 0, hi = 0;
    if (base < pad) {
        lo = (pad - base + d - 1) / d;
    }
    if (base <= in - 1 + pad) {
        hi = (in - 1 + pad - base) / d + 1;
    }
    if (hi > k) {
        hi = k;
    }
    if (lo > hi) {
        lo = hi;
    }
    *k0 = lo;
    *k1 = hi;
}

/*
 * Output positions o in [*a, *b) along one axis whose k taps all lie inside the
 * input; positions outside it are the border.
 */
static void interior_range(uint32_t s, uint32_t pad, uint32_t d, uint32_t k, uint32_t in,
                           uint32_t out, uint32_t *a, uint32_t *b) {
    const uint32_t ext = (k - 1) * d;
    uint32_t lo = (pad + s - 1) / s, hi = 0;
    if (in - 1 + pad >= ext) {
        hi = (in - 1 + pad - ext) / s + 1;
    }
    if (lo > out) {
        lo = out;
    }
    if (hi > out) {
        hi = out;
    }
    if (hi < lo) {
        hi = lo;
    }
    *a = lo;
    *b = hi;
}

/*
 * Direct convolution, shared by the forward pass and the input gradient (a
 * correlation of dy with the kernel mirrored, i.e. the same loop nest with negative
 * input steps, once per stride phase). A tile computes 4 (or 1) "tile channels" ×
 * 4 or 8 (or 1) output columns in register accumulators, reducing over nred
 * channels × the valid kernel rows × the valid kernel columns.
 */
typedef struct {
    uint32_t nred;   /* reduction channels: fw Ci, bw_input Co */
    uint32_t in_red; /* input step per reduction channel: fw h_in·w_in, bw h_out·w_out */
    uint32_t w_red;  /* weight step per reduction channel: fw kh·kw, bw Ci·kh·kw */
    uint32_t w_tile; /* weight step between the tile channels: fw Ci·kh·kw, bw kh·kw */
    uint32_t out_ch; /* output step between the tile channels */
    uint32_t w_row;  /* weight step per kernel row (tap row) */
    uint32_t w_col;  /* weight step per tap along a row: 1, or sw/gcd(sw, dw) in a stride phase */
    uint32_t out_pos; /* output step between adjacent output columns: 1, or sw in a stride phase */
    int32_t in_row;  /* input step per kernel row: fw dh·w_in, bw −dh·w_out */
    int32_t in_col;  /* input step per kernel column: fw dw, bw −dw */
    int32_t in_pos;  /* input step between adjacent output columns: fw sw, bw 1 */
} tile_t;

#define MAC4(a0, a1, a2, a3, v, x0, x1, x2, x3) \
    do {                                        \
        a0 = fmaf(v, x0, a0);                   \
        a1 = fmaf(v, x1, a1);                   \
        a2 = fmaf(v, x2, a2);                   \
        a3 = fmaf(v, x3, a3);                   \
    } while (0)

/*
 * The tiles: out = bias + Σ over nred reduction channels × nky kernel rows × nkx
 * kernel columns. in points at the input element read by the first of those taps
 * for the first output column and reduction channel 0; w at that tap's weight for
 * tile channel 0 and reduction channel 0. Offsets are signed (the input gradient
 * walks dy backwards) and only formed for elements that exist.
 */
static INLINE void tile_4x4_body(const tile_t *t, const float *restrict in, const float *restrict w,
                                 uint32_t nky, uint32_t nkx, const float *bias, float *restrict out,
                                 int32_t p1, uint32_t wst) {
    float a00 = bias[0], a01 = bias[0], a02 = bias[0], a03 = bias[0];
    float a10 = bias[1], a11 = bias[1], a12 = bias[1], a13 = bias[1];
    float a20 = bias[2], a21 = bias[2], a22 = bias[2], a23 = bias[2];
    float a30 = bias[3], a31 = bias[3], a32 = bias[3], a33 = bias[3];
    const int32_t p2 = 2 * p1, p3 = 3 * p1, col = t->in_col, row = t->in_row;
    const uint32_t kw = t->w_row, wt = t->w_tile;
    for (uint32_t c = 0; c < t->nred; c++) {
        const float *ic = in + c * t->in_red;
        const float *w0 = w + c * t->w_red, *w1 = w0 + wt, *w2 = w1 + wt, *w3 = w2 + wt;
        if (nkx == 1) { /* one tap per row: a single loop over the rows */
            int32_t o = 0;
            for (uint32_t r = 0, k = 0; r < nky; r++, o += row, k += kw) {
                const float x0 = ic[o], x1 = ic[o + p1], x2 = ic[o + p2], x3 = ic[o + p3];
                MAC4(a00, a01, a02, a03, w0[k], x0, x1, x2, x3);
                MAC4(a10, a11, a12, a13, w1[k], x0, x1, x2, x3);
                MAC4(a20, a21, a22, a23, w2[k], x0, x1, x2, x3);
                MAC4(a30, a31, a32, a33, w3[k], x0, x1, x2, x3);
            }
            continue;
        }
        int32_t ro = 0;
        for (uint32_t r = 0, wo = 0; r < nky; r++, ro += row, wo += kw) {
            int32_t o = ro;
            for (uint32_t j = 0, k = wo; j < nkx; j++, k += wst, o += col) {
                const float x0 = ic[o], x1 = ic[o + p1], x2 = ic[o + p2], x3 = ic[o + p3];
                MAC4(a00, a01, a02, a03, w0[k], x0, x1, x2, x3);
                MAC4(a10, a11, a12, a13, w1[k], x0, x1, x2, x3);
                MAC4(a20, a21, a22, a23, w2[k], x0, x1, x2, x3);
                MAC4(a30, a31, a32, a33, w3[k], x0, x1, x2, x3);
            }
        }
    }
    float *y0 = out, *y1 = y0 + t->out_ch, *y2 = y1 + t->out_ch, *y3 = y2 + t->out_ch;
    const uint32_t q1 = t->out_pos, q2 = 2 * q1, q3 = 3 * q1;
    y0[0] = a00, y0[q1] = a01, y0[q2] = a02, y0[q3] = a03;
    y1[0] = a10, y1[q1] = a11, y1[q2] = a12, y1[q3] = a13;
    y2[0] = a20, y2[q1] = a21, y2[q2] = a22, y2[q3] = a23;
    y3[0] = a30, y3[q1] = a31, y3[q2] = a32, y3[q3] = a33;
}

static INLINE void tile_1x4_body(const tile_t *t, const float *restrict in, const float *restrict w,
                                 uint32_t nky, uint32_t nkx, float bias, float *restrict out, int32_t p1,
                                 uint32_t wst) {
    float a0 = bias, a1 = bias, a2 = bias, a3 = bias;
    const int32_t p2 = 2 * p1, p3 = 3 * p1, col = t->in_col, row = t->in_row;
    const uint32_t kw = t->w_row;
    for (uint32_t c = 0; c < t->nred; c++) {
        const float *ic = in + c * t->in_red, *wc = w + c * t->w_red;
        int32_t ro = 0;
        for (uint32_t r = 0, wo = 0; r < nky; r++, ro += row, wo += kw) {
            int32_t o = ro;
            for (uint32_t j = 0, k = wo; j < nkx; j++, k += wst, o += col) {
                MAC4(a0, a1, a2, a3, wc[k], ic[o], ic[o + p1], ic[o + p2], ic[o + p3]);
            }
        }
    }
    const uint32_t q1 = t->out_pos;
    out[0] = a0, out[q1] = a1, out[2 * q1] = a2, out[3 * q1] = a3;
}

/* 1 channel × 8 columns (depthwise layers): 8 accumulators share each weight load. */
static INLINE void tile_1x8_body(const tile_t *t, const float *restrict in, const float *restrict w,
                                 uint32_t nky, uint32_t nkx, float bias, float *restrict out, int32_t p1,
                                 uint32_t wst) {
    float a0 = bias, a1 = bias, a2 = bias, a3 = bias, a4 = bias, a5 = bias, a6 = bias, a7 = bias;
    const int32_t p2 = 2 * p1, p3 = 3 * p1, p4 = 4 * p1, p5 = 5 * p1, p6 = 6 * p1, p7 = 7 * p1;
    const int32_t col = t->in_col, row = t->in_row;
    const uint32_t kw = t->w_row;
    for (uint32_t c = 0; c < t->nred; c++) {
        const float *ic = in + c * t->in_red, *wc = w + c * t->w_red;
        int32_t ro = 0;
        for (uint32_t r = 0, wo = 0; r < nky; r++, ro += row, wo += kw) {
            int32_t o = ro;
            for (uint32_t j = 0, k = wo; j < nkx; j++, k += wst, o += col) {
                const float v = wc[k];
                MAC4(a0, a1, a2, a3, v, ic[o], ic[o + p1], ic[o + p2], ic[o + p3]);
                MAC4(a4, a5, a6, a7, v, ic[o + p4], ic[o + p5], ic[o + p6], ic[o + p7]);
            }
        }
    }
    const uint32_t q = t->out_pos;
    out[0] = a0, out[q] = a1, out[2 * q] = a2, out[3 * q] = a3;
    out[4 * q] = a4, out[5 * q] = a5, out[6 * q] = a6, out[7 * q] = a7;
}

/* The multi-column tiles, specialised for adjacent output columns 1 apart in the
 * input and adjacent taps 1 apart in the weights (constant offsets: stride-1
 * forward and input gradient). */
static NOINLINE void tile_4x4(const tile_t *t, const float *restrict in, const float *restrict w,
                              uint32_t nky, uint32_t nkx, const float *bias, float *restrict out) {
    if (t->in_pos == 1 && t->w_col == 1) {
        tile_4x4_body(t, in, w, nky, nkx, bias, out, 1, 1);
    } else {
        tile_4x4_body(t, in, w, nky, nkx, bias, out, t->in_pos, t->w_col);
    }
}

static NOINLINE void tile_1x4(const tile_t *t, const float *restrict in, const float *restrict w,
                              uint32_t nky, uint32_t nkx, const float *bias, float *restrict out) {
    if (t->in_pos == 1 && t->w_col == 1) {
        tile_1x4_body(t, in, w, nky, nkx, bias[0], out, 1, 1);
    } else {
        tile_1x4_body(t, in, w, nky, nkx, bias[0], out, t->in_pos, t->w_col);
    }
}

static NOINLINE void tile_1x8(const tile_t *t, const float *restrict in, const float *restrict w,
                              uint32_t nky, uint32_t nkx, const float *bias, float *restrict out) {
    if (t->in_pos == 1 && t->w_col == 1) {
        tile_1x8_body(t, in, w, nky, nkx, bias[0], out, 1, 1);
    } else {
        tile_1x8_body(t, in, w, nky, nkx, bias[0], out, t->in_pos, t->w_col);
    }
}

static NOINLINE void tile_4x1(const tile_t *t, const float *restrict in, const float *restrict w,
                              uint32_t nky, uint32_t nkx, const float *bias, float *restrict out) {
    float a0 = bias[0], a1 = bias[1], a2 = bias[2], a3 = bias[3];
    const int32_t col = t->in_col, row = t->in_row;
    const uint32_t kw = t->w_row, wst = t->w_col, wt = t->w_tile;
    for (uint32_t c = 0; c < t->nred; c++) {
        const float *ic = in + c * t->in_red;
        const float *w0 = w + c * t->w_red, *w1 = w0 + wt, *w2 = w1 + wt, *w3 = w2 + wt;
        int32_t ro = 0;
        for (uint32_t r = 0, wo = 0; r < nky; r++, ro += row, wo += kw) {
            int32_t o = ro;
            for (uint32_t j = 0, k = wo; j < nkx; j++, k += wst, o += col) {
                const float xv = ic[o];
                MAC4(a0, a1, a2, a3, xv, w0[k], w1[k], w2[k], w3[k]);
            }
        }
    }
    out[0] = a0;
    out[t->out_ch] = a1;
    out[2 * t->out_ch] = a2;
    out[3 * t->out_ch] = a3;
}

static NOINLINE void tile_1x1(const tile_t *t, const float *restrict in, const float *restrict w,
                              uint32_t nky, uint32_t nkx, const float *bias, float *restrict out) {
    float a = bias[0];
    const int32_t col = t->in_col, row = t->in_row;
    const uint32_t kw = t->w_row, wst = t->w_col;
    for (uint32_t c = 0; c < t->nred; c++) {
        const float *ic = in + c * t->in_red, *wc = w + c * t->w_red;
        int32_t ro = 0;
        for (uint32_t r = 0, wo = 0; r < nky; r++, ro += row, wo += kw) {
            int32_t o = ro;
            for (uint32_t j = 0, k = wo; j < nkx; j++, k += wst, o += col) {
                a = fmaf(wc[k], ic[o], a);
            }
        }
    }
    *out = a;
}

typedef void (*tile_fn_t)(const tile_t *t, const float *restrict in, const float *restrict w,
                          uint32_t nky, uint32_t nkx, const float *bias, float *restrict out);

/*
 * One axis of the direct loop nest. fw: tap k of output o reads input o·s + k·d − pad.
 * mirror (input gradient; a stride phase of it when the stride is > 1): tap k of
 * output o reads dy o + off − k·d (off may be negative). `in` is the extent of
 * what is read (fw: the x axis, mirror: the dy axis).
 */
typedef struct {
    uint32_t s, pad, d, k, in, mirror;
    int32_t off;
} axis_t;

/* Valid taps [*k0, *k1) of output o (*k0 == *k1 if none). */
static void axis_taps(const axis_t *a, uint32_t o, uint32_t *k0, uint32_t *k1) {
    if (!a->mirror) {
        tap_range(o, a->s, a->pad, a->d, a->k, a->in, k0, k1);
        return;
    }
    const int32_t sop = (int32_t)o + a->off;
    *k0 = *k1 = 0;
    if (sop < 0) {
        return;
    }
    const uint32_t op = (uint32_t)sop;
    uint32_t lo = 0, hi = op / a->d + 1;
    if (op > a->in - 1) {
        lo = (op - (a->in - 1) + a->d - 1) / a->d;
    }
    if (hi > a->k) {
        hi = a->k;
    }
    if (lo > hi) {
        lo = hi;
    }
    *k0 = lo;
    *k1 = hi;
}

/* Input position read by (valid) tap k of output o. */
static uint32_t axis_pos(const axis_t *a, uint32_t o, uint32_t k) {
    return a->mirror ? (uint32_t)((int32_t)o + a->off - (int32_t)(k * a->d)) : o * a->s + k * a->d - a->pad;
}

/* Outputs [*lo, *hi) whose k taps are all valid. */
static void axis_interior(const axis_t *a, uint32_t out, uint32_t *lo, uint32_t *hi) {
    if (!a->mirror) {
        interior_range(a->s, a->pad, a->d, a->k, a->in, out, lo, hi);
        return;
    }
    /* o + off − (k−1)·d ≥ 0 and o + off ≤ in − 1 */
    const int64_t l = (int64_t)(a->k - 1) * a->d - a->off, h = (int64_t)a->in - a->off;
    uint32_t l32 = l < 0 ? 0 : (l > out ? out : (uint32_t)l);
    uint32_t h32 = h < 0 ? 0 : (h > out ? out : (uint32_t)h);
    *lo = l32;
    *hi = h32 < l32 ? l32 : h32;
}

/* Most columns per block (conv_block). */
#define MAX_BLOCK 8

/*
 * Columns [ox, ox + nc) of one output row, nb (4 or 1) tile channels: the tile runs
 * over the taps valid for all nc columns; the taps that only some columns have
 * (a border of the padding) are added column by column after it.
 */
static void conv_block(const tile_t *t, const axis_t *ax, tile_fn_t tile, tile_fn_t single, uint32_t nc,
                       uint32_t nb, const float *irow, const float *wrow, uint32_t nky,
                       const float *bias, float *orow, uint32_t ox) {
    uint32_t k0[MAX_BLOCK], k1[MAX_BLOCK], lo = 0, hi = ax->k;
    for (uint32_t j = 0; j < nc; j++) {
        axis_taps(ax, ox + j, &k0[j], &k1[j]);
        lo = k0[j] > lo ? k0[j] : lo;
        hi = k1[j] < hi ? k1[j] : hi;
    }
    if (hi > lo) {
        tile(t, irow + axis_pos(ax, ox, lo), wrow + lo * t->w_col, nky, hi - lo, bias,
             orow + ox * t->out_pos);
    } else { /* no common tap: start from the bias, add every tap below */
        for (uint32_t j = 0; j < nc; j++) {
            for (uint32_t c = 0; c < nb; c++) {
                orow[c * t->out_ch + (ox + j) * t->out_pos] = bias[c];
            }
        }
        lo = hi = ax->k;
    }
    for (uint32_t j = 0; j < nc; j++) {
        /* the column's taps left of [lo, hi) and right of it, added onto what it has */
        const uint32_t parts[2][2] = {{k0[j], k1[j] < lo ? k1[j] : lo}, {k0[j] > hi ? k0[j] : hi, k1[j]}};
        for (uint32_t s = 0; s < 2; s++) {
            if (parts[s][1] > parts[s][0]) {
                float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                float *o = orow + (ox + j) * t->out_pos;
                for (uint32_t c = 0; c < nb; c++) {
                    acc[c] = o[c * t->out_ch];
                }
                single(t, irow + axis_pos(ax, ox + j, parts[s][0]), wrow + parts[s][0] * t->w_col,
                       nky, parts[s][1] - parts[s][0], acc, o);
            }
        }
    }
}

/*
 * out[ch][oy][ox] = bias[ch] + Σ_c Σ_{valid ky, kx} w(ch, c, ky, kx) · in(c, tap position)
 * for nch tile channels over oh × ow outputs (rows out_row apart, columns t->out_pos
 * apart); `in` rows are in_w long; bias may be NULL.
 */
static void direct_conv(const tile_t *t, const axis_t *ay, const axis_t *ax, uint32_t nch, uint32_t oh,
                        uint32_t ow, uint32_t out_row, uint32_t in_w, const float *restrict in,
                        const float *restrict w, const float *restrict bias, float *restrict out) {
    const uint32_t op = t->out_pos;
    uint32_t xa, xb; /* interior output columns: every kernel column valid */
    axis_interior(ax, ow, &xa, &xb);
    uint32_t ch = 0;
    while (ch < nch) {
        const uint32_t four = nch - ch >= 4, nb = four ? 4 : 1;
        float bv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (bias) {
            for (uint32_t j = 0; j < nb; j++) {
                bv[j] = bias[ch + j];
            }
        }
        const float *wch = w + ch * t->w_tile;
        float *och = out + ch * t->out_ch;
        for (uint32_t oy = 0; oy < oh; oy++) {
            uint32_t ky0, ky1;
            axis_taps(ay, oy, &ky0, &ky1);
            float *orow = och + oy * out_row;
            if (ky1 == ky0) { /* every kernel row in the padding: bias only */
                for (uint32_t ox = 0; ox < ow; ox++) {
                    for (uint32_t j = 0; j < nb; j++) {
                        orow[j * t->out_ch + ox * op] = bv[j];
                    }
                }
                continue;
            }
            const uint32_t nky = ky1 - ky0;
            const float *irow = in + axis_pos(ay, oy, ky0) * in_w, *wrow = wch + ky0 * t->w_row;
            /* left border [0, xa), interior [xa, xb), right border [xb, ow). Interior blocks
             * of 4 (8 for a single channel) columns run their tile over every tap; border
             * blocks split off their partial taps (conv_block) when the block holds enough
             * work to pay for that, else the border goes column by column. */
            const uint32_t nc = four ? 4 : 8, big = nb * nc * t->nred * nky * ax->k >= 512;
            const tile_fn_t tile = four ? tile_4x4 : tile_1x8, single = four ? tile_4x1 : tile_1x1;
            for (uint32_t side = 0; side < 2; side++) {
                const uint32_t from = side == 0 ? 0 : xb, to = side == 0 ? xa : ow;
                uint32_t ox = from;
                if (big) {
                    for (; ox + nc <= to; ox += nc) {
                        conv_block(t, ax, tile, single, nc, nb, irow, wrow, nky, bv, orow, ox);
                    }
                }
                for (; ox < to; ox++) {
                    conv_block(t, ax, single, single, 1, nb, irow, wrow, nky, bv, orow, ox);
                }
            }
            uint32_t ox = xa;
            const float *ip = irow + (xb > xa ? axis_pos(ax, xa, 0) : 0);
            const uint32_t step = (uint32_t)t->in_pos;
            for (; ox + nc <= xb; ox += nc, ip += nc * step) {
                tile(t, ip, wrow, nky, ax->k, bv, orow + ox * op);
            }
            if (!four && ox + 4 <= xb) {
                tile_1x4(t, ip, wrow, nky, ax->k, bv, orow + ox * op);
                ox += 4;
                ip += 4 * step;
            }
            for (; ox < xb; ox++, ip += step) {
                single(t, ip, wrow, nky, ax->k, bv, orow + ox * op);
            }
        }
        ch += nb;
    }
}

/* Pointwise forward over one sample and group: Y[Co][P] = b + W[Co][Ci] · X[Ci][P]. */
static void pw_fw(const float *restrict x, const float *restrict w, const float *restrict b,
                  float *restrict y, uint32_t ci_n, uint32_t oc_lo, uint32_t co_n, uint32_t np) {
    uint32_t oc = oc_lo; /* output channels [oc_lo, co_n) */
    for (; oc + 4 <= co_n; oc += 4) {
        const float *w0 = w + oc * ci_n, *w1 = w0 + ci_n, *w2 = w1 + ci_n, *w3 = w2 + ci_n;
        const float b0 = b ? b[oc] : 0.0f, b1 = b ? b[oc + 1] : 0.0f;
        const float b2 = b ? b[oc + 2] : 0.0f, b3 = b ? b[oc + 3] : 0.0f;
        float *y0 = y + oc * np, *y1 = y0 + np, *y2 = y1 + np, *y3 = y2 + np;
        uint32_t q = 0;
        for (; q + 4 <= np; q += 4) {
            float a00 = b0, a01 = b0, a02 = b0, a03 = b0;
            float a10 = b1, a11 = b1, a12 = b1, a13 = b1;
            float a20 = b2, a21 = b2, a22 = b2, a23 = b2;
            float a30 = b3, a31 = b3, a32 = b3, a33 = b3;
            const float *xp = x + q;
            for (uint32_t ci = 0; ci < ci_n; ci++, xp += np) {
                const float x0 = xp[0], x1 = xp[1], x2 = xp[2], x3 = xp[3];
                const float v0 = w0[ci], v1 = w1[ci], v2 = w2[ci], v3 = w3[ci];
                a00 = fmaf(v0, x0, a00);
                a01 = fmaf(v0, x1, a01);
                a02 = fmaf(v0, x2, a02);
                a03 = fmaf(v0, x3, a03);
                a10 = fmaf(v1, x0, a10);
                a11 = fmaf(v1, x1, a11);
                a12 = fmaf(v1, x2, a12);
                a13 = fmaf(v1, x3, a13);
                a20 = fmaf(v2, x0, a20);
                a21 = fmaf(v2, x1, a21);
                a22 = fmaf(v2, x2, a22);
                a23 = fmaf(v2, x3, a23);
                a30 = fmaf(v3, x0, a30);
                a31 = fmaf(v3, x1, a31);
                a32 = fmaf(v3, x2, a32);
                a33 = fmaf(v3, x3, a33);
            }
            y0[q] = a00, y0[q + 1] = a01, y0[q + 2] = a02, y0[q + 3] = a03;
            y1[q] = a10, y1[q + 1] = a11, y1[q + 2] = a12, y1[q + 3] = a13;
            y2[q] = a20, y2[q + 1] = a21, y2[q + 2] = a22, y2[q + 3] = a23;
            y3[q] = a30, y3[q + 1] = a31, y3[q + 2] = a32, y3[q + 3] = a33;
        }
        for (; q < np; q++) {
            float a0 = b0, a1 = b1, a2 = b2, a3 = b3;
            const float *xp = x + q;
            for (uint32_t ci = 0; ci < ci_n; ci++, xp += np) {
                const float xv = *xp;
                a0 = fmaf(w0[ci], xv, a0);
                a1 = fmaf(w1[ci], xv, a1);
                a2 = fmaf(w2[ci], xv, a2);
                a3 = fmaf(w3[ci], xv, a3);
            }
            y0[q] = a0, y1[q] = a1, y2[q] = a2, y3[q] = a3;
        }
    }
    for (; oc < co_n; oc++) {
        const float *wr = w + oc * ci_n;
        const float bv = b ? b[oc] : 0.0f;
        float *yr = y + oc * np;
        uint32_t q = 0;
        for (; q + 4 <= np; q += 4) {
            float a0 = bv, a1 = bv, a2 = bv, a3 = bv;
            const float *xp = x + q;
            for (uint32_t ci = 0; ci < ci_n; ci++, xp += np) {
                const float v = wr[ci];
                a0 = fmaf(v, xp[0], a0);
                a1 = fmaf(v, xp[1], a1);
                a2 = fmaf(v, xp[2], a2);
                a3 = fmaf(v, xp[3], a3);
            }
            yr[q] = a0, yr[q + 1] = a1, yr[q + 2] = a2, yr[q + 3] = a3;
        }
        for (; q < np; q++) {
            float a = bv;
            const float *xp = x + q;
            for (uint32_t ci = 0; ci < ci_n; ci++, xp += np) {
                a = fmaf(wr[ci], *xp, a);
            }
            yr[q] = a;
        }
    }
}

/*
 * The work items of fw and bw_input: (sample, group, block of 4 output channels),
 * numbered sample-major. run_items calls item_fn once per (sample, group) for
 * this core's blocks in it, as the channel range [c0, c1).
 */
typedef void (*conv_items_fn_t)(const void *ctx, uint32_t i, uint32_t gi, uint32_t c0, uint32_t c1);

static void run_items(uint32_t n, uint32_t G, uint32_t nch, conv_items_fn_t item_fn, const void *ctx) {
    const uint32_t blocks = (nch + 3) / 4, per_sample = G * blocks;
    uint32_t lo, hi;
    ep_par_range(n * per_sample, &lo, &hi);
    while (lo < hi) {
        const uint32_t ig = lo / blocks, b0 = lo % blocks;
        const uint32_t b1 = hi - ig * blocks < blocks ? hi - ig * blocks : blocks;
        const uint32_t c1 = 4 * b1 < nch ? 4 * b1 : nch;
        item_fn(ctx, ig / G, ig % G, 4 * b0, c1);
        lo = ig * blocks + b1;
    }
}

typedef struct {
    const ep_conv2d_params_t *p;
    const float *x, *w, *b;
    float *y;
    tile_t t;
    axis_t ay, ax;
    bool pw;
} conv_fw_t;

static void fw_item(const void *ctx, uint32_t i, uint32_t gi, uint32_t c0, uint32_t c1) {
    const conv_fw_t *a = ctx;
    const ep_conv2d_params_t *p = a->p;
    const uint32_t G = p->groups, cig = p->c_in / G, cog = p->c_out / G;
    const uint32_t hw = p->h_in * p->w_in, howo = p->h_out * p->w_out, wstride = a->t.w_tile;
    const float *xg = a->x + (i * p->c_in + gi * cig) * hw, *wg = a->w + gi * cog * wstride;
    const float *bg = a->b ? a->b + gi * cog : NULL;
    float *yg = a->y + (i * p->c_out + gi * cog) * howo;
    if (a->pw) {
        pw_fw(xg, wg, bg, yg, cig, c0, c1, hw);
    } else {
        direct_conv(&a->t, &a->ay, &a->ax, c1 - c0, p->h_out, p->w_out, p->w_out, p->w_in, xg,
                    wg + c0 * wstride, bg ? bg + c0 : NULL, yg + c0 * howo);
    }
}

static void fw_core(void *arg) {
    const conv_fw_t *a = arg;
    run_items(a->p->n, a->p->groups, a->p->c_out / a->p->groups, fw_item, a);
}

void ep_conv2d_fw_f32(const ep_conv2d_params_t *p, const float *restrict x, const float *restrict w,
                      const float *restrict b, float *restrict y) {
    const uint32_t G = p->groups, cig = p->c_in / G;
    const uint32_t H = p->h_in, W = p->w_in, hw = H * W, howo = p->h_out * p->w_out;
    const uint32_t khkw = p->kh * p->kw, wstride = cig * khkw;
    const conv_fw_t a = {
        .p = p, .x = x, .w = w, .b = b, .y = y, .pw = is_pointwise(p),
        .t = {
            .nred = cig, .in_red = hw, .w_red = khkw, .w_tile = wstride, .out_ch = howo, .w_row = p->kw,
            .w_col = 1, .out_pos = 1, .in_row = (int32_t)(p->dh * W), .in_col = (int32_t)p->dw,
            .in_pos = (int32_t)p->sw,
        },
        .ay = {p->sh, p->pad_top, p->dh, p->kh, H, 0, 0},
        .ax = {p->sw, p->pad_left, p->dw, p->kw, W, 0, 0},
    };
    ep_par_fork(0, fw_core, (void *)&a);
}

/* ------------------------------------------------------------------------- */
/* Input gradient                                                             */
/* ------------------------------------------------------------------------- */

static uint32_t gcd_u32(uint32_t a, uint32_t b) {
    while (b != 0) {
        const uint32_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/*
 * The stride phase φ of one axis of the input gradient: input positions
 * i = φ + s·m are reached by the taps k = κ + j·ks (j < *count) with κ the first k
 * with k·d ≡ φ + pad (mod s), reading dy at m + off − j·(d / gcd(s, d)),
 * off = (φ + pad − κ·d) / s (exact). Fills *a (a mirror axis over the dy extent
 * `out`) and *kappa; false if no tap reaches the phase.
 */
static bool phase_axis(uint32_t phi, uint32_t s, uint32_t pad, uint32_t d, uint32_t k, uint32_t out,
                       uint32_t ks, axis_t *a, uint32_t *kappa) {
    const uint32_t target = (phi + pad) % s, lim = k < ks ? k : ks;
    uint32_t kap = 0;
    while (kap < lim && (kap * d) % s != target) {
        kap++;
    }
    if (kap == lim) {
        return false;
    }
    const int32_t num = (int32_t)(phi + pad) - (int32_t)(kap * d);
    const axis_t r = {1, 0, d / (s / ks), (k - 1 - kap) / ks + 1, out, 1, num / (int32_t)s};
    *a = r;
    *kappa = kap;
    return true;
}

/* Pointwise input gradient over one sample and group: dX[Ci][P] = W[Co][Ci]ᵀ · dY[Co][P]. */
static void pw_bw_input(const float *restrict dy, const float *restrict w, float *restrict dx,
                        uint32_t ci_n, uint32_t ci_lo, uint32_t ci_hi, uint32_t co_n, uint32_t np) {
    uint32_t ci = ci_lo; /* input channels [ci_lo, ci_hi) of ci_n */
    for (; ci + 4 <= ci_hi; ci += 4) {
        float *d0 = dx + ci * np, *d1 = d0 + np, *d2 = d1 + np, *d3 = d2 + np;
        uint32_t q = 0;
        for (; q + 4 <= np; q += 4) {
            float a00 = 0.0f, a01 = 0.0f, a02 = 0.0f, a03 = 0.0f;
            float a10 = 0.0f, a11 = 0.0f, a12 = 0.0f, a13 = 0.0f;
            float a20 = 0.0f, a21 = 0.0f, a22 = 0.0f, a23 = 0.0f;
            float a30 = 0.0f, a31 = 0.0f, a32 = 0.0f, a33 = 0.0f;
            const float *gp = dy + q, *wp = w + ci;
            for (uint32_t oc = 0; oc < co_n; oc++, gp += np, wp += ci_n) {
                const float g0 = gp[0], g1 = gp[1], g2 = gp[2], g3 = gp[3];
                const float v0 = wp[0], v1 = wp[1], v2 = wp[2], v3 = wp[3];
                a00 = fmaf(v0, g0, a00);
                a01 = fmaf(v0, g1, a01);
                a02 = fmaf(v0, g2, a02);
                a03 = fmaf(v0, g3, a03);
                a10 = fmaf(v1, g0, a10);
                a11 = fmaf(v1, g1, a11);
                a12 = fmaf(v1, g2, a12);
                a13 = fmaf(v1, g3, a13);
                a20 = fmaf(v2, g0, a20);
                a21 = fmaf(v2, g1, a21);
                a22 = fmaf(v2, g2, a22);
                a23 = fmaf(v2, g3, a23);
                a30 = fmaf(v3, g0, a30);
                a31 = fmaf(v3, g1, a31);
                a32 = fmaf(v3, g2, a32);
                a33 = fmaf(v3, g3, a33);
            }
            d0[q] = a00, d0[q + 1] = a01, d0[q + 2] = a02, d0[q + 3] = a03;
            d1[q] = a10, d1[q + 1] = a11, d1[q + 2] = a12, d1[q + 3] = a13;
            d2[q] = a20, d2[q + 1] = a21, d2[q + 2] = a22, d2[q + 3] = a23;
            d3[q] = a30, d3[q + 1] = a31, d3[q + 2] = a32, d3[q + 3] = a33;
        }
        for (; q < np; q++) {
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            const float *gp = dy + q, *wp = w + ci;
            for (uint32_t oc = 0; oc < co_n; oc++, gp += np, wp += ci_n) {
                const float gv = *gp;
                a0 = fmaf(wp[0], gv, a0);
                a1 = fmaf(wp[1], gv, a1);
                a2 = fmaf(wp[2], gv, a2);
                a3 = fmaf(wp[3], gv, a3);
            }
            d0[q] = a0, d1[q] = a1, d2[q] = a2, d3[q] = a3;
        }
    }
    for (; ci < ci_hi; ci++) {
        float *dr = dx + ci * np;
        uint32_t q = 0;
        for (; q + 4 <= np; q += 4) {
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            const float *gp = dy + q, *wp = w + ci;
            for (uint32_t oc = 0; oc < co_n; oc++, gp += np, wp += ci_n) {
                const float v = *wp;
                a0 = fmaf(v, gp[0], a0);
                a1 = fmaf(v, gp[1], a1);
                a2 = fmaf(v, gp[2], a2);
                a3 = fmaf(v, gp[3], a3);
            }
            dr[q] = a0, dr[q + 1] = a1, dr[q + 2] = a2, dr[q + 3] = a3;
        }
        for (; q < np; q++) {
            float a = 0.0f;
            const float *gp = dy + q, *wp = w + ci;
            for (uint32_t oc = 0; oc < co_n; oc++, gp += np, wp += ci_n) {
                a = fmaf(*wp, *gp, a);
            }
            dr[q] = a;
        }
    }
}

typedef struct {
    const ep_conv2d_params_t *p;
    const float *dy, *w;
    float *dx;
    tile_t t;
    /* the current stride phase (fy, fx) */
    axis_t ay, ax;
    uint32_t fy, fx, ky0, kx0, my, mx;
    bool has_phase;
} conv_bwi_t;

static void bwi_pw_item(const void *ctx, uint32_t i, uint32_t gi, uint32_t c0, uint32_t c1) {
    const conv_bwi_t *a = ctx;
    const ep_conv2d_params_t *p = a->p;
    const uint32_t G = p->groups, cig = p->c_in / G, cog = p->c_out / G;
    const uint32_t hw = p->h_in * p->w_in, howo = p->h_out * p->w_out;
    pw_bw_input(a->dy + (i * p->c_out + gi * cog) * howo, a->w + gi * cog * cig,
                a->dx + (i * p->c_in + gi * cig) * hw, cig, c0, c1, cog, hw);
}

/* Input channels [c0, c1) of one sample and group, in the current stride phase. */
static void bwi_item(const void *ctx, uint32_t i, uint32_t gi, uint32_t c0, uint32_t c1) {
    const conv_bwi_t *a = ctx;
    const ep_conv2d_params_t *p = a->p;
    const uint32_t G = p->groups, cig = p->c_in / G, cog = p->c_out / G;
    const uint32_t W = p->w_in, hw = p->h_in * W, howo = p->h_out * p->w_out;
    const uint32_t khkw = p->kh * p->kw, wstride = cig * khkw;
    float *dxg = a->dx + (i * p->c_in + gi * cig) * hw + a->fy * W + a->fx;
    if (a->has_phase) {
        direct_conv(&a->t, &a->ay, &a->ax, c1 - c0, a->my, a->mx, p->sh * W, p->w_out,
                    a->dy + (i * p->c_out + gi * cog) * howo,
                    a->w + gi * cog * wstride + c0 * khkw + a->ky0 * p->kw + a->kx0, NULL, dxg + c0 * hw);
        return;
    }
    /* no tap ever reaches this phase (stride > dilated kernel): dx = 0 */
    for (uint32_t ci = c0; ci < c1; ci++) {
        for (uint32_t m = 0; m < a->my; m++) {
            float *r = dxg + ci * hw + m * p->sh * W;
            for (uint32_t q = 0; q < a->mx; q++) {
                r[q * p->sw] = 0.0f;
            }
        }
    }
}

/*
 * dx = dy correlated with the mirrored kernel, channels transposed. With stride s
 * the input positions split into s phases per axis (i ≡ φ mod s); within a phase
 * the taps that reach it are k = κ, κ + ks, ... (ks = s / gcd(s, d)) and read dy
 * at m + off − j·(d / gcd(s, d)) for phase position m: a stride-1 problem of its
 * own, run by the direct-convolution machinery of fw. Stride 1 is one phase.
 * Every core walks all phases, doing its own items in each (phases write
 * disjoint positions).
 */
static void bwi_core(void *arg) {
    const conv_bwi_t *a0 = arg;
    const ep_conv2d_params_t *p = a0->p;
    const uint32_t G = p->groups, cig = p->c_in / G;
    const uint32_t H = p->h_in, W = p->w_in, kw = p->kw;
    if (is_pointwise(p)) {
        run_items(p->n, G, cig, bwi_pw_item, a0);
        return;
    }
    conv_bwi_t a = *a0;
    const uint32_t gy = gcd_u32(p->sh, p->dh), gx = gcd_u32(p->sw, p->dw);
    const uint32_t ksy = p->sh / gy, ksx = p->sw / gx;
    for (uint32_t fy = 0; fy < p->sh && fy < H; fy++) {
        a.ky0 = 0;
        const bool has_y = phase_axis(fy, p->sh, p->pad_top, p->dh, p->kh, p->h_out, ksy, &a.ay, &a.ky0);
        a.fy = fy;
        a.my = (H - fy + p->sh - 1) / p->sh; /* rows of the phase */
        for (uint32_t fx = 0; fx < p->sw && fx < W; fx++) {
            a.kx0 = 0;
            const bool has_x = phase_axis(fx, p->sw, p->pad_left, p->dw, kw, p->w_out, ksx, &a.ax, &a.kx0);
            a.fx = fx;
            a.mx = (W - fx + p->sw - 1) / p->sw;
            a.has_phase = has_y && has_x;
            run_items(p->n, G, cig, bwi_item, &a);
        }
    }
}

void ep_conv2d_bw_input_f32(const ep_conv2d_params_t *p, const float *restrict dy,
                            const float *restrict w, float *restrict dx) {
    const uint32_t G = p->groups, cig = p->c_in / G, cog = p->c_out / G;
    const uint32_t hw = p->h_in * p->w_in, howo = p->h_out * p->w_out, kw = p->kw;
    const uint32_t khkw = p->kh * kw, wstride = cig * khkw;
    const uint32_t gy = gcd_u32(p->sh, p->dh), gx = gcd_u32(p->sw, p->dw);
    const uint32_t ksy = p->sh / gy, ksx = p->sw / gx;
    const conv_bwi_t a = {
        .p = p, .dy = dy, .w = w, .dx = dx,
        .t = {
            .nred = cog, .in_red = howo, .w_red = wstride, .w_tile = khkw, .out_ch = hw, .w_row = ksy * kw,
            .w_col = ksx, .out_pos = p->sw, .in_row = -(int32_t)(p->dh / gy * p->w_out),
            .in_col = -(int32_t)(p->dw / gx), .in_pos = 1,
        },
    };
    ep_par_fork(0, bwi_core, (void *)&a);
}

/* ------------------------------------------------------------------------- */
/* Parameter gradients                                                        */
/* ------------------------------------------------------------------------- */

/*
 * Output positions o in [*o0, *o1) along one axis for which tap k lands inside
 * the input: 0 ≤ o·s + k·d − pad < in.
 */
static void out_range(uint32_t k, uint32_t s, uint32_t pad, uint32_t d, uint32_t in, uint32_t out,
                      uint32_t *o0, uint32_t *o1) {
    const uint32_t off = k * d;
    uint32_t lo = 0, hi = 0;
    if (off < pad) {
        lo = (pad - off + s - 1) / s;
    }
    if (off <= in - 1 + pad) {
        hi = (in - 1 + pad - off) / s + 1;
    }
    if (hi > out) {
        hi = out;
    }
    if (lo > hi) {
        lo = hi;
    }
    *o0 = lo;
    *o1 = hi;
}

/*
 * Weight-gradient tiles: for one tap, the sum over the batch and the tap's valid
 * output window (noy rows × nox columns) of dy · x, for 4 (or 1) output channels ×
 * 4 (or 1) input channels in registers. g points at dy[0][oc][oy0][ox0], x at the
 * input element that tap reads for that output, in sample 0; d at dw[oc][ci][ky][kx].
 */
typedef struct {
    uint32_t n, ys_n, xs_n; /* samples; dy and x steps per sample */
    uint32_t howo, hw;      /* dy and x steps per channel */
    uint32_t wo, in_row;    /* dy and x steps per output row (w_out, sh·w_in) */
    uint32_t sw;            /* x step per output column */
    uint32_t wstride, khkw; /* dw steps per output and per input channel */
} bwp_t;

static INLINE void bwp_4x4_body(const bwp_t *t, const float *restrict g, const float *restrict x,
                                uint32_t noy, uint32_t nox, float *restrict d, uint32_t sw) {
    float a00 = 0.0f, a01 = 0.0f, a02 = 0.0f, a03 = 0.0f;
    float a10 = 0.0f, a11 = 0.0f, a12 = 0.0f, a13 = 0.0f;
    float a20 = 0.0f, a21 = 0.0f, a22 = 0.0f, a23 = 0.0f;
    float a30 = 0.0f, a31 = 0.0f, a32 = 0.0f, a33 = 0.0f;
    const uint32_t cy = t->howo, cx = t->hw;
    for (uint32_t i = 0; i < t->n; i++) {
        const float *gs = g + i * t->ys_n, *xi = x + i * t->xs_n;
        for (uint32_t r = 0; r < noy; r++) {
            const float *g0 = gs + r * t->wo, *g1 = g0 + cy, *g2 = g1 + cy, *g3 = g2 + cy;
            const float *x0 = xi + r * t->in_row, *x1 = x0 + cx, *x2 = x1 + cx, *x3 = x2 + cx;
            for (uint32_t q = 0, o = 0; q < nox; q++, o += sw) {
                const float v0 = x0[o], v1 = x1[o], v2 = x2[o], v3 = x3[o];
                MAC4(a00, a01, a02, a03, g0[q], v0, v1, v2, v3);
                MAC4(a10, a11, a12, a13, g1[q], v0, v1, v2, v3);
                MAC4(a20, a21, a22, a23, g2[q], v0, v1, v2, v3);
                MAC4(a30, a31, a32, a33, g3[q], v0, v1, v2, v3);
            }
        }
    }
    const uint32_t ws = t->wstride, k1 = t->khkw, k2 = 2 * k1, k3 = 3 * k1;
    float *d0 = d, *d1 = d0 + ws, *d2 = d1 + ws, *d3 = d2 + ws;
    d0[0] = a00, d0[k1] = a01, d0[k2] = a02, d0[k3] = a03;
    d1[0] = a10, d1[k1] = a11, d1[k2] = a12, d1[k3] = a13;
    d2[0] = a20, d2[k1] = a21, d2[k2] = a22, d2[k3] = a23;
    d3[0] = a30, d3[k1] = a31, d3[k2] = a32, d3[k3] = a33;
}

static NOINLINE void bwp_4x4(const bwp_t *t, const float *restrict g, const float *restrict x,
                             uint32_t noy, uint32_t nox, float *restrict d) {
    if (t->sw == 1) {
        bwp_4x4_body(t, g, x, noy, nox, d, 1);
    } else {
        bwp_4x4_body(t, g, x, noy, nox, d, t->sw);
    }
}

/* 4 output channels × 1 input channel; the 4 results go dstep apart */
static NOINLINE void bwp_4x1_to(const bwp_t *t, const float *restrict g, const float *restrict x,
                                uint32_t noy, uint32_t nox, float *restrict d, uint32_t dstep) {
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
    const uint32_t cy = t->howo, sw = t->sw;
    for (uint32_t i = 0; i < t->n; i++) {
        const float *gs = g + i * t->ys_n, *xi = x + i * t->xs_n;
        for (uint32_t r = 0; r < noy; r++) {
            const float *g0 = gs + r * t->wo, *g1 = g0 + cy, *g2 = g1 + cy, *g3 = g2 + cy;
            const float *x0 = xi + r * t->in_row;
            for (uint32_t q = 0, o = 0; q < nox; q++, o += sw) {
                MAC4(a0, a1, a2, a3, x0[o], g0[q], g1[q], g2[q], g3[q]);
            }
        }
    }
    d[0] = a0;
    d[dstep] = a1;
    d[2 * dstep] = a2;
    d[3 * dstep] = a3;
}

static void bwp_4x1(const bwp_t *t, const float *restrict g, const float *restrict x, uint32_t noy,
                    uint32_t nox, float *restrict d) {
    bwp_4x1_to(t, g, x, noy, nox, d, t->wstride);
}

/* 1 output channel × 4 input channels */
static NOINLINE void bwp_1x4(const bwp_t *t, const float *restrict g, const float *restrict x,
                             uint32_t noy, uint32_t nox, float *restrict d) {
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
    const uint32_t cx = t->hw, sw = t->sw;
    for (uint32_t i = 0; i < t->n; i++) {
        const float *gs = g + i * t->ys_n, *xi = x + i * t->xs_n;
        for (uint32_t r = 0; r < noy; r++) {
            const float *g0 = gs + r * t->wo;
            const float *x0 = xi + r * t->in_row, *x1 = x0 + cx, *x2 = x1 + cx, *x3 = x2 + cx;
            for (uint32_t q = 0, o = 0; q < nox; q++, o += sw) {
                MAC4(a0, a1, a2, a3, g0[q], x0[o], x1[o], x2[o], x3[o]);
            }
        }
    }
    d[0] = a0;
    d[t->khkw] = a1;
    d[2 * t->khkw] = a2;
    d[3 * t->khkw] = a3;
}

/* 1 × 1: four partial sums over the columns keep the FPU pipeline busy */
static NOINLINE void bwp_1x1(const bwp_t *t, const float *restrict g, const float *restrict x,
                             uint32_t noy, uint32_t nox, float *restrict d) {
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
    const uint32_t sw = t->sw;
    for (uint32_t i = 0; i < t->n; i++) {
        const float *gs = g + i * t->ys_n, *xi = x + i * t->xs_n;
        for (uint32_t r = 0; r < noy; r++) {
            const float *g0 = gs + r * t->wo, *x0 = xi + r * t->in_row;
            uint32_t q = 0, o = 0;
            for (; q + 4 <= nox; q += 4, o += 4 * sw) {
                a0 = fmaf(g0[q], x0[o], a0);
                a1 = fmaf(g0[q + 1], x0[o + sw], a1);
                a2 = fmaf(g0[q + 2], x0[o + 2 * sw], a2);
                a3 = fmaf(g0[q + 3], x0[o + 3 * sw], a3);
            }
            for (; q < nox; q++, o += sw) {
                a0 = fmaf(g0[q], x0[o], a0);
            }
        }
    }
    *d = (a0 + a1) + (a2 + a3);
}

/*
 * 4 (or 1) output channels × 4 adjacent taps (kx .. kx+3) of one input channel: the
 * taps' x elements are tdw apart. Same pointers as the other weight-gradient tiles
 * (x at the element of tap kx); d at dw[oc][ci][ky][kx].
 */
static INLINE void bwp_t4_body(const bwp_t *t, const float *restrict g, const float *restrict x,
                               uint32_t noy, uint32_t nox, float *restrict d, uint32_t four_oc,
                               uint32_t tdw) {
    float a00 = 0.0f, a01 = 0.0f, a02 = 0.0f, a03 = 0.0f;
    float a10 = 0.0f, a11 = 0.0f, a12 = 0.0f, a13 = 0.0f;
    float a20 = 0.0f, a21 = 0.0f, a22 = 0.0f, a23 = 0.0f;
    float a30 = 0.0f, a31 = 0.0f, a32 = 0.0f, a33 = 0.0f;
    const uint32_t cy = t->howo, sw = t->sw, t1 = tdw, t2 = 2 * tdw, t3 = 3 * tdw;
    for (uint32_t i = 0; i < t->n; i++) {
        const float *gs = g + i * t->ys_n, *xi = x + i * t->xs_n;
        for (uint32_t r = 0; r < noy; r++) {
            const float *g0 = gs + r * t->wo, *x0 = xi + r * t->in_row;
            if (four_oc) {
                const float *g1 = g0 + cy, *g2 = g1 + cy, *g3 = g2 + cy;
                for (uint32_t q = 0, o = 0; q < nox; q++, o += sw) {
                    const float v0 = x0[o], v1 = x0[o + t1], v2 = x0[o + t2], v3 = x0[o + t3];
                    MAC4(a00, a01, a02, a03, g0[q], v0, v1, v2, v3);
                    MAC4(a10, a11, a12, a13, g1[q], v0, v1, v2, v3);
                    MAC4(a20, a21, a22, a23, g2[q], v0, v1, v2, v3);
                    MAC4(a30, a31, a32, a33, g3[q], v0, v1, v2, v3);
                }
            } else {
                for (uint32_t q = 0, o = 0; q < nox; q++, o += sw) {
                    MAC4(a00, a01, a02, a03, g0[q], x0[o], x0[o + t1], x0[o + t2], x0[o + t3]);
                }
            }
        }
    }
    d[0] = a00, d[1] = a01, d[2] = a02, d[3] = a03;
    if (four_oc) {
        const uint32_t ws = t->wstride;
        float *d1 = d + ws, *d2 = d1 + ws, *d3 = d2 + ws;
        d1[0] = a10, d1[1] = a11, d1[2] = a12, d1[3] = a13;
        d2[0] = a20, d2[1] = a21, d2[2] = a22, d2[3] = a23;
        d3[0] = a30, d3[1] = a31, d3[2] = a32, d3[3] = a33;
    }
}

static NOINLINE void bwp_4t4(const bwp_t *t, const float *restrict g, const float *restrict x,
                             uint32_t noy, uint32_t nox, float *restrict d, uint32_t tdw) {
    if (tdw == 1) {
        bwp_t4_body(t, g, x, noy, nox, d, 1, 1);
    } else {
        bwp_t4_body(t, g, x, noy, nox, d, 1, tdw);
    }
}

static NOINLINE void bwp_1t4(const bwp_t *t, const float *restrict g, const float *restrict x,
                             uint32_t noy, uint32_t nox, float *restrict d, uint32_t tdw) {
    if (tdw == 1) {
        bwp_t4_body(t, g, x, noy, nox, d, 0, 1);
    } else {
        bwp_t4_body(t, g, x, noy, nox, d, 0, tdw);
    }
}

/*
 * dw for taps kx .. kx+3 of kernel row ky (valid output rows [oy0, oy1), non-empty),
 * output channels oc (4 if four_oc, else 1), input channel ci (absolute): the
 * tile covers the output columns valid for all 4 taps; the columns valid for only
 * some of them are added per tap.
 */
static void bwp_taps4(const ep_conv2d_params_t *p, const bwp_t *t, const float *restrict dy,
                      const float *restrict x, uint32_t oc, uint32_t ci, uint32_t four_oc, uint32_t ky,
                      uint32_t kx, uint32_t oy0, uint32_t oy1, float *restrict d) {
    uint32_t lo[4], hi[4], l = 0, h = p->w_out;
    for (uint32_t j = 0; j < 4; j++) {
        out_range(kx + j, p->sw, p->pad_left, p->dw, p->w_in, p->w_out, &lo[j], &hi[j]);
        l = lo[j] > l ? lo[j] : l;
        h = hi[j] < h ? hi[j] : h;
    }
    const uint32_t noy = oy1 - oy0, nocs = four_oc ? 4 : 1;
    const uint32_t xrow = (oy0 * p->sh + ky * p->dh - p->pad_top) * p->w_in;
    const float *xc = x + ci * t->hw + xrow, *gc = dy + oc * t->howo + oy0 * p->w_out;
    if (h > l) {
        const float *xs = xc + (l * p->sw + kx * p->dw - p->pad_left);
        if (four_oc) {
            bwp_4t4(t, gc + l, xs, noy, h - l, d, p->dw);
        } else {
            bwp_1t4(t, gc + l, xs, noy, h - l, d, p->dw);
        }
    } else { /* no column common to the 4 taps */
        for (uint32_t a = 0; a < nocs; a++) {
            for (uint32_t j = 0; j < 4; j++) {
                d[a * t->wstride + j] = 0.0f;
            }
        }
        l = h = p->w_out;
    }
    for (uint32_t j = 0; j < 4; j++) {
        const uint32_t parts[2][2] = {{lo[j], hi[j] < l ? hi[j] : l}, {lo[j] > h ? lo[j] : h, hi[j]}};
        for (uint32_t s = 0; s < 2; s++) {
            if (parts[s][1] > parts[s][0]) {
                const uint32_t c0 = parts[s][0];
                const float *xs = xc + (c0 * p->sw + (kx + j) * p->dw - p->pad_left);
                float part[4];
                if (four_oc) {
                    bwp_4x1_to(t, gc + c0, xs, noy, parts[s][1] - c0, part, 1);
                } else {
                    bwp_1x1(t, gc + c0, xs, noy, parts[s][1] - c0, part);
                }
                for (uint32_t a = 0; a < nocs; a++) {
                    d[a * t->wstride + j] += part[a];
                }
            }
        }
    }
}

/* Pointwise weight gradient of one group: output channels [oc_lo, oc_hi) × input channels
 * [ci_lo, ci_hi), each a sum over the batch and positions. Tiles of 4 × 4 (the last ci % 4
 * of a ci block 4 × 1, the last oc % 4 one by one); every element is the same fmaf chain
 * whichever tile holds it, so any split of the ranges gives the serial bits. */
static void pw_bw_param(const ep_conv2d_params_t *p, const float *restrict dy, const float *restrict x,
                        float *restrict dw, uint32_t gi, uint32_t oc_lo, uint32_t oc_hi, uint32_t ci_lo,
                        uint32_t ci_hi) {
    const uint32_t G = p->groups, cig = p->c_in / G, cog = p->c_out / G, np = p->h_in * p->w_in;
    const uint32_t xs_n = p->c_in * np, ys_n = p->c_out * np;
    const float *dyg = dy + gi * cog * np, *xg = x + gi * cig * np;
    float *dwg = dw + gi * cog * cig;
    uint32_t oc = oc_lo;
    for (; oc + 4 <= oc_hi; oc += 4) {
        uint32_t ci = ci_lo;
        for (; ci + 4 <= ci_hi; ci += 4) {
            float a00 = 0.0f, a01 = 0.0f, a02 = 0.0f, a03 = 0.0f;
            float a10 = 0.0f, a11 = 0.0f, a12 = 0.0f, a13 = 0.0f;
            float a20 = 0.0f, a21 = 0.0f, a22 = 0.0f, a23 = 0.0f;
            float a30 = 0.0f, a31 = 0.0f, a32 = 0.0f, a33 = 0.0f;
            for (uint32_t i = 0; i < p->n; i++) {
                const float *g0 = dyg + i * ys_n + oc * np, *g1 = g0 + np, *g2 = g1 + np, *g3 = g2 + np;
                const float *x0 = xg + i * xs_n + ci * np, *x1 = x0 + np, *x2 = x1 + np, *x3 = x2 + np;
                for (uint32_t q = 0; q < np; q++) {
                    const float u0 = g0[q], u1 = g1[q], u2 = g2[q], u3 = g3[q];
                    const float v0 = x0[q], v1 = x1[q], v2 = x2[q], v3 = x3[q];
                    a00 = fmaf(u0, v0, a00);
                    a01 = fmaf(u0, v1, a01);
                    a02 = fmaf(u0, v2, a02);
                    a03 = fmaf(u0, v3, a03);
                    a10 = fmaf(u1, v0, a10);
                    a11 = fmaf(u1, v1, a11);
                    a12 = fmaf(u1, v2, a12);
                    a13 = fmaf(u1, v3, a13);
                    a20 = fmaf(u2, v0, a20);
                    a21 = fmaf(u2, v1, a21);
                    a22 = fmaf(u2, v2, a22);
                    a23 = fmaf(u2, v3, a23);
                    a30 = fmaf(u3, v0, a30);
                    a31 = fmaf(u3, v1, a31);
                    a32 = fmaf(u3, v2, a32);
                    a33 = fmaf(u3, v3, a33);
                }
            }
            float *r0 = dwg + oc * cig + ci, *r1 = r0 + cig, *r2 = r1 + cig, *r3 = r2 + cig;
            r0[0] = a00, r0[1] = a01, r0[2] = a02, r0[3] = a03;
            r1[0] = a10, r1[1] = a11, r1[2] = a12, r1[3] = a13;
            r2[0] = a20, r2[1] = a21, r2[2] = a22, r2[3] = a23;
            r3[0] = a30, r3[1] = a31, r3[2] = a32, r3[3] = a33;
        }
        for (; ci < ci_hi; ci++) {
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            for (uint32_t i = 0; i < p->n; i++) {
                const float *g0 = dyg + i * ys_n + oc * np, *g1 = g0 + np, *g2 = g1 + np, *g3 = g2 + np;
                const float *xr = xg + i * xs_n + ci * np;
                for (uint32_t q = 0; q < np; q++) {
                    const float v = xr[q];
                    a0 = fmaf(g0[q], v, a0);
                    a1 = fmaf(g1[q], v, a1);
                    a2 = fmaf(g2[q], v, a2);
                    a3 = fmaf(g3[q], v, a3);
                }
            }
            float *r0 = dwg + oc * cig + ci;
            r0[0] = a0, r0[cig] = a1, r0[2 * cig] = a2, r0[3 * cig] = a3;
        }
    }
    for (; oc < oc_hi; oc++) {
        for (uint32_t ci = ci_lo; ci < ci_hi; ci++) {
            float a = 0.0f;
            for (uint32_t i = 0; i < p->n; i++) {
                const float *gr = dyg + i * ys_n + oc * np, *xr = xg + i * xs_n + ci * np;
                for (uint32_t q = 0; q < np; q++) {
                    a = fmaf(gr[q], xr[q], a);
                }
            }
            dwg[oc * cig + ci] = a;
        }
    }
}

typedef struct {
    const ep_conv2d_params_t *p;
    const float *dy, *x;
    float *dw, *db;
    bwp_t t;
} conv_bwp_t;

/* db[oc] for this core's output channels: the sum over the batch and positions */
static void bwp_bias(const conv_bwp_t *a) {
    const ep_conv2d_params_t *p = a->p;
    const uint32_t howo = a->t.howo, ys_n = a->t.ys_n;
    uint32_t lo, hi;
    ep_par_range(p->c_out, &lo, &hi);
    for (uint32_t oc = lo; oc < hi; oc++) {
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        for (uint32_t i = 0; i < p->n; i++) {
            const float *g = a->dy + i * ys_n + oc * howo;
            uint32_t q = 0;
            for (; q + 4 <= howo; q += 4) {
                s0 += g[q];
                s1 += g[q + 1];
                s2 += g[q + 2];
                s3 += g[q + 3];
            }
            for (; q < howo; q++) {
                s0 += g[q];
            }
        }
        a->db[oc] = (s0 + s1) + (s2 + s3);
    }
}

/*
 * dw for one work item: output channels [oc, oc + nocs) of group gi (a block of 4,
 * or the 1..3 left over, one by one), input channels [ci, ci + ncis) likewise,
 * kernel row ky, kernel columns [kx, kx1) (a block of 4 or the rest).
 */
static void bwp_item(const conv_bwp_t *a, uint32_t gi, uint32_t oc, uint32_t nocs, uint32_t ci, uint32_t ncis,
                     uint32_t ky, uint32_t kx, uint32_t kx1) {
    const ep_conv2d_params_t *p = a->p;
    const bwp_t *t = &a->t;
    const uint32_t G = p->groups, cig = p->c_in / G, cog = p->c_out / G;
    const uint32_t H = p->h_in, W = p->w_in, Ho = p->h_out, Wo = p->w_out;
    const uint32_t kw = p->kw, khkw = t->khkw, wstride = t->wstride, sw = p->sw, hw = t->hw;
    uint32_t oy0, oy1;
    out_range(ky, p->sh, p->pad_top, p->dh, H, Ho, &oy0, &oy1);
    for (uint32_t oc_end = oc + nocs; oc < oc_end;) {
        const uint32_t oc4 = cog - oc >= 4, oc_abs = gi * cog + oc;
        for (uint32_t c = ci, ci_end = ci + ncis; c < ci_end;) {
            const uint32_t ci4 = cig - c >= 4;
            uint32_t x0 = kx;
            if (!ci4 && oy1 > oy0 && x0 + 4 <= kx1 && kx1 - kx == 4) {
                /* one input channel: a block of 4 taps of the row shares each dy load */
                bwp_taps4(p, t, a->dy, a->x, oc_abs, gi * cig + c, oc4, ky, x0, oy0, oy1,
                          a->dw + oc_abs * wstride + c * khkw + ky * kw + x0);
                x0 += 4;
            }
            for (; x0 < kx1; x0++) {
                uint32_t ox0, ox1;
                out_range(x0, sw, p->pad_left, p->dw, W, Wo, &ox0, &ox1);
                float *d = a->dw + oc_abs * wstride + c * khkw + ky * kw + x0;
                if (oy1 == oy0 || ox1 == ox0) { /* the tap never lands inside the input */
                    for (uint32_t a2 = 0; a2 < (oc4 ? 4u : 1u); a2++) {
                        for (uint32_t b2 = 0; b2 < (ci4 ? 4u : 1u); b2++) {
                            d[a2 * wstride + b2 * khkw] = 0.0f;
                        }
                    }
                    continue;
                }
                /* dy at (oc, oy0, ox0) and x at (ci, its row, its column), sample 0 */
                const float *g = a->dy + oc_abs * t->howo + oy0 * Wo + ox0;
                const float *xs = a->x + (gi * cig + c) * hw + (oy0 * p->sh + ky * p->dh - p->pad_top) * W +
                                  (ox0 * sw + x0 * p->dw - p->pad_left);
                const uint32_t noy = oy1 - oy0, nox = ox1 - ox0;
                if (oc4 && ci4) {
                    bwp_4x4(t, g, xs, noy, nox, d);
                } else if (oc4) {
                    bwp_4x1(t, g, xs, noy, nox, d);
                } else if (ci4) {
                    bwp_1x4(t, g, xs, noy, nox, d);
                } else {
                    bwp_1x1(t, g, xs, noy, nox, d);
                }
            }
            c += ci4 ? 4 : 1;
        }
        oc += oc4 ? 4 : 1;
    }
}

/*
 * The weight-gradient items: (group, oc block, ci block, ky, kx block), blocks of 4
 * (the last of each axis smaller; kx blocks of 1 for a narrow kernel with few
 * items), numbered group-major. Within a block the serial
 * loop's order and tiles are kept: a full oc or ci block is one 4-wide tile, a
 * partial one goes channel by channel, and a full block of 4 kernel columns of a
 * single input channel uses bwp_taps4 — the same choices the serial loop makes.
 */
static void bwp_core(void *arg) {
    const conv_bwp_t *a = arg;
    const ep_conv2d_params_t *p = a->p;
    if (a->db) {
        bwp_bias(a);
    }
    const uint32_t G = p->groups, cig = p->c_in / G, cog = p->c_out / G;
    uint32_t lo, hi;
    if (is_pointwise(p)) { /* items: (group, block of 4 output channels, block of 4 input channels) */
        const uint32_t nob = (cog + 3) / 4, nib = (cig + 3) / 4;
        ep_par_range(G * nob * nib, &lo, &hi);
        for (uint32_t it = lo; it < hi; it++) {
            const uint32_t ib = it % nib, ob = (it / nib) % nob, gi = it / (nib * nob);
            const uint32_t oc = 4 * ob, ci = 4 * ib;
            pw_bw_param(p, a->dy, a->x, a->dw, gi, oc, oc + 4 < cog ? oc + 4 : cog, ci, ci + 4 < cig ? ci + 4 : cig);
        }
        return;
    }
    const uint32_t nob = (cog + 3) / 4, nib = (cig + 3) / 4, kh = p->kh;
    /* A narrow kernel (kw < 4: one block of columns, never bwp_taps4) with too few items
     * for the team (a first layer: one input channel) is cut into single columns: the
     * same per-tap tiles, so the same bits, in three times the items. */
    const uint32_t ku = p->kw < 4 && G * nob * nib * kh < 2 * ep_par_num_cores() ? 1 : 4;
    const uint32_t nkb = (p->kw + ku - 1) / ku;
    ep_par_range(G * nob * nib * kh * nkb, &lo, &hi);
    for (uint32_t it = lo; it < hi; it++) {
        uint32_t r = it;
        const uint32_t kb = r % nkb;
        r /= nkb;
        const uint32_t ky = r % kh;
        r /= kh;
        const uint32_t ib = r % nib;
        r /= nib;
        const uint32_t ob = r % nob, gi = r / nob;
        const uint32_t oc = 4 * ob, ci = 4 * ib, kx = ku * kb;
        bwp_item(a, gi, oc, cog - oc < 4 ? cog - oc : 4, ci, cig - ci < 4 ? cig - ci : 4, ky, kx,
                 p->kw - kx < ku ? p->kw : kx + ku);
    }
}

void ep_conv2d_bw_param_f32(const ep_conv2d_params_t *p, const float *restrict dy,
                            const float *restrict x, float *restrict dw, float *restrict db) {
    const uint32_t G = p->groups, cig = p->c_in / G;
    const uint32_t hw = p->h_in * p->w_in, howo = p->h_out * p->w_out, khkw = p->kh * p->kw;
    const conv_bwp_t a = {
        .p = p, .dy = dy, .x = x, .dw = dw, .db = db,
        .t = {
            .n = p->n, .ys_n = p->c_out * howo, .xs_n = p->c_in * hw, .howo = howo, .hw = hw, .wo = p->w_out,
            .in_row = p->sh * p->w_in, .sw = p->sw, .wstride = cig * khkw, .khkw = khkw,
        },
    };
    ep_par_fork(0, bwp_core, (void *)&a);
}

/* ------------------------------------------------------------------------- */
/* CONV2D node (docs/ops/conv_pool.md)                                        */
/* ------------------------------------------------------------------------- */

/*
 * iattr: [0] sh, [1] sw, [2] pad_top, [3] pad_bottom, [4] pad_left, [5] pad_right,
 * [6] dh, [7] dw, [8] groups; [9..11] and every fattr 0. Shapes come from the
 * tensors: x/dx batched f32 [C_in][H][W] (2-D) or [C_in][L] (1-D, H = 1),
 * y/dy batched f32 of the same rank [C_out][H_out][W_out], W/dW unbatched f32
 * [C_out][C_in/groups][kh][kw] (2-D) or [C_out][C_in/groups][k] (1-D).
 */
enum { CONV_SH, CONV_SW, CONV_PT, CONV_PB, CONV_PL, CONV_PR, CONV_DH, CONV_DW, CONV_GROUPS, CONV_N_IATTR };

static bool conv_is_act(const ep_model_t *m, uint16_t t) {
    const ep_tensor_t *x = &m->tensors[t];
    return x->dtype == EP_DTYPE_F32 && (x->flags & EP_TF_BATCHED) != 0 && (x->rank == 2 || x->rank == 3);
}

ep_conv2d_params_t ep_conv2d_geom(const ep_model_t *m, const ep_node_t *nd, uint16_t x, uint16_t w,
                                  uint16_t y) {
    const ep_tensor_t *xt = &m->tensors[x], *wt = &m->tensors[w], *yt = &m->tensors[y];
    const bool two_d = xt->rank == 3;
    const uint16_t *a = nd->iattr;
    ep_conv2d_params_t p = {
        .n = 1, .c_in = xt->dims[0], .h_in = two_d ? xt->dims[1] : 1u, .w_in = xt->dims[two_d ? 2 : 1],
        .c_out = yt->dims[0], .h_out = two_d ? yt->dims[1] : 1u, .w_out = yt->dims[two_d ? 2 : 1],
        .kh = two_d ? wt->dims[2] : 1u, .kw = wt->dims[two_d ? 3 : 2],
        .sh = a[CONV_SH], .sw = a[CONV_SW], .pad_top = a[CONV_PT], .pad_bottom = a[CONV_PB],
        .pad_left = a[CONV_PL], .pad_right = a[CONV_PR], .dh = a[CONV_DH], .dw = a[CONV_DW],
        .groups = a[CONV_GROUPS],
    };
    return p;
}

/* Every check shared by the three fns: x (or dx), W (or dW), y (or dy), attrs. */
static ep_status_t conv_check(const ep_model_t *m, const ep_node_t *nd, uint16_t x, uint16_t w, uint16_t y,
                              const char **why) {
    if (!conv_is_act(m, x) || !conv_is_act(m, y) || m->tensors[x].rank != m->tensors[y].rank) {
        return ep_reject(why, EP_WHY("conv2d: x/dx and y/dy must be batched f32 of rank 3 ([C][H][W]) or 2 ([C][L]), the same rank"));
    }
    const bool two_d = m->tensors[x].rank == 3;
    if (!ep_tensor_is(m, w, EP_DTYPE_F32, false, (uint8_t)(m->tensors[x].rank + 1))) {
        return ep_reject(why, EP_WHY("conv2d: W/dW must be an unbatched f32 [C_out][C_in/groups][kh][kw] (rank 3 for 1-D)"));
    }
    for (uint8_t i = CONV_N_IATTR; i < EP_NODE_IATTRS; i++) {
        if (nd->iattr[i] != 0) {
            return ep_reject(why, EP_WHY("conv2d: iattr[9..11] must be 0"));
        }
    }
    for (uint8_t i = 0; i < EP_NODE_FATTRS; i++) {
        if (nd->fattr[i] != 0.0f) {
            return ep_reject(why, EP_WHY("conv2d: fattrs must be 0"));
        }
    }
    const ep_conv2d_params_t p = ep_conv2d_geom(m, nd, x, w, y);
    if (p.sh == 0 || p.sw == 0) {
        return ep_reject(why, EP_WHY("conv2d: zero stride"));
    }
    if (p.dh == 0 || p.dw == 0) {
        return ep_reject(why, EP_WHY("conv2d: zero dilation"));
    }
    if (p.groups == 0) {
        return ep_reject(why, EP_WHY("conv2d: zero groups"));
    }
    if (!two_d && (p.sh != 1 || p.dh != 1 || p.pad_top != 0 || p.pad_bottom != 0)) {
        return ep_reject(why, EP_WHY("conv2d: 1-D node needs sh = dh = 1 and no top/bottom padding"));
    }
    if (p.c_in % p.groups != 0 || p.c_out % p.groups != 0) {
        return ep_reject(why, EP_WHY("conv2d: groups does not divide C_in and C_out"));
    }
    if (m->tensors[w].dims[0] != p.c_out || m->tensors[w].dims[1] != p.c_in / p.groups) {
        return ep_reject(why, EP_WHY("conv2d: W dims [0..1] are not [C_out][C_in/groups]"));
    }
    const uint32_t ho = ep_conv_out_len(p.h_in, p.pad_top, p.pad_bottom, p.kh, p.sh, p.dh);
    const uint32_t wo = ep_conv_out_len(p.w_in, p.pad_left, p.pad_right, p.kw, p.sw, p.dw);
    if (ho == 0 || wo == 0) {
        return ep_reject(why, EP_WHY("conv2d: dilated kernel larger than the padded input"));
    }
    if (ho != p.h_out || wo != p.w_out) {
        return ep_reject(why, EP_WHY("conv2d: y/dy spatial dims differ from the output size of x, kernel, stride, padding, dilation"));
    }
    if (!ep_conv2d_params_ok(&p)) {
        return ep_reject(why, EP_WHY("conv2d: shape rejected by ep_conv2d_params_ok"));
    }
    return EP_OK;
}

static bool conv_is_bias(const ep_model_t *m, uint16_t b, uint16_t w) {
    return ep_tensor_is(m, b, EP_DTYPE_F32, false, 1) && m->tensors[b].dims[0] == m->tensors[w].dims[0];
}

static ep_status_t conv2d_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    ep_status_t st;
    switch (nd->fn) {
    case EP_FN_FW: {
        if ((nd->n_in != 2 && nd->n_in != 3) || nd->n_out != 1) {
            return ep_reject(why, EP_WHY("conv2d.fw: needs inputs (x, W[, b]) and output (y)"));
        }
        const uint16_t x = nd->in[0], w = nd->in[1], y = nd->out[0];
        if ((st = conv_check(m, nd, x, w, y, why)) != EP_OK) {
            return st;
        }
        if (nd->n_in == 3 && !conv_is_bias(m, nd->in[2], w)) {
            return ep_reject(why, EP_WHY("conv2d.fw: b is not an unbatched f32 [C_out]"));
        }
        if (ep_overlap(m, y, x) || ep_overlap(m, y, w) || (nd->n_in == 3 && ep_overlap(m, y, nd->in[2]))) {
            return ep_reject(why, EP_WHY("conv2d.fw: y overlaps an input"));
        }
        return EP_OK;
    }
    case EP_FN_BW_INPUT: {
        if (nd->n_in != 2 || nd->n_out != 1) {
            return ep_reject(why, EP_WHY("conv2d.bw_input: needs inputs (dy, W) and output (dx)"));
        }
        const uint16_t dy = nd->in[0], w = nd->in[1], dx = nd->out[0];
        if ((st = conv_check(m, nd, dx, w, dy, why)) != EP_OK) {
            return st;
        }
        if (ep_overlap(m, dx, dy) || ep_overlap(m, dx, w)) {
            return ep_reject(why, EP_WHY("conv2d.bw_input: dx overlaps an input"));
        }
        return EP_OK;
    }
    case EP_FN_BW_PARAM: {
        if (nd->n_in != 2 || (nd->n_out != 1 && nd->n_out != 2)) {
            return ep_reject(why, EP_WHY("conv2d.bw_param: needs inputs (dy, x) and outputs (dW[, db])"));
        }
        const uint16_t dy = nd->in[0], x = nd->in[1], dw = nd->out[0];
        if ((st = conv_check(m, nd, x, dw, dy, why)) != EP_OK) {
            return st;
        }
        if (ep_overlap(m, dw, dy) || ep_overlap(m, dw, x)) {
            return ep_reject(why, EP_WHY("conv2d.bw_param: dW overlaps an input"));
        }
        if (nd->n_out == 2) {
            const uint16_t db = nd->out[1];
            if (!conv_is_bias(m, db, dw)) {
                return ep_reject(why, EP_WHY("conv2d.bw_param: db is not an unbatched f32 [C_out]"));
            }
            if (ep_overlap(m, db, dy) || ep_overlap(m, db, x) || ep_overlap(m, db, dw)) {
                return ep_reject(why, EP_WHY("conv2d.bw_param: db overlaps dW or an input"));
            }
        }
        return EP_OK;
    }
    default:
        return ep_reject(why, EP_WHY("conv2d: unknown fn"));
    }
}

static void conv2d_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    ep_conv2d_params_t p = ep_conv2d_geom(c->model, nd, nd->in[0], nd->in[1], nd->out[0]);
    p.n = c->n;
    ep_conv2d_fw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]),
                     nd->n_in == 3 ? ep_ctx_f32(c, nd->in[2]) : NULL, ep_ctx_f32(c, nd->out[0]));
}

static void conv2d_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    ep_conv2d_params_t p = ep_conv2d_geom(c->model, nd, nd->out[0], nd->in[1], nd->in[0]);
    p.n = c->n;
    ep_conv2d_bw_input_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->out[0]));
}

static void conv2d_bw_param(const ep_ctx_t *c, const ep_node_t *nd) {
    ep_conv2d_params_t p = ep_conv2d_geom(c->model, nd, nd->in[1], nd->out[0], nd->in[0]);
    p.n = c->n;
    ep_conv2d_bw_param_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->out[0]),
                           nd->n_out == 2 ? ep_ctx_f32(c, nd->out[1]) : NULL);
}

const ep_op_t ep_op_conv2d = {
    .name = "conv2d",
    .prepare = conv2d_prepare,
    .fn = {[EP_FN_FW] = conv2d_fw, [EP_FN_BW_INPUT] = conv2d_bw_input, [EP_FN_BW_PARAM] = conv2d_bw_param},
};
