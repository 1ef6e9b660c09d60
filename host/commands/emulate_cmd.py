"""Boot an emulated board (or the native build) and leave it running.

This is what `make flash BOARD=...` does on a machine with no board attached:
the firmware boots in QEMU with its UART on a local TCP socket, and the command
prints the serial URL. `host stream` and `host flash` find it without flags.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from ..boards import load_board
from ..emulator import running_boards, start
from .options import add_options

NAME = "emulate"
HELP = "boot an emulated board in the background and print its serial URL (--stop ends it)"


def add_arguments(p) -> None:
    add_options(p, "board", "json")
    p.add_argument("--elf", type=Path, help="firmware image (default: build/<board>/edgeprop.elf)")
    p.add_argument("--stop", action="store_true", help="stop the running emulated board(s) instead")
    p.add_argument("--list", action="store_true", help="list the running emulated boards")


def run(args) -> int:
    c = Console()
    if args.stop or args.list:
        boards = [r for r in running_boards() if args.board in (None, r.board)]
        if args.stop:
            for r in boards:
                r.stop()
        if args.json:
            print(json.dumps({"version": 1, "stopped" if args.stop else "running": [r.to_json() for r in boards]}))
        else:
            verb = "stopped" if args.stop else "running"
            for r in boards:
                c.print(f"{verb} {r.board} at {r.url} (pid {r.pid})", highlight=False)
            if not boards:
                c.print("no emulated board running")
        return 0
    board = load_board(args.board or "mps2-an386")
    for old in running_boards():
        if old.board == board.name:  # new firmware replaces the old board
            old.stop()
    r = start(board, elf=args.elf, detach=True)
    if args.json:
        print(json.dumps({"version": 1, **r.to_json()}))
    else:
        c.print(f"{board.name} is running (pid {r.pid}); serial: [bold]{r.url}[/]", highlight=False)
        c.print("train on it: host stream --dataset digits    stop it: host emulate --stop", highlight=False)
    return 0
