"""Train a model on the device with a real dataset, and record the run.

Connects (a serial port, the board `make flash` started, or --emulate), uploads
the model unless the device already holds it, uploads the calibration split (and
the held-out split, if it fits too) once into the device's sample buffer in the
--encoding chosen, evaluates the held-out split, trains for --epochs with only
sample indices on the wire (a device without the buffer gets every batch as
before), evaluates after each epoch, reads the
trained weights back and writes runs/<timestamp>/: metrics.jsonl (one record
per batch and per evaluation), summary.json, weights.npz and the plots loss.png,
accuracy.png and per_class.png. Interrupted (Ctrl-C) or cut off (a dead link),
it still leaves summary.json (status "interrupted") and the plots of what it
measured. `host compare RUN...` puts run folders side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..datasets import REGISTRY, load_dataset
from ..errors import LinkError
from ..runrecord import RunRecord
from ..session import StreamOptions, open_device, stream
from .options import add_options, add_training_arguments, train_config

NAME = "stream"
HELP = "stream a dataset to the device, train on it, and record metrics"


def add_arguments(p) -> None:
    add_training_arguments(p)
    add_options(p, "port", "board", "emulate", "timeout", "json")
    p.add_argument("-d", "--dataset", default="digits", choices=sorted(REGISTRY), help="dataset to stream")
    p.add_argument("-e", "--epochs", type=int, default=3, help="passes over the training split")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run folders go")
    p.add_argument("--encoding", choices=["f32", "i16", "i8", "u8"], default=None,
                   help="how samples go into the device's sample buffer: f32 exact; i16/i8/u8 with a "
                        "per-channel scale spanning each channel's range (default: u8 for datasets with an "
                        "exact u8 grid, else i16)")
    p.add_argument("--no-buffer", action="store_true", help="send every batch's samples in every epoch "
                   "instead of using the device's sample buffer")
    p.add_argument("--reflash", action="store_true", help="upload the model even if the device holds it "
                   "(restarts from the initial weights)")


class LiveView:
    """The live table: one row per epoch, plus a progress bar over the batches."""

    def __init__(self, console: Console, total_steps: int, board: str):
        self.console = console
        self.rows: list[dict] = []
        self.cur: dict = {}
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console)
        self.task = self.progress.add_task(f"training on {board}", total=total_steps)
        self.flash = None
        self.live = Live(self.render(), console=console, refresh_per_second=8, transient=False)

    def render(self):
        t = Table(title="on-device training", title_justify="left")
        for col in ("epoch", "step", "samples", "train loss", "train acc", "test loss", "test acc",
                    "samples/s", "cycles/sample"):
            t.add_column(col, justify="right")
        for r in self.rows + ([self.cur] if self.cur else []):
            t.add_row(*(r.get(k, "") for k in ("epoch", "step", "samples", "loss", "acc", "tloss", "tacc",
                                                 "sps", "cps")))
        return Group(t, self.progress)

    def __call__(self, kind: str, d: dict) -> None:
        if kind == "flash":
            self.progress.update(self.task, description=f"flashing {d['sent']}/{d['total']} B")
        elif kind == "flashed":
            self.progress.update(self.task, description="training")
        elif kind == "buffer":
            rate = d["sent"] / d["seconds"] / 1024 if d["seconds"] > 0 else 0.0
            self.progress.update(self.task, description=(
                f"uploading {d['samples']} samples ({d['encoding']}, {d['bytes_per_sample']} B each): "
                f"{d['sent']:,}/{d['total']:,} B, {rate:,.0f} KiB/s"))
        elif kind == "buffered":
            self.progress.update(self.task, description="training")
            held = f" + {d['test']} held-out" if d["test"] else ""
            self.console.print(f"sample buffer: {d['train']} calibration{held} samples, {d['encoding']}, "
                               f"{d['stream_bytes']:,} B in {d['seconds']:.1f} s "
                               f"({d['buffer_bytes']:,} of {d['free_bytes']:,} B free on the device)",
                               highlight=False)
        elif kind == "buffer_skipped":
            self.console.print(f"[yellow]no sample buffer: {d['reason']}; streaming every batch[/]",
                               highlight=False)
        elif kind == "train":
            c = self.cur
            if c.get("epoch") != str(d["epoch"]):
                self.cur = c = {"epoch": str(d["epoch"]), "_l": 0.0, "_c": 0, "_n": 0, "_cyc": 0}
            c["_l"] += d["loss"] * d["n"]
            c["_c"] += d["correct"]
            c["_n"] += d["n"]
            c["_cyc"] += d["cycles"]
            c.update(step=str(d["step"]), samples=str(d["samples"]), loss=f"{c['_l'] / c['_n']:.4f}",
                     acc=f"{c['_c'] / c['_n']:.1%}", cps=f"{c['_cyc'] / c['_n']:,.0f}",
                     sps=f"{d['samples_per_s']:.0f}" if d["samples_per_s"] else "")
            self.progress.advance(self.task)
        elif kind == "eval":
            if d["epoch"] == 0:
                self.rows.append({"epoch": "0", "step": "0", "samples": "0", "tloss": f"{d['loss']:.4f}",
                                  "tacc": f"{d['accuracy']:.1%}"})
            else:
                self.cur.update(tloss=f"{d['loss']:.4f}", tacc=f"{d['accuracy']:.1%}")
                self.rows.append(self.cur)
                self.cur = {}
        self.live.update(self.render())


def run(args) -> int:
    ds = load_dataset(args.dataset, seed=args.seed)
    opts = StreamOptions(model=args.model, epochs=args.epochs, train=train_config(args), seed=args.seed,
                         reflash=args.reflash, encoding=args.encoding, use_buffer=not args.no_buffer)
    console = Console(stderr=args.json)
    if not console.is_terminal:
        console.width = max(console.width, 110)  # logs and CI: room for the whole table
    with open_device(args.port, args.board, args.emulate, args.timeout) as (dev, hello):
        record = RunRecord(args.runs_dir)
        try:
            if not args.json:
                console.print(f"[bold]{hello.board}[/] firmware {hello.firmware}, arena {hello.arena_bytes} B — "
                              f"dataset {ds.name}: {len(ds.y_train)} train / {len(ds.y_test)} held-out samples",
                              highlight=False)
            steps = args.epochs * -(-len(ds.y_train) // args.batch)
            if args.json:
                summary = stream(dev, hello, ds, opts, record)
            else:
                view = LiveView(console, steps, hello.board)
                with view.live:
                    summary = stream(dev, hello, ds, opts, record, view)
                console.line()
        except (KeyboardInterrupt, LinkError):
            # the session wrote summary.json (status "interrupted") and the plots before this
            Console(stderr=True).print(f"interrupted: run record so far in {record.path}/ "
                                       f"(summary.json, metrics.jsonl, plots)", highlight=False, soft_wrap=True)
            raise
        finally:
            record.close()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print_result(console, summary)
    return 0


def _pct(v) -> str:
    return "—" if v is None else f"{v:.1%}"


def print_result(console: Console, summary: dict) -> None:
    """The final output: accuracy per class before → after, the headline numbers, the files."""
    before, after = summary.get("per_class_before"), summary.get("per_class_after")
    if before:
        t = Table(title="held-out accuracy per class", title_justify="left")
        for col in ("class", "samples", "before", "after", "change"):
            t.add_column(col, justify="right")
        names = summary.get("class_names") or [str(c) for c in range(len(before))]
        counts = summary.get("per_class_n") or [None] * len(before)
        for c, name in enumerate(names):
            b = before[c]
            a = after[c] if after else None
            delta = "" if a is None or b is None else f"{(a - b) * 100:+.1f} pt"
            t.add_row(str(name), "" if counts[c] is None else str(counts[c]), _pct(b), _pct(a), delta)
        console.print(t)
    i, f = summary["initial_eval"], summary["final_eval"]
    console.print(f"held-out accuracy {i['accuracy']:.1%} → [bold]{f['accuracy']:.1%}[/], "
                  f"loss {i['loss']:.4f} → {f['loss']:.4f}; "
                  f"{summary['cycles_per_sample']:,.0f} device cycles per training sample", highlight=False)
    console.print(f"{summary['samples_trained']:,} samples trained ({summary['strategy']}, {summary['dtype']}); "
                  f"{summary['bytes_on_wire']:,} bytes on the wire ({summary['bytes_sent']:,} sent, "
                  f"{summary['bytes_received']:,} received); samples as {summary.get('encoding')}, "
                  f"{summary.get('bytes_per_sample')} B each"
                  f"{' (sample buffer)' if summary.get('sample_buffer') else ''}", highlight=False)
    files = ["metrics.jsonl", "summary.json", summary.get("weights", "weights.npz"), *summary.get("plots", [])]
    console.print(f"run record: {summary['run_dir']}/", highlight=False)
    console.print(f"  {', '.join(files)}", highlight=False)
    if summary.get("plots_error"):
        console.print(f"[yellow]plots not written: {summary['plots_error']}[/]", highlight=False)
