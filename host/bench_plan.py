"""Memory benchmark: every shipped model × strategy, planned for each board budget.

    python -m host.bench_plan [--batch 32]      (make bench runs it)

For each model, strategy (full, last, bias, sparse, lora=4) and dtype (fp32, int8, mixed) at the given
batch: the planned peak, the lower bound (largest total of tensors alive at
once), their ratio (target ≤ 1.05), the naive plan (every tensor its own
buffer) so the saving is visible, trainable parameters, and on which boards it
fits. Sparse scores its channels on the model's own dataset and is planned
without a board cap here (the per-board choice is `host plan --all`'s). Writes
bench/plan_results.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .boards import board_names, load_board
from .commands.plan_cmd import STRATEGIES, _dataset
from .compiler import DTYPES, TrainConfig, compile_model
from .errors import ModelError
from .importer import resolve_model
from .sparse import configure
from .zoo import model_names

OUT = Path(__file__).resolve().parents[1] / "bench" / "plan_results.json"
TARGET = 1.05


def measure(batch: int) -> list[dict]:
    boards = [load_board(n) for n in board_names() if n != "native"]
    rows = []
    for name in model_names():
        spec, params = resolve_model(name, 0)
        data = _dataset(spec)
        for strategy in STRATEGIES:
            for dtype in DTYPES:
                cfg = TrainConfig(batch=batch, strategy=strategy, dtype=dtype)
                try:
                    prog = compile_model(spec, params, configure(spec, params, cfg, data))
                except ModelError as e:
                    rows.append({"model": name, "strategy": strategy, "dtype": dtype, "error": str(e)})
                    continue
                r = prog.report()
                r["peak_over_lower_bound"] = round(r["peak_bytes"] / max(r["lower_bound_bytes"], 1), 4)
                r["fits"] = [b.name for b in boards if r["peak_bytes"] <= b.arena_bytes]
                rows.append({"model": name, "dtype": dtype, "batch": batch, **r})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    rows = measure(args.batch)
    n_boards = len([n for n in board_names() if n != "native"])
    t = Table(title=f"memory plans at batch {args.batch}: peak vs lower bound vs every tensor its own buffer")
    for col in ("model", "strategy", "dtype", "peak B", "lower bound B", "peak/LB", "naive B", "saved", "trainable",
                "backward MACs", "fits"):
        t.add_column(col, no_wrap=True)
    for r in rows:
        if "error" in r:
            t.add_row(r["model"], r["strategy"], r["dtype"], "—", "—", "—", "—", "—", "—", "—", r["error"][:40])
            continue
        ratio = r["peak_over_lower_bound"]
        t.add_row(r["model"], r["strategy"], r["dtype"], f"{r['peak_bytes']:,}", f"{r['lower_bound_bytes']:,}",
                  f"{'[red]' if ratio > TARGET else ''}{ratio:.3f}", f"{r['naive_bytes']:,}",
                  f"{1 - r['peak_bytes'] / r['naive_bytes']:.0%}", f"{r['trainable_params']:,}",
                  f"{r['backward_macs']:,}", f"{len(r['fits'])}/{n_boards} boards")
    c = Console(width=160)
    c.print(t)
    for dtype in DTYPES:
        worst = max((r["peak_over_lower_bound"] for r in rows if "error" not in r and r["dtype"] == dtype), default=0)
        c.print(f"{dtype}: worst peak/lower bound {worst:.4f} (target ≤ {TARGET})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"version": 1, "batch": args.batch, "target_peak_over_lower_bound": TARGET,
                                    "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
