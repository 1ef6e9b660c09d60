/*
 * FreeRTOSConfig.h — FreeRTOS on the gap9 board as emulated here (QEMU riscv32
 * `virt`, hart 0 = the GAP9 fabric controller, rv32imafc/ilp32f), kernel port
 * GCC/RISC-V with this folder's freertos_risc_v_chip_specific_extensions.h
 * (CLINT machine timer; f0–f31 and fcsr saved with every task context).
 * Shared settings: ../FreeRTOSConfig_common.h.
 *
 * Interrupts: the CLINT machine timer of hart 0 is the kernel tick (the kernel's
 * own handler); the 16550 UART's receive interrupt (PLIC source 10, hart 0
 * M-mode context) feeds the rx stream buffer (target.c). Interrupt handlers run
 * on their own static stack (configISR_STACK_SIZE_WORDS).
 */
#ifndef FREERTOS_CONFIG_H
#define FREERTOS_CONFIG_H

#include "FreeRTOSConfig_common.h"

/* The RISC-V port programs mtimecmp in mtime units: configCPU_CLOCK_HZ must be
 * the mtime rate, 10 MHz on QEMU virt (RISCV_ACLINT_DEFAULT_TIMEBASE_FREQ),
 * not the core clock (EP_CPU_HZ). On a GAP9 SoC it is the FC timer's clock. */
#define configCPU_CLOCK_HZ 10000000
#define configMTIME_BASE_ADDRESS 0x0200BFF8   /* CLINT mtime */
#define configMTIMECMP_BASE_ADDRESS 0x02004000 /* CLINT mtimecmp of hart 0 */

#define configISR_STACK_SIZE_WORDS 1024

#endif /* FREERTOS_CONFIG_H */
