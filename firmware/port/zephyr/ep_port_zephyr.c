/*
 * ep_port_zephyr.c — ep_port.h on Zephyr (CONFIG_EDGEPROP_ZEPHYR_PORT; docs/rtos.md).
 *
 * The UART is the devicetree's chosen `edgeprop,uart`, else `zephyr,console`
 * (then turn the console off: CONFIG_CONSOLE=n, CONFIG_BOOT_BANNER=n, as the
 * sample's prj.conf does, or log lines would interleave with frames).
 *
 * Receive: interrupt-driven (uart_irq_callback_user_data_set): the callback
 * moves bytes from the UART FIFO into a ring buffer and gives a semaphore; the
 * training thread (the application's thread running ep_app_main) takes them in
 * ep_port_getc and sleeps on the semaphore in ep_port_idle, at most
 * CONFIG_EDGEPROP_IDLE_POLL_MS so the frame receiver's timeout still runs.
 * When the ring is full the callback masks the receive interrupt and leaves
 * bytes in the UART (backpressure, nothing is dropped); the reader drains the
 * UART itself (uart_poll_in, interrupts locked) and unmasks it.
 * Transmit: uart_poll_out (responses are short and the protocol is
 * request/response; the training thread has nothing else to do meanwhile).
 * Cycles: the kernel's hardware cycle counter, extended to 64 bits.
 * Exit: Arm semihosting SYS_EXIT_EXTENDED when CONFIG_ARM (QEMU with
 * -semihosting-config enable=on, as host/emulator.py starts MPS2 boards), else
 * the thread stops. Non-volatile storage: none (size 0) — a Zephyr flash-area
 * backend would go here.
 */
#include <zephyr/device.h>
#include <zephyr/drivers/uart.h>
#include <zephyr/irq.h>
#include <zephyr/kernel.h>
#include <zephyr/sys/ring_buffer.h>

#include "ep_port.h"

#if DT_HAS_CHOSEN(edgeprop_uart)
#define EP_UART_NODE DT_CHOSEN(edgeprop_uart)
#else
#define EP_UART_NODE DT_CHOSEN(zephyr_console)
#endif

static const struct device *const uart = DEVICE_DT_GET(EP_UART_NODE);

RING_BUF_DECLARE(rx_ring, EP_ZEPHYR_RX_BUFFER_BYTES);
K_SEM_DEFINE(rx_ready, 0, 1);
static volatile bool rx_masked;

static void uart_cb(const struct device *dev, void *user_data)
{
	ARG_UNUSED(user_data);
	bool got = false;

	if (!uart_irq_update(dev) || !uart_irq_rx_ready(dev)) {
		return;
	}
	for (;;) {
		uint8_t c;

		if (ring_buf_space_get(&rx_ring) == 0) {
			uart_irq_rx_disable(dev); /* backpressure: bytes wait in the UART */
			rx_masked = true;
			break;
		}
		if (uart_fifo_read(dev, &c, 1) != 1) {
			break;
		}
		ring_buf_put(&rx_ring, &c, 1);
		got = true;
	}
	if (got) {
		k_sem_give(&rx_ready);
	}
}

void ep_port_init(int argc, char **argv)
{
	ARG_UNUSED(argc);
	ARG_UNUSED(argv);
	if (!device_is_ready(uart) || uart_irq_callback_user_data_set(uart, uart_cb, NULL) != 0) {
		ep_port_exit(2); /* no UART, or its driver has no interrupt API */
	}
	uart_irq_rx_enable(uart);
}

/* Called by the reader after it made room: take what waits in the UART, unmask. */
static void rx_resume(void)
{
	unsigned int key = irq_lock();
	unsigned char c;

	while (ring_buf_space_get(&rx_ring) > 0 && uart_poll_in(uart, &c) == 0) {
		ring_buf_put(&rx_ring, &c, 1);
	}
	if (ring_buf_space_get(&rx_ring) > 0) {
		rx_masked = false;
		uart_irq_rx_enable(uart);
	}
	irq_unlock(key);
}

int ep_port_getc(void)
{
	uint8_t c;
	unsigned int key = irq_lock(); /* one reader, one writer (the callback): keep it simple */
	uint32_t n = ring_buf_get(&rx_ring, &c, 1);

	irq_unlock(key);
	if (n == 0) {
		return -1;
	}
	if (rx_masked) {
		rx_resume();
	}
	return c;
}

void ep_port_idle(void)
{
	(void)k_sem_take(&rx_ready, K_MSEC(EP_ZEPHYR_IDLE_POLL_MS));
}

void ep_port_write(const uint8_t *buf, uint32_t len)
{
	for (uint32_t i = 0; i < len; i++) {
		uart_poll_out(uart, buf[i]);
	}
}

uint64_t ep_port_cycles(void)
{
#ifdef CONFIG_TIMER_HAS_64BIT_CYCLE_COUNTER
	return k_cycle_get_64();
#else
	/* 32-bit counter: count its wraps; the app reads the clock at least every
	 * CONFIG_EDGEPROP_IDLE_POLL_MS and around every step, far below one wrap */
	static uint32_t last, high;
	unsigned int key = irq_lock();
	uint32_t now = k_cycle_get_32();

	if (now < last) {
		high++;
	}
	last = now;
	uint64_t v = ((uint64_t)high << 32) | now;

	irq_unlock(key);
	return v;
#endif
}

FUNC_NORETURN void ep_port_exit(int code)
{
#if defined(CONFIG_ARM)
	uint32_t block[2] = {0x20026 /* ADP_Stopped_ApplicationExit */, (uint32_t)code};
	register uint32_t op __asm__("r0") = 0x20; /* SYS_EXIT_EXTENDED */
	register uint32_t *arg __asm__("r1") = block;

	__asm__ volatile("bkpt 0xAB" : : "r"(op), "r"(arg) : "memory");
#else
	ARG_UNUSED(code);
#endif
	for (;;) {
		k_sleep(K_FOREVER);
	}
}

uint32_t ep_port_nv_size(void)
{
	return 0;
}

uint32_t ep_port_nv_page_bytes(void)
{
	return 0;
}

int ep_port_nv_read(uint32_t off, uint8_t *buf, uint32_t len)
{
	ARG_UNUSED(off);
	ARG_UNUSED(buf);
	ARG_UNUSED(len);
	return -1;
}

int ep_port_nv_erase(uint32_t page)
{
	ARG_UNUSED(page);
	return -1;
}

int ep_port_nv_write(uint32_t off, const uint8_t *buf, uint32_t len)
{
	ARG_UNUSED(off);
	ARG_UNUSED(buf);
	ARG_UNUSED(len);
	return -1;
}

/* No L3 tier on the Zephyr boards: size 0, blobs with L3 tensors are refused. */
#include "ep_l3_none.h"
