/*
 * ep_linear.c — LINEAR: y = x Wᵀ + b, its input gradient and its parameter gradients.
 *
 * As nn.Linear, the layer maps rows of K to rows of M: a sample holds R rows
 * (R = 1 for a feature vector, R = T tokens for a transformer's [T][D]), so
 * y has R·M elements per sample and x has R·K. Everything follows from the
 * tensors: M and K from W [M, K], R = y elements / M. x may have any shape with
 * R·K elements (a flatten layer before a linear one costs nothing).
 */
#include "ep_ops.h"

static bool is_batched_f32(const ep_model_t *m, uint16_t t) {
    return m->tensors[t].dtype == EP_DTYPE_F32 && (m->tensors[t].flags & EP_TF_BATCHED) != 0;
}

/* W is an unbatched f32 [M, K]; out (y, dy) has R·M and in (x, dx) R·K elements per sample. */
static bool shapes_ok(const ep_model_t *m, uint16_t w, uint16_t out, uint16_t in) {
    if (!ep_tensor_is(m, w, EP_DTYPE_F32, false, 2) || !is_batched_f32(m, out) || !is_batched_f32(m, in)) {
        return false;
    }
    const uint32_t M = m->tensors[w].dims[0], K = m->tensors[w].dims[1];
    const uint32_t rows = m->tensors[out].elems / M;
    return rows * M == m->tensors[out].elems && (uint64_t)rows * K == m->tensors[in].elems;
}

/* An unbatched f32 [M] vector, M from W [M, K]. */
static bool is_bias(const ep_model_t *m, uint16_t t, uint16_t w) {
    return ep_tensor_is(m, t, EP_DTYPE_F32, false, 1) && m->tensors[t].dims[0] == m->tensors[w].dims[0];
}

static ep_status_t prepare_fw(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->n_in != 3 || nd->n_out != 1) {
        return ep_reject(why, EP_WHY("linear.fw: needs inputs (x, W, b) and output (y)"));
    }
    const uint16_t x = nd->in[0], w = nd->in[1], b = nd->in[2], y = nd->out[0];
    if (!shapes_ok(m, w, y, x)) {
        return ep_reject(why, EP_WHY("linear.fw: want W f32 [M, K], x and y batched f32 of R*K and R*M elements"));
    }
    if (!is_bias(m, b, w)) {
        return ep_reject(why, EP_WHY("linear.fw: b is not an unbatched f32 [M] matching y[M]"));
    }
    if (ep_overlap(m, y, x) || ep_overlap(m, y, w) || ep_overlap(m, y, b)) {
        return ep_reject(why, EP_WHY("linear.fw: y overlaps an input"));
    }
    return EP_OK;
}

static ep_status_t prepare_bw_input(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->n_in != 2 || nd->n_out != 1) {
        return ep_reject(why, EP_WHY("linear.bw_input: needs inputs (dy, W) and output (dx)"));
    }
    const uint16_t dy = nd->in[0], w = nd->in[1], dx = nd->out[0];
    if (!shapes_ok(m, w, dy, dx)) {
        return ep_reject(why, EP_WHY("linear.bw_input: want W f32 [M, K], dx and dy batched f32 of R*K and R*M elements"));
    }
    if (ep_overlap(m, dx, dy) || ep_overlap(m, dx, w)) {
        return ep_reject(why, EP_WHY("linear.bw_input: dx overlaps an input"));
    }
    return EP_OK;
}

static ep_status_t prepare_bw_param(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->n_in != 2 || nd->n_out != 2) {
        return ep_reject(why, EP_WHY("linear.bw_param: needs inputs (dy, x) and outputs (dW, db)"));
    }
    const uint16_t dy = nd->in[0], x = nd->in[1], dw = nd->out[0], db = nd->out[1];
    if (!shapes_ok(m, dw, dy, x)) {
        return ep_reject(why, EP_WHY("linear.bw_param: want dW f32 [M, K], x and dy batched f32 of R*K and R*M elements"));
    }
    if (!is_bias(m, db, dw)) {
        return ep_reject(why, EP_WHY("linear.bw_param: db is not an unbatched f32 [M] matching dy[M]"));
    }
    if (ep_overlap(m, dw, dy) || ep_overlap(m, dw, x) || ep_overlap(m, db, dy) ||
        ep_overlap(m, db, x) || ep_overlap(m, dw, db)) {
        return ep_reject(why, EP_WHY("linear.bw_param: dW or db overlaps another tensor of the node"));
    }
    return EP_OK;
}

static ep_status_t linear_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    switch (nd->fn) {
    case EP_FN_FW:
        return prepare_fw(m, nd, why);
    case EP_FN_BW_INPUT:
        return prepare_bw_input(m, nd, why);
    case EP_FN_BW_PARAM:
        return prepare_bw_param(m, nd, why);
    default:
        return ep_reject(why, EP_WHY("linear: unknown fn"));
    }
}

/* n·R rows of K → M, from W (or dW) [M, K] and the row count of out. */
static ep_linear_params_t shapes(const ep_ctx_t *c, uint16_t w, uint16_t out) {
    const uint32_t M = c->model->tensors[w].dims[0], K = c->model->tensors[w].dims[1];
    const uint32_t rows = c->n * (c->model->tensors[out].elems / M);
    const ep_linear_params_t p = {.in = {rows, K}, .out = {rows, M}};
    return p;
}

static void linear_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_linear_params_t p = shapes(c, nd->in[1], nd->out[0]);
    ep_linear_fw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->in[2]),
                     ep_ctx_f32(c, nd->out[0]));
}

static void linear_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_linear_params_t p = shapes(c, nd->in[1], nd->in[0]);
    ep_linear_bw_input_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->out[0]));
}

static void linear_bw_param(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_linear_params_t p = shapes(c, nd->out[0], nd->in[0]);
    ep_linear_bw_param_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->out[0]),
                           ep_ctx_f32(c, nd->out[1]));
}

const ep_op_t ep_op_linear = {
    .name = "linear",
    .prepare = linear_prepare,
    .fn = {[EP_FN_FW] = linear_fw, [EP_FN_BW_INPUT] = linear_bw_input, [EP_FN_BW_PARAM] = linear_bw_param},
};

void ep_linear_fw_f32(const ep_linear_params_t *p, const float *restrict x, const float *restrict w,
                      const float *restrict b, float *restrict y) {
    const uint32_t n = p->in.n, K = p->in.c, M = p->out.c;
    for (uint32_t i = 0; i < n; i++, x += K, y += M) {
        uint32_t m = 0;
        for (; m + 4 <= M; m += 4) {
            const float *w0 = w + m * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
            float a0 = b[m], a1 = b[m + 1], a2 = b[m + 2], a3 = b[m + 3];
            for (uint32_t k = 0; k < K; k++) {
                const float xk = x[k];
                a0 += xk * w0[k];
                a1 += xk * w1[k];
                a2 += xk * w2[k];
                a3 += xk * w3[k];
            }
            y[m] = a0;
            y[m + 1] = a1;
            y[m + 2] = a2;
            y[m + 3] = a3;
        }
        for (; m < M; m++) {
            const float *wm = w + m * K;
            float a = b[m];
            for (uint32_t k = 0; k < K; k++) {
                a += x[k] * wm[k];
            }
            y[m] = a;
        }
    }
}

void ep_linear_bw_input_f32(const ep_linear_params_t *p, const float *restrict dy,
                            const float *restrict w, float *restrict dx) {
    const uint32_t n = p->in.n, K = p->in.c, M = p->out.c;
    for (uint32_t i = 0; i < n; i++, dy += M, dx += K) {
        uint32_t k = 0;
        for (; k + 4 <= K; k += 4) {
            const float *wk = w + k;
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            for (uint32_t m = 0; m < M; m++, wk += K) {
                const float d = dy[m];
                a0 += d * wk[0];
                a1 += d * wk[1];
                a2 += d * wk[2];
                a3 += d * wk[3];
            }
            dx[k] = a0;
            dx[k + 1] = a1;
            dx[k + 2] = a2;
            dx[k + 3] = a3;
        }
        for (; k < K; k++) {
            const float *wk = w + k;
            float a = 0.0f;
            for (uint32_t m = 0; m < M; m++, wk += K) {
                a += dy[m] * wk[0];
            }
            dx[k] = a;
        }
    }
}

void ep_linear_bw_param_f32(const ep_linear_params_t *p, const float *restrict dy,
                            const float *restrict x, float *restrict dw, float *restrict db) {
    const uint32_t n = p->in.n, K = p->in.c, M = p->out.c;
    for (uint32_t m = 0; m < M; m++, dw += K) {
        uint32_t k = 0;
        for (; k + 4 <= K; k += 4) {
            const float *xi = x + k;
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            for (uint32_t i = 0; i < n; i++, xi += K) {
                const float d = dy[i * M + m];
                a0 += d * xi[0];
                a1 += d * xi[1];
                a2 += d * xi[2];
                a3 += d * xi[3];
            }
            dw[k] = a0;
            dw[k + 1] = a1;
            dw[k + 2] = a2;
            dw[k + 3] = a3;
        }
        for (; k < K; k++) {
            const float *xi = x + k;
            float a = 0.0f;
            for (uint32_t i = 0; i < n; i++, xi += K) {
                a += dy[i * M + m] * xi[0];
            }
            dw[k] = a;
        }
        float s = 0.0f;
        for (uint32_t i = 0; i < n; i++) {
            s += dy[i * M + m];
        }
        db[m] = s;
    }
}
