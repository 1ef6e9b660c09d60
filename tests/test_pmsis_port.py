"""The GAP9 hardware port (firmware/port/pmsis) compiles against the PMSIS API.

No GAP SDK or GAP9 board is here, so the port cannot be linked or run; what can
be checked is that every file of it (and app/main.c as app_main.c includes it)
compiles for the chip's ISA (rv32imafc/ilp32f, the board's toolchain) against
GreenWaves' PMSIS API headers (github.com/GreenWaves-Technologies/pmsis_api,
include/), with the board's budgets, under -Wall -Wextra and with no warning in
our own code. The API headers declare the SDK's inline functions without
defining them (the SDK's implementation headers do), so their "used but never
defined" warnings are expected; tests/c/pmsis_shim/pmsis.h stands in for the
rest of what the SDK's pmsis.h adds (pi_core_id, pi_is_fc, pi_yield, the task
structure, PI_PERF_CYCLES).

The headers are not in this repository: put them in third_party/pmsis_api/include
(git-ignored; `git clone https://github.com/GreenWaves-Technologies/pmsis_api
third_party/pmsis_api`) or point PMSIS_API_PATH at an include/ folder; without
them the test skips and says so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from host.boards import REPO_ROOT, load_board

PORT = REPO_ROOT / "firmware" / "port" / "pmsis"
API = Path(os.environ.get("PMSIS_API_PATH", REPO_ROOT / "third_party" / "pmsis_api" / "include"))
SHIM = REPO_ROOT / "tests" / "c" / "pmsis_shim"
DIAG = re.compile(r"^(?P<path>[^:\s]+):\d+:\d+: (?P<kind>warning|error): (?P<msg>.*)$", re.M)


def _board_flags() -> tuple[str, list[str]]:
    board = load_board("gap9")
    tc = board.toolchain
    defines = [f'-DEP_BOARD_NAME="{board.name}"', f"-DEP_ARENA_BYTES={board.arena_bytes}",
               f"-DEP_STAGING_BYTES={board.staging_bytes}", f"-DEP_CPU_HZ={board.cpu_hz}",
               f"-DEP_MAX_TENSORS={board.max_tensors}", f"-DEP_MAX_NODES={board.max_nodes}"]
    return tc["prefix"] + "gcc", [*tc.get("cflags", []), *defines]


@pytest.mark.parametrize("source", ["port.c", "cluster.c", "nv.c", "app_main.c"])
def test_pmsis_port_compiles_against_the_pmsis_api(source):
    if not (API / "pmsis" / "cluster" / "cluster_team" / "cl_team.h").is_file():
        pytest.skip(f"PMSIS API headers not found in {API}: clone github.com/GreenWaves-Technologies/pmsis_api "
                    "into third_party/pmsis_api (or set PMSIS_API_PATH=<its include/>)")
    cc, flags = _board_flags()
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} not installed (make setup installs the gap9 toolchain)")
    fw = REPO_ROOT / "firmware"
    cmd = [cc, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-function", "-fsyntax-only", *flags,
           f"-I{SHIM}", "-isystem", str(API), f"-I{fw / 'port'}", f"-I{fw / 'runtime'}", f"-I{fw / 'app'}",
           str(PORT / source)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ours = [m.group(0) for m in DIAG.finditer(proc.stderr)
            if not Path(m.group("path")).resolve().is_relative_to(API.resolve())]
    assert not ours, "\n".join(ours)
    # what the API headers may say: only that the SDK defines their inline functions
    for m in DIAG.finditer(proc.stderr):
        assert "used but never defined" in m.group("msg"), m.group(0)
