"""`host flash-firmware` (what `make flash` runs): the board's [flash] method decides —
emulated boards boot in the background, real ones are programmed with pyOCD."""

from __future__ import annotations

import json
import stat

import pytest

from host.cli import main
from host.commands import firmware_cmd
from host.emulator import running_boards

from conftest import _require_firmware


def _fake_pyocd(tmp_path, output: str, code: int):
    """A stand-in `pyocd` that records its arguments, prints `output` and exits `code`."""
    script = tmp_path / "pyocd"
    args_file = tmp_path / "args.json"
    script.write_text(f"#!/usr/bin/env python3\nimport json, sys\n"
                      f"open({str(args_file)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
                      f"print({output!r})\nsys.exit({code})\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), args_file


@pytest.fixture
def elf(tmp_path):
    path = tmp_path / "edgeprop.elf"
    path.write_bytes(b"\x7fELF")
    return path


def test_pyocd_board_runs_pyocd_flash_with_its_target(tmp_path, elf, monkeypatch, capsys):
    pyocd, args_file = _fake_pyocd(tmp_path, "programmed", 0)
    monkeypatch.setattr(firmware_cmd, "find_pyocd", lambda: pyocd)
    assert main(["flash-firmware", "--board", "nucleo-f446re", "--elf", str(elf), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == "stm32f446retx" and out["method"] == "pyocd"
    assert json.loads(args_file.read_text()) == ["flash", "-t", "stm32f446retx", str(elf)]


def test_missing_pyocd_says_how_to_install_it(elf, monkeypatch, capsys):
    monkeypatch.setattr(firmware_cmd, "find_pyocd", lambda: None)
    assert main(["flash-firmware", "--board", "nucleo-f446re", "--elf", str(elf)]) == 7
    err = capsys.readouterr().err
    assert "pyOCD is not installed" in err and ".[flash]" in err


def test_missing_probe_is_a_link_error_that_says_to_connect_it(tmp_path, elf, monkeypatch, capsys):
    pyocd, _ = _fake_pyocd(tmp_path, "0000123 C [__main__] No connected debug probes", 1)
    monkeypatch.setattr(firmware_cmd, "find_pyocd", lambda: pyocd)
    assert main(["flash-firmware", "--board", "nucleo-f446re", "--elf", str(elf)]) == 3
    err = capsys.readouterr().err
    assert "no debug probe" in err and "ST-LINK" in err


def test_missing_firmware_image_is_a_tool_error(tmp_path):
    assert main(["flash-firmware", "--board", "nucleo-f446re", "--elf", str(tmp_path / "none.elf")]) == 7


def test_emulated_board_boots_in_the_background(capsys):
    _require_firmware("mps2-an386")
    assert main(["flash-firmware", "--board", "mps2-an386", "--json"]) == 0
    started = json.loads(capsys.readouterr().out)
    try:
        assert [r.url for r in running_boards()] == [started["url"]]
    finally:
        assert main(["emulate", "--stop"]) == 0
