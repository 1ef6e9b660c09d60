/* main.c — the device: bytes from the port → frame receiver → command handling. */
#include "ep_app.h"
#include "ep_frame.h"
#include "ep_port.h"

/* The partial-frame timeout of docs/protocol.md in cycles of ep_port_cycles(). */
#define EP_IDLE_TIMEOUT_CYCLES ((uint64_t)EP_CPU_HZ / 1000u * EP_FRAME_IDLE_TIMEOUT_MS)

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
