/*
 * ep_q8_conv2d.c — CONV2D_Q8: the int8 2-D (and 1-D) convolution, grouped and
 * depthwise included (docs/ops/int8.md).
 *
 * Geometry, iattrs and tensor shapes as CONV2D (docs/ops/conv_pool.md): iattr
 * [0] sh [1] sw [2..5] pad top, bottom, left, right [6] dh [7] dw [8] groups; x/dx
 * [C_in][H][W] or [C_in][L], W [C_out][C_in/groups][kh][kw] or [..][k]. Dtypes and
 * the extra exponent and scratch tensors as LINEAR_Q8:
 *   FW        in (x, e_x, W, e_w[C_out], [b i32 [C_out], e_b])  out (y, e_y, scratch)
 *   BW_INPUT  in (dy, e_dy, W, e_w[C_out])                      out (dx, e_dx, scratch)
 *   BW_PARAM  in (dy, e_dy, x, e_x)   out (dW f32, db f32, scratch) | (dW i32, db i32, e_g i32 [2], scratch)
 * iattr[9] (FW and BW_INPUT; 0 or 1): per-sample accumulators. 0 keeps the int32 sums
 * of the whole batch in the scratch and requantises them at once; 1 keeps one
 * sample's, and makes the sums twice: a first pass over the samples for the output
 * exponent (ep_q8_acc_mags), a second for the codes. The same bits either way; 1
 * costs the MACs twice and saves (max_batch − 1) samples of int32 sums.
 * Three paths, the same integer sums:
 *   - im2col (the general one): products through ep_q8_dot_s16 over im2col rows built a
 *     chunk of whole output rows (≤ EP_Q8_CONV_CHUNK positions, at least one row) at a
 *     time; padding taps are zeros (symmetric quantisation: code 0 is the real 0), so
 *     they add nothing. The im2col is int8 and tap-major ([J][positions], contiguous
 *     runs of input rows), then widened into the A panels of ep_q8_dot_s16 (positions
 *     as rows in fw, taps in bw_param), so every widening is a word-at-a-time SXTB16 pass;
 *   - direct (one input channel per group, kernels ≥ 2 wide: depthwise convs): 2-D
 *     correlations of widened planes, ep_q8_corr_s16;
 *   - column (one input channel per group, a one-column kernel over all input rows:
 *     EEGNet's spatial filter): weighted sums of whole rows, ep_q8_rows_mac / ep_q8_dot_s8.
 */
#include <string.h>

#include "ep_conv_pool.h"
#include "ep_parallel.h"
#include "ep_q8.h"

enum { CONV_SH, CONV_SW, CONV_PT, CONV_PB, CONV_PL, CONV_PR, CONV_DH, CONV_DW, CONV_GROUPS, CONV_N_IATTR };
enum { CONV_PER_SAMPLE = CONV_N_IATTR }; /* iattr[9], CONV2D_Q8 only */
enum { C_FW, C_BWI, C_BWP };

/* Output positions per chunk: whole output rows, at most EP_Q8_CONV_CHUNK (but ≥ 1 row). */
static uint32_t chunk_positions(const ep_conv2d_params_t *p) {
    uint32_t rows = EP_Q8_CONV_CHUNK / p->w_out;
    rows = rows == 0 ? 1 : (rows > p->h_out ? p->h_out : rows);
    return rows * p->w_out;
}

/* The scratch's first part: the int32 sums of fn (bw_param: none) and, per sample, FW's
 * c_out magnitudes of ep_q8_acc_mags after them. */
static uint64_t sums_bytes(int fn, const ep_conv2d_params_t *p, bool per_sample) {
    const uint64_t n = per_sample ? 1 : p->n;
    switch (fn) {
    case C_FW:
        return 4 * n * p->c_out * p->h_out * p->w_out + (per_sample ? 4 * (uint64_t)p->c_out : 0);
    case C_BWI:
        return 4 * n * p->c_in * p->h_in * p->w_in;
    default:
        return 0;
    }
}

/* Scratch bytes of one fn for p (p->n = max_batch); per_sample: iattr[9]. Per-sample
 * sums keep one sample's. */
static uint64_t scratch_bytes(int fn, const ep_conv2d_params_t *p, bool per_sample) {
    const uint64_t G = p->groups, cog = p->c_out / G, cig = p->c_in / G;
    const uint64_t J = cig * p->kh * p->kw, Jp = J + (J & 1), COgp = cog + (cog & 1);
    const uint64_t CHP = chunk_positions(p), CHPp = CHP + (CHP & 1);
    switch (fn) {
    case C_FW:
        return sums_bytes(fn, p, per_sample) + 2 * (uint64_t)p->c_out * Jp + 2 * CHP * Jp + J * CHP;
    case C_BWI:
        return sums_bytes(fn, p, per_sample) + 2 * G * J * COgp + 2 * CHP * COgp + 4 * CHP * J;
    default: /* C_BWP: the sums go into dW itself (f32 or i32: 4 bytes a weight) */
        return 2 * cog * CHPp + 2 * J * CHPp + J * CHP;
    }
}

static bool is_act(const ep_model_t *m, uint16_t t) {
    const ep_tensor_t *x = &m->tensors[t];
    return x->dtype == EP_DTYPE_S8 && (x->flags & EP_TF_BATCHED) != 0 && (x->rank == 2 || x->rank == 3);
}

/* Checks shared by the three fns; wdtype is W's (fw, bw_input: s8) or dW's dtype. */
static ep_status_t check(const ep_model_t *m, const ep_node_t *nd, uint16_t x, uint16_t w, uint8_t wdtype,
                         uint16_t y, ep_conv2d_params_t *out, const char **why) {
    if (!is_act(m, x) || !is_act(m, y) || m->tensors[x].rank != m->tensors[y].rank) {
        return ep_reject(why, EP_WHY("conv2d_q8: x/dx and y/dy must be batched s8 of rank 3 ([C][H][W]) or 2 ([C][L]), the same rank"));
    }
    const bool two_d = m->tensors[x].rank == 3;
    if (!ep_tensor_is(m, w, wdtype, false, (uint8_t)(m->tensors[x].rank + 1))) {
        return ep_reject(why, EP_WHY("conv2d_q8: W/dW must be unbatched [C_out][C_in/groups][kh][kw] (rank 3 for 1-D) of the fn's dtype"));
    }
    if (nd->iattr[CONV_PER_SAMPLE] > (nd->fn == EP_FN_BW_PARAM ? 0 : 1)) {
        return ep_reject(why, EP_WHY("conv2d_q8: iattr[9] (per-sample sums) must be 0 or 1, and 0 on bw_param"));
    }
    for (uint8_t i = CONV_PER_SAMPLE + 1; i < EP_NODE_IATTRS; i++) {
        if (nd->iattr[i] != 0) {
            return ep_reject(why, EP_WHY("conv2d_q8: iattr[10..11] must be 0"));
        }
    }
    for (uint8_t i = 0; i < EP_NODE_FATTRS; i++) {
        if (nd->fattr[i] != 0.0f) {
            return ep_reject(why, EP_WHY("conv2d_q8: fattrs must be 0"));
        }
    }
    ep_conv2d_params_t p = ep_conv2d_geom(m, nd, x, w, y);
    if (!two_d && (p.sh != 1 || p.dh != 1 || p.pad_top != 0 || p.pad_bottom != 0)) {
        return ep_reject(why, EP_WHY("conv2d_q8: 1-D node needs sh = dh = 1 and no top/bottom padding"));
    }
    if (!ep_conv2d_params_ok(&p)) {
        return ep_reject(why, EP_WHY("conv2d_q8: stride, dilation, groups, padding or output size inconsistent with the tensors"));
    }
    if (m->tensors[w].dims[0] != p.c_out || m->tensors[w].dims[1] != p.c_in / p.groups) {
        return ep_reject(why, EP_WHY("conv2d_q8: W dims [0..1] are not [C_out][C_in/groups]"));
    }
    p.n = m->max_batch;
    *out = p;
    return EP_OK;
}

static bool is_bias(const ep_model_t *m, uint16_t b, uint32_t c_out, uint8_t dtype) {
    return ep_tensor_is(m, b, dtype, false, 1) && m->tensors[b].dims[0] == c_out;
}

static ep_status_t conv2d_q8_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    ep_conv2d_params_t p;
    ep_status_t st;
    switch (nd->fn) {
    case EP_FN_FW: {
        if ((nd->n_in != 4 && nd->n_in != 6) || nd->n_out != 3) {
            return ep_reject(why, EP_WHY("conv2d_q8.fw: needs inputs (x, e_x, W, e_w[, b, e_b]) and outputs (y, e_y, scratch)"));
        }
        if ((st = check(m, nd, nd->in[0], nd->in[2], EP_DTYPE_S8, nd->out[0], &p, why)) != EP_OK) {
            return st;
        }
        if (!ep_q8_is_exp(m, nd->in[1], 1) || !ep_q8_is_exp(m, nd->in[3], p.c_out) || !ep_q8_is_exp(m, nd->out[1], 1) ||
            (nd->n_in == 6 && (!is_bias(m, nd->in[4], p.c_out, EP_DTYPE_I32) || !ep_q8_is_exp(m, nd->in[5], 1)))) {
            return ep_reject(why, EP_WHY("conv2d_q8.fw: e_x, e_y, e_b must be i32 [1], e_w and b i32 [C_out]"));
        }
        if ((uint64_t)(p.c_in / p.groups) * p.kh * p.kw > EP_Q8_MAX_TERMS_FW) {
            return ep_reject(why, EP_WHY("conv2d_q8.fw: C_in/groups*kh*kw above 65535 could overflow the int32 sums"));
        }
        if (!ep_q8_scratch_ok(m, nd->out[2], scratch_bytes(C_FW, &p, nd->iattr[CONV_PER_SAMPLE] != 0))) {
            return ep_reject(why, EP_WHY("conv2d_q8.fw: scratch too small or not an unbatched s8"));
        }
        break;
    }
    case EP_FN_BW_INPUT: {
        if (nd->n_in != 4 || nd->n_out != 3) {
            return ep_reject(why, EP_WHY("conv2d_q8.bw_input: needs inputs (dy, e_dy, W, e_w) and outputs (dx, e_dx, scratch)"));
        }
        if ((st = check(m, nd, nd->out[0], nd->in[2], EP_DTYPE_S8, nd->in[0], &p, why)) != EP_OK) {
            return st;
        }
        if (!ep_q8_is_exp(m, nd->in[1], 1) || !ep_q8_is_exp(m, nd->in[3], p.c_out) || !ep_q8_is_exp(m, nd->out[1], 1)) {
            return ep_reject(why, EP_WHY("conv2d_q8.bw_input: e_dy, e_dx must be i32 [1], e_w i32 [C_out]"));
        }
        if ((uint64_t)(p.c_out / p.groups) * p.kh * p.kw > EP_Q8_MAX_TERMS_BW_INPUT) {
            return ep_reject(why, EP_WHY("conv2d_q8.bw_input: C_out/groups*kh*kw above 8191 could overflow the int32 sums"));
        }
        if (!ep_q8_scratch_ok(m, nd->out[2], scratch_bytes(C_BWI, &p, nd->iattr[CONV_PER_SAMPLE] != 0))) {
            return ep_reject(why, EP_WHY("conv2d_q8.bw_input: scratch too small or not an unbatched s8"));
        }
        break;
    }
    case EP_FN_BW_PARAM: {
        const bool f32 = nd->n_out == 3;
        if (nd->n_in != 4 || (nd->n_out != 3 && nd->n_out != 4)) {
            return ep_reject(why, EP_WHY("conv2d_q8.bw_param: needs inputs (dy, e_dy, x, e_x) and outputs (dW, db, scratch) or (dW, db, e_g, scratch)"));
        }
        const uint8_t gt = f32 ? EP_DTYPE_F32 : EP_DTYPE_I32;
        if ((st = check(m, nd, nd->in[2], nd->out[0], gt, nd->in[0], &p, why)) != EP_OK) {
            return st;
        }
        if (!is_bias(m, nd->out[1], p.c_out, gt) || !ep_q8_is_exp(m, nd->in[1], 1) || !ep_q8_is_exp(m, nd->in[3], 1) ||
            (!f32 && !ep_q8_is_exp(m, nd->out[2], 2))) {
            return ep_reject(why, EP_WHY("conv2d_q8.bw_param: db [C_out] of dW's dtype, e_dy, e_x i32 [1], e_g i32 [2]"));
        }
        if ((uint64_t)p.n * p.h_out * p.w_out > EP_Q8_MAX_TERMS_BW_PARAM) {
            return ep_reject(why, EP_WHY("conv2d_q8.bw_param: max_batch*H_out*W_out above 131071 could overflow the int32 sums"));
        }
        if (!ep_q8_scratch_ok(m, nd->out[f32 ? 2 : 3], scratch_bytes(C_BWP, &p, false))) {
            return ep_reject(why, EP_WHY("conv2d_q8.bw_param: scratch too small or not an unbatched s8"));
        }
        break;
    }
    default:
        return ep_reject(why, EP_WHY("conv2d_q8: unknown fn"));
    }
    if (!ep_outputs_disjoint(m, nd, -1)) {
        return ep_reject(why, EP_WHY("conv2d_q8: outputs overlap inputs or each other"));
    }
    return EP_OK;
}

/* ---- im2col ---------------------------------------------------------------------------- */

/* The output columns [*lo, *hi) whose tap kj lands inside the input row (others are padding). */
static void valid_cols(const ep_conv2d_params_t *p, uint32_t kj, uint32_t *lo, uint32_t *hi) {
    const int32_t iw0 = (int32_t)(kj * p->dw) - (int32_t)p->pad_left, W = (int32_t)p->w_in;
    const int32_t sw = (int32_t)p->sw;
    int32_t l = iw0 < 0 ? (-iw0 + sw - 1) / sw : 0;
    int32_t h = iw0 < W ? (W - 1 - iw0) / sw + 1 : 0;
    h = h > (int32_t)p->w_out ? (int32_t)p->w_out : h;
    l = l > h ? h : l;
    *lo = (uint32_t)l;
    *hi = (uint32_t)h;
}

/*
 * int8 columns of output rows [oh0, oh0 + nrows) for one sample and group, tap-major:
 * x points at the group's first input channel; tap j = (ci·kh + ki)·kw + kj of
 * position q (counted from the chunk's first) goes to dst[j·pc + q], pc = nrows ·
 * w_out; taps in the padding are 0; only taps [j0, j1) (a core's share). With stride 1
 * each (tap, output row) is one contiguous run of the input row, copied a word at a time.
 */
static void im2col8(const ep_conv2d_params_t *p, const int8_t *x, uint32_t cig, uint32_t oh0, uint32_t nrows,
                    int8_t *dst, uint32_t j0, uint32_t j1) {
    const int32_t H = (int32_t)p->h_in;
    uint32_t j = 0;
    for (uint32_t ci = 0; ci < cig; ci++) {
        const int8_t *xc = x + ci * p->h_in * p->w_in;
        for (uint32_t ki = 0; ki < p->kh; ki++) {
            for (uint32_t kj = 0; kj < p->kw; kj++, j++) {
                if (j < j0 || j >= j1) {
                    continue;
                }
                int8_t *d = dst + j * nrows * p->w_out;
                uint32_t lo, hi;
                valid_cols(p, kj, &lo, &hi);
                const int32_t iw_lo = (int32_t)(lo * p->sw + kj * p->dw) - (int32_t)p->pad_left;
                for (uint32_t r = 0; r < nrows; r++, d += p->w_out) {
                    const int32_t ih = (int32_t)((oh0 + r) * p->sh + ki * p->dh) - (int32_t)p->pad_top;
                    const bool in = ih >= 0 && ih < H;
                    const uint32_t l = in ? lo : p->w_out, h = in ? hi : p->w_out;
                    uint32_t ow = 0;
                    for (; ow < l; ow++) {
                        d[ow] = 0;
                    }
                    if (ow < h) {
                        const int8_t *xs = xc + (uint32_t)ih * p->w_in + (uint32_t)iw_lo;
                        if (p->sw == 1) {
                            for (; ow + 4 <= h; ow += 4, xs += 4) {
                                uint32_t w;
                                memcpy(&w, xs, sizeof w);
                                memcpy(d + ow, &w, sizeof w);
                            }
                        }
                        for (; ow < h; ow++, xs += p->sw) {
                            d[ow] = *xs;
                        }
                    }
                    for (; ow < p->w_out; ow++) {
                        d[ow] = 0;
                    }
                }
            }
        }
    }
}

/* ---- the direct path: one input channel per group (depthwise convs) -------------------- */

/*
 * With C_in/groups = 1 every output is a small 2-D correlation of one input plane, so
 * the direct path widens each plane once into a zero-padded int16 plane and runs
 * ep_q8_corr_s16 over it, instead of an im2col of kh·kw taps per position and a
 * contraction of kh·kw: fw correlates x with W; bw_input correlates dy (spread out by
 * the strides) with W flipped; bw_param correlates x with dy. The planes go in the
 * scratch the im2col path would use, a band of rows at a time; a geometry whose band
 * of one row does not fit there (or bw_input with padding beyond the kernel's reach)
 * keeps the im2col path. The sums are the same integers either way.
 */

/* Rows [r0, r0 + rows) of a zero-padded int16 plane of width wi over one int8 channel
 * src [h][w]: element (r, c) is src[(r - pt)/uh][(c - pl)/uw] · 2^shift where both
 * divisions are exact and land inside src (uh, uw > 1: the zeros between a strided
 * conv's output gradients), else 0. */
static void plane16(const int8_t *src, uint32_t h, uint32_t w, uint32_t uh, uint32_t uw, int32_t pt, int32_t pl,
                    uint32_t r0, uint32_t rows, uint32_t wi, uint32_t shift, int16_t *dst) {
    for (uint32_t r = 0; r < rows; r++, dst += wi) {
        const int32_t y = (int32_t)(r0 + r) - pt;
        const bool in = y >= 0 && (uint32_t)y % uh == 0 && (uint32_t)y / uh < h;
        const int8_t *s = src + (in ? (uint32_t)y / uh * w : 0);
        if (in && uw == 1 && pl >= 0 && (uint32_t)pl < wi) { /* zeros, the row, zeros */
            const uint32_t n = w < wi - (uint32_t)pl ? w : wi - (uint32_t)pl;
            uint32_t c = 0;
            for (; c < (uint32_t)pl; c++) {
                dst[c] = 0;
            }
            for (uint32_t j = 0; j < n; j++) {
                dst[c + j] = (int16_t)(s[j] * (1 << shift));
            }
            for (c += n; c < wi; c++) {
                dst[c] = 0;
            }
            continue;
        }
        for (uint32_t c = 0; c < wi; c++) {
            dst[c] = 0;
        }
        if (!in) {
            continue;
        }
        for (uint32_t j = 0; j < w; j++) {
            const int32_t c = pl + (int32_t)(j * uw);
            if (c >= (int32_t)wi) {
                break;
            }
            if (c >= 0) {
                dst[c] = (int16_t)(s[j] * (1 << shift));
            }
        }
    }
}

/* Rows per band within avail bytes when a band of R rows needs fixed + extra·R bytes
 * and an int16 plane of (R - 1)·step + ext rows of wi; at most max, 0 if one does not fit. */
static uint32_t band_rows(uint64_t avail, uint64_t fixed, uint64_t extra, uint32_t step, uint32_t ext, uint32_t wi,
                          uint32_t max) {
    const uint64_t one = fixed + extra + 2ull * wi * ext;
    if (one > avail) {
        return 0;
    }
    const uint64_t r = 1 + (avail - one) / (2ull * wi * step + extra);
    return r < max ? (uint32_t)r : max;
}

static uint32_t kh_ext(const ep_conv2d_params_t *p) { /* input rows one output row reads */
    return (p->kh - 1) * p->dh + 1;
}

/* The direct path's band rows for fn (0: the im2col path) within avail scratch bytes. */
static uint32_t direct_rows(int fn, const ep_conv2d_params_t *p, uint64_t avail) {
    if (p->c_in != p->groups || p->groups == 1 || p->kw < 2) {
        return 0; /* one input channel (a stem; EEGNet's temporal conv) and kernel columns
                     (EEGNet's spatial conv) do better as a contraction over the im2col */
    }
    const uint32_t kwp = ep_q8_even(p->kw), vp = ep_q8_even(p->w_out);
    switch (fn) {
    case C_FW:
        return band_rows(avail, 2ull * p->kh * kwp, 0, p->sh, kh_ext(p), (p->w_out - 1) * p->sw + (kwp - 1) * p->dw + 1,
                         p->h_out);
    case C_BWI:
        if (p->pad_top > (p->kh - 1) * p->dh || p->pad_left > (p->kw - 1) * p->dw) {
            return 0;
        }
        return band_rows(avail, 2ull * p->kh * kwp, 0, 1, kh_ext(p), p->w_in + (kwp - 1) * p->dw, p->h_in);
    default:
        return band_rows(avail, 0, 2ull * vp, p->sh, kh_ext(p), (p->kw - 1) * p->dw + (vp - 1) * p->sw + 1, p->h_out);
    }
}

/*
 * The direct path's split over a cluster: whole groups per core, each core with its own
 * share of the scratch (its planes and kernel), so the cores never wait on each other.
 * A share too small for a band of one row takes fewer cores. band 0: the im2col path.
 */
typedef struct {
    uint32_t band, team, halfs; /* rows per band, cores, int16 per core's share */
} dw_plan_t;

static dw_plan_t direct_plan(int fn, const ep_conv2d_params_t *p, uint64_t avail) {
    dw_plan_t d = {direct_rows(fn, p, avail), 1, (uint32_t)(avail / 2)};
    const uint32_t cores = ep_par_num_cores();
    for (uint32_t t = cores < p->groups ? cores : p->groups; d.band != 0 && t > 1; t--) {
        const uint64_t share = avail / t & ~(uint64_t)3;
        const uint32_t b = direct_rows(fn, p, share);
        if (b != 0) {
            d = (dw_plan_t){b, t, (uint32_t)(share / 2)};
            break;
        }
    }
    return d;
}

/* Groups [g0, g1) of sample i through the direct path, in mem (one core's share). */
typedef void (*dw_groups_t)(const void *f, uint32_t i, int32_t *acc, uint32_t g0, uint32_t g1, int16_t *mem,
                            uint32_t band);

typedef struct {
    dw_groups_t run;
    const void *f;
    uint32_t i;
    int32_t *acc;
    int16_t *mem;
    dw_plan_t d;
} dw_job_t;

static void dw_range(void *arg, uint32_t g0, uint32_t g1) {
    const dw_job_t *j = arg;
    j->run(j->f, j->i, j->acc, g0, g1, j->mem + ep_par_core_id() * j->d.halfs, j->d.band);
}

static void dw_run(dw_groups_t run, const void *f, uint32_t i, uint32_t groups, int32_t *acc, int16_t *mem,
                   dw_plan_t d) {
    dw_job_t j = {run, f, i, acc, mem, d};
    ep_q8_split(groups, 1, d.team, dw_range, &j);
}

/* ---- the column path: one input channel per group, a one-column kernel over all rows -- */

/*
 * A conv with one input channel per group, a kernel one column wide (kw = 1, no column
 * stride or padding) and one output row (the kernel spans the padded input rows:
 * EEGNet's and EOGNet's spatial filter over the electrodes) is, per output channel, a
 * weighted sum of whole input rows: fw y[co] = Σ_ki x[row ki]·W[co][ki]; bw_input
 * dx[row ki] = Σ_co∈g dy[co]·W[co][ki]; bw_param dW[co][ki] = Σ_w dy[co][w]·x[row ki][w].
 * So it runs as ep_q8_rows_mac / ep_q8_dot_s8 over the codes as they lie, with no im2col
 * (which took about 70 instructions per output there for 6 MACs). Groups split over a
 * cluster's cores. The sums are the same integers.
 */
static bool col_path(const ep_conv2d_params_t *p) {
    return p->c_in == p->groups && p->kw == 1 && p->sw == 1 && p->pad_left == 0 && p->pad_right == 0 &&
           p->h_out == 1 && p->w_out == p->w_in;
}

/* The kernel rows [*k0, *k1) that land inside the input (output row 0). */
static void col_rows(const ep_conv2d_params_t *p, uint32_t *k0, uint32_t *k1) {
    uint32_t lo = p->kh, hi = 0;
    for (uint32_t ki = 0; ki < p->kh; ki++) {
        const int32_t ih = (int32_t)(ki * p->dh) - (int32_t)p->pad_top;
        if (ih >= 0 && ih < (int32_t)p->h_in) {
            lo = ki < lo ? ki : lo;
            hi = ki + 1;
        }
    }
    *k0 = lo < hi ? lo : 0;
    *k1 = lo < hi ? hi : 0;
}

/* W [c_out][kh] as int16, each output channel's row shifted left by shift(co) (0: none). */
static void col_weights(const ep_conv2d_params_t *p, const int8_t *w, const int32_t *e_w, int32_t e_lo, int16_t *w16) {
    for (uint32_t co = 0; co < p->c_out; co++) {
        int32_t sh = e_w != NULL ? ep_q8_exp(e_w[co]) - e_lo : 0;
        sh = sh < 0 ? 0 : (sh > EP_Q8_SPREAD ? EP_Q8_SPREAD : sh);
        for (uint32_t ki = 0; ki < p->kh; ki++) {
            w16[co * p->kh + ki] = (int16_t)(w[co * p->kh + ki] * (1 << sh));
        }
    }
}

/* ---- node functions --------------------------------------------------------------------- */

/* What one sample's forward sums need: geometry, operands and the widened weights. */
typedef struct {
    ep_conv2d_params_t p;
    const ep_ctx_t *c;
    const ep_node_t *nd;
    uint32_t J, Jp, P, HW, CHP;
    int32_t e_x;
    const int32_t *e_w;
    const int16_t *w16;
    int16_t *cols;
    int8_t *cols8;
    dw_plan_t d; /* the direct path (d.band 0: im2col) */
    bool col;    /* the column path (w16: W [c_out][kh]) */
} conv_fw_t;

/* acc [c_out][P] += sample i's correlations with W over groups [g0, g1), a band of output
 * rows at a time: the band's padded input plane of each channel, then each of its outputs'
 * kernels. */
static void fw_direct(const void *fv, uint32_t i, int32_t *acc, uint32_t g0, uint32_t g1, int16_t *mem,
                      uint32_t band) {
    const conv_fw_t *f = fv;
    const ep_conv2d_params_t *p = &f->p;
    const uint32_t M = p->c_out / p->groups, kwp = ep_q8_even(p->kw);
    const uint32_t wi = (p->w_out - 1) * p->sw + (kwp - 1) * p->dw + 1;
    const int8_t *x = ep_ctx_s8(f->c, f->nd->in[0]) + i * p->c_in * f->HW;
    int16_t *k16 = mem, *plane = k16 + p->kh * kwp;
    for (uint32_t oh0 = 0; oh0 < p->h_out; oh0 += band) {
        const uint32_t nr = oh0 + band <= p->h_out ? band : p->h_out - oh0;
        for (uint32_t g = g0; g < g1; g++) {
            plane16(x + g * f->HW, p->h_in, p->w_in, 1, 1, (int32_t)p->pad_top, (int32_t)p->pad_left, oh0 * p->sh,
                    (nr - 1) * p->sh + kh_ext(p), wi, 0, plane);
            for (uint32_t co = g * M; co < (g + 1) * M; co++) {
                plane16(ep_ctx_s8(f->c, f->nd->in[2]) + co * f->J, p->kh, p->kw, 1, 1, 0, 0, 0, p->kh, kwp, 0, k16);
                ep_q8_corr_s16(plane, wi, nr, p->w_out, p->sh, p->sw, k16, p->kh, kwp, p->dh, p->dw,
                               acc + co * f->P + oh0 * p->w_out, p->w_out);
            }
        }
    }
}

/*
 * The im2col path of sample i, on every core of a fork (or on one): per chunk and group,
 * the cores build the im2col's taps, then (after a barrier) each widens and multiplies
 * its own panels of positions; a second barrier before the next chunk's im2col.
 */
typedef struct {
    const conv_fw_t *f;
    uint32_t i;
    int32_t *acc;
} fw_job_t;

static void fw_im2col(void *arg) {
    const fw_job_t *j = arg;
    const conv_fw_t *f = j->f;
    const ep_conv2d_params_t *p = &f->p;
    const uint32_t G = p->groups, cog = p->c_out / G, cig = p->c_in / G, CHR = f->CHP / p->w_out;
    const int8_t *x = ep_ctx_s8(f->c, f->nd->in[0]) + j->i * p->c_in * f->HW;
    uint32_t t0, t1;
    ep_par_range(f->J, &t0, &t1);
    for (uint32_t oh0 = 0; oh0 < p->h_out; oh0 += CHR) {
        const uint32_t nr = oh0 + CHR <= p->h_out ? CHR : p->h_out - oh0, pc = nr * p->w_out;
        uint32_t q0, q1;
        ep_par_range_unit(pc, EP_Q8_PANEL, &q0, &q1);
        for (uint32_t g = 0; g < G; g++) {
            /* positions as A rows (4 outputs of one channel per tile), W as B rows */
            im2col8(p, x + g * cig * f->HW, cig, oh0, nr, f->cols8, t0, t1);
            ep_par_barrier();
            if (q0 < q1) {
                ep_q8_pack_panels(f->cols8 + q0, q1 - q0, f->J, 1, pc, f->cols + q0 * f->Jp, f->Jp);
                ep_q8_dot_s16_core(q1 - q0, cog, f->Jp, f->cols + q0 * f->Jp, f->w16 + g * cog * f->Jp,
                                   j->acc + g * cog * f->P + oh0 * p->w_out + q0, f->P, true);
            }
            ep_par_barrier();
        }
    }
}

/* Output channels of groups [g0, g1): Σ over the kernel rows that land inside the input of
 * x's row · W[co][ki], onto the bias already in acc. */
static void fw_col(void *arg, uint32_t g0, uint32_t g1) {
    const fw_job_t *j = arg;
    const conv_fw_t *f = j->f;
    const ep_conv2d_params_t *p = &f->p;
    const uint32_t M = p->c_out / p->groups;
    uint32_t k0, k1;
    col_rows(p, &k0, &k1);
    if (k0 == k1) {
        return;
    }
    const int8_t *x = ep_ctx_s8(f->c, f->nd->in[0]) + j->i * p->c_in * f->HW;
    const uint32_t ih0 = k0 * p->dh - p->pad_top;
    for (uint32_t co = g0 * M; co < g1 * M; co++) {
        ep_q8_rows_mac(x + co / M * f->HW + ih0 * p->w_in, p->dh * p->w_in, k1 - k0, f->w16 + co * p->kh + k0, 1,
                       p->w_in, j->acc + co * f->P);
    }
}

/* acc [c_out][P] = bias + the convolution of sample i. */
static void fw_sample(const conv_fw_t *f, uint32_t i, int32_t *acc) {
    const ep_conv2d_params_t *p = &f->p;
    const uint32_t G = p->groups;
    for (uint32_t co = 0; co < p->c_out; co++) {
        int32_t b0 = 0;
        if (f->nd->n_in == 6) {
            b0 = ep_q8_bias_at(ep_ctx_i32(f->c, f->nd->in[4])[co], ep_q8_ctx_exp(f->c, f->nd->in[5], 0),
                               f->e_x + ep_q8_exp(f->e_w[co]));
        }
        ep_q8_fill32(acc + co * f->P, b0, f->P);
    }
    if (f->d.band != 0) {
        dw_run(fw_direct, f, i, G, acc, (int16_t *)f->w16, f->d);
        return;
    }
    if (f->col) {
        fw_job_t cj = {f, i, acc};
        ep_q8_split(G, 1, ep_q8_team_for((uint64_t)f->P * p->c_out * f->J), fw_col, &cj);
        return;
    }
    const fw_job_t j = {f, i, acc};
    ep_par_fork(ep_q8_team_for((uint64_t)f->P * p->c_out * f->J), fw_im2col, (void *)&j);
}

static void conv2d_q8_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    ep_conv2d_params_t p = ep_conv2d_geom(c->model, nd, nd->in[0], nd->in[2], nd->out[0]);
    p.n = c->n;
    const bool per_sample = nd->iattr[CONV_PER_SAMPLE] != 0;
    const uint32_t J = (p.c_in / p.groups) * p.kh * p.kw, Jp = ep_q8_even(J), P = p.h_out * p.w_out;
    const uint32_t CHP = chunk_positions(&p), acc_n = per_sample ? 1 : p.n;
    int32_t *acc = (int32_t *)(void *)ep_ctx_s8(c, nd->out[2]);
    uint32_t *mags = (uint32_t *)(void *)(acc + acc_n * p.c_out * P);
    int16_t *w16 = (int16_t *)(void *)(mags + (per_sample ? p.c_out : 0)), *cols = w16 + p.c_out * Jp;
    const uint64_t sums = sums_bytes(C_FW, &p, per_sample);
    const conv_fw_t f = {p, c, nd, J, Jp, P, p.h_in * p.w_in, CHP, ep_q8_ctx_exp(c, nd->in[1], 0),
                         ep_ctx_i32(c, nd->in[3]), w16, cols, (int8_t *)(void *)(cols + CHP * Jp),
                         direct_plan(C_FW, &p, scratch_bytes(C_FW, &p, per_sample) - sums), col_path(&p)};
    int8_t *y = ep_ctx_s8(c, nd->out[0]);
    if (f.col) {
        col_weights(&p, ep_ctx_s8(c, nd->in[2]), NULL, 0, w16);
    } else if (f.d.band == 0) {
        ep_q8_pack(ep_ctx_s8(c, nd->in[2]), p.c_out, J, J, 1, NULL, 0, w16, Jp);
    }
    int32_t e_y;
    if (!per_sample) {
        for (uint32_t i = 0; i < p.n; i++) {
            fw_sample(&f, i, acc + i * p.c_out * P);
        }
        e_y = ep_q8_requant(acc, p.n, p.c_out, P, f.e_x, f.e_w, y);
    } else {
        for (uint32_t co = 0; co < p.c_out; co++) {
            mags[co] = 0;
        }
        for (uint32_t i = 0; i < p.n; i++) {
            fw_sample(&f, i, acc);
            ep_q8_acc_mags(acc, 1, p.c_out, P, mags);
        }
        e_y = ep_q8_requant_exp(mags, p.c_out, f.e_x, f.e_w);
        for (uint32_t i = 0; i < p.n; i++) {
            fw_sample(&f, i, acc);
            ep_q8_requant_apply(acc, 1, p.c_out, P, f.e_x, f.e_w, e_y, y + i * p.c_out * P);
        }
    }
    ep_ctx_i32(c, nd->out[1])[0] = e_y;
}

/* What one sample's input-gradient sums need. */
typedef struct {
    ep_conv2d_params_t p;
    const int8_t *dy;
    const int32_t *e_w;
    int32_t e_lo;
    uint32_t J, COgp, P, HW, CHP;
    const int16_t *wt;
    int16_t *dyt;
    int32_t *dcols;
    const int8_t *w;
    dw_plan_t d; /* the direct path (d.band 0: im2col) */
    bool col;    /* the column path (wt: W [c_out][kh], shifted by the folded exponents) */
} conv_bwi_t;

/* acc [c_in][HW] += sample i's input gradient over groups [g0, g1): per band of input rows
 * and output channel, its dy (shifted by the folded weight exponent, spread out by the
 * strides) in a plane padded by the kernel's reach less the conv's padding, correlated
 * with W flipped. */
static void bwi_direct(const void *fv, uint32_t i, int32_t *acc, uint32_t g0, uint32_t g1, int16_t *mem,
                       uint32_t band) {
    const conv_bwi_t *f = fv;
    const ep_conv2d_params_t *p = &f->p;
    const uint32_t M = p->c_out / p->groups, kh = p->kh, kw = p->kw, kwp = ep_q8_even(kw);
    const uint32_t wi = p->w_in + (kwp - 1) * p->dw;
    const int32_t pt = (int32_t)((kh - 1) * p->dh - p->pad_top), pl = (int32_t)((kw - 1) * p->dw - p->pad_left);
    int16_t *k16 = mem, *plane = k16 + kh * kwp;
    for (uint32_t ih0 = 0; ih0 < p->h_in; ih0 += band) {
        const uint32_t nr = ih0 + band <= p->h_in ? band : p->h_in - ih0;
        for (uint32_t co = g0 * M; co < g1 * M; co++) {
            const int8_t *w = f->w + co * kh * kw;
            for (uint32_t u = 0; u < kh; u++) {
                for (uint32_t v = 0; v < kwp; v++) {
                    k16[u * kwp + v] = v < kw ? w[(kh - 1 - u) * kw + (kw - 1 - v)] : 0;
                }
            }
            const int32_t d = ep_q8_exp(f->e_w[co]) - f->e_lo;
            plane16(f->dy + (i * p->c_out + co) * f->P, p->h_out, p->w_out, p->sh, p->sw, pt, pl, ih0,
                    nr - 1 + kh_ext(p), wi, (uint32_t)(d < 0 ? 0 : (d > EP_Q8_SPREAD ? EP_Q8_SPREAD : d)), plane);
            ep_q8_corr_s16(plane, wi, nr, p->w_in, 1, 1, k16, kh, kwp, p->dh, p->dw, acc + co / M * f->HW + ih0 * p->w_in,
                           p->w_in);
        }
    }
}

/*
 * The im2col path of sample i's input gradient, on every core of a fork (or on one): per
 * chunk and group, the cores widen dy's positions, then (barrier) each multiplies its
 * panels of taps into dcols, then (barrier) each scatters the taps landing on its input
 * rows (channel and row) back onto them; a last barrier before the next chunk.
 */
typedef struct {
    const conv_bwi_t *f;
    uint32_t i;
    int32_t *acc;
} bwi_job_t;

static void bwi_im2col(void *arg) {
    const bwi_job_t *jb = arg;
    const conv_bwi_t *f = jb->f;
    const ep_conv2d_params_t p = f->p;
    const uint32_t G = p.groups, cog = p.c_out / G, cig = p.c_in / G, J = f->J, COgp = f->COgp;
    const uint32_t P = f->P, HW = f->HW, CHR = f->CHP / p.w_out;
    int16_t *dyt = f->dyt;
    int32_t *dcols = f->dcols;
    uint32_t t0, t1, u0, u1;
    ep_par_range_unit(J, EP_Q8_PANEL, &t0, &t1);
    ep_par_range(cig * p.h_in, &u0, &u1); /* input rows ci·H + ih */
    for (uint32_t oh0 = 0; oh0 < p.h_out; oh0 += CHR) {
        const uint32_t nr = oh0 + CHR <= p.h_out ? CHR : p.h_out - oh0, pc = nr * p.w_out;
        uint32_t q0, q1;
        ep_par_range(pc, &q0, &q1);
        for (uint32_t g = 0; g < G; g++) {
            const uint32_t co0 = g * cog;
            if (q0 < q1) {
                ep_q8_pack(f->dy + (jb->i * p.c_out + co0) * P + oh0 * p.w_out + q0, q1 - q0, cog, 1, P, f->e_w + co0,
                           f->e_lo, dyt + q0 * COgp, COgp);
            }
            ep_par_barrier();
            if (t0 < t1) { /* dcols [pc][J] */
                ep_q8_dot_s16_core(t1 - t0, pc, COgp, f->wt + g * J * COgp + t0 * COgp, dyt, dcols + t0, J, false);
            }
            ep_par_barrier();
            /* col2im: scatter-add every tap back onto its input element */
            int32_t *ax = jb->acc + g * cig * HW;
            uint32_t j = 0;
            for (uint32_t ci = 0; ci < cig; ci++) {
                for (uint32_t ki = 0; ki < p.kh; ki++) {
                    for (uint32_t kj = 0; kj < p.kw; kj++, j++) {
                        const int32_t *dc = dcols + j;
                        for (uint32_t r = 0; r < nr; r++, dc += p.w_out * J) {
                            const int32_t ih = (int32_t)((oh0 + r) * p.sh + ki * p.dh) - (int32_t)p.pad_top;
                            if (ih < 0 || ih >= (int32_t)p.h_in || ci * p.h_in + (uint32_t)ih < u0 ||
                                ci * p.h_in + (uint32_t)ih >= u1) {
                                continue;
                            }
                            uint32_t lo, hi;
                            valid_cols(&p, kj, &lo, &hi);
                            if (lo < hi) {
                                int32_t *ar = ax + ci * HW + (uint32_t)ih * p.w_in +
                                              (uint32_t)((int32_t)(lo * p.sw + kj * p.dw) - (int32_t)p.pad_left);
                                const int32_t *d = dc + lo * J;
                                for (uint32_t ow = lo; ow < hi; ow++, ar += p.sw, d += J) {
                                    *ar += *d;
                                }
                            }
                        }
                    }
                }
            }
            ep_par_barrier();
        }
    }
}

/* Input rows ih = ki·dh − pad_top of groups [g0, g1): Σ over the group's channels of dy ·
 * W[co][ki]; rows no kernel row lands on stay 0. */
static void bwi_col(void *arg, uint32_t g0, uint32_t g1) {
    const bwi_job_t *j = arg;
    const conv_bwi_t *f = j->f;
    const ep_conv2d_params_t *p = &f->p;
    const uint32_t M = p->c_out / p->groups;
    uint32_t k0, k1;
    col_rows(p, &k0, &k1);
    for (uint32_t g = g0; g < g1; g++) {
        for (uint32_t ki = k0; ki < k1; ki++) {
            const uint32_t ih = ki * p->dh - p->pad_top;
            ep_q8_rows_mac(f->dy + (j->i * p->c_out + g * M) * f->P, f->P, M, f->wt + g * M * p->kh + ki, p->kh,
                           p->w_in, j->acc + g * f->HW + ih * p->w_in);
        }
    }
}

/* acc [c_in][HW] = the input-gradient sums of sample i (dy · W, scattered back by col2im). */
static void bwi_sample(const conv_bwi_t *f, uint32_t i, int32_t *acc) {
    const ep_conv2d_params_t *p = &f->p;
    ep_q8_fill32(acc, 0, p->c_in * f->HW);
    if (f->d.band != 0) {
        dw_run(bwi_direct, f, i, p->groups, acc, (int16_t *)f->wt, f->d);
        return;
    }
    if (f->col) {
        bwi_job_t cj = {f, i, acc};
        ep_q8_split(p->groups, 1, ep_q8_team_for((uint64_t)f->P * p->c_out * f->J), bwi_col, &cj);
        return;
    }
    const bwi_job_t j = {f, i, acc};
    ep_par_fork(ep_q8_team_for((uint64_t)f->P * p->c_out * f->J), bwi_im2col, (void *)&j);
}

static void conv2d_q8_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    ep_conv2d_params_t p = ep_conv2d_geom(c->model, nd, nd->out[0], nd->in[2], nd->in[0]);
    p.n = c->n;
    const bool per_sample = nd->iattr[CONV_PER_SAMPLE] != 0;
    const uint32_t G = p.groups, cog = p.c_out / G, cig = p.c_in / G, J = cig * p.kh * p.kw, COgp = ep_q8_even(cog);
    const uint32_t HW = p.h_in * p.w_in, CHP = chunk_positions(&p), acc_n = per_sample ? 1 : p.n;
    const int32_t *e_w = ep_ctx_i32(c, nd->in[3]);
    int32_t *acc = (int32_t *)(void *)ep_ctx_s8(c, nd->out[2]);
    int16_t *wt = (int16_t *)(void *)(acc + acc_n * p.c_in * HW), *dyt = wt + G * J * COgp;
    const conv_bwi_t f = {p, ep_ctx_s8(c, nd->in[0]), e_w, ep_q8_weight_exp_lo(e_w, p.c_out), J, COgp,
                          p.h_out * p.w_out, HW, CHP, wt, dyt, (int32_t *)(void *)(dyt + CHP * COgp),
                          ep_ctx_s8(c, nd->in[2]),
                          direct_plan(C_BWI, &p, scratch_bytes(C_BWI, &p, per_sample) - sums_bytes(C_BWI, &p, per_sample)),
                          col_path(&p)};
    const int32_t e_base = ep_q8_ctx_exp(c, nd->in[1], 0) + f.e_lo;
    int8_t *dx = ep_ctx_s8(c, nd->out[0]);
    if (f.col) { /* dy · (W · 2^d): the same products as (dy · 2^d) · W */
        col_weights(&p, ep_ctx_s8(c, nd->in[2]), e_w, f.e_lo, wt);
    }
    for (uint32_t g = 0; f.d.band == 0 && !f.col && g < G; g++) { /* Wᵀ per group: [J][cog], as A panels */
        ep_q8_pack_panels(ep_ctx_s8(c, nd->in[2]) + g * cog * J, J, cog, 1, J, wt + g * J * COgp, COgp);
    }
    int32_t e_dx;
    if (!per_sample) {
        for (uint32_t i = 0; i < p.n; i++) {
            bwi_sample(&f, i, acc + i * p.c_in * HW);
        }
        e_dx = ep_q8_requant(acc, p.n * p.c_in * HW, 1, 1, e_base, NULL, dx);
    } else {
        uint32_t mag = 0;
        for (uint32_t i = 0; i < p.n; i++) {
            bwi_sample(&f, i, acc);
            ep_q8_acc_mags(acc, 1, 1, p.c_in * HW, &mag);
        }
        e_dx = ep_q8_requant_exp(&mag, 1, e_base, NULL);
        for (uint32_t i = 0; i < p.n; i++) {
            bwi_sample(&f, i, acc);
            ep_q8_requant_apply(acc, 1, 1, p.c_in * HW, e_base, NULL, e_dx, dx + i * p.c_in * HW);
        }
    }
    ep_ctx_i32(c, nd->out[1])[0] = e_dx;
}

/* What the parameter gradient's direct path needs. */
typedef struct {
    ep_conv2d_params_t p;
    const int8_t *dy, *x;
    int32_t *acc;
    uint32_t HW, P, J;
} conv_bwp_t;

/* dW rows of groups [g0, g1) (acc zeroed): per sample and band of output rows, x's plane
 * correlated with each output's dy rows. */
static void bwp_direct(const void *fv, uint32_t i0, int32_t *acc, uint32_t g0, uint32_t g1, int16_t *mem,
                       uint32_t band) {
    const conv_bwp_t *f = fv;
    const ep_conv2d_params_t *p = &f->p;
    const uint32_t M = p->c_out / p->groups, vp = ep_q8_even(p->w_out), wi = (p->kw - 1) * p->dw + (vp - 1) * p->sw + 1;
    int16_t *dyb = mem, *plane = dyb + band * vp;
    (void)i0;
    for (uint32_t i = 0; i < p->n; i++) {
        for (uint32_t oh0 = 0; oh0 < p->h_out; oh0 += band) {
            const uint32_t nr = oh0 + band <= p->h_out ? band : p->h_out - oh0;
            for (uint32_t g = g0; g < g1; g++) {
                plane16(f->x + (i * p->c_in + g) * f->HW, p->h_in, p->w_in, 1, 1, (int32_t)p->pad_top,
                        (int32_t)p->pad_left, oh0 * p->sh, (nr - 1) * p->sh + kh_ext(p), wi, 0, plane);
                for (uint32_t co = g * M; co < (g + 1) * M; co++) {
                    plane16(f->dy + (i * p->c_out + co) * f->P, p->h_out, p->w_out, 1, 1, 0, 0, oh0, nr, vp, 0, dyb);
                    ep_q8_corr_s16(plane, wi, p->kh, p->kw, p->dh, p->dw, dyb, nr, vp, p->sh, p->sw, acc + co * f->J,
                                   p->kw);
                }
            }
        }
    }
}

/* dW [co][ki] of groups [g0, g1) (acc zeroed): Σ over the samples of dy[co] · x's input
 * row ki·dh − pad_top, one dot product of whole rows each. */
static void bwp_col(void *arg, uint32_t g0, uint32_t g1) {
    const conv_bwp_t *f = arg;
    const ep_conv2d_params_t *p = &f->p;
    const uint32_t M = p->c_out / p->groups;
    uint32_t k0, k1;
    col_rows(p, &k0, &k1);
    for (uint32_t i = 0; i < p->n; i++) {
        for (uint32_t co = g0 * M; co < g1 * M; co++) {
            const int8_t *d = f->dy + (i * p->c_out + co) * f->P, *x = f->x + (i * p->c_in + co / M) * f->HW;
            for (uint32_t ki = k0; ki < k1; ki++) {
                f->acc[co * f->J + ki] += ep_q8_dot_s8(d, x + (ki * p->dh - p->pad_top) * p->w_in, p->w_in);
            }
        }
    }
}

/*
 * The parameter gradient's im2col path, on every core of a fork (or on one): per sample,
 * chunk and group, each core builds and widens its own panels of taps and its share of
 * dy's rows, then (barrier) multiplies its taps' panels by all of dy (its dW columns);
 * a second barrier before the next chunk. The first chunk of a group overwrites its sums.
 */
typedef struct {
    ep_conv2d_params_t p;
    const int8_t *dy, *x;
    int32_t *acc;
    int16_t *dy16, *colt;
    int8_t *cols8;
    uint32_t J, P, HW, CHR;
} bwp_im2col_t;

static void bwp_im2col(void *arg) {
    const bwp_im2col_t *b = arg;
    const ep_conv2d_params_t *p = &b->p;
    const uint32_t G = p->groups, cog = p->c_out / G, cig = p->c_in / G, J = b->J;
    uint32_t t0, t1, c0, c1;
    ep_par_range_unit(J, EP_Q8_PANEL, &t0, &t1);
    ep_par_range(cog, &c0, &c1);
    for (uint32_t i = 0; i < p->n; i++) {
        for (uint32_t oh0 = 0; oh0 < p->h_out; oh0 += b->CHR) {
            const uint32_t nr = oh0 + b->CHR <= p->h_out ? b->CHR : p->h_out - oh0, pc = nr * p->w_out;
            const uint32_t pcp = ep_q8_even(pc);
            for (uint32_t g = 0; g < G; g++) {
                /* taps as A rows (4 outputs of one channel per tile), dy as B rows */
                im2col8(p, b->x + (i * p->c_in + g * cig) * b->HW, cig, oh0, nr, b->cols8, t0, t1);
                if (t0 < t1) {
                    ep_q8_pack_panels(b->cols8 + t0 * pc, t1 - t0, pc, pc, 1, b->colt + t0 * pcp, pcp);
                }
                if (c0 < c1) {
                    ep_q8_pack(b->dy + (i * p->c_out + g * cog + c0) * b->P + oh0 * p->w_out, c1 - c0, pc, b->P, 1, NULL,
                               0, b->dy16 + c0 * pcp, pcp);
                }
                ep_par_barrier();
                if (t0 < t1) {
                    ep_q8_dot_s16_core(t1 - t0, cog, pcp, b->colt + t0 * pcp, b->dy16, b->acc + g * cog * J + t0, J,
                                       i != 0 || oh0 != 0);
                }
                ep_par_barrier();
            }
        }
    }
}

static void conv2d_q8_bw_param(const ep_ctx_t *c, const ep_node_t *nd) {
    const bool f32 = nd->n_out == 3;
    ep_conv2d_params_t p = ep_conv2d_geom(c->model, nd, nd->in[2], nd->out[0], nd->in[0]);
    p.n = c->n;
    const uint32_t G = p.groups, cog = p.c_out / G, cig = p.c_in / G, J = cig * p.kh * p.kw;
    const uint32_t P = p.h_out * p.w_out, HW = p.h_in * p.w_in, CHP = chunk_positions(&p), CHR = CHP / p.w_out;
    const uint32_t CHPp = ep_q8_even(CHP);
    const int32_t e_dy = ep_q8_ctx_exp(c, nd->in[1], 0), e_x = ep_q8_ctx_exp(c, nd->in[3], 0);
    const int8_t *dy = ep_ctx_s8(c, nd->in[0]), *x = ep_ctx_s8(c, nd->in[2]);
    int8_t *scratch = ep_ctx_s8(c, nd->out[f32 ? 2 : 3]);
    int32_t *acc = ep_ctx_i32(c, nd->out[0]); /* the sums in dW's own bytes, f32 mode too */
    int16_t *colt = (int16_t *)(void *)scratch + cog * CHPp;
    int8_t *cols8 = (int8_t *)(void *)(colt + J * CHPp);

    const dw_plan_t d = direct_plan(C_BWP, &p, scratch_bytes(C_BWP, &p, false));
    const bool col = col_path(&p);
    if (p.n == 0 || d.band != 0 || col) { /* no chunk to overwrite them */
        ep_q8_fill32(acc, 0, p.c_out * J);
    }
    if (d.band != 0) {
        const conv_bwp_t f = {p, dy, x, acc, HW, P, J};
        dw_run(bwp_direct, &f, 0, G, acc, (int16_t *)(void *)scratch, d);
    } else if (col) {
        const conv_bwp_t f = {p, dy, x, acc, HW, P, J};
        ep_q8_split(G, 1, ep_q8_team_for((uint64_t)p.n * P * p.c_out * J), bwp_col, (void *)&f);
    }
    if (d.band == 0 && !col) {
        const bwp_im2col_t b = {p, dy, x, acc, (int16_t *)(void *)scratch, colt, cols8, J, P, HW, CHR};
        ep_par_fork(ep_q8_team_for((uint64_t)p.n * P * p.c_out * J), bwp_im2col, (void *)&b);
    }
    if (f32) {
        ep_q8_acc_to_f32(p.c_out * J, acc, e_dy + e_x, ep_ctx_f32(c, nd->out[0])); /* in place */
    } else {
        int32_t *eg = ep_ctx_i32(c, nd->out[2]);
        eg[0] = e_dy + e_x;
        eg[1] = e_dy;
    }
    for (uint32_t co = 0; co < p.c_out; co++) {
        int32_t s = 0; /* |s| ≤ 128 · n · P < 2^31 */
        for (uint32_t i = 0; i < p.n; i++) {
            s += ep_q8_sum_s8(dy + (i * p.c_out + co) * P, P);
        }
        if (f32) {
            ep_q8_acc_to_f32(1, &s, e_dy, ep_ctx_f32(c, nd->out[1]) + co);
        } else {
            ep_ctx_i32(c, nd->out[1])[co] = s;
        }
    }
}

const ep_op_t ep_op_conv2d_q8 = {
    .name = "conv2d_q8",
    .prepare = conv2d_q8_prepare,
    .fn = {[EP_FN_FW] = conv2d_q8_fw, [EP_FN_BW_INPUT] = conv2d_q8_bw_input, [EP_FN_BW_PARAM] = conv2d_q8_bw_param},
};
