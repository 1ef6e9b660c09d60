/*
 * nv.c — non-volatile storage on the MPS2/MPS3 boards. The FPGA boards have no
 * flash the firmware may program; under QEMU (EP_SEMIHOSTING) the storage is a
 * host file reached through Arm semihosting (../ep_nv_semihost.h), with flash
 * semantics (../ep_nv_file.h). Without semihosting there is no storage.
 */
#include <stdint.h>

#include "ep_port.h"

#ifdef EP_SEMIHOSTING
static intptr_t semihost_call(uintptr_t op, void *args) {
    register uintptr_t r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = args;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return (intptr_t)r0;
}
#include "ep_nv_semihost.h"
#include "ep_nv_file.h"
#else
uint32_t ep_port_nv_size(void) { return 0; }
uint32_t ep_port_nv_page_bytes(void) { return 0; }
int ep_port_nv_read(uint32_t off, uint8_t *buf, uint32_t len) { (void)off, (void)buf, (void)len; return -1; }
int ep_port_nv_erase(uint32_t page) { (void)page; return -1; }
int ep_port_nv_write(uint32_t off, const uint8_t *buf, uint32_t len) { (void)off, (void)buf, (void)len; return -1; }
#endif
