/*
 * nv.c — non-volatile storage on the RISC-V boards run under QEMU virt (gap9):
 * a host file reached through RISC-V semihosting (../ep_nv_semihost.h; QEMU
 * `-semihosting-config enable=on,target=native`, which sets EP_SEMIHOSTING),
 * with flash semantics (../ep_nv_file.h). On GAP9 hardware the external flash
 * is driven by the GAP SDK, which this build does not have: no storage there.
 */
#include <stdint.h>

#include "ep_port.h"

#ifdef EP_SEMIHOSTING
/* The RISC-V semihosting trap: an ebreak between two marker instructions, uncompressed
 * and inside one page (RISC-V Semihosting spec, "Semihosting trap instruction sequence").
 * A function of its own, 16-aligned, so the 12 bytes never straddle a page; a0 = op,
 * a1 = args in, a0 = result out, as the calling convention already places them. */
__asm__(".pushsection .text.ep_semihost_trap, \"ax\", @progbits\n"
        ".balign 16\n"
        ".type ep_semihost_trap, @function\n"
        "ep_semihost_trap:\n"
        ".option push\n"
        ".option norvc\n"
        ".option norelax\n"
        "slli zero, zero, 0x1f\n"
        "ebreak\n"
        "srai zero, zero, 7\n"
        ".option pop\n"
        "ret\n"
        ".size ep_semihost_trap, . - ep_semihost_trap\n"
        ".popsection\n");
intptr_t ep_semihost_trap(uintptr_t op, void *args);

static intptr_t semihost_call(uintptr_t op, void *args) { return ep_semihost_trap(op, args); }
#include "ep_nv_semihost.h"
#include "ep_nv_file.h"
#else
#include "ep_nv_none.h"
#endif
