/*
 * ep_l3_mapped.h — ep_port.h's L3 memory as a plain static array of EP_L3_BYTES
 * (> 0), copied with memcpy. On boards with an L3 region (EP_L3_REGION: the
 * emulated gap9, a stretch of QEMU virt's DRAM) the array sits in section `.l3`,
 * which the linker script places there and checks against the board's L3 budget;
 * elsewhere (native) it is ordinary .bss. Included once by a port's l3.c.
 */
#include <stdint.h>
#include <string.h>

#include "ep_port.h"
#include "ep_runtime.h"

_Static_assert(EP_L3_BYTES > 0, "ep_l3_mapped.h needs EP_L3_BYTES > 0 ([runtime] l3_bytes of board.toml)");

static uint8_t ep_l3_mem[EP_L3_BYTES] EP_L3_SECTION __attribute__((aligned(8)));

uint32_t ep_port_l3_size(void) { return EP_L3_BYTES; }

void ep_port_l3_read(uint32_t off, void *dst, uint32_t n) {
    EP_DCHECK(off <= EP_L3_BYTES && n <= EP_L3_BYTES - off);
    memcpy(dst, ep_l3_mem + off, n);
}

void ep_port_l3_write(uint32_t off, const void *src, uint32_t n) {
    EP_DCHECK(off <= EP_L3_BYTES && n <= EP_L3_BYTES - off);
    memcpy(ep_l3_mem + off, src, n);
}
