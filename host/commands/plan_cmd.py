"""Show the static memory plan of a model on a board, or of every model everywhere.

    host plan --model eegnet-scp1 --board netduinoplus2 --strategy last
    host plan --all --json

The plan (host.planner) gives every tensor an offset in one arena; its peak is
compared with the lower bound (the largest total of tensors alive at once: no
plan can be smaller) and with no sharing at all. `--all` plans every shipped
model × strategy (full, last, bias, sparse, lora=4) × dtype (fp32, int8, mixed) × board and
says whether it fits; `sparse` chooses its channels on each model's own dataset
(and, as compile does, within each board's arena).
"""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from ..boards import board_names, load_board
from ..compiler import DTYPES, TrainConfig, compile_model
from ..errors import ModelError
from ..importer import resolve_model
from ..planner import format_plan
from ..zoo import model_names
from ..sparse import configure
from .options import add_options, add_training_arguments, compile_config, model_and_params

NAME = "plan"
HELP = "show the memory plan of a model on a board (--all: every model, strategy and board)"

STRATEGIES = ("full", "last", "bias", "sparse", "lora=4")


def add_arguments(p) -> None:
    add_training_arguments(p)
    add_options(p, "board", "json")
    p.add_argument("--all", action="store_true",
                   help="every shipped model x strategy (full, last, bias, sparse, lora=4) x dtype x board: "
                        "fits, peak, bounds")
    p.add_argument("--dataset", metavar="NAME",
                   help="calibration data a sparse strategy scores channels on (default: the model's)")


def row(spec, params, cfg: TrainConfig, board, dataset=None) -> dict:
    out = {"model": spec.name, "board": board.name, "strategy": cfg.strategy, "dtype": cfg.dtype,
           "batch": cfg.batch, "arena_bytes": board.arena_bytes}
    try:
        cfg = configure(spec, params, cfg, dataset, board.arena_bytes)
        prog = _compile(spec, params, cfg, board)
    except ModelError as e:  # over the board's graph limits, or no data for a sparse choice
        return {**out, "fits": False, "reason": str(e)}
    plan = prog.plan
    return {**out, **prog.report(), "fits": plan.arena_bytes <= board.arena_bytes,
            "peak_over_lower_bound": round(plan.arena_bytes / max(plan.lower_bound, 1), 4),
            "tensors": len(prog.graph.tensors), "nodes": len(prog.graph.nodes)}


def _compile(spec, params, cfg: TrainConfig, board):
    """The program as planned for the board: its plan even where it does not fit the arena,
    or, where it does not, what `host compile` would make of it for this board (the
    `auto` choices: per-sample int8 sums, persistent tensors in L3, int8 codes trained in
    place) when that fits."""
    prog = compile_model(spec, params, cfg, max_tensors=board.max_tensors, max_nodes=board.max_nodes)
    if prog.plan.arena_bytes > board.arena_bytes:
        try:
            prog = compile_model(spec, params, cfg, arena_limit=board.arena_bytes, max_tensors=board.max_tensors,
                                 max_nodes=board.max_nodes, l3_limit=board.l3_bytes)
        except ModelError:
            pass
    return prog


def _dataset(spec):
    """The model's own dataset for a sparse choice, or None when it cannot be had here (the
    sparse rows then say why)."""
    from ..datasets import DatasetError, load_dataset

    try:
        return load_dataset(spec.dataset) if spec.dataset else None
    except DatasetError:
        return None


def run(args) -> int:
    c = Console(stderr=args.json)
    if args.all:
        rows = []
        boards = [load_board(n) for n in board_names() if n != "native"]
        for name in model_names():
            spec, params = resolve_model(name, args.seed)
            data = _dataset(spec)
            for strategy in STRATEGIES:
                for dtype in DTYPES:
                    cfg = TrainConfig(batch=args.batch, strategy=strategy, dtype=dtype)
                    rows += [row(spec, params, cfg, b, data) for b in boards]
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        t = Table(title=f"memory plans at batch {args.batch}")
        for col in ("model", "strategy", "dtype", "board", "fits", "peak", "lower bound", "no sharing", "trainable"):
            t.add_column(col, no_wrap=True)
        for r in rows:
            t.add_row(r["model"], r["strategy"], r["dtype"], r["board"], "yes" if r["fits"] else "no",
                      f"{r.get('peak_bytes', 0):,}", f"{r.get('lower_bound_bytes', 0):,}",
                      f"{r.get('naive_bytes', 0):,}", f"{r.get('trainable_params', 0):,}")
        c.print(t)
        return 0
    board = load_board(args.board or "mps2-an386")
    spec, params = model_and_params(args)
    cfg = compile_config(args, spec, params, board.arena_bytes)
    r = row(spec, params, cfg, board)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    prog = _compile(spec, params, cfg, board)
    c.print(format_plan(prog.graph, prog.plan), highlight=False)
    auto = [f"int8 sums per {prog.config.int8_sums}", f"int8 updates {prog.config.int8_updates}"] \
        if prog.config.dtype != "fp32" else []
    c.print(f"{spec.name} on {board.name}, strategy {cfg.strategy}{''.join(', ' + a for a in auto)}: "
            f"peak {r['peak_bytes']:,} B, lower bound "
            f"{r['lower_bound_bytes']:,} B (×{r['peak_over_lower_bound']}), no sharing {r['naive_bytes']:,} B; "
            f"{'fits' if r['fits'] else 'does NOT fit'} the {board.arena_bytes:,}-byte arena; "
            f"{r['trainable_params']:,} trainable parameters", highlight=False)
    return 0
