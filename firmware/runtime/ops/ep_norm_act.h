/*
 * ep_norm_act.h — f32 kernels of the "normalisation and activations" family:
 * BatchNorm (train and eval), LayerNorm, GroupNorm, the elementwise activations
 * ReLU6, ELU, GELU (exact erf form), sigmoid and tanh, and Dropout.
 *
 * Plain kernels only (no registry entries): each takes a params struct of uint32_t
 * shape fields and float hyper-parameters, and pointers. Conventions (see also
 * ep_ops.h):
 *   - batched tensors are sample-major: n samples, each contiguous; feature maps
 *     are [C][H][W] per sample (NCHW) and only HW = H·W matters here, so
 *     BatchNorm1d over [C][L] is hw = L and over [C] features is hw = 1;
 *   - fw writes its outputs; bw_input OVERWRITES dx; bw_param OVERWRITES the
 *     parameter gradients with their sum over the batch;
 *   - pointers are 4-byte aligned (the dropout mask: 1-byte aligned); parameters
 *     declared restrict must be disjoint from every other buffer of the call;
 *     where a kernel allows exact aliasing (same pointer, same extent) its
 *     documentation says so; partial overlap is never allowed;
 *   - no kernel here needs scratch memory, allocates, or keeps static state, so
 *     none exports a _scratch_bytes();
 *   - single precision throughout; element counts (n·C·HW, rows·D) fit in uint32_t;
 *     every shape field is ≥ 1 (the caller guarantees it, as prepare() would).
 *
 * Saved state ("saved" below) is the smallest thing backward needs beyond the
 * tensors that exist anyway: per normalised set, its mean and inverse standard
 * deviation, stored as two consecutive arrays [mean…][inv_std…]. Backward
 * recomputes x̂ = (x − mean)·inv_std from the forward input x, so x must be kept
 * for backward: a normalisation fw runs in place only when its backward gets x
 * from elsewhere (an int8 program dequantizes it again from its codes,
 * host/passes.py) or there is no backward.
 *
 * Numerics of every mean/variance: the mean is x₀ + Σ(x − x₀)/m with x₀ the first
 * element of the set (shifted data: the sum adds deviations, not the offset, so
 * data of mean 1000 and std 1 keep their precision), the biased variance is the
 * corrected two-pass formula (Σ(x − mean)² − (Σ(x − mean))²/m)/m (Chan, Golub &
 * LeVeque), never the cancelling E[x²] − E[x]². Sums use 4 independent partial
 * accumulators over contiguous memory.
 */
#ifndef EP_NORM_ACT_H
#define EP_NORM_ACT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "ep_runtime.h"

/* ------------------------------------------------------------------------- */
/* Shared reductions (defined in ep_batchnorm.c, used by all three norms)     */
/* ------------------------------------------------------------------------- */

/**
 * Moments of the set of reps·len values x[r·stride + j] (r < reps, j < len; reps,
 * len ≥ 1): *mean and the biased *var, by the shifted-mean / corrected two-pass
 * scheme described at the top of this header. var ≥ 0 always.
 */
void ep_norm_moments_f32(const float *x, uint32_t reps, uint32_t len, uint32_t stride, float *mean,
                         float *var);

/**
 * Over the same set: *sdy = Σ dy, *sdyx = Σ dy·(x − mean) (dy laid out like x).
 */
void ep_norm_dsums_f32(const float *dy, const float *x, uint32_t reps, uint32_t len, uint32_t stride,
                       float mean, float *sdy, float *sdyx);

/*
 * The bodies of the two reductions, for ep_norm_moments_f32 / ep_norm_dsums_f32 and
 * for the int8 batch norm (ep_q8_norm.c), which reads its operands from int8
 * codes. Both instantiate the same loops, so an int8 node sums the same values in
 * the same order as DEQUANTIZE followed by the f32 node: bit for bit the same.
 * LX(p, j) / LG(p, j) load element j of the row at p as a float; the body uses
 * x, dy, reps, len, stride, mean (dsums) and writes *mean, *var or *sdy, *sdyx.
 */
#define EP_NORM_MOMENTS_BODY(T, LX)                                                   \
    const float x0 = LX(x, 0);                                                        \
    const float m_ = (float)reps * (float)len;                                        \
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;                                 \
    for (uint32_t r = 0; r < reps; r++) {                                             \
        const T *xr = x + r * stride;                                                 \
        uint32_t j = 0;                                                               \
        for (; j + 4 <= len; j += 4) {                                                \
            s0 += LX(xr, j) - x0;                                                     \
            s1 += LX(xr, j + 1) - x0;                                                 \
            s2 += LX(xr, j + 2) - x0;                                                 \
            s3 += LX(xr, j + 3) - x0;                                                 \
        }                                                                             \
        for (; j < len; j++) {                                                        \
            s0 += LX(xr, j) - x0;                                                     \
        }                                                                             \
    }                                                                                 \
    const float mu = x0 + ((s0 + s1) + (s2 + s3)) / m_;                               \
    EP_NORM_VAR_BODY(T, LX, mu)

/* The second pass of the moments, given mu and m_: d = LX − SUB (SUB is mu, or 0 where
 * LX already loads x − mu), then *mean = mu and *var. */
#define EP_NORM_VAR_BODY(T, LX, SUB)                                                  \
    /* corrected two-pass: q = Σ d², c = Σ d with d = x − mu; var = (q − c²/m)/m */   \
    float q0 = 0.0f, q1 = 0.0f, q2 = 0.0f, q3 = 0.0f, c0 = 0.0f, c1 = 0.0f;           \
    for (uint32_t r = 0; r < reps; r++) {                                             \
        const T *xr = x + r * stride;                                                 \
        uint32_t j = 0;                                                               \
        for (; j + 4 <= len; j += 4) {                                                \
            const float d0 = LX(xr, j) - (SUB), d1 = LX(xr, j + 1) - (SUB);           \
            const float d2 = LX(xr, j + 2) - (SUB), d3 = LX(xr, j + 3) - (SUB);       \
            q0 = fmaf(d0, d0, q0);                                                    \
            q1 = fmaf(d1, d1, q1);                                                    \
            q2 = fmaf(d2, d2, q2);                                                    \
            q3 = fmaf(d3, d3, q3);                                                    \
            c0 += d0 + d1;                                                            \
            c1 += d2 + d3;                                                            \
        }                                                                             \
        for (; j < len; j++) {                                                        \
            const float d = LX(xr, j) - (SUB);                                        \
            q0 = fmaf(d, d, q0);                                                      \
            c0 += d;                                                                  \
        }                                                                             \
    }                                                                                 \
    const float c_ = c0 + c1;                                                         \
    const float v_ = (((q0 + q1) + (q2 + q3)) - c_ * c_ / m_) / m_;                   \
    *mean = mu;                                                                       \
    *var = v_ > 0.0f ? v_ : 0.0f

#define EP_NORM_DSUMS_BODY(TG, LG, TX, LX)                                            \
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;                                 \
    float b0 = 0.0f, b1 = 0.0f, b2 = 0.0f, b3 = 0.0f;                                 \
    for (uint32_t r = 0; r < reps; r++) {                                             \
        const TX *xr = x + r * stride;                                                \
        const TG *gr = dy + r * stride;                                               \
        uint32_t j = 0;                                                               \
        for (; j + 4 <= len; j += 4) {                                                \
            const float g0 = LG(gr, j), g1 = LG(gr, j + 1);                           \
            const float g2 = LG(gr, j + 2), g3 = LG(gr, j + 3);                       \
            a0 += g0;                                                                 \
            a1 += g1;                                                                 \
            a2 += g2;                                                                 \
            a3 += g3;                                                                 \
            b0 = fmaf(g0, LX(xr, j) - mean, b0);                                      \
            b1 = fmaf(g1, LX(xr, j + 1) - mean, b1);                                  \
            b2 = fmaf(g2, LX(xr, j + 2) - mean, b2);                                  \
            b3 = fmaf(g3, LX(xr, j + 3) - mean, b3);                                  \
        }                                                                             \
        for (; j < len; j++) {                                                        \
            const float g = LG(gr, j);                                                \
            a0 += g;                                                                  \
            b0 = fmaf(g, LX(xr, j) - mean, b0);                                       \
        }                                                                             \
    }                                                                                 \
    *sdy = (a0 + a1) + (a2 + a3);                                                     \
    *sdyx = (b0 + b1) + (b2 + b3)

/* The f32 load of the bodies above. */
#define EP_NORM_LOAD_F32(p, j) ((p)[j])

/* ------------------------------------------------------------------------- */
/* BatchNorm                                                                 */
/* ------------------------------------------------------------------------- */

/**
 * BatchNorm over x [n][c][hw] (nn.BatchNorm2d: hw = H·W; BatchNorm1d: hw = L or 1).
 * Statistics per channel over the m = n·hw elements of that channel.
 * eps > 0; 0 ≤ momentum ≤ 1 (PyTorch's momentum: new = (1 − momentum)·old +
 * momentum·batch; momentum=None, the cumulative average, is momentum = 1/k at the
 * k-th call, the caller's business).
 */
typedef struct {
    uint32_t n;  /**< samples */
    uint32_t c;  /**< channels */
    uint32_t hw; /**< elements per channel per sample (H·W, L, or 1) */
    float eps;
    float momentum;
} ep_batchnorm_params_t;

/*
 * A batch norm channel's statistics from its moments, as the training forward stores
 * them: saved[ch] = mean, saved[C + ch] = inv_std = 1/sqrt(var + eps), and the
 * running averages (NULL: not tracked) moved by momentum, with the unbiased variance
 * (m = n·hw values; m = 1 leaves running_var alone). Shared by the f32 and int8 nodes.
 */
static inline void ep_bn_store_stats(const ep_batchnorm_params_t *p, uint32_t ch, float mean, float var,
                                     float *saved, float *running_mean, float *running_var) {
    const uint32_t m = p->n * p->hw;
    saved[ch] = mean;
    saved[p->c + ch] = 1.0f / sqrtf(var + p->eps);
    if (running_mean != NULL && running_var != NULL) {
        const float keep = 1.0f - p->momentum, mom = p->momentum;
        running_mean[ch] = fmaf(keep, running_mean[ch], mom * mean);
        if (m > 1u) {
            running_var[ch] = fmaf(keep, running_var[ch], mom * (var * ((float)m / (float)(m - 1u))));
        }
    }
}

/**
 * BatchNorm forward, training mode (batch statistics), as nn.BatchNorm in train():
 *   mean[c] = (1/m) Σ x[·][c][·],  var[c] = (1/m) Σ (x − mean[c])²  (biased)
 *   inv_std[c] = 1/sqrt(var[c] + eps)
 *   y = (x − mean[c]) · inv_std[c] · gamma[c] + beta[c]
 *   saved = [mean[0..c) | inv_std[0..c)]   (2·c floats)
 *   running_mean[c] = (1 − momentum)·running_mean[c] + momentum·mean[c]
 *   running_var[c]  = (1 − momentum)·running_var[c]  + momentum·var[c]·m/(m − 1)
 * (the running variance takes the UNBIASED variance, exactly as PyTorch).
 * m = n·hw = 1 (PyTorch raises "Expected more than 1 value per channel"): no NaN
 * anywhere; var = 0, so y = beta, inv_std = 1/sqrt(eps); running_mean is updated
 * as usual and running_var is LEFT UNCHANGED (the unbiased variance of one value
 * does not exist; updating with it would store NaN or Inf).
 * @param[in]     x        [n][c][hw]
 * @param[in]     gamma    [c]
 * @param[in]     beta     [c]
 * @param[out]    y        [n][c][hw]; may alias x exactly only when backward gets x
 *                         from elsewhere (see above); no other overlap
 * @param[out]    saved    [2·c]; must not overlap anything
 * @param[in,out] running_mean [c], running_var [c]: updated in place; both NULL
 *                (track_running_stats=False) skips the update; must not overlap anything
 */
void ep_batchnorm_fw_train_f32(const ep_batchnorm_params_t *p, const float *x,
                               const float *restrict gamma, const float *restrict beta,
                               float *y, float *restrict saved,
                               float *restrict running_mean, float *restrict running_var);

/**
 * BatchNorm forward, eval/frozen mode (running statistics, nothing updated):
 *   y = (x − running_mean[c]) · gamma[c]/sqrt(running_var[c] + eps) + beta[c]
 * y may alias x exactly (in place: backward in eval mode reads neither x nor y for
 * the input gradient, only bw_param_eval reads x); no other overlap.
 */
void ep_batchnorm_fw_eval_f32(const ep_batchnorm_params_t *p, const float *x, const float *restrict gamma,
                              const float *restrict beta, const float *restrict running_mean,
                              const float *restrict running_var, float *y);

/**
 * BatchNorm input gradient, training mode (the statistics depend on x):
 *   x̂ = (x − mean[c])·inv_std[c],   with m = n·hw and sums over channel c's m elements
 *   dx = gamma[c]·inv_std[c] · (dy − Σdy/m − x̂ · Σ(dy·x̂)/m)
 * Reads dy, x (the forward input), gamma and saved (from fw_train). With m = 1,
 * dx = 0 (y = beta does not depend on x).
 * dx may alias dy exactly; must not overlap x, gamma or saved.
 */
void ep_batchnorm_bw_input_train_f32(const ep_batchnorm_params_t *p, const float *dy,
                                     const float *restrict x, const float *restrict gamma,
                                     const float *restrict saved, float *dx);

/**
 * BatchNorm input gradient, eval mode (constant statistics):
 *   dx = dy · gamma[c]/sqrt(running_var[c] + eps)
 * Reads dy, gamma, running_var. dx may alias dy exactly.
 */
void ep_batchnorm_bw_input_eval_f32(const ep_batchnorm_params_t *p, const float *dy,
                                    const float *restrict gamma, const float *restrict running_var,
                                    float *dx);

/**
 * BatchNorm parameter gradients, training mode (overwrite):
 *   dgamma[c] = Σ dy·x̂,  dbeta[c] = Σ dy   (over n and hw), x̂ from saved.
 * Reads dy, x, saved. dgamma, dbeta must not overlap anything.
 */
void ep_batchnorm_bw_param_train_f32(const ep_batchnorm_params_t *p, const float *restrict dy,
                                     const float *restrict x, const float *restrict saved,
                                     float *restrict dgamma, float *restrict dbeta);

/**
 * BatchNorm parameter gradients, eval mode (frozen statistics, trainable affine):
 * as bw_param_train with mean = running_mean, inv_std = 1/sqrt(running_var + eps).
 * Reads dy, x, running_mean, running_var. dgamma, dbeta must not overlap anything.
 */
void ep_batchnorm_bw_param_eval_f32(const ep_batchnorm_params_t *p, const float *restrict dy,
                                    const float *restrict x, const float *restrict running_mean,
                                    const float *restrict running_var, float *restrict dgamma,
                                    float *restrict dbeta);

/* ------------------------------------------------------------------------- */
/* LayerNorm                                                                 */
/* ------------------------------------------------------------------------- */

/**
 * LayerNorm over the last d elements: x is [rows][d], rows = every leading element
 * (for n samples of [T][D]: rows = n·T, d = D). eps > 0.
 */
typedef struct {
    uint32_t rows;
    uint32_t d;
    float eps;
} ep_layernorm_params_t;

/**
 * LayerNorm forward (nn.LayerNorm(d), elementwise affine):
 *   mean[r] = (1/d) Σ_j x[r][j],  var[r] = (1/d) Σ_j (x[r][j] − mean[r])²,
 *   inv_std[r] = 1/sqrt(var[r] + eps)
 *   y[r][j] = (x[r][j] − mean[r])·inv_std[r]·gamma[j] + beta[j]
 *   saved = [mean[0..rows) | inv_std[0..rows)]   (2·rows floats)
 * @param[in]  x [rows][d];  gamma, beta [d]
 * @param[out] y [rows][d]; may alias x exactly only when backward gets x from
 *            elsewhere (see above)
 *             (backward reads x); must not overlap gamma, beta or saved
 * @param[out] saved [2·rows]; must not overlap anything
 */
void ep_layernorm_fw_f32(const ep_layernorm_params_t *p, const float *x, const float *restrict gamma,
                         const float *restrict beta, float *y, float *restrict saved);

/**
 * LayerNorm input gradient: with g = dy·gamma[j], x̂ = (x − mean[r])·inv_std[r],
 *   dx[r][j] = inv_std[r]·(g − (1/d) Σ_j g − x̂ · (1/d) Σ_j g·x̂)
 * Reads dy, x, gamma, saved. dx may alias dy exactly; must not overlap x, gamma, saved.
 */
void ep_layernorm_bw_input_f32(const ep_layernorm_params_t *p, const float *dy, const float *restrict x,
                               const float *restrict gamma, const float *restrict saved, float *dx);

/**
 * LayerNorm parameter gradients (overwrite): dgamma[j] = Σ_r dy[r][j]·x̂[r][j],
 * dbeta[j] = Σ_r dy[r][j]. Reads dy, x, saved. dgamma, dbeta must not overlap anything.
 */
void ep_layernorm_bw_param_f32(const ep_layernorm_params_t *p, const float *restrict dy,
                               const float *restrict x, const float *restrict saved,
                               float *restrict dgamma, float *restrict dbeta);

/** ep_layernorm_bw_param_f32 adding every row to the gradients (none overwrites them):
 *  row by row, the same bits as one call over all rows (LAYERNORM_Q8). */
void ep_layernorm_bw_param_add_f32(const ep_layernorm_params_t *p, const float *restrict dy,
                                   const float *restrict x, const float *restrict saved,
                                   float *restrict dgamma, float *restrict dbeta);

/* ------------------------------------------------------------------------- */
/* GroupNorm                                                                 */
/* ------------------------------------------------------------------------- */

/**
 * GroupNorm (nn.GroupNorm(groups, c)) over x [n][c][hw]: groups divides c; the
 * statistics of (sample i, group g) run over channels [g·c/G, (g+1)·c/G) × hw, one
 * contiguous block of L = (c/G)·hw elements. eps > 0.
 */
typedef struct {
    uint32_t n;
    uint32_t c;
    uint32_t hw;
    uint32_t groups;
    float eps;
} ep_groupnorm_params_t;

/**
 * GroupNorm forward: per (i, g) mean and biased variance over the block,
 *   y = (x − mean[i][g])·inv_std[i][g]·gamma[c] + beta[c]
 *   saved = [mean[n][G] | inv_std[n][G]]   (2·n·G floats)
 * @param[out] y [n][c][hw]; may alias x exactly only when backward gets x from
 *            elsewhere (see above);
 *             must not overlap gamma, beta, saved
 * @param[out] saved [2·n·G]; must not overlap anything
 */
void ep_groupnorm_fw_f32(const ep_groupnorm_params_t *p, const float *x, const float *restrict gamma,
                         const float *restrict beta, float *y, float *restrict saved);

/**
 * GroupNorm input gradient: with g = dy·gamma[c], x̂ = (x − mean)·inv_std, sums over
 * the L elements of the block,
 *   dx = inv_std·(g − Σg/L − x̂·Σ(g·x̂)/L)
 * Reads dy, x, gamma, saved. dx may alias dy exactly; must not overlap x, gamma, saved.
 */
void ep_groupnorm_bw_input_f32(const ep_groupnorm_params_t *p, const float *dy, const float *restrict x,
                               const float *restrict gamma, const float *restrict saved, float *dx);

/**
 * GroupNorm parameter gradients (overwrite): dgamma[c] = Σ_{i,hw} dy·x̂,
 * dbeta[c] = Σ_{i,hw} dy. Reads dy, x, saved. dgamma, dbeta must not overlap anything.
 */
void ep_groupnorm_bw_param_f32(const ep_groupnorm_params_t *p, const float *restrict dy,
                               const float *restrict x, const float *restrict saved,
                               float *restrict dgamma, float *restrict dbeta);

/* ------------------------------------------------------------------------- */
/* Elementwise activations                                                   */
/* ------------------------------------------------------------------------- */

/**
 * Elementwise activation over count = n·(elements per sample) values; alpha is
 * used by ELU only (ELU requires alpha ≥ 0, as PyTorch's in-place ELU: the
 * y-based backward needs sign(y) = sign(x)). Every fw may run in place (y aliasing
 * x exactly) and every bw may write dx over dy exactly; the table says what bw
 * reads and hence whether the fw's input must survive:
 *
 *   op       forward                               backward (dx = dy · f'(·))   reads
 *   relu6    y = min(max(x, 0), 6)                 dy if 0 < y < 6, else 0        y
 *   elu      y = x if x > 0, else alpha·(e^x − 1)  dy if y > 0, else dy·(y + alpha)  y
 *   gelu     y = x·Φ(x), Φ(x) = erfc(−x/√2)/2      dy·(Φ(x) + x·φ(x))            x
 *   sigmoid  y = 1/(1 + e^−x)                      dy·y·(1 − y)                  y
 *   tanh     y = tanh(x)                           dy·(1 − y²)                   y
 *
 * relu6 matches PyTorch's hardtanh gradient (0 at x = 0 and x = 6); elu at x = 0
 * gives alpha·dy (as PyTorch). GELU is the exact form (approximate='none'),
 * computed with erfcf so that x·Φ(x) keeps its relative accuracy for x ≪ 0 (the
 * 1 + erf form cancels); GELU fw may run in place only when no backward follows.
 * NaN propagates; ±Inf and large finite inputs (±1e4) give the finite limits
 * (relu6 0/6, elu −alpha, gelu 0/x, sigmoid 0/1, tanh ∓1; gradients 0 or dy).
 */
typedef struct {
    uint32_t count; /**< total elements (n samples × elements per sample) */
    float alpha;    /**< ELU alpha; ignored by the others */
} ep_act_params_t;

void ep_relu6_fw_f32(const ep_act_params_t *p, const float *x, float *y);
/** dx may alias dy or y exactly. */
void ep_relu6_bw_f32(const ep_act_params_t *p, const float *dy, const float *y, float *dx);

void ep_elu_fw_f32(const ep_act_params_t *p, const float *x, float *y);
/** dx may alias dy or y exactly. */
void ep_elu_bw_f32(const ep_act_params_t *p, const float *dy, const float *y, float *dx);

void ep_gelu_fw_f32(const ep_act_params_t *p, const float *x, float *y);
/** Reads the forward INPUT x. dx may alias dy or x exactly. */
void ep_gelu_bw_f32(const ep_act_params_t *p, const float *dy, const float *x, float *dx);

void ep_sigmoid_fw_f32(const ep_act_params_t *p, const float *x, float *y);
/** dx may alias dy or y exactly. */
void ep_sigmoid_bw_f32(const ep_act_params_t *p, const float *dy, const float *y, float *dx);

void ep_tanh_fw_f32(const ep_act_params_t *p, const float *x, float *y);
/** dx may alias dy or y exactly. */
void ep_tanh_bw_f32(const ep_act_params_t *p, const float *dy, const float *y, float *dx);

/* ------------------------------------------------------------------------- */
/* Dropout                                                                   */
/* ------------------------------------------------------------------------- */

/**
 * Dropout over count elements with drop probability p_drop in [0, 1].
 * state points to the PRNG state (one uint32_t, e.g. a persistent 1-element
 * tensor): fw_train reads and advances it, so consecutive calls draw fresh masks
 * and the host can reproduce every mask from the initial state.
 *
 * PRNG: xorshift32 (Marsaglia; shifts 13, 17, 5) — for each element k in order:
 *   s ^= s << 13; s ^= s >> 17; s ^= s << 5;   keep[k] = (s >> 8) ≥ T
 * with T = (uint32_t)(p_drop · 2^24) (exact: p_drop · 2^24 is a float scaling by a
 * power of two, truncated), so P(keep) = 1 − T/2^24 ≈ 1 − p_drop (up to 2^-24 and
 * the missing s = 0). A state of 0 (xorshift's fixed point) is replaced by
 * 0x6D2B79F5 first. The state advances by exactly count steps per fw_train call,
 * whatever p_drop (also for p_drop = 0 or 1).
 *
 * Mask: 1 BIT per element, LSB first: element k is kept iff
 * (mask[k >> 3] >> (k & 7)) & 1; mask holds ceil(count/8) bytes, the unused high
 * bits of the last byte are written 0.
 */
typedef struct {
    uint32_t count;  /**< total elements */
    float p_drop;    /**< probability of zeroing an element, 0 ≤ p_drop ≤ 1 */
    uint32_t *state; /**< in/out PRNG state (fw_train only) */
} ep_dropout_params_t;

/** Bytes of the mask: ceil(count/8). */
static inline uint32_t ep_dropout_mask_bytes(const ep_dropout_params_t *p) {
    return (p->count >> 3) + ((p->count & 7u) != 0u);
}

/** Scale applied to kept elements: 1/(1 − p_drop) in float (0 when p_drop = 1: all dropped). */
static inline float ep_dropout_scale(const ep_dropout_params_t *p) {
    return p->p_drop < 1.0f ? 1.0f / (1.0f - p->p_drop) : 0.0f;
}

/**
 * Dropout forward, training: y[k] = keep[k] ? x[k]·scale : 0, scale as
 * ep_dropout_scale() (one rounding: y is x·scale in float exactly, as PyTorch's
 * x·(mask/(1 − p))). Writes the mask, advances *state.
 * y may alias x exactly; mask and state must not overlap anything.
 */
void ep_dropout_fw_train_f32(const ep_dropout_params_t *p, const float *x, float *y,
                             uint8_t *restrict mask);

/** Dropout forward, eval: y = x (identity; a no-op when y aliases x). No mask, no PRNG. */
void ep_dropout_fw_eval_f32(const ep_dropout_params_t *p, const float *x, float *y);

/**
 * Dropout backward (training): dx[k] = keep[k] ? dy[k]·scale : 0 from the saved
 * mask (p_drop must be the fw's). dx may alias dy exactly; mask must not overlap.
 */
void ep_dropout_bw_f32(const ep_dropout_params_t *p, const float *dy, const uint8_t *restrict mask,
                       float *dx);

#endif /* EP_NORM_ACT_H */
