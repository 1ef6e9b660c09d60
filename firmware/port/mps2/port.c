/*
 * port.c — ep_port.h on the Arm MPS2/MPS3 boards and their QEMU machines:
 * polled CMSDK UART0, cycles from SysTick, exit through semihosting.
 *
 * Cycles: SysTick runs from the CPU clock with the largest reload; its
 * interrupt counts wraps, giving a 64-bit tick count. Under QEMU -icount
 * shift=S (EP_ICOUNT_SHIFT) virtual time advances 2^S ns per instruction, so
 * ticks are converted to executed instructions, ticks·1e9/(EP_CPU_HZ·2^S), and
 * the instructions of the wrap handler are left out: where a wrap falls
 * depends on when host bytes arrived, so counting it would make the cycles of
 * identical work differ by a few. Both steps take constant time, so reading
 * the counter does not add a value-dependent amount to a measured interval.
 *
 * The receive path busy-polls: sleeping (wfi) would let QEMU warp virtual time
 * by wall-clock amounts, and instruction counts would no longer follow from ticks.
 */
#include <stdbool.h>
#include <stdint.h>

#include "ep_port.h"
#include "mps2.h"

#define REG(addr) (*(volatile uint32_t *)(uintptr_t)(addr))
#define UART0(off) REG(MPS2_UART0_BASE + (off))

_Static_assert(EP_CPU_HZ / MPS2_UART_BAUD >= MPS2_UART_BAUDDIV_MIN, "UART0 BAUDDIV below its minimum");

#ifdef EP_ICOUNT_SHIFT
#define NS_PER_S 1000000000u
#define NS_PER_TICK (NS_PER_S / EP_CPU_HZ)
_Static_assert(NS_PER_S % EP_CPU_HZ == 0, "exact instruction counts need a whole number of ns per tick");
_Static_assert(NS_PER_TICK <= 1u << EP_ICOUNT_SHIFT, "exact instruction counts need a tick per instruction");

/* SysTick starts on an instruction boundary, so its ticks are a fixed function of
 * the instructions executed since, with at least one tick per instruction: the
 * scaled count rounded up inverts it exactly (checked on QEMU 7.2 at every phase). */
static uint64_t ticks_to_cycles(uint64_t ticks, uint32_t handled) {
    uint64_t instructions = (ticks * NS_PER_TICK + ((1u << EP_ICOUNT_SHIFT) - 1)) >> EP_ICOUNT_SHIFT;
    return instructions - (uint64_t)handled * MPS2_SYSTICK_HANDLER_INSNS;
}
#else
static uint64_t ticks_to_cycles(uint64_t ticks, uint32_t handled) {
    (void)handled;
    return ticks;
}
#endif

/* SysTick wraps handled so far; incremented by SysTick_Handler (startup.S) only. */
volatile uint32_t mps2_systick_wraps;

void ep_port_init(int argc, char **argv) {
    (void)argc;
    (void)argv;
    UART0(MPS2_UART_BAUDDIV) = EP_CPU_HZ / MPS2_UART_BAUD;
    UART0(MPS2_UART_CTRL) = MPS2_UART_CTRL_TX_EN | MPS2_UART_CTRL_RX_EN;
    REG(MPS2_SYST_RVR) = MPS2_SYST_RELOAD;
    REG(MPS2_SYST_CVR) = 0;
    REG(MPS2_SYST_CSR) = MPS2_SYST_CSR_CLKSOURCE_CPU | MPS2_SYST_CSR_TICKINT | MPS2_SYST_CSR_ENABLE;
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

uint64_t ep_port_cycles(void) {
    uint32_t handled, value;
    bool pending;
    do {
        handled = mps2_systick_wraps;
        value = REG(MPS2_SYST_CVR);
        pending = REG(MPS2_SCB_ICSR) & MPS2_ICSR_PENDSTSET;
    } while (handled != mps2_systick_wraps);
    /* a period ends when the counter reaches 0 (and the interrupt fires); it reloads a tick later */
    uint32_t in_period = (MPS2_SYST_RELOAD + 1 - value) & MPS2_SYST_RELOAD;
    /* a period that ended just now, before its interrupt ran, counts too */
    uint32_t periods = handled + (pending && in_period <= MPS2_SYST_RELOAD / 2);
    return ticks_to_cycles(((uint64_t)periods << MPS2_SYST_PERIOD_LOG2) + in_period, handled);
}

void ep_port_idle(void) {}

_Noreturn void ep_port_exit(int code) {
    uint32_t block[2] = {MPS2_SEMIHOSTING_APPLICATION_EXIT, (uint32_t)code};
    register uint32_t op __asm__("r0") = MPS2_SEMIHOSTING_SYS_EXIT_EXTENDED;
    register uint32_t *arg __asm__("r1") = block;
    __asm__ volatile("bkpt 0xAB" : : "r"(op), "r"(arg) : "memory");
    /* no semihosting host took the call: reset, as a real board does */
    REG(MPS2_SCB_AIRCR) = MPS2_AIRCR_RESET;
    for (;;) {
    }
}
