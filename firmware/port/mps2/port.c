/*
 * port.c — ep_port.h on the Arm MPS2/MPS3 boards and their QEMU machines:
 * polled CMSDK UART0 (mps2.h). Cycles, startup and exit are the shared
 * bare-metal Arm code in ../armv7m/.
 */
#include <stdint.h>

#include "armv7m.h"
#include "ep_port.h"
#include "mps2.h"

#define REG(addr) (*(volatile uint32_t *)(uintptr_t)(addr))
#define UART0(off) REG(MPS2_UART0_BASE + (off))

_Static_assert(MPS2_UART_CLOCK_HZ / MPS2_UART_BAUD >= MPS2_UART_BAUDDIV_MIN, "UART0 BAUDDIV below its minimum");

void ep_port_init(int argc, char **argv) {
    (void)argc;
    (void)argv;
    UART0(MPS2_UART_BAUDDIV) = MPS2_UART_CLOCK_HZ / MPS2_UART_BAUD;
    UART0(MPS2_UART_CTRL) = MPS2_UART_CTRL_TX_EN | MPS2_UART_CTRL_RX_EN;
    armv7m_cycles_start();
}

int ep_port_getc(void) {
    if (!(UART0(MPS2_UART_STATE) & MPS2_UART_STATE_RX_FULL)) {
        return -1;
    }
    return (int)(UART0(MPS2_UART_DATA) & 0xFF);
}

void ep_port_write(const uint8_t *buf, uint32_t len) {
    for (uint32_t i = 0; i < len; i++) {
        while (UART0(MPS2_UART_STATE) & MPS2_UART_STATE_TX_FULL) {
        }
        UART0(MPS2_UART_DATA) = buf[i];
    }
}

/* Busy-polls: see ../armv7m/cycles.c for why the receive path never sleeps. */
void ep_port_idle(void) {}
