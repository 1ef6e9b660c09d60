/*
 * fuzz_blob.c — libFuzzer harness for the model blob loader and the executor
 * (firmware/runtime/ep_model.c and the ops, docs/blob.md).
 *
 * Build and run: `make -C firmware fuzz-build fuzz-short` (clang, ASan + UBSan).
 *
 * Input format (tests/fuzz/make_corpus.py writes seeds in it):
 *   blob   the first total_bytes bytes (the header's own field at offset 8,
 *          clamped to the input), or the whole input if it is shorter than a header
 *   batch  the rest: flags u8, n u16, scale f32, zero f32, labels, data
 *     flags bit 0  u8-affine encoding (else f32)
 *           bit 1  raw: n, labels and data used exactly as given (mostly refused)
 *           bits 2-3 extra TRAIN steps (0..3) after the first
 *           bits 4-7 where the staged values are split into two STAGE calls
 *   Not raw: n = 1 + n % max_batch, labels % num_classes, data cycled to the
 *   exact size the model wants, scale, zero and f32 values tamed to finite
 *   values in [-64, 64] (so the loss is mostly finite and backward runs).
 *
 * What runs:
 *   1. ep_model_parse on the blob as it is, in an exact-size heap copy.
 *   2. If it was refused, again with total_bytes and crc32 patched to match
 *      (so mutations get past the crc and reach every later check).
 *   3. If accepted: the parse invariants are checked (every tensor inside
 *      [0, arena_bytes), or if in L3 inside [0, l3_bytes) of the harness's
 *      FUZZ_L3_LIMIT-byte L3 memory, only L3_LOAD/L3_STORE naming L3 tensors;
 *      every node's op and fn exist), the arena is an exact-size, 8-aligned
 *      heap block of arena_bytes and the L3 memory one of l3_bytes (its
 *      read/write check every range), ep_model_init_arena,
 *      then ep_model_run EVAL, TRAIN (1..4 times), and ep_model_stage +
 *      ep_model_run_staged TRAIN and EVAL. After each run: the status is one of
 *      the documented ones, a successful step reports n and correct ≤ n with a
 *      finite loss, and the label tensor still holds the batch's labels (no node
 *      may write it). Any access outside the blob or the arena is an ASan report;
 *      any UB (float→int overflow, misaligned access, ...) a UBSan abort.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ep_ops.h"
#include "ep_runtime.h"

#define FUZZ_CHECK(cond)                                                                  \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "fuzz_blob: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

/* The largest arena a blob may ask for: big enough for every seed model, small
 * enough that one input runs in milliseconds. */
#ifndef FUZZ_ARENA_LIMIT
#define FUZZ_ARENA_LIMIT (64u * 1024u)
#endif
/* The L3 memory parse is told of (blobs may place PARAMs there). */
#ifndef FUZZ_L3_LIMIT
#define FUZZ_L3_LIMIT (64u * 1024u)
#endif
/* The largest batch the harness builds (bytes of input values). */
#define FUZZ_MAX_BATCH_BYTES (1u << 20)

static ep_model_t model; /* large: static, not on the stack */

/* The L3 memory of an accepted model: exactly l3_bytes of heap (ASan sees an overrun),
 * and every access the runtime makes must lie inside it. */
static uint8_t *l3_mem;
static uint32_t l3_len;

static void l3_read(uint32_t off, void *dst, uint32_t n) {
    FUZZ_CHECK(l3_mem != NULL && off <= l3_len && n <= l3_len - off);
    memcpy(dst, l3_mem + off, n);
}

static void l3_write(uint32_t off, const void *src, uint32_t n) {
    FUZZ_CHECK(l3_mem != NULL && off <= l3_len && n <= l3_len - off);
    memcpy(l3_mem + off, src, n);
}

static const ep_l3_t fuzz_l3 = {.bytes = FUZZ_L3_LIMIT, .read = l3_read, .write = l3_write};

static uint64_t fake_clock(void) {
    static uint64_t t;
    return t += 3;
}

typedef struct {
    const uint8_t *p;
    size_t n;
} cursor_t;

static uint8_t take8(cursor_t *c) {
    if (c->n == 0) {
        return 0;
    }
    c->n--;
    return *c->p++;
}

static uint32_t take32(cursor_t *c) {
    uint32_t v = take8(c);
    v |= (uint32_t)take8(c) << 8;
    v |= (uint32_t)take8(c) << 16;
    return v | (uint32_t)take8(c) << 24;
}

static float takef(cursor_t *c) {
    uint32_t u = take32(c);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* v if it is finite and |v| <= 64, else a small value derived from its bits */
static float tame(float v) {
    if (v == v && v >= -64.0f && v <= 64.0f) {
        return v;
    }
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return (float)(u % 129u) / 2.0f - 32.0f;
}

static void check_parsed(const ep_model_t *m) {
    FUZZ_CHECK(m->arena_bytes <= FUZZ_ARENA_LIMIT);
    FUZZ_CHECK(m->n_tensors >= 1 && m->n_tensors <= EP_MAX_TENSORS);
    FUZZ_CHECK(m->n_nodes >= 1 && m->n_nodes <= EP_MAX_NODES && m->n_eval_nodes <= m->n_nodes);
    FUZZ_CHECK(m->train_begin <= m->train_loss_end && m->train_loss_end <= m->update_begin &&
               m->update_begin <= m->n_nodes);
    FUZZ_CHECK(m->max_batch >= 1 && m->num_classes >= 2 && m->update_every >= 1);
    FUZZ_CHECK(m->l3 == &fuzz_l3 && m->l3_bytes <= FUZZ_L3_LIMIT);
    for (uint16_t i = 0; i < m->n_tensors; i++) {
        const ep_tensor_t *t = &m->tensors[i];
        const uint32_t span = (t->flags & EP_TF_L3) ? m->l3_bytes : m->arena_bytes;
        FUZZ_CHECK(t->offset % EP_BLOB_ALIGN == 0 && (uint64_t)t->offset + t->bytes <= span);
        FUZZ_CHECK(!(t->flags & EP_TF_L3) || ((t->flags & EP_TF_PARAM) && !(t->flags & EP_TF_BATCHED)));
    }
    for (uint16_t i = 0; i < m->n_nodes; i++) {
        const ep_node_t *nd = &m->nodes[i];
        const ep_op_t *op = ep_op_lookup(nd->op);
        FUZZ_CHECK(op != NULL && nd->fn < EP_OP_FN_COUNT && op->fn[nd->fn] != NULL);
        FUZZ_CHECK(nd->n_in <= EP_MAX_NODE_INPUTS && nd->n_out <= EP_MAX_NODE_OUTPUTS);
        for (uint8_t k = 0; k < nd->n_in; k++) {
            FUZZ_CHECK(nd->in[k] < m->n_tensors);
        }
        for (uint8_t k = 0; k < nd->n_out; k++) {
            FUZZ_CHECK(nd->out[k] < m->n_tensors && nd->out[k] != m->label_tensor);
        }
        if (nd->op != EP_OP_L3_LOAD && nd->op != EP_OP_L3_STORE) {
            for (uint8_t k = 0; k < nd->n_in; k++) {
                FUZZ_CHECK(!(m->tensors[nd->in[k]].flags & EP_TF_L3));
            }
            for (uint8_t k = 0; k < nd->n_out; k++) {
                FUZZ_CHECK(!(m->tensors[nd->out[k]].flags & EP_TF_L3));
            }
        }
    }
    FUZZ_CHECK(m->input_tensor < m->n_tensors && m->label_tensor < m->n_tensors &&
               m->stats_tensor < m->n_tensors);
    FUZZ_CHECK(!(m->tensors[m->stats_tensor].flags & EP_TF_L3));
}

static void check_result(const ep_model_t *m, const uint8_t *arena, ep_status_t st, const ep_step_result_t *r,
                         uint16_t n, const uint8_t *labels, const char *why) {
    FUZZ_CHECK(why != NULL);
    static int trace = -1;
    if (trace < 0) {
        trace = getenv("FUZZ_BLOB_TRACE") != NULL;
    }
    if (trace) { /* FUZZ_BLOB_TRACE=1 ./fuzz_blob INPUT: what each run gave */
        fprintf(stderr, "run n %u: status %d loss %g correct %u (%s)\n", n, st, (double)r->loss, r->correct, why);
    }
    FUZZ_CHECK(st == EP_OK || st == EP_BAD_BATCH || st == EP_NUMERIC || st == EP_INTERNAL);
    if (st == EP_OK) {
        FUZZ_CHECK(r->n == n && r->correct <= n);
        FUZZ_CHECK(r->loss == r->loss && r->loss - r->loss == 0.0f); /* finite */
    }
    if (st != EP_BAD_BATCH) { /* the labels were loaded: no node may have changed them */
        int32_t lab[256];
        const ep_tensor_t *lt = &m->tensors[m->label_tensor];
        for (uint16_t i = 0; i < n; i += 256) {
            uint16_t k = (uint16_t)(n - i < 256 ? n - i : 256);
            memcpy(lab, arena + lt->offset + (size_t)i * 4u, (size_t)k * 4u);
            for (uint16_t j = 0; j < k; j++) {
                FUZZ_CHECK(lab[j] == labels[i + j]);
            }
        }
    }
}

static void run_model(const ep_model_t *m, const uint8_t *blob, cursor_t c) {
    /* exactly arena_bytes (ASan poisons the byte after it); malloc blocks are
     * at least 8-aligned under ASan, as the runtime requires */
    uint8_t *arena = malloc(m->arena_bytes);
    FUZZ_CHECK(arena != NULL && ((uintptr_t)arena & (EP_BLOB_ALIGN - 1)) == 0);
    l3_len = m->l3_bytes;
    l3_mem = malloc(l3_len ? l3_len : 1);
    ep_model_init_arena(m, blob, arena);

    const ep_tensor_t *in = &m->tensors[m->input_tensor];
    const uint8_t flags = take8(&c);
    uint16_t n = (uint16_t)(take8(&c) | take8(&c) << 8);
    const uint8_t enc = flags & 1 ? EP_ENC_U8_AFFINE : EP_ENC_F32;
    const int raw = flags & 2;
    float scale = takef(&c), zero = takef(&c);
    const uint32_t width = enc == EP_ENC_F32 ? 4u : 1u;
    if (!raw) {
        n = (uint16_t)(1u + n % m->max_batch);
    }
    uint8_t *labels = malloc(n ? n : 1);
    for (uint16_t i = 0; i < n; i++) {
        uint8_t v = take8(&c);
        labels[i] = raw ? v : (uint8_t)(v % m->num_classes);
    }
    uint64_t want = (uint64_t)n * in->elems * width;
    uint32_t data_bytes = raw ? (uint32_t)c.n : (uint32_t)(want < FUZZ_MAX_BATCH_BYTES ? want : 0);
    uint8_t *data = malloc(data_bytes ? data_bytes : 1);
    for (uint32_t i = 0; i < data_bytes; i++) {
        data[i] = c.n ? c.p[i % c.n] : 0;
    }
    if (!raw && data_bytes == 0) { /* a batch too large for the harness: only parse was tested */
        goto out;
    }
    if (!raw) { /* tame values, so the loss stays finite and backward and the updates run */
        scale = tame(scale);
        zero = tame(zero);
        for (uint32_t i = 0; enc == EP_ENC_F32 && i + 4 <= data_bytes; i += 4) {
            float v;
            memcpy(&v, data + i, 4);
            v = tame(v);
            memcpy(data + i, &v, 4);
        }
    }

    const ep_batch_t b = {.n = n, .encoding = enc, .scale = scale, .zero = zero, .labels = labels,
                          .data = data, .data_bytes = data_bytes};
    ep_step_result_t r;
    const char *why = NULL;
    ep_status_t st = ep_model_run(m, arena, &b, false, NULL, &r, &why);
    check_result(m, arena, st, &r, n, labels, why);
    const int steps = 1 + ((flags >> 2) & 3);
    /* TRAIN runs with the per-node profiler, into exactly n_nodes entries */
    uint32_t *cycles = malloc(m->n_nodes * sizeof *cycles);
    const ep_profiler_t prof = {.clock = fake_clock, .cycles = cycles};
    for (int s = 0; s < steps; s++) {
        why = NULL;
        st = ep_model_run(m, arena, &b, true, &prof, &r, &why);
        check_result(m, arena, st, &r, n, labels, why);
    }

    /* The same batch staged in two parts, then run from the input tensor. */
    const uint32_t count = data_bytes / width;
    const uint32_t split = (uint32_t)(((uint64_t)count * (flags >> 4)) / 15u);
    why = NULL;
    st = ep_model_stage(m, arena, 0, enc, scale, zero, data, split * width, &why);
    FUZZ_CHECK(why != NULL && (st == EP_OK || st == EP_BAD_BATCH));
    if (st == EP_OK) {
        st = ep_model_stage(m, arena, split, enc, scale, zero, data + split * width, data_bytes - split * width,
                            &why);
        FUZZ_CHECK(why != NULL && (st == EP_OK || st == EP_BAD_BATCH));
    }
    if (st == EP_OK && (uint64_t)n * in->elems <= count) { /* the app's rule: n samples were staged */
        st = ep_model_run_staged(m, arena, n, labels, true, &prof, &r, &why);
        check_result(m, arena, st, &r, n, labels, why);
        st = ep_model_run_staged(m, arena, n, labels, false, NULL, &r, &why);
        check_result(m, arena, st, &r, n, labels, why);
    }
    free(cycles);
out:
    free(data);
    free(labels);
    free(arena);
    free(l3_mem);
    l3_mem = NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > UINT32_MAX) {
        return 0;
    }
    uint32_t blob_len = (uint32_t)size;
    if (size >= EP_BLOB_HEADER_BYTES) {
        uint32_t total = ep_rd32(data + 8);
        blob_len = total >= EP_BLOB_HEADER_BYTES && total <= size ? total : (uint32_t)size;
    }
    uint8_t *blob = malloc(blob_len ? blob_len : 1);
    memcpy(blob, data, blob_len);
    const char *why = NULL;
    ep_status_t st = ep_model_parse(&model, blob, blob_len, FUZZ_ARENA_LIMIT, &fuzz_l3, &why);
    FUZZ_CHECK(why != NULL);
    if (st != EP_OK && blob_len >= EP_BLOB_HEADER_BYTES) {
        ep_wr32(blob + 8, blob_len);
        ep_wr32(blob + 12, ep_crc32(0, blob + 16, blob_len - 16));
        why = NULL;
        st = ep_model_parse(&model, blob, blob_len, FUZZ_ARENA_LIMIT, &fuzz_l3, &why);
        FUZZ_CHECK(why != NULL);
    }
    FUZZ_CHECK(st == EP_OK || st == EP_BAD_BLOB || st == EP_NO_FIT || st == EP_BAD_HASH);
    if (getenv("FUZZ_BLOB_TRACE")) {
        fprintf(stderr, "parse: status %d (%s)\n", st, why);
    }
    if (st == EP_OK) {
        check_parsed(&model);
        run_model(&model, blob, (cursor_t){data + blob_len, size - blob_len});
    }
    free(blob);
    return 0;
}
