/*
 * port.c — ep_port.h on QEMU's RISC-V `virt` machine (board gap9, the GAP9
 * fabric controller): polled 16550 UART, cycles from mcycle, exit through the
 * SiFive test finisher. Startup: startup.S; memory map: link.ld.in.
 *
 * Cycles: mcycle is read as 64 bits (mcycleh / mcycle / mcycleh, retried if
 * the high half moved). Under QEMU -icount shift=S, QEMU 7.2's mcycle (and
 * minstret) is the virtual clock in ns: executed instructions << S (with S = 0,
 * mcycle == minstret == instructions). The port reports mcycle >> S, the exact
 * instruction count, which is what main.c expects under EP_ICOUNT_SHIFT
 * (1e6 >> S instructions per virtual millisecond). The board uses S = 6, as
 * the Arm boards do: at S = 0 a virtual millisecond is 1e6 instructions and the
 * 2 s partial-frame timeout (2e9 instructions) takes far longer than 2 s of
 * wall time under TCG, so hosts and tests waiting for it time out. On real
 * hardware (no EP_ICOUNT_SHIFT) mcycle counts FC clock cycles at EP_CPU_HZ.
 * mcycle is one clock for all harts: cluster.c says what that means for forks.
 *
 * The UART receive path busy-polls (ep_port_idle does nothing): sleeping with
 * wfi would let QEMU warp virtual time by wall-clock amounts, and instruction
 * counts (and the idle timeout measured in them) would no longer be
 * deterministic.
 */
#include <stdint.h>

#include "ep_port.h"
#include "riscv_virt.h"


#define REG8(addr) (*(volatile uint8_t *)(uintptr_t)(addr))
#define UART(off) REG8(RV_UART_BASE + (off))

static uint64_t cycles_at_init;

void ep_port_init(int argc, char **argv) {
    (void)argc;
    (void)argv;
    UART(RV_UART_IER) = 0;
    UART(RV_UART_LCR) = RV_UART_LCR_8N1;
    UART(RV_UART_FCR) = RV_UART_FCR_ENABLE; /* keep what arrived since reset (startup.S) */
    cycles_at_init = rv_mcycle64() >> RV_CYCLE_SHIFT;
}

int ep_port_getc(void) {
    if (!(UART(RV_UART_LSR) & RV_UART_LSR_DR)) {
        return -1;
    }
    return UART(RV_UART_RBR);
}

void ep_port_write(const uint8_t *buf, uint32_t len) {
    for (uint32_t i = 0; i < len; i++) {
        while (!(UART(RV_UART_LSR) & RV_UART_LSR_THRE)) {
        }
        UART(RV_UART_THR) = buf[i];
    }
}

/* cluster.c's; this weak 0 lets a build without the cluster (an RTOS port reusing
 * this file) link */
__attribute__((weak)) uint64_t rv_cluster_hidden(void) {
    return 0;
}

uint64_t ep_port_cycles(void) {
    /* minus what the cluster overlaps in timing=turns forks (cluster.c) */
    return ((rv_mcycle64() - rv_cluster_hidden()) >> RV_CYCLE_SHIFT) - cycles_at_init;
}

/* Busy-polls: see the comment at the top. */
void ep_port_idle(void) {}

_Noreturn void ep_port_exit(int code) {
    *(volatile uint32_t *)(uintptr_t)RV_TEST_FINISHER = ((uint32_t)code << 16) | RV_FINISHER_FAIL;
    for (;;) {
        __asm__ volatile("wfi");
    }
}
