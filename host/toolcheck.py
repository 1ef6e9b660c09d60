"""Make sure the tools a board needs are installed; install them with apt-get if not.

    python3 -m host.toolcheck [--install] BOARD...

A name may also be a tool set that is not a board (TOOL_SETS): `fuzz` is clang
able to link libFuzzer with ASan and UBSan (`make -C firmware fuzz`).

Runs with the system python3 (stdlib only) before the project venv exists, so
`make` can call it first thing on a fresh machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .boards import load_board
from .errors import EdgePropError


#: local data the datasets read (host/datasets.py), by the path its Debian package installs
DATA_PACKAGES = {"/usr/share/datasets/fashion-mnist": "dataset-fashion-mnist"}


def _clang_links_libfuzzer() -> bool:
    """clang is installed and links a libFuzzer program with ASan and UBSan (Debian
    ships those runtimes in libclang-rt-N-dev, only a Recommends of clang, which
    --no-install-recommends leaves out)."""
    if shutil.which("clang") is None:
        return False
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "probe.c"
        src.write_text("#include <stddef.h>\n#include <stdint.h>\n"
                       "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n")
        r = subprocess.run(["clang", "-fsanitize=fuzzer,address,undefined", str(src), "-o", str(Path(d) / "probe")],
                           capture_output=True, check=False)
        return r.returncode == 0


def _clang_packages() -> list[str]:
    """clang and the runtimes of its major version (Debian 12: clang 14)."""
    major = "14"
    if shutil.which("clang"):
        out = subprocess.run(["clang", "--version"], capture_output=True, text=True, check=False).stdout
        if m := re.search(r"clang version (\d+)", out):
            major = m.group(1)
    return ["clang", f"libclang-rt-{major}-dev"]


#: tool sets that are not boards: name → [(what is missing, check, Debian packages)]
TOOL_SETS = {
    "fuzz": [("clang with libFuzzer/ASan/UBSan", _clang_links_libfuzzer, _clang_packages)],
}


def needed(boards: list[str]) -> tuple[list[str], list[str]]:
    """(missing programs and data, apt packages that provide them) for these boards."""
    missing, packages = [], []
    for path, pkg in DATA_PACKAGES.items():
        if not os.path.isdir(path):
            missing.append(path)
            packages.append(pkg)
    for name in boards:
        if name in TOOL_SETS:
            for what, ok, apt in TOOL_SETS[name]:
                if what not in missing and not ok():
                    missing.append(what)
                    packages += [p for p in apt() if p not in packages]
            continue
        b = load_board(name)
        wants = [(b.toolchain["prefix"] + "gcc", b.toolchain.get("apt", []))]
        if b.emulator:
            wants.append((b.emulator["binary"], b.emulator.get("apt", [])))
        for prog, apt in wants:
            if shutil.which(prog) is None and prog not in missing:
                missing.append(prog)
                packages += [p for p in apt if p not in packages]
    return missing, packages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m host.toolcheck")
    ap.add_argument("--install", action="store_true", help="apt-get install what is missing")
    ap.add_argument("boards", nargs="+", metavar="BOARD", help=f"a board, or a tool set: {', '.join(TOOL_SETS)}")
    args = ap.parse_args(argv)
    try:
        missing, packages = needed(args.boards)
    except EdgePropError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if not missing:
        print(f"==> tools for {', '.join(args.boards)} and datasets: all present")
        return 0
    print(f"==> missing: {', '.join(missing)} (Debian packages: {' '.join(packages)})")
    if not args.install:
        return 7
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    if sudo and shutil.which("sudo") is None:
        print("error: not root and no sudo: install the packages above yourself", file=sys.stderr)
        return 7
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"==> apt-get install {' '.join(packages)}")
    try:
        subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
                       check=True, env=env)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        print(f"error: apt-get failed ({e}); install {' '.join(packages)} yourself", file=sys.stderr)
        return 7
    still, _ = needed(args.boards)
    if still:
        print(f"error: still missing after install: {', '.join(still)}", file=sys.stderr)
        return 7
    return 0


if __name__ == "__main__":
    sys.exit(main())
