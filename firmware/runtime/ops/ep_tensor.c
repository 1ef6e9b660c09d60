/*
 * ep_tensor.c — tensor ops that move or add data: residual add, gradient
 * accumulate (dst += src), channel concat (fw and its gradient split) and the
 * per-sample 2-D transpose (fw and bw). Reshape/flatten need no kernel.
 */
#include "ep_attn_optim.h"
#include "ep_ops.h"

void ep_add_fw_f32(const ep_add_params_t *p, const float *a, const float *b, float *y) {
    const uint32_t count = p->count;
    for (uint32_t i = 0; i < count; i++) {
        y[i] = a[i] + b[i];
    }
}

void ep_accumulate_f32(const ep_accumulate_params_t *p, const float *restrict src,
                       float *restrict dst) {
    const uint32_t count = p->count;
    for (uint32_t i = 0; i < count; i++) {
        dst[i] += src[i];
    }
}

static void copy(uint32_t count, const float *restrict src, float *restrict dst) {
    for (uint32_t i = 0; i < count; i++) {
        dst[i] = src[i];
    }
}

void ep_concat_fw_f32(const ep_concat_params_t *p, const float *restrict a,
                      const float *restrict b, float *restrict y) {
    const uint32_t na = p->c0 * p->inner, nb = p->c1 * p->inner;
    for (uint32_t i = 0; i < p->n; i++, a += na, b += nb, y += na + nb) {
        copy(na, a, y);
        copy(nb, b, y + na);
    }
}

void ep_concat_bw_f32(const ep_concat_params_t *p, const float *restrict dy, float *restrict da,
                      float *restrict db) {
    const uint32_t na = p->c0 * p->inner, nb = p->c1 * p->inner;
    for (uint32_t i = 0; i < p->n; i++, da += na, db += nb, dy += na + nb) {
        copy(na, dy, da);
        copy(nb, dy + na, db);
    }
}

/* y[j][k] = x[k][j] per sample: x [A][B] → y [B][A], 4 rows of x per pass over y's rows;
 * elements of type T (f32, or the int8 codes of TRANSPOSE over s8 tensors). */
#define TRANSPOSE_BODY(T)                                                       \
    for (uint32_t i = 0; i < n; i++, x += A * B, y += A * B) {                  \
        uint32_t k = 0;                                                         \
        for (; k + 4 <= A; k += 4) {                                            \
            const T *x0 = x + k * B, *x1 = x0 + B, *x2 = x1 + B, *x3 = x2 + B;  \
            T *yj = y + k;                                                      \
            for (uint32_t j = 0; j < B; j++, yj += A) {                         \
                yj[0] = x0[j];                                                  \
                yj[1] = x1[j];                                                  \
                yj[2] = x2[j];                                                  \
                yj[3] = x3[j];                                                  \
            }                                                                   \
        }                                                                       \
        for (; k < A; k++) {                                                    \
            const T *xk = x + k * B;                                            \
            T *yj = y + k;                                                      \
            for (uint32_t j = 0; j < B; j++, yj += A) {                         \
                yj[0] = xk[j];                                                  \
            }                                                                   \
        }                                                                       \
    }

static void transpose(uint32_t n, uint32_t A, uint32_t B, const float *restrict x, float *restrict y) {
    TRANSPOSE_BODY(float)
}

static void transpose_s8(uint32_t n, uint32_t A, uint32_t B, const int8_t *restrict x, int8_t *restrict y) {
    TRANSPOSE_BODY(int8_t)
}

void ep_transpose_fw_f32(const ep_transpose_params_t *p, const float *restrict x,
                         float *restrict y) {
    transpose(p->n, p->a, p->b, x, y);
}

void ep_transpose_bw_f32(const ep_transpose_params_t *p, const float *restrict dy,
                         float *restrict dx) {
    transpose(p->n, p->b, p->a, dy, dx);
}

/* ------------------------------------------------------------------------- */
/* Registry: ADD, ACCUMULATE, CONCAT, TRANSPOSE (contracts: docs/ops/attn_optim.md) */
/* ------------------------------------------------------------------------- */

static bool is_batched_f32(const ep_model_t *m, uint16_t t) {
    return m->tensors[t].dtype == EP_DTYPE_F32 && (m->tensors[t].flags & EP_TF_BATCHED) != 0;
}

/* Elements of tensor t this run touches: n rows if batched, all of it otherwise. */
static uint32_t run_count(const ep_ctx_t *c, uint16_t t) {
    const ep_tensor_t *x = &c->model->tensors[t];
    return ((x->flags & EP_TF_BATCHED) ? c->n : 1u) * x->elems;
}

static ep_status_t add_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn != EP_FN_FW) {
        return ep_reject(why, EP_WHY("add: only fw exists"));
    }
    if (nd->n_in != 2 || nd->n_out != 1) {
        return ep_reject(why, EP_WHY("add.fw: needs inputs (a, b) and output (y)"));
    }
    const uint16_t a = nd->in[0], b = nd->in[1], y = nd->out[0];
    if (!is_batched_f32(m, a) || !is_batched_f32(m, b) || !is_batched_f32(m, y)) {
        return ep_reject(why, EP_WHY("add.fw: a, b and y must be batched f32"));
    }
    if (m->tensors[a].elems != m->tensors[y].elems || m->tensors[b].elems != m->tensors[y].elems) {
        return ep_reject(why, EP_WHY("add.fw: a, b and y must have equal elements per sample"));
    }
    if (!ep_disjoint_or_same(m, y, a) || !ep_disjoint_or_same(m, y, b)) {
        return ep_reject(why, EP_WHY("add.fw: y partially overlaps a or b"));
    }
    return EP_OK;
}

static void add_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_add_params_t p = {run_count(c, nd->out[0])};
    ep_add_fw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->out[0]));
}

const ep_op_t ep_op_add = {
    .name = "add",
    .prepare = add_prepare,
    .fn = {[EP_FN_FW] = add_fw},
};

static ep_status_t accumulate_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn != EP_FN_FW) {
        return ep_reject(why, EP_WHY("accumulate: only fw exists"));
    }
    if (nd->n_in != 2 || nd->n_out != 1) {
        return ep_reject(why, EP_WHY("accumulate.fw: needs inputs (acc, src) and output (acc)"));
    }
    const uint16_t acc = nd->in[0], src = nd->in[1];
    if (nd->out[0] != acc) {
        return ep_reject(why, EP_WHY("accumulate.fw: the output must be the same tensor as input 0 (acc)"));
    }
    const ep_tensor_t *ta = &m->tensors[acc], *ts = &m->tensors[src];
    if (ta->dtype != EP_DTYPE_F32 || ts->dtype != EP_DTYPE_F32 ||
        (ta->flags & EP_TF_BATCHED) != (ts->flags & EP_TF_BATCHED)) {
        return ep_reject(why, EP_WHY("accumulate.fw: acc and src must be f32, both batched or both unbatched"));
    }
    if (ta->elems != ts->elems) {
        return ep_reject(why, EP_WHY("accumulate.fw: acc and src must have equal elements"));
    }
    if (ep_overlap(m, acc, src)) {
        return ep_reject(why, EP_WHY("accumulate.fw: src overlaps acc"));
    }
    return EP_OK;
}

static void accumulate_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_accumulate_params_t p = {run_count(c, nd->in[0])};
    ep_accumulate_f32(&p, ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->in[0]));
}

const ep_op_t ep_op_accumulate = {
    .name = "accumulate",
    .prepare = accumulate_prepare,
    .fn = {[EP_FN_FW] = accumulate_fw},
};

/* a [Ca][rest], b [Cb][rest], y [Ca+Cb][rest]: batched f32 of one rank, rest equal. */
static bool concat_shapes_ok(const ep_model_t *m, uint16_t a, uint16_t b, uint16_t y) {
    if (!is_batched_f32(m, a) || !is_batched_f32(m, b) || !is_batched_f32(m, y)) {
        return false;
    }
    const ep_tensor_t *ta = &m->tensors[a], *tb = &m->tensors[b], *ty = &m->tensors[y];
    if (ta->rank != ty->rank || tb->rank != ty->rank) {
        return false;
    }
    for (uint8_t i = 1; i < ty->rank; i++) {
        if (ta->dims[i] != ty->dims[i] || tb->dims[i] != ty->dims[i]) {
            return false;
        }
    }
    return (uint32_t)ta->dims[0] + tb->dims[0] == ty->dims[0];
}

static ep_status_t concat_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn == EP_FN_FW) {
        if (nd->n_in != 2 || nd->n_out != 1) {
            return ep_reject(why, EP_WHY("concat.fw: needs inputs (a, b) and output (y)"));
        }
        const uint16_t a = nd->in[0], b = nd->in[1], y = nd->out[0];
        if (!concat_shapes_ok(m, a, b, y)) {
            return ep_reject(why, EP_WHY("concat.fw: want batched f32 a [Ca][rest], b [Cb][rest], y [Ca+Cb][rest]"));
        }
        if (ep_overlap(m, y, a) || ep_overlap(m, y, b)) {
            return ep_reject(why, EP_WHY("concat.fw: y overlaps an input"));
        }
        return EP_OK;
    }
    if (nd->fn == EP_FN_BW_INPUT) {
        if (nd->n_in != 1 || nd->n_out != 2) {
            return ep_reject(why, EP_WHY("concat.bw_input: needs input (dy) and outputs (da, db)"));
        }
        const uint16_t dy = nd->in[0], da = nd->out[0], db = nd->out[1];
        if (!concat_shapes_ok(m, da, db, dy)) {
            return ep_reject(why, EP_WHY("concat.bw_input: want batched f32 da [Ca][rest], db [Cb][rest], dy [Ca+Cb][rest]"));
        }
        if (ep_overlap(m, da, dy) || ep_overlap(m, db, dy) || ep_overlap(m, da, db)) {
            return ep_reject(why, EP_WHY("concat.bw_input: da, db and dy must be disjoint"));
        }
        return EP_OK;
    }
    return ep_reject(why, EP_WHY("concat: only fw and bw_input exist"));
}

static ep_concat_params_t concat_params(const ep_ctx_t *c, uint16_t a, uint16_t b) {
    const ep_tensor_t *ta = &c->model->tensors[a], *tb = &c->model->tensors[b];
    const ep_concat_params_t p = {c->n, ta->dims[0], tb->dims[0], ta->elems / ta->dims[0]};
    return p;
}

static void concat_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_concat_params_t p = concat_params(c, nd->in[0], nd->in[1]);
    ep_concat_fw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->out[0]));
}

static void concat_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_concat_params_t p = concat_params(c, nd->out[0], nd->out[1]);
    ep_concat_bw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->out[0]), ep_ctx_f32(c, nd->out[1]));
}

const ep_op_t ep_op_concat = {
    .name = "concat",
    .prepare = concat_prepare,
    .fn = {[EP_FN_FW] = concat_fw, [EP_FN_BW_INPUT] = concat_bw_input},
};

/* src [A][B] and dst [B][A]: batched of rank 2, both f32 or both s8 (int8 codes: the
 * exponent is the graph's business, the bytes only move). */
static bool transposed(const ep_model_t *m, uint16_t src, uint16_t dst) {
    const uint8_t dt = m->tensors[src].dtype == EP_DTYPE_S8 ? EP_DTYPE_S8 : EP_DTYPE_F32;
    return ep_tensor_is(m, src, dt, true, 2) && ep_tensor_is(m, dst, dt, true, 2) &&
           m->tensors[src].dims[0] == m->tensors[dst].dims[1] && m->tensors[src].dims[1] == m->tensors[dst].dims[0];
}

static ep_status_t transpose_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn == EP_FN_FW) {
        if (nd->n_in != 1 || nd->n_out != 1) {
            return ep_reject(why, EP_WHY("transpose.fw: needs input (x) and output (y)"));
        }
        if (!transposed(m, nd->in[0], nd->out[0])) {
            return ep_reject(why, EP_WHY("transpose.fw: want batched x [A][B] and y [B][A], both f32 or both s8"));
        }
        if (ep_overlap(m, nd->in[0], nd->out[0])) {
            return ep_reject(why, EP_WHY("transpose.fw: y overlaps x"));
        }
        return EP_OK;
    }
    if (nd->fn == EP_FN_BW_INPUT) {
        if (nd->n_in != 1 || nd->n_out != 1) {
            return ep_reject(why, EP_WHY("transpose.bw_input: needs input (dy) and output (dx)"));
        }
        if (!transposed(m, nd->in[0], nd->out[0])) {
            return ep_reject(why, EP_WHY("transpose.bw_input: want batched dy [B][A] and dx [A][B], both f32 or both s8"));
        }
        if (ep_overlap(m, nd->in[0], nd->out[0])) {
            return ep_reject(why, EP_WHY("transpose.bw_input: dx overlaps dy"));
        }
        return EP_OK;
    }
    return ep_reject(why, EP_WHY("transpose: only fw and bw_input exist"));
}

/* x [A][B] → y [B][A] per sample (fw: x, y; bw_input: dy, dx with A, B of dx). */
static void transpose_run(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_tensor_t *t = &c->model->tensors[nd->fn == EP_FN_FW ? nd->in[0] : nd->out[0]];
    const uint32_t A = nd->fn == EP_FN_FW ? t->dims[0] : t->dims[1], B = nd->fn == EP_FN_FW ? t->dims[1] : t->dims[0];
    if (t->dtype == EP_DTYPE_S8) {
        transpose_s8(c->n, A, B, (const int8_t *)(const void *)(c->arena + c->model->tensors[nd->in[0]].offset),
                     (int8_t *)(void *)(c->arena + c->model->tensors[nd->out[0]].offset));
    } else {
        transpose(c->n, A, B, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->out[0]));
    }
}

const ep_op_t ep_op_transpose = {
    .name = "transpose",
    .prepare = transpose_prepare,
    .fn = {[EP_FN_FW] = transpose_run, [EP_FN_BW_INPUT] = transpose_run},
};
