/*
 * ep_freertos.h — the FreeRTOS port of the device application (docs/rtos.md).
 *
 * The runtime core and the app (firmware/runtime, firmware/app) are built
 * unchanged; this port runs the app's command loop (app/main.c's main()) in a
 * FreeRTOS task and gives it ep_port.h on top of kernel objects:
 *
 *   UART RX interrupt ──► rx stream buffer ──► "train" task (priority 2):
 *                                              main(): frame receiver, ep_app_handle,
 *                                              the runtime (forward/backward/update)
 *   "train" task ──► tx stream buffer ──► "tx" task (priority 1): every response
 *                                         (losses, accuracy, cycles: the metrics)
 *                                         goes out on the UART from here
 *   idle task (priority 0): wfi until the next interrupt
 *
 * Every kernel object is created statically (configSUPPORT_STATIC_ALLOCATION 1,
 * configSUPPORT_DYNAMIC_ALLOCATION 0): there is no FreeRTOS heap, and the
 * runtime's arena and staging buffer stay the app's static arrays.
 *
 * Contracts between the shared part (ep_freertos.c) and a target folder
 * (mps2/, riscv_virt/: startup, UART registers, interrupt controller, tick
 * timer, cycles, exit):
 *   - the target's reset code sets up C and calls ep_freertos_start(), which
 *     calls ep_freertos_uart_init() first: the UART receives from then on
 *     (as early after reset as on bare metal), its interrupt still masked;
 *   - ep_port_init() (target, called by the app in the train task) routes and
 *     unmasks the UART receive interrupt, then starts the cycle counter;
 *   - the target's UART interrupt handler calls ep_freertos_rx_isr() and then
 *     yields if it returns pdTRUE;
 *   - ep_port_exit() (target) calls ep_freertos_flush_tx() first when called
 *     from a task, so the response before an EXIT is on the wire.
 */
#ifndef EP_FREERTOS_H
#define EP_FREERTOS_H

#include <stdbool.h>
#include <stdint.h>

#include "FreeRTOS.h"

/** Exit code when a configASSERT fails or a task overflows its stack. */
#define EP_FREERTOS_ASSERT_EXIT_CODE 254

/** Create the tasks and stream buffers (static) and start the scheduler. Never returns. */
_Noreturn void ep_freertos_start(void);

/**
 * Body of the UART receive interrupt: move every byte the UART holds into the
 * rx stream buffer. When the buffer is full it masks the receive interrupt and
 * leaves the byte in the UART, so the emulator (or the sender, through flow
 * control) waits instead of losing bytes; the train task unmasks it once it has
 * made room. Returns pdTRUE if a task of higher priority was woken.
 */
BaseType_t ep_freertos_rx_isr(void);

/** Block the calling task until the tx task has handed every queued byte to the UART
 *  (returns at once outside a task or before the scheduler runs). */
void ep_freertos_flush_tx(void);

/** configASSERT failures and stack overflows end here: exit with EP_FREERTOS_ASSERT_EXIT_CODE. */
_Noreturn void ep_freertos_fatal(void);

/* ---- implemented by the target folder ------------------------------------ */

/** Set the UART up (baud, framing, FIFOs; transmitter and receiver on), receive interrupt masked. */
void ep_freertos_uart_init(void);

/** Next byte waiting in the UART receiver (0..255), or -1. Interrupt context. */
int ep_freertos_uart_rx_byte(void);

/** Mask (false) or unmask (true) the UART receive interrupt. Called with interrupts masked. */
void ep_freertos_uart_rx_irq(bool on);

/** Polled transmit of len bytes (used by the tx task, and before the scheduler runs). */
void ep_freertos_uart_write(const uint8_t *buf, uint32_t len);

/** True while an interrupt or exception handler is running. */
bool ep_freertos_in_isr(void);

/** End the program at once with `code` (no flush): faults and failed assertions. */
_Noreturn void ep_freertos_exit_now(int code);

/** Sleep until the next interrupt (the idle task). */
void ep_freertos_wait_for_interrupt(void);

#endif /* EP_FREERTOS_H */
