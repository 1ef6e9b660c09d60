/*
 * ep_runtime.h — the portable training runtime: model blobs, the static arena,
 * and the executor. No OS, no heap, no libc beyond <string.h> and <math.h>.
 *
 * Lifecycle
 *   1. ep_model_parse()      validates every field of an untrusted blob
 *                            (docs/blob.md) and fills an ep_model_t; it does not
 *                            touch any arena, so a failure leaves the installed
 *                            model untouched.
 *   2. ep_model_init_arena() zero-fills the model's arena span and copies the
 *                            initial values in (L3 tensors: through the model's
 *                            ep_l3_t). Call only after parse succeeded.
 *   3. ep_model_run()        decodes one batch into the input tensors and runs
 *                            the schedule: EVAL runs nodes [0, n_eval_nodes);
 *                            TRAIN runs [train_begin, train_loss_end) (forward
 *                            and loss), then [train_loss_end, update_begin)
 *                            (backward), then [update_begin, n_nodes) (the
 *                            deferred optimizer steps, if any), the last on
 *                            every update_every-th TRAIN only. A model whose layers act the
 *                            same in both modes shares the forward
 *                            (train_begin 0); batch-norm or dropout models carry
 *                            an eval forward of their own. Never allocates,
 *                            never re-validates. ep_model_run_buffered() does
 *                            the same with samples taken from a sample buffer.
 *
 * L3 tier: a tensor flagged EP_TF_L3 lives in the board's L3 memory (GAP9: the
 * external HyperRAM; ep_l3_t), its offset counted from the start of that memory,
 * not the arena's. It is a persistent PARAM (weights, f32 masters, optimizer
 * state), never BATCHED, and only L3_LOAD (as its input: L3 → an arena copy) and
 * L3_STORE (as its output: the arena copy → L3) name it; every other op works on
 * the arena copy. Offsets in L3 and in the arena are different spaces: tensors of
 * different spaces never overlap (ep_overlap). Parse marks the arena output of
 * each L3_LOAD EP_TF_L3_COPY, with its L3 tensor's TRAINABLE bit: the ops that
 * follow in the same run (an optimizer step) accept the copy where they would
 * accept the tensor. A copy is not a PARAM: READ_WEIGHTS, checkpoints and the
 * guard reach the L3 tensor itself.
 *
 * Invariants after a successful parse: every tensor without EP_TF_L3 lies inside
 * [0, arena_bytes); every L3 tensor lies inside [0, l3_bytes) and l3_bytes ≤
 * l3->bytes of the L3 memory parse was given (so l3 != NULL if any tensor is in
 * L3); no node but L3_LOAD/L3_STORE names an L3 tensor, nor is one a role of the
 * header (input, label, stats, counter); every node's op exists, implements the
 * node's fn, and its prepare() accepted the node's tensors.
 */
#ifndef EP_RUNTIME_H
#define EP_RUNTIME_H

#include <stdbool.h>
#include <stdint.h>

#include "ep_ids.h"

#if defined(__GNUC__)
#define EP_NODISCARD __attribute__((warn_unused_result))
#else
#define EP_NODISCARD
#endif

/* Error strings compile out with -DEP_STRIP_ERROR_STRINGS (only the status stays). */
#ifdef EP_STRIP_ERROR_STRINGS
#define EP_WHY(s) ""
#else
#define EP_WHY(s) (s)
#endif

/* Debug asserts for programmer errors (never for untrusted input); off in release. */
#ifdef EP_DEBUG
#define EP_DCHECK(c) do { if (!(c)) { __builtin_trap(); } } while (0)
#else
#define EP_DCHECK(c) ((void)0)
#endif

/** A tensor descriptor, as in the blob's tensor table. */
typedef struct {
    uint8_t dtype;      /**< ep_dtype_t */
    uint8_t flags;      /**< ep_tensor_flag_t bits */
    uint8_t rank;       /**< 1..EP_MAX_RANK */
    uint16_t dims[EP_MAX_RANK]; /**< per sample if EP_TF_BATCHED; 1 beyond rank */
    uint32_t offset;    /**< byte offset in the arena (EP_TF_L3: in the L3 memory) */
    uint32_t bytes;     /**< storage size, max_batch included */
    uint32_t init;      /**< offset in the blob's data section, or EP_NO_INIT */
    uint32_t elems;     /**< elements per sample (BATCHED) or in total; derived */
} ep_tensor_t;

/** Runtime-only tensor flag (never accepted from a blob, see ep_model_parse): the
 * arena copy an L3_LOAD fills. Bit 7 is kept free in host/ids.py TensorFlag for it. */
#define EP_TF_L3_COPY 0x80u

/** A graph node: one function of one op over tensors of the model. */
typedef struct {
    uint8_t op;         /**< ep_opcode_t */
    uint8_t fn;         /**< ep_opfn_t */
    uint8_t n_in, n_out;
    uint16_t in[EP_MAX_NODE_INPUTS];
    uint16_t out[EP_MAX_NODE_OUTPUTS];
    uint16_t iattr[EP_NODE_IATTRS]; /**< integer attributes (shapes, strides, flags) */
    float fattr[EP_NODE_FATTRS];    /**< float attributes (hyper-parameters), finite */
} ep_node_t;

/**
 * The board's L3 memory as the runtime sees it: `bytes` long, reached only by
 * copies (on GAP9 it is HyperRAM behind the uDMA, not memory-mapped). The callers
 * guarantee every range: [off, off + n) lies inside [0, bytes) (ep_model_parse
 * checked every L3 tensor against `bytes`), and dst/src is ordinary memory of n
 * bytes. The functions cannot fail.
 */
typedef struct {
    uint32_t bytes;
    void (*read)(uint32_t off, void *dst, uint32_t n);        /**< L3 [off, off + n) → dst */
    void (*write)(uint32_t off, const void *src, uint32_t n); /**< src → L3 [off, off + n) */
} ep_l3_t;

/** An installed (or candidate) model. Plain data: copying it is fine. */
typedef struct {
    uint32_t crc;           /**< the blob's crc32 field: identifies the model */
    uint32_t arena_bytes;   /**< arena span the model uses */
    uint32_t l3_bytes;      /**< L3 span the model uses: max offset + bytes of its L3 tensors, 0 if none */
    const ep_l3_t *l3;      /**< the L3 memory given to ep_model_parse (NULL: none) */
    uint16_t n_tensors, n_nodes, n_eval_nodes, max_batch;
    uint16_t train_begin, train_loss_end; /**< TRAIN: [train_begin, train_loss_end) then the rest */
    uint16_t update_begin;  /**< nodes [update_begin, n_nodes) apply the optimizer */
    uint16_t update_every;  /**< ...on every update_every-th TRAIN (gradient accumulation) */
    uint16_t counter_tensor; /**< i32 [1] micro-step count if update_every > 1, else EP_NO_TENSOR */
    uint16_t input_tensor, label_tensor, stats_tensor, num_classes;
    ep_tensor_t tensors[EP_MAX_TENSORS];
    ep_node_t nodes[EP_MAX_NODES];
} ep_model_t;

/** One batch as it arrived in a TRAIN/EVAL request (docs/protocol.md). */
typedef struct {
    uint16_t n;             /**< samples, 1..max_batch */
    uint8_t encoding;       /**< ep_encoding_t */
    float scale, zero;      /**< EP_ENC_U8_AFFINE: x = q * scale + zero */
    const uint8_t *labels;  /**< n class indices */
    const uint8_t *data;    /**< n × input elems, f32 (LE, maybe unaligned) or u8 */
    uint32_t data_bytes;
} ep_batch_t;

typedef struct {
    float loss;             /**< mean loss over the batch */
    uint16_t n;
    uint16_t correct;
} ep_step_result_t;

/**
 * Optional per-node cost recording for a run: `clock` is the port's cycle
 * counter, `cycles[i]` receives node i's cost (clock after − clock before;
 * nodes that did not run are left alone). Pass NULL to run without it.
 */
typedef struct {
    uint64_t (*clock)(void);
    uint32_t *cycles;       /**< model->n_nodes entries */
} ep_profiler_t;

/**
 * Validate an untrusted blob and describe it in *m. Checks every field listed in
 * docs/blob.md, including each node through its op's prepare().
 * @param arena_bytes the device arena size; a larger model gives EP_NO_FIT
 * @param l3          the device's L3 memory, kept in m->l3 for the L3 ops and
 *                    init; NULL if it has none. An L3 tensor beyond l3->bytes (or
 *                    any L3 tensor without one) gives EP_NO_FIT
 * @param why         on failure, a static string naming the field (never NULL)
 * @return EP_OK, EP_BAD_BLOB, EP_NO_FIT, EP_BAD_HASH (crc mismatch)
 */
EP_NODISCARD ep_status_t ep_model_parse(ep_model_t *m, const uint8_t *blob, uint32_t len,
                                        uint32_t arena_bytes, const ep_l3_t *l3, const char **why);

/**
 * Zero the model's arena span and copy the initial values from the blob. L3
 * tensors get theirs (or zeros, without one) through m->l3->write; the rest of
 * the L3 memory is left alone.
 */
void ep_model_init_arena(const ep_model_t *m, const uint8_t *blob, uint8_t *arena);

/**
 * Run one batch. Validates the batch (EP_BAD_BATCH: n, sizes, labels), decodes
 * it into the input/label tensors, runs the eval prefix, and with train=true the
 * rest of the schedule. If the loss is not finite it returns EP_NUMERIC before
 * any backward or update node runs.
 */
EP_NODISCARD ep_status_t ep_model_run(const ep_model_t *m, uint8_t *arena, const ep_batch_t *b,
                                      bool train, const ep_profiler_t *prof, ep_step_result_t *r,
                                      const char **why);

/**
 * Decode count values into input elements [offset, offset + count) of the batch
 * (sample i's values start at i * input elements), for batches too large for
 * one request. f32 (LE) or u8 affine (x = q * scale + zero); EP_BAD_BATCH if the
 * values run past max_batch samples or the encoding is unknown. Runs no node.
 */
EP_NODISCARD ep_status_t ep_model_stage(const ep_model_t *m, uint8_t *arena, uint32_t offset, uint8_t encoding,
                                        float scale, float zero, const uint8_t *data, uint32_t data_bytes,
                                        const char **why);

/**
 * Run the schedule on the first n samples already in the input tensor (staged
 * with ep_model_stage), with their n labels. The caller guarantees that n
 * samples' values were staged for this model.
 */
EP_NODISCARD ep_status_t ep_model_run_staged(const ep_model_t *m, uint8_t *arena, uint16_t n,
                                             const uint8_t *labels, bool train, const ep_profiler_t *prof,
                                             ep_step_result_t *r, const char **why);

/**
 * Samples held on the device (docs/protocol.md, "Sample buffer"): count samples of
 * elems values each, f32 (LE) or affine codes x = q * scale[c] + zero[c], where
 * channel c covers values [c * elems / channels, (c + 1) * elems / channels) of a
 * sample. The bytes live wherever the caller put them (the app: its arena beyond
 * the installed model); nothing here is aligned.
 */
typedef struct {
    uint8_t encoding;       /**< EP_ENC_F32, EP_ENC_U8_AFFINE, EP_ENC_I8_AFFINE or EP_ENC_I16_AFFINE */
    uint16_t count;         /**< samples */
    uint16_t channels;      /**< affine: 1..elems, divides elems; f32: 0 */
    uint32_t elems;         /**< values per sample */
    const uint8_t *affine;  /**< f32 LE scale[channels], then zero[channels] */
    const uint8_t *labels;  /**< count class indices */
    const uint8_t *samples; /**< count x elems values of ep_sample_width(encoding) bytes */
} ep_sample_buf_t;

/** Bytes per value of a sample-buffer encoding; 0 if it is not one. */
uint32_t ep_sample_width(uint8_t encoding);

/**
 * Run one batch made of buffered samples: n (1..max_batch) indices, u16 LE each,
 * name the samples in order. Checks the buffer against the model (elems, encoding,
 * channels), every index (< count) and every label (< num_classes) before decoding
 * anything (EP_BAD_BATCH), then decodes the samples and labels into the
 * input/label tensors and runs the schedule as ep_model_run does.
 */
EP_NODISCARD ep_status_t ep_model_run_buffered(const ep_model_t *m, uint8_t *arena, const ep_sample_buf_t *buf,
                                               uint16_t n, const uint8_t *indices, bool train,
                                               const ep_profiler_t *prof, ep_step_result_t *r, const char **why);

/** crc32 (IEEE 802.3, the zlib one); pass 0 as crc to start, chain to continue. */
uint32_t ep_crc32(uint32_t crc, const uint8_t *data, uint32_t len);

/** Little-endian readers/writers for unaligned protocol and blob bytes. */
static inline uint16_t ep_rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t ep_rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline void ep_wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void ep_wr32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void ep_wr64(uint8_t *p, uint64_t v) { ep_wr32(p, (uint32_t)v); ep_wr32(p + 4, (uint32_t)(v >> 32)); }

#endif /* EP_RUNTIME_H */
