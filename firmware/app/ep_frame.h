/*
 * ep_frame.h — serial protocol v1 framing (docs/protocol.md, "Framing"): a
 * receiver that turns an untrusted byte stream into CRC-checked frames, and the
 * encoder for outgoing frames.
 *
 * Wire format: sync0 sync1 | type status req_id(u16) length(u16) | payload | crc32
 * (crc32 over type..payload, little-endian). At most EP_FRAME_MAX_BYTES on the wire.
 *
 * The receiver is port-independent: the caller passes the current time (any
 * monotonic unit, e.g. CPU cycles) and the idle timeout in the same unit, so it
 * runs unchanged in the native unit test (tests/c/test_frame.c).
 *
 * Use: for every received byte call ep_frame_push(), then call ep_frame_poll()
 * until it returns false; also call ep_frame_poll() while no byte arrives, so
 * the idle timeout can fire. One pushed byte may produce several events (a
 * damaged frame followed by good frames found inside its bytes).
 *
 * Receiving rules:
 *   - bytes before a sync pair are skipped;
 *   - a header whose length exceeds EP_FRAME_MAX_PAYLOAD gives EP_OVERSIZE;
 *   - a frame whose crc32 does not match gives EP_BAD_CRC;
 *   - a partial frame with no byte for idle_timeout gives EP_TRUNCATED and is dropped.
 *   After OVERSIZE and BAD_CRC the receiver resynchronises on the next sync pair
 *   *inside* the bytes it already holds (from the byte after the failed sync0),
 *   so a good frame that followed a truncated one is not lost.
 *
 * Safety: whatever bytes arrive, the receiver never reads or writes outside
 * rx->buf; it holds at most one frame (EP_FRAME_MAX_BYTES).
 */
#ifndef EP_FRAME_H
#define EP_FRAME_H

#include <stdbool.h>
#include <stdint.h>

#include "ep_runtime.h"

/** Largest frame on the wire: header + EP_FRAME_MAX_PAYLOAD + crc. */
#define EP_FRAME_MAX_BYTES (EP_FRAME_HEADER_BYTES + EP_FRAME_MAX_PAYLOAD + EP_FRAME_CRC_BYTES)

/** Byte offsets in the frame header. */
enum {
    EP_FRAME_OFF_TYPE = 2,
    EP_FRAME_OFF_STATUS = 3,
    EP_FRAME_OFF_REQ_ID = 4,
    EP_FRAME_OFF_LENGTH = 6,
};

/**
 * What ep_frame_poll() reports. error == EP_OK: a complete frame whose payload
 * points into the receiver's buffer (valid until the next push or poll).
 * Otherwise error is EP_BAD_CRC, EP_OVERSIZE or EP_TRUNCATED, req_id is that of
 * the damaged header if a whole header was read (0 otherwise), and the other
 * fields are 0/NULL.
 */
typedef struct {
    ep_status_t error;
    uint8_t type;
    uint8_t status;
    uint16_t req_id;
    uint16_t len;
    const uint8_t *payload;
} ep_frame_t;

/** Receiver state. Plain data; initialise with ep_frame_rx_init(). */
typedef struct {
    uint8_t buf[EP_FRAME_MAX_BYTES];
    uint32_t len;           /**< bytes held; buf[0] is sync0 whenever len > 0 */
    uint32_t consumed;      /**< bytes of the frame last reported, dropped on the next call */
    uint64_t last_rx;       /**< time of the last pushed byte */
    uint64_t idle_timeout;  /**< partial-frame timeout, in the unit of the times passed in */
} ep_frame_rx_t;

/** Reset the receiver; idle_timeout is in the unit of the `now` arguments. */
void ep_frame_rx_init(ep_frame_rx_t *rx, uint64_t idle_timeout);

/**
 * Take one received byte at time `now`. Call ep_frame_poll() until it returns
 * false before pushing the next byte: the buffer then always has room (a byte
 * pushed into a full buffer, a programming error, is dropped, never written
 * outside it).
 */
void ep_frame_push(ep_frame_rx_t *rx, uint8_t byte, uint64_t now);

/**
 * Report the next event, if any: a complete frame or a receive error (see
 * ep_frame_t). `now` is the current time, for the idle timeout.
 * @return true if *f was filled
 */
EP_NODISCARD bool ep_frame_poll(ep_frame_rx_t *rx, uint64_t now, ep_frame_t *f);

/**
 * Finish a frame in place: the caller has written `len` payload bytes at
 * buf + EP_FRAME_HEADER_BYTES; this writes the header before and the crc32
 * after them. Requires EP_FRAME_HEADER_BYTES + len + EP_FRAME_CRC_BYTES ≤ cap
 * and len ≤ EP_FRAME_MAX_PAYLOAD.
 * @return bytes to send (header + len + crc)
 */
uint32_t ep_frame_encode(uint8_t *buf, uint32_t cap, uint8_t type, uint8_t status, uint16_t req_id,
                         uint16_t len);

#endif /* EP_FRAME_H */
