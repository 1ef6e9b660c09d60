"""`make bench`: instructions and MAC per instruction of training steps on a board.

    python -m host.bench [--board mps2-an386] [--models a,b] [--batch N] [--steps K]
                         [--out bench/results.json]

For each shipped model (fp32, full backprop) it boots the emulated board,
flashes the model, runs K training steps on random data of the model's input
shape and reads back, for the last step, the instructions of the whole step
(TRAIN's cycle count: exact instructions under QEMU -icount) and of every node
(PROFILE). Rows of `bench/results.json`:

- kind "model": one per model: instructions per training step (forward,
  backward, update) and its MACs;
- kind "op": one per conv/linear node of each model (forward, input gradient,
  parameter gradient), with its MACs (host.costs) and MAC per instruction;
- kind "op_total": per op type and function, summed over the models.

The fp32 target on Cortex-M4F is ≥ 0.7 MAC per instruction on the conv and
linear nodes; the table marks rows below it. Numbers are of this build, on
this board's emulator; rerun the command to reproduce them.

    python -m host.bench --cluster [--models a,b] [--out bench/cluster.json]

The gap9 cluster section: each model trains on the emulated GAP9 booted with 1
and with 8 cluster cores in `timing=turns` mode (host.boards.with_cluster), where
the device's counts are the cluster's critical path: FC instructions plus, per
fork phase, the largest per-core count (firmware/port/riscv_virt/cluster.c).
Rows: kind "cluster_op" per fp32 conv/linear/attention node and "cluster_model" per
model and dtype (fp32, int8), with instructions on 1 and 8 cores and speed-up = 1-core / 8-core
instructions (target ≥ 7 on conv and linear); a "cluster_model" row also has each
core's own instructions inside forks in the 8-core step (the CORES message) and
their balance, max / mean; kind "cluster_l1" gives, per
conv/linear node, the bytes a tile would need in the cluster's 128 KiB L1
(weights + one sample's input and output): what a DMA-tiled kernel must fit.
The batch is the largest of 8, 4, 2, 1 whose plan fits gap9's arena.

    python -m host.bench --l3 [--out bench/l3.json]

The L3 section: on the emulated GAP9 (8 cores), a model whose f32 weights (847 KiB,
L3_MODEL) and gradients do not fit the 896 KiB L2 arena trains with weights in L3.
One row per program: the step's instructions, those of its L3_LOAD/L3_STORE nodes
(copies by the FC; on the chip the uDMA moves L3 in the background, so this is what
the copies cost when nothing overlaps them) and the bytes they move per step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from .blob import build_blob
from .boards import REPO_ROOT, load_board, with_cluster
from .compiler import TrainConfig, compile_model
from .costs import is_matrix_work, node_macs
from .device import Batch, Device
from .emulator import firmware_path, start
from .errors import EdgePropError, ToolError
from .link import Link
from .zoo import init_params, load_model, model_names

TARGET_MPI = 0.7
DEFAULT_OUT = REPO_ROOT / "bench" / "results.json"
TARGET_SPEEDUP = 7.0
CLUSTER_CORES = (1, 8)
#: BioTrain (GAP9, 8-core cluster) training throughput, samples/s, for comparison
BIOTRAIN_SAMPLES_PER_S = {"eegnet-scp1": 17, "eognet-blink": 85}


def bench_model(dev: Device, board: str, name: str, batch: int, steps: int, lr: float = 0.01,
                cfg: TrainConfig | None = None) -> list[dict]:
    """The model row and its conv/linear/attention rows of the last of `steps` training steps
    (cfg: fp32 full backprop at `batch`, SGD at lr, unless given)."""
    spec = load_model(name)
    cfg = cfg or TrainConfig(batch=batch, lr=lr)
    prog = compile_model(spec, init_params(spec, 0), cfg)
    dev.load(build_blob(prog))
    rng = np.random.default_rng(0)
    r = None
    for _ in range(steps):
        x = rng.standard_normal((batch, *spec.input)).astype(np.float32)
        r = dev.train(Batch.from_arrays(x, rng.integers(0, spec.classes, batch)))
    cycles = dev.profile()
    g = prog.graph
    total_macs = sum(node_macs(g, nd, batch) for nd in g.nodes[g.train_begin:])
    rows = [{"kind": "model", "name": name, "board": board, "dtype": cfg.dtype, "strategy": "full",
             "batch": batch, "instructions": r.cycles, "macs": total_macs,
             "mac_per_instruction": round(total_macs / r.cycles, 4),
             "instructions_per_sample": r.cycles // batch}]
    for i, nd in enumerate(g.nodes):
        if i < g.train_begin or not is_matrix_work(nd) or cycles[i] == 0:
            continue
        macs = node_macs(g, nd, batch)
        rows.append({"kind": "op", "name": f"{name}/{nd.layer}.{nd.fn.name.lower()}", "op": nd.op.name.lower(),
                     "fn": nd.fn.name.lower(), "board": board, "dtype": cfg.dtype, "strategy": "full",
                     "batch": batch, "instructions": cycles[i], "macs": macs,
                     "mac_per_instruction": round(macs / cycles[i], 4)})
    return rows


def _fits(prog, board) -> bool:
    return prog.plan.arena_bytes <= board.arena_bytes


def _cluster_run(board, cores: int, name: str, prog, batch: int, steps: int) -> tuple[int, list[int], list[int]]:
    """(step instructions, per-node instructions, per-core instructions inside forks) of the
    last of `steps` steps, with `cores` cluster cores in timing=turns mode."""
    spec = prog.spec
    with start(with_cluster(board, cores, "turns")) as running, Link.open(running.url, timeout=300.0) as link:
        wait_boot_hello(link)
        dev = Device(link)
        dev.hello()
        dev.load(build_blob(prog))
        rng = np.random.default_rng(0)
        r = None
        for _ in range(steps):
            x = rng.standard_normal((batch, *spec.input)).astype(np.float32)
            r = dev.train(Batch.from_arrays(x, rng.integers(0, spec.classes, batch)))
        return r.cycles, dev.profile(), dev.core_instructions()


def wait_boot_hello(link: Link, timeout: float = 20.0) -> None:
    """Wait for the boot HELLO before the first request (Link.await_boot_hello)."""
    if not link.await_boot_hello(timeout):
        raise ToolError("the board sent no boot HELLO")


def _tile_l1_bytes(g, nd) -> int:
    """Bytes one sample's tile of a conv/linear node touches: its weights (or weight
    gradient) and one sample of each batched tensor it reads and writes (f32)."""
    total = 0
    for t in (*nd.inputs, *nd.outputs):
        tt = g.tensors[t]
        n = int(np.prod(tt.dims)) if tt.dims else 1
        total += 4 * n
    return total


def bench_cluster(board, name: str, steps: int, dtype: str = "fp32") -> list[dict]:
    """Rows of one model's full-backprop steps on 1 and 8 cluster cores, in fp32 or int8, at
    the largest batch of 8, 4, 2, 1 that fits the arena."""
    spec = load_model(name)
    for batch in (8, 4, 2, 1):
        cfg = TrainConfig(batch=batch, lr=0.01, **({"dtype": dtype} if dtype != "fp32" else {}))
        prog = compile_model(spec, init_params(spec, 0), cfg)
        if _fits(prog, board):
            break
    else:
        raise ToolError(f"{name} does not fit gap9's arena even at batch 1")
    runs = {c: _cluster_run(board, c, name, prog, batch, steps) for c in CLUSTER_CORES}
    (s1, p1, _), (s8, p8, c8) = runs[1], runs[8]
    g = prog.graph
    rows = [{"kind": "cluster_model", "name": name, "board": board.name, "dtype": dtype, "strategy": "full",
             "batch": batch, "instructions_1": s1, "instructions_8": s8, "speedup": round(s1 / s8, 2),
             "samples_per_s_8": round(board.cpu_hz / (s8 / batch), 1),
             "samples_per_s_1": round(board.cpu_hz / (s1 / batch), 1),
             # CORES: what each of the 8 cores ran inside forks in that step, and the balance
             "core_instructions_8": c8, "core_balance_8": round(max(c8) / (sum(c8) / len(c8)), 3) if c8 else None}]
    for i, nd in enumerate(g.nodes):
        if i < g.train_begin or not is_matrix_work(nd) or p1[i] == 0:
            continue
        rows.append({"kind": "cluster_op", "name": f"{name}/{nd.layer}.{nd.fn.name.lower()}",
                     "op": nd.op.name.lower(), "fn": nd.fn.name.lower(), "board": board.name, "batch": batch,
                     "instructions_1": p1[i], "instructions_8": p8[i], "speedup": round(p1[i] / p8[i], 2)})
        if nd.op.name.lower() in ("linear", "conv2d"):
            rows.append({"kind": "cluster_l1", "name": f"{name}/{nd.layer}.{nd.fn.name.lower()}",
                         "board": board.name, "batch": batch, "l1_tile_bytes": _tile_l1_bytes(g, nd),
                         "l1_bytes": board.memory["l1"]["length"]})
    return rows


def cluster_totals(rows: list[dict]) -> list[dict]:
    """Per op.fn over the models: summed 1-core and 8-core instructions, and their ratio."""
    out: dict[str, dict] = {}
    for r in rows:
        if r["kind"] != "cluster_op":
            continue
        key = f"{r['op']}.{r['fn']}"
        t = out.setdefault(key, {"kind": "cluster_op_total", "name": key, "board": r["board"],
                                 "instructions_1": 0, "instructions_8": 0})
        t["instructions_1"] += r["instructions_1"]
        t["instructions_8"] += r["instructions_8"]
    for t in out.values():
        t["speedup"] = round(t["instructions_1"] / t["instructions_8"], 2)
    return list(out.values())


def main_cluster(args, console: Console) -> int:
    try:
        board = load_board("gap9")
        if not firmware_path(board).is_file():
            raise ToolError("no firmware for gap9", hint="run `make firmware BOARD=gap9` first")
        names = args.models.split(",") if args.models else model_names()
        rows: list[dict] = []
        for name in names:
            for dtype in ("fp32", "int8"):
                console.print(f"==> {name} ({dtype}) on the gap9 cluster: 1 and 8 cores, {args.steps} steps each")
                rows += bench_cluster(board, name, args.steps, dtype)
    except EdgePropError as e:
        console.print(f"[red]error:[/] {e}")
        return 1
    rows += cluster_totals(rows)
    out = args.out if args.out != DEFAULT_OUT else REPO_ROOT / "bench" / "cluster.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    table = Table(title=f"gap9 cluster: critical-path instructions on 1 and 8 cores (full backprop; "
                        f"target ≥ {TARGET_SPEEDUP:.0f}× on fp32 conv and linear)")
    for col in ("kind", "name", "batch", "1 core", "8 cores", "speed-up"):
        table.add_column(col, justify="left" if col in ("kind", "name") else "right", no_wrap=True)
    for r in rows:
        if r["kind"] == "cluster_l1":
            continue
        flag = "" if r["kind"] != "cluster_op_total" or r["speedup"] >= TARGET_SPEEDUP else " [yellow](below)[/]"
        name = f"{r['name']} ({r['dtype']})" if r["kind"] == "cluster_model" else r["name"]
        table.add_row(r["kind"], name, str(r.get("batch", "")), f"{r['instructions_1']:,}",
                      f"{r['instructions_8']:,}", f"{r['speedup']:.2f}{flag}")
    console.print(table)
    console.print(f"wrote {out}")
    return 0


#: 64 → 4×256 → 10 on 8×8 digits: 847 KiB of f32 weights; with one layer's 256 KiB weight
#: gradient the program exceeds GAP9's 896 KiB arena, so two weights move to L3
L3_MODEL = {
    "name": "mlp-deep-digits", "input": [64], "classes": 10, "loss": "softmax_cross_entropy",
    "layers": [{"type": "linear", "name": "fc1", "out": 256}, {"type": "relu", "name": "r1"},
               {"type": "linear", "name": "fc2", "out": 256}, {"type": "relu", "name": "r2"},
               {"type": "linear", "name": "fc3", "out": 256}, {"type": "relu", "name": "r3"},
               {"type": "linear", "name": "fc4", "out": 256}, {"type": "relu", "name": "r4"},
               {"type": "linear", "name": "fc5", "out": 10}],
}


def main_l3(args, console: Console) -> int:
    from .ids import OpCode
    from .zoo import parse_model

    try:
        board = load_board("gap9")
        if not firmware_path(board).is_file():
            raise ToolError("no firmware for gap9", hint="run `make firmware BOARD=gap9` first")
        spec = parse_model(L3_MODEL)
        rows = []
        with start(board) as running, Link.open(running.url, timeout=120.0) as link:
            wait_boot_hello(link)
            dev = Device(link)
            hello = dev.hello()
            for opt in ("sgd", "momentum"):  # Adam needs W, m, v and dW of a 256 KiB layer at once: > 896 KiB
                cfg = TrainConfig(batch=args.batch, lr=0.01, optimizer=opt)
                prog = compile_model(spec, init_params(spec, 0), cfg, arena_limit=hello.arena_bytes,
                                     l3_limit=hello.l3_bytes)
                console.print(f"==> {spec.name} ({opt}) on gap9: {len(prog.plan.l3_tensors)} tensors in L3")
                dev.load(build_blob(prog))
                rng = np.random.default_rng(0)
                r = None
                for _ in range(args.steps):
                    x = rng.standard_normal((args.batch, *spec.input)).astype(np.float32)
                    r = dev.train(Batch.from_arrays(x, rng.integers(0, spec.classes, args.batch)))
                cycles = dev.profile()
                g = prog.graph
                copies = [i for i, nd in enumerate(g.nodes) if nd.op in (OpCode.L3_LOAD, OpCode.L3_STORE)
                          and i >= g.train_begin]
                rows.append({"kind": "l3", "name": f"{spec.name}/{opt}", "board": "gap9", "batch": args.batch,
                             "arena_bytes": prog.plan.arena_bytes, "l3_bytes": prog.plan.l3_bytes,
                             "l3_tensors": sorted(g.tensors[i].name for i in prog.plan.l3_tensors),
                             "no_l3_arena_bytes": compile_model(spec, init_params(spec, 0), cfg).plan.arena_bytes,
                             "instructions": r.cycles, "copy_instructions": sum(cycles[i] for i in copies),
                             "copy_bytes": sum(prog.plan.sizes[g.nodes[i].inputs[0]] for i in copies)})
    except EdgePropError as e:
        console.print(f"[red]error:[/] {e}")
        return 1
    out = args.out if args.out != DEFAULT_OUT else REPO_ROOT / "bench" / "l3.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    table = Table(title="gap9: training with weights in L3 (8 cores, one step)")
    for col in ("program", "arena (no L3)", "arena", "L3", "step instr.", "copy instr.", "copied B"):
        table.add_column(col, justify="left" if col == "program" else "right", no_wrap=True)
    for r in rows:
        table.add_row(r["name"], f"{r['no_l3_arena_bytes']:,}", f"{r['arena_bytes']:,}", f"{r['l3_bytes']:,}",
                      f"{r['instructions']:,}",
                      f"{r['copy_instructions']:,} ({100 * r['copy_instructions'] / r['instructions']:.1f} %)",
                      f"{r['copy_bytes']:,}")
    console.print(table)
    console.print(f"wrote {out}")
    return 0


def op_totals(rows: list[dict]) -> list[dict]:
    out: dict[tuple, dict] = {}
    for r in rows:
        if r["kind"] != "op":
            continue
        key = (r["op"], r["fn"], r["board"])
        t = out.setdefault(key, {"kind": "op_total", "name": f"{r['op']}.{r['fn']}", "op": r["op"], "fn": r["fn"],
                                 "board": r["board"], "dtype": r["dtype"], "strategy": r["strategy"],
                                 "instructions": 0, "macs": 0})
        t["instructions"] += r["instructions"]
        t["macs"] += r["macs"]
    for t in out.values():
        t["mac_per_instruction"] = round(t["macs"] / t["instructions"], 4)
    return list(out.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--board", default="mps2-an386")
    ap.add_argument("--models", help="comma-separated model names (default: every shipped model)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2, help="training steps per model; the last is measured")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--cluster", action="store_true",
                    help="the gap9 cluster section instead: 1 vs 8 cores (default out: bench/cluster.json)")
    ap.add_argument("--l3", action="store_true",
                    help="the L3 section instead: gap9 training with weights in L3 (default out: bench/l3.json)")
    args = ap.parse_args(argv)
    console = Console(width=max(Console().width, 120))
    if args.cluster:
        return main_cluster(args, console)
    if args.l3:
        return main_l3(args, console)
    try:
        board = load_board(args.board)
        if not firmware_path(board).is_file():
            raise ToolError(f"no firmware for {board.name}", hint=f"run `make firmware BOARD={board.name}` first")
        names = args.models.split(",") if args.models else model_names()
        rows: list[dict] = []
        with start(board) as running, Link.open(running.url, timeout=60.0) as link:
            dev = Device(link)
            dev.hello()
            for name in names:
                console.print(f"==> {name} on {board.name}: {args.steps} training steps at batch {args.batch}")
                rows += bench_model(dev, board.name, name, args.batch, args.steps)
    except EdgePropError as e:
        console.print(f"[red]error:[/] {e}")
        return 1
    rows += op_totals(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    table = Table(title=f"training-step cost on {args.board} (fp32, full backprop; target ≥ {TARGET_MPI} MAC/instr "
                        "on conv and linear)")
    for col in ("kind", "name", "instructions", "MACs", "MAC/instr"):
        table.add_column(col, justify="right" if col in ("instructions", "MACs", "MAC/instr") else "left",
                         no_wrap=True)
    for r in rows:
        mpi = r["mac_per_instruction"]
        flag = "" if r["kind"] == "model" or mpi >= TARGET_MPI else " [yellow](below)[/]"
        table.add_row(r["kind"], r["name"], f"{r['instructions']:,}", f"{r['macs']:,}", f"{mpi:.3f}{flag}")
    console.print(table)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
