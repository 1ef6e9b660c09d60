/*
 * l3.c — ep_port.h's L3 memory on GAP9 hardware: EP_L3_BYTES of the board's
 * external RAM, through the GAP SDK's BSP RAM driver: the OctoSPI PSRAM of the
 * GAP9 EVK (bsp/ram/aps25xxxn.h, the SDK's CONFIG_APS25XXXN boards), else a
 * HyperRAM (bsp/ram/hyperram.h).
 *
 *   - opened on first use (the app asks for the size when it boots and at each
 *     install): the driver's conf_init, pi_open_from_conf, pi_ram_open, then one
 *     pi_ram_alloc of EP_L3_BYTES, kept for good (the runtime's offsets count
 *     from its base);
 *   - reads and writes are blocking pi_ram_read/pi_ram_write: uDMA copies
 *     between the RAM and L2 (the arena, the app's static bounce buffers). The
 *     RAM is not memory-mapped here (no XIP), so nothing ever points into it.
 *
 * If the RAM does not open or the allocation fails, the port reports no L3 (size
 * 0): blobs that place tensors in L3 are refused (NO_FIT), the others run.
 * The upload staging buffer stays in L2 on the chip (this folder's Makefile
 * leaves the board's EP_L3_REGION out: only the emulated gap9, whose L3 is
 * memory-mapped DRAM, stages blobs there).
 *
 * The BSP headers come with the SDK, not with the PMSIS API headers that
 * tests/test_pmsis_port.py compiles against: without either RAM header this
 * file builds the port without L3 (size 0). Never run on a chip here.
 */
#include <stdint.h>

#include "ep_port.h"
#include "pmsis.h"

#if EP_L3_BYTES > 0 && defined(__has_include)
#if __has_include("bsp/ram/aps25xxxn.h")
#define EP_PMSIS_RAM 1
#include "bsp/ram.h"
#include "bsp/ram/aps25xxxn.h"
typedef struct pi_aps25xxxn_conf ram_conf_t;
#define RAM_CONF_INIT pi_aps25xxxn_conf_init
#elif __has_include("bsp/ram/hyperram.h")
#define EP_PMSIS_RAM 1
#include "bsp/ram.h"
#include "bsp/ram/hyperram.h"
typedef struct pi_hyperram_conf ram_conf_t;
#define RAM_CONF_INIT pi_hyperram_conf_init
#endif
#endif

#ifdef EP_PMSIS_RAM
static struct pi_device ram;
static ram_conf_t ram_conf;
static uint32_t ram_base;
static int ram_state; /* 0 not tried, 1 open with EP_L3_BYTES at ram_base, -1 unavailable */

static int ram_ready(void) {
    if (ram_state == 0) {
        RAM_CONF_INIT(&ram_conf);
        pi_open_from_conf(&ram, &ram_conf);
        ram_state = pi_ram_open(&ram) == 0 && pi_ram_alloc(&ram, &ram_base, EP_L3_BYTES) == 0 ? 1 : -1;
    }
    return ram_state == 1;
}

uint32_t ep_port_l3_size(void) { return ram_ready() ? EP_L3_BYTES : 0u; }

void ep_port_l3_read(uint32_t off, void *dst, uint32_t n) {
    if (n != 0 && ram_ready()) {
        pi_ram_read(&ram, ram_base + off, dst, n);
    }
}

void ep_port_l3_write(uint32_t off, const void *src, uint32_t n) {
    if (n != 0 && ram_ready()) {
        pi_ram_write(&ram, ram_base + off, (void *)src, n); /* the driver only reads src */
    }
}

#else /* no RAM driver (or no [runtime] l3_bytes): no L3 */

uint32_t ep_port_l3_size(void) { return 0; }

void ep_port_l3_read(uint32_t off, void *dst, uint32_t n) { (void)off, (void)dst, (void)n; }

void ep_port_l3_write(uint32_t off, const void *src, uint32_t n) { (void)off, (void)src, (void)n; }

#endif
