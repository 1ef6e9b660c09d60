/* main.c — the device: bytes from the port → frame receiver → command handling. */
#include "ep_app.h"
#include "ep_frame.h"
#include "ep_port.h"

/* ep_port_cycles() per millisecond of the device's clock. Under QEMU -icount the
 * count is of instructions, each 2^shift ns of virtual time (the busy-polling
 * ports never let virtual time warp), so the timeout is the same virtual time
 * on every emulated board whatever its nominal clock. */
#ifdef EP_ICOUNT_SHIFT
#define EP_CYCLES_PER_MS (1000000u >> EP_ICOUNT_SHIFT)
_Static_assert((1000000u >> EP_ICOUNT_SHIFT) << EP_ICOUNT_SHIFT == 1000000u,
               "a whole number of instructions per millisecond");
#else
#define EP_CYCLES_PER_MS (EP_CPU_HZ / 1000u)
#endif

/* The partial-frame timeout of docs/protocol.md in units of ep_port_cycles(). */
#define EP_IDLE_TIMEOUT_CYCLES ((uint64_t)EP_CYCLES_PER_MS * EP_FRAME_IDLE_TIMEOUT_MS)

static ep_frame_rx_t rx;

int main(int argc, char **argv) {
    ep_port_init(argc, argv);
    ep_frame_rx_init(&rx, EP_IDLE_TIMEOUT_CYCLES);
    ep_app_init();
    for (;;) {
        int c = ep_port_getc();
        uint64_t now = ep_port_cycles();
        if (c >= 0) {
            ep_frame_push(&rx, (uint8_t)c, now);
        }
        ep_frame_t f;
        while (ep_frame_poll(&rx, now, &f)) {
            ep_app_handle(&f);
        }
        if (c < 0) {
            ep_port_idle();
        }
    }
}
