/*
 * ep_port.h — what the device application needs from a platform.
 *
 * One implementation per folder under firmware/port/ (mps2: bare-metal Cortex-M
 * on the MPS2/MPS3 boards and QEMU; stm32f4: STM32F4 boards; both build with the
 * shared armv7m/ folder for startup, cycles and exit; posix: the native build
 * used by host-side tests). The runtime core (firmware/runtime) never calls the
 * port; only the application (firmware/app) does.
 *
 * Build-time settings every port receives as -D flags (from the board
 * description, boards/<board>/board.toml):
 *   EP_BOARD_NAME     string literal, e.g. "mps2-an386"
 *   EP_ARENA_BYTES    size of the static training arena
 *   EP_STAGING_BYTES  size of the model upload buffer
 *   EP_CPU_HZ         CPU clock used to turn cycles into milliseconds
 *   EP_ICOUNT_SHIFT   (emulated boards) QEMU -icount shift: report instructions
 *   EP_SEMIHOSTING    (emulated boards) the emulator takes Arm semihosting calls
 * plus the port's own settings from the board's [port_settings] table.
 */
#ifndef EP_PORT_H
#define EP_PORT_H

#include <stdint.h>

/**
 * Bring up clocks, the UART and the cycle counter. Called once, first, with the
 * program's command line: the posix port reads `--listen HOST:PORT` from it and
 * waits there for the first host; bare-metal ports get (0, NULL) and ignore it.
 */
void ep_port_init(int argc, char **argv);

/** Next received byte (0..255), or -1 at once if none is waiting. Never blocks. */
int ep_port_getc(void);

/** Send len bytes; returns when they are handed to the UART. */
void ep_port_write(const uint8_t *buf, uint32_t len);

/**
 * Monotonic CPU cycle count since ep_port_init. On emulated boards (QEMU
 * -icount) this is the exact count of executed instructions.
 */
uint64_t ep_port_cycles(void);

/** Called when ep_port_getc() had nothing: may sleep until the next interrupt. */
void ep_port_idle(void);

/** Stop the program with an exit code (semihosting on QEMU, exit() natively). */
_Noreturn void ep_port_exit(int code);

#endif /* EP_PORT_H */
