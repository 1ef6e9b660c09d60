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
from .boards import REPO_ROOT, load_board
from .compiler import TrainConfig, compile_model
from .costs import is_matrix_work, node_macs
from .device import Batch, Device
from .emulator import firmware_path, start
from .errors import EdgePropError, ToolError
from .link import Link
from .zoo import init_params, load_model, model_names

TARGET_MPI = 0.7


def bench_model(dev: Device, board: str, name: str, batch: int, steps: int, lr: float = 0.01) -> list[dict]:
    spec = load_model(name)
    prog = compile_model(spec, init_params(spec, 0), TrainConfig(batch=batch, lr=lr))
    dev.load(build_blob(prog))
    rng = np.random.default_rng(0)
    r = None
    for _ in range(steps):
        x = rng.standard_normal((batch, *spec.input)).astype(np.float32)
        r = dev.train(Batch.from_arrays(x, rng.integers(0, spec.classes, batch)))
    cycles = dev.profile()
    g = prog.graph
    total_macs = sum(node_macs(g, nd, batch) for nd in g.nodes[g.train_begin:])
    rows = [{"kind": "model", "name": name, "board": board, "dtype": "fp32", "strategy": "full",
             "batch": batch, "instructions": r.cycles, "macs": total_macs,
             "mac_per_instruction": round(total_macs / r.cycles, 4),
             "instructions_per_sample": r.cycles // batch}]
    for i, nd in enumerate(g.nodes):
        if i < g.train_begin or not is_matrix_work(nd) or cycles[i] == 0:
            continue
        macs = node_macs(g, nd, batch)
        rows.append({"kind": "op", "name": f"{name}/{nd.layer}.{nd.fn.name.lower()}", "op": nd.op.name.lower(),
                     "fn": nd.fn.name.lower(), "board": board, "dtype": "fp32", "strategy": "full",
                     "batch": batch, "instructions": cycles[i], "macs": macs,
                     "mac_per_instruction": round(macs / cycles[i], 4)})
    return rows


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
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results.json")
    args = ap.parse_args(argv)
    console = Console(width=max(Console().width, 120))
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
