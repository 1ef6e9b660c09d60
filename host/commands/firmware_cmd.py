"""Put the built firmware on a board, the way its description says (`[flash] method`).

This is what `make flash BOARD=...` runs after building the firmware:

- `emulator` (QEMU boards) and `process` (the native build): boot it in the
  background, as `host emulate` does, and print its serial URL;
- `pyocd` (real boards with a CMSIS-DAP / ST-LINK probe): run
  `pyocd flash -t <target> build/<board>/edgeprop.elf`. pyOCD is an optional
  extra: `.venv/bin/pip install -e '.[flash]'`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from ..boards import load_board
from ..emulator import firmware_path
from ..errors import BoardError, LinkError, ToolError
from . import emulate_cmd
from .options import add_options

NAME = "flash-firmware"
HELP = "put the built firmware on --board: boot it emulated, or program it with pyOCD"

# what pyOCD prints when it finds no probe (pyocd/probe/aggregator.py, pyocd/core/session.py)
NO_PROBE_MARKERS = ("No connected debug probes", "No available debug probes", "no probe")


def add_arguments(p) -> None:
    add_options(p, "board", "json")
    p.add_argument("--elf", type=Path, help="firmware image (default: build/<board>/edgeprop.elf)")
    p.add_argument("--probe", metavar="UID", help="pyOCD probe unique ID, when several are connected")


def find_pyocd() -> str | None:
    """pyOCD from this Python's environment (the project venv) first, then PATH."""
    here = Path(sys.executable).parent / "pyocd"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("pyocd")


def pyocd_command(pyocd: str, target: str, elf: Path, probe: str | None = None) -> list[str]:
    cmd = [pyocd, "flash", "-t", target]
    if probe:
        cmd += ["-u", probe]
    return cmd + [str(elf)]


def run(args) -> int:
    board = load_board(args.board or "mps2-an386")
    method = board.flash.get("method")
    if method in ("emulator", "process"):
        args.stop = args.list = False
        return emulate_cmd.run(args)
    if method == "gap_sdk":  # GAP9: the GAP SDK when it and a board are here, else emulated
        from . import flash_gap

        return flash_gap.run(args, board)
    if method != "pyocd":
        raise BoardError(f"board {board.name}: unknown flash method {method!r} "
                         "(want emulator, process, pyocd or gap_sdk)")
    target = board.flash.get("target")
    if not target:
        raise BoardError(f"board {board.name}: [flash] method = \"pyocd\" needs target = \"<pyOCD target name>\"")
    elf = Path(args.elf) if args.elf else firmware_path(board)
    if not elf.is_file():
        raise ToolError(f"no firmware at {elf}", hint=f"build it with `make firmware BOARD={board.name}`")
    pyocd = find_pyocd()
    if pyocd is None:
        raise ToolError("pyOCD is not installed, and flashing a real board needs it",
                        hint="install it into the project venv: `.venv/bin/pip install -e '.[flash]'`, "
                             f"then connect the board's USB (ST-LINK) and run `make flash BOARD={board.name}` again")
    cmd = pyocd_command(pyocd, target, elf, args.probe)
    c = Console(stderr=args.json)
    c.print(f"==> {' '.join(cmd)}", highlight=False)
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not args.json:
        sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        tail = proc.stdout.strip().splitlines()[-3:]
        if any(m.lower() in proc.stdout.lower() for m in NO_PROBE_MARKERS):
            raise LinkError(f"pyOCD found no debug probe for {board.name}",
                            hint="connect the board's ST-LINK USB port; `.venv/bin/pyocd list` shows the probes "
                                 "pyOCD sees (on Linux, install its udev rules or run as a user with USB access)")
        raise ToolError(f"pyocd flash failed (exit {proc.returncode}): " + " / ".join(tail),
                        hint=f"run `{' '.join(cmd)}` to see its whole output")
    if args.json:
        print(json.dumps({"version": 1, "board": board.name, "method": "pyocd", "target": target,
                          "elf": str(elf), "command": cmd}))
    else:
        c.print(f"{board.name} programmed; its serial port is the probe's virtual COM port, e.g. "
                "host stream --port /dev/ttyACM0", highlight=False)
    return 0
