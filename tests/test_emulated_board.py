"""Each emulated board as a user drives it: `make flash` boots it, `host stream`
finds it, cycle counts are exact, and EXIT ends QEMU with the firmware's code."""

from __future__ import annotations

import json

import numpy as np
import pytest

from host.blob import build_blob
from host.cli import main
from host.compiler import TrainConfig, compile_model
from host.device import Batch, Device
from host.emulator import start
from host.link import Link
from host.zoo import init_params, load_model

from conftest import EMULATED_BOARDS, _require_firmware, streamed_twice


@pytest.fixture(params=EMULATED_BOARDS)
def board(request):
    return _require_firmware(request.param)


def test_flash_then_stream_finds_the_running_board(board, capsys, tmp_path):
    with streamed_twice(capsys, tmp_path, board.name, ["--board", board.name]) as again:
        assert main(["info", "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["stats"]["steps"] == again["steps"] and info["hello"]["model_loaded"]


def _one_step_cycles(board) -> int:
    spec = load_model("mlp-digits")
    prog = compile_model(spec, init_params(spec), TrainConfig(batch=16))
    rng = np.random.default_rng(0)
    batch = Batch.from_arrays(rng.integers(0, 17, (16, 64)) / 16, rng.integers(0, 10, 16), (1 / 16, 0))
    with start(board) as running, Link.open(running.url, timeout=10) as link:
        dev = Device(link)
        dev.load(build_blob(prog))
        return [dev.train(batch).cycles for _ in range(2)]


def test_cycle_counts_are_exact_instruction_counts(board):
    """Under -icount the counter counts executed instructions: identical runs give
    identical counts, and a training step of this MLP costs about its MAC count
    (3 passes × 16 samples × 2368 MACs ≈ 114k) within the instruction overhead."""
    first = _one_step_cycles(board)
    second = _one_step_cycles(board)
    assert first == second
    macs = 16 * (64 * 32 + 32 * 10) * 3
    assert macs * 0.5 < first[0] < macs * 20


def test_exit_ends_qemu_with_the_firmware_exit_code(board):
    with start(board) as running:
        with Link.open(running.url) as link:
            Device(link).exit(3)
        assert running.wait(timeout=10) == 3


@pytest.mark.parametrize("board_process", ["native", *EMULATED_BOARDS], indirect=True)
def test_a_link_that_dies_mid_run_keeps_the_record(board_process, tmp_path):
    """Kill the board mid-stream: exit code 3 (link), metrics so far on disk, and a
    summary that says the run was interrupted and why."""
    import threading
    import time

    result = {}
    t = threading.Thread(target=lambda: result.update(code=main(
        ["stream", "--port", board_process.url, "--epochs", "200", "--runs-dir", str(tmp_path), "--json"])))
    t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = list(tmp_path.glob("*/metrics.jsonl"))
        if runs and runs[0].read_text().count('"kind": "train"') >= 10:
            break
        time.sleep(0.05)
    board_process.proc.kill()
    t.join(60)
    assert result["code"] == 3
    run = next(tmp_path.glob("*/"))
    summary = json.loads((run / "summary.json").read_text())
    # a dead link interrupts the run (the device may still hold its weights): the
    # record says so and why, and keeps everything measured until then
    assert summary["status"] == "interrupted" and summary["reason"].startswith("LinkError")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)   # every line whole
    assert summary["steps"] >= 10
