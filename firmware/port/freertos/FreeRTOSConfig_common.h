/*
 * FreeRTOSConfig_common.h — the kernel configuration every target of the
 * FreeRTOS port shares; each target's FreeRTOSConfig.h (mps2/, riscv_virt/)
 * includes it and adds its clock, tick timer and interrupt settings.
 *
 * Port settings (override with -D, e.g. make ... EXTRA_CFLAGS=-D...):
 *   EP_FREERTOS_TRAIN_STACK_BYTES  stack of the train task: it runs the app and
 *                                  the runtime, as main() does on bare metal (16 KiB)
 *   EP_FREERTOS_TX_STACK_BYTES     stack of the tx (metrics) task
 *   EP_FREERTOS_RX_BUFFER_BYTES    rx stream buffer: host bytes waiting for the train task
 *   EP_FREERTOS_TX_BUFFER_BYTES    tx stream buffer: responses waiting for the UART
 *   EP_FREERTOS_IDLE_POLL_MS       longest the train task sleeps without a byte
 *                                  (the frame receiver's idle timeout is checked this often)
 */
#ifndef EP_FREERTOS_CONFIG_COMMON_H
#define EP_FREERTOS_CONFIG_COMMON_H

#ifndef EP_FREERTOS_TRAIN_STACK_BYTES
#define EP_FREERTOS_TRAIN_STACK_BYTES 16384
#endif
#ifndef EP_FREERTOS_TX_STACK_BYTES
#define EP_FREERTOS_TX_STACK_BYTES 1024
#endif
#ifndef EP_FREERTOS_RX_BUFFER_BYTES
#define EP_FREERTOS_RX_BUFFER_BYTES 4096
#endif
#ifndef EP_FREERTOS_TX_BUFFER_BYTES
#define EP_FREERTOS_TX_BUFFER_BYTES 4096
#endif
#ifndef EP_FREERTOS_IDLE_POLL_MS
#define EP_FREERTOS_IDLE_POLL_MS 20
#endif

/* Scheduling. A 100 Hz tick keeps the kernel's share of a measured training
 * step small (a tick interrupt costs a few hundred instructions); nothing in
 * the port needs finer time than EP_FREERTOS_IDLE_POLL_MS. */
#define configUSE_PREEMPTION 1
#define configUSE_TIME_SLICING 1
#define configUSE_PORT_OPTIMISED_TASK_SELECTION 0
#define configUSE_TICKLESS_IDLE 0
#define configTICK_RATE_HZ 100
#define configMAX_PRIORITIES 4
#define configMINIMAL_STACK_SIZE 256 /* words: the idle task (its hook only sleeps) */
#define configMAX_TASK_NAME_LEN 8
#define configTICK_TYPE_WIDTH_IN_BITS TICK_TYPE_WIDTH_32_BITS
#define configIDLE_SHOULD_YIELD 1
#define configENABLE_BACKWARD_COMPATIBILITY 0
#define configNUMBER_OF_CORES 1

/* Memory: static only. No heap_N.c is linked; the idle task's TCB and stack are
 * static arrays of ep_freertos.c (vApplicationGetIdleTaskMemory). V11.1.0's
 * configKERNEL_PROVIDED_STATIC_MEMORY would also define timer-task memory, which
 * does not compile without timers. */
#define configSUPPORT_STATIC_ALLOCATION 1
#define configSUPPORT_DYNAMIC_ALLOCATION 0
#define configKERNEL_PROVIDED_STATIC_MEMORY 0
#define configUSE_MALLOC_FAILED_HOOK 0

/* What the port uses: tasks, stream buffers. Nothing else is built in. */
#define configUSE_TASK_NOTIFICATIONS 1
#define configUSE_STREAM_BUFFERS 1
#define configUSE_MUTEXES 0
#define configUSE_RECURSIVE_MUTEXES 0
#define configUSE_COUNTING_SEMAPHORES 0
#define configUSE_QUEUE_SETS 0
#define configQUEUE_REGISTRY_SIZE 0
#define configUSE_TIMERS 0
#define configUSE_CO_ROUTINES 0
#define configUSE_NEWLIB_REENTRANT 0
#define configUSE_TRACE_FACILITY 0
#define configGENERATE_RUN_TIME_STATS 0

/* Hooks: the idle hook sleeps (wfi); stack overflows and failed assertions end the
 * program with EP_FREERTOS_ASSERT_EXIT_CODE (ep_freertos.c), visible to the host
 * as the emulator's exit status. */
#define configUSE_IDLE_HOOK 1
#define configUSE_TICK_HOOK 0
#define configCHECK_FOR_STACK_OVERFLOW 2

#define INCLUDE_vTaskDelay 1
#define INCLUDE_xTaskGetSchedulerState 1
#define INCLUDE_xTaskGetCurrentTaskHandle 1
#define INCLUDE_uxTaskGetStackHighWaterMark 1
#define INCLUDE_vTaskDelete 0
#define INCLUDE_vTaskSuspend 1 /* portMAX_DELAY blocks without a timeout */

#ifndef __ASSEMBLER__
_Noreturn void ep_freertos_fatal(void);
#endif
#define configASSERT(x)          \
    do {                         \
        if (!(x)) {              \
            ep_freertos_fatal(); \
        }                        \
    } while (0)

#endif /* EP_FREERTOS_CONFIG_COMMON_H */
