"""Shared fixtures: devices to test against, one fixture per kind.

`device_url` (and `link`, `device` on top of it) runs a test on the fake
device (pure Python), the native build of the firmware, and every emulated
board (EMULATED_BOARDS: QEMU mps2-an386, mps2-an500, mps3-an547, gap9 (RISC-V),
netduinoplus2). Firmware images
come from `make test` (which builds them first). Run pytest directly without
them and those cases skip with the reason — except under CI (CI=true), where a
missing image is a failure, so a green CI always means the firmware was tested.
"""

from __future__ import annotations

import contextlib
import os
import time

import pytest

from host.boards import load_board
from host.device import Device
from host.emulator import firmware_path, start
from host.link import Link

EMULATED_BOARDS = ["mps2-an386", "mps2-an500", "mps3-an547", "netduinoplus2", "gap9"]
#: the native build with AddressSanitizer + UBSan (`make test` builds it into build/native-asan):
#: every device test runs on it too, so a memory error anywhere in the app fails the suite
ASAN_KIND = "native-asan"
DEVICE_KINDS = ["fake", "native", ASAN_KIND, *EMULATED_BOARDS]


def _firmware(kind: str):
    """(board, firmware image) of a device kind: a board name, or ASAN_KIND."""
    if kind == ASAN_KIND:
        board = load_board("native")
        return board, firmware_path(board).parent.parent / ASAN_KIND / "edgeprop"
    board = load_board(kind)
    return board, firmware_path(board)


def start_kind(kind: str, **kw):
    """emulator.start for a device kind (a board name or ASAN_KIND); skips like _require_firmware."""
    board = _require_firmware(kind)
    return start(board, elf=_firmware(kind)[1], **kw)


def _require_firmware(board_name: str):
    board, fw = _firmware(board_name)
    problem = None
    if not fw.is_file():
        how = ("make test" if board_name == ASAN_KIND else f"make firmware BOARD={board_name}")
        problem = f"{fw} is not built (run `{how}`)"
    elif not board.emulated:
        problem = f"the emulator for {board_name} is not installed (run `make setup`)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return board


@contextlib.contextmanager
def streamed_twice(capsys, tmp_path, board_name: str, emulate_args: list[str]):
    """As a user: `host emulate ARGS` boots a board in the background, `host stream` finds
    it and trains (the model improves), and a second stream reconnects to the model the
    device still holds. Yields the second stream's summary; the board is stopped after."""
    import json

    from host.cli import main
    from host.emulator import running_boards

    assert main(["emulate", *emulate_args, "--json"]) == 0
    started = json.loads(capsys.readouterr().out)
    try:
        assert [r.url for r in running_boards()] == [started["url"]]
        code = main(["stream", "--dataset", "digits", "--epochs", "1", "--runs-dir", str(tmp_path), "--json"])
        summary = json.loads(capsys.readouterr().out)
        assert code == 0 and summary["board"] == board_name and summary["flashed"]
        assert summary["final_eval"]["accuracy"] > summary["initial_eval"]["accuracy"]
        assert summary["cycles_per_sample"] > 1000
        code = main(["stream", "--epochs", "1", "--runs-dir", str(tmp_path), "--json"])
        again = json.loads(capsys.readouterr().out)
        assert code == 0 and not again["flashed"]
        assert again["initial_eval"]["loss"] == pytest.approx(summary["final_eval"]["loss"], abs=1e-6)
        yield again
    finally:
        assert main(["emulate", "--stop"]) == 0
    assert running_boards() == []


@contextlib.contextmanager
def board_device(request, board_name: str, timeout: float = 30.0):
    """A Device on a freshly booted `board_name` (skips, or fails under CI, without its firmware)."""
    board = _require_firmware(board_name)
    with start(board) as running, Link.open(running.url, timeout=timeout) as lk:
        await_boot_hello(lk)
        dev = Device(lk)
        dev.hello()
        yield dev


@pytest.fixture
def board_process(request):
    """start(board) for a board name given by indirect parametrisation; stopped after."""
    board = _require_firmware(request.param)
    with start(board) as running:
        yield running


@pytest.fixture(params=DEVICE_KINDS)
def device_url(request):
    """A serial URL for each kind of device; the board process lives for the test."""
    if request.param == "fake":
        yield "fake://"
        return
    with start_kind(request.param) as running:
        yield running.url


@pytest.fixture
def raw_link(device_url):
    """A link to the device, opened the moment it is up (it may still be booting)."""
    with Link.open(device_url, timeout=10.0) as lk:
        yield lk


def await_boot_hello(lk: Link, timeout: float = 10.0) -> None:
    """Link.await_boot_hello, failing the test if the device never says HELLO."""
    if not lk.await_boot_hello(timeout):
        pytest.fail(f"the device sent no boot HELLO within {timeout:.0f} s")


@pytest.fixture
def link(raw_link):
    """A link to a booted device: its boot HELLO has arrived (Link.await_boot_hello), so
    a test that sends raw bytes does not race the boot."""
    await_boot_hello(raw_link)
    return raw_link


@pytest.fixture
def device(link):
    return Device(link)


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path, monkeypatch):
    """Keep board state files of the tests away from the user's."""
    monkeypatch.setenv("EDGEPROP_STATE_DIR", str(tmp_path / "state"))
