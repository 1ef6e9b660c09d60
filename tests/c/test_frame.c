/*
 * test_frame.c — unit tests of the frame receiver and encoder (firmware/app/ep_frame.h),
 * natively: `make -C firmware test-frame` (built with ASan and UBSan, so any access
 * outside the receiver's buffer fails the run). Exits non-zero on any failure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ep_frame.h"

enum { TIMEOUT = 1000, MAX_EVENTS = 64 };

static int failed_checks;

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failed_checks++;                                                 \
        }                                                                    \
    } while (0)

/* Everything the receiver reported, with payloads copied out of its buffer. */
typedef struct {
    int n;
    ep_frame_t ev[MAX_EVENTS];
    uint8_t payload[MAX_EVENTS][EP_FRAME_MAX_PAYLOAD];
} events_t;

static void drain(ep_frame_rx_t *rx, uint64_t now, events_t *out) {
    ep_frame_t f;
    while (ep_frame_poll(rx, now, &f)) {
        if (out->n < MAX_EVENTS) {
            memcpy(out->payload[out->n], f.payload ? f.payload : (const uint8_t *)"", f.len);
            out->ev[out->n] = f;
            out->ev[out->n].payload = out->payload[out->n];
        }
        out->n++;
    }
}

static void feed(ep_frame_rx_t *rx, const uint8_t *bytes, uint32_t n, uint64_t now, events_t *out) {
    for (uint32_t i = 0; i < n; i++) {
        ep_frame_push(rx, bytes[i], now);
        drain(rx, now, out);
    }
}

/* A frame with `len` payload bytes i*7+seed, encoded into buf; returns its size. */
static uint32_t make_frame(uint8_t *buf, uint8_t type, uint16_t req_id, uint16_t len, uint8_t seed) {
    for (uint32_t i = 0; i < len; i++) {
        buf[EP_FRAME_HEADER_BYTES + i] = (uint8_t)(i * 7 + seed);
    }
    return ep_frame_encode(buf, EP_FRAME_MAX_BYTES, type, 0, req_id, len);
}

static int is_frame(const events_t *e, int i, uint8_t type, uint16_t req_id, uint16_t len, uint8_t seed) {
    if (i >= e->n || e->ev[i].error != EP_OK || e->ev[i].type != type || e->ev[i].req_id != req_id ||
        e->ev[i].len != len) {
        return 0;
    }
    for (uint32_t k = 0; k < len; k++) {
        if (e->ev[i].payload[k] != (uint8_t)(k * 7 + seed)) {
            return 0;
        }
    }
    return 1;
}

static ep_frame_rx_t rx;
static events_t ev;
static uint8_t a[EP_FRAME_MAX_BYTES], b[EP_FRAME_MAX_BYTES], c[EP_FRAME_MAX_BYTES];

static void reset(void) {
    ep_frame_rx_init(&rx, TIMEOUT);
    memset(&ev, 0, sizeof ev);
}

static void test_encoder_matches_the_host(void) {
    /* host/protocol.py: Frame(type=0x87, req_id=0x0102, payload=b"abc", status=5).pack() */
    static const uint8_t expect[] = {0xe9, 0x50, 0x87, 0x05, 0x02, 0x01, 0x03, 0x00,
                                     0x61, 0x62, 0x63, 0xc0, 0x57, 0xdb, 0x7d};
    memcpy(a + EP_FRAME_HEADER_BYTES, "abc", 3);
    CHECK(ep_frame_encode(a, sizeof a, 0x87, EP_BAD_PAYLOAD, 0x0102, 3) == sizeof expect);
    CHECK(memcmp(a, expect, sizeof expect) == 0);
}

static void test_round_trip(void) {
    static const uint16_t lens[] = {0, 1, 100, EP_FRAME_MAX_PAYLOAD};
    for (unsigned i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        reset();
        uint32_t n = make_frame(a, EP_MSG_TRAIN, (uint16_t)(0x1234 + i), lens[i], 3);
        CHECK(n == (uint32_t)EP_FRAME_HEADER_BYTES + lens[i] + EP_FRAME_CRC_BYTES);
        feed(&rx, a, n, 0, &ev);
        CHECK(ev.n == 1);
        CHECK(is_frame(&ev, 0, EP_MSG_TRAIN, (uint16_t)(0x1234 + i), lens[i], 3));
    }
}

static void test_garbage_before_sync_is_skipped(void) {
    reset();
    /* no sync pair inside; lone sync0s, a sync1 without sync0, and sync0 twice just before the frame */
    static const uint8_t junk[] = {0x00, 0xff, EP_FRAME_SYNC1, EP_FRAME_SYNC0, 0x12, EP_FRAME_SYNC0,
                                   EP_FRAME_SYNC0, 0x51, EP_FRAME_SYNC0, EP_FRAME_SYNC0};
    feed(&rx, junk, sizeof junk, 0, &ev);
    uint32_t n = make_frame(a, EP_MSG_HELLO, 9, 5, 1);
    feed(&rx, a, n, 0, &ev);
    CHECK(ev.n == 1);
    CHECK(is_frame(&ev, 0, EP_MSG_HELLO, 9, 5, 1));
}

static void test_bad_crc_then_good_frame(void) {
    reset();
    uint32_t na = make_frame(a, EP_MSG_STATS, 77, 10, 2);
    a[na - 1] ^= 0x55;
    uint32_t nb = make_frame(b, EP_MSG_STATS, 78, 10, 4);
    feed(&rx, a, na, 0, &ev);
    feed(&rx, b, nb, 0, &ev);
    CHECK(ev.n == 2);
    CHECK(ev.ev[0].error == EP_BAD_CRC && ev.ev[0].req_id == 77);
    CHECK(is_frame(&ev, 1, EP_MSG_STATS, 78, 10, 4));
}

static void test_frames_after_a_truncated_one_are_found_inside_it(void) {
    reset();
    /* A announces 40 payload bytes but only 10 are sent; B and C follow at once.
     * A "completes" inside C, fails its crc, and the resync finds B and C in the held bytes. */
    uint32_t na = make_frame(a, EP_MSG_TRAIN, 5, 40, 0);
    uint32_t nb = make_frame(b, EP_MSG_HELLO, 6, 0, 0);
    uint32_t nc = make_frame(c, EP_MSG_EVAL, 7, 30, 9);
    (void)na;
    feed(&rx, a, EP_FRAME_HEADER_BYTES + 10, 0, &ev);
    feed(&rx, b, nb, 0, &ev);
    feed(&rx, c, nc, 0, &ev);
    CHECK(ev.n == 3);
    CHECK(ev.ev[0].error == EP_BAD_CRC && ev.ev[0].req_id == 5);
    CHECK(is_frame(&ev, 1, EP_MSG_HELLO, 6, 0, 0));
    CHECK(is_frame(&ev, 2, EP_MSG_EVAL, 7, 30, 9));
}

static void test_truncated_frame_then_idle_timeout(void) {
    reset();
    uint32_t n = make_frame(a, EP_MSG_HELLO, 55, 0, 0);
    feed(&rx, a, 9, 100, &ev);
    drain(&rx, 100 + TIMEOUT - 1, &ev);
    CHECK(ev.n == 0);
    drain(&rx, 100 + TIMEOUT, &ev);
    CHECK(ev.n == 1);
    CHECK(ev.ev[0].error == EP_TRUNCATED && ev.ev[0].req_id == 55);
    /* a partial header has no req_id yet */
    feed(&rx, a, 5, 5000, &ev);
    drain(&rx, 5000 + TIMEOUT, &ev);
    CHECK(ev.n == 2);
    CHECK(ev.ev[1].error == EP_TRUNCATED && ev.ev[1].req_id == 0);
    /* each byte restarts the timer; afterwards the receiver is clean */
    feed(&rx, a, n, 9000, &ev);
    drain(&rx, 9000 + 3 * TIMEOUT, &ev);
    CHECK(ev.n == 3);
    CHECK(is_frame(&ev, 2, EP_MSG_HELLO, 55, 0, 0));
}

static void test_oversize_length(void) {
    reset();
    static const uint8_t head[] = {EP_FRAME_SYNC0, EP_FRAME_SYNC1, EP_MSG_TRAIN, 0, 0x21, 0,
                                   (EP_FRAME_MAX_PAYLOAD + 1) & 0xff, (EP_FRAME_MAX_PAYLOAD + 1) >> 8};
    feed(&rx, head, sizeof head, 0, &ev);
    CHECK(ev.n == 1);
    CHECK(ev.ev[0].error == EP_OVERSIZE && ev.ev[0].req_id == 0x21);
    uint32_t n = make_frame(a, EP_MSG_HELLO, 3, 2, 8);
    feed(&rx, a, n, 0, &ev);
    CHECK(ev.n == 2);
    CHECK(is_frame(&ev, 1, EP_MSG_HELLO, 3, 2, 8));
    /* the largest length is accepted */
    reset();
    n = make_frame(a, EP_MSG_LOAD_CHUNK, 4, EP_FRAME_MAX_PAYLOAD, 1);
    feed(&rx, a, n, 0, &ev);
    CHECK(ev.n == 1 && is_frame(&ev, 0, EP_MSG_LOAD_CHUNK, 4, EP_FRAME_MAX_PAYLOAD, 1));
}

static void test_frame_split_byte_by_byte(void) {
    reset();
    uint32_t n = make_frame(a, EP_MSG_READ_WEIGHTS, 0xBEEF, 300, 5);
    for (uint32_t i = 0; i < n; i++) {
        ep_frame_push(&rx, a[i], i);
        drain(&rx, i, &ev);
        CHECK(ev.n == (i + 1 == n));
    }
    CHECK(is_frame(&ev, 0, EP_MSG_READ_WEIGHTS, 0xBEEF, 300, 5));
    /* two frames back to back, then the same again in one burst */
    uint32_t nb = make_frame(b, EP_MSG_EXIT, 1, 1, 0);
    feed(&rx, b, nb, 0, &ev);
    feed(&rx, a, n, 0, &ev);
    CHECK(ev.n == 3 && is_frame(&ev, 1, EP_MSG_EXIT, 1, 1, 0));
    CHECK(is_frame(&ev, 2, EP_MSG_READ_WEIGHTS, 0xBEEF, 300, 5));
}

static void test_random_bytes_never_break_the_receiver(void) {
    reset();
    srand(1);
    uint32_t t = 0;
    for (int i = 0; i < 2000000; i++) {
        int r = rand();
        /* plenty of sync bytes and short lengths, so headers and resyncs are frequent */
        uint8_t byte = (r & 3) == 0 ? EP_FRAME_SYNC0 : (r & 3) == 1 ? EP_FRAME_SYNC1 : (uint8_t)(r >> 8);
        t += (r >> 20) % 3 == 0 ? 0 : 1;
        ep_frame_push(&rx, byte, t);
        ev.n = 0;
        drain(&rx, t, &ev);
        CHECK(rx.len <= sizeof rx.buf);
    }
    ev.n = 0;
    drain(&rx, t + TIMEOUT, &ev);
    uint32_t n = make_frame(a, EP_MSG_HELLO, 11, 0, 0);
    ev.n = 0;
    feed(&rx, a, n, t + TIMEOUT, &ev);
    CHECK(ev.n == 1 && is_frame(&ev, 0, EP_MSG_HELLO, 11, 0, 0));
}

int main(void) {
    static void (*const tests[])(void) = {
        test_encoder_matches_the_host,
        test_round_trip,
        test_garbage_before_sync_is_skipped,
        test_bad_crc_then_good_frame,
        test_frames_after_a_truncated_one_are_found_inside_it,
        test_truncated_frame_then_idle_timeout,
        test_oversize_length,
        test_frame_split_byte_by_byte,
        test_random_bytes_never_break_the_receiver,
    };
    int passed = 0, failed = 0;
    for (unsigned i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        int before = failed_checks;
        tests[i]();
        if (failed_checks == before) {
            passed++;
        } else {
            failed++;
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
