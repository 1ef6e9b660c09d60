"""Shared fixtures: devices to test against, one fixture per kind.

`any_device` runs a test on the fake device (pure Python), the native build of
the firmware, and the emulated Cortex-M4F (QEMU mps2-an386). Firmware images
come from `make test` (which builds them first). Run pytest directly without
them and those cases skip with the reason — except under CI (CI=true), where a
missing image is a failure, so a green CI always means the firmware was tested.
"""

from __future__ import annotations

import os

import pytest

from host.boards import load_board
from host.device import Device
from host.emulator import firmware_path, start
from host.link import Link

DEVICE_KINDS = ["fake", "native", "mps2-an386"]


def _require_firmware(board_name: str):
    board = load_board(board_name)
    fw = firmware_path(board)
    problem = None
    if not fw.is_file():
        problem = f"{fw} is not built (run `make firmware BOARD={board_name}`)"
    elif not board.emulated:
        problem = f"the emulator for {board_name} is not installed (run `make setup`)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return board


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
    board = _require_firmware(request.param)
    with start(board) as running:
        yield running.url


@pytest.fixture
def link(device_url):
    with Link.open(device_url, timeout=10.0) as lk:
        yield lk


@pytest.fixture
def device(link):
    return Device(link)


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path, monkeypatch):
    """Keep board state files of the tests away from the user's."""
    monkeypatch.setenv("EDGEPROP_STATE_DIR", str(tmp_path / "state"))
