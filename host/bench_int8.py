"""Benchmark of the int8 training ops: MAC per instruction and memory, beside fp32.

    python -m host.bench_int8 [--board mps2-an386] [--batch 1,8] [--out bench/int8_results.json]

For two reference layers (linear 256→128; conv 16→16, 3×3, padding 1, on 16×16,
the layers of docs/architecture.md's performance table) it builds one graph per
dtype holding the layer's three training functions (forward, input gradient,
parameter gradient; int8: LINEAR_Q8 / CONV2D_Q8 with int32 weight gradients, fp32:
LINEAR / CONV2D), runs it on the emulated board and reads every node's cost with
PROFILE: exact executed instructions under QEMU -icount. On Cortex-M boards the
int8 graph runs twice: on the normal firmware (DSP SIMD inner loops) and on a
build with -DEP_Q8_PORTABLE (plain C), built here into build/<board>-q8portable/.

Rows of bench/int8_results.json:
  kind "op"      one per layer, function, dtype, build and batch: instructions,
                 MACs (host.costs, taps inside the input only), MAC/instruction;
                 dtype "int8-sample" is the conv with per-sample sums (TrainConfig
                 int8_sums "sample": fw and bw_input make their sums twice);
  kind "memory"  per layer and batch: bytes of activations and back-propagated
                 errors the layer keeps (x, y, dy, dx), int8 vs fp32, their ratio,
                 and the int8 kernels' transient scratch (reused between nodes);
  kind "model_memory"  per shipped model (full backprop, the largest batch) and way of
                 holding the int8 convs' sums (int8_sums batch | sample): the planned
                 peak of activations, errors and scratch alive at once, fp32 vs int8;
  kind "model_step"  per shipped model and way of training (fp32; int8 with the batch's or
                 with per-sample sums): instructions of one whole training step (full
                 backprop, SGD, the largest batch) on the board, every layer included.
  kind "fp32_model_ops"  the fp32 conv/linear totals of bench/results.json
                 (`make bench`), copied for comparison when that file exists.
Targets (issue 5): ≥ 1.5 MAC/instruction for int8 steps on mps2-an386, and
activation+gradient memory ≤ 0.3× fp32. The table marks misses; the numbers are
what this build does, not what the targets wish.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from rich.console import Console
from rich.table import Table

from . import quant as q
from .blob import build_blob
from .boards import REPO_ROOT, load_board, render
from .costs import node_macs
from .device import Batch, Device
from .emulator import firmware_path, start
from .errors import EdgePropError, ToolError
from .graph import Graph, Node, Tensor, align
from .ids import DType, OpCode, OpFn, TensorFlag
from .link import Link

TARGET_MPI = 1.5
TARGET_MEMORY_RATIO = 0.3
B, P = TensorFlag.BATCHED, TensorFlag.PARAM
FNS = (OpFn.FW, OpFn.BW_INPUT, OpFn.BW_PARAM)
#: boards whose cores have the DSP extension (the SIMD build and a portable one to compare)
ARM_DSP_BOARDS = ("mps2-", "mps3-", "netduinoplus2", "nucleo-")

#: name → (kind, shape): linear (K, M); conv (c_in, h, w, c_out, k, pad)
LAYERS = {
    "linear-256x128": ("linear", (256, 128)),
    "conv-16x16-3x3-16x16": ("conv", (16, 16, 16, 16, 3, 1)),
    # cnn-fashion's b1_dw: a depthwise 3×3 (one input channel per group: the direct path)
    "dwconv-32-3x3-14x14": ("dwconv", (32, 14, 14, 32, 3, 1)),
}


def portable_firmware(board_name: str) -> Path:
    """Build `board_name`'s firmware with -DEP_Q8_PORTABLE (the plain C int8 inner
    loops instead of the DSP SIMD ones) into build/<board>-q8portable/; the elf."""
    out = REPO_ROOT / "build" / f"{board_name}-q8portable"
    render(load_board(board_name), out)
    mk = out / "board.mk"
    line = "BOARD_CFLAGS += -DEP_Q8_PORTABLE\n"
    if line not in mk.read_text():
        mk.write_text(mk.read_text() + line)
    proc = subprocess.run(["make", "-s", "-C", str(REPO_ROOT / "firmware"), f"BUILD={out}"],
                          capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        raise ToolError(f"building the portable int8 firmware failed:\n{proc.stdout}\n{proc.stderr}",
                        hint="check the cross toolchain (make setup)")
    return out / "edgeprop.elf"


class _G:
    """A small graph with named tensors and a no-sharing plan (every tensor its own span)."""

    def __init__(self, name: str, batch: int):
        self.g = Graph(name, batch, 2)
        self.n: dict[str, int] = {}
        self.g.input_tensor = self.t("input", (1,), DType.F32, B | TensorFlag.INPUT)
        self.g.label_tensor = self.t("labels", (1,), DType.I32, B | TensorFlag.LABEL)
        self.g.stats_tensor = self.t("stats", (2,), DType.F32)

    def t(self, name, dims, dtype, flags=TensorFlag(0), init=None) -> int:
        self.n[name] = self.g.add_tensor(Tensor(name, tuple(dims), dtype, TensorFlag(flags), init))
        return self.n[name]

    def scratch(self, name, nbytes) -> int:
        rows = -(-nbytes // 4096)
        return self.t(name, (rows, 4096) if rows > 1 else (max(nbytes, 1),), DType.S8)

    def node(self, op, fn, ins, outs, iattrs=()) -> None:
        self.g.add_node(Node(op, fn, [self.n[i] for i in ins], [self.n[o] for o in outs], tuple(iattrs)))

    def blob(self) -> bytes:
        g = self.g
        g.n_eval_nodes = g.train_loss_end = len(g.nodes)
        sizes = [t.nbytes(g.max_batch) for t in g.tensors]
        offsets = np.concatenate([[0], np.cumsum([align(s) for s in sizes])]).tolist()
        plan = SimpleNamespace(offsets=offsets[:-1], sizes=sizes, arena_bytes=offsets[-1])
        return build_blob(SimpleNamespace(graph=g, plan=plan))


def _act_shapes(kind, shape):
    """(x dims, y dims, W dims, geometry) per sample."""
    if kind == "linear":
        K, M = shape
        return (K,), (M,), (M, K), None
    ci, h, w, co, k, pad = shape
    groups = ci if kind == "dwconv" else 1
    g = q.ConvGeom((1, 1), (pad,) * 4, (1, 1), groups)
    ho, wo = g.out_shape(h, w, k, k)
    return (ci, h, w), (co, ho, wo), (co, ci // groups, k, k), g


def layer_graph(name: str, dtype: str, batch: int) -> _G:
    """The layer's fw, bw_input and bw_param nodes in one graph, inputs preloaded."""
    kind, shape = LAYERS[name]
    xd, yd, wd, geo = _act_shapes(kind, shape)
    rng = np.random.default_rng(0)
    G = _G(f"{name}-{dtype}", batch)
    iattrs = geo.iattrs if geo else ()
    nx, ny = int(np.prod(xd)) * batch, int(np.prod(yd)) * batch
    if dtype == "fp32":
        op = OpCode.LINEAR if kind == "linear" else OpCode.CONV2D
        G.t("x", xd, DType.F32, B, rng.standard_normal(nx).astype(np.float32))
        G.t("dy", yd, DType.F32, B, rng.standard_normal(ny).astype(np.float32))
        G.t("W", wd, DType.F32, P | TensorFlag.TRAINABLE, rng.standard_normal(wd).astype(np.float32) * 0.1)
        G.t("b", (wd[0],), DType.F32, P | TensorFlag.TRAINABLE, np.zeros(wd[0], np.float32))
        for n_, d in (("y", yd), ("dx", xd)):
            G.t(n_, d, DType.F32, B)
        G.t("dW", wd, DType.F32)
        G.t("db", (wd[0],), DType.F32)
        G.node(op, OpFn.FW, ["x", "W", "b"], ["y"], iattrs)
        G.node(op, OpFn.BW_INPUT, ["dy", "W"], ["dx"], iattrs)
        G.node(op, OpFn.BW_PARAM, ["dy", "x"], ["dW", "db"], iattrs)
        return G
    op = OpCode.LINEAR_Q8 if kind == "linear" else OpCode.CONV2D_Q8
    codes = lambda n_: rng.integers(-127, 128, n_).astype(np.int8)  # noqa: E731
    G.t("x", xd, DType.S8, B, codes(nx))
    G.t("dy", yd, DType.S8, B, codes(ny))
    G.t("W", wd, DType.S8, P | TensorFlag.TRAINABLE, codes(int(np.prod(wd))))
    for n_, v, c in (("e_x", -7, 1), ("e_dy", -9, 1), ("e_w", -8, wd[0]), ("e_b", -20, 1)):
        G.t(n_, (c,), DType.I32, P, np.full(c, v, np.int32))
    G.t("b", (wd[0],), DType.I32, P, np.zeros(wd[0], np.int32))
    for n_, d in (("y", yd), ("dx", xd)):
        G.t(n_, d, DType.S8, B)
        G.t("e_" + n_, (1,), DType.I32)
    G.t("gW", wd, DType.I32)
    G.t("gb", (wd[0],), DType.I32)
    G.t("e_g", (2,), DType.I32)
    per_sample = dtype == "int8-sample"  # CONV2D_Q8 iattr[9], LINEAR_Q8 iattr[0]: one sample's sums, made twice
    for fn in ("fw", "bw_input", "bw_param"):
        G.scratch("s_" + fn, scratch_bytes(name, fn, batch, per_sample))
    sums = tuple(iattrs) + (1,) if per_sample else iattrs
    G.node(op, OpFn.FW, ["x", "e_x", "W", "e_w", "b", "e_b"], ["y", "e_y", "s_fw"], sums)
    G.node(op, OpFn.BW_INPUT, ["dy", "e_dy", "W", "e_w"], ["dx", "e_dx", "s_bw_input"], sums)
    G.node(op, OpFn.BW_PARAM, ["dy", "e_dy", "x", "e_x"], ["gW", "gb", "e_g", "s_bw_param"], iattrs)
    return G


def scratch_bytes(name: str, fn: str, batch: int, per_sample: bool = False) -> int:
    kind, shape = LAYERS[name]
    xd, _, wd, geo = _act_shapes(kind, shape)
    if kind == "linear":  # one row per sample
        return q.linear_scratch_bytes(fn, batch, wd[0], wd[1], 1 if per_sample else None)
    return q.conv_scratch_bytes(fn, batch, xd, wd, geo, per_sample)


def measure(dev: Device, G: _G) -> list[int]:
    """Instructions of each node over one EVAL of max_batch samples (after a warm-up run)."""
    dev.load(G.blob())
    b = G.g.max_batch
    batch = Batch.from_arrays(np.zeros((b, 1), np.float32), np.zeros(b, np.int64))
    dev.evaluate(batch)
    dev.evaluate(batch)
    return dev.profile()


def macs_of(name: str, batch: int) -> list[int]:
    """MACs of fw, bw_input, bw_param (host.costs on the fp32 twin: same products)."""
    G = layer_graph(name, "fp32", batch)
    return [node_macs(G.g, nd, batch) for nd in G.g.nodes]


def memory_row(name: str, batch: int) -> dict:
    """Bytes of the layer's activations and errors (x, y, dy, dx) per dtype, and int8 scratch."""
    kind, shape = LAYERS[name]
    xd, yd, _, _ = _act_shapes(kind, shape)
    elems = 2 * batch * (int(np.prod(xd)) + int(np.prod(yd)))
    int8 = elems + 4 * 4  # the codes and four i32 exponents
    fp32 = 4 * elems
    scratch = max(scratch_bytes(name, fn, batch) for fn in ("fw", "bw_input", "bw_param"))
    return {"kind": "memory", "name": name, "batch": batch, "int8_bytes": int8, "fp32_bytes": fp32,
            "ratio": round(int8 / fp32, 4), "int8_scratch_bytes": scratch,
            "ratio_with_scratch": round((int8 + scratch) / fp32, 4),
            "note": "weight gradients are int32 (SGD_Q8) or f32 (master weights): 4 bytes per weight either way"}


def live_peak(prog, scratch: bool = True) -> int:
    """The most bytes of activations, errors and (with `scratch`) int8 scratch alive at once in
    prog's plan: every tensor but parameters, views and the input/label/stats slots."""
    g, plan = prog.graph, prog.plan
    fixed = (g.input_tensor, g.label_tensor, g.stats_tensor)
    delta = np.zeros(len(g.nodes) + 1, np.int64)
    for i, t in enumerate(g.tensors):
        if t.is_param or t.alias_of is not None or i in fixed or (not scratch and t.name.endswith("scratch")):
            continue
        delta[plan.first[i]] += align(plan.sizes[i])
        delta[plan.last[i] + 1] -= align(plan.sizes[i])
    return int(np.cumsum(delta).max())


def model_memory_rows(batch: int) -> list[dict]:
    """Per shipped model, full backprop at `batch`: the planned activation + error peak (and
    the whole arena) in fp32 and in int8 (f32 masters), and their ratio: the issue's
    memory target measured on whole plans, where fp32 layers between the int8 ones (layer
    norms, attention, the loss, and what feeds an ADD) keep their f32 tensors. One row per
    way the int8 convs hold their int32 sums (TrainConfig.int8_sums): "batch" (fastest) and
    "sample" (one sample's, made twice: what `auto` picks when only it fits a board)."""
    from .compiler import TrainConfig, compile_model
    from .importer import resolve_model
    from .zoo import model_names

    rows = []
    for name in model_names():
        spec, params = resolve_model(name, 0)
        fp32 = compile_model(spec, params, TrainConfig(batch=batch))
        for sums in ("batch", "sample"):
            int8 = compile_model(spec, params, TrainConfig(batch=batch, dtype="int8", int8_sums=sums))
            live = {"fp32": live_peak(fp32), "int8": live_peak(int8)}
            bare = {"fp32": live_peak(fp32, scratch=False), "int8": live_peak(int8, scratch=False)}
            rows.append({"kind": "model_memory", "name": name, "batch": batch, "strategy": "full",
                         "int8_sums": sums, "fp32_live_bytes": live["fp32"], "int8_live_bytes": live["int8"],
                         "ratio": round(live["int8"] / live["fp32"], 4),
                         "int8_live_bytes_without_scratch": bare["int8"],
                         "ratio_without_scratch": round(bare["int8"] / bare["fp32"], 4),
                         "fp32_arena_bytes": fp32.plan.arena_bytes,
                         "int8_arena_bytes": int8.plan.arena_bytes})
    return rows


def run_board(board, elf, build: str, batches, dtypes, console, model_batch: int = 0) -> list[dict]:
    rows = []
    with start(board, elf=elf) as running, Link.open(running.url, timeout=120.0) as link:
        dev = Device(link)
        dev.hello()
        for name in LAYERS:
            for batch in batches:
                macs = macs_of(name, batch)
                for dtype in dtypes:
                    if dtype == "int8-sample" and batch == 1:
                        continue  # per-sample sums: the same as the batch's at batch 1
                    console.print(f"==> {name} {dtype} ({build}) batch {batch} on {board.name}")
                    cycles = measure(dev, layer_graph(name, dtype, batch))
                    for fn, c, m in zip(FNS, cycles, macs):
                        rows.append({"kind": "op", "name": f"{name}.{fn.name.lower()}", "layer": name,
                                     "fn": fn.name.lower(), "dtype": dtype, "build": build, "board": board.name,
                                     "batch": batch, "instructions": c, "macs": m,
                                     "mac_per_instruction": round(m / c, 4)})
                    tot_c, tot_m = sum(cycles[:3]), sum(macs)
                    rows.append({"kind": "op", "name": f"{name}.step", "layer": name, "fn": "step",
                                 "dtype": dtype, "build": build, "board": board.name, "batch": batch,
                                 "instructions": tot_c, "macs": tot_m, "mac_per_instruction": round(tot_m / tot_c, 4)})
        if model_batch:
            rows += model_step_rows(dev, board.name, build, model_batch, console)
    return rows


#: whole-model steps: fp32, int8 with the batch's sums, int8 with per-sample sums
MODEL_STEP_CONFIGS = {"fp32": {}, "int8": {"dtype": "int8", "int8_sums": "batch"},
                      "int8-sample": {"dtype": "int8", "int8_sums": "sample"}}


def model_step_rows(dev: Device, board: str, build: str, batch: int, console) -> list[dict]:
    """Instructions of one training step (forward, backward, update) of every shipped model,
    full backprop at `batch`, in fp32 and int8 (f32 masters, SGD): what int8 costs or saves
    on whole models, the layers between the convs and linear layers included."""
    from .bench import bench_model
    from .compiler import TrainConfig
    from .zoo import model_names

    rows = []
    for name in model_names():
        for label, kw in MODEL_STEP_CONFIGS.items():
            console.print(f"==> {name} {label} ({build}) training step at batch {batch} on {board}")
            r = bench_model(dev, board, name, batch, steps=2, cfg=TrainConfig(batch=batch, lr=0.01, **kw))[0]
            rows.append(dict(r, kind="model_step", dtype=label, build=build))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host.bench_int8", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--board", default="mps2-an386")
    ap.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--no-portable", action="store_true", help="skip the -DEP_Q8_PORTABLE build")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "int8_results.json")
    args = ap.parse_args(argv)
    console = Console(width=max(Console().width, 120))
    batches = [int(b) for b in args.batch.split(",")]
    try:
        board = load_board(args.board)
        if not firmware_path(board).is_file():
            raise ToolError(f"no firmware for {board.name}", hint=f"run `make firmware BOARD={board.name}` first")
        arm_dsp = board.name.startswith(ARM_DSP_BOARDS)
        rows = run_board(board, None, "simd" if arm_dsp else "default", batches, ("int8", "int8-sample", "fp32"),
                         console, model_batch=max(batches))
        if not args.no_portable and arm_dsp:
            rows += run_board(board, portable_firmware(board.name), "portable", batches, ("int8",), console)
    except EdgePropError as e:
        console.print(f"[red]error:[/] {e}")
        return 1
    rows += [memory_row(name, b) for name in LAYERS for b in batches]
    rows += model_memory_rows(max(batches))
    fp32_file = REPO_ROOT / "bench" / "results.json"
    if fp32_file.is_file():
        rows += [dict(r, kind="fp32_model_ops") for r in json.loads(fp32_file.read_text())
                 if r.get("kind") == "op_total" and r.get("board") == board.name]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")

    table = Table(title=f"int8 vs fp32 training functions on {board.name} (target ≥ {TARGET_MPI} MAC/instr for int8)")
    for col in ("layer.fn", "batch", "dtype", "build", "instructions", "MACs", "MAC/instr"):
        table.add_column(col, justify="left" if col in ("layer.fn", "dtype", "build") else "right", no_wrap=True)
    for r in rows:
        if r["kind"] != "op":
            continue
        mpi = r["mac_per_instruction"]
        flag = " [yellow](below)[/]" if r["dtype"].startswith("int8") and mpi < TARGET_MPI else ""
        table.add_row(r["name"], str(r["batch"]), r["dtype"], r["build"], f"{r['instructions']:,}", f"{r['macs']:,}",
                      f"{mpi:.3f}{flag}")
    console.print(table)
    mem = Table(title=f"activation + error memory (target ≤ {TARGET_MEMORY_RATIO}× fp32)")
    for col in ("layer", "batch", "int8 B", "fp32 B", "ratio", "int8 scratch B", "ratio incl. scratch"):
        mem.add_column(col, justify="left" if col == "layer" else "right")
    for r in rows:
        if r["kind"] == "memory":
            mem.add_row(r["name"], str(r["batch"]), f"{r['int8_bytes']:,}", f"{r['fp32_bytes']:,}", f"{r['ratio']:.3f}",
                        f"{r['int8_scratch_bytes']:,}", f"{r['ratio_with_scratch']:.3f}")
    console.print(mem)
    whole = Table(title=f"whole plans, full backprop: activation + error peak (target ≤ {TARGET_MEMORY_RATIO}× fp32)")
    for col in ("model", "int8 sums", "batch", "fp32 B", "int8 B", "ratio", "ratio w/o scratch", "arena fp32 → int8"):
        whole.add_column(col, justify="left" if col in ("model", "int8 sums") else "right")
    for r in rows:
        if r["kind"] == "model_memory":
            flag = "" if r["ratio"] <= TARGET_MEMORY_RATIO else " [yellow](above)[/]"
            whole.add_row(r["name"], r["int8_sums"], str(r["batch"]), f"{r['fp32_live_bytes']:,}", f"{r['int8_live_bytes']:,}",
                          f"{r['ratio']:.3f}{flag}", f"{r['ratio_without_scratch']:.3f}",
                          f"{r['fp32_arena_bytes']:,} → {r['int8_arena_bytes']:,}")
    console.print(whole)
    steps = Table(title=f"whole training steps on {board.name}, full backprop, SGD (instructions per step)")
    for col in ("model", "batch", "fp32", "int8", "int8 / fp32", "int8, sample sums", "/ fp32"):
        steps.add_column(col, justify="left" if col == "model" else "right")
    by = {(r["name"], r["dtype"]): r for r in rows if r["kind"] == "model_step"}
    for name in dict.fromkeys(n for n, _ in by):
        f, i, s_ = (by[(name, d)]["instructions"] for d in MODEL_STEP_CONFIGS)
        steps.add_row(name, str(by[(name, "fp32")]["batch"]), f"{f:,}", f"{i:,}", f"{i / f:.2f}", f"{s_:,}",
                      f"{s_ / f:.2f}")
    console.print(steps)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
