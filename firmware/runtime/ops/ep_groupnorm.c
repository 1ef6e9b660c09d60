/*
 * ep_groupnorm.c — GROUPNORM kernels: per (sample, group) statistics over the
 * group's contiguous block of (c/G)·hw elements, per-channel affine; forward,
 * input gradient, parameter gradients. Statistics and gradient sums:
 * ep_norm_moments_f32 / ep_norm_dsums_f32 (ep_batchnorm.c).
 */
#include <math.h>

#include "ep_norm_act.h"
#include "ep_ops.h"
#include "ep_parallel.h"

/*
 * On a cluster (ep_parallel.h): fw and bw_input split the n·G (sample, group)
 * pairs, bw_param the channels; each is computed by one core with the serial code,
 * so results do not depend on the core count.
 */
typedef struct {
    const ep_groupnorm_params_t *p;
    const float *in[4];
    float *out[2];
} gn_args_t;

typedef void (*gn_part_fn_t)(const gn_args_t *a, uint32_t lo, uint32_t hi);

typedef struct {
    gn_part_fn_t fn;
    const gn_args_t *a;
    uint32_t count;
} gn_job_t;

static void gn_core(void *arg) {
    const gn_job_t *j = arg;
    uint32_t lo, hi;
    ep_par_range(j->count, &lo, &hi);
    j->fn(j->a, lo, hi);
}

static void gn_run(gn_part_fn_t fn, const gn_args_t *a, uint32_t count) {
    if (ep_par_num_cores() > 1 && count > 1) {
        const gn_job_t j = {fn, a, count};
        ep_par_fork(0, gn_core, (void *)&j);
    } else {
        fn(a, 0, count);
    }
}

static void fw_groups(const gn_args_t *a, uint32_t lo, uint32_t hi) {
    const ep_groupnorm_params_t *p = a->p;
    const float *x = a->in[0], *restrict gamma = a->in[1], *restrict beta = a->in[2];
    float *y = a->out[0], *restrict saved = a->out[1];
    const uint32_t n = p->n, C = p->c, hw = p->hw, G = p->groups, cg = C / G, L = cg * hw;
    const uint32_t ng = n * G;
    for (uint32_t ig = lo; ig < hi; ig++) {
        const uint32_t i = ig / G, g = ig % G;
        {
            const uint32_t base = (i * C + g * cg) * hw;
            float mean, var;
            ep_norm_moments_f32(x + base, 1, L, L, &mean, &var);
            const float k = 1.0f / sqrtf(var + p->eps);
            saved[i * G + g] = mean;
            saved[ng + i * G + g] = k;
            for (uint32_t cc = 0; cc < cg; cc++) {
                const uint32_t ch = g * cg + cc;
                const float ga = k * gamma[ch], b = beta[ch];
                const float *xc = x + base + cc * hw;
                float *yc = y + base + cc * hw;
                for (uint32_t j = 0; j < hw; j++) {
                    yc[j] = fmaf(xc[j] - mean, ga, b);
                }
            }
        }
    }
}

void ep_groupnorm_fw_f32(const ep_groupnorm_params_t *p, const float *x, const float *restrict gamma,
                         const float *restrict beta, float *y, float *restrict saved) {
    const gn_args_t a = {p, {x, gamma, beta}, {y, saved}};
    gn_run(fw_groups, &a, p->n * p->groups);
}

static void bw_input_groups(const gn_args_t *args, uint32_t lo, uint32_t hi) {
    const ep_groupnorm_params_t *p = args->p;
    const float *dy = args->in[0], *restrict x = args->in[1], *restrict gamma = args->in[2];
    const float *restrict saved = args->in[3];
    float *dx = args->out[0];
    const uint32_t n = p->n, C = p->c, hw = p->hw, G = p->groups, cg = C / G, L = cg * hw;
    const uint32_t ng = n * G;
    const float inv_l = 1.0f / (float)L;
    for (uint32_t ig = lo; ig < hi; ig++) {
        const uint32_t i = ig / G, g = ig % G;
        {
            const uint32_t base = (i * C + g * cg) * hw;
            const float mean = saved[i * G + g], k = saved[ng + i * G + g];
            /* s = Σ dy·gamma, t = Σ dy·gamma·(x − mean): per-channel sums times gamma[c] */
            float s = 0.0f, t = 0.0f;
            for (uint32_t cc = 0; cc < cg; cc++) {
                float sdy, sdyx;
                ep_norm_dsums_f32(dy + base + cc * hw, x + base + cc * hw, 1, hw, hw, mean, &sdy, &sdyx);
                s = fmaf(gamma[g * cg + cc], sdy, s);
                t = fmaf(gamma[g * cg + cc], sdyx, t);
            }
            /* dx = k·(gamma·dy − s/L − (x − mean)·k²·t/L) */
            const float c1 = k * s * inv_l;
            const float c2 = k * k * k * t * inv_l;
            for (uint32_t cc = 0; cc < cg; cc++) {
                const float a = k * gamma[g * cg + cc];
                const float *xc = x + base + cc * hw, *gc = dy + base + cc * hw;
                float *dc = dx + base + cc * hw;
                for (uint32_t j = 0; j < hw; j++) {
                    dc[j] = fmaf(-(xc[j] - mean), c2, fmaf(a, gc[j], -c1));
                }
            }
        }
    }
}

void ep_groupnorm_bw_input_f32(const ep_groupnorm_params_t *p, const float *dy, const float *restrict x,
                               const float *restrict gamma, const float *restrict saved, float *dx) {
    const gn_args_t a = {p, {dy, x, gamma, saved}, {dx}};
    gn_run(bw_input_groups, &a, p->n * p->groups);
}

static void bw_param_chs(const gn_args_t *a, uint32_t c0, uint32_t c1) {
    const ep_groupnorm_params_t *p = a->p;
    const float *restrict dy = a->in[0], *restrict x = a->in[1], *restrict saved = a->in[2];
    float *restrict dgamma = a->out[0], *restrict dbeta = a->out[1];
    const uint32_t n = p->n, C = p->c, hw = p->hw, G = p->groups, cg = C / G;
    const uint32_t ng = n * G;
    for (uint32_t ch = c0; ch < c1; ch++) {
        const uint32_t g = ch / cg; /* once per channel, not per element */
        float sg = 0.0f, sb = 0.0f;
        for (uint32_t i = 0; i < n; i++) {
            float sdy, sdyx;
            const uint32_t off = (i * C + ch) * hw;
            ep_norm_dsums_f32(dy + off, x + off, 1, hw, hw, saved[i * G + g], &sdy, &sdyx);
            sg = fmaf(sdyx, saved[ng + i * G + g], sg);
            sb += sdy;
        }
        dgamma[ch] = sg;
        dbeta[ch] = sb;
    }
}

void ep_groupnorm_bw_param_f32(const ep_groupnorm_params_t *p, const float *restrict dy,
                               const float *restrict x, const float *restrict saved,
                               float *restrict dgamma, float *restrict dbeta) {
    const gn_args_t a = {p, {dy, x, saved}, {dgamma, dbeta}};
    gn_run(bw_param_chs, &a, p->c);
}

/* ------------------------------------------------------------------------- */
/* GROUPNORM node (docs/ops/norm_act.md)                                      */
/* ------------------------------------------------------------------------- */

/*
 * iattr[0] groups G ≥ 1, dividing C; fattr[0] eps > 0; every other attribute 0.
 * x (y, dy, dx) is batched f32 [C], [C][L] or [C][H][W]; C = dims[0]. gamma, beta
 * and their gradients are unbatched f32 [C]; saved is BATCHED f32 [2·G] (the
 * kernel stores [mean[n][G] | inv_std[n][G]]).
 *
 *   fw        in (x, gamma, beta)        out (y, saved)       y may alias x
 *   bw_input  in (dy, x, gamma, saved)   out (dx)             dx may alias dy
 *   bw_param  in (dy, x, saved)          out (dgamma, dbeta)
 */
static bool gn_same_act(const ep_model_t *m, uint16_t a, uint16_t b) {
    const ep_tensor_t *x = &m->tensors[a], *y = &m->tensors[b];
    return x->dtype == EP_DTYPE_F32 && y->dtype == EP_DTYPE_F32 && (x->flags & EP_TF_BATCHED) != 0 &&
           (y->flags & EP_TF_BATCHED) != 0 && x->rank <= 3 && ep_same_shape(m, a, b);
}

static bool gn_is_vec(const ep_model_t *m, uint16_t t, uint32_t len) {
    return ep_tensor_is(m, t, EP_DTYPE_F32, false, 1) && m->tensors[t].elems == len;
}

static bool gn_is_saved(const ep_model_t *m, const ep_node_t *nd, uint16_t s) {
    return ep_tensor_is(m, s, EP_DTYPE_F32, true, 1) && m->tensors[s].elems == 2u * nd->iattr[0];
}

static ep_status_t groupnorm_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    for (uint8_t i = 1; i < EP_NODE_IATTRS; i++) {
        if (nd->iattr[i] != 0) {
            return ep_reject(why, EP_WHY("groupnorm: iattr[1..11] must be 0"));
        }
    }
    if (nd->iattr[0] == 0) {
        return ep_reject(why, EP_WHY("groupnorm: zero groups (iattr[0])"));
    }
    if (!(nd->fattr[0] > 0.0f)) {
        return ep_reject(why, EP_WHY("groupnorm: eps (fattr[0]) must be > 0"));
    }
    for (uint8_t i = 1; i < EP_NODE_FATTRS; i++) {
        if (nd->fattr[i] != 0.0f) {
            return ep_reject(why, EP_WHY("groupnorm: fattr[1..5] must be 0"));
        }
    }
    const uint8_t want_in = nd->fn == EP_FN_FW ? 3 : nd->fn == EP_FN_BW_INPUT ? 4 : 3;
    const uint8_t want_out = nd->fn == EP_FN_BW_INPUT ? 1 : 2;
    if (nd->fn > EP_FN_BW_PARAM) {
        return ep_reject(why, EP_WHY("groupnorm: unknown fn"));
    }
    if (nd->n_in != want_in || nd->n_out != want_out) {
        return ep_reject(why, EP_WHY("groupnorm: needs fw (x, gamma, beta) -> (y, saved), bw_input (dy, x, gamma, saved) -> (dx), bw_param (dy, x, saved) -> (dgamma, dbeta)"));
    }
    /* the activation every fn has: x (fw) or dy (bw); and its partner of the same shape */
    const uint16_t a = nd->in[0];
    const uint16_t b = nd->fn == EP_FN_FW ? nd->out[0] : nd->in[1];
    if (!gn_same_act(m, a, b) || (nd->fn == EP_FN_BW_INPUT && !gn_same_act(m, a, nd->out[0]))) {
        return ep_reject(why, EP_WHY("groupnorm: x, y, dy, dx must be batched f32 [C], [C][L] or [C][H][W] of the same shape"));
    }
    const uint32_t C = m->tensors[a].dims[0];
    if (C % nd->iattr[0] != 0) {
        return ep_reject(why, EP_WHY("groupnorm: groups does not divide C"));
    }
    bool vecs;
    int alias_in = -1;
    if (nd->fn == EP_FN_FW) {
        alias_in = 0;
        vecs = gn_is_vec(m, nd->in[1], C) && gn_is_vec(m, nd->in[2], C) && gn_is_saved(m, nd, nd->out[1]);
    } else if (nd->fn == EP_FN_BW_INPUT) {
        vecs = gn_is_vec(m, nd->in[2], C) && gn_is_saved(m, nd, nd->in[3]);
        alias_in = 0;
    } else {
        vecs = gn_is_saved(m, nd, nd->in[2]) && gn_is_vec(m, nd->out[0], C) && gn_is_vec(m, nd->out[1], C);
    }
    if (!vecs) {
        return ep_reject(why, EP_WHY("groupnorm: gamma, beta, dgamma, dbeta must be unbatched f32 [C], saved a batched f32 [2*groups]"));
    }
    if (!ep_outputs_disjoint(m, nd, alias_in)) {
        return ep_reject(why, EP_WHY("groupnorm: an output overlaps another tensor of the node (only y over x, dx over dy exactly)"));
    }
    return EP_OK;
}

static ep_groupnorm_params_t gn_shape(const ep_ctx_t *c, const ep_node_t *nd, uint16_t x) {
    const ep_tensor_t *t = &c->model->tensors[x];
    const ep_groupnorm_params_t p = {.n = c->n, .c = t->dims[0], .hw = t->elems / t->dims[0],
                                     .groups = nd->iattr[0], .eps = nd->fattr[0]};
    return p;
}

static void groupnorm_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_groupnorm_params_t p = gn_shape(c, nd, nd->in[0]);
    ep_groupnorm_fw_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->in[2]),
                        ep_ctx_f32(c, nd->out[0]), ep_ctx_f32(c, nd->out[1]));
}

static void groupnorm_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_groupnorm_params_t p = gn_shape(c, nd, nd->in[1]);
    ep_groupnorm_bw_input_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->in[2]),
                              ep_ctx_f32(c, nd->in[3]), ep_ctx_f32(c, nd->out[0]));
}

static void groupnorm_bw_param(const ep_ctx_t *c, const ep_node_t *nd) {
    const ep_groupnorm_params_t p = gn_shape(c, nd, nd->in[1]);
    ep_groupnorm_bw_param_f32(&p, ep_ctx_f32(c, nd->in[0]), ep_ctx_f32(c, nd->in[1]), ep_ctx_f32(c, nd->in[2]),
                              ep_ctx_f32(c, nd->out[0]), ep_ctx_f32(c, nd->out[1]));
}

const ep_op_t ep_op_groupnorm = {
    .name = "groupnorm",
    .prepare = groupnorm_prepare,
    .fn = {[EP_FN_FW] = groupnorm_fw, [EP_FN_BW_INPUT] = groupnorm_bw_input, [EP_FN_BW_PARAM] = groupnorm_bw_param},
};
