"""Compile a model into a training blob (.epm) for a board, and show its memory plan.

The blob holds the training graph (forward, loss, backward, SGD updates), the
static arena plan and the initial weights (docs/blob.md). A model whose arena
does not fit the board is refused here, with the biggest tensors named.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from ..blob import blob_crc, build_blob
from ..boards import load_board
from ..compiler import compile_model
from ..planner import format_plan
from .options import add_options, add_training_arguments, model_and_params, train_config

NAME = "compile"
HELP = "compile a model to a .epm training blob and print its memory plan"


def add_arguments(p) -> None:
    add_training_arguments(p)
    add_options(p, "board", "json")
    p.add_argument("-o", "--output", type=Path, help="write the blob here (default: <model>.epm)")
    p.add_argument("--plan", action="store_true", help="print the memory plan tensor by tensor")


def run(args) -> int:
    board = load_board(args.board or "mps2-an386")
    spec, params = model_and_params(args)
    prog = compile_model(spec, params, train_config(args), arena_limit=board.arena_bytes,
                         max_tensors=board.max_tensors, max_nodes=board.max_nodes)
    blob = build_blob(prog)
    out = args.output or Path(f"{spec.name}.epm")
    out.write_bytes(blob)
    plan = prog.plan
    info = {"version": 1, "model": spec.name, "board": board.name, "blob": str(out), "blob_bytes": len(blob),
            "model_crc": f"{blob_crc(blob):08x}", "arena_bytes": plan.arena_bytes,
            "lower_bound_bytes": plan.lower_bound, "naive_bytes": plan.naive_bytes,
            "board_arena_bytes": board.arena_bytes, "tensors": len(prog.graph.tensors),
            "nodes": len(prog.graph.nodes),
            "trainable_params": sum(prog.graph.tensors[i].elems for i in prog.graph.trainable)}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = Console()
    c.print(f"[bold]{spec.name}[/] for [bold]{board.name}[/]: {len(blob)} B blob → {out}")
    c.print(f"arena {plan.arena_bytes} B of {board.arena_bytes} B (lower bound {plan.lower_bound} B), "
            f"{info['trainable_params']} trainable parameters, {info['nodes']} nodes")
    if args.plan:
        for n in prog.graph.nodes:
            c.print("  " + n.describe(prog.graph), highlight=False)
        c.print(format_plan(prog.graph, plan), highlight=False)
    return 0
