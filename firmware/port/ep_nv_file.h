/*
 * ep_nv_file.h — ep_port.h's non-volatile storage with flash semantics, kept
 * in a host file (the posix port's `--nv FILE`, or a semihosting file on the
 * emulated boards). Included once by a port's nv.c after it defines:
 *
 *   static int nvf_open(uint32_t *length);   open or create the file; its length. 0 ok, -1 error
 *   static int nvf_pread(uint32_t off, uint8_t *buf, uint32_t len);         0 when all len read
 *   static int nvf_pwrite(uint32_t off, const uint8_t *buf, uint32_t len);  0 when all len written
 *
 * The file holds the storage's first `length` bytes; bytes past its end read
 * as erased (0xFF), so a fresh board starts with a short file, not hundreds of
 * MiB of 0xFF. The file only grows by appending 0xFF (never by seeking past
 * the end: a hole would read back as zeros). Each program is a read-AND-write
 * of the bytes concerned, so programming only clears bits, like NOR flash.
 * A kill of the emulator during a write leaves the bytes before the cut
 * written and those after it untouched: within what real flash allows.
 */
#ifndef EP_NV_FILE_H
#define EP_NV_FILE_H

#include <stdint.h>
#include <string.h>

#include "ep_port.h"

#define EP_NV_FILE_PAGE 4096u
#define EP_NV_ROUND(n) (((uint32_t)(n) + EP_NV_FILE_PAGE - 1u) / EP_NV_FILE_PAGE * EP_NV_FILE_PAGE)
/* Room for the model blob and two checkpoint slots of a full arena and L3 memory
 * (firmware/app/ep_ckpt.h: a checkpoint carries the L3 parameters too), each behind a
 * one-page header. */
#define EP_NV_FILE_BYTES                                        \
    (EP_NV_ROUND(EP_STAGING_BYTES) + EP_NV_FILE_PAGE +          \
     2u * (EP_NV_ROUND((uint32_t)EP_ARENA_BYTES + (uint32_t)EP_L3_BYTES) + EP_NV_FILE_PAGE))

static struct {
    int state;          /* 0 not tried, 1 open, -1 unavailable */
    uint32_t length;    /* bytes the file holds */
    uint8_t buf[256];
} nvf;

static int nvf_ready(void) {
    if (nvf.state == 0) {
        nvf.state = nvf_open(&nvf.length) == 0 ? 1 : -1;
    }
    return nvf.state == 1;
}

static int nvf_in_range(uint32_t off, uint32_t len) {
    return nvf_ready() && off <= EP_NV_FILE_BYTES && len <= EP_NV_FILE_BYTES - off;
}

/* One erased page, written a page per call: the file grows by megabytes on boards with L3
 * (checkpoint slots sized for arena + L3), and each semihosting call is slow. */
static const uint8_t k_nvf_erased[EP_NV_FILE_PAGE] = {[0 ... EP_NV_FILE_PAGE - 1] = 0xFF};

/* Append 0xFF until the file holds `end` bytes. */
static int nvf_extend(uint32_t end) {
    while (nvf.length < end) {
        uint32_t n = end - nvf.length < EP_NV_FILE_PAGE ? end - nvf.length : EP_NV_FILE_PAGE;
        if (nvf_pwrite(nvf.length, k_nvf_erased, n) != 0) {
            return -1;
        }
        nvf.length += n;
    }
    return 0;
}

uint32_t ep_port_nv_size(void) { return nvf_ready() ? EP_NV_FILE_BYTES : 0; }

uint32_t ep_port_nv_page_bytes(void) { return nvf_ready() ? EP_NV_FILE_PAGE : 0; }

int ep_port_nv_read(uint32_t off, uint8_t *buf, uint32_t len) {
    if (!nvf_in_range(off, len)) {
        return -1;
    }
    uint32_t have = off < nvf.length ? nvf.length - off : 0;
    uint32_t n = len < have ? len : have;
    if (n && nvf_pread(off, buf, n) != 0) {
        return -1;
    }
    memset(buf + n, 0xFF, len - n);
    return 0;
}

int ep_port_nv_erase(uint32_t page) {
    if (page >= EP_NV_FILE_BYTES / EP_NV_FILE_PAGE || !nvf_ready()) {
        return -1;
    }
    const uint32_t off = page * EP_NV_FILE_PAGE;
    if (off < nvf.length) { /* bytes past the file's end already read as erased */
        const uint32_t n = nvf.length - off < EP_NV_FILE_PAGE ? nvf.length - off : EP_NV_FILE_PAGE;
        return nvf_pwrite(off, k_nvf_erased, n);
    }
    return 0;
}

int ep_port_nv_write(uint32_t off, const uint8_t *buf, uint32_t len) {
    if (!nvf_in_range(off, len) || nvf_extend(off + len) != 0) {
        return -1;
    }
    while (len) {
        uint32_t n = len < sizeof nvf.buf ? len : (uint32_t)sizeof nvf.buf;
        if (nvf_pread(off, nvf.buf, n) != 0) {
            return -1;
        }
        for (uint32_t i = 0; i < n; i++) {
            nvf.buf[i] &= buf[i];
        }
        if (nvf_pwrite(off, nvf.buf, n) != 0) {
            return -1;
        }
        off += n;
        buf += n;
        len -= n;
    }
    return 0;
}

#endif /* EP_NV_FILE_H */
