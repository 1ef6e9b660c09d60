/* ep_model.c — blob validation (docs/blob.md), arena set-up and the executor. */
#include <math.h>
#include <string.h>

#include "ep_ops.h"
#include "ep_runtime.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "ep_model_run copies little-endian f32 batch data into the arena as is"
#endif

/* Node entry field offsets (docs/blob.md, "Node entry"). */
enum {
    N_IN = 4, N_OUT = N_IN + 2 * EP_MAX_NODE_INPUTS, N_IATTR = N_OUT + 2 * EP_MAX_NODE_OUTPUTS,
    N_FATTR = N_IATTR + 2 * EP_NODE_IATTRS,
};
_Static_assert(N_FATTR + 4 * EP_NODE_FATTRS == EP_BLOB_NODE_BYTES, "node entry layout");

/* Header field offsets (docs/blob.md, "Header"). */
enum {
    H_MAGIC = 0, H_VERSION = 4, H_HEADER_BYTES = 6, H_TOTAL = 8, H_CRC = 12, H_ARENA = 16,
    H_N_TENSORS = 20, H_N_NODES = 22, H_N_EVAL = 24, H_MAX_BATCH = 26, H_INPUT = 28,
    H_LABEL = 30, H_STATS = 32, H_CLASSES = 34, H_TENSORS_OFF = 36, H_NODES_OFF = 40,
    H_DATA_OFF = 44, H_DATA_BYTES = 48, H_TRAIN_BEGIN = 52, H_TRAIN_LOSS_END = 54,
    H_UPDATE_BEGIN = 56, H_UPDATE_EVERY = 58, H_COUNTER = 60, H_RESERVED = 62,
    CRC_START = 16,
    KNOWN_FLAGS = EP_TF_BATCHED | EP_TF_PARAM | EP_TF_TRAINABLE | EP_TF_INPUT | EP_TF_LABEL | EP_TF_GRAD | EP_TF_L3,
    L3_ZERO_CHUNK = 256,
};

static const uint8_t k_dtype_bytes[EP_DTYPE_COUNT] = EP_DTYPE_BYTES_INIT;
static const uint8_t k_magic[4] = EP_BLOB_MAGIC_BYTES;

static ep_status_t fail(const char **why, ep_status_t st, const char *reason) {
    *why = reason;
    return st;
}

/* A table of count entries at off: 8-aligned, after the header, inside the blob. */
static bool table_ok(uint32_t off, uint32_t count, uint32_t entry, uint32_t total) {
    return off % EP_BLOB_ALIGN == 0 && off >= EP_BLOB_HEADER_BYTES &&
           (uint64_t)off + (uint64_t)count * entry <= total;
}

static uint64_t roundup8(uint64_t v) { return (v + 7u) & ~(uint64_t)7u; }

/* Where the tables of a blob start; read only after parse_header accepted it. */
typedef struct {
    uint32_t tensors_off, nodes_off, data_bytes;
} layout_t;

static ep_status_t parse_header(ep_model_t *m, layout_t *lay, const uint8_t *blob, uint32_t len,
                                uint32_t device_arena, const char **why) {
    if (len < EP_BLOB_HEADER_BYTES) {
        return fail(why, EP_BAD_BLOB, EP_WHY("blob: shorter than its header (truncated)"));
    }
    if (memcmp(blob + H_MAGIC, k_magic, sizeof k_magic) != 0) {
        return fail(why, EP_BAD_BLOB, EP_WHY("blob: magic is not EPMB"));
    }
    if (ep_rd16(blob + H_VERSION) != EP_BLOB_VERSION) {
        return fail(why, EP_BAD_BLOB, EP_WHY("blob: unsupported version"));
    }
    if (ep_rd16(blob + H_HEADER_BYTES) != EP_BLOB_HEADER_BYTES) {
        return fail(why, EP_BAD_BLOB, EP_WHY("blob: header_bytes is not 64"));
    }
    if (ep_rd32(blob + H_TOTAL) != len) {
        return fail(why, EP_BAD_BLOB, EP_WHY("blob: total_bytes differs from the received length"));
    }
    m->crc = ep_rd32(blob + H_CRC);
    if (ep_crc32(0, blob + CRC_START, len - CRC_START) != m->crc) {
        return fail(why, EP_BAD_HASH, EP_WHY("blob: crc32 mismatch"));
    }
    m->arena_bytes = ep_rd32(blob + H_ARENA);
    if (m->arena_bytes > device_arena) {
        return fail(why, EP_NO_FIT, EP_WHY("blob: arena_bytes exceeds the device arena"));
    }
    m->n_tensors = ep_rd16(blob + H_N_TENSORS);
    m->n_nodes = ep_rd16(blob + H_N_NODES);
    m->n_eval_nodes = ep_rd16(blob + H_N_EVAL);
    m->max_batch = ep_rd16(blob + H_MAX_BATCH);
    m->input_tensor = ep_rd16(blob + H_INPUT);
    m->label_tensor = ep_rd16(blob + H_LABEL);
    m->stats_tensor = ep_rd16(blob + H_STATS);
    m->num_classes = ep_rd16(blob + H_CLASSES);
    if (m->n_tensors < 1 || m->n_tensors > EP_MAX_TENSORS) {
        return fail(why, EP_BAD_BLOB, EP_WHY("blob: n_tensors is 0 or above the device's EP_MAX_TENSORS"));
    }
    if (m->n_nodes < 1 || m->n_nodes > EP_MAX_NODES) {
        return fail(why, EP_BAD_BLOB, EP_WHY("blob: n_nodes is 0 or above the device's EP_MAX_NODES"));
    }
    if (m->n_eval_nodes > m->n_nodes) {
        return fail(why, EP_BAD_BLOB, EP_WHY("blob: n_eval_nodes exceeds n_nodes"));
    }
    m->train_begin = ep_rd16(blob + H_TRAIN_BEGIN);
    m->train_loss_end = ep_rd16(blob + H_TRAIN_LOSS_END);
    if (m->train_begin > m->train_loss_end || m->train_loss_end > m->n_nodes) {
        return fail(why, EP_BAD_BLOB, EP_WHY("blob: train_begin/train_loss_end not ordered within n_nodes"));
    }
    m->update_begin = ep_rd16(blob + H_UPDATE_BEGIN);
    m->update_every = ep_rd16(blob + H_UPDATE_EVERY);
    m->counter_tensor = ep_rd16(blob + H_COUNTER);
    if (m->update_begin < m->train_loss_end || m->update_begin > m->n_nodes) {
        return fail(why, EP_BAD_BLOB, EP_WHY("blob: update_begin not within [train_loss_end, n_nodes]"));
    }
    if (m->update_every < 1 || (m->update_every > 1) != (m->counter_tensor != EP_NO_TENSOR)) {
        return fail(why, EP_BAD_BLOB, EP_WHY("blob: update_every is 0, or a counter tensor without accumulation (or none with it)"));
    }
    if (m->max_batch < 1) {
        return fail(why, EP_BAD_BLOB, EP_WHY("blob: max_batch is 0"));
    }
    if (m->num_classes < 2) {
        return fail(why, EP_BAD_BLOB, EP_WHY("blob: num_classes below 2"));
    }
    lay->tensors_off = ep_rd32(blob + H_TENSORS_OFF);
    lay->nodes_off = ep_rd32(blob + H_NODES_OFF);
    const uint32_t data_off = ep_rd32(blob + H_DATA_OFF);
    lay->data_bytes = ep_rd32(blob + H_DATA_BYTES);
    if (!table_ok(lay->tensors_off, m->n_tensors, EP_BLOB_TENSOR_BYTES, len)) {
        return fail(why, EP_BAD_BLOB, EP_WHY("blob: tensors_off misaligned or table outside the blob"));
    }
    if (!table_ok(lay->nodes_off, m->n_nodes, EP_BLOB_NODE_BYTES, len)) {
        return fail(why, EP_BAD_BLOB, EP_WHY("blob: nodes_off misaligned or table outside the blob"));
    }
    if (!table_ok(data_off, lay->data_bytes, 1, len)) {
        return fail(why, EP_BAD_BLOB, EP_WHY("blob: data_off misaligned or data outside the blob"));
    }
    for (uint32_t i = H_RESERVED; i < EP_BLOB_HEADER_BYTES; i++) {
        if (blob[i] != 0) {
            return fail(why, EP_BAD_BLOB, EP_WHY("blob: reserved header bytes are not zero"));
        }
    }
    return EP_OK;
}

static ep_status_t parse_tensor(ep_model_t *m, ep_tensor_t *t, const uint8_t *e, uint32_t data_bytes,
                                const char **why) {
    t->dtype = e[0];
    t->flags = e[1];
    t->rank = e[2];
    t->offset = ep_rd32(e + 12);
    t->bytes = ep_rd32(e + 16);
    t->init = ep_rd32(e + 20);
    if (t->dtype == 0 || t->dtype >= EP_DTYPE_COUNT) {
        return fail(why, EP_BAD_BLOB, EP_WHY("tensor: unknown dtype"));
    }
    if ((t->flags & ~(uint32_t)KNOWN_FLAGS) != 0) {
        return fail(why, EP_BAD_BLOB, EP_WHY("tensor: unknown flag bits"));
    }
    if ((t->flags & EP_TF_TRAINABLE) && !(t->flags & EP_TF_PARAM)) {
        return fail(why, EP_BAD_BLOB, EP_WHY("tensor: TRAINABLE without PARAM"));
    }
    if ((t->flags & EP_TF_PARAM) && (t->flags & EP_TF_BATCHED)) {
        return fail(why, EP_BAD_BLOB, EP_WHY("tensor: a PARAM cannot be BATCHED"));
    }
    const bool in_l3 = (t->flags & EP_TF_L3) != 0;
    if (in_l3 && ((t->flags & EP_TF_BATCHED) || !(t->flags & EP_TF_PARAM))) {
        return fail(why, EP_BAD_BLOB, EP_WHY("tensor: in L3 but not a PARAM, or BATCHED"));
    }
    if (t->rank < 1 || t->rank > EP_MAX_RANK || e[3] != 0) {
        return fail(why, EP_BAD_BLOB, EP_WHY("tensor: rank not in 1..4 or reserved byte not zero"));
    }
    uint64_t elems = 1; /* ≤ 65535^4 < 2^64 */
    for (uint8_t d = 0; d < EP_MAX_RANK; d++) {
        t->dims[d] = ep_rd16(e + 4 + 2 * d);
        if (d < t->rank ? t->dims[d] == 0 : t->dims[d] != 1) {
            return fail(why, EP_BAD_BLOB, EP_WHY("tensor: dims must be >= 1 within rank and 1 beyond"));
        }
        elems *= t->dims[d];
    }
    if (elems > UINT32_MAX) {
        return fail(why, EP_BAD_BLOB, EP_WHY("tensor: too many elements"));
    }
    t->elems = (uint32_t)elems;
    const uint64_t rows = (t->flags & EP_TF_BATCHED) ? m->max_batch : 1u;
    if (roundup8(elems * k_dtype_bytes[t->dtype] * rows) != t->bytes) {
        return fail(why, EP_BAD_BLOB, EP_WHY("tensor: bytes != elements x dtype size (x max_batch), rounded up to 8"));
    }
    const uint64_t end = (uint64_t)t->offset + t->bytes;
    if (in_l3) {
        if (t->offset % EP_BLOB_ALIGN != 0) {
            return fail(why, EP_BAD_BLOB, EP_WHY("tensor: in L3, offset misaligned"));
        }
        if (m->l3 == NULL || end > m->l3->bytes) {
            return fail(why, EP_NO_FIT, EP_WHY("tensor: in L3, beyond the device's L3 memory (or it has none)"));
        }
        m->l3_bytes = end > m->l3_bytes ? (uint32_t)end : m->l3_bytes;
    } else if (t->offset % EP_BLOB_ALIGN != 0 || end > m->arena_bytes) {
        return fail(why, EP_BAD_BLOB, EP_WHY("tensor: offset misaligned or tensor outside the arena"));
    }
    if (t->init != EP_NO_INIT && (uint64_t)t->init + t->bytes > data_bytes) {
        return fail(why, EP_BAD_BLOB, EP_WHY("tensor: init outside the data section"));
    }
    return EP_OK;
}

/* Roles named by the header; afterwards no node can change a label (see parse_node). */
static ep_status_t check_roles(const ep_model_t *m, const char **why) {
    if (m->input_tensor >= m->n_tensors || m->label_tensor >= m->n_tensors ||
        m->stats_tensor >= m->n_tensors) {
        return fail(why, EP_BAD_BLOB, EP_WHY("blob: input, label or stats tensor index out of range"));
    }
    const ep_tensor_t *in = &m->tensors[m->input_tensor];
    const ep_tensor_t *lab = &m->tensors[m->label_tensor];
    const ep_tensor_t *st = &m->tensors[m->stats_tensor];
    if (in->dtype != EP_DTYPE_F32 || !(in->flags & EP_TF_BATCHED)) {
        return fail(why, EP_BAD_BLOB, EP_WHY("input_tensor: must be BATCHED|INPUT f32"));
    }
    if (lab->dtype != EP_DTYPE_I32 || !(lab->flags & EP_TF_BATCHED) || lab->rank != 1 || lab->dims[0] != 1) {
        return fail(why, EP_BAD_BLOB, EP_WHY("label_tensor: must be BATCHED|LABEL i32 of dims [1]"));
    }
    if (st->dtype != EP_DTYPE_F32 || (st->flags & (EP_TF_BATCHED | EP_TF_L3)) || st->elems != 2) {
        return fail(why, EP_BAD_BLOB, EP_WHY("stats_tensor: must be an unbatched f32 of 2 elements in the arena"));
    }
    if (m->counter_tensor != EP_NO_TENSOR) {
        const ep_tensor_t *ct = m->counter_tensor < m->n_tensors ? &m->tensors[m->counter_tensor] : NULL;
        if (!ct || ct->dtype != EP_DTYPE_I32 || ct->flags != EP_TF_PARAM || ct->elems != 1) {
            return fail(why, EP_BAD_BLOB, EP_WHY("counter_tensor: must be an unbatched, untrained PARAM i32 of 1 element"));
        }
    }
    for (uint16_t i = 0; i < m->n_tensors; i++) {
        const uint8_t f = m->tensors[i].flags;
        if (((f & EP_TF_INPUT) != 0) != (i == m->input_tensor)) {
            return fail(why, EP_BAD_BLOB, EP_WHY("tensor: INPUT flag must be on input_tensor and only there"));
        }
        if (((f & EP_TF_LABEL) != 0) != (i == m->label_tensor)) {
            return fail(why, EP_BAD_BLOB, EP_WHY("tensor: LABEL flag must be on label_tensor and only there"));
        }
        /* (an L3 tensor cannot: the label tensor is in the arena, another space) */
        if (i != m->label_tensor && ep_overlap(m, i, m->label_tensor)) {
            return fail(why, EP_BAD_BLOB, EP_WHY("tensor: overlaps the label tensor"));
        }
    }
    return EP_OK;
}

static bool index_ok(const ep_model_t *m, uint16_t idx, bool used) {
    return used ? idx < m->n_tensors : idx == EP_NO_TENSOR;
}

static ep_status_t parse_node(const ep_model_t *m, ep_node_t *nd, const uint8_t *e, const char **why) {
    nd->op = e[0];
    nd->fn = e[1];
    nd->n_in = e[2];
    nd->n_out = e[3];
    const ep_op_t *op = ep_op_lookup(nd->op);
    if (op == NULL) {
        return fail(why, EP_BAD_BLOB, EP_WHY("node: unknown op, or one this board's firmware leaves out (board.toml omit_ops)"));
    }
    if (nd->fn >= EP_OP_FN_COUNT || op->fn[nd->fn] == NULL) {
        return fail(why, EP_BAD_BLOB, EP_WHY("node: fn not implemented by the op"));
    }
    if (nd->n_in > EP_MAX_NODE_INPUTS || nd->n_out > EP_MAX_NODE_OUTPUTS) {
        return fail(why, EP_BAD_BLOB, EP_WHY("node: n_in above 6 or n_out above 4"));
    }
    for (uint8_t i = 0; i < EP_MAX_NODE_INPUTS; i++) {
        nd->in[i] = ep_rd16(e + N_IN + 2 * i);
        if (!index_ok(m, nd->in[i], i < nd->n_in)) {
            return fail(why, EP_BAD_BLOB, EP_WHY("node: input index out of range (or unused slot not 0xFFFF)"));
        }
    }
    for (uint8_t i = 0; i < EP_MAX_NODE_OUTPUTS; i++) {
        nd->out[i] = ep_rd16(e + N_OUT + 2 * i);
        if (!index_ok(m, nd->out[i], i < nd->n_out)) {
            return fail(why, EP_BAD_BLOB, EP_WHY("node: output index out of range (or unused slot not 0xFFFF)"));
        }
        if (i < nd->n_out && nd->out[i] == m->label_tensor) {
            return fail(why, EP_BAD_BLOB, EP_WHY("node: writes the label tensor"));
        }
    }
    if (nd->op != EP_OP_L3_LOAD && nd->op != EP_OP_L3_STORE) {
        for (uint8_t i = 0; i < nd->n_in + nd->n_out; i++) {
            const uint16_t t = i < nd->n_in ? nd->in[i] : nd->out[i - nd->n_in];
            if (m->tensors[t].flags & EP_TF_L3) {
                return fail(why, EP_BAD_BLOB, EP_WHY("node: only L3_LOAD/L3_STORE may name an L3 tensor"));
            }
        }
    }
    for (uint8_t i = 0; i < EP_NODE_IATTRS; i++) {
        nd->iattr[i] = ep_rd16(e + N_IATTR + 2 * i);
    }
    for (uint8_t i = 0; i < EP_NODE_FATTRS; i++) {
        const uint32_t bits = ep_rd32(e + N_FATTR + 4 * i);
        memcpy(&nd->fattr[i], &bits, sizeof bits);
        if (!isfinite(nd->fattr[i])) {
            return fail(why, EP_BAD_BLOB, EP_WHY("node: fattr is not finite"));
        }
    }
    return op->prepare(m, nd, why);
}

ep_status_t ep_model_parse(ep_model_t *m, const uint8_t *blob, uint32_t len, uint32_t arena_bytes,
                           const ep_l3_t *l3, const char **why) {
    EP_DCHECK(m != NULL && (blob != NULL || len == 0));
    EP_DCHECK(l3 == NULL || (l3->read != NULL && l3->write != NULL));
    const char *unused;
    why = why ? why : &unused;
    *why = EP_WHY("");
    m->l3 = l3;
    m->l3_bytes = 0;
    layout_t lay;
    ep_status_t st = parse_header(m, &lay, blob, len, arena_bytes, why);
    if (st != EP_OK) {
        return st;
    }
    for (uint16_t i = 0; i < m->n_tensors; i++) {
        st = parse_tensor(m, &m->tensors[i], blob + lay.tensors_off + (uint32_t)i * EP_BLOB_TENSOR_BYTES,
                          lay.data_bytes, why);
        if (st != EP_OK) {
            return st;
        }
    }
    st = check_roles(m, why);
    if (st != EP_OK) {
        return st;
    }
    for (uint16_t i = 0; i < m->n_nodes; i++) {
        ep_node_t *nd = &m->nodes[i];
        st = parse_node(m, nd, blob + lay.nodes_off + (uint32_t)i * EP_BLOB_NODE_BYTES, why);
        if (st != EP_OK) {
            return st;
        }
        if (nd->op == EP_OP_L3_LOAD) { /* later nodes (an optimizer) may treat the copy as the tensor */
            m->tensors[nd->out[0]].flags |= EP_TF_L3_COPY | (m->tensors[nd->in[0]].flags & EP_TF_TRAINABLE);
        }
    }
    return EP_OK;
}

void ep_model_init_arena(const ep_model_t *m, const uint8_t *blob, uint8_t *arena) {
    static const uint8_t zeros[L3_ZERO_CHUNK];
    memset(arena, 0, m->arena_bytes);
    const uint8_t *data = blob + ep_rd32(blob + H_DATA_OFF);
    for (uint16_t i = 0; i < m->n_tensors; i++) {
        const ep_tensor_t *t = &m->tensors[i];
        if (!(t->flags & EP_TF_L3)) {
            if (t->init != EP_NO_INIT) {
                memcpy(arena + t->offset, data + t->init, t->bytes);
            }
        } else if (t->init != EP_NO_INIT) {
            m->l3->write(t->offset, data + t->init, t->bytes);
        } else {
            for (uint32_t at = 0; at < t->bytes; at += L3_ZERO_CHUNK) {
                const uint32_t n = t->bytes - at < L3_ZERO_CHUNK ? t->bytes - at : L3_ZERO_CHUNK;
                m->l3->write(t->offset + at, zeros, n);
            }
        }
    }
}

static void run_nodes(const ep_ctx_t *ctx, uint16_t from, uint16_t to) {
    const ep_profiler_t *prof = ctx->prof;
    for (uint16_t i = from; i < to; i++) {
        const ep_node_t *nd = &ctx->model->nodes[i];
        const ep_op_t *op = ep_op_lookup(nd->op);
        EP_DCHECK(op != NULL && op->fn[nd->fn] != NULL);
        if (prof) {
            const uint64_t t0 = prof->clock();
            op->fn[nd->fn](ctx, nd);
            prof->cycles[i] = (uint32_t)(prof->clock() - t0);
        } else {
            op->fn[nd->fn](ctx, nd);
        }
    }
}

/* Check labels against the model and copy them into the label tensor. */
static ep_status_t load_labels(const ep_model_t *m, uint8_t *arena, const uint8_t *labels, uint16_t n,
                               const char **why) {
    for (uint16_t i = 0; i < n; i++) {
        if (labels[i] >= m->num_classes) {
            return fail(why, EP_BAD_BATCH, EP_WHY("batch: label not below num_classes"));
        }
    }
    int32_t *lab = (int32_t *)(void *)(arena + m->tensors[m->label_tensor].offset);
    for (uint16_t i = 0; i < n; i++) {
        lab[i] = labels[i];
    }
    return EP_OK;
}

/* Decode count values (f32 LE or u8 affine) into input elements [offset, offset + count). */
static ep_status_t load_values(const ep_model_t *m, uint8_t *arena, uint32_t offset, uint8_t encoding,
                               float scale, float zero, const uint8_t *data, uint32_t data_bytes,
                               const char **why) {
    const ep_tensor_t *in = &m->tensors[m->input_tensor];
    if (encoding != EP_ENC_F32 && encoding != EP_ENC_U8_AFFINE) {
        return fail(why, EP_BAD_BATCH, EP_WHY("batch: unknown encoding"));
    }
    const uint32_t width = encoding == EP_ENC_F32 ? 4u : 1u;
    const uint32_t count = data_bytes / width;
    if (count * width != data_bytes) {
        return fail(why, EP_BAD_BATCH, EP_WHY("batch: f32 data is not a whole number of values"));
    }
    if ((uint64_t)offset + count > (uint64_t)m->max_batch * in->elems) {
        return fail(why, EP_BAD_BATCH, EP_WHY("batch: values past max_batch samples"));
    }
    float *x = (float *)(void *)(arena + in->offset) + offset;
    if (encoding == EP_ENC_F32) {
        memcpy(x, data, (size_t)count * 4u);
    } else {
        for (uint32_t i = 0; i < count; i++) {
            x[i] = (float)data[i] * scale + zero;
        }
    }
    return EP_OK;
}

ep_status_t ep_model_stage(const ep_model_t *m, uint8_t *arena, uint32_t offset, uint8_t encoding, float scale,
                           float zero, const uint8_t *data, uint32_t data_bytes, const char **why) {
    EP_DCHECK(m != NULL && arena != NULL && (data != NULL || data_bytes == 0));
    const char *unused;
    why = why ? why : &unused;
    *why = EP_WHY("");
    return load_values(m, arena, offset, encoding, scale, zero, data, data_bytes, why);
}

static ep_status_t run_rows(const ep_model_t *m, uint8_t *arena, uint16_t n, bool train,
                            const ep_profiler_t *prof, ep_step_result_t *r, const char **why) {
    const ep_ctx_t ctx = {.model = m, .arena = arena, .n = n, .prof = prof};
    if (train) {
        run_nodes(&ctx, m->train_begin, m->train_loss_end);
    } else {
        run_nodes(&ctx, 0, m->n_eval_nodes);
    }
    const float *stats = (const float *)(const void *)(arena + m->tensors[m->stats_tensor].offset);
    r->loss = stats[0];
    r->n = n;
    if (!isfinite(stats[0])) {
        return fail(why, EP_NUMERIC, EP_WHY("loss is not finite"));
    }
    if (!(stats[1] >= 0.0f && stats[1] <= (float)n)) {
        return fail(why, EP_INTERNAL, EP_WHY("stats: correct count out of range"));
    }
    r->correct = (uint16_t)stats[1];
    if (train) {
        run_nodes(&ctx, m->train_loss_end, m->update_begin);
        /* with gradient accumulation, the update section runs on every update_every-th step */
        bool update = true;
        if (m->counter_tensor != EP_NO_TENSOR) {
            int32_t *count = (int32_t *)(void *)(arena + m->tensors[m->counter_tensor].offset);
            /* the counter lives in the arena (and in checkpoints); a value out of range
             * (a corrupted arena) restarts the cycle rather than skipping updates forever */
            const int32_t next = (*count >= 0 && *count < (int32_t)m->update_every) ? *count + 1 : 1;
            update = next == (int32_t)m->update_every;
            *count = update ? 0 : next;
        }
        if (update) {
            run_nodes(&ctx, m->update_begin, m->n_nodes);
        }
    }
    return EP_OK;
}

static void clear_result(ep_step_result_t *r) {
    r->loss = 0.0f;
    r->n = 0;
    r->correct = 0;
}

ep_status_t ep_model_run_staged(const ep_model_t *m, uint8_t *arena, uint16_t n, const uint8_t *labels,
                                bool train, const ep_profiler_t *prof, ep_step_result_t *r, const char **why) {
    EP_DCHECK(m != NULL && arena != NULL && r != NULL && labels != NULL);
    EP_DCHECK(((uintptr_t)arena & (EP_BLOB_ALIGN - 1)) == 0);
    const char *unused;
    why = why ? why : &unused;
    *why = EP_WHY("");
    clear_result(r);
    if (n < 1 || n > m->max_batch) {
        return fail(why, EP_BAD_BATCH, EP_WHY("batch: n not in 1..max_batch"));
    }
    ep_status_t st = load_labels(m, arena, labels, n, why);
    return st != EP_OK ? st : run_rows(m, arena, n, train, prof, r, why);
}

ep_status_t ep_model_run(const ep_model_t *m, uint8_t *arena, const ep_batch_t *b, bool train,
                         const ep_profiler_t *prof, ep_step_result_t *r, const char **why) {
    EP_DCHECK(m != NULL && arena != NULL && b != NULL && r != NULL);
    EP_DCHECK(((uintptr_t)arena & (EP_BLOB_ALIGN - 1)) == 0);
    const char *unused;
    why = why ? why : &unused;
    *why = EP_WHY("");
    clear_result(r);
    const ep_tensor_t *in = &m->tensors[m->input_tensor];
    if (b->n < 1 || b->n > m->max_batch) {
        return fail(why, EP_BAD_BATCH, EP_WHY("batch: n not in 1..max_batch"));
    }
    if (b->encoding != EP_ENC_F32 && b->encoding != EP_ENC_U8_AFFINE) {
        return fail(why, EP_BAD_BATCH, EP_WHY("batch: unknown encoding"));
    }
    const uint32_t width = b->encoding == EP_ENC_F32 ? 4u : 1u;
    if ((uint64_t)b->n * in->elems * width != b->data_bytes) {
        return fail(why, EP_BAD_BATCH, EP_WHY("batch: data is not n x input elements x (4 or 1) bytes"));
    }
    ep_status_t st = load_labels(m, arena, b->labels, b->n, why);
    if (st == EP_OK) {
        st = load_values(m, arena, 0, b->encoding, b->scale, b->zero, b->data, b->data_bytes, why);
    }
    return st != EP_OK ? st : run_rows(m, arena, b->n, train, prof, r, why);
}

uint32_t ep_sample_width(uint8_t encoding) {
    switch (encoding) {
    case EP_ENC_F32: return 4u;
    case EP_ENC_U8_AFFINE: return 1u;
    case EP_ENC_I8_AFFINE: return 1u;
    case EP_ENC_I16_AFFINE: return 2u;
    default: return 0u;
    }
}

static float rdf32(const uint8_t *p) {
    const uint32_t u = ep_rd32(p);
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* Sample s of the buffer into x[0, elems): f32 as is, codes through their channel's scale and zero. */
static void decode_sample(const ep_sample_buf_t *b, uint32_t s, float *x) {
    const uint32_t width = ep_sample_width(b->encoding);
    const uint8_t *q = b->samples + (size_t)s * b->elems * width;
    if (b->encoding == EP_ENC_F32) {
        memcpy(x, q, (size_t)b->elems * 4u);
        return;
    }
    const uint32_t per = b->elems / b->channels;
    for (uint32_t c = 0; c < b->channels; c++) {
        const float scale = rdf32(b->affine + 4u * c);
        const float zero = rdf32(b->affine + 4u * (b->channels + c));
        const uint32_t first = c * per;
        for (uint32_t i = first; i < first + per; i++) {
            int32_t v;
            if (b->encoding == EP_ENC_U8_AFFINE) {
                v = q[i];
            } else if (b->encoding == EP_ENC_I8_AFFINE) {
                v = (int32_t)q[i] - ((q[i] & 0x80u) ? 256 : 0);
            } else {
                const uint16_t u = ep_rd16(q + 2u * i);
                v = (int32_t)u - ((u & 0x8000u) ? 65536 : 0);
            }
            /* two statements: no compiler may fuse them into an fma (the host decodes alike) */
            const float scaled = (float)v * scale;
            x[i] = scaled + zero;
        }
    }
}

ep_status_t ep_model_run_buffered(const ep_model_t *m, uint8_t *arena, const ep_sample_buf_t *buf, uint16_t n,
                                  const uint8_t *indices, bool train, const ep_profiler_t *prof,
                                  ep_step_result_t *r, const char **why) {
    EP_DCHECK(m != NULL && arena != NULL && buf != NULL && r != NULL && (indices != NULL || n == 0));
    EP_DCHECK(((uintptr_t)arena & (EP_BLOB_ALIGN - 1)) == 0);
    const char *unused;
    why = why ? why : &unused;
    *why = EP_WHY("");
    clear_result(r);
    const ep_tensor_t *in = &m->tensors[m->input_tensor];
    if (n < 1 || n > m->max_batch) {
        return fail(why, EP_BAD_BATCH, EP_WHY("batch: n not in 1..max_batch"));
    }
    if (buf->elems != in->elems || ep_sample_width(buf->encoding) == 0 ||
        (buf->encoding == EP_ENC_F32 ? buf->channels != 0
                                     : buf->channels < 1 || buf->elems % buf->channels != 0)) {
        return fail(why, EP_BAD_BATCH, EP_WHY("buffer: does not match the model's input (elems, encoding, channels)"));
    }
    for (uint16_t i = 0; i < n; i++) {
        const uint16_t s = ep_rd16(indices + 2u * i);
        if (s >= buf->count) {
            return fail(why, EP_BAD_BATCH, EP_WHY("index: not below the buffer's sample count"));
        }
        if (buf->labels[s] >= m->num_classes) {
            return fail(why, EP_BAD_BATCH, EP_WHY("buffer: label not below num_classes"));
        }
    }
    int32_t *lab = (int32_t *)(void *)(arena + m->tensors[m->label_tensor].offset);
    float *x = (float *)(void *)(arena + in->offset);
    for (uint16_t i = 0; i < n; i++) {
        const uint16_t s = ep_rd16(indices + 2u * i);
        lab[i] = buf->labels[s];
        decode_sample(buf, s, x + (size_t)i * in->elems);
    }
    return run_rows(m, arena, n, train, prof, r, why);
}
