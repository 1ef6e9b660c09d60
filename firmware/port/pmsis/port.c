/*
 * port.c — ep_port.h on real GAP9 hardware, through the GAP SDK's PMSIS API.
 *
 * The emulated gap9 (QEMU virt, firmware/port/riscv_virt) reaches its 16550 UART
 * and mcycle directly; the chip has neither. Here the fabric controller talks to
 * the host over the SDK's UART driver and counts cycles with its performance
 * counter:
 *   - UART: opened once (pi_uart_open, EP_PMSIS_BAUD, 8N1); received bytes land in
 *     a ring buffer through a chain of 1-byte asynchronous reads whose callback
 *     (run by the PMSIS event kernel on the FC) stores the byte and arms the next,
 *     so ep_port_getc() never blocks; writes are blocking pi_uart_write calls;
 *   - cycles: the FC's PI_PERF_CYCLES counter (32 bits), widened to 64 bits on
 *     every read; reads closer than 2^32 cycles (11.6 s at 370 MHz) apart keep
 *     the count exact, and the application reads it on every loop turn;
 *   - idle: pi_yield(), which lets the event kernel run the UART callbacks;
 *   - exit: pmsis_exit().
 * main() is PMSIS's: pmsis_kickoff() starts the OS, then app_main.c runs the
 * device loop of firmware/app/main.c. Built by this folder's Makefile with the
 * SDK (make firmware-pmsis); this repository's CI has no SDK and only checks
 * that the port compiles against the PMSIS API headers (tests/test_pmsis_port.py).
 */
#include <stdint.h>

#include "ep_port.h"
#include "pmsis.h"

#ifndef EP_PMSIS_BAUD
#define EP_PMSIS_BAUD 115200u
#endif
/* bytes the ring holds between two ep_port_getc() turns (a power of two) */
#define RX_RING 4096u
_Static_assert((RX_RING & (RX_RING - 1)) == 0, "RX_RING must be a power of two");

static struct pi_device uart;
static struct pi_uart_conf uart_conf;
static pi_task_t rx_task;
static uint8_t rx_byte;
static uint8_t rx_ring[RX_RING];
static volatile uint32_t rx_head, rx_tail; /* written by the callback / by ep_port_getc */
static volatile uint32_t rx_dropped;       /* bytes lost to a full ring (the link's CRC catches them) */

static uint32_t perf_last;
static uint64_t perf_high;

static void rx_arm(void);

/* The event kernel's callback for one received byte: keep it, read the next. */
static void rx_done(void *arg) {
    (void)arg;
    const uint32_t head = rx_head;
    if (head - rx_tail < RX_RING) {
        rx_ring[head & (RX_RING - 1)] = rx_byte;
        rx_head = head + 1;
    } else {
        rx_dropped++;
    }
    rx_arm();
}

static void rx_arm(void) {
    pi_uart_read_async(&uart, &rx_byte, 1, pi_task_callback(&rx_task, rx_done, NULL));
}

void ep_port_init(int argc, char **argv) {
    (void)argc;
    (void)argv;
    pi_uart_conf_init(&uart_conf);
    uart_conf.baudrate_bps = EP_PMSIS_BAUD;
    uart_conf.enable_rx = 1;
    uart_conf.enable_tx = 1;
    pi_open_from_conf(&uart, &uart_conf);
    if (pi_uart_open(&uart) != 0) {
        pmsis_exit(1); /* no UART, no host: nothing this firmware can do */
    }
    rx_arm();
    pi_perf_conf(1u << PI_PERF_CYCLES);
    pi_perf_reset();
    pi_perf_start();
    perf_last = 0;
    perf_high = 0;
}

int ep_port_getc(void) {
    const uint32_t tail = rx_tail;
    if (tail == rx_head) {
        return -1;
    }
    const uint8_t c = rx_ring[tail & (RX_RING - 1)];
    rx_tail = tail + 1;
    return c;
}

void ep_port_write(const uint8_t *buf, uint32_t len) {
    if (len != 0) {
        pi_uart_write(&uart, (void *)buf, len);
    }
}

uint64_t ep_port_cycles(void) {
    const uint32_t now = (uint32_t)pi_perf_read(PI_PERF_CYCLES);
    if (now < perf_last) { /* the 32-bit counter wrapped since the last read */
        perf_high += (uint64_t)1 << 32;
    }
    perf_last = now;
    return perf_high | now;
}

void ep_port_idle(void) {
    pi_yield();
}

_Noreturn void ep_port_exit(int code) {
    pmsis_exit(code);
    for (;;) {
    }
}
