/*
 * cluster.c — ep_parallel.h on the GAP9 cluster, emulated as QEMU virt harts 1..8.
 *
 * Hart 0 (the fabric controller) runs main(); cluster core k is hart k+1, parked
 * by startup.S until hart 0 first raises its CLINT msip. A fork stores (fn, arg,
 * team size), bumps a generation counter and raises the msip of the team's
 * harts; each runs fn(arg) on its L1 stack; the last one to finish raises hart
 * 0's msip. Every wait (a parked core, hart 0 during a fork, a core at a barrier)
 * is a wfi that only a software interrupt ends: waiting costs no instructions
 * under -icount, and no hart spins (see ep_par_barrier).
 * Memory order: GCC __atomic builtins (the A extension: amoadd.w, fences).
 *
 * Configuration, read once from the device tree QEMU builds (a1 at reset):
 *   - cores present: the /cpus/cpu@N nodes minus hart 0 (QEMU -smp N+1), at
 *     most RV_CLUSTER_MAX_CORES; with none, a fork runs fn on hart 0;
 *   - /chosen/bootargs (QEMU -append "..."), space-separated words:
 *       cores=N        team size of ep_par_fork(0, ...) (default: all present);
 *                      tests train with 1, 2, 4 and 8 on one firmware image
 *       timing=turns   the cores of a fork take turns instead of running at once.
 *
 * Why `timing=turns`: under -icount QEMU's mcycle is ONE virtual clock that every
 * hart's instructions advance (QEMU runs the harts round-robin on one thread), so
 * with cores running at once ep_port_cycles() reports the sum of all their
 * instructions — the serial cost, not the cluster's time. In turns mode core 0
 * runs until it reaches a barrier (or returns), then core 1, ..., while every
 * other hart sleeps; each core's share of a phase is then an exact mcycle delta,
 * and the port subtracts from ep_port_cycles() what a real cluster would have
 * overlapped: per phase, the sum of the cores' counts minus their maximum. The
 * reported cycles are then FC instructions + Σ over phases of the slowest
 * core's instructions: the critical path in instructions (a real cluster adds
 * its L1/L2 contention, which QEMU does not model). The results are the same in
 * both modes (same code, each output written by one core).
 */
#include <stdint.h>
#include <string.h>

#include "ep_parallel.h"
#include "ep_port.h"
#include "riscv_virt.h"

#define MSIP(hart) (*(volatile uint32_t *)(uintptr_t)(RV_CLINT_BASE + 4u * (hart)))

/* written by startup.S: the device tree address QEMU passed in a1 */
uint32_t rv_boot_fdt;

/* per-core stacks and TLS blocks (link.ld.in) */
extern char __cluster_tls[], __cluster_tls_end[], __tdata_start[], __tdata_end[];

static uint32_t present;        /* cluster cores QEMU created */
static uint32_t team_default;   /* ep_par_fork(0, ...) */
static int turns;               /* timing=turns */
static uint32_t started;        /* cores woken at least once */
static uint64_t hidden;         /* turns mode: mcycle a real cluster overlaps */
static uint64_t core_mcycle[RV_CLUSTER_MAX_CORES]; /* turns mode: each core's turns since the reset */

/* the current fork */
static struct {
    ep_par_fn_t fn;
    void *arg;
    uint32_t team;
    uint32_t gen;          /* bumped per fork */
    uint32_t done;         /* cores finished */
    uint32_t bar_count;    /* concurrent barrier: arrivals */
    uint32_t bar_sense;    /*   and its phase parity */
    uint32_t turn;         /* turns mode: the core whose turn it is */
    uint64_t phase_sum;    /*   mcycle of this phase so far */
    uint64_t phase_max;
} fork_state;

static uint32_t hart_id(void) {
    uint32_t v;
    __asm__ volatile("csrr %0, mhartid" : "=r"(v));
    return v;
}

/* Sleep until this hart's msip is raised, and lower it. */
static void wait_msip(uint32_t hart) {
    for (;;) {
        uint32_t mip;
        __asm__ volatile("csrr %0, mip" : "=r"(mip));
        if (mip & RV_MIP_MSIP) {
            break;
        }
        __asm__ volatile("wfi");
    }
    MSIP(hart) = 0;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static void raise_msip(uint32_t hart) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    MSIP(hart) = 1;
}

/* ---- the device tree (big-endian flattened tree, DTSpec v0.3 §5) ---------------- */

#define FDT_MAGIC 0xd00dfeedu
#define FDT_BEGIN_NODE 1u
#define FDT_END_NODE 2u
#define FDT_PROP 3u
#define FDT_NOP 4u
#define FDT_END 9u

static uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static int starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Parse one bootargs word ("cores=4", "timing=turns"); others are ignored. */
static void apply_bootarg(const char *w, uint32_t len) {
    if (len > 6 && strncmp(w, "cores=", 6) == 0) {
        uint32_t n = 0;
        for (uint32_t i = 6; i < len && w[i] >= '0' && w[i] <= '9'; i++) {
            n = n * 10 + (uint32_t)(w[i] - '0');
        }
        team_default = n;
    } else if (len == 12 && strncmp(w, "timing=turns", 12) == 0) {
        turns = 1;
    }
}

static void apply_bootargs(const char *s, uint32_t len) {
    uint32_t i = 0;
    while (i < len && s[i]) {
        while (i < len && s[i] == ' ') {
            i++;
        }
        const uint32_t start = i;
        while (i < len && s[i] && s[i] != ' ') {
            i++;
        }
        if (i > start) {
            apply_bootarg(s + start, i - start);
        }
    }
}

/* Count /cpus/cpu@* and read /chosen/bootargs. No tree (or a bad one): no cluster. */
static void read_device_tree(const uint8_t *fdt) {
    if (fdt == NULL || be32(fdt) != FDT_MAGIC) {
        return;
    }
    const uint32_t total = be32(fdt + 4), off_struct = be32(fdt + 8), off_strings = be32(fdt + 12);
    const uint8_t *p = fdt + off_struct, *end = fdt + total;
    const char *strings = (const char *)fdt + off_strings;
    int depth = 0, in_cpus = 0, in_chosen = 0;
    uint32_t cpus = 0;
    while (p + 4 <= end) {
        const uint32_t tok = be32(p);
        p += 4;
        if (tok == FDT_BEGIN_NODE) {
            const char *name = (const char *)p;
            const uint32_t n = (uint32_t)strlen(name) + 1;
            p += (n + 3) & ~3u;
            depth++;
            if (depth == 2) {
                in_cpus = strcmp(name, "cpus") == 0;
                in_chosen = strcmp(name, "chosen") == 0;
            } else if (depth == 3 && in_cpus && starts_with(name, "cpu@")) {
                cpus++;
            }
        } else if (tok == FDT_END_NODE) {
            if (depth == 2) {
                in_cpus = in_chosen = 0;
            }
            depth--;
        } else if (tok == FDT_PROP) {
            const uint32_t len = be32(p), nameoff = be32(p + 4);
            const char *value = (const char *)p + 8;
            if (depth == 2 && in_chosen && strcmp(strings + nameoff, "bootargs") == 0) {
                apply_bootargs(value, len);
            }
            p += 8 + ((len + 3) & ~3u);
        } else if (tok == FDT_NOP) {
            continue;
        } else {
            break; /* FDT_END or garbage */
        }
    }
    present = cpus > 1 ? cpus - 1 : 0;
    if (present > RV_CLUSTER_MAX_CORES) {
        present = RV_CLUSTER_MAX_CORES;
    }
}

static uint32_t configured_team(void) {
    static int read;
    if (!read) {
        read = 1;
        read_device_tree((const uint8_t *)(uintptr_t)rv_boot_fdt);
        if (team_default == 0 || team_default > present) {
            team_default = present;
        }
        uint32_t mie = RV_MIP_MSIP; /* hart 0 sleeps in wfi during a fork */
        __asm__ volatile("csrs mie, %0" : : "r"(mie));
    }
    return team_default;
}

/* ---- the cluster side -------------------------------------------------------------- */

/* Turns mode: account this core's turn (started at t0) and hand the turn on. At the
 * end of a phase (the last core), the phase's overlap goes to `hidden`; the next turn
 * is core 0's again, or, when `finished`, hart 0 is woken. */
static void end_turn(uint32_t core, uint64_t t0, int finished) {
    const uint64_t n = rv_mcycle64() - t0;
    core_mcycle[core] += n;
    fork_state.phase_sum += n;
    if (n > fork_state.phase_max) {
        fork_state.phase_max = n;
    }
    if (core + 1 < fork_state.team) {
        __atomic_store_n(&fork_state.turn, core + 1, __ATOMIC_SEQ_CST);
        raise_msip(core + 2);
        return;
    }
    hidden += fork_state.phase_sum - fork_state.phase_max;
    fork_state.phase_sum = fork_state.phase_max = 0;
    if (finished) {
        __atomic_store_n(&fork_state.done, fork_state.team, __ATOMIC_SEQ_CST);
        raise_msip(0);
    } else {
        __atomic_store_n(&fork_state.turn, 0, __ATOMIC_SEQ_CST);
        raise_msip(1);
    }
}

/* Turns mode: sleep until it is `core`'s turn; returns the mcycle its turn starts at. */
static uint64_t wait_turn(uint32_t core) {
    while (__atomic_load_n(&fork_state.turn, __ATOMIC_SEQ_CST) != core) {
        wait_msip(core + 1);
    }
    return rv_mcycle64();
}

static uint64_t turn_start[RV_CLUSTER_MAX_CORES];

/* Entered by startup.S on hart `hart` (1..8) at its first wake; never returns. */
_Noreturn void rv_cluster_worker(uint32_t hart) {
    const uint32_t core = hart - 1;
    const uint32_t tls_bytes = (uint32_t)(__cluster_tls_end - __cluster_tls) / RV_CLUSTER_MAX_CORES;
    /* this core's TLS block: a copy of .tdata, then zeroed .tbss (picolibc's errno) */
    char *tls = __cluster_tls + core * tls_bytes;
    const uint32_t tdata = (uint32_t)(__tdata_end - __tdata_start);
    memcpy(tls, __tdata_start, tdata);
    memset(tls + tdata, 0, tls_bytes - tdata);
    __asm__ volatile("mv tp, %0" : : "r"(tls));

    uint32_t seen = 0;
    for (;;) {
        MSIP(hart) = 0;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        const uint32_t gen = __atomic_load_n(&fork_state.gen, __ATOMIC_SEQ_CST);
        if (gen == seen) {
            wait_msip(hart);
            continue;
        }
        seen = gen;
        if (core >= fork_state.team) {
            continue;
        }
        if (turns) {
            turn_start[core] = wait_turn(core);
            fork_state.fn(fork_state.arg);
            end_turn(core, turn_start[core], 1);
        } else {
            fork_state.fn(fork_state.arg);
            if (__atomic_add_fetch(&fork_state.done, 1, __ATOMIC_SEQ_CST) == fork_state.team) {
                raise_msip(0);
            }
        }
    }
}

/* ---- ep_parallel.h ------------------------------------------------------------------ */

void ep_par_fork(uint32_t n_cores, ep_par_fn_t fn, void *arg) {
    uint32_t team = configured_team();
    if (n_cores != 0 && n_cores < team) {
        team = n_cores;
    }
    if (team == 0) { /* no cluster (-smp 1): the FC does the work */
        fn(arg);
        return;
    }
    fork_state.fn = fn;
    fork_state.arg = arg;
    fork_state.team = team;
    fork_state.done = 0;
    fork_state.bar_count = 0;
    fork_state.turn = 0;
    fork_state.phase_sum = fork_state.phase_max = 0;
    __atomic_add_fetch(&fork_state.gen, 1, __ATOMIC_SEQ_CST);
    /* wake the team; the first fork also brings up all cores (startup.S's park loop) */
    const uint32_t wake = started < team ? team : (turns ? 1 : team);
    for (uint32_t k = 0; k < wake; k++) {
        raise_msip(k + 1);
    }
    if (started < team) {
        started = team;
    }
    while (__atomic_load_n(&fork_state.done, __ATOMIC_SEQ_CST) != team) {
        wait_msip(0);
    }
}

uint32_t ep_par_core_id(void) {
    const uint32_t h = hart_id();
    return h == 0 ? 0 : h - 1;
}

uint32_t ep_par_num_cores(void) {
    if (hart_id() != 0) {
        return fork_state.team;
    }
    const uint32_t t = configured_team();
    return t == 0 ? 1 : t;
}

void ep_par_barrier(void) {
    const uint32_t h = hart_id();
    if (h == 0) {
        return; /* outside a fork, or the FC doing a cluster-less fork alone */
    }
    const uint32_t core = h - 1, team = fork_state.team;
    if (turns) {
        end_turn(core, turn_start[core], 0);
        turn_start[core] = wait_turn(core);
        return;
    }
    /* sense-reversing barrier; the waiters sleep in wfi and the last arriver wakes them
     * through their msip. Never spin: under -icount QEMU runs the harts round-robin on
     * one thread, and a spinning hart starved a sleeping one whose msip was pending
     * (measured: the MHSA forks hung with 2 cores). */
    const uint32_t sense = __atomic_load_n(&fork_state.bar_sense, __ATOMIC_SEQ_CST);
    if (__atomic_add_fetch(&fork_state.bar_count, 1, __ATOMIC_SEQ_CST) == team) {
        __atomic_store_n(&fork_state.bar_count, 0, __ATOMIC_SEQ_CST);
        __atomic_store_n(&fork_state.bar_sense, sense ^ 1u, __ATOMIC_SEQ_CST);
        for (uint32_t k = 0; k < team; k++) {
            if (k != core) {
                raise_msip(k + 1);
            }
        }
    } else {
        while (__atomic_load_n(&fork_state.bar_sense, __ATOMIC_SEQ_CST) == sense) {
            wait_msip(h);
        }
    }
}

/* Exact only in turns mode, where a core's turn is an mcycle delta of its own instructions. */
uint32_t ep_par_core_counts(uint64_t *out, uint32_t max) {
    const uint32_t team = configured_team();
    if (!turns || team == 0) {
        return 0;
    }
    const uint32_t n = team < max ? team : max;
    for (uint32_t k = 0; k < n; k++) {
        out[k] = core_mcycle[k] >> RV_CYCLE_SHIFT;
    }
    return n;
}

void ep_par_counts_reset(void) {
    memset(core_mcycle, 0, sizeof core_mcycle);
}

/* Turns mode: the mcycle ep_port_cycles() leaves out (port.c). Only hart 0 reads it,
 * after a join, when no core is writing it. */
uint64_t rv_cluster_hidden(void) {
    return hidden;
}
