/*
 * ep_global_avgpool.c — global average pooling [n][c][hw] -> [n][c] and its input
 * gradient, documented in ep_conv_pool.h. Saves nothing: the gradient needs only dy.
 */
#include "ep_conv_pool.h"
#include "ep_parallel.h"
#include "ep_ops.h"

static void gap_fw_rows(const ep_global_avgpool_params_t *p, const float *restrict x,
                              float *restrict y) {
    const uint32_t hw = p->hw, rows = p->n * p->c;
    const float d = (float)hw;
    for (uint32_t r = 0; r < rows; r++, x += hw) {
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        uint32_t j = 0;
        for (; j + 4 <= hw; j += 4) {
            s0 += x[j];
            s1 += x[j + 1];
            s2 += x[j + 2];
            s3 += x[j + 3];
        }
        for (; j < hw; j++) {
            s0 += x[j];
        }
        y[r] = ((s0 + s1) + (s2 + s3)) / d;
    }
}

static void gap_bw_rows(const ep_global_avgpool_params_t *p, const float *restrict dy,
                                    float *restrict dx) {
    const uint32_t hw = p->hw, rows = p->n * p->c;
    const float d = (float)hw;
    for (uint32_t r = 0; r < rows; r++, dx += hw) {
        const float g = dy[r] / d;
        for (uint32_t j = 0; j < hw; j++) {
            dx[j] = g;
        }
    }
}

/* On a cluster (ep_parallel.h): the n·c rows split over the cores, each row by the
 * serial code above (as one sample of that many channels): core-count independent. */
typedef struct {
    const ep_global_avgpool_params_t *p;
    const float *in;
    float *out;
    int bw;
} gap_job_t;

static void gap_rows(const gap_job_t *j, uint32_t r0, uint32_t r1) {
    ep_global_avgpool_params_t q = *j->p;
    q.n = 1;
    q.c = r1 - r0;
    if (j->bw) {
        gap_bw_rows(&q, j->in + r0, j->out + r0 * q.hw);
    } else {
        gap_fw_rows(&q, j->in + r0 * q.hw, j->out + r0);
    }
}

static void gap_core(void *arg) {
    const gap_job_t *j = arg;
    uint32_t lo, hi;
    ep_par_range(j->p->n * j->p->c, &lo, &hi);
    if (lo < hi) {
        gap_rows(j, lo, hi);
    }
}

static void gap_run(const gap_job_t *j) {
    if (ep_par_num_cores() > 1) {
        ep_par_fork(0, gap_core, (void *)j);
    } else {
        gap_rows(j, 0, j->p->n * j->p->c);
    }
}

void ep_global_avgpool_fw_f32(const ep_global_avgpool_params_t *p, const float *restrict x,
                              float *restrict y) {
    const gap_job_t j = {p, x, y, 0};
    gap_run(&j);
}

void ep_global_avgpool_bw_input_f32(const ep_global_avgpool_params_t *p, const float *restrict dy,
                                    float *restrict dx) {
    const gap_job_t j = {p, dy, dx, 1};
    gap_run(&j);
}

/* ------------------------------------------------------------------------- */
/* GLOBAL_AVGPOOL node (docs/ops/conv_pool.md)                                */
/* ------------------------------------------------------------------------- */

/*
 * x/dx batched f32 [C][...] of rank 2..4 (C = dims[0], hw = the other dims'
 * product); y/dy batched f32 with dims[0] = C and C elements ([C], [C][1] or
 * [C][1][1]). No attributes: every iattr and fattr 0.
 */
static ep_status_t gap_check(const ep_model_t *m, const ep_node_t *nd, uint16_t x, uint16_t y, const char **why) {
    const ep_tensor_t *xt = &m->tensors[x], *yt = &m->tensors[y];
    if (xt->dtype != EP_DTYPE_F32 || !(xt->flags & EP_TF_BATCHED) || xt->rank < 2) {
        return ep_reject(why, EP_WHY("global_avgpool: x/dx must be batched f32 [C][H][W] or [C][L]"));
    }
    if (yt->dtype != EP_DTYPE_F32 || !(yt->flags & EP_TF_BATCHED) || yt->dims[0] != xt->dims[0] ||
        yt->elems != yt->dims[0]) {
        return ep_reject(why, EP_WHY("global_avgpool: y/dy must be batched f32 of C elements, dims[0] = C"));
    }
    for (uint8_t i = 0; i < EP_NODE_IATTRS; i++) {
        if (nd->iattr[i] != 0) {
            return ep_reject(why, EP_WHY("global_avgpool: iattrs must be 0"));
        }
    }
    for (uint8_t i = 0; i < EP_NODE_FATTRS; i++) {
        if (nd->fattr[i] != 0.0f) {
            return ep_reject(why, EP_WHY("global_avgpool: fattrs must be 0"));
        }
    }
    if (ep_overlap(m, x, y)) {
        return ep_reject(why, EP_WHY("global_avgpool: the output overlaps the input"));
    }
    return EP_OK;
}

static ep_status_t global_avgpool_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn != EP_FN_FW && nd->fn != EP_FN_BW_INPUT) {
        return ep_reject(why, EP_WHY("global_avgpool: only fw and bw_input exist"));
    }
    if (nd->n_in != 1 || nd->n_out != 1) {
        return ep_reject(why, nd->fn == EP_FN_FW ? EP_WHY("global_avgpool.fw: needs input (x) and output (y)")
                                                 : EP_WHY("global_avgpool.bw_input: needs input (dy) and output (dx)"));
    }
    /* fw: x = in, y = out; bw_input: dx = out, dy = in */
    return nd->fn == EP_FN_FW ? gap_check(m, nd, nd->in[0], nd->out[0], why)
                              : gap_check(m, nd, nd->out[0], nd->in[0], why);
}

static ep_global_avgpool_params_t gap_geom(const ep_ctx_t *c, uint16_t x) {
    const ep_tensor_t *xt = &c->model->tensors[x];
    const ep_global_avgpool_params_t p = {c->n, xt->dims[0], xt->elems / xt->dims[0]};
    return p;
}

static void global_avgpool_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_global_avgpool_params_t p = gap_geom(c, nd->in[0]);
    ep_global_avgpool_fw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->out[0]));
}

static void global_avgpool_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_global_avgpool_params_t p = gap_geom(c, nd->out[0]);
    ep_global_avgpool_bw_input_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->out[0]));
}

const ep_op_t ep_op_global_avgpool = {
    .name = "global_avgpool",
    .prepare = global_avgpool_prepare,
    .fn = {[EP_FN_FW] = global_avgpool_fw, [EP_FN_BW_INPUT] = global_avgpool_bw_input, [EP_FN_BW_PARAM] = NULL},
};
