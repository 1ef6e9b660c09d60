"""`make flash BOARD=gap9` (host/commands/flash_gap.py): the GAP SDK's gapy when the
SDK, a GAP9 board and a chip image are all present, else the emulated board — and
the message says which was missing. The detection reads real places (GAP_SDK_HOME,
/sys/bus/usb/devices); the tests point it at temporary stand-ins."""

from __future__ import annotations

import stat

from host.boards import load_board
from host.commands import flash_gap
from host.emulator import running_boards

from conftest import _require_firmware


def _usb(tmp_path, *ids):
    root = tmp_path / "usb"
    for i, (vid, pid) in enumerate(ids):
        d = root / f"1-{i}"
        d.mkdir(parents=True)
        (d / "idVendor").write_text(vid + "\n")
        (d / "idProduct").write_text(pid + "\n")
    root.mkdir(exist_ok=True)
    return root


def _sdk(tmp_path):
    home = tmp_path / "gap_sdk"
    gapy = home / "tools" / "gapy" / "gapy"
    gapy.parent.mkdir(parents=True)
    gapy.write_text("#!/bin/sh\nexit 0\n")
    gapy.chmod(gapy.stat().st_mode | stat.S_IXUSR)
    return home, gapy


def test_nothing_present_names_all_three(tmp_path):
    flow = flash_gap.detect(env={}, usb_root=_usb(tmp_path, ("1d6b", "0002")), image=tmp_path / "none.elf")
    missing = " ".join(flow.missing)
    assert "GAP_SDK_HOME" in missing and "0403:6010" in missing and "PMSIS port" in missing


def test_sdk_board_and_image_present_runs_gapy(tmp_path, monkeypatch):
    home, gapy = _sdk(tmp_path)
    monkeypatch.setattr(flash_gap.shutil, "which", lambda name: None)  # gapy only inside the SDK
    image = tmp_path / "edgeprop.elf"
    image.write_bytes(b"\x7fELF")
    flow = flash_gap.detect(env={"GAP_SDK_HOME": str(home)}, usb_root=_usb(tmp_path, ("0403", "6010")), image=image)
    assert flow.missing == [] and flow.gapy == str(gapy)
    cmd = flash_gap.gapy_command(flow.gapy, image, tmp_path / "w")
    assert cmd[:3] == [str(gapy), "--target=gap9.evk", "--platform=board"] and f"--binary={image}" in cmd


def test_sdk_without_board_is_not_enough(tmp_path):
    home, _ = _sdk(tmp_path)
    flow = flash_gap.detect(env={"GAP_SDK_HOME": str(home)}, usb_root=_usb(tmp_path), image=tmp_path / "x")
    assert any("GAP9 board" in m for m in flow.missing) and not any("GAP SDK" in m for m in flow.missing)


def test_flash_gap9_here_boots_the_emulated_board_and_says_so(capsys):
    _require_firmware("gap9")
    from host.cli import main

    assert main(["flash-firmware", "--board", "gap9"]) == 0
    out = capsys.readouterr().out
    assert "not flashing real hardware" in out and "Booting the emulated board" in out
    boards = [r for r in running_boards() if r.board == "gap9"]
    assert boards, "the emulated gap9 is running"
    for r in boards:
        r.stop()
    assert load_board("gap9").flash["method"] == "gap_sdk"
