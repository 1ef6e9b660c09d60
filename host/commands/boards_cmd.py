"""List the boards this checkout knows, with their budgets and whether they run here."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from ..boards import board_names, load_board
from .options import add_options

NAME = "boards"
HELP = "list boards (core, clock, memory budgets, emulated here?)"


def add_arguments(p) -> None:
    add_options(p, "json")


def run(args) -> int:
    boards = [load_board(n).to_json() for n in board_names()]
    if args.json:
        print(json.dumps({"version": 1, "boards": boards}, indent=2))
        return 0
    t = Table("board", "core", "clock", "RAM", "arena", "emulated here", "toolchain here")
    for b in boards:
        t.add_row(b["name"], b["core"], f"{b['cpu_hz'] / 1e6:g} MHz", f"{b['ram_bytes'] // 1024} KiB",
                  f"{b['arena_bytes'] // 1024} KiB", "yes" if b["emulated_here"] else "no",
                  "yes" if b["toolchain_here"] else "no")
    Console().print(t)
    return 0
