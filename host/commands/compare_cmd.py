"""Put run folders side by side: dataset, model, board, training strategy and dtype,
held-out accuracy before → after, samples trained, bytes on the wire and status,
read from each folder's summary.json (written by `host stream`). Runs are sorted by
dataset, then strategy. --json prints a list with one object per run (its summary
plus "run", the folder as given).
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import EdgePropError, UsageError
from ..runrecord import RunRecordError, read_summary
from .options import add_options

NAME = "compare"
HELP = "compare run folders side by side (accuracy, samples, bytes on the wire, status)"

#: the fields compared; a record from before they existed gets what can be derived
FIELDS = ("dataset", "model", "board", "strategy", "dtype", "lr", "accuracy_before", "accuracy_after",
          "samples_trained", "bytes_on_wire", "status")


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folders (runs/<timestamp>/)")
    add_options(p, "json")


def load_run(run: Path) -> dict:
    """One run's summary with the compared fields filled in ("run": the folder as given)."""
    s = read_summary(run)
    out = {**s, "run": str(run)}
    initial, final = s.get("initial_eval") or {}, s.get("final_eval") or {}
    out.setdefault("accuracy_before", initial.get("accuracy"))
    out.setdefault("accuracy_after", final.get("accuracy") if s.get("status") in ("ok", "completed") else None)
    out.setdefault("samples_trained", s.get("samples"))
    if "strategy" not in s and "train_layers" in s:
        layers = s["train_layers"]
        out["strategy"] = "full" if layers is None else "layers=" + ",".join(map(str, layers))
    for k in FIELDS:
        out.setdefault(k, None)
    return out


def load_runs(runs: list[Path]) -> list[dict]:
    """Every run, sorted by dataset then strategy; one error naming every unreadable folder."""
    loaded, problems = [], []
    for run in runs:
        try:
            loaded.append(load_run(run))
        except EdgePropError as e:
            problems.append(e)
    if problems:
        msg = "; ".join(str(e) for e in problems)
        if all(isinstance(e, UsageError) for e in problems):
            raise UsageError(msg, hint="pass run folders written by `host stream` (runs/<timestamp>/)")
        raise RunRecordError(msg, hint="a summary.json is written atomically; a corrupt one was edited or "
                                      "damaged outside the host")
    return sorted(loaded, key=lambda r: (str(r["dataset"] or ""), str(r["strategy"] or "")))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _pct(v) -> str:
    return "—" if v is None else f"{v:.1%}" if _is_number(v) else escape(str(v))


def _num(v) -> str:
    return "—" if v is None else f"{v:,}" if _is_number(v) else escape(str(v))


def _accuracy(r: dict) -> str:
    b, a = r["accuracy_before"], r["accuracy_after"]
    text = f"{_pct(b)} → {_pct(a)}"
    if _is_number(a) and _is_number(b):
        text += f" ({(a - b) * 100:+.1f} pt)"
    return text


def _status(r: dict) -> str:
    status = str(r["status"] or "—")
    style = {"completed": "green", "ok": "green", "interrupted": "yellow", "failed": "red"}.get(status)
    text = escape(status) if style is None else f"[{style}]{escape(status)}[/]"
    reason = r.get("reason") or r.get("error")
    if reason and status not in ("completed", "ok"):
        text += f"\n[dim]{escape(str(reason))}[/]"
    return text


def run(args) -> int:
    rows = load_runs(args.runs)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 220)  # logs and CI: room for the whole table
    t = Table(title=f"{len(rows)} run{'s' * (len(rows) != 1)}", title_justify="left")
    for col, justify in (("run", "left"), ("dataset", "left"), ("model", "left"), ("board", "left"),
                         ("strategy", "left"), ("dtype", "left"), ("lr", "right"),
                         ("accuracy before → after", "right"), ("samples trained", "right"),
                         ("bytes on wire", "right")):
        t.add_column(col, justify=justify, no_wrap=col != "run", overflow="fold")
    t.add_column("status", overflow="fold")
    for r in rows:
        lr = f"{r['lr']:g}" if _is_number(r["lr"]) else _num(r["lr"])
        t.add_row(escape(r["run"]), *(escape(str(r[k] if r[k] is not None else "—"))
                                      for k in ("dataset", "model", "board", "strategy", "dtype")),
                  lr, _accuracy(r), _num(r["samples_trained"]), _num(r["bytes_on_wire"]), _status(r))
    console.print(t)
    return 0
