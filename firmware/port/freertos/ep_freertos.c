/*
 * ep_freertos.c — the part of the FreeRTOS port every target shares: the tasks,
 * the two stream buffers, and ep_port_getc / ep_port_idle / ep_port_write on
 * top of them (see ep_freertos.h for the picture).
 *
 * The train task calls the app's own main() (app/main.c, unchanged): its loop
 * asks ep_port_getc() for bytes and calls ep_port_idle() when there are none;
 * here ep_port_idle() blocks on the rx stream buffer for at most
 * EP_FREERTOS_IDLE_POLL_MS, so the frame receiver still sees time pass (its
 * partial-frame timeout) while the CPU is left to lower-priority tasks and,
 * when nothing runs, to the idle task's wfi.
 */
#include <stddef.h>
#include <stdint.h>

#include "FreeRTOS.h"
#include "stream_buffer.h"
#include "task.h"

#include "ep_freertos.h"
#include "ep_port.h"

/* The app's command loop (app/main.c). It is the train task's body. */
int main(int argc, char **argv);

enum {
    TRAIN_PRIORITY = tskIDLE_PRIORITY + 2,
    TX_PRIORITY = tskIDLE_PRIORITY + 1, /* the metrics path: below training, above idle */
    TRAIN_STACK_WORDS = EP_FREERTOS_TRAIN_STACK_BYTES / sizeof(StackType_t),
    TX_STACK_WORDS = EP_FREERTOS_TX_STACK_BYTES / sizeof(StackType_t),
    TX_CHUNK = 64, /* bytes the tx task takes out of its buffer at a time */
    RX_CHUNK = 64, /* bytes ep_port_getc takes out of the rx buffer at a time */
};
_Static_assert(configMAX_PRIORITIES > TRAIN_PRIORITY, "configMAX_PRIORITIES too small for the train task");

/* ---- static kernel objects (no FreeRTOS heap) --------------------------------- */
static StaticTask_t train_tcb, tx_tcb;
static StackType_t train_stack[TRAIN_STACK_WORDS];
static StackType_t tx_stack[TX_STACK_WORDS];

/* +1: a stream buffer of N bytes holds N-1 */
static uint8_t rx_storage[EP_FREERTOS_RX_BUFFER_BYTES + 1];
static uint8_t tx_storage[EP_FREERTOS_TX_BUFFER_BYTES + 1];
static StaticStreamBuffer_t rx_struct, tx_struct;
static StreamBufferHandle_t rx_buf, tx_buf;
static TaskHandle_t tx_handle;

/* Receive side, train task only: bytes taken out of rx_buf, not yet returned. */
static uint8_t rx_local[RX_CHUNK];
static size_t rx_len, rx_pos;
/* Set by the receive ISR when rx_buf was full and it masked the interrupt. */
static volatile bool rx_masked;

/* Bytes queued by ep_port_write (train task) and sent by the tx task: equal when flushed. */
static volatile uint32_t tx_queued, tx_sent;

static void train_task(void *arg) {
    (void)arg;
    main(0, NULL); /* the app's loop: returns only through ep_port_exit */
    ep_port_exit(0);
}

static void tx_task(void *arg) {
    (void)arg;
    uint8_t chunk[TX_CHUNK];
    for (;;) {
        size_t n = xStreamBufferReceive(tx_buf, chunk, sizeof chunk, portMAX_DELAY);
        ep_freertos_uart_write(chunk, (uint32_t)n);
        tx_sent += (uint32_t)n;
    }
}

_Noreturn void ep_freertos_start(void) {
    ep_freertos_uart_init();
    rx_buf = xStreamBufferCreateStatic(sizeof rx_storage, 1, rx_storage, &rx_struct);
    tx_buf = xStreamBufferCreateStatic(sizeof tx_storage, 1, tx_storage, &tx_struct);
    TaskHandle_t train = xTaskCreateStatic(train_task, "train", TRAIN_STACK_WORDS, NULL, TRAIN_PRIORITY,
                                           train_stack, &train_tcb);
    tx_handle = xTaskCreateStatic(tx_task, "tx", TX_STACK_WORDS, NULL, TX_PRIORITY, tx_stack, &tx_tcb);
    configASSERT(rx_buf && tx_buf && train && tx_handle);
    vTaskStartScheduler();
    ep_freertos_fatal(); /* only without memory for the idle task, which is static here */
}

/* ---- receive -------------------------------------------------------------------- */

BaseType_t ep_freertos_rx_isr(void) {
    BaseType_t woken = pdFALSE;
    while (!rx_masked) {
        if (xStreamBufferSpacesAvailable(rx_buf) == 0) {
            ep_freertos_uart_rx_irq(false); /* leave the byte in the UART: backpressure */
            rx_masked = true;
            break;
        }
        int c = ep_freertos_uart_rx_byte();
        if (c < 0) {
            break;
        }
        uint8_t b = (uint8_t)c;
        (void)xStreamBufferSendFromISR(rx_buf, &b, 1, &woken);
    }
    return woken;
}

/* After taking bytes out of rx_buf: if the ISR had stopped for lack of room, let it go on. */
static void rx_resume(void) {
    if (rx_masked) {
        taskENTER_CRITICAL();
        rx_masked = false;
        ep_freertos_uart_rx_irq(true);
        taskEXIT_CRITICAL();
    }
}

int ep_port_getc(void) {
    if (rx_pos == rx_len) {
        rx_pos = 0;
        rx_len = xStreamBufferReceive(rx_buf, rx_local, sizeof rx_local, 0);
        if (rx_len == 0) {
            return -1;
        }
        rx_resume();
    }
    return rx_local[rx_pos++];
}

/* Called by the app's loop only after ep_port_getc() returned -1 (rx_local is empty). */
void ep_port_idle(void) {
    rx_pos = 0;
    rx_len = xStreamBufferReceive(rx_buf, rx_local, sizeof rx_local, pdMS_TO_TICKS(EP_FREERTOS_IDLE_POLL_MS));
    if (rx_len) {
        rx_resume();
    }
}

/* ---- transmit ------------------------------------------------------------------- */

static bool in_task(void) {
    return xTaskGetSchedulerState() == taskSCHEDULER_RUNNING && !ep_freertos_in_isr();
}

void ep_port_write(const uint8_t *buf, uint32_t len) {
    if (!in_task()) { /* before the scheduler runs, or a fault handler: straight to the UART */
        ep_freertos_uart_write(buf, len);
        return;
    }
    while (len) {
        size_t n = xStreamBufferSend(tx_buf, buf, len, portMAX_DELAY);
        buf += n;
        len -= (uint32_t)n;
        tx_queued += (uint32_t)n;
    }
}

void ep_freertos_flush_tx(void) {
    if (!in_task() || xTaskGetCurrentTaskHandle() == tx_handle) {
        return;
    }
    while (tx_sent != tx_queued) {
        vTaskDelay(1); /* the tx task runs while this one sleeps */
    }
}

/* ---- kernel hooks --------------------------------------------------------------- */

void vApplicationGetIdleTaskMemory(StaticTask_t **tcb, StackType_t **stack, configSTACK_DEPTH_TYPE *words) {
    static StaticTask_t idle_tcb;
    static StackType_t idle_stack[configMINIMAL_STACK_SIZE];
    *tcb = &idle_tcb;
    *stack = idle_stack;
    *words = configMINIMAL_STACK_SIZE;
}

void vApplicationIdleHook(void) {
    ep_freertos_wait_for_interrupt();
}

void vApplicationStackOverflowHook(TaskHandle_t task, char *name) {
    (void)task;
    (void)name;
    ep_freertos_fatal();
}

_Noreturn void ep_freertos_fatal(void) {
    taskDISABLE_INTERRUPTS();
    ep_freertos_exit_now(EP_FREERTOS_ASSERT_EXIT_CODE);
}

/* ---- non-volatile storage ------------------------------------------------------- */
/* A target without storage code links these: no storage (size 0, every call refused),
 * as ep_port.h specifies. A target's nv.c (e.g. ../mps2/nv.c) overrides them. */
__attribute__((weak)) uint32_t ep_port_nv_size(void) { return 0; }
__attribute__((weak)) uint32_t ep_port_nv_page_bytes(void) { return 0; }
__attribute__((weak)) int ep_port_nv_read(uint32_t off, uint8_t *buf, uint32_t len) {
    (void)off, (void)buf, (void)len;
    return -1;
}
__attribute__((weak)) int ep_port_nv_erase(uint32_t page) {
    (void)page;
    return -1;
}
__attribute__((weak)) int ep_port_nv_write(uint32_t off, const uint8_t *buf, uint32_t len) {
    (void)off, (void)buf, (void)len;
    return -1;
}
