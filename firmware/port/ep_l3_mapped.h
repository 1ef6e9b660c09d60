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

/* The L3 ops copy whole tensors: 8-aligned addresses and sizes (docs/blob.md). Word-aligned
 * copies go four words per iteration; picolibc's RISC-V memcpy is its size-optimised byte loop (6
 * instructions a byte), which would make an emulated L3 copy cost more than the uDMA
 * transfer it stands for costs the chip's cores (none). Anything else (READ_WEIGHTS
 * ranges) takes memcpy. */
static void l3_copy(void *dst, const void *src, uint32_t n) {
    if ((((uintptr_t)dst | (uintptr_t)src | n) & 3u) != 0) {
        memcpy(dst, src, n);
        return;
    }
    uint32_t *d = dst;
    const uint32_t *s = src;
    const uint32_t words = n / 4u;
    uint32_t i = 0;
    for (; i + 4u <= words; i += 4u) {
        const uint32_t a = s[i], b = s[i + 1], c = s[i + 2], e = s[i + 3];
        d[i] = a, d[i + 1] = b, d[i + 2] = c, d[i + 3] = e;
    }
    for (; i < words; i++) {
        d[i] = s[i];
    }
}

void ep_port_l3_read(uint32_t off, void *dst, uint32_t n) {
    EP_DCHECK(off <= EP_L3_BYTES && n <= EP_L3_BYTES - off);
    l3_copy(dst, ep_l3_mem + off, n);
}

void ep_port_l3_write(uint32_t off, const void *src, uint32_t n) {
    EP_DCHECK(off <= EP_L3_BYTES && n <= EP_L3_BYTES - off);
    l3_copy(ep_l3_mem + off, src, n);
}
