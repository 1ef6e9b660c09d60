/*
 * cluster.c — ep_parallel.h on GAP9's 8-core cluster through PMSIS: the mapping
 * firmware/port/riscv_virt/cluster.c emulates with QEMU harts.
 *
 *   ep_par_fork      the FC opens the cluster once (pi_cluster_open, EP_PMSIS_CORES
 *                    cores, EP_PMSIS_STACK bytes of L1 stack each) and, per fork,
 *                    sends it one task (pi_cluster_send_task_to_cl, which blocks
 *                    until the task ends) whose entry, on the cluster's master core,
 *                    is pi_cl_team_fork(n, fn, arg): fn on every core of the team;
 *   ep_par_core_id   pi_core_id() on a cluster core, 0 on the FC;
 *   ep_par_num_cores pi_cl_team_nb_cores() inside a fork, the team size outside;
 *   ep_par_barrier   pi_cl_team_barrier().
 * The kernels split outputs, never reductions (ep_parallel.h), so the chip gives
 * the bits the emulated cluster and the single-core boards give.
 *
 * The tensors stay in L2 (the arena): cluster cores read them there, as on the
 * emulated board; DMA tiling into L1 (bench/cluster.json's cluster_l1 rows say
 * what fits) is future work. A cluster that fails to open leaves a team of one:
 * the FC runs every fork itself. Per-core counts (CORES) are not collected here.
 */
#include <stdint.h>

#include "ep_parallel.h"
#include "pmsis.h"

#ifndef EP_PMSIS_CORES
#define EP_PMSIS_CORES 8
#endif
#ifndef EP_PMSIS_STACK
#define EP_PMSIS_STACK 4096
#endif

static struct pi_device cluster;
static struct pi_cluster_conf cluster_conf;
static int state; /* 0: not opened yet, 1: open, -1: could not be opened */

typedef struct {
    uint32_t n;
    ep_par_fn_t fn;
    void *arg;
} fork_t;

/* On the cluster's master core: the team runs fn. */
static void team_entry(void *p) {
    const fork_t *f = p;
    pi_cl_team_fork((int)f->n, f->fn, f->arg);
}

static int cluster_up(void) {
    if (state == 0) {
        pi_cluster_conf_init(&cluster_conf);
        cluster_conf.id = 0;
        pi_open_from_conf(&cluster, &cluster_conf);
        state = pi_cluster_open(&cluster) == 0 ? 1 : -1;
    }
    return state == 1;
}

static uint32_t team_size(void) {
    return cluster_up() ? EP_PMSIS_CORES : 1u;
}

void ep_par_fork(uint32_t n_cores, ep_par_fn_t fn, void *arg) {
    const uint32_t team = team_size();
    const uint32_t n = n_cores == 0 || n_cores > team ? team : n_cores;
    if (team == 1) {
        fn(arg);
        return;
    }
    fork_t f = {.n = n, .fn = fn, .arg = arg};
    struct pi_cluster_task task;
    pi_cluster_task(&task, team_entry, &f);
    task.nb_cores = EP_PMSIS_CORES;
    task.stack_size = EP_PMSIS_STACK;
    task.slave_stack_size = EP_PMSIS_STACK;
    pi_cluster_send_task_to_cl(&cluster, &task);
}

uint32_t ep_par_core_id(void) {
    return pi_is_fc() ? 0u : (uint32_t)pi_core_id();
}

uint32_t ep_par_num_cores(void) {
    return pi_is_fc() ? team_size() : (uint32_t)pi_cl_team_nb_cores();
}

void ep_par_barrier(void) {
    if (!pi_is_fc()) {
        pi_cl_team_barrier();
    }
}
