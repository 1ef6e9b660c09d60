/*
 * ep_q8_eltwise.c — the int8 boundary and element-wise ops (docs/ops/int8.md):
 *   QUANTIZE    FW  in (x f32)            out (q s8, e i32[1])       dynamic exponent
 *   DEQUANTIZE  FW  in (q s8, e i32[1])   out (y f32)
 *   RELU_Q8     FW  in (x s8, e i32[1])   out (y s8, e_y i32[1])     y may alias x
 *               BW  in (dy s8, e i32[1], y s8) out (dx s8, e_dx i32[1])  dx may alias dy
 *   ACT_Q8      FW  in (x s8, e_x)        out (y s8, e_y)            y may alias x
 *               BW  in (dy s8, e_dy, t s8, e_t) out (dx s8, e_dx)     dx may alias dy or t
 *   ADD_Q8      FW  in (a s8, e_a, b s8, e_b)   out (y s8, e_y)      y may alias a or b
 * x/q/y share one shape and batchedness (batched: one exponent for the whole batch).
 * ACT_Q8 (the activation named by iattr[0]) and ADD_Q8 compute exactly DEQUANTIZE → the
 * f32 node → QUANTIZE, bit for bit. ACT_Q8 runs the f32 kernels on the 256 code values
 * only (a code table forward, the derivative table of the backward); ADD_Q8 sums the
 * codes in int32 where that is exact (exponents at most 16 apart), else runs the f32
 * kernel on EP_Q8_CHUNK-element stack chunks of dequantized codes. An int8 output
 * takes two passes: the largest magnitude, then the codes.
 */
#include "ep_attn_optim.h"
#include "ep_norm_act.h"
#include "ep_q8.h"

static bool same_elems(const ep_model_t *m, uint16_t a, uint16_t b) {
    const ep_tensor_t *x = &m->tensors[a], *y = &m->tensors[b];
    return x->elems == y->elems && (x->flags & EP_TF_BATCHED) == (y->flags & EP_TF_BATCHED);
}

/* ---- QUANTIZE -------------------------------------------------------------------- */

static ep_status_t quantize_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn != EP_FN_FW || nd->n_in != 1 || nd->n_out != 2) {
        return ep_reject(why, EP_WHY("quantize.fw: needs input (x) and outputs (q, e)"));
    }
    const uint16_t x = nd->in[0], q = nd->out[0], e = nd->out[1];
    if (m->tensors[x].dtype != EP_DTYPE_F32 || m->tensors[q].dtype != EP_DTYPE_S8 || !same_elems(m, x, q)) {
        return ep_reject(why, EP_WHY("quantize: want x f32 and q s8 of the same size and batchedness"));
    }
    if (!ep_q8_is_exp(m, e, 1)) {
        return ep_reject(why, EP_WHY("quantize: e must be an unbatched i32 [1]"));
    }
    if (!(ep_iattrs_zero_from(nd, 0) && ep_fattrs_zero(nd)) || !ep_outputs_disjoint(m, nd, -1)) {
        return ep_reject(why, EP_WHY("quantize: attrs must be 0 and outputs disjoint from x and each other"));
    }
    return EP_OK;
}

static void quantize_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    ep_ctx_i32(c, nd->out[1])[0] =
        ep_q8_quantize_f32(ep_q8_count(c, nd->in[0]), ep_ctx_f32(c, nd->in[0]), ep_ctx_s8(c, nd->out[0]));
}

const ep_op_t ep_op_quantize = {.name = "quantize", .prepare = quantize_prepare, .fn = {[EP_FN_FW] = quantize_fw}};

/* ---- DEQUANTIZE -------------------------------------------------------------------- */

static ep_status_t dequantize_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn != EP_FN_FW || nd->n_in != 2 || nd->n_out != 1) {
        return ep_reject(why, EP_WHY("dequantize.fw: needs inputs (q, e) and output (y)"));
    }
    const uint16_t q = nd->in[0], e = nd->in[1], y = nd->out[0];
    if (m->tensors[q].dtype != EP_DTYPE_S8 || m->tensors[y].dtype != EP_DTYPE_F32 || !same_elems(m, q, y)) {
        return ep_reject(why, EP_WHY("dequantize: want q s8 and y f32 of the same size and batchedness"));
    }
    if (!ep_q8_is_exp(m, e, 1)) {
        return ep_reject(why, EP_WHY("dequantize: e must be an unbatched i32 [1]"));
    }
    if (!(ep_iattrs_zero_from(nd, 0) && ep_fattrs_zero(nd)) || !ep_outputs_disjoint(m, nd, -1)) {
        return ep_reject(why, EP_WHY("dequantize: attrs must be 0 and y disjoint from the inputs"));
    }
    return EP_OK;
}

static void dequantize_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    ep_q8_dequantize_f32(ep_q8_count(c, nd->in[0]), ep_ctx_s8(c, nd->in[0]), ep_ctx_i32(c, nd->in[1])[0],
                         ep_ctx_f32(c, nd->out[0]));
}

const ep_op_t ep_op_dequantize = {
    .name = "dequantize", .prepare = dequantize_prepare, .fn = {[EP_FN_FW] = dequantize_fw}};

/* ---- RELU_Q8 ---------------------------------------------------------------------- */

static ep_status_t relu_q8_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (!(ep_iattrs_zero_from(nd, 0) && ep_fattrs_zero(nd))) {
        return ep_reject(why, EP_WHY("relu_q8: attrs must be 0"));
    }
    if (nd->fn == EP_FN_FW) {
        if (nd->n_in != 2 || nd->n_out != 2) {
            return ep_reject(why, EP_WHY("relu_q8.fw: needs inputs (x, e) and outputs (y, e_y)"));
        }
        const uint16_t x = nd->in[0], y = nd->out[0];
        if (!ep_q8_is_batched(m, x, EP_DTYPE_S8) || m->tensors[y].dtype != EP_DTYPE_S8 || !same_elems(m, x, y) ||
            !ep_q8_is_exp(m, nd->in[1], 1) || !ep_q8_is_exp(m, nd->out[1], 1)) {
            return ep_reject(why, EP_WHY("relu_q8.fw: want x, y batched s8 of one size, e and e_y i32 [1]"));
        }
        if (!ep_outputs_disjoint(m, nd, 0)) {
            return ep_reject(why, EP_WHY("relu_q8.fw: outputs overlap inputs (only y over x exactly is allowed)"));
        }
        return EP_OK;
    }
    if (nd->fn == EP_FN_BW_INPUT) {
        if (nd->n_in != 3 || nd->n_out != 2) {
            return ep_reject(why, EP_WHY("relu_q8.bw_input: needs inputs (dy, e, y) and outputs (dx, e_dx)"));
        }
        const uint16_t dy = nd->in[0], y = nd->in[2], dx = nd->out[0];
        if (!ep_q8_is_batched(m, dy, EP_DTYPE_S8) || m->tensors[y].dtype != EP_DTYPE_S8 ||
            m->tensors[dx].dtype != EP_DTYPE_S8 || !same_elems(m, dy, y) || !same_elems(m, dy, dx) ||
            !ep_q8_is_exp(m, nd->in[1], 1) || !ep_q8_is_exp(m, nd->out[1], 1)) {
            return ep_reject(why, EP_WHY("relu_q8.bw_input: want dy, y, dx batched s8 of one size, e and e_dx i32 [1]"));
        }
        if (!ep_outputs_disjoint(m, nd, 0)) {
            return ep_reject(why, EP_WHY("relu_q8.bw_input: outputs overlap inputs (only dx over dy exactly is allowed)"));
        }
        return EP_OK;
    }
    return ep_reject(why, EP_WHY("relu_q8: unknown fn"));
}

static void relu_q8_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const uint32_t count = ep_q8_count(c, nd->in[0]);
    const int8_t *x = ep_ctx_s8(c, nd->in[0]);
    int8_t *y = ep_ctx_s8(c, nd->out[0]);
    for (uint32_t i = 0; i < count; i++) {
        y[i] = x[i] > 0 ? x[i] : 0;
    }
    ep_ctx_i32(c, nd->out[1])[0] = ep_ctx_i32(c, nd->in[1])[0];
}

static void relu_q8_bw(const ep_ctx_t *c, const ep_node_t *nd) {
    const uint32_t count = ep_q8_count(c, nd->in[0]);
    const int8_t *dy = ep_ctx_s8(c, nd->in[0]), *y = ep_ctx_s8(c, nd->in[2]);
    int8_t *dx = ep_ctx_s8(c, nd->out[0]);
    for (uint32_t i = 0; i < count; i++) {
        dx[i] = y[i] > 0 ? dy[i] : 0;
    }
    ep_ctx_i32(c, nd->out[1])[0] = ep_ctx_i32(c, nd->in[1])[0];
}

const ep_op_t ep_op_relu_q8 = {
    .name = "relu_q8",
    .prepare = relu_q8_prepare,
    .fn = {[EP_FN_FW] = relu_q8_fw, [EP_FN_BW_INPUT] = relu_q8_bw},
};

/* ---- ACT_Q8 --------------------------------------------------------------------------- */

typedef void (*act_fw_t)(const ep_act_params_t *p, const float *x, float *y);
typedef void (*act_bw_t)(const ep_act_params_t *p, const float *dy, const float *t, float *dx);

static const struct {
    uint16_t op;
    act_fw_t fw;
    act_bw_t bw;
} ACTS[] = {
    {EP_OP_RELU6, ep_relu6_fw_f32, ep_relu6_bw_f32}, {EP_OP_ELU, ep_elu_fw_f32, ep_elu_bw_f32},
    {EP_OP_GELU, ep_gelu_fw_f32, ep_gelu_bw_f32},    {EP_OP_SIGMOID, ep_sigmoid_fw_f32, ep_sigmoid_bw_f32},
    {EP_OP_TANH, ep_tanh_fw_f32, ep_tanh_bw_f32},
};

static int act_index(uint16_t op) {
    for (int i = 0; i < (int)(sizeof ACTS / sizeof ACTS[0]); i++) {
        if (ACTS[i].op == op) {
            return i;
        }
    }
    return -1;
}

/*
 * iattr[0] the activation's f32 opcode (RELU6, ELU, GELU, SIGMOID, TANH); fattr[0]
 * ELU's alpha ≥ 0 (0 for the others); everything else 0. bw_input's t is the
 * forward's output y (its input x for GELU), with its exponent. All activations and
 * errors batched s8 with the same element count.
 */
static ep_status_t act_q8_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    const int a = act_index(nd->iattr[0]);
    if (a < 0 || !ep_iattrs_zero_from(nd, 1)) {
        return ep_reject(why, EP_WHY("act_q8: iattr[0] must name RELU6, ELU, GELU, SIGMOID or TANH, iattr[1..11] 0"));
    }
    for (uint8_t i = 0; i < EP_NODE_FATTRS; i++) {
        if (i == 0 && nd->iattr[0] == EP_OP_ELU ? !(nd->fattr[0] >= 0.0f) : nd->fattr[i] != 0.0f) {
            return ep_reject(why, EP_WHY("act_q8: alpha (fattr[0]) >= 0 for ELU, every other fattr 0"));
        }
    }
    const bool bw = nd->fn == EP_FN_BW_INPUT;
    if ((nd->fn != EP_FN_FW && !bw) || nd->n_in != (bw ? 4 : 2) || nd->n_out != 2) {
        return ep_reject(why, EP_WHY("act_q8: needs fw (x, e_x) -> (y, e_y) or bw_input (dy, e_dy, t, e_t) -> (dx, e_dx)"));
    }
    const uint16_t x = nd->in[0];
    const uint32_t elems = m->tensors[x].elems;
    bool ok = ep_q8_is_batched(m, x, EP_DTYPE_S8) && ep_q8_is_batched(m, nd->out[0], EP_DTYPE_S8) &&
              m->tensors[nd->out[0]].elems == elems && ep_q8_is_exp(m, nd->in[1], 1) && ep_q8_is_exp(m, nd->out[1], 1);
    if (bw) {
        ok = ok && ep_q8_is_batched(m, nd->in[2], EP_DTYPE_S8) && m->tensors[nd->in[2]].elems == elems &&
             ep_q8_is_exp(m, nd->in[3], 1);
    }
    if (!ok) {
        return ep_reject(why, EP_WHY("act_q8: x, y, dy, t, dx must be batched s8 of one size, each with an i32 [1] exponent"));
    }
    if (!ep_outputs_disjoint(m, nd, 0) || (bw && !ep_disjoint_or_same(m, nd->out[0], nd->in[2]))) {
        return ep_reject(why, EP_WHY("act_q8: an output overlaps an input or the other output (only y over x, dx over dy or t exactly)"));
    }
    return EP_OK;
}

/* The input gradient's passes over elements [i0, i1) (ep_q8_two_pass). dx may be dy or t:
 * element i is read before it is written. With keep (every g is 0 or 1: ReLU6), dy · sd ·
 * g[t] is dy · sd or 0, exactly, so the largest magnitude is the largest |dy| kept times sd,
 * and a code is dy shifted left by e_dy − e_dx (never right: the kept |dy| fit in the new
 * exponent) or 0: integers only, the same bits. */
typedef struct {
    const int8_t *dy, *t;
    int8_t *dx;
    float sd;
    const float *g;
    const uint8_t *keep;
} act_bwi_job_t;

static float act_q8_bw_pass(void *arg, uint32_t i0, uint32_t i1, const int32_t *e) {
    const act_bwi_job_t *b = arg;
    const int8_t *dy = b->dy, *t = b->t; /* locals: the int8 stores could alias *b */
    const float sd = b->sd, *g = b->g;
    const uint8_t *keep = b->keep;
    int8_t *dx = b->dx;
    if (e == NULL && keep != NULL) {
        int32_t m = 0;
        for (uint32_t i = i0; i < i1; i++) {
            const int32_t a = keep[(uint8_t)t[i]] ? (dy[i] < 0 ? -dy[i] : dy[i]) : 0;
            m = a > m ? a : m;
        }
        return (float)m * sd;
    }
    float amax = 0.0f;
    if (e == NULL) {
        for (uint32_t i = i0; i < i1; i++) {
            amax = ep_q8_maxabs_step(amax, (float)dy[i] * sd * g[(uint8_t)t[i]]);
        }
        return amax;
    }
    const float qs = ep_q8_quant_scale(*e);
    const int32_t k = keep != NULL ? ep_q8_code_shift(sd, qs) : -1;
    if (k >= 0) {
        for (uint32_t i = i0; i < i1; i++) {
            dx[i] = (int8_t)(keep[(uint8_t)t[i]] ? dy[i] * (1 << k) : 0);
        }
        return amax;
    }
    for (uint32_t i = i0; i < i1; i++) {
        dx[i] = ep_q8_quantize_s((float)dy[i] * sd * g[(uint8_t)t[i]], qs);
    }
    return amax;
}

/* bw_input: every f32 kernel computes dx = dy · g(t) (ReLU6 and ELU's x > 0 side as dy or
 * 0: the same codes as dy · 1 and dy · 0), so g of the 256 t codes is the kernel at dy = 1,
 * and dx = dy · g[t] element by element, in two passes (the largest magnitude, the codes). */
static void act_q8_bw_input(const ep_ctx_t *c, const ep_node_t *nd) {
    const uint32_t count = ep_q8_count(c, nd->in[0]);
    const int8_t *dy = ep_ctx_s8(c, nd->in[0]), *t = ep_ctx_s8(c, nd->in[2]);
    const float sd = ep_q8_ctx_scale(c, nd->in[1]), st = ep_q8_ctx_scale(c, nd->in[3]);
    const int k = act_index(nd->iattr[0]);
    const ep_act_params_t p = {.count = EP_Q8_CHUNK, .alpha = nd->fattr[0]};
    float g[256], ones[EP_Q8_CHUNK], tv[EP_Q8_CHUNK];
    uint8_t keep[256];
    bool binary = true;
    for (uint32_t j = 0; j < EP_Q8_CHUNK; j++) {
        ones[j] = 1.0f;
    }
    for (uint32_t u0 = 0; u0 < 256u; u0 += EP_Q8_CHUNK) {
        for (uint32_t j = 0; j < EP_Q8_CHUNK; j++) {
            tv[j] = (float)(int8_t)(uint8_t)(u0 + j) * st;
        }
        ACTS[k].bw(&p, ones, tv, g + u0);
    }
    for (uint32_t u = 0; u < 256u; u++) {
        keep[u] = g[u] == 1.0f;
        binary = binary && (keep[u] || g[u] == 0.0f);
    }
    act_bwi_job_t b = {dy, t, ep_ctx_s8(c, nd->out[0]), sd, g, binary ? keep : NULL};
    ep_ctx_i32(c, nd->out[1])[0] = ep_q8_two_pass(count, (uint64_t)count * EP_Q8_PAR_ELEM, act_q8_bw_pass, &b);
}

/* fw: y depends on one code, of 256: the f32 kernel on every code value (EP_Q8_CHUNK at a
 * time: the kernels are element-wise, so a value's result is the same in any call), the
 * largest magnitude over the codes present, then one table lookup per element. */
static float act_q8_codes(const ep_node_t *nd, float sa, const uint8_t *seen, int32_t e, int8_t *table) {
    const int k = act_index(nd->iattr[0]);
    const ep_act_params_t p = {.count = EP_Q8_CHUNK, .alpha = nd->fattr[0]};
    float f[EP_Q8_CHUNK], amax = 0.0f;
    for (uint32_t u0 = 0; u0 < 256u; u0 += EP_Q8_CHUNK) {
        for (uint32_t j = 0; j < EP_Q8_CHUNK; j++) {
            f[j] = (float)(int8_t)(uint8_t)(u0 + j) * sa;
        }
        ACTS[k].fw(&p, f, f);
        amax = ep_q8_code_table(f, u0, EP_Q8_CHUNK, seen, table, e, amax);
    }
    return amax;
}

static void act_q8_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const uint32_t count = ep_q8_count(c, nd->in[0]);
    const int8_t *x = ep_ctx_s8(c, nd->in[0]);
    const float sa = ep_q8_ctx_scale(c, nd->in[1]);
    uint8_t seen[256];
    int8_t table[256];
    ep_q8_codes_seen(x, 1, count, 0, seen);
    const int32_t e = ep_q8_exp_for_maxabs(act_q8_codes(nd, sa, seen, 0, NULL));
    (void)act_q8_codes(nd, sa, NULL, e, table);
    ep_q8_codes_map(table, x, 1, count, 0, ep_ctx_s8(c, nd->out[0]));
    ep_ctx_i32(c, nd->out[1])[0] = e;
}

const ep_op_t ep_op_act_q8 = {
    .name = "act_q8",
    .prepare = act_q8_prepare,
    .fn = {[EP_FN_FW] = act_q8_fw, [EP_FN_BW_INPUT] = act_q8_bw_input, [EP_FN_BW_PARAM] = NULL},
};

/* ---- ADD_Q8 ----------------------------------------------------------------------------- */

/* a, b, y batched s8 with one element count, exponents i32 [1]; no attributes. Also the
 * sum of two int8 gradients where a tensor feeds two layers. */
static ep_status_t add_q8_prepare(const ep_model_t *m, const ep_node_t *nd, const char **why) {
    if (nd->fn != EP_FN_FW || nd->n_in != 4 || nd->n_out != 2 || !ep_iattrs_zero_from(nd, 0) || !ep_fattrs_zero(nd)) {
        return ep_reject(why, EP_WHY("add_q8: needs fw (a, e_a, b, e_b) -> (y, e_y) and no attributes"));
    }
    const uint16_t a = nd->in[0], b = nd->in[2], y = nd->out[0];
    const uint32_t E = m->tensors[y].elems;
    if (!ep_q8_is_batched(m, a, EP_DTYPE_S8) || !ep_q8_is_batched(m, b, EP_DTYPE_S8) ||
        !ep_q8_is_batched(m, y, EP_DTYPE_S8) || m->tensors[a].elems != E || m->tensors[b].elems != E ||
        !ep_q8_is_exp(m, nd->in[1], 1) || !ep_q8_is_exp(m, nd->in[3], 1) || !ep_q8_is_exp(m, nd->out[1], 1)) {
        return ep_reject(why, EP_WHY("add_q8: a, b, y batched s8 of one size with i32 [1] exponents"));
    }
    if (!ep_disjoint_or_same(m, y, a) || !ep_disjoint_or_same(m, y, b) || ep_overlap(m, nd->out[1], a) ||
        ep_overlap(m, nd->out[1], b) || ep_overlap(m, nd->out[1], y) || ep_overlap(m, nd->out[1], nd->in[1]) ||
        ep_overlap(m, nd->out[1], nd->in[3])) {
        return ep_reject(why, EP_WHY("add_q8: y partially overlaps a or b, or e_y overlaps a tensor of the node"));
    }
    return EP_OK;
}

static float add_q8_pass(uint32_t count, const int8_t *a, float sa, const int8_t *b, float sb, int32_t e, int8_t *out) {
    float fa[EP_Q8_CHUNK], fb[EP_Q8_CHUNK], amax = 0.0f;
    for (uint32_t i0 = 0; i0 < count; i0 += EP_Q8_CHUNK) {
        const uint32_t len = count - i0 < EP_Q8_CHUNK ? count - i0 : EP_Q8_CHUNK;
        const ep_add_params_t p = {len};
        for (uint32_t j = 0; j < len; j++) {
            fa[j] = (float)a[i0 + j] * sa;
            fb[j] = (float)b[i0 + j] * sb;
        }
        ep_add_fw_f32(&p, fa, fb, fa);
        amax = ep_q8_chunk_out(fa, len, out != NULL ? out + i0 : NULL, e, amax);
    }
    return amax;
}

/* An exponent as DEQUANTIZE applies it (ep_q8_dequant_scale's clamp). */
static int32_t fexp(int32_t e) {
    return e < EP_Q8_FEXP_MIN ? EP_Q8_FEXP_MIN : (e > EP_Q8_FEXP_MAX ? EP_Q8_FEXP_MAX : e);
}

/* v · 2^-sh rounded to the nearest integer, ties to even (rint of the exact quotient), 0 < sh < 31. */
static int32_t rshift_even(int32_t v, int32_t sh) {
    const int32_t q = v >> sh; /* floor */
    const uint32_t rem = (uint32_t)v & ((1u << sh) - 1u), half = 1u << (sh - 1);
    return q + (rem > half || (rem == half && (q & 1) != 0));
}

/*
 * The same codes in integers, when the exponents are at most 16 apart: with lo the
 * lower, a·2^(e_a - lo) + b·2^(e_b - lo) is the f32 sum · 2^-lo exactly (|s| < 2^24,
 * so the f32 addition does not round), and so is QUANTIZE's product s·2^(lo - e); its
 * rint is the ties-to-even shift. Returns false (nothing written) otherwise.
 */
static bool add_q8_int(uint32_t count, const int8_t *a, int32_t ea, const int8_t *b, int32_t eb, int8_t *y,
                       int32_t *e_y) {
    const int32_t lo = ea < eb ? ea : eb, da = ea - lo, db = eb - lo;
    if (da > 16 || db > 16) {
        return false;
    }
    uint32_t m = 0;
    for (uint32_t i = 0; i < count; i++) {
        const int32_t s = a[i] * (1 << da) + b[i] * (1 << db);
        const uint32_t mag = (uint32_t)(s < 0 ? -s : s);
        m = mag > m ? mag : m;
    }
    const int32_t e = ep_q8_exp_for_maxabs((float)m * ep_q8_pow2f(lo)), sh = e - lo; /* sh ≥ -7 when m > 0 */
    for (uint32_t i = 0; i < count; i++) { /* y may be a or b: element i is read before it is written */
        const int32_t s = a[i] * (1 << da) + b[i] * (1 << db);
        const int32_t r = sh > 0 ? rshift_even(s, sh) : s * (1 << (sh < -7 ? 7 : -sh));
        y[i] = ep_q8_sat8(r);
    }
    *e_y = e;
    return true;
}

static void add_q8_fw(const ep_ctx_t *c, const ep_node_t *nd) {
    const uint32_t count = ep_q8_count(c, nd->out[0]);
    const int8_t *a = ep_ctx_s8(c, nd->in[0]), *b = ep_ctx_s8(c, nd->in[2]);
    if (add_q8_int(count, a, fexp(ep_ctx_i32(c, nd->in[1])[0]), b, fexp(ep_ctx_i32(c, nd->in[3])[0]),
                   ep_ctx_s8(c, nd->out[0]), ep_ctx_i32(c, nd->out[1]))) {
        return;
    }
    const float sa = ep_q8_ctx_scale(c, nd->in[1]), sb = ep_q8_ctx_scale(c, nd->in[3]);
    const int32_t e = ep_q8_exp_for_maxabs(add_q8_pass(count, a, sa, b, sb, 0, NULL));
    add_q8_pass(count, a, sa, b, sb, e, ep_ctx_s8(c, nd->out[0]));
    ep_ctx_i32(c, nd->out[1])[0] = e;
}

const ep_op_t ep_op_add_q8 = {.name = "add_q8", .prepare = add_q8_prepare, .fn = {[EP_FN_FW] = add_q8_fw}};
