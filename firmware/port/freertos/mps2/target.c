/*
 * target.c — the MPS2 (Cortex-M4F) side of the FreeRTOS port: CMSDK UART0 with
 * its receive interrupt, the kernel tick from CMSDK Timer0, and the exit.
 *
 * Reused unchanged from the bare-metal ports: ../../mps2/mps2.h (UART
 * registers), ../../armv7m/armv7m.h and cycles.c (ep_port_cycles from SysTick,
 * exact instruction counts under QEMU -icount; ep_port_exit through
 * semihosting), ../../mps2/nv.c (storage). ep_port_exit is wrapped at link time
 * (-Wl,--wrap=ep_port_exit, see ../Makefile) so queued output is sent before
 * the program ends.
 */
#include <stdbool.h>
#include <stdint.h>

#include "FreeRTOS.h"
#include "task.h"

#include "armv7m.h"
#include "ep_freertos.h"
#include "ep_port.h"
#include "mps2.h"

#define REG(addr) (*(volatile uint32_t *)(uintptr_t)(addr))
#define UART0(off) REG(MPS2_UART0_BASE + (off))

/* CMSDK APB UART: interrupt enables and status (CMSDK TRM 4.3) */
#define MPS2_UART_CTRL_RX_INT_EN (1 << 3)
#define MPS2_UART_INTCLEAR 0x0C
#define MPS2_UART_INT_RX (1 << 1)
/* CMSDK APB timer 0 (CMSDK TRM 4.4) */
#define MPS2_TIMER0_BASE 0x40000000
#define MPS2_TIMER_CTRL 0x00
#define MPS2_TIMER_RELOAD 0x08
#define MPS2_TIMER_INTCLEAR 0x0C
#define MPS2_TIMER_CTRL_EN (1 << 0)
#define MPS2_TIMER_CTRL_IRQ_EN (1 << 3)
/* NVIC lines of the AN385/AN386 images */
#define MPS2_UART0_RX_IRQ 0
#define MPS2_TIMER0_IRQ 8
/* NVIC registers (ARMv7-M ARM B3.4) */
#define NVIC_ISER0 0xE000E100
#define NVIC_ICER0 0xE000E180
#define NVIC_ISPR0 0xE000E200
#define NVIC_IPR(irq) (0xE000E400 + (irq))
#define SCB_ICSR_VECTACTIVE_MASK 0x1FF

#define REG8(addr) (*(volatile uint8_t *)(uintptr_t)(addr))

/* GCC/ARM_CM4F/port.c defines these without a header prototype */
void xPortSysTickHandler(void);
void vPortSetupTimerInterrupt(void);
void ep_mps2_uart0_rx_isr(void);
void ep_mps2_timer0_isr(void);

_Static_assert(MPS2_UART_CLOCK_HZ / MPS2_UART_BAUD >= MPS2_UART_BAUDDIV_MIN, "UART0 BAUDDIV below its minimum");

void ep_freertos_uart_init(void) {
    UART0(MPS2_UART_BAUDDIV) = MPS2_UART_CLOCK_HZ / MPS2_UART_BAUD;
    UART0(MPS2_UART_CTRL) = MPS2_UART_CTRL_TX_EN | MPS2_UART_CTRL_RX_EN;
}

/* Runs in the train task (app/main.c calls it first), with the scheduler running. */
void ep_port_init(int argc, char **argv) {
    (void)argc;
    (void)argv;
    UART0(MPS2_UART_CTRL) |= MPS2_UART_CTRL_RX_INT_EN;
    REG8(NVIC_IPR(MPS2_UART0_RX_IRQ)) = EP_MPS2_UART_RX_PRIORITY;
    REG(NVIC_ISER0) = 1u << MPS2_UART0_RX_IRQ;
    armv7m_cycles_start();
}

void ep_mps2_uart0_rx_isr(void) {
    /* clear first: a byte arriving while we drain raises the interrupt again */
    UART0(MPS2_UART_INTCLEAR) = MPS2_UART_INT_RX;
    portYIELD_FROM_ISR(ep_freertos_rx_isr());
}

int ep_freertos_uart_rx_byte(void) {
    if (!(UART0(MPS2_UART_STATE) & MPS2_UART_STATE_RX_FULL)) {
        return -1;
    }
    return (int)(UART0(MPS2_UART_DATA) & 0xFF);
}

void ep_freertos_uart_rx_irq(bool on) {
    if (on) {
        UART0(MPS2_UART_CTRL) |= MPS2_UART_CTRL_RX_INT_EN;
        /* a byte that arrived while masked raised no interrupt: run the ISR once */
        REG(NVIC_ISPR0) = 1u << MPS2_UART0_RX_IRQ;
    } else {
        UART0(MPS2_UART_CTRL) &= ~(uint32_t)MPS2_UART_CTRL_RX_INT_EN;
    }
}

void ep_freertos_uart_write(const uint8_t *buf, uint32_t len) {
    for (uint32_t i = 0; i < len; i++) {
        while (UART0(MPS2_UART_STATE) & MPS2_UART_STATE_TX_FULL) {
        }
        UART0(MPS2_UART_DATA) = buf[i];
    }
}

/* The kernel tick: FreeRTOS calls this (weak in GCC/ARM_CM4F/port.c) instead of
 * programming SysTick, which the cycle counter owns. */
void vPortSetupTimerInterrupt(void) {
    REG(MPS2_TIMER0_BASE + MPS2_TIMER_RELOAD) = configCPU_CLOCK_HZ / configTICK_RATE_HZ - 1;
    REG(MPS2_TIMER0_BASE + MPS2_TIMER_CTRL) = MPS2_TIMER_CTRL_EN | MPS2_TIMER_CTRL_IRQ_EN;
    REG8(NVIC_IPR(MPS2_TIMER0_IRQ)) = configKERNEL_INTERRUPT_PRIORITY;
    REG(NVIC_ISER0) = 1u << MPS2_TIMER0_IRQ;
}

void ep_mps2_timer0_isr(void) {
    REG(MPS2_TIMER0_BASE + MPS2_TIMER_INTCLEAR) = 1;
    xPortSysTickHandler();
}

bool ep_freertos_in_isr(void) {
    return (REG(ARMV7M_SCB_ICSR) & SCB_ICSR_VECTACTIVE_MASK) != 0;
}

void ep_freertos_wait_for_interrupt(void) {
    __asm__ volatile("dsb\n\twfi" ::: "memory");
}

/* cycles.c's exit (semihosting, else reset), reached through the --wrap below. */
_Noreturn void __real_ep_port_exit(int code);

_Noreturn void __wrap_ep_port_exit(int code) {
    ep_freertos_flush_tx();
    __real_ep_port_exit(code);
}

_Noreturn void ep_freertos_exit_now(int code) {
    __real_ep_port_exit(code);
}
