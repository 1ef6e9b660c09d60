/*
 * ep_nv_semihost.h — the storage file of ep_nv_file.h through semihosting, for
 * emulated boards: the emulator opens `edgeprop-nv.bin` in its own working
 * directory (QEMU `-semihosting-config enable=on,target=native`; host/emulator.py
 * runs each board in its own directory, so each board instance has its own file
 * and it survives a kill of the emulator).
 *
 * Included by a port's nv.c after it defines
 *   static intptr_t semihost_call(uintptr_t op, void *args);
 * (Arm: BKPT 0xAB; RISC-V: the slli/ebreak/srai sequence).
 * Operations: "Semihosting for AArch32 and AArch64", 2.0, section 5.
 */
#ifndef EP_NV_SEMIHOST_H
#define EP_NV_SEMIHOST_H

#include <stdint.h>

enum {
    SH_SYS_OPEN = 0x01,
    SH_SYS_WRITE = 0x05,
    SH_SYS_READ = 0x06,
    SH_SYS_SEEK = 0x0A,
    SH_SYS_FLEN = 0x0C,
    SH_MODE_RW_BINARY = 3,      /* fopen "r+b": fails if the file does not exist */
    SH_MODE_CREATE_BINARY = 7,  /* fopen "w+b": creates (only used when "r+b" failed) */
};

static const char nv_file_name[] = "edgeprop-nv.bin";
static intptr_t nv_handle = -1;

static int nvf_open(uint32_t *length) {
    uintptr_t args[3] = {(uintptr_t)nv_file_name, SH_MODE_RW_BINARY, sizeof nv_file_name - 1};
    nv_handle = semihost_call(SH_SYS_OPEN, args);
    if (nv_handle == -1) {
        args[1] = SH_MODE_CREATE_BINARY;
        nv_handle = semihost_call(SH_SYS_OPEN, args);
    }
    if (nv_handle == -1) {
        return -1;
    }
    uintptr_t flen[1] = {(uintptr_t)nv_handle};
    intptr_t n = semihost_call(SH_SYS_FLEN, flen);
    if (n < 0) {
        return -1;
    }
    *length = (uint32_t)n;
    return 0;
}

static int nvf_seek(uint32_t off) {
    uintptr_t args[2] = {(uintptr_t)nv_handle, off};
    return semihost_call(SH_SYS_SEEK, args) == 0 ? 0 : -1;
}

/* SYS_READ and SYS_WRITE return the number of bytes NOT transferred. */
static int nvf_pread(uint32_t off, uint8_t *buf, uint32_t len) {
    uintptr_t args[3] = {(uintptr_t)nv_handle, (uintptr_t)buf, len};
    return nvf_seek(off) == 0 && semihost_call(SH_SYS_READ, args) == 0 ? 0 : -1;
}

static int nvf_pwrite(uint32_t off, const uint8_t *buf, uint32_t len) {
    uintptr_t args[3] = {(uintptr_t)nv_handle, (uintptr_t)buf, len};
    return nvf_seek(off) == 0 && semihost_call(SH_SYS_WRITE, args) == 0 ? 0 : -1;
}

#endif /* EP_NV_SEMIHOST_H */
