/*
 * ep_conv_pool.h — f32 kernels of the "conv and pooling" family: Conv2d (and Conv1d
 * as H = 1, kh = 1), AvgPool2d, MaxPool2d and global average pooling, forward and
 * backward.
 *
 * Plain kernels only (no registry entries): each takes a params struct of uint32_t
 * shape fields and pointers. Conventions (see also ep_ops.h):
 *   - batched tensors are sample-major: n samples, each sample contiguous; feature
 *     maps are [C][H][W] per sample (NCHW); 1-D signals [C][L] are H = 1;
 *   - fw writes its outputs; bw_input OVERWRITES dx; bw_param OVERWRITES the
 *     parameter gradients with their sum over the batch;
 *   - pointers are 4-byte aligned; buffers declared restrict must be disjoint
 *     (no aliasing of any kind, not even exact, unless the kernel says otherwise);
 *   - no kernel here needs scratch memory, allocates, or keeps static state, so
 *     none exports a _scratch_bytes();
 *   - single precision throughout; every tensor's element count (n·C·H·W,
 *     C_out·(C_in/groups)·kh·kw, ...) is below 2^31 (the caller guarantees it: the
 *     conv kernels walk dy backwards with signed 32-bit offsets).
 * Every kernel trusts its params: call ep_conv2d_params_ok() /
 * ep_pool2d_params_ok() (or equivalent checks in prepare()) first.
 */
#ifndef EP_CONV_POOL_H
#define EP_CONV_POOL_H

#include <stdbool.h>
#include <stdint.h>

#include "ep_runtime.h" /* ep_model_t, ep_node_t: ep_conv2d_geom reads a node */

/**
 * Output length along one axis of a conv/pool window:
 *   out = floor((in + pad_lo + pad_hi - dil·(k - 1) - 1) / stride) + 1   (PyTorch, floor mode)
 * or 0 if the dilated window does not fit in the padded input, or any of
 * in, k, stride, dil is 0.
 */
static inline uint32_t ep_conv_out_len(uint32_t in, uint32_t pad_lo, uint32_t pad_hi, uint32_t k,
                                       uint32_t stride, uint32_t dil) {
    if (in == 0 || k == 0 || stride == 0 || dil == 0) {
        return 0;
    }
    const uint64_t padded = (uint64_t)in + pad_lo + pad_hi;
    const uint64_t extent = (uint64_t)dil * (k - 1) + 1;
    if (padded < extent) {
        return 0;
    }
    const uint64_t span = padded - extent;
    if (span > 0xFFFFFFFFu) {
        return 0;
    }
    return (uint32_t)span / stride + 1; /* 32-bit division: no libgcc call on the M4 */
}

/* ------------------------------------------------------------------------- */
/* Conv2d                                                                    */
/* ------------------------------------------------------------------------- */

/**
 * Shape and hyper-parameters of a 2-D convolution (PyTorch nn.Conv2d semantics,
 * zero padding, floor mode), with padding given per side:
 *   x  [n][c_in][h_in][w_in]      y  [n][c_out][h_out][w_out]
 *   w  [c_out][c_in/groups][kh][kw] (PyTorch layout)      b [c_out] (optional)
 * Requirements (ep_conv2d_params_ok() checks them): every field ≥ 1 except the
 * pads (≥ 0); groups divides c_in and c_out; h_out == ep_conv_out_len(h_in,
 * pad_top, pad_bottom, kh, sh, dh) and likewise w_out with pad_left, pad_right,
 * kw, sw, dw. The kernels read pad_top and pad_left; pad_bottom and pad_right
 * only determine h_out and w_out.
 * Conv1d over [n][C][L] is h_in = h_out = kh = sh = dh = 1, pad_top = pad_bottom = 0.
 */
typedef struct {
    uint32_t n;                       /**< samples */
    uint32_t c_in, h_in, w_in;        /**< input feature map per sample */
    uint32_t c_out, h_out, w_out;     /**< output feature map per sample */
    uint32_t kh, kw;                  /**< kernel */
    uint32_t sh, sw;                  /**< stride */
    uint32_t pad_top, pad_bottom, pad_left, pad_right; /**< zero padding per side */
    uint32_t dh, dw;                  /**< dilation */
    uint32_t groups;                  /**< 1, c_in (depthwise), or any common divisor */
} ep_conv2d_params_t;

/** True if p satisfies every requirement listed at ep_conv2d_params_t. */
bool ep_conv2d_params_ok(const ep_conv2d_params_t *p);

/**
 * The kernel shape of a CONV2D or CONV2D_Q8 node (n = 1; no checks): x [C_in][H][W] or
 * [C_in][L], w [C_out][C_in/groups][kh][kw] or [..][k], y [C_out][..], and the iattrs
 * 0-1 stride, 2-5 padding top/bottom/left/right, 6-7 dilation, 8 groups.
 */
ep_conv2d_params_t ep_conv2d_geom(const ep_model_t *m, const ep_node_t *nd, uint16_t x, uint16_t w, uint16_t y);

/**
 * Conv2d forward. With G = groups, Ci = c_in/G, Co = c_out/G and g = oc / Co:
 *   y[i][oc][oy][ox] = b[oc] + Σ_{ci<Ci} Σ_{ky<kh} Σ_{kx<kw}
 *       w[oc][ci][ky][kx] · x[i][g·Ci + ci][oy·sh + ky·dh − pad_top][ox·sw + kx·dw − pad_left]
 * where x outside [0, h_in) × [0, w_in) is 0 (those terms are skipped, not added).
 * b may be NULL (no bias: the sum starts from 0).
 * @param[in]  x [n][c_in][h_in][w_in]
 * @param[in]  w [c_out][Ci][kh][kw]
 * @param[in]  b [c_out] or NULL
 * @param[out] y [n][c_out][h_out][w_out]; must not overlap x, w or b
 * Paths (no test or division per multiply-accumulate; every MAC is one fmaf, a
 * single VFMA on the Cortex-M4F): 1x1 / stride 1 / no padding ("pointwise") is a
 * blocked matrix product, 4 output channels × 4 pixels in 16 register
 * accumulators, reduction over Ci. Otherwise direct convolution: valid kernel rows
 * are computed once per output row, the interior columns (every kernel column
 * inside the input) once per call; interior tiles are 4 output channels × 4
 * columns (1 × 8 and 1 × 4 when a group has < 4 output channels left, e.g.
 * depthwise); border columns go column by column with their valid tap range, or,
 * for wide kernels (enough work per block), in blocks whose common taps run as a
 * tile and whose per-column leftover taps are added after it.
 */
void ep_conv2d_fw_f32(const ep_conv2d_params_t *p, const float *restrict x, const float *restrict w,
                      const float *restrict b, float *restrict y);

/**
 * Conv2d input gradient (overwrites dx):
 *   dx[i][ic][iy][ix] = Σ over (oc in ic's group, ky, kx, oy, ox) with
 *       oy·sh + ky·dh − pad_top = iy and ox·sw + kx·dw − pad_left = ix
 *       of w[oc][ic − g·Ci][ky][kx] · dy[i][oc][oy][ox]
 * (0 where no output window covers the input element, e.g. columns that a
 * stride > kernel skips).
 * @param[in]  dy [n][c_out][h_out][w_out]
 * @param[in]  w  [c_out][Ci][kh][kw]
 * @param[out] dx [n][c_in][h_in][w_in]; must not overlap dy or w
 * Reads neither x nor y. Pointwise: blocked matrix product (4 input channels × 4
 * pixels, reduction over Co). Otherwise the same direct-convolution machinery as
 * fw, run over dy with the kernel mirrored (taps walk dy backwards) and the channel
 * roles swapped (4 input channels × 4 columns per tile, reduction over Co). A
 * stride s > 1 splits each axis into s phases (input positions i ≡ φ mod s): the
 * taps reaching a phase are an arithmetic progression of kernel indices, so each
 * phase is a stride-1 problem of its own; phases no tap reaches get dx = 0.
 */
void ep_conv2d_bw_input_f32(const ep_conv2d_params_t *p, const float *restrict dy,
                            const float *restrict w, float *restrict dx);

/**
 * Conv2d parameter gradients summed over the batch (overwrite, no accumulation):
 *   dw[oc][ci][ky][kx] = Σ_i Σ_{oy,ox} dy[i][oc][oy][ox] ·
 *                        x[i][g·Ci + ci][oy·sh + ky·dh − pad_top][ox·sw + kx·dw − pad_left]
 *                        (terms with x in the padding skipped)
 *   db[oc]             = Σ_i Σ_{oy,ox} dy[i][oc][oy][ox]
 * @param[in]  dy [n][c_out][h_out][w_out]
 * @param[in]  x  [n][c_in][h_in][w_in], the forward input
 * @param[out] dw [c_out][Ci][kh][kw]; must not overlap dy, x or db
 * @param[out] db [c_out], or NULL when the layer has no bias; must not overlap dy, x or dw
 * Pointwise: 4 output × 4 input channels in 16 accumulators, reduction over the
 * batch and the pixels. Otherwise, per tap (ky, kx) the valid output rows and
 * columns are computed once, and a tile of 4 output × 4 input channels (4 × 1,
 * 1 × 4, 1 × 1 for the remainders) reduces over the batch and that window; with a
 * single input channel left (Ci = 1 layers, depthwise) 4 adjacent taps of a kernel
 * row share each dy load instead (4 × 4 or 1 × 4 taps), over the columns valid for
 * all 4, the rest added per tap. db sums dy in 4 interleaved partial sums.
 */
void ep_conv2d_bw_param_f32(const ep_conv2d_params_t *p, const float *restrict dy,
                            const float *restrict x, float *restrict dw, float *restrict db);

/* ------------------------------------------------------------------------- */
/* AvgPool2d / MaxPool2d                                                      */
/* ------------------------------------------------------------------------- */

/**
 * Shape of a 2-D pooling over [n][c][h_in][w_in] -> [n][c][h_out][w_out], per
 * channel, floor mode, no dilation, padding per side.
 * Requirements (ep_pool2d_params_ok() checks them): n, c, h_in, w_in, kh, kw, sh,
 * sw ≥ 1; h_out == ep_conv_out_len(h_in, pad_top, pad_bottom, kh, sh, 1), w_out
 * likewise (≥ 1). Windows lying entirely in the padding (possible only when a pad
 * ≥ its kernel size, which PyTorch forbids) are defined to output 0 and pass no
 * gradient.
 */
typedef struct {
    uint32_t n, c;                    /**< samples, channels */
    uint32_t h_in, w_in;
    uint32_t h_out, w_out;
    uint32_t kh, kw;                  /**< window */
    uint32_t sh, sw;                  /**< stride */
    uint32_t pad_top, pad_bottom, pad_left, pad_right;
    uint32_t count_include_pad;       /**< avg only: nonzero = divide by kh·kw (PyTorch default);
                                           0 = divide by the number of window elements inside the input */
} ep_pool2d_params_t;

/** True if p satisfies every requirement listed at ep_pool2d_params_t. */
bool ep_pool2d_params_ok(const ep_pool2d_params_t *p);

/* The pooling nodes' geometry from iattrs [kh kw sh sw pad×4 count_include_pad] and the
 * x, y tensors (n = 1), and their shared checks over x (or dx) and y (or dy) of `dtype`
 * (ep_pool2d.c; AVGPOOL2D_Q8 in ep_q8_pool.c uses them with s8). */
ep_pool2d_params_t ep_pool2d_geom(const ep_model_t *m, const ep_node_t *nd, uint16_t x, uint16_t y);
ep_status_t ep_pool2d_check(const ep_model_t *m, const ep_node_t *nd, uint16_t x, uint16_t y, bool is_max,
                            uint8_t dtype, const char **why);

/**
 * Window (oy, ox): the input rows [*y0, *y1) and columns [*x0, *x1) it covers, and the
 * average's divisor *d (0.0f for a window wholly in the padding), as the kernels below
 * compute them.
 */
void ep_pool2d_window(const ep_pool2d_params_t *p, uint32_t oy, uint32_t ox, uint32_t *y0, uint32_t *y1,
                      uint32_t *x0, uint32_t *x1, float *d);

/**
 * AvgPool2d forward: y[i][c][oy][ox] = (Σ of x over the window's elements inside the
 * input) / D, D = kh·kw if count_include_pad else the number of those elements
 * (padding is zero). One division per output (as PyTorch).
 * @param[in]  x [n][c][h_in][w_in]
 * @param[out] y [n][c][h_out][w_out]; must not overlap x
 */
void ep_avgpool2d_fw_f32(const ep_pool2d_params_t *p, const float *restrict x, float *restrict y);

/**
 * AvgPool2d input gradient (overwrites dx): every input element of window (oy, ox)
 * receives dy[i][c][oy][ox] / D (D as in fw); overlapping windows add up.
 * @param[in]  dy [n][c][h_out][w_out]
 * @param[out] dx [n][c][h_in][w_in]; must not overlap dy
 * Reads neither x nor y.
 */
void ep_avgpool2d_bw_input_f32(const ep_pool2d_params_t *p, const float *restrict dy,
                               float *restrict dx);

/**
 * MaxPool2d forward: y[i][c][oy][ox] = max of x over the window's elements inside the
 * input (padding is never selected). The scan runs row by row, left to right,
 * starting from −∞, and takes an element if it is > the running max or is NaN —
 * PyTorch's rule: ties keep the first element in scan order, a NaN wins (the last
 * NaN of the window when there are several).
 * @param[in]  x [n][c][h_in][w_in]
 * @param[out] y [n][c][h_out][w_out]; must not overlap x
 */
void ep_maxpool2d_fw_f32(const ep_pool2d_params_t *p, const float *restrict x, float *restrict y);

/**
 * MaxPool2d input gradient (overwrites dx): dy[i][c][oy][ox] goes to the element fw
 * selected in window (oy, ox); elements selected by several windows add up.
 * SAVED STATE: none. The selection is recomputed from the forward input x by the
 * very same scan as fw (same order, same comparisons), so it is identical to the
 * forward decision; no index tensor is saved (0 bytes, at the cost of keeping x
 * alive until the backward pass and re-running the comparisons).
 * @param[in]  dy [n][c][h_out][w_out]
 * @param[in]  x  [n][c][h_in][w_in], the forward input
 * @param[out] dx [n][c][h_in][w_in]; must not overlap dy or x
 */
void ep_maxpool2d_bw_input_f32(const ep_pool2d_params_t *p, const float *restrict dy,
                               const float *restrict x, float *restrict dx);

/* ------------------------------------------------------------------------- */
/* Global average pooling                                                    */
/* ------------------------------------------------------------------------- */

/** [n][c][hw] -> [n][c]; hw = H·W of the feature map (any H, W with that product). All ≥ 1. */
typedef struct {
    uint32_t n, c, hw;
} ep_global_avgpool_params_t;

/**
 * Global average pooling forward: y[i][c] = (Σ_{j<hw} x[i][c][j]) / hw.
 * The sum runs in 4 interleaved partial sums (j mod 4), added at the end; one division.
 * @param[in]  x [n][c][hw]
 * @param[out] y [n][c]; must not overlap x
 */
void ep_global_avgpool_fw_f32(const ep_global_avgpool_params_t *p, const float *restrict x,
                              float *restrict y);

/**
 * Global average pooling input gradient (overwrites dx): dx[i][c][j] = dy[i][c] / hw.
 * Reads neither x nor y.
 * @param[in]  dy [n][c]
 * @param[out] dx [n][c][hw]; must not overlap dy
 */
void ep_global_avgpool_bw_input_f32(const ep_global_avgpool_params_t *p, const float *restrict dy,
                                    float *restrict dx);

#endif /* EP_CONV_POOL_H */
