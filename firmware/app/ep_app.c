/* ep_app.c — protocol v1 command handling; see ep_app.h and docs/protocol.md. */
#include "ep_app.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "ep_ckpt.h"
#include "ep_parallel.h"
#include "ep_port.h"

/* Fixed payload sizes of docs/protocol.md ("Messages"). */
enum {
    LOAD_BEGIN_REQ_BYTES = 8,
    LOAD_CHUNK_REQ_FIXED = 4,
    BATCH_REQ_FIXED = 12,
    STAGE_REQ_FIXED = 16,
    READ_WEIGHTS_REQ_BYTES = 8,
    READ_WEIGHTS_RESP_FIXED = 8,
    EXIT_REQ_BYTES = 1,
    PROFILE_REQ_BYTES = 2,
    PROFILE_RESP_MAX = (EP_FRAME_MAX_PAYLOAD - 4) / 4,
    BUF_BEGIN_REQ_FIXED = 12,
    BUF_CHUNK_REQ_FIXED = 4,
    BUF_RUN_REQ_FIXED = 2,
    GUARD_REQ_BYTES = 8,
    /* CORES: at most this many per-core counts (a GAP9 cluster has 8) */
    CORES_MAX = 16,
    /* training guards: the loss-spike rule compares with the mean of this many accepted losses */
    GUARD_WINDOW = 8,
    /* an ERROR frame's message is one of the short strings below */
    ERROR_MSG_MAX = 64,
    /* L3 parameters are checked by the guards in chunks of this many f32 */
    L3_BOUNCE_F32 = 64,
};

_Static_assert(sizeof EP_BOARD_NAME - 1 <= UINT8_MAX, "HELLO carries the board name length in a u8");
_Static_assert(EP_STAGING_BYTES >= EP_BLOB_HEADER_BYTES, "the staging buffer must hold a blob header");

static uint8_t ep_arena[EP_ARENA_BYTES] __attribute__((aligned(EP_BLOB_ALIGN)));
/* On boards with a memory-mapped L3 region (EP_L3_REGION: the emulated gap9) the staging
 * buffer lives there, so blobs carrying L3 weights can be uploaded whole; elsewhere
 * (the PMSIS port on the chip included) it is ordinary RAM. */
static uint8_t ep_staging[EP_STAGING_BYTES] EP_L3_SECTION __attribute__((aligned(EP_BLOB_ALIGN)));

/* The L3 memory as the runtime sees it (ep_port.h); given to ep_model_parse only when the
 * port has one (ep_port_l3_size() is EP_L3_BYTES then, 0 otherwise). */
static const ep_l3_t ep_l3 = {.bytes = EP_L3_BYTES, .read = ep_port_l3_read, .write = ep_port_l3_write};

/* One request being answered: parameters in, response payload or refusal out. */
typedef struct {
    const uint8_t *req;
    uint16_t req_len;
    uint8_t *resp;          /* EP_FRAME_MAX_PAYLOAD bytes */
    uint16_t resp_len;
    const char *why;        /* message of a refusal */
} ep_call_t;

typedef ep_status_t (*ep_handler_t)(ep_call_t *c);

static struct {
    ep_model_t models[2];
    ep_model_t *active;     /* NULL until a model is installed */
    ep_model_t *candidate;
    uint32_t steps;         /* TRAIN steps applied since the model was installed */
    uint32_t staged;        /* input elements [0, staged) hold STAGEd values */
    uint32_t node_cycles[EP_MAX_NODES]; /* per-node cost of the last TRAIN/EVAL (PROFILE) */
    uint16_t profiled;      /* nodes of the last run: [0, profiled) of node_cycles are valid */
    struct {
        bool open;
        uint32_t total, crc, received;
    } upload;
    /* The sample buffer (BUF_BEGIN): arena bytes [base, base + bytes), beyond the installed
     * model's span; the stream of BUF_CHUNKs is the labels, then the samples. */
    struct {
        bool open;          /* declared for the installed model; [0, received) of stream arrived */
        uint8_t encoding;
        uint16_t count, channels;
        uint32_t elems, stream, received;
        uint32_t base, labels, samples; /* arena offsets: affine table, labels, samples */
    } buf;
#ifndef EP_STRIP_ERROR_STRINGS
    char why[160];          /* a refusal message with numbers in it */
#endif
    struct {
        uint32_t frames_bad;
        uint64_t samples_trained, samples_evaluated, cycles_train, cycles_eval;
    } stats;
    struct {
        bool valid;
        uint8_t type;
        uint16_t req_id;
        uint32_t wire_len;  /* the response, on the wire, in tx */
    } last;
    /* non-volatile storage (ep_ckpt.h): what was restored at boot, what the RAM weights are */
    struct {
        uint8_t boot_flags;     /* EP_NV_MODEL_RESTORED | EP_NV_CKPT_RESTORED */
        uint32_t boot_seq;      /* checkpoint restored at boot, 0 = none */
        uint32_t seq;           /* checkpoint last saved or restored for the installed model, 0 = none */
        bool model_stored;      /* the installed model is the stored one */
    } nv;
    /* training guards: a TRAIN that gives a non-finite loss or parameter, or a loss above
     * spike_k x the mean of the last GUARD_WINDOW accepted losses, is rolled back */
    struct {
        float spike_k;          /* 0: no spike rule */
        float losses[GUARD_WINDOW];
        uint16_t filled, next;
        uint32_t rollbacks;
    } guard;
    bool exit_requested;
    uint8_t exit_code;
    uint8_t tx[EP_FRAME_MAX_BYTES];
    uint8_t err[EP_FRAME_HEADER_BYTES + ERROR_MSG_MAX + EP_FRAME_CRC_BYTES];
} app;

static uint8_t *put8(uint8_t *p, uint8_t v) { *p = v; return p + 1; }
static uint8_t *put16(uint8_t *p, uint16_t v) { ep_wr16(p, v); return p + 2; }
static uint8_t *put32(uint8_t *p, uint32_t v) { ep_wr32(p, v); return p + 4; }
static uint8_t *put64(uint8_t *p, uint64_t v) { ep_wr64(p, v); return p + 8; }

static uint8_t *putf32(uint8_t *p, float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return put32(p, u);
}

/* Readers advance *p past the field they read; callers check the payload length first. */
static uint8_t get8(const uint8_t **p) { return *(*p)++; }
static uint16_t get16(const uint8_t **p) { *p += 2; return ep_rd16(*p - 2); }
static uint32_t get32(const uint8_t **p) { *p += 4; return ep_rd32(*p - 4); }

static float getf32(const uint8_t **p) {
    uint32_t u = get32(p);
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static void set_resp_len(ep_call_t *c, const uint8_t *end) { c->resp_len = (uint16_t)(end - c->resp); }

static ep_status_t refuse(ep_call_t *c, ep_status_t status, const char *why) {
    c->why = why;
    return status;
}

static ep_status_t need_len(ep_call_t *c, uint16_t len) {
    return c->req_len == len ? EP_OK : refuse(c, EP_BAD_PAYLOAD, EP_WHY("payload length does not match the message"));
}

#ifndef EP_STRIP_ERROR_STRINGS
static char *put_text(char *p, const char *end, const char *s) {
    while (*s && p < end) {
        *p++ = *s++;
    }
    return p;
}

static char *put_dec(char *p, const char *end, uint64_t v) {
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    while (n && p < end) {
        *p++ = digits[--n];
    }
    return p;
}
#endif

static uint8_t nv_flags(void) {
    uint8_t f = app.nv.boot_flags;
    if (ep_ckpt_nv_bytes()) {
        f |= EP_NV_PRESENT;
    }
    if (app.nv.model_stored) {
        f |= EP_NV_MODEL_STORED;
    }
    return f;
}

static void guard_reset(void) {
    app.guard.filled = 0;
    app.guard.next = 0;
}

static uint16_t put_hello(uint8_t *out) {
    uint8_t *p = put16(out, EP_PROTOCOL_VERSION);
    p = put8(p, EP_FW_VERSION_MAJOR);
    p = put8(p, EP_FW_VERSION_MINOR);
    p = put8(p, EP_FW_VERSION_PATCH);
    p = put8(p, 0);
    p = put32(p, EP_APP_CAPS);
    p = put32(p, EP_ARENA_BYTES);
    p = put32(p, EP_STAGING_BYTES);
    p = put16(p, EP_FRAME_MAX_PAYLOAD);
    p = put8(p, app.active != NULL);
    p = put8(p, sizeof EP_BOARD_NAME - 1);
    p = put32(p, app.active ? app.active->crc : 0);
    memcpy(p, EP_BOARD_NAME, sizeof EP_BOARD_NAME - 1);
    p += sizeof EP_BOARD_NAME - 1;
    p = put8(p, nv_flags());
    p = put8(p, 0);
    p = put16(p, 0);
    p = put32(p, app.nv.seq);
    p = put32(p, app.steps);
    p = put32(p, ep_port_l3_size());
    return (uint16_t)(p - out);
}

static ep_status_t on_hello(ep_call_t *c) {
    ep_status_t st = need_len(c, 0);
    if (st == EP_OK) {
        c->resp_len = put_hello(c->resp);
    }
    return st;
}

static ep_status_t on_load_begin(ep_call_t *c) {
    ep_status_t st = need_len(c, LOAD_BEGIN_REQ_BYTES);
    if (st != EP_OK) {
        return st;
    }
    const uint8_t *p = c->req;
    uint32_t total = get32(&p);
    uint32_t crc = get32(&p);
    if (total < EP_BLOB_HEADER_BYTES || total > EP_STAGING_BYTES) {
        return refuse(c, EP_TOO_LARGE, EP_WHY("total_bytes: below a blob header or above staging_bytes"));
    }
    app.upload.open = true;
    app.upload.total = total;
    app.upload.crc = crc;
    app.upload.received = 0;
    return EP_OK;
}

static ep_status_t on_load_chunk(ep_call_t *c) {
    if (c->req_len < LOAD_CHUNK_REQ_FIXED) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("payload shorter than the chunk offset"));
    }
    if (!app.upload.open) {
        return refuse(c, EP_BAD_STATE, EP_WHY("LOAD_CHUNK without LOAD_BEGIN"));
    }
    const uint8_t *p = c->req;
    if (get32(&p) != app.upload.received) {
        return refuse(c, EP_BAD_OFFSET, EP_WHY("offset: not the number of bytes received so far"));
    }
    uint32_t n = c->req_len - LOAD_CHUNK_REQ_FIXED;
    if (n > app.upload.total - app.upload.received) {
        return refuse(c, EP_TOO_LARGE, EP_WHY("data: runs past total_bytes"));
    }
    memcpy(ep_staging + app.upload.received, p, n);
    app.upload.received += n;
    set_resp_len(c, put32(c->resp, app.upload.received));
    return EP_OK;
}

/* Validate the blob in staging[0, len) into the candidate slot and make it the installed model. */
static ep_status_t install(uint32_t len, const char **why) {
    EP_DCHECK(ep_port_l3_size() == 0 || ep_port_l3_size() == ep_l3.bytes);
    ep_status_t st = ep_model_parse(app.candidate, ep_staging, len, EP_ARENA_BYTES,
                                    ep_port_l3_size() ? &ep_l3 : NULL, why);
    if (st != EP_OK) {
        return st;
    }
    ep_model_init_arena(app.candidate, ep_staging, ep_arena);
    ep_model_t *installed = app.candidate;
    app.candidate = installed == &app.models[0] ? &app.models[1] : &app.models[0];
    app.active = installed;
    app.steps = 0;
    app.staged = 0;
    app.profiled = 0;
    app.buf.open = false; /* the new model's span may cover it */
    app.nv.seq = 0;
    guard_reset();
    return EP_OK;
}

static ep_status_t on_load_end(ep_call_t *c) {
    ep_status_t st = need_len(c, 0);
    if (st != EP_OK) {
        return st;
    }
    if (!app.upload.open || app.upload.received != app.upload.total) {
        return refuse(c, EP_BAD_STATE, EP_WHY("upload incomplete: LOAD_BEGIN and every chunk must come first"));
    }
    app.upload.open = false;
    if (ep_crc32(0, ep_staging, app.upload.total) != app.upload.crc) {
        return refuse(c, EP_BAD_HASH, EP_WHY("crc32: the blob does not match LOAD_BEGIN"));
    }
    st = install(app.upload.total, &c->why);
    if (st != EP_OK) {
        return st;
    }
    const char *ignored;
    app.nv.model_stored = ep_ckpt_store_model(ep_staging, app.upload.total, app.active->crc, &ignored) == EP_OK;
    app.nv.boot_flags = 0;
    const ep_model_t *installed = app.active;
    uint8_t *p = put32(c->resp, installed->crc);
    p = put32(p, installed->arena_bytes);
    p = put16(p, installed->n_tensors);
    set_resp_len(c, put16(p, installed->n_nodes));
    return EP_OK;
}

/* The batch header and labels at p (len bytes: header, labels, data) into *b. */
static ep_status_t parse_batch(ep_call_t *c, const uint8_t *p, uint16_t len, ep_batch_t *b) {
    if (len < BATCH_REQ_FIXED) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("payload shorter than the batch header"));
    }
    b->n = get16(&p);
    b->encoding = get8(&p);
    uint8_t reserved = get8(&p);
    b->scale = getf32(&p);
    b->zero = getf32(&p);
    b->labels = p;
    if (reserved != 0) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("reserved: must be 0"));
    }
    if (b->n > len - BATCH_REQ_FIXED) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("labels: payload shorter than n"));
    }
    if (b->encoding == EP_ENC_STAGED && len != BATCH_REQ_FIXED + b->n) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("a staged run carries labels but no data"));
    }
    b->data = b->labels + b->n;
    b->data_bytes = (uint32_t)(len - BATCH_REQ_FIXED - b->n);
    return EP_OK;
}

static bool all_finite(const float *v, uint32_t count) {
    for (uint32_t k = 0; k < count; k++) {
        if (!isfinite(v[k])) {
            return false;
        }
    }
    return true;
}

/* True if every value of f32 tensor t is finite; an L3 tensor is read in chunks. */
static bool tensor_finite(const ep_tensor_t *t) {
    if (!(t->flags & EP_TF_L3)) {
        return all_finite((const float *)(const void *)(ep_arena + t->offset), t->bytes / 4u);
    }
    static float bounce[L3_BOUNCE_F32]; /* static: on GAP9 the uDMA copies into L2, not a stack */
    for (uint32_t at = 0; at < t->bytes; at += sizeof bounce) {
        const uint32_t n = t->bytes - at < sizeof bounce ? t->bytes - at : (uint32_t)sizeof bounce;
        ep_port_l3_read(t->offset + at, bounce, n);
        if (!all_finite(bounce, n / 4u)) {
            return false;
        }
    }
    return true;
}

/* Why the TRAIN step that gave `loss` must not stand, or NULL; an accepted loss joins the window. */
static const char *guard_check(float loss) {
    if (!isfinite(loss)) {
        return EP_WHY("loss is NaN or infinite");
    }
    const ep_model_t *m = app.active;
    for (uint16_t i = 0; i < m->n_tensors; i++) {
        const ep_tensor_t *t = &m->tensors[i];
        if ((t->flags & EP_TF_PARAM) && t->dtype == EP_DTYPE_F32 && !tensor_finite(t)) {
            return EP_WHY("a parameter is NaN or infinite after the update");
        }
    }
    if (app.guard.spike_k > 0 && app.guard.filled == GUARD_WINDOW) {
        float mean = 0;
        for (int k = 0; k < GUARD_WINDOW; k++) {
            mean += app.guard.losses[k];
        }
        mean /= GUARD_WINDOW;
        if (loss > app.guard.spike_k * mean) {
            return EP_WHY("loss spike: above spike_k x the mean of the last 8 losses");
        }
    }
    app.guard.losses[app.guard.next] = loss;
    app.guard.next = (uint16_t)((app.guard.next + 1u) % GUARD_WINDOW);
    if (app.guard.filled < GUARD_WINDOW) {
        app.guard.filled++;
    }
    return NULL;
}

/* Restore the newest checkpoint after a rejected step; the refusal message says what happened. */
static const char *rollback(const char *cause) {
    ep_ckpt_info_t info;
    const char *why = "";
    ep_status_t st = ep_ckpt_restore(app.active, ep_arena, &info, &why);
    guard_reset();
    if (st == EP_OK) {
        app.steps = info.steps;
        app.nv.seq = info.seq;
        app.guard.rollbacks++;
    }
#ifdef EP_STRIP_ERROR_STRINGS
    (void)cause, (void)why;
    return "";
#else
    char *p = app.why;
    const char *end = app.why + sizeof app.why - 1;
    p = put_text(p, end, cause);
    if (st == EP_OK) {
        p = put_text(p, end, "; rolled back to checkpoint ");
        p = put_dec(p, end, info.seq);
        p = put_text(p, end, " (step ");
        p = put_dec(p, end, info.steps);
        p = put_text(p, end, ")");
    } else {
        p = put_text(p, end, "; NOT rolled back: ");
        p = put_text(p, end, why);
    }
    *p = '\0';
    return app.why;
#endif
}

/* Count a successful run and answer it (the TRAIN/EVAL response); a TRAIN the guards
 * reject is rolled back and answered with EP_NUMERIC instead. */
static ep_status_t put_step(ep_call_t *c, bool train, const ep_step_result_t *r, uint64_t cycles) {
    if (train) {
        const char *bad = guard_check(r->loss);
        if (bad) {
            return refuse(c, EP_NUMERIC, rollback(bad));
        }
        app.steps++;
        app.stats.samples_trained += r->n;
        app.stats.cycles_train += cycles;
    } else {
        app.stats.samples_evaluated += r->n;
        app.stats.cycles_eval += cycles;
    }
    uint8_t *out = putf32(c->resp, r->loss);
    out = put16(out, r->n);
    out = put16(out, r->correct);
    out = put32(out, app.steps);
    set_resp_len(c, put64(out, cycles));
    return EP_OK;
}

/* Before a TRAIN/EVAL: node counts (PROFILE) and per-core counts (CORES) from zero. */
static ep_profiler_t begin_profile(void) {
    memset(app.node_cycles, 0, sizeof app.node_cycles);
    app.profiled = app.active->n_nodes;
    ep_par_counts_reset();
    const ep_profiler_t prof = {.clock = ep_port_cycles, .cycles = app.node_cycles};
    return prof;
}

static ep_status_t run_batch(ep_call_t *c, bool train) {
    ep_batch_t b;
    ep_status_t st = parse_batch(c, c->req, c->req_len, &b);
    if (st != EP_OK) {
        return st;
    }
    if (!app.active) {
        return refuse(c, EP_NO_MODEL, EP_WHY("no model installed: load one first"));
    }
    ep_step_result_t r;
    const ep_profiler_t prof = begin_profile();
    uint64_t t0 = ep_port_cycles();
    if (b.encoding == EP_ENC_STAGED) {
        const uint64_t need = (uint64_t)b.n * app.active->tensors[app.active->input_tensor].elems;
        if (b.n < 1 || need > app.staged) {
            return refuse(c, EP_BAD_BATCH, EP_WHY("staged run: n is 0 or more samples than were staged"));
        }
        st = ep_model_run_staged(app.active, ep_arena, b.n, b.labels, train, &prof, &r, &c->why);
    } else {
        st = ep_model_run(app.active, ep_arena, &b, train, &prof, &r, &c->why);
    }
    uint64_t cycles = ep_port_cycles() - t0;
    app.staged = 0; /* a run consumes the staged rows (and a plain batch overwrote them) */
    if (st != EP_OK) {
        return st;
    }
    return put_step(c, train, &r, cycles);
}

/* STAGE: input values [offset, offset + count) of the next batch, following on from those staged. */
static ep_status_t on_stage(ep_call_t *c) {
    if (c->req_len < STAGE_REQ_FIXED) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("payload shorter than the stage header"));
    }
    const uint8_t *p = c->req;
    const uint32_t offset = get32(&p);
    const uint8_t encoding = get8(&p);
    const uint8_t reserved0 = get8(&p);
    const uint16_t reserved1 = get16(&p);
    const float scale = getf32(&p);
    const float zero = getf32(&p);
    if (reserved0 != 0 || reserved1 != 0) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("reserved: must be 0"));
    }
    if (!app.active) {
        return refuse(c, EP_NO_MODEL, EP_WHY("no model installed: load one first"));
    }
    if (offset > app.staged) {
        return refuse(c, EP_BAD_BATCH, EP_WHY("stage: values must follow on from those staged (no gap)"));
    }
    const uint32_t bytes = (uint32_t)(c->req_len - STAGE_REQ_FIXED);
    ep_status_t st = ep_model_stage(app.active, ep_arena, offset, encoding, scale, zero, p, bytes, &c->why);
    if (st != EP_OK) {
        return st;
    }
    const uint32_t end = offset + bytes / (encoding == EP_ENC_F32 ? 4u : 1u);
    if (end > app.staged) {
        app.staged = end;
    }
    set_resp_len(c, put32(c->resp, app.staged));
    return EP_OK;
}

static uint64_t roundup8(uint64_t v) { return (v + 7u) & ~(uint64_t)7u; }


/* "buffer: needs N bytes; F free in the arena beyond the model's M (arena A)" */
static const char *too_large_why(uint64_t need, uint32_t avail, uint32_t model) {
#ifdef EP_STRIP_ERROR_STRINGS
    (void)need, (void)avail, (void)model;
    return "";
#else
    char *p = app.why;
    const char *end = app.why + sizeof app.why - 1;
    p = put_text(p, end, "buffer: needs ");
    p = put_dec(p, end, need);
    p = put_text(p, end, " bytes of arena; ");
    p = put_dec(p, end, avail);
    p = put_text(p, end, " are free beyond the model's ");
    p = put_dec(p, end, model);
    p = put_text(p, end, " (arena ");
    p = put_dec(p, end, EP_ARENA_BYTES);
    p = put_text(p, end, ")");
    *p = '\0';
    return app.why;
#endif
}

/* BUF_BEGIN: declare a sample buffer for the installed model (replaces any other). */
static ep_status_t on_buf_begin(ep_call_t *c) {
    if (c->req_len < BUF_BEGIN_REQ_FIXED) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("payload shorter than the buffer header"));
    }
    const uint8_t *p = c->req;
    const uint16_t count = get16(&p);
    const uint8_t encoding = get8(&p);
    const uint8_t reserved0 = get8(&p);
    const uint32_t elems = get32(&p);
    const uint16_t channels = get16(&p);
    const uint16_t reserved1 = get16(&p);
    const uint8_t *affine = p;
    if (reserved0 != 0 || reserved1 != 0) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("reserved: must be 0"));
    }
    if (c->req_len != BUF_BEGIN_REQ_FIXED + 8u * channels) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("payload length: not the header and channels x (scale, zero)"));
    }
    const uint32_t width = ep_sample_width(encoding);
    if (width == 0) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("encoding: not f32, u8, i8 or i16 affine"));
    }
    if (encoding == EP_ENC_F32 ? channels != 0 : (channels < 1 || elems % channels != 0)) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("channels: 0 for f32; else 1..elems and dividing elems"));
    }
    for (uint32_t i = 0; i < 2u * channels; i++) {
        const uint32_t u = ep_rd32(affine + 4u * i);
        float v;
        memcpy(&v, &u, sizeof v);
        if (!isfinite(v)) {
            return refuse(c, EP_BAD_PAYLOAD, EP_WHY("scale, zero: not finite"));
        }
    }
    if (count < 1) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("count: 0 samples"));
    }
    if (!app.active) {
        return refuse(c, EP_NO_MODEL, EP_WHY("no model installed: load one first"));
    }
    if (elems != app.active->tensors[app.active->input_tensor].elems) {
        return refuse(c, EP_BAD_BATCH, EP_WHY("elems: not the installed model's input elements per sample"));
    }
    const uint32_t model = app.active->arena_bytes;
    const uint64_t base = roundup8(model);
    const uint32_t avail = base < EP_ARENA_BYTES ? (uint32_t)(EP_ARENA_BYTES - base) : 0u;
    const uint64_t head = roundup8(8u * (uint64_t)channels + count);
    const uint64_t data = (uint64_t)count * elems * width;
    if (head + data > avail) {
        return refuse(c, EP_TOO_LARGE, too_large_why(head + data, avail, model));
    }
    app.buf.open = true;
    app.buf.encoding = encoding;
    app.buf.count = count;
    app.buf.channels = channels;
    app.buf.elems = elems;
    app.buf.stream = (uint32_t)(count + data);
    app.buf.received = 0;
    app.buf.base = (uint32_t)base;
    app.buf.labels = (uint32_t)(base + 8u * channels);
    app.buf.samples = (uint32_t)(base + head);
    memcpy(ep_arena + app.buf.base, affine, 8u * channels);
    uint8_t *out = put32(c->resp, app.buf.stream);
    out = put32(out, (uint32_t)(head + data));
    set_resp_len(c, put32(out, avail));
    return EP_OK;
}

/* BUF_CHUNK: the next bytes of the buffer's stream (labels, then samples). */
static ep_status_t on_buf_chunk(ep_call_t *c) {
    if (c->req_len < BUF_CHUNK_REQ_FIXED) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("payload shorter than the chunk offset"));
    }
    if (!app.buf.open) {
        return refuse(c, EP_BAD_STATE, EP_WHY("BUF_CHUNK without BUF_BEGIN (or a model was installed since)"));
    }
    const uint8_t *p = c->req;
    if (get32(&p) != app.buf.received) {
        return refuse(c, EP_BAD_OFFSET, EP_WHY("offset: not the number of buffer bytes received so far"));
    }
    const uint32_t n = c->req_len - BUF_CHUNK_REQ_FIXED;
    if (n > app.buf.stream - app.buf.received) {
        return refuse(c, EP_TOO_LARGE, EP_WHY("data: runs past the buffer's count x sample bytes"));
    }
    uint32_t at = app.buf.received;
    uint32_t left = n;
    if (at < app.buf.count) { /* labels first */
        const uint32_t k = left < app.buf.count - at ? left : app.buf.count - at;
        for (uint32_t i = 0; i < k; i++) {
            if (p[i] >= app.active->num_classes) {
                return refuse(c, EP_BAD_BATCH, EP_WHY("label: not below the model's num_classes"));
            }
        }
        memcpy(ep_arena + app.buf.labels + at, p, k);
        at += k;
        p += k;
        left -= k;
    }
    memcpy(ep_arena + app.buf.samples + (at - app.buf.count), p, left);
    app.buf.received += n;
    set_resp_len(c, put32(c->resp, app.buf.received));
    return EP_OK;
}

/* TRAIN_BUF / EVAL_BUF: one batch of buffered samples, named by index. */
static ep_status_t run_buffered(ep_call_t *c, bool train) {
    if (c->req_len < BUF_RUN_REQ_FIXED) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("payload shorter than n"));
    }
    const uint8_t *p = c->req;
    const uint16_t n = get16(&p);
    if (c->req_len != BUF_RUN_REQ_FIXED + 2u * n) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("payload length: not n and n u16 indices"));
    }
    if (!app.active) {
        return refuse(c, EP_NO_MODEL, EP_WHY("no model installed: load one first"));
    }
    if (!app.buf.open || app.buf.received != app.buf.stream) {
        return refuse(c, EP_BAD_STATE, EP_WHY("no complete sample buffer: BUF_BEGIN and every BUF_CHUNK first"));
    }
    const ep_sample_buf_t sb = {
        .encoding = app.buf.encoding, .count = app.buf.count, .channels = app.buf.channels,
        .elems = app.buf.elems, .affine = ep_arena + app.buf.base, .labels = ep_arena + app.buf.labels,
        .samples = ep_arena + app.buf.samples,
    };
    ep_step_result_t r;
    const ep_profiler_t prof = begin_profile();
    const uint64_t t0 = ep_port_cycles();
    ep_status_t st = ep_model_run_buffered(app.active, ep_arena, &sb, n, p, train, &prof, &r, &c->why);
    const uint64_t cycles = ep_port_cycles() - t0;
    app.staged = 0; /* the input rows were overwritten */
    if (st != EP_OK) {
        return st;
    }
    return put_step(c, train, &r, cycles);
}

static ep_status_t on_train_buf(ep_call_t *c) { return run_buffered(c, true); }
static ep_status_t on_eval_buf(ep_call_t *c) { return run_buffered(c, false); }

/* CORES: per cluster core, the instructions it ran inside forks in the last TRAIN/EVAL. */
static ep_status_t on_cores(ep_call_t *c) {
    ep_status_t st = need_len(c, 0);
    if (st != EP_OK) {
        return st;
    }
    uint64_t counts[CORES_MAX];
    const uint32_t n = ep_par_core_counts(counts, CORES_MAX);
    uint8_t *out = put16(c->resp, (uint16_t)n);
    out = put16(out, n > 0);
    for (uint32_t k = 0; k < n; k++) {
        out = put64(out, counts[k]);
    }
    set_resp_len(c, out);
    return EP_OK;
}

/* PROFILE: the per-node cycles of the last TRAIN/EVAL, from node `first` on. */
static ep_status_t on_profile(ep_call_t *c) {
    ep_status_t st = need_len(c, PROFILE_REQ_BYTES);
    if (st != EP_OK) {
        return st;
    }
    const uint8_t *p = c->req;
    const uint16_t first = get16(&p);
    if (first > app.profiled) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("profile: first node past the nodes of the last run"));
    }
    uint16_t count = (uint16_t)(app.profiled - first);
    if (count > PROFILE_RESP_MAX) {
        count = PROFILE_RESP_MAX;
    }
    uint8_t *out = put16(c->resp, app.profiled);
    out = put16(out, first);
    for (uint16_t i = 0; i < count; i++) {
        out = put32(out, app.node_cycles[first + i]);
    }
    set_resp_len(c, out);
    return EP_OK;
}

static ep_status_t on_train(ep_call_t *c) { return run_batch(c, true); }
static ep_status_t on_eval(ep_call_t *c) { return run_batch(c, false); }

static ep_status_t on_stats(ep_call_t *c) {
    ep_status_t st = need_len(c, 0);
    if (st != EP_OK) {
        return st;
    }
    uint8_t *p = put32(c->resp, app.steps);
    p = put32(p, app.stats.frames_bad);
    p = put64(p, app.stats.samples_trained);
    p = put64(p, app.stats.samples_evaluated);
    p = put64(p, app.stats.cycles_train);
    p = put64(p, app.stats.cycles_eval);
    p = put32(p, app.active ? app.active->arena_bytes : 0);
    set_resp_len(c, put32(p, EP_ARENA_BYTES));
    return EP_OK;
}

static ep_status_t on_read_weights(ep_call_t *c) {
    ep_status_t st = need_len(c, READ_WEIGHTS_REQ_BYTES);
    if (st != EP_OK) {
        return st;
    }
    const uint8_t *p = c->req;
    uint16_t tensor = get16(&p);
    uint16_t length = get16(&p);
    uint32_t offset = get32(&p);
    if (!app.active) {
        return refuse(c, EP_NO_MODEL, EP_WHY("no model installed: load one first"));
    }
    if (tensor >= app.active->n_tensors || !(app.active->tensors[tensor].flags & EP_TF_PARAM)) {
        return refuse(c, EP_BAD_TENSOR, EP_WHY("tensor: not a parameter of the installed model"));
    }
    const ep_tensor_t *t = &app.active->tensors[tensor];
    if (length > EP_FRAME_MAX_PAYLOAD - READ_WEIGHTS_RESP_FIXED || offset > t->bytes ||
        length > t->bytes - offset) {
        return refuse(c, EP_BAD_TENSOR, EP_WHY("offset, length: outside the tensor"));
    }
    uint8_t *out = put16(c->resp, tensor);
    out = put16(out, 0);
    out = put32(out, offset);
    if (t->flags & EP_TF_L3) {
        ep_port_l3_read(t->offset + offset, out, length);
    } else {
        memcpy(out, ep_arena + t->offset + offset, length);
    }
    set_resp_len(c, out + length);
    return EP_OK;
}

/* CKPT_SAVE / CKPT_RESTORE answer: the checkpoint now matching the RAM weights. */
static void put_ckpt(ep_call_t *c, const ep_ckpt_info_t *info) {
    uint8_t *p = put32(c->resp, info->seq);
    p = put32(p, info->steps);
    p = put32(p, info->payload_bytes);
    p = put8(p, info->slot);
    p = put8(p, 0);
    set_resp_len(c, put16(p, 0));
}

static ep_status_t on_ckpt_save(ep_call_t *c) {
    ep_status_t st = need_len(c, 0);
    if (st != EP_OK) {
        return st;
    }
    if (!app.active) {
        return refuse(c, EP_NO_MODEL, EP_WHY("no model installed: load one first"));
    }
    ep_ckpt_info_t info;
    st = ep_ckpt_save(app.active, ep_arena, app.steps, &info, &c->why);
    if (st == EP_OK) {
        app.nv.seq = info.seq;
        put_ckpt(c, &info);
    }
    return st;
}

static ep_status_t on_ckpt_restore(ep_call_t *c) {
    ep_status_t st = need_len(c, 0);
    if (st != EP_OK) {
        return st;
    }
    if (!app.active) {
        return refuse(c, EP_NO_MODEL, EP_WHY("no model installed: load one first"));
    }
    ep_ckpt_info_t info;
    st = ep_ckpt_restore(app.active, ep_arena, &info, &c->why);
    if (st == EP_OK) {
        app.steps = info.steps;
        app.nv.seq = info.seq;
        guard_reset();
        put_ckpt(c, &info);
    }
    return st;
}

static ep_status_t on_ckpt_info(ep_call_t *c) {
    ep_status_t st = need_len(c, 0);
    if (st != EP_OK) {
        return st;
    }
    ep_ckpt_info_t newest = {0};
    const char *ignored;
    if (app.active) {
        if (ep_ckpt_newest(app.active, &newest, &ignored) != EP_OK) {
            newest.seq = 0; /* none */
        }
    }
    uint8_t *p = put32(c->resp, ep_ckpt_nv_bytes());
    p = put32(p, ep_ckpt_slot_bytes());
    p = put8(p, nv_flags());
    p = put8(p, 0);
    p = put16(p, 0);
    p = put32(p, ep_ckpt_stored_model_crc());
    p = put32(p, newest.seq);
    p = put32(p, newest.steps);
    p = put32(p, app.nv.boot_seq);
    p = put32(p, app.nv.seq);
    p = put32(p, app.guard.rollbacks);
    set_resp_len(c, put32(p, app.active ? ep_ckpt_payload_bytes(app.active) : 0));
    return EP_OK;
}

/* GUARD: set the loss-spike factor (0 turns the spike rule off; NaN/Inf checks stay on). */
static ep_status_t on_guard(ep_call_t *c) {
    ep_status_t st = need_len(c, GUARD_REQ_BYTES);
    if (st != EP_OK) {
        return st;
    }
    const uint8_t *p = c->req;
    const float k = getf32(&p);
    if (get32(&p) != 0) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("reserved: must be 0"));
    }
    if (!isfinite(k) || k < 0 || (k > 0 && k <= 1)) {
        return refuse(c, EP_BAD_PAYLOAD, EP_WHY("spike_k: 0 (off) or a finite factor above 1"));
    }
    app.guard.spike_k = k;
    uint8_t *out = putf32(c->resp, k);
    out = put16(out, GUARD_WINDOW);
    out = put16(out, app.guard.filled);
    set_resp_len(c, put32(out, app.guard.rollbacks));
    return EP_OK;
}

static ep_status_t on_exit(ep_call_t *c) {
    ep_status_t st = need_len(c, EXIT_REQ_BYTES);
    if (st == EP_OK) {
        app.exit_requested = true;
        app.exit_code = c->req[0];
    }
    return st;
}

static const ep_handler_t handlers[] = {
    [EP_MSG_HELLO] = on_hello,
    [EP_MSG_LOAD_BEGIN] = on_load_begin,
    [EP_MSG_LOAD_CHUNK] = on_load_chunk,
    [EP_MSG_LOAD_END] = on_load_end,
    [EP_MSG_TRAIN] = on_train,
    [EP_MSG_EVAL] = on_eval,
    [EP_MSG_STAGE] = on_stage,
    [EP_MSG_PROFILE] = on_profile,
    [EP_MSG_BUF_BEGIN] = on_buf_begin,
    [EP_MSG_BUF_CHUNK] = on_buf_chunk,
    [EP_MSG_TRAIN_BUF] = on_train_buf,
    [EP_MSG_EVAL_BUF] = on_eval_buf,
    [EP_MSG_STATS] = on_stats,
    [EP_MSG_READ_WEIGHTS] = on_read_weights,
    [EP_MSG_EXIT] = on_exit,
    [EP_MSG_CKPT_SAVE] = on_ckpt_save,
    [EP_MSG_CKPT_RESTORE] = on_ckpt_restore,
    [EP_MSG_CKPT_INFO] = on_ckpt_info,
    [EP_MSG_GUARD] = on_guard,
    [EP_MSG_CORES] = on_cores,
};

static uint16_t put_message(uint8_t *out, uint16_t cap, const char *msg) {
    size_t n = strlen(msg);
    n = n < cap ? n : cap;
    memcpy(out, msg, n);
    return (uint16_t)n;
}

static void send_error(ep_status_t status, uint16_t req_id) {
    const char *msg = status == EP_BAD_CRC   ? EP_WHY("bad crc32: frame dropped")
                      : status == EP_OVERSIZE ? EP_WHY("length above the largest payload")
                                              : EP_WHY("partial frame dropped after the idle timeout");
    uint16_t len = put_message(app.err + EP_FRAME_HEADER_BYTES, ERROR_MSG_MAX, msg);
    uint32_t n = ep_frame_encode(app.err, sizeof app.err, EP_MSG_ERROR | EP_FRAME_RESPONSE_BIT, (uint8_t)status,
                                 req_id, len);
    app.stats.frames_bad++;
    ep_port_write(app.err, n);
}

/* Reinstall the stored model, then its newest checkpoint: the device comes back as it was
 * at the last checkpoint (or as uploaded). Anything that fails a check is ignored. */
static void restore_at_boot(void) {
    uint32_t len;
    const char *ignored;
    if (ep_ckpt_load_model(ep_staging, EP_STAGING_BYTES, &len, &ignored) != EP_OK ||
        install(len, &ignored) != EP_OK) {
        return;
    }
    app.nv.model_stored = true;
    app.nv.boot_flags = EP_NV_MODEL_RESTORED;
    ep_ckpt_info_t info;
    if (ep_ckpt_restore(app.active, ep_arena, &info, &ignored) == EP_OK) {
        app.steps = info.steps;
        app.nv.seq = info.seq;
        app.nv.boot_seq = info.seq;
        app.nv.boot_flags |= EP_NV_CKPT_RESTORED;
    }
}

void ep_app_init(void) {
    app.candidate = &app.models[0];
    restore_at_boot();
    uint16_t len = put_hello(app.tx + EP_FRAME_HEADER_BYTES);
    ep_port_write(app.tx, ep_frame_encode(app.tx, sizeof app.tx, EP_MSG_HELLO | EP_FRAME_RESPONSE_BIT, EP_OK, 0, len));
}

void ep_app_handle(const ep_frame_t *f) {
    if (f->error != EP_OK) {
        send_error(f->error, f->req_id);
        return;
    }
    if (!(app.last.valid && app.last.type == f->type && app.last.req_id == f->req_id)) {
        ep_call_t c = {.req = f->payload, .req_len = f->len, .resp = app.tx + EP_FRAME_HEADER_BYTES};
        ep_handler_t h = f->type < sizeof handlers / sizeof handlers[0] ? handlers[f->type] : NULL;
        ep_status_t st = h ? h(&c) : refuse(&c, EP_UNKNOWN_TYPE, EP_WHY("type: unknown message type"));
        if (st != EP_OK) {
            c.resp_len = put_message(c.resp, EP_FRAME_MAX_PAYLOAD, c.why);
        }
        app.last.valid = true;
        app.last.type = f->type;
        app.last.req_id = f->req_id;
        app.last.wire_len = ep_frame_encode(app.tx, sizeof app.tx, f->type | EP_FRAME_RESPONSE_BIT, (uint8_t)st,
                                            f->req_id, c.resp_len);
    }
    ep_port_write(app.tx, app.last.wire_len);
    if (app.exit_requested) {
        ep_port_exit(app.exit_code);
    }
}
