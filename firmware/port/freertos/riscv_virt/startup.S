/*
 * startup.S — reset of the FreeRTOS port on QEMU's RISC-V `virt` (board gap9).
 *
 * As the bare-metal port does (../../riscv_virt/startup.S): every hart enters
 * _start; harts 1..N-1 (the GAP9 cluster cores) park in wfi with every
 * interrupt masked. Hart 0 (the fabric controller) turns the UART FIFOs on
 * first (see below), enables the FPU
 * (mstatus.FS, inherited by every task), copies .data and .tdata, zeroes
 * .tbss and .bss, points tp at its TLS block (picolibc's errno), points mtvec
 * at the kernel's trap entry (freertos_risc_v_trap_handler: tick, ecall
 * yields, and target.c's handlers for the UART interrupt and for exceptions)
 * and calls ep_freertos_start(). Until the scheduler starts it runs on
 * __stack_top; interrupts then use the kernel's ISR stack.
 */
#include "riscv_virt.h"

    .section .text.start, "ax", @progbits
    .global _start
    .type _start, @function
_start:
    csrw mie, zero
    csrr t0, mhartid
    bnez t0, park

    /* UART FIFOs on before anything else: turning them on clears them, and the
     * host may send as soon as it is attached (QEMU starts the core then).
     * Bytes that arrive from here on wait in the FIFO for the train task. */
    li t0, RV_UART_BASE
    li t1, RV_UART_FCR_ENABLE_CLEAR
    sb t1, RV_UART_FCR(t0)

    la t0, freertos_risc_v_trap_handler
    csrw mtvec, t0
    la sp, __stack_top

    RV_INIT_MEMORY
    call ep_freertos_start

park:
    wfi
    j park
    .size _start, . - _start
