/*
 * target.c — the QEMU riscv32 `virt` side of the FreeRTOS port (board gap9):
 * the 16550 UART with its receive interrupt through the PLIC, cycles from
 * mcycle, exit through the SiFive test finisher. The kernel tick is the
 * kernel's own CLINT machine-timer code (FreeRTOSConfig.h).
 *
 * Register layouts come from the bare-metal port's header
 * (../../riscv_virt/riscv_virt.h); the board's [port_settings] give
 * RV_UART_BASE and RV_TEST_FINISHER.
 *
 * Cycles: as on bare metal, QEMU 7.2's mcycle under -icount shift=S is the
 * virtual clock in ns, so mcycle >> S counts instructions while the core runs.
 * Unlike the bare-metal port, the idle task sleeps in wfi: while every task
 * waits, virtual time (and this count) advances with the host's clock instead
 * of by instructions. A training step never waits, so its count is its
 * instructions plus those of the interrupts that arrived meanwhile.
 */
#include <stdbool.h>
#include <stdint.h>

#include "FreeRTOS.h"
#include "task.h"

#include "ep_freertos.h"
#include "ep_port.h"
#include "riscv_virt.h"


#define REG8(addr) (*(volatile uint8_t *)(uintptr_t)(addr))
#define REG32(addr) (*(volatile uint32_t *)(uintptr_t)(addr))
#define UART(off) REG8(RV_UART_BASE + (off))

#define RV_UART_IER_RX 0x01 /* received-data-available interrupt */

/* PLIC of QEMU virt (hw/riscv/virt.c): source priorities, enables and
 * threshold/claim of context 0 = hart 0 in machine mode. */
#define PLIC_BASE 0x0C000000
#define PLIC_PRIORITY(src) (PLIC_BASE + 4 * (src))
#define PLIC_ENABLE_CTX0 (PLIC_BASE + 0x2000)
#define PLIC_THRESHOLD_CTX0 (PLIC_BASE + 0x200000)
#define PLIC_CLAIM_CTX0 (PLIC_BASE + 0x200004)
#define VIRT_UART0_IRQ 10

#define MCAUSE_INTERRUPT 0x80000000u
#define MCAUSE_M_EXTERNAL 11

static uint64_t cycles_at_init;

/* Before the scheduler. The FIFOs were turned on (receive trigger level 1 byte)
 * by the first instructions of startup.S: doing it here would clear bytes the
 * host sent while .bss was being zeroed. */
void ep_freertos_uart_init(void) {
    UART(RV_UART_IER) = 0;
    UART(RV_UART_LCR) = RV_UART_LCR_8N1;
}

/* Runs in the train task (app/main.c calls it first), with the scheduler running:
 * the kernel has already enabled machine timer and external interrupts in mie. */
void ep_port_init(int argc, char **argv) {
    (void)argc;
    (void)argv;
    REG32(PLIC_PRIORITY(VIRT_UART0_IRQ)) = 1;
    REG32(PLIC_THRESHOLD_CTX0) = 0;
    REG32(PLIC_ENABLE_CTX0) |= 1u << VIRT_UART0_IRQ;
    UART(RV_UART_IER) = RV_UART_IER_RX;
    cycles_at_init = rv_mcycle64() >> RV_CYCLE_SHIFT;
}

uint64_t ep_port_cycles(void) {
    return (rv_mcycle64() >> RV_CYCLE_SHIFT) - cycles_at_init;
}

/* Called by the kernel's trap entry (portASM.S) for every interrupt but its timer. */
void freertos_risc_v_application_interrupt_handler(void) {
    uint32_t mcause;
    __asm__ volatile("csrr %0, mcause" : "=r"(mcause));
    if (mcause != (MCAUSE_INTERRUPT | MCAUSE_M_EXTERNAL)) {
        ep_freertos_exit_now(RV_TRAP_EXIT_CODE); /* nothing else is enabled */
    }
    BaseType_t woken = pdFALSE;
    uint32_t src;
    while ((src = REG32(PLIC_CLAIM_CTX0)) != 0) {
        if (src == VIRT_UART0_IRQ) {
            woken |= ep_freertos_rx_isr();
        }
        REG32(PLIC_CLAIM_CTX0) = src; /* complete */
    }
    portYIELD_FROM_ISR(woken);
}

/* Exceptions other than the kernel's ecall yields: end the program as bare metal does. */
void freertos_risc_v_application_exception_handler(void) {
    ep_freertos_exit_now(RV_TRAP_EXIT_CODE);
}

int ep_freertos_uart_rx_byte(void) {
    if (!(UART(RV_UART_LSR) & RV_UART_LSR_DR)) {
        return -1;
    }
    return UART(RV_UART_RBR);
}

/* The 16550 raises its interrupt again on unmasking if a byte is waiting. */
void ep_freertos_uart_rx_irq(bool on) {
    UART(RV_UART_IER) = on ? RV_UART_IER_RX : 0;
}

void ep_freertos_uart_write(const uint8_t *buf, uint32_t len) {
    for (uint32_t i = 0; i < len; i++) {
        while (!(UART(RV_UART_LSR) & RV_UART_LSR_THRE)) {
        }
        UART(RV_UART_THR) = buf[i];
    }
}

/* Handlers run on the kernel's ISR stack (GCC/RISC-V/port.c), tasks never do. */
extern const StackType_t xISRStackTop;

bool ep_freertos_in_isr(void) {
    uintptr_t sp;
    __asm__ volatile("mv %0, sp" : "=r"(sp));
    uintptr_t top = (uintptr_t)xISRStackTop;
    return sp <= top && sp > top - configISR_STACK_SIZE_WORDS * sizeof(StackType_t);
}

void ep_freertos_wait_for_interrupt(void) {
    __asm__ volatile("wfi" ::: "memory");
}

_Noreturn void ep_freertos_exit_now(int code) {
    REG32(RV_TEST_FINISHER) = ((uint32_t)code << 16) | RV_FINISHER_FAIL;
    for (;;) {
        __asm__ volatile("wfi");
    }
}

_Noreturn void ep_port_exit(int code) {
    ep_freertos_flush_tx();
    ep_freertos_exit_now(code);
}
