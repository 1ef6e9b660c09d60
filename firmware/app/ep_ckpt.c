/* ep_ckpt.c — the stored model and A/B checkpoints; layout and invariants in ep_ckpt.h. */
#include "ep_ckpt.h"

#include <string.h>

#include "ep_port.h"

enum {
    HDR_BYTES = 32,
    HDR_CRC_AT = 28,
    CKPT_MAGIC = 0x4B435045u,  /* "EPCK" */
    MODEL_MAGIC = 0x4D4E5045u, /* "EPNM" */
    FORMAT_VERSION = 1,
    IO_CHUNK = 256,
};

/* storage reads for CRCs, and the bounce buffer of L3 tensors (static: on GAP9 the uDMA
 * copies between HyperRAM and L2, which a stack need not be) */
static uint8_t io[IO_CHUNK];

typedef struct {
    uint32_t page, model_bytes, slot_bytes;
} layout_t;

/* The regions of ep_ckpt.h for this port's storage; all 0 if it has none or too little. */
static layout_t layout(void) {
    layout_t l = {0};
    const uint32_t size = ep_port_nv_size(), page = ep_port_nv_page_bytes();
    if (size == 0 || page == 0) {
        return l;
    }
    const uint64_t model = ((uint64_t)EP_STAGING_BYTES + HDR_BYTES + page - 1) / page * page;
    if (model + 2u * page > size) {
        return l;
    }
    l.page = page;
    l.model_bytes = (uint32_t)model;
    l.slot_bytes = (uint32_t)((size - model) / 2u / page * page);
    return l;
}

static uint32_t slot_base(const layout_t *l, uint8_t slot) { return l->model_bytes + slot * l->slot_bytes; }

uint32_t ep_ckpt_nv_bytes(void) { return layout().page ? ep_port_nv_size() : 0; }

uint32_t ep_ckpt_slot_bytes(void) { return layout().slot_bytes; }

uint32_t ep_ckpt_payload_bytes(const ep_model_t *m) {
    uint32_t n = 0;
    for (uint16_t i = 0; i < m->n_tensors; i++) {
        if (m->tensors[i].flags & EP_TF_PARAM) {
            n += m->tensors[i].bytes;
        }
    }
    return n;
}

static ep_status_t fail(const char **why, ep_status_t st, const char *msg) {
    *why = msg;
    return st;
}

static ep_status_t no_storage(const char **why) {
    return fail(why, EP_NO_STORAGE, EP_WHY("no non-volatile storage on this device (or too small for the staging size)"));
}

static ep_status_t io_error(const char **why) {
    return fail(why, EP_NO_STORAGE, EP_WHY("non-volatile storage: read, erase or program failed"));
}

/* Erase the pages covering [off, off + len). */
static int erase_range(const layout_t *l, uint32_t off, uint32_t len) {
    for (uint32_t p = off / l->page; p < (off + len + l->page - 1) / l->page; p++) {
        if (ep_port_nv_erase(p) != 0) {
            return -1;
        }
    }
    return 0;
}

/* crc32 of storage bytes [off, off + len). */
static int crc_range(uint32_t off, uint32_t len, uint32_t *crc) {
    uint32_t c = 0;
    while (len) {
        uint32_t n = len < IO_CHUNK ? len : IO_CHUNK;
        if (ep_port_nv_read(off, io, n) != 0) {
            return -1;
        }
        c = ep_crc32(c, io, n);
        off += n;
        len -= n;
    }
    *crc = c;
    return 0;
}

/* A 32-byte header at off: 0 and its words in w[8] if magic, version and header CRC check out. */
static int read_header(uint32_t off, uint32_t magic, uint32_t w[8]) {
    uint8_t h[HDR_BYTES];
    if (ep_port_nv_read(off, h, HDR_BYTES) != 0) {
        return -1;
    }
    for (int i = 0; i < 8; i++) {
        w[i] = ep_rd32(h + 4 * i);
    }
    if (w[0] != magic || (w[1] & 0xFFFFu) != FORMAT_VERSION || w[7] != ep_crc32(0, h, HDR_CRC_AT)) {
        return -1;
    }
    return 0;
}

static int write_header(uint32_t off, uint32_t w[8]) {
    uint8_t h[HDR_BYTES];
    for (int i = 0; i < 7; i++) {
        ep_wr32(h + 4 * i, w[i]);
    }
    ep_wr32(h + HDR_CRC_AT, ep_crc32(0, h, HDR_CRC_AT));
    return ep_port_nv_write(off, h, HDR_BYTES);
}

/* ---- the stored model: header words: magic, version, blob_len, blob_crc, model_crc, 0, 0, crc ---- */

ep_status_t ep_ckpt_store_model(const uint8_t *blob, uint32_t len, uint32_t model_crc, const char **why) {
    const layout_t l = layout();
    if (!l.page) {
        return no_storage(why);
    }
    if (len > l.model_bytes - HDR_BYTES) {
        return fail(why, EP_TOO_LARGE, EP_WHY("model blob larger than its storage region"));
    }
    /* the old checkpoints belong to another upload: clear their magic first (programming 0 is always allowed) */
    static const uint8_t zero[4] = {0};
    for (uint8_t s = 0; s < 2; s++) {
        if (ep_port_nv_write(slot_base(&l, s), zero, sizeof zero) != 0) {
            return io_error(why);
        }
    }
    uint32_t w[8] = {MODEL_MAGIC, FORMAT_VERSION, len, ep_crc32(0, blob, len), model_crc, 0, 0, 0};
    if (erase_range(&l, 0, HDR_BYTES + len) != 0 || ep_port_nv_write(HDR_BYTES, blob, len) != 0 ||
        write_header(0, w) != 0) {
        return io_error(why);
    }
    return EP_OK;
}

ep_status_t ep_ckpt_load_model(uint8_t *blob, uint32_t cap, uint32_t *len, const char **why) {
    const layout_t l = layout();
    if (!l.page) {
        return no_storage(why);
    }
    uint32_t w[8];
    if (read_header(0, MODEL_MAGIC, w) != 0) {
        return fail(why, EP_NO_MODEL, EP_WHY("no model stored"));
    }
    if (w[2] > cap || w[2] > l.model_bytes - HDR_BYTES) {
        return fail(why, EP_TOO_LARGE, EP_WHY("stored model: length above the staging buffer"));
    }
    if (ep_port_nv_read(HDR_BYTES, blob, w[2]) != 0) {
        return io_error(why);
    }
    if (ep_crc32(0, blob, w[2]) != w[3]) {
        return fail(why, EP_BAD_HASH, EP_WHY("stored model: crc32 does not match its header"));
    }
    *len = w[2];
    return EP_OK;
}

uint32_t ep_ckpt_stored_model_crc(void) {
    const layout_t l = layout();
    uint32_t w[8];
    return l.page && read_header(0, MODEL_MAGIC, w) == 0 ? w[4] : 0;
}

/* ---- checkpoints: header words: magic, version | slot << 16, seq, model_crc, payload_bytes,
 *      payload_crc, steps, crc ---- */

/* The header of slot s if it checks out (payload not read). */
static int slot_header(const layout_t *l, uint8_t s, uint32_t w[8]) {
    return read_header(slot_base(l, s), CKPT_MAGIC, w) == 0 && w[4] <= l->slot_bytes - HDR_BYTES ? 0 : -1;
}

static void to_info(const uint32_t w[8], uint8_t slot, ep_ckpt_info_t *out) {
    out->seq = w[2];
    out->model_crc = w[3];
    out->payload_bytes = w[4];
    out->steps = w[6];
    out->slot = slot;
}

ep_status_t ep_ckpt_save(const ep_model_t *m, const uint8_t *arena, uint32_t steps, ep_ckpt_info_t *out,
                         const char **why) {
    const layout_t l = layout();
    if (!l.page) {
        return no_storage(why);
    }
    const uint32_t payload = ep_ckpt_payload_bytes(m);
    if (payload > l.slot_bytes - HDR_BYTES) {
        return fail(why, EP_TOO_LARGE, EP_WHY("checkpoint: the parameters do not fit a storage slot"));
    }
    /* the newest header that checks out, whatever its model: write the other slot, one seq higher */
    uint32_t seq = 0;
    uint8_t target = 0;
    for (uint8_t s = 0; s < 2; s++) {
        uint32_t w[8];
        if (slot_header(&l, s, w) == 0 && w[2] >= seq) {
            seq = w[2];
            target = (uint8_t)(1u - s);
        }
    }
    const uint32_t base = slot_base(&l, target);
    if (erase_range(&l, base, HDR_BYTES + payload) != 0) {
        return io_error(why);
    }
    uint32_t crc = 0, at = base + HDR_BYTES;
    for (uint16_t i = 0; i < m->n_tensors; i++) {
        const ep_tensor_t *t = &m->tensors[i];
        if (!(t->flags & EP_TF_PARAM)) {
            continue;
        }
        if (!(t->flags & EP_TF_L3)) {
            if (ep_port_nv_write(at, arena + t->offset, t->bytes) != 0) {
                return io_error(why);
            }
            crc = ep_crc32(crc, arena + t->offset, t->bytes);
            at += t->bytes;
            continue;
        }
        for (uint32_t k = 0; k < t->bytes; k += IO_CHUNK) { /* L3 → io → storage */
            const uint32_t n = t->bytes - k < IO_CHUNK ? t->bytes - k : IO_CHUNK;
            m->l3->read(t->offset + k, io, n);
            if (ep_port_nv_write(at, io, n) != 0) {
                return io_error(why);
            }
            crc = ep_crc32(crc, io, n);
            at += n;
        }
    }
    uint32_t w[8] = {CKPT_MAGIC, FORMAT_VERSION | (uint32_t)target << 16, seq + 1u, m->crc, payload, crc, steps, 0};
    if (write_header(base, w) != 0) {
        return io_error(why);
    }
    to_info(w, target, out);
    return EP_OK;
}

ep_status_t ep_ckpt_newest(const ep_model_t *m, ep_ckpt_info_t *out, const char **why) {
    memset(out, 0, sizeof *out);
    const layout_t l = layout();
    if (!l.page) {
        return no_storage(why);
    }
    const uint32_t payload = ep_ckpt_payload_bytes(m);
    for (uint8_t s = 0; s < 2; s++) {
        uint32_t w[8], crc;
        if (slot_header(&l, s, w) == 0 && w[3] == m->crc && w[4] == payload && w[2] > out->seq &&
            crc_range(slot_base(&l, s) + HDR_BYTES, payload, &crc) == 0 && crc == w[5]) {
            to_info(w, s, out);
        }
    }
    return out->seq ? EP_OK : fail(why, EP_NO_CHECKPOINT, EP_WHY("no valid checkpoint of the installed model"));
}

ep_status_t ep_ckpt_restore(const ep_model_t *m, uint8_t *arena, ep_ckpt_info_t *out, const char **why) {
    ep_status_t st = ep_ckpt_newest(m, out, why);
    if (st != EP_OK) {
        return st;
    }
    const layout_t l = layout();
    uint32_t at = slot_base(&l, out->slot) + HDR_BYTES;
    for (uint16_t i = 0; i < m->n_tensors; i++) {
        const ep_tensor_t *t = &m->tensors[i];
        if (!(t->flags & EP_TF_PARAM)) {
            continue;
        }
        /* a failed read: the payload read fine a moment ago, so the storage failed */
        if (!(t->flags & EP_TF_L3)) {
            if (ep_port_nv_read(at, arena + t->offset, t->bytes) != 0) {
                return io_error(why);
            }
            at += t->bytes;
            continue;
        }
        for (uint32_t k = 0; k < t->bytes; k += IO_CHUNK) { /* storage → io → L3 */
            const uint32_t n = t->bytes - k < IO_CHUNK ? t->bytes - k : IO_CHUNK;
            if (ep_port_nv_read(at, io, n) != 0) {
                return io_error(why);
            }
            m->l3->write(t->offset + k, io, n);
            at += n;
        }
    }
    return EP_OK;
}
