/*
 * fuzz_app.c — libFuzzer harness for the whole device application
 * (firmware/app/ep_app.c, docs/protocol.md) over a stub port.
 *
 * Build and run: `make -C firmware fuzz-build fuzz-short` (clang, ASan + UBSan).
 *
 * ep_app.c is included here (not linked) so the harness can reset its static
 * state before every input: each input is a fresh boot, and a crash replays
 * from its input alone.
 *
 * Input format (tests/fuzz/make_corpus.py writes seeds in it): records
 *   [type u8][status u8][req_id u16][len u16][len payload bytes]
 * each one event of the frame receiver handed to ep_app_handle(): a request of
 * that type (len clamped to EP_FRAME_MAX_PAYLOAD and to the bytes left; the
 * payload in an exact-size heap block, so ASan sees any overread), or, if
 * status has bit 7, a receive error (BAD_CRC, OVERSIZE or TRUNCATED by
 * status % 3) with that req_id.
 *
 * Checks (the stub port parses everything the app writes):
 *   - the boot HELLO, then exactly one well-formed frame per event: right sync,
 *     crc32, length ≤ EP_FRAME_MAX_PAYLOAD; a request's answer has its type |
 *     0x80 and its req_id and a known status; a receive error's answer is an
 *     ERROR frame with that status and req_id;
 *   - a repeated request (same type and req_id as the last one) gets the very
 *     same bytes again;
 *   - successful answers have their documented payload sizes, and HELLO and
 *     STATS report the model installed by the last successful LOAD_END (a
 *     refused upload leaves the installed model in place);
 *   - EXIT answers, then leaves through ep_port_exit (the harness longjmps out).
 *
 * Non-volatile storage is an in-memory flash (erase to 0xFF, programming only
 * clears bits, out-of-range calls fail), erased before every input, so
 * checkpoints (ep_ckpt.c) and the training guards are fuzzed too. The L3 memory
 * is an array of EP_L3_BYTES (firmware/Makefile's fuzz flags), zeroed before
 * every input; every access must lie inside it.
 */
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../firmware/app/ep_app.c"
#include "../../firmware/app/ep_ckpt.c"

#define FUZZ_CHECK(cond)                                                                  \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "fuzz_app: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

/* ---- the stub port ---------------------------------------------------------- */
static struct {
    uint32_t frames;                    /* frames written since the last reset */
    uint8_t last[EP_FRAME_MAX_BYTES];   /* the last frame written */
    uint32_t last_len;
    uint64_t cycles;
    jmp_buf exit_jump;
    int exited;
} port;

void ep_port_init(int argc, char **argv) {
    (void)argc;
    (void)argv;
}

int ep_port_getc(void) { return -1; }

void ep_port_idle(void) {}

uint64_t ep_port_cycles(void) { return port.cycles += 1000u; }

void ep_port_write(const uint8_t *buf, uint32_t len) {
    FUZZ_CHECK(len >= EP_FRAME_HEADER_BYTES + EP_FRAME_CRC_BYTES && len <= EP_FRAME_MAX_BYTES);
    FUZZ_CHECK(buf[0] == EP_FRAME_SYNC0 && buf[1] == EP_FRAME_SYNC1);
    const uint16_t plen = ep_rd16(buf + EP_FRAME_OFF_LENGTH);
    FUZZ_CHECK(plen <= EP_FRAME_MAX_PAYLOAD && len == EP_FRAME_HEADER_BYTES + (uint32_t)plen + EP_FRAME_CRC_BYTES);
    FUZZ_CHECK(ep_crc32(0, buf + 2, len - 6u) == ep_rd32(buf + len - 4u));
    FUZZ_CHECK(buf[EP_FRAME_OFF_TYPE] & EP_FRAME_RESPONSE_BIT);
    FUZZ_CHECK(buf[EP_FRAME_OFF_STATUS] <= EP_NO_CHECKPOINT);
    FUZZ_CHECK(port.frames == 0); /* one answer per event */
    port.frames++;
    memcpy(port.last, buf, len);
    port.last_len = len;
}

/* L3: the native port's own (EP_L3_BYTES from the fuzz flags); an access outside it is a
 * global-buffer overflow, which ASan reports */
#include "ep_l3_mapped.h"

/* flash: 4 KiB pages, room for the model and two slots of the whole arena and L3 (as ep_nv_file.h) */
enum { NV_PAGE = 4096 };
#define NV_BYTES (((EP_STAGING_BYTES + NV_PAGE - 1) / NV_PAGE + 1 + \
                   2 * ((EP_ARENA_BYTES + EP_L3_BYTES + NV_PAGE - 1) / NV_PAGE + 1)) * NV_PAGE)
static uint8_t nv[NV_BYTES];

uint32_t ep_port_nv_size(void) { return NV_BYTES; }

uint32_t ep_port_nv_page_bytes(void) { return NV_PAGE; }

int ep_port_nv_read(uint32_t off, uint8_t *buf, uint32_t len) {
    FUZZ_CHECK(off <= NV_BYTES && len <= NV_BYTES - off); /* ep_ckpt.c stays inside its layout */
    memcpy(buf, nv + off, len);
    return 0;
}

int ep_port_nv_erase(uint32_t page) {
    FUZZ_CHECK(page < NV_BYTES / NV_PAGE);
    memset(nv + (size_t)page * NV_PAGE, 0xFF, NV_PAGE);
    return 0;
}

int ep_port_nv_write(uint32_t off, const uint8_t *buf, uint32_t len) {
    FUZZ_CHECK(off <= NV_BYTES && len <= NV_BYTES - off);
    for (uint32_t i = 0; i < len; i++) {
        nv[off + i] &= buf[i];
    }
    return 0;
}

_Noreturn void ep_port_exit(int code) {
    (void)code;
    port.exited = 1;
    longjmp(port.exit_jump, 1);
}

/* ---- the harness ------------------------------------------------------------ */

/* What the harness knows the device must report. */
static struct {
    int loaded;
    uint32_t crc, arena_used;
    int have_prev;
    uint8_t prev_type;
    uint16_t prev_id;
    uint8_t prev[EP_FRAME_MAX_BYTES];
    uint32_t prev_len;
} model;

static void check_answer(uint8_t type, uint16_t req_id) {
    FUZZ_CHECK(port.frames == 1);
    const uint8_t *r = port.last;
    static int trace = -1;
    if (trace < 0) {
        trace = getenv("FUZZ_APP_TRACE") != NULL;
    }
    if (trace) { /* FUZZ_APP_TRACE=1 ./fuzz_app INPUT: what each request got */
        fprintf(stderr, "type %u req_id %u -> status %u len %u\n", type, req_id, r[EP_FRAME_OFF_STATUS],
                ep_rd16(r + EP_FRAME_OFF_LENGTH));
    }
    const uint8_t st = r[EP_FRAME_OFF_STATUS];
    const uint16_t plen = ep_rd16(r + EP_FRAME_OFF_LENGTH);
    const uint8_t *pl = r + EP_FRAME_HEADER_BYTES;
    FUZZ_CHECK(r[EP_FRAME_OFF_TYPE] == (uint8_t)(type | EP_FRAME_RESPONSE_BIT));
    FUZZ_CHECK(ep_rd16(r + EP_FRAME_OFF_REQ_ID) == req_id);
    if (st != EP_OK) {
        FUZZ_CHECK(st != EP_INTERNAL || type == EP_MSG_TRAIN || type == EP_MSG_EVAL || type == EP_MSG_TRAIN_BUF ||
                   type == EP_MSG_EVAL_BUF);
        return;
    }
    switch (type) {
    case EP_MSG_HELLO:
        /* 26 bytes, the board name, then nv_flags, 3 reserved, ckpt_seq, steps, l3_bytes */
        FUZZ_CHECK(plen == 42 + sizeof EP_BOARD_NAME - 1);
        FUZZ_CHECK(pl[20] == model.loaded && ep_rd32(pl + 22) == (model.loaded ? model.crc : 0u));
        FUZZ_CHECK(pl[26 + sizeof EP_BOARD_NAME - 1] & EP_NV_PRESENT);
        FUZZ_CHECK(ep_rd32(pl + 38 + sizeof EP_BOARD_NAME - 1) == EP_L3_BYTES);
        break;
    case EP_MSG_LOAD_BEGIN:
        FUZZ_CHECK(plen == 0);
        break;
    case EP_MSG_LOAD_CHUNK:
    case EP_MSG_STAGE:
        FUZZ_CHECK(plen == 4);
        break;
    case EP_MSG_LOAD_END:
        FUZZ_CHECK(plen == 12 && ep_rd32(pl + 4) <= EP_ARENA_BYTES);
        model.loaded = 1;
        model.crc = ep_rd32(pl);
        model.arena_used = ep_rd32(pl + 4);
        break;
    case EP_MSG_TRAIN:
    case EP_MSG_EVAL:
    case EP_MSG_TRAIN_BUF:
    case EP_MSG_EVAL_BUF:
        FUZZ_CHECK(model.loaded && plen == 20 && ep_rd16(pl + 6) <= ep_rd16(pl + 4));
        break;
    case EP_MSG_BUF_BEGIN:
        FUZZ_CHECK(model.loaded && plen == 12);
        break;
    case EP_MSG_BUF_CHUNK:
        FUZZ_CHECK(model.loaded && plen == 4);
        break;
    case EP_MSG_CKPT_SAVE:
    case EP_MSG_CKPT_RESTORE:
        FUZZ_CHECK(model.loaded && plen == 16 && ep_rd32(pl) >= 1);
        break;
    case EP_MSG_CKPT_INFO:
        FUZZ_CHECK(plen == 40 && ep_rd32(pl) == NV_BYTES);
        break;
    case EP_MSG_GUARD:
        FUZZ_CHECK(plen == 12);
        break;
    case EP_MSG_STATS:
        FUZZ_CHECK(plen == 48 && ep_rd32(pl + 40) == (model.loaded ? model.arena_used : 0u));
        break;
    case EP_MSG_READ_WEIGHTS:
        FUZZ_CHECK(model.loaded && plen >= 8);
        break;
    case EP_MSG_PROFILE:
        FUZZ_CHECK(plen >= 4 && plen % 4 == 0);
        break;
    case EP_MSG_CORES: /* one core, no cluster: no counts */
        FUZZ_CHECK(plen == 4 && ep_rd16(pl) == 0 && ep_rd16(pl + 2) == 0);
        break;
    case EP_MSG_EXIT:
        FUZZ_CHECK(plen == 0);
        break;
    default:
        FUZZ_CHECK(!"an unknown type was answered with EP_OK");
    }
}

static const ep_status_t k_rx_errors[3] = {EP_BAD_CRC, EP_OVERSIZE, EP_TRUNCATED};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* a fresh boot: the app's static state (ep_app.c) and the harness's */
    memset(&app, 0, sizeof app);
    memset(&port, 0, sizeof port);
    memset(&model, 0, sizeof model);
    memset(nv, 0xFF, sizeof nv);
    memset(ep_l3_mem, 0, sizeof ep_l3_mem);
    ep_app_init();
    FUZZ_CHECK(port.frames == 1 && port.last[EP_FRAME_OFF_TYPE] == (EP_MSG_HELLO | EP_FRAME_RESPONSE_BIT) &&
               ep_rd16(port.last + EP_FRAME_OFF_REQ_ID) == 0);

    uint8_t *volatile payload = NULL;
    size_t i = 0;
    while (i + 6 <= size) {
        ep_frame_t f = {0};
        const uint8_t type = data[i], status = data[i + 1];
        f.req_id = ep_rd16(data + i + 2);
        size_t len = ep_rd16(data + i + 4);
        i += 6;
        len = len < EP_FRAME_MAX_PAYLOAD ? len : EP_FRAME_MAX_PAYLOAD;
        len = len < size - i ? len : size - i;
        port.frames = 0;
        if (status & 0x80) {
            f.error = k_rx_errors[status % 3];
            ep_app_handle(&f);
            FUZZ_CHECK(port.frames == 1);
            FUZZ_CHECK(port.last[EP_FRAME_OFF_TYPE] == (EP_MSG_ERROR | EP_FRAME_RESPONSE_BIT) &&
                       port.last[EP_FRAME_OFF_STATUS] == f.error &&
                       ep_rd16(port.last + EP_FRAME_OFF_REQ_ID) == f.req_id);
            continue;
        }
        free(payload);
        payload = malloc(len ? len : 1);
        memcpy(payload, data + i, len);
        i += len;
        f.type = type;
        f.status = status;
        f.len = (uint16_t)len;
        f.payload = payload;
        const int repeat = model.have_prev && model.prev_type == type && model.prev_id == f.req_id;
        if (setjmp(port.exit_jump) == 0) {
            ep_app_handle(&f);
        }
        check_answer(type, f.req_id);
        if (repeat) {
            FUZZ_CHECK(port.last_len == model.prev_len && memcmp(port.last, model.prev, port.last_len) == 0);
        }
        model.have_prev = 1;
        model.prev_type = type;
        model.prev_id = f.req_id;
        model.prev_len = port.last_len;
        memcpy(model.prev, port.last, port.last_len);
        if (port.exited) {
            FUZZ_CHECK(type == EP_MSG_EXIT && port.last[EP_FRAME_OFF_STATUS] == EP_OK);
            break;
        }
        FUZZ_CHECK(!(type == EP_MSG_EXIT && port.last[EP_FRAME_OFF_STATUS] == EP_OK && !repeat));
    }
    free(payload);
    return 0;
}
