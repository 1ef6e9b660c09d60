/*
 * FreeRTOSConfig.h — FreeRTOS on the Arm MPS2 AN386 (Cortex-M4F) and QEMU's
 * mps2-an386, kernel port GCC/ARM_CM4F. Shared settings: ../FreeRTOSConfig_common.h.
 *
 * Interrupts (NVIC priorities, 3 implemented bits on the M4 FPGA images;
 * QEMU implements more, which FreeRTOS's own start-up check accepts):
 *   SysTick          0 at reset, then the kernel's lowest: counts 2^24-cycle
 *                    wraps for ep_port_cycles() (../../armv7m/cycles.c, reused as is)
 *   CMSDK Timer0     IRQ 8, configKERNEL_INTERRUPT_PRIORITY: the kernel tick
 *                    (SysTick is taken by the cycle counter)
 *   CMSDK UART0 RX   IRQ 0, EP_MPS2_UART_RX_PRIORITY: feeds the rx stream buffer
 *   SVCall, PendSV   the kernel's (vPortSVCHandler, xPortPendSVHandler)
 */
#ifndef FREERTOS_CONFIG_H
#define FREERTOS_CONFIG_H

#include "FreeRTOSConfig_common.h"

/* CPU clock; the CMSDK timers and UART run from the same 25 MHz on MPS2. */
#define configCPU_CLOCK_HZ EP_CPU_HZ

#define configPRIO_BITS 3
/* lowest urgency: tick, PendSV */
#define configKERNEL_INTERRUPT_PRIORITY (7 << (8 - configPRIO_BITS))
/* ISRs at this priority or lower urgency (numerically ≥) may call ...FromISR() */
#define configMAX_SYSCALL_INTERRUPT_PRIORITY (5 << (8 - configPRIO_BITS))
#define EP_MPS2_UART_RX_PRIORITY (6 << (8 - configPRIO_BITS))

/* The vector table (startup.S) names vPortSVCHandler and xPortPendSVHandler
 * directly; the kernel checks that at start. */
#define configCHECK_HANDLER_INSTALLATION 1

#endif /* FREERTOS_CONFIG_H */
