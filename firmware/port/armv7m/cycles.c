/*
 * cycles.c — ep_port_cycles() from SysTick, shared by the bare-metal Arm ports.
 *
 * SysTick runs from the CPU clock with the largest reload; its interrupt counts
 * wraps (SysTick_Handler, startup.S), giving a 64-bit count. Without
 * EP_ICOUNT_SHIFT (real boards) the result is that count of CPU clock cycles.
 *
 * Under QEMU -icount shift=S (EP_ICOUNT_SHIFT) virtual time advances exactly
 * 2^S ns per instruction, and the count is turned into executed instructions,
 * exactly, for any clock (25 MHz gives 40 ns per tick, 32 MHz 31.25 ns, 168 MHz
 * an inexact 5.95… ns). The conversion follows QEMU's own arithmetic (QEMU 7.2,
 * hw/core/ptimer.c and hw/timer/armv7m_systick.c), in units of 2^-32 ns:
 *
 *   - the tick period is P = floor(1e9·2^32 / EP_CPU_HZ) (clock_set_hz truncates);
 *   - enabling at t0 (reload pending, count 0) ends a 1-tick period at
 *     t0 + floor(P/2^32), then a period of RELOAD ticks, then periods of
 *     RELOAD+1 = 2^24 ticks; each ends floor(ticks·P/2^32) ns after the last
 *     (rounded once per period, so the error never accumulates);
 *   - within a period ending at T the count read at time t is
 *     floor((T−t)·2^32/P)+1 (0 in its first tick), so the ticks elapsed in the
 *     period, RELOAD+1−count mod 2^24, are RELOAD−c with c = floor((T−t)·2^32/P).
 *
 * So T−t lies in [c·P/2^32, (c+1)·P/2^32): an interval shorter than one
 * instruction (P/2^32 ≤ 2^S ns), holding exactly one time t that is a whole
 * number of instructions after t0. Hence instructions = (T−t0 − ceil(c·P/2^32)) >> S.
 * The instructions of the wrap handler are left out: where a wrap falls
 * depends on when host bytes arrived, so counting it would make the cycles of
 * identical work differ by a few. Reading the counter takes constant time, so
 * it does not add a value-dependent amount to a measured interval.
 *
 * The ports busy-poll their UART: sleeping (wfi) would let QEMU warp virtual
 * time by wall-clock amounts, and instruction counts would no longer follow.
 */
#include <stdbool.h>
#include <stdint.h>

#include "armv7m.h"
#include "ep_port.h"

#define REG(addr) (*(volatile uint32_t *)(uintptr_t)(addr))

#ifdef EP_ICOUNT_SHIFT
#define QEMU_PERIOD (((uint64_t)1000000000u << 32) / EP_CPU_HZ) /* ns · 2^32 per tick */
#define FLOOR_NS(x) ((x) >> 32)
#define CEIL_NS(x) (((x) + 0xFFFFFFFFu) >> 32)
/* end of the first full period (RELOAD ticks, after the first single tick), ns after t0 */
#define FIRST_END_NS (FLOOR_NS(QEMU_PERIOD) + FLOOR_NS((uint64_t)ARMV7M_SYST_RELOAD * QEMU_PERIOD))
/* length of each later period of 2^24 ticks, ns */
#define PERIOD_NS FLOOR_NS(QEMU_PERIOD << ARMV7M_SYST_PERIOD_LOG2)
_Static_assert(QEMU_PERIOD <= (uint64_t)1 << (32 + EP_ICOUNT_SHIFT),
               "exact instruction counts need at least one tick per instruction");
_Static_assert(QEMU_PERIOD < (uint64_t)1 << 39, "64-bit intermediates need a clock above 8 MHz");

static uint64_t to_cycles(uint32_t periods, uint32_t in_period, uint32_t handled) {
    uint64_t c = ARMV7M_SYST_RELOAD - in_period;
    uint64_t end_ns = FIRST_END_NS + (uint64_t)periods * PERIOD_NS;
    uint64_t instructions = (end_ns - CEIL_NS(c * QEMU_PERIOD)) >> EP_ICOUNT_SHIFT;
    return instructions - (uint64_t)handled * ARMV7M_SYSTICK_HANDLER_INSNS;
}
#else
static uint64_t to_cycles(uint32_t periods, uint32_t in_period, uint32_t handled) {
    (void)handled;
    return ((uint64_t)periods << ARMV7M_SYST_PERIOD_LOG2) + in_period;
}
#endif

/* SysTick wraps handled so far; incremented by SysTick_Handler (startup.S) only. */
volatile uint32_t armv7m_systick_wraps;

void armv7m_cycles_start(void) {
    REG(ARMV7M_SYST_RVR) = ARMV7M_SYST_RELOAD;
    REG(ARMV7M_SYST_CVR) = 0;
    REG(ARMV7M_SYST_CSR) = ARMV7M_SYST_CSR_CLKSOURCE_CPU | ARMV7M_SYST_CSR_TICKINT | ARMV7M_SYST_CSR_ENABLE;
}

uint64_t ep_port_cycles(void) {
    uint32_t handled, value;
    bool pending;
    do {
        handled = armv7m_systick_wraps;
        value = REG(ARMV7M_SYST_CVR);
        pending = REG(ARMV7M_SCB_ICSR) & ARMV7M_ICSR_PENDSTSET;
    } while (handled != armv7m_systick_wraps);
    /* a period ends when the counter reaches 0 (and the interrupt fires); it reloads a tick later */
    uint32_t in_period = (ARMV7M_SYST_RELOAD + 1 - value) & ARMV7M_SYST_RELOAD;
    /* a period that ended just now, before its interrupt ran, counts too */
    uint32_t periods = handled + (pending && in_period <= ARMV7M_SYST_RELOAD / 2);
    return to_cycles(periods, in_period, handled);
}

_Noreturn void ep_port_exit(int code) {
#ifdef EP_SEMIHOSTING
    uint32_t block[2] = {ARMV7M_SEMIHOSTING_APPLICATION_EXIT, (uint32_t)code};
    register uint32_t op __asm__("r0") = ARMV7M_SEMIHOSTING_SYS_EXIT_EXTENDED;
    register uint32_t *arg __asm__("r1") = block;
    __asm__ volatile("bkpt 0xAB" : : "r"(op), "r"(arg) : "memory");
#else
    (void)code; /* no semihosting host: a BKPT without a debugger would lock up */
#endif
    /* nobody took the exit: reset, as a real board does */
    REG(ARMV7M_SCB_AIRCR) = ARMV7M_AIRCR_RESET;
    for (;;) {
    }
}
