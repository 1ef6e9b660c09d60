/*
 * startup.S — vector table and reset of the FreeRTOS port on MPS2 (Cortex-M4F).
 *
 * Reset_Handler is the bare-metal one (../../armv7m/startup.S): FPU on, .data
 * copied, .bss zeroed; then ep_freertos_start() creates the tasks and starts
 * the scheduler (which reuses the main stack, __stack_top, for interrupts).
 * The table adds the kernel's SVCall/PendSV handlers and two external
 * interrupts (CMSDK UART0 RX: IRQ 0, CMSDK Timer0: IRQ 8 — QEMU hw/arm/mps2.c
 * and the AN386 application note). SysTick_Handler counts SysTick wraps for
 * ../../armv7m/cycles.c exactly as the bare-metal handler does (same five
 * instructions, which cycles.c subtracts under -icount). Every other exception
 * ends the program with ARMV7M_FAULT_EXIT_CODE.
 */
#include "armv7m.h"

    .syntax unified
    .thumb

    .section .vectors, "a", %progbits
    .global ep_vectors
ep_vectors:
    .word __stack_top
    .word Reset_Handler
    .word Fault_Handler     /* NMI */
    .word Fault_Handler     /* HardFault */
    .word Fault_Handler     /* MemManage */
    .word Fault_Handler     /* BusFault */
    .word Fault_Handler     /* UsageFault */
    .word 0, 0, 0, 0
    .word vPortSVCHandler   /* SVCall: starts the first task */
    .word Fault_Handler     /* DebugMonitor */
    .word 0
    .word xPortPendSVHandler /* PendSV: context switch */
    .word SysTick_Handler
    /* external interrupts 0..31 (QEMU's MPS2 NVIC has 32) */
    .word ep_mps2_uart0_rx_isr /* 0: UART0 RX */
    .rept 7
    .word Fault_Handler     /* 1..7 */
    .endr
    .word ep_mps2_timer0_isr /* 8: Timer0, the kernel tick */
    .rept 23
    .word Fault_Handler     /* 9..31 */
    .endr

    .section .text.Reset_Handler, "ax", %progbits
    .global Reset_Handler
    .type Reset_Handler, %function
    .thumb_func
Reset_Handler:
    ARMV7M_INIT_MEMORY

    bl ep_freertos_start
    .size Reset_Handler, . - Reset_Handler

    .section .text.Fault_Handler, "ax", %progbits
    .type Fault_Handler, %function
    .thumb_func
Fault_Handler:
    movs r0, #ARMV7M_FAULT_EXIT_CODE
    bl ep_freertos_exit_now
    .size Fault_Handler, . - Fault_Handler

/* Must stay exactly ARMV7M_SYSTICK_HANDLER_INSNS narrow instructions (cycles.c). */
    .section .text.SysTick_Handler, "ax", %progbits
    .global SysTick_Handler
    .type SysTick_Handler, %function
    .thumb_func
SysTick_Handler:
    ldr.n r0, 1f
    ldr.n r1, [r0]
    adds.n r1, #1
    str.n r1, [r0]
    bx lr
    .if . - SysTick_Handler - 2 * ARMV7M_SYSTICK_HANDLER_INSNS
    .error "SysTick_Handler is not ARMV7M_SYSTICK_HANDLER_INSNS narrow instructions"
    .endif
    .balign 4
1:  .word armv7m_systick_wraps
    .size SysTick_Handler, . - SysTick_Handler
