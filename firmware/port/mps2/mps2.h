/*
 * mps2.h — registers the mps2 port uses, as plain integers (no C suffixes) so
 * that startup.S can include this file too. Arm MPS2/MPS3 FPGA images (AN386
 * Cortex-M4F, AN500 Cortex-M7) and their QEMU machines.
 *
 * Arm ARMv7-M system control space (ARMv7-M ARM, B3.2) and the CMSDK APB UART
 * (Cortex-M System Design Kit TRM, 4.3); UART0 is the board's first serial line
 * (QEMU `-serial`).
 */
#ifndef EP_MPS2_H
#define EP_MPS2_H

/* System control block */
#define MPS2_SCB_ICSR 0xE000ED04 /* interrupt control and state */
#define MPS2_ICSR_PENDSTSET (1 << 26) /* SysTick exception pending */
#define MPS2_SCB_AIRCR 0xE000ED0C
#define MPS2_AIRCR_RESET (0x05FA << 16 | 1 << 2) /* VECTKEY | SYSRESETREQ */
#define MPS2_SCB_CPACR 0xE000ED88
#define MPS2_CPACR_FPU_FULL (0xF << 20) /* CP10 and CP11: full access */

/* SysTick: a 24-bit down counter */
#define MPS2_SYST_CSR 0xE000E010
#define MPS2_SYST_RVR 0xE000E014
#define MPS2_SYST_CVR 0xE000E018
#define MPS2_SYST_CSR_ENABLE (1 << 0)
#define MPS2_SYST_CSR_TICKINT (1 << 1)
#define MPS2_SYST_CSR_CLKSOURCE_CPU (1 << 2)
#define MPS2_SYST_RELOAD 0xFFFFFF
#define MPS2_SYST_PERIOD_LOG2 24 /* ticks per wrap = RELOAD + 1 */
#define MPS2_SYSTICK_HANDLER_INSNS 5 /* instructions of SysTick_Handler (startup.S) */

/* CMSDK APB UART0 */
#define MPS2_UART0_BASE 0x40004000
#define MPS2_UART_DATA 0x00
#define MPS2_UART_STATE 0x04
#define MPS2_UART_CTRL 0x08
#define MPS2_UART_BAUDDIV 0x10
#define MPS2_UART_STATE_TX_FULL (1 << 0)
#define MPS2_UART_STATE_RX_FULL (1 << 1)
#define MPS2_UART_CTRL_TX_EN (1 << 0)
#define MPS2_UART_CTRL_RX_EN (1 << 1)
#define MPS2_UART_BAUDDIV_MIN 16 /* smaller values leave TX stuck */
#define MPS2_UART_BAUD 115200

/* Arm semihosting (Semihosting for AArch32 and AArch64, v2) */
#define MPS2_SEMIHOSTING_SYS_EXIT_EXTENDED 0x20
#define MPS2_SEMIHOSTING_APPLICATION_EXIT 0x20026 /* ADP_Stopped_ApplicationExit */

/* Exit code of a fault (HardFault and every other unexpected exception). */
#define MPS2_FAULT_EXIT_CODE 255

#endif /* EP_MPS2_H */
