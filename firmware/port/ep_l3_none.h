/*
 * ep_l3_none.h — ep_port.h's L3 memory on a port without one: size 0, so the
 * app gives the runtime no ep_l3_t and a blob with an L3 tensor is refused
 * (NO_FIT); read and write are never called. Included by a port's l3.c (or its
 * port file) in place of a real implementation.
 */
#include <stdint.h>

#include "ep_port.h"
#include "ep_runtime.h"

_Static_assert(EP_L3_BYTES == 0, "this port has no L3 memory: [runtime] l3_bytes of board.toml must be 0");

uint32_t ep_port_l3_size(void) { return 0; }

void ep_port_l3_read(uint32_t off, void *dst, uint32_t n) {
    (void)off, (void)dst, (void)n;
    EP_DCHECK(0);
}

void ep_port_l3_write(uint32_t off, const void *src, uint32_t n) {
    (void)off, (void)src, (void)n;
    EP_DCHECK(0);
}
