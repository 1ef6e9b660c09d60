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
 *   EP_L3_BYTES       bytes of L3 memory for tensors ([runtime] l3_bytes; 0 if the
 *                     board has none, the default)
 *   EP_L3_REGION      (boards with an [memory] l3 region) the linker script has an
 *                     `.l3` section in that memory-mapped region: EP_L3_SECTION puts
 *                     data there (ep_l3_mapped.h's array, the app's staging buffer)
 * plus the port's own settings from the board's [port_settings] table.
 */
#ifndef EP_PORT_H
#define EP_PORT_H

#include <stdint.h>

#ifndef EP_L3_BYTES
#define EP_L3_BYTES 0
#endif

/* Places a static object in the board's L3 region where the linker script has one. */
#if defined(EP_L3_REGION) && EP_L3_REGION
#define EP_L3_SECTION __attribute__((section(".l3")))
#else
#define EP_L3_SECTION
#endif

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

/*
 * Non-volatile storage with flash semantics (used by firmware/app/ep_ckpt.c).
 *
 * The storage is ep_port_nv_size() bytes in pages of ep_port_nv_page_bytes().
 * Like NOR flash: erasing a page sets all its bytes to 0xFF; programming can
 * only clear bits (the stored byte becomes old & new), so a byte is written
 * once per erase. A reset at any moment leaves every byte either as it was,
 * or as the interrupted operation would have left it, or (for the byte being
 * programmed or the page being erased) something in between: callers commit
 * data by programming a checksummed header last.
 *
 * Where it lives: posix — the file given with `--nv FILE`; emulated Arm and
 * RISC-V boards — the host file `edgeprop-nv.bin` in the emulator's working
 * directory, through semihosting (host/emulator.py picks the directory); real
 * STM32F4 boards — the flash sectors the board names, or none. A port without
 * storage reports size 0 and refuses every call.
 */

/** Bytes of non-volatile storage, 0 when the port has none. */
uint32_t ep_port_nv_size(void);

/** Erase granularity in bytes (a power of two dividing ep_port_nv_size()); 0 without storage. */
uint32_t ep_port_nv_page_bytes(void);

/** Read [off, off + len). 0 on success, -1 out of range or on an I/O error. */
__attribute__((warn_unused_result)) int ep_port_nv_read(uint32_t off, uint8_t *buf, uint32_t len);

/** Erase page `page` (bytes [page·P, (page+1)·P) become 0xFF). 0 on success, -1 on error. */
__attribute__((warn_unused_result)) int ep_port_nv_erase(uint32_t page);

/** Program [off, off + len): each stored byte becomes old & buf[i]. 0 on success, -1 on error. */
__attribute__((warn_unused_result)) int ep_port_nv_write(uint32_t off, const uint8_t *buf, uint32_t len);

/*
 * L3 memory: where persistent tensors that do not fit the arena live (the
 * runtime's ep_l3_t; the app builds one from these three functions). On GAP9
 * hardware it is the external HyperRAM behind the uDMA (pmsis: pi_ram_*), not
 * memory-mapped, so the runtime and app only ever copy to and from it. The
 * emulated gap9 and the native build keep it in an ordinary array
 * (ep_l3_mapped.h: on gap9 in the board's L3 region of DRAM); ports without it
 * report 0 (ep_l3_none.h). Contents are undefined at boot: installing a model
 * writes every L3 tensor.
 *
 * Callers guarantee [off, off + n) ⊆ [0, ep_port_l3_size()) (the runtime
 * checked every L3 tensor at parse time) and an ordinary-memory buffer of n bytes.
 */

/** Bytes of L3 memory (EP_L3_BYTES where the port has it), 0 when the port has none. */
uint32_t ep_port_l3_size(void);

/** Copy L3 [off, off + n) into dst. Blocks until the copy is done. */
void ep_port_l3_read(uint32_t off, void *dst, uint32_t n);

/** Copy src into L3 [off, off + n). Blocks until the copy is done. */
void ep_port_l3_write(uint32_t off, const void *src, uint32_t n);

#endif /* EP_PORT_H */
