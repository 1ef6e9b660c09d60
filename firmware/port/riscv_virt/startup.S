/*
 * startup.S — reset of the bare-metal RISC-V port (QEMU virt, -bios none).
 *
 * Every hart enters _start at once (QEMU -smp N). Hart 0 is the fabric
 * controller: it takes the stack from link.ld.in, enables the FPU (mstatus.FS),
 * copies .data and .tdata from their load images, zeroes .tbss and .bss, points
 * tp at its TLS block (picolibc keeps errno there) and calls main(0, NULL).
 * Harts 1..N-1 (the GAP9 cluster cores) park in a wfi loop with every interrupt
 * source masked (mie = 0, mstatus.MIE = 0): they never touch memory, so they
 * cannot race the data copy, and under -icount they execute no instructions
 * once asleep. A cluster layer would give each its own stack and TLS block and
 * wake it with a CLINT software interrupt (see riscv_virt.h / the gap9 report).
 * Any trap ends the program with RV_TRAP_EXIT_CODE through the test finisher.
 */
#include "riscv_virt.h"

    .section .text.start, "ax", @progbits
    .global _start
    .type _start, @function
_start:
    .option push
    .option norelax
    csrw mie, zero
    csrr t0, mhartid
    bnez t0, park
    .option pop

    la t0, trap_handler
    csrw mtvec, t0
    la sp, __stack_top

    li t0, RV_MSTATUS_FS_INITIAL
    csrs mstatus, t0
    fscsr zero

    /* .data then .tdata: copy from the load image (LMA in FLASH) */
    la a0, __data_start
    la a1, __data_end
    la a2, __data_load
    call copy_words
    la a0, __tdata_start
    la a1, __tdata_end
    la a2, __tdata_load
    call copy_words

    /* .tbss, then .bss (contiguous): zero */
    la t0, __tbss_start
    la t1, __bss_end
2:  bgeu t0, t1, 3f
    sw zero, 0(t0)
    addi t0, t0, 4
    j 2b
3:
    la tp, __tls_base

    li a0, 0
    li a1, 0
    call main
    call ep_port_exit

/* copy words [a0, a1) from a2 */
copy_words:
    beq a0, a2, 2f
1:  bgeu a0, a1, 2f
    lw t0, 0(a2)
    sw t0, 0(a0)
    addi a0, a0, 4
    addi a2, a2, 4
    j 1b
2:  ret

/* harts 1..N-1: nothing can wake them (mie = 0); the loop only guards spurious wakeups */
park:
    wfi
    j park
    .size _start, . - _start

    .section .text.trap_handler, "ax", @progbits
    .balign 4
    .type trap_handler, @function
trap_handler:
    li a0, RV_TRAP_EXIT_CODE
    call ep_port_exit
    .size trap_handler, . - trap_handler
