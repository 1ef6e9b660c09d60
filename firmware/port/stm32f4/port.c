/*
 * port.c — ep_port.h on STM32F4 boards: a polled USART at 8N1, 115200 baud, on
 * the pins the board settings name (stm32f4.h). Cycles, startup and exit are
 * the shared bare-metal Arm code in ../armv7m/.
 *
 * The port leaves the clock tree as reset sets it (HSI, 16 MHz; the USART's bus
 * at 16 MHz too), so on hardware EP_CPU_HZ is 16 MHz. QEMU's netduinoplus2
 * models no RCC or GPIO (writes are ignored) and no baud rate; its CPU clock is
 * 168 MHz. Its USART drops received bytes until UE and RE are set, and holds
 * one byte (RXNE) until DR is read.
 */
#include <stdint.h>

#include "armv7m.h"
#include "ep_port.h"
#include "stm32f4.h"

#define REG(addr) (*(volatile uint32_t *)(uintptr_t)(addr))
#define RCC(off) REG(STM32_RCC_BASE + (off))
#define GPIO(off) REG(STM32_GPIOA_BASE + STM32_GPIO_PORT * STM32_GPIO_STRIDE + (off))
#define USART(off) REG(STM32_USART_BASE + (off))

/* BRR at 16× oversampling is the clock divided by the baud rate, rounded (RM0090 30.3.4) */
#define BRR ((STM32_USART_CLOCK_HZ + STM32_USART_BAUD / 2) / STM32_USART_BAUD)
_Static_assert(BRR >= 16 && BRR <= 0xFFFF, "USART clock out of range for 115200 baud");

static void pin_af(uint32_t pin) {
    uint32_t afr = pin < 8 ? STM32_GPIO_AFRL : STM32_GPIO_AFRL + 4;
    uint32_t shift = (pin % 8) * 4;
    GPIO(afr) = (GPIO(afr) & ~(0xFu << shift)) | ((uint32_t)STM32_GPIO_AF << shift);
    GPIO(STM32_GPIO_PUPDR) = (GPIO(STM32_GPIO_PUPDR) & ~(3u << pin * 2)) | (STM32_GPIO_PUPDR_UP << pin * 2);
    GPIO(STM32_GPIO_MODER) = (GPIO(STM32_GPIO_MODER) & ~(3u << pin * 2)) | (STM32_GPIO_MODER_AF << pin * 2);
}

void ep_port_init(int argc, char **argv) {
    (void)argc;
    (void)argv;
    RCC(STM32_RCC_AHB1ENR) |= 1u << STM32_GPIO_PORT;
    RCC(STM32_USART_RCC_ENR) |= 1u << STM32_USART_RCC_BIT;
    (void)RCC(STM32_USART_RCC_ENR); /* read back: the clock runs two cycles after enabling (ST errata, "delay after an RCC peripheral clock enabling") */
    pin_af(STM32_TX_PIN);
    pin_af(STM32_RX_PIN); /* pulled up: an unconnected RX idles high instead of reading noise */
    USART(STM32_USART_BRR) = BRR;
    USART(STM32_USART_CR1) = STM32_USART_CR1_UE | STM32_USART_CR1_TE | STM32_USART_CR1_RE;
    armv7m_cycles_start();
}

int ep_port_getc(void) {
    if (!(USART(STM32_USART_SR) & STM32_USART_SR_RXNE)) {
        return -1;
    }
    return (int)(USART(STM32_USART_DR) & 0xFF);
}

void ep_port_write(const uint8_t *buf, uint32_t len) {
    for (uint32_t i = 0; i < len; i++) {
        while (!(USART(STM32_USART_SR) & STM32_USART_SR_TXE)) {
        }
        USART(STM32_USART_DR) = buf[i];
    }
}

/* Busy-polls: see ../armv7m/cycles.c for why the receive path never sleeps. */
void ep_port_idle(void) {}
