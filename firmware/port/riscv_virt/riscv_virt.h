/*
 * riscv_virt.h — the bare-metal RISC-V port on QEMU's `virt` machine (board gap9:
 * the GAP9 fabric controller). Addresses come from the board's [port_settings]:
 * RV_UART_BASE (NS16550A UART0), RV_TEST_FINISHER (SiFive test device) and
 * RV_CLINT_BASE (the core-local interruptor: one msip word per hart).
 */
#ifndef RISCV_VIRT_H
#define RISCV_VIRT_H

/* 16550 registers (byte offsets, reg-shift 0 on virt) */
#define RV_UART_RBR 0 /* receive buffer (read) */
#define RV_UART_THR 0 /* transmit holding (write) */
#define RV_UART_IER 1
#define RV_UART_FCR 2
#define RV_UART_LCR 3
#define RV_UART_LSR 5
#define RV_UART_LSR_DR 0x01   /* a received byte is waiting */
#define RV_UART_LSR_THRE 0x20 /* transmit holding register empty */
#define RV_UART_FCR_ENABLE_CLEAR 0x07 /* FIFOs on, both cleared */
#define RV_UART_FCR_ENABLE 0x01       /* FIFOs on, contents kept */
#define RV_UART_LCR_8N1 0x03

/* SiFive test finisher: (code << 16) | FAIL ends QEMU with exit status `code`. */
#define RV_FINISHER_FAIL 0x3333

/* exit code of an unexpected trap (startup.S) */
#define RV_TRAP_EXIT_CODE 3

/* mstatus.FS = Initial: enables the F extension (the C code is built for ilp32f) */
#define RV_MSTATUS_FS_INITIAL 0x2000

/* mie/mip bit of the machine software interrupt (CLINT msip) */
#define RV_MIP_MSIP 0x8

/* mcycle per instruction, as a shift: under QEMU -icount shift=S (EP_ICOUNT_SHIFT)
 * mcycle is virtual ns, instructions << S; without it, cycles */
#ifdef EP_ICOUNT_SHIFT
#define RV_CYCLE_SHIFT EP_ICOUNT_SHIFT
#else
#define RV_CYCLE_SHIFT 0
#endif

/*
 * The cluster (cluster.c): harts 1..RV_CLUSTER_MAX_CORES are GAP9's cluster
 * cores 0..7. Each has a stack of RV_CLUSTER_STACK_BYTES in the L1 region of
 * link.ld.in (the kernels are leaf loops: a few hundred bytes of frame at most;
 * 4 KiB leaves room for libm calls).
 */
#define RV_CLUSTER_MAX_CORES 8
#define RV_CLUSTER_STACK_BYTES 4096

/* cluster.c: mcycle that turns-mode forks overlap, left out of ep_port_cycles() */
#ifndef __ASSEMBLER__
#include <stdint.h>
uint64_t rv_cluster_hidden(void);

/** The 64-bit mcycle of rv32 (high, low, high again until they agree). */
static inline uint64_t rv_mcycle64(void) {
    uint32_t hi, lo, hi2;
    do {
        __asm__ volatile("csrr %0, mcycleh" : "=r"(hi));
        __asm__ volatile("csrr %0, mcycle" : "=r"(lo));
        __asm__ volatile("csrr %0, mcycleh" : "=r"(hi2));
    } while (hi != hi2);
    return ((uint64_t)hi << 32) | lo;
}
#else
/* Copy the words [start, end) from load (nothing when they are one address). Uses t0, a0-a2. */
.macro RV_COPY_WORDS start, end, load
    la a0, \start
    la a1, \end
    la a2, \load
    beq a0, a2, 2f
1:  bgeu a0, a1, 2f
    lw t0, 0(a2)
    sw t0, 0(a0)
    addi a0, a0, 4
    addi a2, a2, 4
    j 1b
2:
.endm

/* The memory set-up every RISC-V startup runs on hart 0 (bare metal, riscv_virt/startup.S,
 * and FreeRTOS, freertos/riscv_virt/startup.S): the F extension on, .data and .tdata copied
 * from their load images, .tbss and .bss (contiguous) zeroed, tp at the TLS block
 * (picolibc keeps errno there). Uses t0, t1, a0-a2. */
.macro RV_INIT_MEMORY
    li t0, RV_MSTATUS_FS_INITIAL
    csrs mstatus, t0
    fscsr zero
    RV_COPY_WORDS __data_start, __data_end, __data_load
    RV_COPY_WORDS __tdata_start, __tdata_end, __tdata_load
    la t0, __tbss_start
    la t1, __bss_end
3:  bgeu t0, t1, 4f
    sw zero, 0(t0)
    addi t0, t0, 4
    j 3b
4:
    la tp, __tls_base
.endm
#endif

#endif /* RISCV_VIRT_H */
