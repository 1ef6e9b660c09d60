"""Show what a device says about itself (HELLO) and its counters (STATS)."""

from __future__ import annotations

import json

from rich.console import Console

from ..session import open_device
from .options import add_options

NAME = "info"
HELP = "print the device's firmware, board, arena, model and counters"


def add_arguments(p) -> None:
    add_options(p, "port", "board", "emulate", "timeout", "json")


def run(args) -> int:
    with open_device(args.port, args.board, args.emulate, args.timeout) as (dev, hello):
        stats = dev.stats()
    out = {"version": 1, "hello": hello.to_json(), "stats": stats}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    c = Console()
    for k, v in {**out["hello"], **stats}.items():
        c.print(f"{k:>18}: {v}", highlight=False)
    return 0
