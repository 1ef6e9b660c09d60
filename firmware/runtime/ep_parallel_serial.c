/*
 * ep_parallel_serial.c — the team of one core behind ep_parallel.h, for every
 * port without a cluster (Cortex-M boards, the native build, the fuzzers).
 *
 * Weak symbols: a port with a cluster (firmware/port/riscv_virt/cluster.c)
 * defines the same functions and the linker takes those instead.
 */
#include "ep_parallel.h"

__attribute__((weak)) void ep_par_fork(uint32_t n_cores, ep_par_fn_t fn, void *arg) {
    (void)n_cores;
    fn(arg);
}

__attribute__((weak)) uint32_t ep_par_core_id(void) {
    return 0;
}

__attribute__((weak)) uint32_t ep_par_num_cores(void) {
    return 1;
}

__attribute__((weak)) void ep_par_barrier(void) {}

__attribute__((weak)) uint32_t ep_par_core_counts(uint64_t *out, uint32_t max) {
    (void)out;
    (void)max;
    return 0;
}

__attribute__((weak)) void ep_par_counts_reset(void) {}
