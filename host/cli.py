"""`host` — the EdgeProp command line.

One module per subcommand in host/commands/, each with NAME, HELP,
add_arguments(parser) and run(args) -> exit code. Errors are EdgePropError
subclasses (host/errors.py); their exit codes are the CLI's:

    0 ok · 1 error · 2 usage · 3 link · 4 device refused · 5 model · 6 board · 7 tool missing
"""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.markup import escape

from . import __version__
from .commands import ALL
from .errors import EdgePropError

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="host", description="EdgeProp host: compile, flash and train "
                                 "models on microcontrollers over a serial link.")
    ap.add_argument("--version", action="version", version=f"edgeprop host {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in ALL:
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.__doc__)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    err = Console(stderr=True)
    try:
        return args._run(args)
    except EdgePropError as e:
        if getattr(args, "json", False):
            print(json.dumps({"version": 1, "status": "error", "error": type(e).__name__,
                              "message": str(e), "exit_code": e.exit_code}))
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        if e.hint:
            err.print(f"[dim]hint: {escape(e.hint)}[/]", highlight=False)
        return e.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
