/*
 * stm32f4.h — the STM32F4 peripherals the stm32f4 port uses (RCC, GPIO, USART),
 * as plain integers. RM0090 (STM32F405/407) and RM0390 (STM32F446) agree on
 * every register and bit used here. The core registers are in ../armv7m/armv7m.h.
 *
 * Board settings (-D flags from the [port_settings] table of boards/<board>/board.toml):
 *   STM32_USART_BASE      the USART the host talks to
 *   STM32_USART_RCC_ENR   its RCC clock-enable register (offset from RCC base)
 *   STM32_USART_RCC_BIT   and bit in it
 *   STM32_USART_CLOCK_HZ  its bus clock (BRR = clock / baud)
 *   STM32_GPIO_PORT       its pins' GPIO port, 0 = A, 1 = B, ...
 *   STM32_TX_PIN, STM32_RX_PIN, STM32_GPIO_AF  its pins and their alternate function
 */
#ifndef EP_STM32F4_H
#define EP_STM32F4_H

#if !defined(STM32_USART_BASE) || !defined(STM32_USART_RCC_ENR) || !defined(STM32_USART_RCC_BIT) || \
    !defined(STM32_USART_CLOCK_HZ) || !defined(STM32_GPIO_PORT) || !defined(STM32_TX_PIN) ||          \
    !defined(STM32_RX_PIN) || !defined(STM32_GPIO_AF)
#error "the stm32f4 port needs the USART and pin settings of stm32f4.h in the [port_settings] table of board.toml"
#endif

/* RCC (reset and clock control) */
#define STM32_RCC_BASE 0x40023800
#define STM32_RCC_AHB1ENR 0x30 /* bit n: GPIO port n clock */
#define STM32_RCC_APB1ENR 0x40 /* bit 17: USART2, 18: USART3 */
#define STM32_RCC_APB2ENR 0x44 /* bit 4: USART1, 5: USART6 */

/* GPIO ports, 0x400 apart from GPIOA */
#define STM32_GPIOA_BASE 0x40020000
#define STM32_GPIO_STRIDE 0x400
#define STM32_GPIO_MODER 0x00 /* 2 bits per pin */
#define STM32_GPIO_MODER_AF 0x2
#define STM32_GPIO_PUPDR 0x0C /* 2 bits per pin */
#define STM32_GPIO_PUPDR_UP 0x1
#define STM32_GPIO_AFRL 0x20 /* 4 bits per pin, pins 0-7; AFRH (0x24) for 8-15 */

/* USART (RM0090 30.6) */
#define STM32_USART_SR 0x00
#define STM32_USART_DR 0x04
#define STM32_USART_BRR 0x08
#define STM32_USART_CR1 0x0C
#define STM32_USART_SR_RXNE (1 << 5)
#define STM32_USART_SR_TXE (1 << 7)
#define STM32_USART_CR1_RE (1 << 2)
#define STM32_USART_CR1_TE (1 << 3)
#define STM32_USART_CR1_UE (1 << 13)
#define STM32_USART_BAUD 115200

#endif /* EP_STM32F4_H */
