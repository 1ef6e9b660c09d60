/*
 * startup.S — vector table and reset shared by the bare-metal Arm ports (armv7m.h).
 *
 * Reset_Handler enables the FPU first (the C code is built for hard float),
 * copies .data from its load image, zeroes .bss and calls main(0, NULL); the
 * symbols come from link.ld.in. SysTick_Handler counts SysTick wraps for
 * ep_port_cycles() (cycles.c); every other exception ends the program with
 * ARMV7M_FAULT_EXIT_CODE. No external interrupt is enabled, so the table stops
 * after the system exceptions.
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
    .word Fault_Handler     /* SVCall */
    .word Fault_Handler     /* DebugMonitor */
    .word 0
    .word Fault_Handler     /* PendSV */
    .word SysTick_Handler

    .section .text.Reset_Handler, "ax", %progbits
    .global Reset_Handler
    .type Reset_Handler, %function
    .thumb_func
Reset_Handler:
    ARMV7M_INIT_MEMORY

    movs r0, #0
    movs r1, #0
    bl main
    bl ep_port_exit
    .size Reset_Handler, . - Reset_Handler

    .section .text.Fault_Handler, "ax", %progbits
    .type Fault_Handler, %function
    .thumb_func
Fault_Handler:
    movs r0, #ARMV7M_FAULT_EXIT_CODE
    bl ep_port_exit
    .size Fault_Handler, . - Fault_Handler

/* Under -icount, cycles.c subtracts this handler's instructions from the cycle
 * count, so it must stay exactly ARMV7M_SYSTICK_HANDLER_INSNS narrow instructions. */
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
