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
from ..boards import load_board, omitted_ops
from ..compiler import compile_model
from ..errors import ModelError
from ..planner import format_plan
from .options import add_options, add_training_arguments, compile_config, model_and_params

NAME = "compile"
HELP = "compile a model to a .epm training blob and print its memory plan"


def add_arguments(p) -> None:
    add_training_arguments(p)
    add_options(p, "board", "json")
    p.add_argument("-o", "--output", type=Path, help="write the blob here (default: <model>.epm)")
    p.add_argument("--plan", action="store_true", help="print the memory plan tensor by tensor")
    p.add_argument("--dataset", metavar="NAME",
                   help="calibration data a sparse strategy scores channels on (default: the model's)")


def run(args) -> int:
    board = load_board(args.board or "mps2-an386")
    spec, params = model_and_params(args)
    cfg = compile_config(args, spec, params, board.arena_bytes)
    prog = compile_model(spec, params, cfg, arena_limit=board.arena_bytes,
                         max_tensors=board.max_tensors, max_nodes=board.max_nodes, l3_limit=board.l3_bytes)
    missing = sorted({nd.op.name.lower() for nd in prog.graph.nodes} & omitted_ops(board))
    if missing:
        raise ModelError(f"{spec.name} needs {', '.join(missing)}, which {board.name}'s firmware leaves out "
                         f"([runtime] omit_ops in boards/{board.name}/board.toml)",
                         hint="compile it for another board, or with another --dtype")
    blob = build_blob(prog)
    out = args.output or Path(f"{spec.name}.epm")
    out.write_bytes(blob)
    plan = prog.plan
    report = prog.report()
    info = {"version": 1, "model": spec.name, "board": board.name, "blob": str(out), "blob_bytes": len(blob),
            "model_crc": f"{blob_crc(blob):08x}", "arena_bytes": plan.arena_bytes,
            "board_arena_bytes": board.arena_bytes, "tensors": len(prog.graph.tensors),
            "nodes": len(prog.graph.nodes), **report,
            "train_channels": {k: list(v) for k, v in cfg.train_channels or ()}}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = Console()
    c.print(f"[bold]{spec.name}[/] for [bold]{board.name}[/]: {len(blob)} B blob → {out}")
    c.print(f"strategy {cfg.strategy}: trains {report['trainable_params']:,} parameters; gradients "
            f"{report['gradient_bytes']:,} B, optimizer state {report['optimizer_state_bytes']:,} B; "
            f"{report['forward_macs']:,} forward + {report['backward_macs']:,} backward MACs per batch of "
            f"{cfg.batch}", highlight=False)
    c.print(f"arena {plan.arena_bytes:,} B of {board.arena_bytes:,} B (lower bound {plan.lower_bound:,} B, "
            f"every tensor its own buffer {plan.naive_bytes:,} B), {info['nodes']} nodes", highlight=False)
    if plan.l3_tensors:
        c.print(f"L3 {plan.l3_bytes:,} B of {board.l3_bytes:,} B: {', '.join(report['l3_tensors'])} "
                "(copied into the arena around the nodes that use them)", highlight=False)
    for layer, chans in cfg.train_channels or ():
        names = f"0-{len(chans) - 1}" if chans == tuple(range(len(chans))) else ", ".join(map(str, chans))
        c.print(f"  sparse: {layer} trains channels {names}", highlight=False)
    if args.plan:
        for n in prog.graph.nodes:
            c.print("  " + n.describe(prog.graph), highlight=False)
        c.print(format_plan(prog.graph, plan), highlight=False)
    return 0
