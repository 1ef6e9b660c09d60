/*
 * ep_attn_optim.h — f32 kernels of the "attention, tensor ops, losses and
 * optimizers" family: multi-head self-attention (CCT), sequence pooling, row-wise
 * softmax, residual add / accumulate, channel concat, per-sample transpose, MSE
 * loss, SGD with momentum, Adam/AdamW and gradient clipping by global norm.
 *
 * Plain kernels only (no registry entries): each takes a params struct of
 * uint32_t shape fields and float hyper-parameters, and pointers. Conventions
 * (see also ep_ops.h):
 *   - batched tensors are sample-major: n samples, each sample contiguous; token
 *     sequences are [T][D] per sample, feature maps [C][H][W];
 *   - fw writes its outputs; bw_input OVERWRITES dx; bw_param OVERWRITES the
 *     parameter gradients with their sum over the batch;
 *   - pointers are 4-byte aligned; buffers declared restrict must be disjoint
 *     (no aliasing of any kind); where exact aliasing (same pointer, same extent)
 *     is allowed, the kernel's documentation says so; partial overlap never is;
 *   - no kernel allocates or keeps static state; a kernel that needs temporary
 *     memory takes `float *scratch` (4-byte aligned, disjoint from everything
 *     else, contents undefined on entry and on exit) of at least
 *     ep_<op>_scratch_bytes(p) bytes;
 *   - single precision throughout; every shape field is ≥ 1 and every index
 *     product named in a kernel's extents fits in uint32_t (the caller checks).
 */
#ifndef EP_ATTN_OPTIM_H
#define EP_ATTN_OPTIM_H

#include <stdint.h>

/* ------------------------------------------------------------------------- */
/* Multi-head self-attention (nn.MultiheadAttention, batch_first, q = k = v = x,
 * bias on all projections, no mask, no dropout)                               */
/* ------------------------------------------------------------------------- */

/**
 * Shapes: x, y, dx, dy [n][T][D]; heads H divides D, head dim E = D / H,
 * scale s = 1 / sqrtf(E).
 * Parameters (PyTorch layout): w_in [3D][D] (rows 0..D-1 make Q, D..2D-1 make K,
 * 2D..3D-1 make V), b_in [3D], w_out [D][D], b_out [D].
 */
typedef struct {
    uint32_t n;     /**< samples */
    uint32_t t;     /**< tokens T */
    uint32_t d;     /**< embedding dim D */
    uint32_t heads; /**< H, divides D */
} ep_mhsa_params_t;

/**
 * Saved state that fw writes for the backward kernels, per sample (sample i at
 * saved + i * (3·T·D + H·T·T)):
 *   qkv [T][3D]   = x w_inᵀ + b_in (row t = [q_t | k_t | v_t], head h uses columns
 *                   h·E .. h·E+E-1 of each third)
 *   P   [H][T][T] = the attention probabilities, P[h][t][:] = softmax_s(s · q_t,h · k_s,h)
 * Returns n · (3·T·D + H·T·T) · 4 bytes.
 * Why these: recomputing qkv from x would repeat 3·T·D² of the forward's 4·T·D²
 * + 2·T²·D MACs, and recomputing P the scores and H·T² expf; the heads' output
 * O [T][D] is NOT saved (bw_param recomputes it as P V, T²·D MACs per sample).
 * The backward also passes one tensor between its two kernels: dqkv [n][T][3D],
 * written by bw_input (or bw_qkv) and read by bw_param, so the attention
 * backward runs once per step.
 */
uint32_t ep_mhsa_saved_bytes(const ep_mhsa_params_t *p);

/**
 * Scratch of every mhsa kernel (the maximum over them): (T·D + T·T) · 4 bytes.
 * fw uses T·D floats (O of one sample, the heads' concatenated output), bw_qkv /
 * bw_input T·D + T·T (dO of one sample, then dP / dS of one head), bw_param T·D
 * (O of one sample, recomputed as P V). Nothing in scratch outlives a call.
 */
uint32_t ep_mhsa_scratch_bytes(const ep_mhsa_params_t *p);

/**
 * Forward, per sample:
 *   qkv = x w_inᵀ + b_in;  P[h] = softmax_rows(s · Q_h K_hᵀ);  O_h = P[h] V_h;
 *   y = O w_outᵀ + b_out,  O = [O_0 | … | O_{H-1}]  [T][D]
 * Softmax subtracts the row max (no overflow for any finite logits).
 * @param[in]  x      [n][T][D]
 * @param[out] y      [n][T][D]
 * @param[out] saved  ep_mhsa_saved_bytes(p) (layout above)
 * All buffers disjoint.
 */
void ep_mhsa_fw_f32(const ep_mhsa_params_t *p, const float *restrict x, const float *restrict w_in,
                    const float *restrict b_in, const float *restrict w_out,
                    const float *restrict b_out, float *restrict y, float *restrict saved,
                    float *restrict scratch);

/**
 * Gradient w.r.t. the in-projection output qkv, per sample:
 *   dO = dy w_out;  dP_h = dO_h V_hᵀ;  dS_h = P_h ⊙ (dP_h − rowsum(P_h ⊙ dP_h));
 *   dQ_h = s · dS_h K_h;  dK_h = s · dS_hᵀ Q_h;  dV_h = P_hᵀ dO_h
 * @param[in]  dy    [n][T][D]
 * @param[in]  saved as written by fw
 * @param[out] dqkv  [n][T][3D], row t = [dq_t | dk_t | dv_t]
 * Reads dy, w_out, saved. All buffers disjoint.
 */
void ep_mhsa_bw_qkv_f32(const ep_mhsa_params_t *p, const float *restrict dy,
                        const float *restrict w_out, const float *restrict saved,
                        float *restrict dqkv, float *restrict scratch);

/**
 * Input gradient: runs ep_mhsa_bw_qkv_f32 (writing dqkv, which bw_param then
 * reads, so the attention backward runs once per step), then dx = dqkv w_in.
 * @param[in]  dy, w_in, w_out, saved (as written by fw)
 * @param[out] dqkv [n][T][3D]  (an output: keep it for ep_mhsa_bw_param_f32)
 * @param[out] dx   [n][T][D]
 * All buffers disjoint.
 */
void ep_mhsa_bw_input_f32(const ep_mhsa_params_t *p, const float *restrict dy,
                          const float *restrict w_in, const float *restrict w_out,
                          const float *restrict saved, float *restrict dqkv, float *restrict dx,
                          float *restrict scratch);

/**
 * Parameter gradients summed over the batch (overwrite), sample by sample in order
 * (each gradient a running sum: sample 0's sums, then each next sample's added):
 *   dw_in [3D][D] = Σ_{i,t} dqkv[i][t]ᵀ x[i][t],   db_in [3D] = Σ_{i,t} dqkv[i][t]
 *   dw_out [D][D] = Σ_{i,t} dy[i][t]ᵀ O[i][t],     db_out [D] = Σ_{i,t} dy[i][t]
 * with O recomputed from saved (P V, per sample, in scratch).
 * @param[in] dqkv as written by ep_mhsa_bw_input_f32 or ep_mhsa_bw_qkv_f32 for
 *            this dy (a layer whose dx is not needed runs bw_qkv alone first)
 * Reads dy, x, saved, dqkv. All buffers disjoint.
 */
void ep_mhsa_bw_param_f32(const ep_mhsa_params_t *p, const float *restrict dy,
                          const float *restrict x, const float *restrict saved,
                          const float *restrict dqkv, float *restrict dw_in, float *restrict db_in,
                          float *restrict dw_out, float *restrict db_out, float *restrict scratch);

/** ep_mhsa_bw_param_f32 adding to the gradients instead of overwriting them: over the
 *  samples one call at a time, the same bits as one call over all (MHSA_Q8). */
void ep_mhsa_bw_param_add_f32(const ep_mhsa_params_t *p, const float *restrict dy,
                              const float *restrict x, const float *restrict saved,
                              const float *restrict dqkv, float *restrict dw_in, float *restrict db_in,
                              float *restrict dw_out, float *restrict db_out, float *restrict scratch);

/* ------------------------------------------------------------------------- */
/* Sequence pooling (CCT SeqPool)                                            */
/* ------------------------------------------------------------------------- */

/** x, dx [n][T][D]; y, dy [n][D]; g [D] (Linear(D, 1).weight), c [1] (its bias). */
typedef struct {
    uint32_t n;
    uint32_t t; /**< tokens T */
    uint32_t d; /**< embedding dim D */
} ep_seqpool_params_t;

/**
 * Forward, per sample: l_t = x_t · g + c,  w = softmax_t(l)  (max-subtracted),
 * y = Σ_t w_t x_t.
 * @param[out] y   [n][D]
 * @param[out] wts [n][T], saved for the backward kernels (the pooling weights w)
 * All buffers disjoint.
 */
void ep_seqpool_fw_f32(const ep_seqpool_params_t *p, const float *restrict x,
                       const float *restrict g, const float *restrict c, float *restrict y,
                       float *restrict wts);

/**
 * Input gradient, per sample, with e_t = dy · x_t and r = Σ_t w_t e_t:
 *   dl_t = w_t (e_t − r),   dx_t = w_t dy + dl_t g
 * Reads dy, x, g, wts (from fw); no scratch (e_t is recomputed in a second pass).
 * All buffers disjoint.
 */
void ep_seqpool_bw_input_f32(const ep_seqpool_params_t *p, const float *restrict dy,
                             const float *restrict x, const float *restrict g,
                             const float *restrict wts, float *restrict dx);

/**
 * Parameter gradients (overwrite): dg = Σ_{i,t} dl_t x_t,  dc = Σ_{i,t} dl_t
 * (dl as in bw_input). Reads dy, x, wts. All buffers disjoint.
 */
void ep_seqpool_bw_param_f32(const ep_seqpool_params_t *p, const float *restrict dy,
                             const float *restrict x, const float *restrict wts,
                             float *restrict dg, float *restrict dc);

/** ep_seqpool_bw_param_f32 continuing the running sums in dg, dc instead of starting them:
 *  sample by sample, the same bits as one call over all samples (SEQPOOL_Q8). */
void ep_seqpool_bw_param_add_f32(const ep_seqpool_params_t *p, const float *restrict dy,
                                 const float *restrict x, const float *restrict wts,
                                 float *restrict dg, float *restrict dc);

/* ------------------------------------------------------------------------- */
/* Row-wise softmax over the last dim                                        */
/* ------------------------------------------------------------------------- */

/** rows · cols elements; rows = n · (elements per sample / cols). */
typedef struct {
    uint32_t rows;
    uint32_t cols;
} ep_softmax_params_t;

/**
 * y[r][:] = exp(x[r][:] − max) / Σ exp(x[r][:] − max). No overflow for finite x
 * (−inf is probability 0; a row of all −inf, +inf or NaN gives NaN).
 * y may alias x exactly.
 */
void ep_softmax_fw_f32(const ep_softmax_params_t *p, const float *x, float *y);

/**
 * dx[r][j] = y[r][j] · (dy[r][j] − Σ_k y[r][k] dy[r][k]); reads y (fw output) and dy.
 * dx may alias dy or y exactly.
 */
void ep_softmax_bw_f32(const ep_softmax_params_t *p, const float *dy, const float *y, float *dx);

/* ------------------------------------------------------------------------- */
/* Tensor ops                                                                */
/* ------------------------------------------------------------------------- */

/** count elements in total (n · elements per sample, or a parameter's size). */
typedef struct {
    uint32_t count;
} ep_add_params_t;
typedef ep_add_params_t ep_accumulate_params_t;

/**
 * Residual add: y = a + b over count elements. y may alias a or b exactly (or
 * both). Its backward is the identity (da = db = dy): no kernel; where a tensor
 * feeds two consumers, sum the gradients with ep_accumulate_f32.
 */
void ep_add_fw_f32(const ep_add_params_t *p, const float *a, const float *b, float *y);

/**
 * dst += src over count elements: gradient fan-in, and gradient accumulation over
 * micro-batches (then pass grad_scale = 1/k to the optimizer). Disjoint.
 */
void ep_accumulate_f32(const ep_accumulate_params_t *p, const float *restrict src,
                       float *restrict dst);

/**
 * Concat along the channel dim: a [n][c0][inner], b [n][c1][inner] →
 * y [n][c0 + c1][inner]  (inner = H·W, or L, or 1).
 */
typedef struct {
    uint32_t n;
    uint32_t c0;
    uint32_t c1;
    uint32_t inner;
} ep_concat_params_t;

/** y = [a | b] per sample. All buffers disjoint. */
void ep_concat_fw_f32(const ep_concat_params_t *p, const float *restrict a,
                      const float *restrict b, float *restrict y);

/** da, db = the two channel ranges of dy (overwrite). All buffers disjoint. */
void ep_concat_bw_f32(const ep_concat_params_t *p, const float *restrict dy, float *restrict da,
                      float *restrict db);

/** Per-sample transpose: x [n][a][b] → y [n][b][a]. */
typedef struct {
    uint32_t n;
    uint32_t a;
    uint32_t b;
} ep_transpose_params_t;

/** y[i][j][k] = x[i][k][j]. Disjoint. */
void ep_transpose_fw_f32(const ep_transpose_params_t *p, const float *restrict x,
                         float *restrict y);

/** dx [n][a][b] from dy [n][b][a]: dx[i][k][j] = dy[i][j][k]. Disjoint. */
void ep_transpose_bw_f32(const ep_transpose_params_t *p, const float *restrict dy,
                         float *restrict dx);

/* ------------------------------------------------------------------------- */
/* MSE loss (nn.MSELoss, reduction "mean")                                   */
/* ------------------------------------------------------------------------- */

/** pred, target, dpred [n][c]; the mean runs over all n · c elements. */
typedef struct {
    uint32_t n;
    uint32_t c;
} ep_mse_params_t;

/**
 * loss[0] = (1 / (n·c)) Σ (pred − target)²  (4 interleaved partial sums).
 * All buffers disjoint.
 */
void ep_mse_fw_f32(const ep_mse_params_t *p, const float *restrict pred,
                   const float *restrict target, float *restrict loss);

/**
 * dpred = (2 / (n·c)) (pred − target), the gradient of the mean loss.
 * dpred may alias pred or target exactly.
 */
void ep_mse_bw_f32(const ep_mse_params_t *p, const float *pred, const float *target, float *dpred);

/* ------------------------------------------------------------------------- */
/* Optimizers over a flat parameter of count elements                        */
/* ------------------------------------------------------------------------- */

/**
 * SGD with momentum, torch.optim.SGD semantics. With g = grad_scale · grad +
 * weight_decay · param:
 *   step == 1:  buf = g;   else  buf = momentum · buf + (1 − dampening) · g
 *   d = nesterov ? g + momentum · buf : buf;   param −= lr · d
 * momentum == 0 is plain SGD (buf is then neither read nor written and may be NULL).
 * step counts from 1 (the step being taken). grad_scale = 1/k after k accumulated
 * micro-batches, 1 otherwise.
 */
typedef struct {
    uint32_t count;
    uint32_t step;
    uint32_t nesterov; /**< 0 or 1 */
    float lr;
    float momentum;
    float dampening;
    float weight_decay;
    float grad_scale;
} ep_sgd_momentum_params_t;

/** grad, param, buf [count]; param and buf updated in place. All disjoint. */
void ep_sgd_momentum_update_f32(const ep_sgd_momentum_params_t *p, const float *restrict grad,
                                float *restrict param, float *restrict buf);

/**
 * Adam / AdamW, torch.optim.Adam / AdamW semantics (amsgrad off, maximize off).
 * With g = grad_scale · grad, t = step (≥ 1, the step being taken):
 *   Adam:   g += weight_decay · param          AdamW: param *= 1 − lr · weight_decay
 *   m = m + (1 − β1)(g − m)        v = β2 v + (1 − β2) g²
 *   bc1 = 1 − β1ᵗ,  bc2 = 1 − β2ᵗ  (as −expm1f(t · log1pf(β − 1)): accurate even
 *                                   when βᵗ is close to 1)
 *   param −= (lr / bc1) · m / (sqrt(v) / sqrt(bc2) + eps)
 * m, v start at 0 (the state tensors are zero-initialised before step 1).
 */
typedef struct {
    uint32_t count;
    uint32_t step;
    uint32_t decoupled; /**< 0: Adam (L2 in the gradient), 1: AdamW (decoupled decay) */
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
    float grad_scale;
} ep_adam_params_t;

/** grad, param, m, v [count]; param, m, v updated in place. All disjoint. */
void ep_adam_update_f32(const ep_adam_params_t *p, const float *restrict grad,
                        float *restrict param, float *restrict m, float *restrict v);

/* ------------------------------------------------------------------------- */
/* Gradient clipping by global L2 norm (torch.nn.utils.clip_grad_norm_)      */
/* ------------------------------------------------------------------------- */

/** count elements of one gradient tensor; max_norm > 0 (only the scale kernel reads it). */
typedef struct {
    uint32_t count;
    float max_norm;
} ep_clip_norm_params_t;

/**
 * acc[0] += Σ x² over count elements (4 interleaved partial sums). Run it over
 * every gradient tensor with the same acc, which starts at 0. Disjoint.
 */
void ep_clip_norm_sumsq_f32(const ep_clip_norm_params_t *p, const float *restrict x,
                            float *restrict acc);

/**
 * x *= min(1, max_norm / (sqrtf(sumsq[0]) + 1e-6)) over count elements, with
 * sumsq[0] the total from ep_clip_norm_sumsq_f32. Writes nothing when the factor
 * is ≥ 1 (multiplying by 1 is exact anyway); a NaN factor (NaN or inf norm)
 * propagates into x as in PyTorch. Disjoint.
 */
void ep_clip_norm_scale_f32(const ep_clip_norm_params_t *p, const float *restrict sumsq,
                            float *restrict x);

#endif /* EP_ATTN_OPTIM_H */
