"""Short, bounded libFuzzer runs of the harnesses in tests/fuzz/ (ASan + UBSan).

`make -C firmware fuzz-build` builds them with clang; each test then runs one
harness through the same make targets the lead's `make fuzz` uses:

  - test_committed_inputs: every file of tests/fuzz/corpus/<h> and
    tests/fuzz/regressions/<h> runs once without a crash (the regression run);
  - test_short_fuzz: a few seconds of fuzzing from that corpus.

Without clang (with libFuzzer) the tests skip with the reason — except under CI
(CI=true), where that is a failure, as for the firmware images (conftest.py).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
HARNESSES = ["frame", "blob", "app"]
#: seconds of fuzzing per harness in test_short_fuzz (and a bound on executions)
SHORT_SECONDS = int(os.environ.get("EDGEPROP_FUZZ_SECONDS", "6"))
SHORT_RUNS = 200_000


def _make(*goals: str, **variables: str) -> subprocess.CompletedProcess:
    cmd = ["make", "--no-print-directory", "-C", str(FIRMWARE), *goals,
           "FUZZ_TOOLCHECK=", f"SYSPY={sys.executable}", *(f"{k}={v}" for k, v in variables.items())]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="session")
def fuzz_build(tmp_path_factory):
    """Build the harnesses once (a file lock keeps pytest-xdist workers from racing)."""
    from host.toolcheck import _clang_links_libfuzzer

    if not _clang_links_libfuzzer():
        problem = ("clang cannot build libFuzzer harnesses (install clang and libclang-rt-14-dev: "
                   "`python3 -m host.toolcheck --install fuzz`)")
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    lock = ROOT / "build" / "fuzz.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        r = _make("fuzz-build")
    assert r.returncode == 0, f"fuzz-build failed:\n{r.stdout}\n{r.stderr}"


@pytest.mark.parametrize("harness", HARNESSES)
def test_committed_inputs(fuzz_build, harness):
    r = _make("fuzz-regress", FUZZ_HARNESSES=harness)
    assert r.returncode == 0, f"a committed input of fuzz_{harness} fails:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"


@pytest.mark.parametrize("harness", HARNESSES)
def test_short_fuzz(fuzz_build, harness):
    r = _make("fuzz-short", FUZZ_HARNESSES=harness, FUZZ_SHORT_SECONDS=str(SHORT_SECONDS),
              FUZZ_SHORT_RUNS=str(SHORT_RUNS))
    assert r.returncode == 0, f"fuzz_{harness} found a crash:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    assert "stat::number_of_executed_units" in r.stdout
