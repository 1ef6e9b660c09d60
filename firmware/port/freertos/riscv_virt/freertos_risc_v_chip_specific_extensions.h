/*
 * freertos_risc_v_chip_specific_extensions.h — what the kernel's RISC-V port
 * (GCC/RISC-V/portContext.h, found on the assembler's include path) must know
 * about this core: a SiFive-style CLINT with mtime, and the F extension.
 *
 * The kernel saves the integer registers only. The runtime computes in float
 * registers (ilp32f) and is preempted by the tick, the UART interrupt and the
 * tx task, so every context switch saves and restores f0–f31 and fcsr here:
 * 33 words, rounded to an even count as the port requires, stored above the
 * word that holds mepc (the layout the kernel's own example for the
 * Pulpino/Vega core uses). mstatus.FS stays on (set at reset, inherited by
 * every task's initial mstatus), so these loads and stores never trap.
 */
#ifndef __FREERTOS_RISC_V_EXTENSIONS_H__
#define __FREERTOS_RISC_V_EXTENSIONS_H__

#define portasmHAS_SIFIVE_CLINT 1
#define portasmHAS_MTIME 1
#define portasmADDITIONAL_CONTEXT_SIZE 34 /* f0..f31, fcsr, padding: must be even */

.macro portasmSAVE_ADDITIONAL_REGISTERS
    addi sp, sp, -(portasmADDITIONAL_CONTEXT_SIZE * portWORD_SIZE)
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    fsw f\n, (1 + \n) * portWORD_SIZE(sp)
    .endr
    csrr t0, fcsr
    sw t0, 33 * portWORD_SIZE(sp)
.endm

.macro portasmRESTORE_ADDITIONAL_REGISTERS
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    flw f\n, (1 + \n) * portWORD_SIZE(sp)
    .endr
    lw t0, 33 * portWORD_SIZE(sp)
    csrw fcsr, t0
    addi sp, sp, (portasmADDITIONAL_CONTEXT_SIZE * portWORD_SIZE)
.endm

#endif /* __FREERTOS_RISC_V_EXTENSIONS_H__ */
