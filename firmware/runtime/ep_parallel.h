/*
 * ep_parallel.h — fork/join over a cluster of cores (the PULP `pi_cl_team_fork` model).
 *
 * A kernel that can split its work calls
 *
 *     ep_par_fork(0, fn, &args);
 *
 * and every core of the team runs fn(&args) once, concurrently; the call returns
 * when all of them have returned (the join). Inside fn, ep_par_core_id() is the
 * calling core's index in 0 .. ep_par_num_cores()-1 and ep_par_range() gives it
 * a contiguous chunk of an index space. ep_par_barrier() waits until every core
 * of the team has reached it (a kernel with phases: produce, barrier, consume).
 *
 * Rules that keep results independent of the core count (the runtime promises
 * bit-identical training at 1, 2, 4 or 8 cores; tests/test_cluster.py checks it):
 *   - each output element is written by exactly one core, and
 *   - that core computes it with the same operations in the same order as the
 *     serial code (split over outputs, never over a reduction: a parameter
 *     gradient is split over parameters, not over the batch).
 * The chunk boundaries may then fall anywhere.
 *
 * The runtime stays port-free: it only calls these functions. The default
 * implementation (ep_parallel_serial.c, weak symbols) is a team of one core —
 * ep_par_fork is a plain call of fn — and serves every port without a cluster.
 * A port with a cluster overrides all of them (firmware/port/riscv_virt/cluster.c:
 * GAP9's 8 cluster cores as QEMU harts 1..8; on real GAP9 the same five functions
 * map onto PMSIS pi_cl_team_fork / pi_core_id / pi_cl_team_nb_cores /
 * pi_cl_team_barrier).
 *
 * Forks do not nest: fn must not call ep_par_fork. Only the main program (the
 * fabric controller on GAP9) forks.
 */
#ifndef EP_PARALLEL_H
#define EP_PARALLEL_H

#include <stdint.h>

/** The work of one core: called once per core of the team with the fork's arg. */
typedef void (*ep_par_fn_t)(void *arg);

/**
 * Run fn(arg) on `n_cores` cores (0: the configured team size, see
 * ep_par_num_cores; more than the cluster has: all of them) and return when
 * all have finished. With one core this is fn(arg).
 */
void ep_par_fork(uint32_t n_cores, ep_par_fn_t fn, void *arg);

/** Inside fn: this core's index in the team, 0-based. Outside a fork: 0. */
uint32_t ep_par_core_id(void);

/**
 * Inside fn: the number of cores in the team. Outside a fork: the team size a
 * fork with n_cores = 0 would use (1 on ports without a cluster).
 */
uint32_t ep_par_num_cores(void);

/** Inside fn: wait until every core of the team has called it. Outside a fork: nothing. */
void ep_par_barrier(void);

/**
 * Per-core instruction counts (the CORES message): for each cluster core, the
 * instructions it ran inside forks since the last ep_par_counts_reset(). Writes
 * up to `max` counts to out; returns how many cores it counted, 0 when the port
 * has no exact per-core counts (no cluster, or cores running at once under one
 * virtual clock). Called by the main program only, between forks.
 */
uint32_t ep_par_core_counts(uint64_t *out, uint32_t max);

/** Start the per-core counts from zero (before a TRAIN or EVAL). */
void ep_par_counts_reset(void);

/**
 * This core's chunk [*lo, *hi) of [0, n), in units of `unit` indices (a tile
 * width: chunks start on multiples of unit, the last core takes the remainder).
 * Chunks of consecutive cores are consecutive and cover [0, n) exactly; a core
 * may get an empty chunk (lo == hi) when there are more cores than units.
 */
static inline void ep_par_range_unit(uint32_t n, uint32_t unit, uint32_t *lo, uint32_t *hi) {
    const uint32_t cores = ep_par_num_cores(), id = ep_par_core_id();
    const uint32_t units = (n + unit - 1) / unit;
    const uint32_t base = units / cores, extra = units % cores;
    /* the first `extra` cores take one unit more */
    const uint32_t first = id * base + (id < extra ? id : extra);
    const uint32_t count = base + (id < extra ? 1u : 0u);
    const uint32_t a = first * unit, b = (first + count) * unit;
    *lo = a < n ? a : n;
    *hi = b < n ? b : n;
}

/** This core's chunk [*lo, *hi) of [0, n): ep_par_range_unit with unit 1. */
static inline void ep_par_range(uint32_t n, uint32_t *lo, uint32_t *hi) {
    ep_par_range_unit(n, 1, lo, hi);
}

/**
 * Team size for `work` units when a core should get at least `min_per_core` of
 * them (a fork and join cost a few hundred instructions; a 10-element bias update
 * is cheaper on one core): between 1 and ep_par_num_cores(). Pass the result to
 * ep_par_fork; the split (and so the result) does not depend on it.
 */
static inline uint32_t ep_par_team_for(uint32_t work, uint32_t min_per_core) {
    const uint32_t cores = ep_par_num_cores(), want = work / (min_per_core ? min_per_core : 1u);
    return want < 1u ? 1u : (want < cores ? want : cores);
}

#endif /* EP_PARALLEL_H */
