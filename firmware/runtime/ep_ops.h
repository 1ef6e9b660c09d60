/*
 * ep_ops.h — the op registry and the f32 kernels behind it.
 *
 * Two layers, as in TFLM (registry + node adapters) over CMSIS-NN (plain kernels):
 *
 *   ep_op_t        one per op (ops/ep_<op>.c), registered by one line in
 *                  ep_op_table.c. prepare() validates a node of an untrusted
 *                  blob at parse time; fn[] are node adapters that look the
 *                  node's tensors up in the arena and call a kernel. Adapters
 *                  never re-validate and cannot fail: prepare() already proved
 *                  every shape, dtype and flag they rely on.
 *   ep_<op>_<fn>_f32  the kernels: plain functions over pointers and an
 *                  ep_dims_t, usable without a model (the golden tests call them
 *                  directly). They never allocate and need no scratch memory,
 *                  so none exports a _scratch_bytes(); a future kernel that
 *                  needs scratch will, and the host planner will place it.
 *
 * Layout conventions of every kernel:
 *   - row-major, one row per sample: a batched tensor of n samples with c
 *     elements each is float[n * c], sample i at [i * c, (i + 1) * c);
 *   - pointers are 4-byte aligned (the arena is 8-aligned, every tensor offset
 *     8-aligned); a kernel reads its inputs and writes its outputs only within
 *     the extents its documentation gives;
 *   - "no overlap" parameters are declared restrict: the caller guarantees the
 *     buffers are disjoint (each op's prepare() refuses blobs where they overlap);
 *     where exact aliasing is allowed the documentation says so (same pointer,
 *     same extent); partial overlap is never allowed.
 *   - f32 maths uses single precision throughout (no double: the Cortex-M4F FPU
 *     is single precision), expf/logf from <math.h>.
 */
#ifndef EP_OPS_H
#define EP_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ep_ids.h"
#include "ep_runtime.h"

/** Functions per op, indexed by ep_opfn_t (FW, BW_INPUT, BW_PARAM). */
#define EP_OP_FN_COUNT 3

/* ------------------------------------------------------------------------- */
/* Registry                                                                  */
/* ------------------------------------------------------------------------- */

/** What a node function sees when it runs. */
typedef struct {
    const ep_model_t *model; /**< a model ep_model_parse() accepted */
    uint8_t *arena;          /**< 8-aligned; tensor t lives at arena + tensors[t].offset */
    uint16_t n;              /**< samples in this batch, 1..model->max_batch */
    const ep_profiler_t *prof; /**< per-node costs, or NULL */
} ep_ctx_t;

/**
 * Validate one node of a candidate model (untrusted blob). Called by
 * ep_model_parse() after the generic checks: the node's op and fn exist, n_in ≤
 * EP_MAX_NODE_INPUTS, n_out ≤ EP_MAX_NODE_OUTPUTS, every used index < n_tensors,
 * every tensor descriptor is self-consistent and inside the arena (or L3), attrs
 * finite, and no tensor is in L3 unless the op is L3_LOAD or L3_STORE.
 * prepare() checks the rest: tensor count, dtypes, ranks, dims, BATCHED flags,
 * forbidden overlaps, op-specific rules.
 * @param why on failure, a static string naming what is wrong (never NULL)
 * @return EP_OK or EP_BAD_BLOB
 */
typedef ep_status_t (*ep_prepare_fn_t)(const ep_model_t *m, const ep_node_t *node, const char **why);

/** Run one node over ctx->n samples. Only for nodes prepare() accepted. */
typedef void (*ep_node_fn_t)(const ep_ctx_t *ctx, const ep_node_t *node);

/** An op: its name, validator and functions. */
typedef struct {
    const char *name;                    /**< lower case, as in host/ids.py ("linear") */
    ep_prepare_fn_t prepare;             /**< validates a node for any fn of the op */
    ep_node_fn_t fn[EP_OP_FN_COUNT];     /**< by ep_opfn_t; NULL if not implemented */
} ep_op_t;

/** The op registered for an opcode, or NULL if the opcode is unknown. */
const ep_op_t *ep_op_lookup(uint8_t opcode);

/* One definition per op, in ops/ep_<op>.c (a family file may define several);
 * ep_op_table.c registers them. Weak: an op left out of a build is NULL there. */
#if defined(__GNUC__)
#define EP_OP_DECL(name) extern const ep_op_t ep_op_##name __attribute__((weak))
#else
#define EP_OP_DECL(name) extern const ep_op_t ep_op_##name
#endif
EP_OP_DECL(linear);
EP_OP_DECL(relu);
EP_OP_DECL(softmax_ce);
EP_OP_DECL(sgd);
EP_OP_DECL(conv2d);
EP_OP_DECL(avgpool2d);
EP_OP_DECL(maxpool2d);
EP_OP_DECL(global_avgpool);
EP_OP_DECL(batchnorm);
EP_OP_DECL(layernorm);
EP_OP_DECL(groupnorm);
EP_OP_DECL(relu6);
EP_OP_DECL(elu);
EP_OP_DECL(gelu);
EP_OP_DECL(sigmoid);
EP_OP_DECL(tanh);
EP_OP_DECL(dropout);
EP_OP_DECL(mhsa);
EP_OP_DECL(seqpool);
EP_OP_DECL(softmax);
EP_OP_DECL(add);
EP_OP_DECL(concat);
EP_OP_DECL(transpose);
EP_OP_DECL(mse);
EP_OP_DECL(sgd_momentum);
EP_OP_DECL(adam);
EP_OP_DECL(accumulate);
EP_OP_DECL(clip_norm);
EP_OP_DECL(zero);
EP_OP_DECL(gather);
EP_OP_DECL(scatter);
EP_OP_DECL(bias_grad);
EP_OP_DECL(quantize);       /* int8 ops: ops/ep_q8_*.c, ep_q8.h */
EP_OP_DECL(dequantize);
EP_OP_DECL(linear_q8);
EP_OP_DECL(conv2d_q8);
EP_OP_DECL(relu_q8);
EP_OP_DECL(sgd_q8);
EP_OP_DECL(requant_weights);
EP_OP_DECL(batchnorm_q8);
EP_OP_DECL(act_q8);
EP_OP_DECL(avgpool2d_q8);
EP_OP_DECL(dropout_q8);
EP_OP_DECL(add_q8);
EP_OP_DECL(global_avgpool_q8);
EP_OP_DECL(mhsa_q8);
EP_OP_DECL(maxpool2d_q8);
EP_OP_DECL(layernorm_q8);
EP_OP_DECL(seqpool_q8);
EP_OP_DECL(l3_load);        /* the L3 tier: ops/ep_l3.c */
EP_OP_DECL(l3_store);

/* Helpers for prepare() and the node adapters. */

/** Fail a prepare(): store the (strippable) reason, return EP_BAD_BLOB. */
static inline ep_status_t ep_reject(const char **why, const char *reason) {
    *why = reason;
    return EP_BAD_BLOB;
}

/** Address of tensor t in the arena (t < model->n_tensors). */
static inline float *ep_ctx_f32(const ep_ctx_t *c, uint16_t t) {
    return (float *)(void *)(c->arena + c->model->tensors[t].offset);
}
static inline int32_t *ep_ctx_i32(const ep_ctx_t *c, uint16_t t) {
    return (int32_t *)(void *)(c->arena + c->model->tensors[t].offset);
}

/** True if tensor t has this dtype and rank, and is BATCHED iff `batched`. */
static inline bool ep_tensor_is(const ep_model_t *m, uint16_t t, uint8_t dtype, bool batched,
                                uint8_t rank) {
    const ep_tensor_t *x = &m->tensors[t];
    return x->dtype == dtype && x->rank == rank && ((x->flags & EP_TF_BATCHED) != 0) == batched;
}

/** True if tensors a and b have the same rank and dims. */
static inline bool ep_same_shape(const ep_model_t *m, uint16_t a, uint16_t b) {
    const ep_tensor_t *x = &m->tensors[a], *y = &m->tensors[b];
    if (x->rank != y->rank) {
        return false;
    }
    for (uint8_t i = 0; i < x->rank; i++) {
        if (x->dims[i] != y->dims[i]) {
            return false;
        }
    }
    return true;
}

/**
 * True if the spans of tensors a and b share a byte (a == b overlaps). An L3
 * tensor and an arena one never overlap (their offsets count in different
 * memories); two L3 tensors compare like two arena ones. Only for validated
 * tensors: offset + bytes ≤ arena_bytes (or l3_bytes) cannot wrap.
 */
static inline bool ep_overlap(const ep_model_t *m, uint16_t a, uint16_t b) {
    const ep_tensor_t *x = &m->tensors[a], *y = &m->tensors[b];
    if ((x->flags ^ y->flags) & EP_TF_L3) {
        return false;
    }
    return x->offset < y->offset + y->bytes && y->offset < x->offset + x->bytes;
}

/** True if a and b are disjoint, or the very same span (exact aliasing). */
static inline bool ep_disjoint_or_same(const ep_model_t *m, uint16_t a, uint16_t b) {
    const ep_tensor_t *x = &m->tensors[a], *y = &m->tensors[b];
    return !ep_overlap(m, a, b) || (x->offset == y->offset && x->bytes == y->bytes);
}

/** True if iattr[first..] of nd are all 0 (attributes an op does not use). */
static inline bool ep_iattrs_zero_from(const ep_node_t *nd, uint8_t first) {
    for (uint8_t i = first; i < EP_NODE_IATTRS; i++) {
        if (nd->iattr[i] != 0) {
            return false;
        }
    }
    return true;
}

/** True if every fattr of nd is 0. */
static inline bool ep_fattrs_zero(const ep_node_t *nd) {
    for (uint8_t i = 0; i < EP_NODE_FATTRS; i++) {
        if (nd->fattr[i] != 0.0f) {
            return false;
        }
    }
    return true;
}

/**
 * True if no output of nd overlaps an input or another output, except that
 * output 0 may alias input `alias_in` exactly (alias_in < 0: no aliasing).
 */
static inline bool ep_outputs_disjoint(const ep_model_t *m, const ep_node_t *nd, int alias_in) {
    for (uint8_t o = 0; o < nd->n_out; o++) {
        for (uint8_t i = 0; i < nd->n_in; i++) {
            const bool may_alias = o == 0 && (int)i == alias_in;
            if (may_alias ? !ep_disjoint_or_same(m, nd->out[o], nd->in[i]) : ep_overlap(m, nd->out[o], nd->in[i])) {
                return false;
            }
        }
        for (uint8_t p = 0; p < o; p++) {
            if (ep_overlap(m, nd->out[o], nd->out[p])) {
                return false;
            }
        }
    }
    return true;
}

/* ------------------------------------------------------------------------- */
/* Kernels                                                                   */
/* ------------------------------------------------------------------------- */

/**
 * Shape shared by every kernel: n rows of c elements, row-major.
 * Batched tensors: n = samples in the batch (1..65535), c = elements per sample.
 * Unbatched tensors (parameters, gradients): n = 1, c = all elements.
 * n ≥ 1 and c ≥ 1 always; n * c fits in uint32_t.
 */
typedef struct {
    uint32_t n;
    uint32_t c;
} ep_dims_t;

/** Shapes of a linear layer: x/dx [n, K] = in, y/dy [n, M] = out, W [M, K], b [M]. */
typedef struct {
    ep_dims_t in;  /**< {n, K} */
    ep_dims_t out; /**< {n, M}; out.n == in.n */
} ep_linear_params_t;

/**
 * Linear forward: y[i, m] = b[m] + Σ_k x[i, k] · W[m, k].
 * @param[in]  x [n, K]
 * @param[in]  w [M, K], row m holds the weights of output m (PyTorch layout)
 * @param[in]  b [M]
 * @param[out] y [n, M]; must not overlap x, w or b
 * Blocked over 4 outputs at a time (one x load feeds 4 accumulators held in
 * registers); sums run in k order starting from b[m].
 */
void ep_linear_fw_f32(const ep_linear_params_t *p, const float *restrict x, const float *restrict w,
                      const float *restrict b, float *restrict y);

/**
 * Linear input gradient: dx[i, k] = Σ_m dy[i, m] · W[m, k].
 * @param[in]  dy [n, M]
 * @param[in]  w  [M, K]
 * @param[out] dx [n, K], overwritten; must not overlap dy or w
 */
void ep_linear_bw_input_f32(const ep_linear_params_t *p, const float *restrict dy,
                            const float *restrict w, float *restrict dx);

/**
 * Linear parameter gradients over the batch (overwrite, no accumulation):
 *   dW[m, k] = Σ_i dy[i, m] · x[i, k],   db[m] = Σ_i dy[i, m].
 * @param[in]  dy [n, M]
 * @param[in]  x  [n, K], the forward input
 * @param[out] dw [M, K]; must not overlap dy, x or db
 * @param[out] db [M];    must not overlap dy, x or dw
 */
void ep_linear_bw_param_f32(const ep_linear_params_t *p, const float *restrict dy,
                            const float *restrict x, float *restrict dw, float *restrict db);

/**
 * ReLU forward over d->n · d->c elements: y = x < 0 ? 0 : x (NaN propagates).
 * y may alias x exactly (in place); no partial overlap.
 */
void ep_relu_fw_f32(const ep_dims_t *d, const float *x, float *y);

/**
 * ReLU input gradient over d->n · d->c elements: dx = y > 0 ? dy : 0, where y is
 * the forward output. dx may alias dy or y exactly; no partial overlap.
 */
void ep_relu_bw_f32(const ep_dims_t *d, const float *dy, const float *y, float *dx);

/**
 * The sign mask a ReLU backward needs: for each of d->n samples of d->c elements,
 * ceil(c / 8) bytes, bit i % 8 of byte i / 8 set iff x[i] > 0. mask and x disjoint.
 */
void ep_relu_mask_u8(const ep_dims_t *d, const float *x, uint8_t *mask);

/** ReLU input gradient from the mask: dx = bit set ? dy : 0. dx may alias dy exactly. */
void ep_relu_bw_mask_f32(const ep_dims_t *d, const float *dy, const uint8_t *mask, float *dx);

/**
 * Softmax + cross-entropy forward over n samples of C = d->c classes (C ≥ 1).
 *   probs[i, :] = softmax(logits[i, :]), computed as exp(z - max z) / Σ exp(z - max z)
 *   stats[0]    = (1/n) Σ_i (log Σ_j exp(z_ij - max_i) - (z_i,label_i - max_i))
 *                 (log-sum-exp form of -log p_label: finite for any finite logits)
 *   stats[1]    = count of i with argmax_j logits[i, j] == labels[i] (exact as f32
 *                 up to 2^24); argmax ties resolve to the lowest index
 * A NaN or +inf logit, or -inf at the label, makes stats[0] non-finite (the
 * executor checks it); -inf elsewhere is a class of probability 0.
 * @param[in]  logits [n, C]
 * @param[in]  labels [n], each in [0, C) (the caller guarantees it)
 * @param[out] probs  [n, C]; must not overlap logits, labels or stats
 * @param[out] stats  [2];    must not overlap the others
 */
void ep_softmax_ce_fw_f32(const ep_dims_t *d, const float *restrict logits,
                          const int32_t *restrict labels, float *restrict probs,
                          float *restrict stats);

/**
 * Softmax + cross-entropy input gradient of the mean loss:
 *   dlogits[i, j] = (probs[i, j] - (j == labels[i])) / n
 * @param[in]  probs   [n, C], the forward output
 * @param[in]  labels  [n], each in [0, C)
 * @param[out] dlogits [n, C]; may alias probs exactly; must not overlap labels
 */
void ep_softmax_ce_bw_f32(const ep_dims_t *d, const float *probs, const int32_t *labels,
                          float *dlogits);

/** SGD hyper-parameters (node attr[0], attr[1]); finite. */
typedef struct {
    float lr;
    float weight_decay;
} ep_sgd_params_t;

/**
 * SGD step over all d->n · d->c elements of a parameter (not batched: n = 1):
 *   param -= lr · (grad + weight_decay · param)
 * @param[in]     grad  must not overlap param
 * @param[in,out] param
 */
void ep_sgd_update_f32(const ep_sgd_params_t *p, const ep_dims_t *d, const float *restrict grad,
                       float *restrict param);

#endif /* EP_OPS_H */
