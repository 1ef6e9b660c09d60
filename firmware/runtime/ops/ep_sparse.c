/*
 * ep_sparse.c — the ops of partial training (host/strategies.py):
 *
 *   GATHER     y = x's channels idx[0..k): the rows a sparse update trains
 *   SCATTER    dst's channels idx[j] = src's channel j: the trained rows written back
 *   BIAS_GRAD  db[c] = Σ dy over every axis but the channel axis: a bias's gradient
 *              without its weight's (bias-only training)
 *
 * All three see a tensor's elements per sample (or in total, unbatched) as
 * [outer][C][inner], C = iattr[0] channels of inner = iattr[1] | iattr[2] << 16
 * elements each: a conv activation [C][H][W] is outer 1, inner H·W; a linear
 * activation [T][D] is outer T, C = D, inner 1; a weight [out][in] is outer 1,
 * C = out, inner = in. The index list idx is an unbatched i32 [k]. Its values come
 * from the blob and are not trusted: an index ≥ C reads zeros (GATHER) and writes
 * nothing (SCATTER), so no value can reach outside a tensor.
 */
#include <string.h>

#include "ep_ops.h"

typedef struct {
    uint32_t c, inner, outer;
} sp_split_t;

static uint32_t sp_inner(const ep_node_t *nd) {
    return (uint32_t)nd->iattr[1] | (uint32_t)nd->iattr[2] << 16;
}

/* The [outer][C][inner] split of tensor t, if iattr's C and inner divide its elements. */
static bool sp_split(const ep_model_t *m, const ep_node_t *nd, uint16_t t, sp_split_t *s) {
    const uint32_t c = nd->iattr[0], inner = sp_inner(nd), elems = m->tensors[t].elems;
    if (c == 0 || inner == 0 || (uint64_t)c * inner > elems || elems % (c * inner) != 0) {
        return false;
    }
    s->c = c;
    s->inner = inner;
    s->outer = elems / (c * inner);
    return true;
}

static bool sp_is_f32(const ep_model_t *m, uint16_t t) {
    return m->tensors[t].dtype == EP_DTYPE_F32;
}

static bool sp_is_batched(const ep_model_t *m, uint16_t t) {
    return (m->tensors[t].flags & EP_TF_BATCHED) != 0;
}

static bool sp_is_index(const ep_model_t *m, uint16_t t) {
    return ep_tensor_is(m, t, EP_DTYPE_I32, false, 1);
}

/* GATHER (x, idx) -> (y) and SCATTER (src, idx) -> (dst): the full tensor (x, dst) has C
 * channels, the partial one (y, src) k; same batched-ness, same outer and inner. */
static ep_status_t sp_rows_prepare(const ep_model_t *m, const ep_node_t *nd, bool gather, const char **why) {
    if (nd->fn != EP_FN_FW || nd->n_in != 2 || nd->n_out != 1 || !ep_iattrs_zero_from(nd, 3)) {
        return ep_reject(why, EP_WHY("gather/scatter.fw: needs (x, idx) -> (y); iattr 0 = C, 1-2 = inner"));
    }
    const uint16_t full = gather ? nd->in[0] : nd->out[0], part = gather ? nd->out[0] : nd->in[0], idx = nd->in[1];
    sp_split_t s;
    if (!sp_is_f32(m, full) || !sp_is_f32(m, part) || !sp_is_index(m, idx) || !sp_split(m, nd, full, &s)) {
        return ep_reject(why, EP_WHY("gather/scatter: f32 tensors whose elements split as [outer][C][inner], an unbatched i32 [k] index"));
    }
    const uint32_t k = m->tensors[idx].elems;
    if (sp_is_batched(m, full) != sp_is_batched(m, part) || (uint64_t)s.outer * k * s.inner != m->tensors[part].elems) {
        return ep_reject(why, EP_WHY("gather/scatter: the partial tensor must be [outer][k][inner] of the full one's batching"));
    }
    if (ep_overlap(m, nd->out[0], nd->in[0]) || ep_overlap(m, nd->out[0], idx)) {
        return ep_reject(why, EP_WHY("gather/scatter: the output overlaps an input"));
    }
    return EP_OK;
}

static ep_status_t gather_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    return sp_rows_prepare(m, nd, true, why);
}

static ep_status_t scatter_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    return sp_rows_prepare(m, nd, false, why);
}

static void sp_rows(const ep_ctx_t *c, const ep_node_t *nd, bool gather) {
    const ep_model_t *m = c->model;
    const uint16_t full_t = gather ? nd->in[0] : nd->out[0];
    sp_split_t s = {0, 0, 0};
    (void)sp_split(m, nd, full_t, &s);
    const int32_t *idx = ep_ctx_i32(c, nd->in[1]);
    const uint32_t k = m->tensors[nd->in[1]].elems;
    const uint32_t rows = sp_is_batched(m, full_t) ? c->n : 1u;
    float *full = ep_ctx_f32(c, full_t), *part = ep_ctx_f32(c, gather ? nd->out[0] : nd->in[0]);
    const size_t row_bytes = (size_t)s.inner * sizeof(float);
    for (uint32_t r = 0; r < rows * s.outer; r++) {
        float *f = full + (size_t)r * s.c * s.inner, *p = part + (size_t)r * k * s.inner;
        for (uint32_t j = 0; j < k; j++) {
            const uint32_t ch = (uint32_t)idx[j];
            if (ch >= s.c) {  /* untrusted index: see the file comment */
                if (gather) {
                    memset(p + (size_t)j * s.inner, 0, row_bytes);
                }
                continue;
            }
            if (gather) {
                memcpy(p + (size_t)j * s.inner, f + (size_t)ch * s.inner, row_bytes);
            } else {
                memcpy(f + (size_t)ch * s.inner, p + (size_t)j * s.inner, row_bytes);
            }
        }
    }
}

static void gather_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    sp_rows(c, nd, true);
}

static void scatter_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    sp_rows(c, nd, false);
}

const ep_op_t ep_op_gather = {
    .name = "gather",
    .prepare = gather_prepare,
    .fn = {[EP_FN_FW] = gather_fw},
};

const ep_op_t ep_op_scatter = {
    .name = "scatter",
    .prepare = scatter_prepare,
    .fn = {[EP_FN_FW] = scatter_fw},
};

/* BIAS_GRAD (dy) -> (db): dy batched f32 split [outer][C][inner], db unbatched f32 [C]. */
static ep_status_t bias_grad_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn != EP_FN_FW || nd->n_in != 1 || nd->n_out != 1 || !ep_iattrs_zero_from(nd, 3)) {
        return ep_reject(why, EP_WHY("bias_grad.fw: needs (dy) -> (db); iattr 0 = C, 1-2 = inner"));
    }
    const uint16_t dy = nd->in[0], db = nd->out[0];
    sp_split_t s;
    if (!sp_is_f32(m, dy) || !sp_is_batched(m, dy) || !sp_split(m, nd, dy, &s)) {
        return ep_reject(why, EP_WHY("bias_grad: dy must be batched f32 whose elements split as [outer][C][inner]"));
    }
    if (!ep_tensor_is(m, db, EP_DTYPE_F32, false, 1) || m->tensors[db].elems != s.c || ep_overlap(m, db, dy)) {
        return ep_reject(why, EP_WHY("bias_grad: db must be an unbatched f32 [C] apart from dy"));
    }
    return EP_OK;
}

static void bias_grad_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    sp_split_t s = {0, 0, 0};
    (void)sp_split(c->model, nd, nd->in[0], &s);
    const float *dy = ep_ctx_f32(c, nd->in[0]);
    float *db = ep_ctx_f32(c, nd->out[0]);
    memset(db, 0, (size_t)s.c * sizeof(float));
    for (uint32_t r = 0; r < c->n * s.outer; r++) {
        for (uint32_t ch = 0; ch < s.c; ch++) {
            const float *v = dy + ((size_t)r * s.c + ch) * s.inner;
            float acc = 0.0f;
            for (uint32_t i = 0; i < s.inner; i++) {
                acc += v[i];
            }
            db[ch] += acc;
        }
    }
}

const ep_op_t ep_op_bias_grad = {
    .name = "bias_grad",
    .prepare = bias_grad_prepare,
    .fn = {[EP_FN_FW] = bias_grad_fw},
};
