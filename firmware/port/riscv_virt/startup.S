/*
 * startup.S — reset of the bare-metal RISC-V port (QEMU virt, -bios none).
 *
 * Every hart enters _start at once (QEMU -smp N), with a0 = mhartid and
 * a1 = the address of the device tree QEMU built (its reset vector does that).
 * Hart 0 is the fabric controller: it takes the stack from link.ld.in, enables
 * the FPU (mstatus.FS), copies .data and .tdata from their load images, zeroes
 * .tbss and .bss, points tp at its TLS block (picolibc keeps errno there),
 * records the device tree for cluster.c and calls main(0, NULL).
 * Harts 1..N-1 (the GAP9 cluster cores) park in a wfi loop with only the
 * machine software interrupt enabled in mie (mstatus.MIE stays 0: a pending
 * interrupt ends wfi but is never taken as a trap). They touch no memory until
 * hart 0 first raises their CLINT msip, which it does only once memory is set
 * up (cluster.c); then each takes its own stack in the cluster L1 region
 * (link.ld.in) and enters rv_cluster_worker(hartid), which never returns.
 * Under -icount a parked hart executes no instructions.
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

    /* UART FIFOs on before anything else: turning them on clears them, and the host
     * may send as soon as it is attached (QEMU starts the core then); from here on
     * its bytes wait in the FIFO while memory is set up. */
    li t0, RV_UART_BASE
    li t1, RV_UART_FCR_ENABLE_CLEAR
    sb t1, RV_UART_FCR(t0)

    mv s1, a1                   /* the device tree, kept for rv_boot_fdt */
    la t0, trap_handler
    csrw mtvec, t0
    la sp, __stack_top

    RV_INIT_MEMORY
    la t0, rv_boot_fdt
    sw s1, 0(t0)

    li a0, 0
    li a1, 0
    call main
    call ep_port_exit

/* harts 1..N-1: wait for the first software interrupt (t0 = mhartid) */
park:
    la t1, trap_handler
    csrw mtvec, t1
    li t1, RV_MIP_MSIP
    csrw mie, t1
1:  wfi
    csrr t2, mip
    and t2, t2, t1
    beqz t2, 1b
    /* memory is set up: the FPU, then sp = top of this core's L1 stack */
    li t1, RV_MSTATUS_FS_INITIAL
    csrs mstatus, t1
    fscsr zero
    addi t1, t0, -1             /* cluster core index */
    li t2, RV_CLUSTER_STACK_BYTES
    mul t1, t1, t2
    la sp, __cluster_stacks_top
    sub sp, sp, t1
    mv a0, t0
    call rv_cluster_worker
    j ep_port_exit
    .size _start, . - _start

    .section .text.trap_handler, "ax", @progbits
    .balign 4
    .type trap_handler, @function
trap_handler:
    li a0, RV_TRAP_EXIT_CODE
    call ep_port_exit
    .size trap_handler, . - trap_handler
