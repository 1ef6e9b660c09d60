/*
 * armv7m.h — the Arm M-profile core registers the bare-metal ports share, as
 * plain integers (no C suffixes) so that startup.S can include this file too.
 * The same addresses hold on ARMv7-M (Cortex-M4F, M7) and ARMv8.1-M (Cortex-M55).
 *
 * System control space: ARMv7-M ARM B3.2; semihosting: "Semihosting for AArch32
 * and AArch64", v2.
 */
#ifndef EP_ARMV7M_H
#define EP_ARMV7M_H

/* System control block */
#define ARMV7M_SCB_ICSR 0xE000ED04 /* interrupt control and state */
#define ARMV7M_ICSR_PENDSTSET (1 << 26) /* SysTick exception pending */
#define ARMV7M_SCB_AIRCR 0xE000ED0C
#define ARMV7M_AIRCR_RESET (0x05FA << 16 | 1 << 2) /* VECTKEY | SYSRESETREQ */
#define ARMV7M_SCB_CPACR 0xE000ED88
#define ARMV7M_CPACR_FPU_FULL (0xF << 20) /* CP10 and CP11: full access */

/* SysTick: a 24-bit down counter */
#define ARMV7M_SYST_CSR 0xE000E010
#define ARMV7M_SYST_RVR 0xE000E014
#define ARMV7M_SYST_CVR 0xE000E018
#define ARMV7M_SYST_CSR_ENABLE (1 << 0)
#define ARMV7M_SYST_CSR_TICKINT (1 << 1)
#define ARMV7M_SYST_CSR_CLKSOURCE_CPU (1 << 2)
#define ARMV7M_SYST_RELOAD 0xFFFFFF
#define ARMV7M_SYST_PERIOD_LOG2 24 /* ticks per wrap = RELOAD + 1 */
#define ARMV7M_SYSTICK_HANDLER_INSNS 5 /* instructions of SysTick_Handler (startup.S) */

/* Arm semihosting */
#define ARMV7M_SEMIHOSTING_SYS_EXIT_EXTENDED 0x20
#define ARMV7M_SEMIHOSTING_APPLICATION_EXIT 0x20026 /* ADP_Stopped_ApplicationExit */

/* Exit code of a fault (HardFault and every other unexpected exception). */
#define ARMV7M_FAULT_EXIT_CODE 255

#ifndef __ASSEMBLER__
/** Start the SysTick cycle counter of ep_port_cycles(); ports call it last in ep_port_init. */
void armv7m_cycles_start(void);
#else
/* The memory set-up every Arm reset handler runs first (bare metal, armv7m/startup.S, and
 * FreeRTOS, freertos/mps2/startup.S): full access to the FPU, .data copied from its load
 * image, .bss zeroed. Uses r0-r3. */
.macro ARMV7M_INIT_MEMORY
    ldr r0, =ARMV7M_SCB_CPACR
    ldr r1, [r0]
    orr r1, r1, #ARMV7M_CPACR_FPU_FULL
    str r1, [r0]
    dsb
    isb

    ldr r0, =__data_start
    ldr r1, =__data_end
    ldr r2, =__data_load
1:  cmp r0, r1
    ittt lo
    ldrlo r3, [r2], #4
    strlo r3, [r0], #4
    blo 1b

    ldr r0, =__bss_start
    ldr r1, =__bss_end
    movs r3, #0
2:  cmp r0, r1
    itt lo
    strlo r3, [r0], #4
    blo 2b
.endm
#endif

#endif /* EP_ARMV7M_H */
