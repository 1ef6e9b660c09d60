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
#include "ep_nv_none.h"
#endif
