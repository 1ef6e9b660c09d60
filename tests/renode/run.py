"""`make test-renode`: run tests/renode/*.robot on Renode, or say why not.

Renode's test runner is `renode-test` (shipped with Renode) or, for users who
installed Renode through pip (`pip install -e .[renode]` gives `renode-run`),
`renode-run test -- ...`. Neither on PATH: the suite is skipped with that
reason and exit status 0 — no registry this project's CI reaches ships Renode.
Boards without firmware are left out with the command that builds them.

    python tests/renode/run.py [--boards a,b] [--strict]

--strict turns the skip into a failure (exit 2), for machines that must run it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from host.boards import board_names, load_board  # noqa: E402
from host.emulator import firmware_path  # noqa: E402

SUITE = REPO / "tests" / "renode" / "edgeprop.robot"


def renode_runner() -> list[str] | None:
    """The command that runs Robot suites on Renode here, or None."""
    if shutil.which("renode-test"):
        return ["renode-test"]
    if shutil.which("renode-run"):
        return ["renode-run", "test", "--"]
    return None


def renode_boards() -> list[str]:
    """Boards with a Renode platform (boards/<b>/<b>.repl): every MCU board, not `native`."""
    return [b for b in board_names() if (REPO / "boards" / b / f"{b}.repl").is_file()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boards", help="comma-separated boards (default: every board with a .repl)")
    ap.add_argument("--strict", action="store_true", help="fail instead of skipping without Renode")
    args = ap.parse_args(argv)
    runner = renode_runner()
    if runner is None:
        print("test-renode: SKIPPED — neither `renode-test` nor `renode-run` is on PATH. Install Renode "
              "(https://renode.io: its package puts renode-test on PATH) or `pip install -e '.[renode]'` "
              "for renode-run.")
        return 2 if args.strict else 0
    boards = args.boards.split(",") if args.boards else renode_boards()
    ready = []
    for b in boards:
        if firmware_path(load_board(b)).is_file():
            ready.append(b)
        else:
            print(f"test-renode: {b} left out: no firmware (run `make firmware BOARD={b}`)")
    if not ready:
        print("test-renode: no board has firmware")
        return 1
    cmd = [*runner, str(SUITE), "--variable", f"REPO:{REPO}", "--variable", f"PYTHON:{sys.executable}",
           *[a for b in ready for a in ("--include", b)]]
    print("==>", " ".join(cmd))
    return subprocess.call(cmd, cwd=REPO)


if __name__ == "__main__":
    sys.exit(main())
