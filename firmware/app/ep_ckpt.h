/*
 * ep_ckpt.h — the installed model and its checkpoints in non-volatile storage
 * (ep_port.h's ep_port_nv_*), so a device that is reset comes back with what
 * it had learned.
 *
 * Layout (P = ep_port_nv_page_bytes(); every region starts on a page):
 *
 *   [0, M)          the model: a 32-byte header, then the blob as uploaded
 *                   (M = EP_STAGING_BYTES + 32 rounded up to pages)
 *   [M, M+S)        checkpoint slot A: a 32-byte header, then the payload
 *   [M+S, M+2S)     checkpoint slot B    (S = what is left, halved, in pages)
 *
 * Checkpoint header (little-endian): magic "EPCK", version u16, slot u8,
 * reserved u8, seq u32, model_crc u32 (the blob's crc32 field: which model the
 * weights belong to), payload_bytes u32, payload_crc u32, steps u32, header_crc
 * u32 (crc32 of the 28 bytes before it). Payload: every PARAM tensor of the
 * model (trained weights, optimizer state, step counters), in tensor order,
 * each its `bytes` long; those in L3 (EP_TF_L3) are copied between L3 and
 * storage in 256-byte chunks through the model's ep_l3_t.
 *
 * Invariants (docs/security.md):
 *   - A save writes the slot NOT holding the newest valid checkpoint: erase,
 *     program the payload, program the header last. Until the header's last
 *     byte is programmed the slot fails its header check, and the other slot
 *     still holds the previous complete checkpoint; so a reset at any instant
 *     leaves the newest completed checkpoint loadable.
 *   - A checkpoint is used only if its header CRC, magic, version, model_crc
 *     and payload size match the installed model AND the payload's CRC-32
 *     matches; the payload is checked in full before a byte of it is copied
 *     into the arena.
 *   - The stored model is written the same way (blob first, header last) and
 *     goes through the full blob validation (ep_model_parse) at boot like any
 *     upload. Storing a new model clears both slots' magic (programming only
 *     clears bits), so old weights are never restored onto a new model.
 */
#ifndef EP_CKPT_H
#define EP_CKPT_H

#include <stdbool.h>
#include <stdint.h>

#include "ep_runtime.h"

/** A checkpoint as its header describes it. */
typedef struct {
    uint32_t seq;           /**< 1, 2, …: higher is newer; 0 = none */
    uint32_t steps;         /**< the device's TRAIN step count when it was saved */
    uint32_t model_crc;
    uint32_t payload_bytes;
    uint8_t slot;           /**< 0 = A, 1 = B */
} ep_ckpt_info_t;

/** Bytes of storage and of one checkpoint slot (both 0 without storage). */
uint32_t ep_ckpt_nv_bytes(void);
uint32_t ep_ckpt_slot_bytes(void);

/** Bytes a checkpoint of `m` carries: the sum of its PARAM tensors' bytes. */
uint32_t ep_ckpt_payload_bytes(const ep_model_t *m);

/**
 * Keep a blob that passed validation (len bytes; model_crc = its crc32 field) as the model to reinstall at boot, and invalidate every stored checkpoint.
 */
EP_NODISCARD ep_status_t ep_ckpt_store_model(const uint8_t *blob, uint32_t len, uint32_t model_crc,
                                             const char **why);

/**
 * The stored model, copied into blob[0, cap) with its length in *len, if its
 * header and crc32 check out (the caller still runs ep_model_parse on it).
 * EP_NO_STORAGE / EP_NO_MODEL when there is none.
 */
EP_NODISCARD ep_status_t ep_ckpt_load_model(uint8_t *blob, uint32_t cap, uint32_t *len, const char **why);

/** The stored model's identity (its blob's crc32 field, as HELLO reports it), 0 if none is stored. */
uint32_t ep_ckpt_stored_model_crc(void);

/**
 * Save every PARAM tensor of `m` (in `arena`, or in L3) with the step count `steps` into
 * the older slot (see the invariants above). *out describes what was written.
 */
EP_NODISCARD ep_status_t ep_ckpt_save(const ep_model_t *m, const uint8_t *arena, uint32_t steps,
                                      ep_ckpt_info_t *out, const char **why);

/**
 * The newest checkpoint of `m` that passes every check, payload CRC included.
 * EP_NO_CHECKPOINT if none (out->seq = 0).
 */
EP_NODISCARD ep_status_t ep_ckpt_newest(const ep_model_t *m, ep_ckpt_info_t *out, const char **why);

/**
 * Copy the newest valid checkpoint of `m` into its PARAM tensors in `arena` (and L3).
 * The payload CRC is checked before the copy, so a bad checkpoint leaves the
 * arena untouched (only a storage read failing mid-copy could not).
 */
EP_NODISCARD ep_status_t ep_ckpt_restore(const ep_model_t *m, uint8_t *arena, ep_ckpt_info_t *out,
                                         const char **why);

#endif /* EP_CKPT_H */
