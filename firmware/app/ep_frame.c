/* ep_frame.c — protocol v1 framing; see ep_frame.h for the receiving rules. */
#include "ep_frame.h"

#include <string.h>

void ep_frame_rx_init(ep_frame_rx_t *rx, uint64_t idle_timeout) {
    rx->len = 0;
    rx->consumed = 0;
    rx->last_rx = 0;
    rx->idle_timeout = idle_timeout;
}

/* Keep the held bytes from the first sync pair at or after `from` on (or a
 * trailing sync0 whose sync1 is still to come), drop everything before it. */
static void skip_to_sync(ep_frame_rx_t *rx, uint32_t from) {
    uint32_t i = from;
    while (i < rx->len && !(rx->buf[i] == EP_FRAME_SYNC0 &&
                            (i + 1 == rx->len || rx->buf[i + 1] == EP_FRAME_SYNC1))) {
        i++;
    }
    rx->len -= i;
    memmove(rx->buf, rx->buf + i, rx->len);
}

/* Forget the frame reported last; bytes held after it (found by a resync) stay
 * from their first sync pair on: they need not start with one. */
static void drop_consumed(ep_frame_rx_t *rx) {
    if (rx->consumed == 0) {
        return;
    }
    rx->len -= rx->consumed;
    memmove(rx->buf, rx->buf + rx->consumed, rx->len);
    rx->consumed = 0;
    skip_to_sync(rx, 0);
}

/* buf[0] opened a damaged frame: resynchronise on the held bytes after it. */
static void resync(ep_frame_rx_t *rx) { skip_to_sync(rx, 1); }

void ep_frame_push(ep_frame_rx_t *rx, uint8_t byte, uint64_t now) {
    drop_consumed(rx);
    EP_DCHECK(rx->len < sizeof rx->buf);
    if (rx->len == sizeof rx->buf) {
        return;
    }
    rx->last_rx = now;
    if (rx->len == 0 || (rx->len == 1 && byte != EP_FRAME_SYNC1)) {
        rx->buf[0] = EP_FRAME_SYNC0; /* hunting for a sync pair: hold at most a sync0 */
        rx->len = byte == EP_FRAME_SYNC0;
    } else {
        rx->buf[rx->len++] = byte;
    }
}

bool ep_frame_poll(ep_frame_rx_t *rx, uint64_t now, ep_frame_t *f) {
    drop_consumed(rx);
    memset(f, 0, sizeof *f);
    if (rx->len >= EP_FRAME_HEADER_BYTES) {
        uint16_t req_id = ep_rd16(rx->buf + EP_FRAME_OFF_REQ_ID);
        uint16_t plen = ep_rd16(rx->buf + EP_FRAME_OFF_LENGTH);
        if (plen > EP_FRAME_MAX_PAYLOAD) {
            f->error = EP_OVERSIZE;
            f->req_id = req_id;
            resync(rx);
            return true;
        }
        uint32_t body_end = EP_FRAME_HEADER_BYTES + plen;
        if (rx->len >= body_end + EP_FRAME_CRC_BYTES) {
            uint32_t crc = ep_crc32(0, rx->buf + EP_FRAME_OFF_TYPE, body_end - EP_FRAME_OFF_TYPE);
            f->req_id = req_id;
            if (crc != ep_rd32(rx->buf + body_end)) {
                f->error = EP_BAD_CRC;
                resync(rx);
                return true;
            }
            f->type = rx->buf[EP_FRAME_OFF_TYPE];
            f->status = rx->buf[EP_FRAME_OFF_STATUS];
            f->len = plen;
            f->payload = rx->buf + EP_FRAME_HEADER_BYTES;
            rx->consumed = body_end + EP_FRAME_CRC_BYTES;
            return true;
        }
    }
    if (rx->len > 0 && now - rx->last_rx >= rx->idle_timeout) {
        f->error = EP_TRUNCATED;
        f->req_id = rx->len >= EP_FRAME_HEADER_BYTES ? ep_rd16(rx->buf + EP_FRAME_OFF_REQ_ID) : 0;
        rx->len = 0;
        return true;
    }
    return false;
}

uint32_t ep_frame_encode(uint8_t *buf, uint32_t cap, uint8_t type, uint8_t status, uint16_t req_id,
                         uint16_t len) {
    uint32_t body_end = EP_FRAME_HEADER_BYTES + (uint32_t)len;
    EP_DCHECK(len <= EP_FRAME_MAX_PAYLOAD && body_end + EP_FRAME_CRC_BYTES <= cap);
    (void)cap;
    buf[0] = EP_FRAME_SYNC0;
    buf[1] = EP_FRAME_SYNC1;
    buf[EP_FRAME_OFF_TYPE] = type;
    buf[EP_FRAME_OFF_STATUS] = status;
    ep_wr16(buf + EP_FRAME_OFF_REQ_ID, req_id);
    ep_wr16(buf + EP_FRAME_OFF_LENGTH, len);
    ep_wr32(buf + body_end, ep_crc32(0, buf + EP_FRAME_OFF_TYPE, body_end - EP_FRAME_OFF_TYPE));
    return body_end + EP_FRAME_CRC_BYTES;
}
