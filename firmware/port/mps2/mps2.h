/*
 * mps2.h — the CMSDK APB UART of the Arm MPS2/MPS3 FPGA images (AN386 Cortex-M4F,
 * AN500 Cortex-M7, AN547 Cortex-M55) and their QEMU machines, as plain integers.
 * Cortex-M System Design Kit TRM, 4.3. The core registers are in
 * ../armv7m/armv7m.h.
 *
 * Board settings (-D flags from the [port_settings] table of boards/<board>/board.toml):
 *   MPS2_UART0_BASE   the first serial line's UART (QEMU `-serial`): 0x40004000
 *                     on MPS2 (AN386, AN500), 0x49303000 on the MPS3 AN547
 *   MPS2_UART_CLOCK_HZ  the UART's APB clock (BAUDDIV = clock / baud)
 */
#ifndef EP_MPS2_H
#define EP_MPS2_H

#ifndef MPS2_UART0_BASE
#error "MPS2_UART0_BASE is a board setting: add it to the [port_settings] table of board.toml"
#endif
#ifndef MPS2_UART_CLOCK_HZ
#error "MPS2_UART_CLOCK_HZ is a board setting: add it to the [port_settings] table of board.toml"
#endif

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

#endif /* EP_MPS2_H */
