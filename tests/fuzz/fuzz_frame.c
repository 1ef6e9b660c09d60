/*
 * fuzz_frame.c — libFuzzer harness for the serial frame receiver
 * (firmware/app/ep_frame.c, docs/protocol.md "Framing").
 *
 * Build and run: `make -C firmware fuzz-build fuzz-short` (clang, ASan + UBSan).
 *
 * Input format (tests/fuzz/make_corpus.py writes seeds in it):
 *   byte 0            idle timeout = 1 + byte (time units)
 *   then records      [ctl][n-1][n bytes]: a time gap chosen by ctl, then n bytes
 *                     pushed one by one (1 time unit apart), the receiver drained
 *                     after each byte as firmware/app/main.c does.
 *   ctl & 3: 0 no gap · 1 gap of ctl>>2 · 2 gap of timeout-1, timeout, timeout+1
 *            (by (ctl>>2) % 3) · 3 a huge gap ((ctl>>2) << 32)
 *   After a gap the receiver is polled (drained) at the new time, so the idle
 *   timeout path runs.
 *
 * Checks, after every event:
 *   - a frame's payload length ≤ EP_FRAME_MAX_PAYLOAD, its payload lies inside
 *     rx.buf, its crc32 is right; an error event has the documented fields;
 *   - the receiver's state is sane (len ≤ buffer, buf[0] is sync0, after a drain
 *     the buffer has room and holds no complete or oversize header);
 *   - the events are exactly those of a reference receiver written from
 *     docs/protocol.md (unbounded, obvious code), payloads included;
 *   - after the input, once the idle timeout passed, the receiver is empty and a
 *     good frame pushed next is received intact (it always resynchronises).
 * Out-of-bounds accesses are ASan's job (the receiver lives in an exact-size
 * heap block).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ep_frame.h"

#define FUZZ_CHECK(cond)                                                                  \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "fuzz_frame: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

enum { MAX_EVENTS_PER_DRAIN = 2 * EP_FRAME_MAX_BYTES + 4 };

/* ---- the reference receiver: the rules of docs/protocol.md, plainly -------- */
typedef struct {
    uint8_t buf[EP_FRAME_MAX_BYTES + 1];
    uint32_t len;
    uint64_t last_rx, timeout;
} ref_rx_t;

typedef struct {
    ep_status_t error;
    uint8_t type, status;
    uint16_t req_id, len;
    const uint8_t *payload;
    uint32_t drop; /* bytes to drop from the front once the event was compared */
} ref_event_t;

static void ref_drop(ref_rx_t *r, uint32_t n) {
    memmove(r->buf, r->buf + n, r->len - n);
    r->len -= n;
}

/* The next event in the held bytes, if any (r->buf is left for the caller to drop). */
static int ref_next(ref_rx_t *r, ref_event_t *e) {
    memset(e, 0, sizeof *e);
    uint32_t s = 0;
    while (s + 1 < r->len && !(r->buf[s] == EP_FRAME_SYNC0 && r->buf[s + 1] == EP_FRAME_SYNC1)) {
        s++;
    }
    if (s + 1 >= r->len) { /* no sync pair: keep a trailing sync0 only */
        int keep = r->len > 0 && r->buf[r->len - 1] == EP_FRAME_SYNC0;
        ref_drop(r, r->len - (uint32_t)keep);
        return 0;
    }
    ref_drop(r, s);
    if (r->len < EP_FRAME_HEADER_BYTES) {
        return 0;
    }
    uint16_t req_id = ep_rd16(r->buf + EP_FRAME_OFF_REQ_ID);
    uint16_t plen = ep_rd16(r->buf + EP_FRAME_OFF_LENGTH);
    if (plen > EP_FRAME_MAX_PAYLOAD) {
        e->error = EP_OVERSIZE;
        e->req_id = req_id;
        e->drop = 1;
        return 1;
    }
    uint32_t end = EP_FRAME_HEADER_BYTES + plen;
    if (r->len < end + EP_FRAME_CRC_BYTES) {
        return 0;
    }
    e->req_id = req_id;
    if (ep_crc32(0, r->buf + 2, end - 2) != ep_rd32(r->buf + end)) {
        e->error = EP_BAD_CRC;
        e->drop = 1;
        return 1;
    }
    e->type = r->buf[EP_FRAME_OFF_TYPE];
    e->status = r->buf[EP_FRAME_OFF_STATUS];
    e->len = plen;
    e->payload = r->buf + EP_FRAME_HEADER_BYTES;
    e->drop = end + EP_FRAME_CRC_BYTES;
    return 1;
}

static void ref_push(ref_rx_t *r, uint8_t byte, uint64_t now) {
    FUZZ_CHECK(r->len < sizeof r->buf); /* the rules never hold more than one frame */
    r->buf[r->len++] = byte;
    r->last_rx = now;
}

/* ---- the receiver under test ------------------------------------------------ */
static ep_frame_rx_t *rx;
static ref_rx_t ref;

static void check_state(void) {
    FUZZ_CHECK(rx->len <= sizeof rx->buf);
    FUZZ_CHECK(rx->consumed <= rx->len);
    FUZZ_CHECK(rx->len == 0 || rx->buf[0] == EP_FRAME_SYNC0);
}

static void check_event(const ep_frame_t *f, uint64_t now) {
    if (f->error == EP_OK) {
        FUZZ_CHECK(f->len <= EP_FRAME_MAX_PAYLOAD);
        FUZZ_CHECK(f->payload == rx->buf + EP_FRAME_HEADER_BYTES);
        FUZZ_CHECK(EP_FRAME_HEADER_BYTES + (uint32_t)f->len + EP_FRAME_CRC_BYTES <= rx->len);
        uint32_t end = EP_FRAME_HEADER_BYTES + f->len;
        FUZZ_CHECK(ep_crc32(0, rx->buf + 2, end - 2) == ep_rd32(rx->buf + end));
        FUZZ_CHECK(f->type == rx->buf[EP_FRAME_OFF_TYPE] && f->status == rx->buf[EP_FRAME_OFF_STATUS]);
    } else {
        FUZZ_CHECK(f->error == EP_BAD_CRC || f->error == EP_OVERSIZE || f->error == EP_TRUNCATED);
        FUZZ_CHECK(f->type == 0 && f->status == 0 && f->len == 0 && f->payload == NULL);
        if (f->error == EP_TRUNCATED) {
            FUZZ_CHECK(now - rx->last_rx >= rx->idle_timeout);
        }
    }
    /* the reference must report the very same event */
    ref_event_t e;
    if (f->error == EP_TRUNCATED) {
        FUZZ_CHECK(ref.len > 0 && now - ref.last_rx >= ref.timeout);
        uint16_t id = ref.len >= EP_FRAME_HEADER_BYTES ? ep_rd16(ref.buf + EP_FRAME_OFF_REQ_ID) : 0;
        FUZZ_CHECK(f->req_id == id);
        ref.len = 0;
        return;
    }
    FUZZ_CHECK(ref_next(&ref, &e));
    FUZZ_CHECK(e.error == f->error && e.req_id == f->req_id && e.type == f->type && e.status == f->status &&
               e.len == f->len);
    FUZZ_CHECK(f->len == 0 || memcmp(e.payload, f->payload, f->len) == 0);
    ref_drop(&ref, e.drop);
}

/* Poll until nothing is left, checking every event; returns the number of events. */
static uint32_t drain(uint64_t now) {
    uint32_t events = 0;
    ep_frame_t f;
    while (ep_frame_poll(rx, now, &f)) {
        check_state();
        check_event(&f, now);
        FUZZ_CHECK(++events <= MAX_EVENTS_PER_DRAIN); /* poll must come to an end */
    }
    check_state();
    /* nothing more for the reference either (a timeout it would see, the receiver saw too) */
    ref_event_t e;
    FUZZ_CHECK(!ref_next(&ref, &e));
    FUZZ_CHECK(!(ref.len > 0 && now - ref.last_rx >= ref.timeout));
    /* the poll that returned false dropped the last frame: both hold the same bytes */
    FUZZ_CHECK(rx->consumed == 0 && ref.len == rx->len && memcmp(ref.buf, rx->buf, rx->len) == 0);
    /* after a drain the next push always has room, and no complete or oversize frame waits */
    uint32_t held = rx->len;
    FUZZ_CHECK(held < sizeof rx->buf);
    if (held >= EP_FRAME_HEADER_BYTES) {
        uint16_t plen = ep_rd16(rx->buf + EP_FRAME_OFF_LENGTH);
        FUZZ_CHECK(plen <= EP_FRAME_MAX_PAYLOAD);
        FUZZ_CHECK(held < EP_FRAME_HEADER_BYTES + (uint32_t)plen + EP_FRAME_CRC_BYTES);
    }
    return events;
}

static void push(uint8_t byte, uint64_t now) {
    ep_frame_push(rx, byte, now);
    ref_push(&ref, byte, now);
    check_state();
    drain(now);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) {
        return 0;
    }
    rx = malloc(sizeof *rx);
    const uint64_t timeout = 1u + data[0];
    ep_frame_rx_init(rx, timeout);
    memset(&ref, 0, sizeof ref);
    ref.timeout = timeout;
    uint64_t now = 0;
    size_t i = 1;
    while (i + 2 <= size) {
        uint8_t ctl = data[i];
        size_t n = (size_t)data[i + 1] + 1;
        i += 2;
        uint64_t arg = ctl >> 2, gap;
        switch (ctl & 3) {
        case 0: gap = 0; break;
        case 1: gap = arg; break;
        case 2: gap = timeout - 1 + arg % 3; break;
        default: gap = arg << 32; break;
        }
        if (gap) {
            now += gap;
            drain(now);
        }
        for (size_t k = 0; k < n && i < size; k++, i++) {
            push(data[i], ++now);
        }
    }
    /* Silence for the idle timeout: every partial frame is dropped... */
    now += timeout;
    drain(now);
    FUZZ_CHECK(rx->len - rx->consumed == 0 && ref.len == 0);
    /* ...and a good frame that follows is received intact. */
    static uint8_t frame[EP_FRAME_MAX_BYTES];
    uint16_t plen = (uint16_t)(size < 64 ? size : 64);
    memcpy(frame + EP_FRAME_HEADER_BYTES, data, plen);
    uint32_t wire = ep_frame_encode(frame, sizeof frame, data[0], 0, (uint16_t)size, plen);
    for (uint32_t k = 0; k + 1 < wire; k++) {
        ep_frame_push(rx, frame[k], now);
        ep_frame_t f;
        FUZZ_CHECK(!ep_frame_poll(rx, now, &f));
    }
    ep_frame_push(rx, frame[wire - 1], now);
    ep_frame_t f;
    FUZZ_CHECK(ep_frame_poll(rx, now, &f));
    FUZZ_CHECK(f.error == EP_OK && f.type == data[0] && f.status == 0 && f.req_id == (uint16_t)size &&
               f.len == plen && memcmp(f.payload, data, plen) == 0);
    FUZZ_CHECK(!ep_frame_poll(rx, now, &f));
    FUZZ_CHECK(rx->len == 0);
    free(rx);
    return 0;
}
