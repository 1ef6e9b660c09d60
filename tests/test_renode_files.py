"""Every MCU board has a Renode platform (.repl) and script (.resc) that match its
board.toml: the CPU, the SysTick clock, memory covering the linker's regions, the
UART at the port's address, the script loading this board's firmware and wiring
that UART to a TCP socket, and a Robot test case in tests/renode/edgeprop.robot.

Renode itself is not installable here (`make test-renode` skips with the reason),
so this test is what keeps the files honest: it parses them rather than trusting
that they exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from host.boards import REPO_ROOT, board_names, load_board
from host.emulator import firmware_path

# Renode's platforms/cpus/stm32f4.repl (the STM32 boards build on it): USART bases
STM32F4_USARTS = {"usart1": 0x40011000, "usart2": 0x40004400, "usart3": 0x40004800}
MCU_BOARDS = [b for b in board_names() if load_board(b).port != "posix"]


def parse_repl(text: str) -> dict[str, dict]:
    """Peripherals of a .repl: name -> {type, address, props (key: value lines), links}."""
    out: dict[str, dict] = {}
    cur = None
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            m = re.fullmatch(r"(\w+):\s*(?:([\w.]+)\s*@\s*(\w+)(?:\s+<?(0x[0-9A-Fa-f]+))?.*)?", line.strip())
            if line.startswith("using "):
                out.setdefault("__using__", {"files": []})["files"].append(line.split('"')[1])
                continue
            assert m, f"unparsed .repl line: {raw!r}"
            cur = out.setdefault(m.group(1), {"type": None, "address": None, "props": {}, "links": []})
            if m.group(2):
                cur["type"] = m.group(2)
                cur["address"] = int(m.group(4), 16) if m.group(4) else None
            continue
        body = line.strip()
        if "->" in body:
            cur["links"].append(body)
        elif ":" in body:
            k, v = body.split(":", 1)
            cur["props"][k.strip()] = v.strip().strip('"')
    return out


def parse_resc(text: str) -> dict[str, str]:
    """The commands of a .resc we check, by their first words."""
    cmds = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    found = {}
    for c in cmds:
        for key in ("machine LoadPlatformDescription", "emulation CreateServerSocketTerminal",
                    "connector Connect", "sysbus LoadELF", "$elf?=", "$port?="):
            if c.startswith(key):
                found[key] = c[len(key):].strip()
    return found


def _int(v: str) -> int:
    return int(v.replace("_", ""), 0)


def _memory_spans(repl: dict) -> list[tuple[int, int]]:
    return [(p["address"], p["address"] + _int(p["props"]["size"])) for p in repl.values()
            if p.get("type") == "Memory.MappedMemory"]


def _covered(spans, lo: int, hi: int) -> bool:
    return any(a <= lo and hi <= b for a, b in spans)


@pytest.mark.parametrize("name", MCU_BOARDS)
def test_repl_matches_board_toml(name):
    board = load_board(name)
    repl_path = REPO_ROOT / "boards" / name / f"{name}.repl"
    assert repl_path.is_file(), f"{repl_path} missing"
    repl = parse_repl(repl_path.read_text())
    resc = parse_resc((REPO_ROOT / "boards" / name / f"{name}.resc").read_text())
    uart = resc["connector Connect"].split()[0].removeprefix("sysbus.")
    ps = board.port_settings
    if board.port == "riscv_virt":
        cpus = {k: v for k, v in repl.items() if v.get("type") == "CPU.RiscV32"}
        assert sorted(int(c["props"]["hartId"]) for c in cpus.values()) == list(range(board.cluster_cores + 1))
        assert all(c["props"]["cpuType"].startswith(board.core) for c in cpus.values())
        clint = repl["clint"]
        assert clint["address"] == ps["RV_CLINT_BASE"]
        assert _int(clint["props"]["numberOfTargets"]) == board.cluster_cores + 1
        assert repl[uart]["type"] == "UART.NS16550" and repl[uart]["address"] == ps["RV_UART_BASE"]
        spans = _memory_spans(repl)
        for region in board.memory.values():  # flash, ram and the cluster's L1
            assert _covered(spans, region["origin"], region["origin"] + region["length"]), region
    elif board.port == "stm32f4":
        assert repl["__using__"]["files"] == ["platforms/cpus/stm32f4.repl"]
        assert STM32F4_USARTS[uart] == ps["STM32_USART_BASE"]
        assert repl["cpu"]["props"]["cpuType"] == board.core
        assert _int(repl["nvic"]["props"]["systickFrequency"]) == board.cpu_hz
        assert _int(repl["sram"]["props"]["size"]) >= board.memory["ram"]["length"]
    else:  # the MPS2/MPS3 boards: everything written out
        assert repl["cpu"]["type"] == "CPU.CortexM" and repl["cpu"]["props"]["cpuType"] == board.core
        assert _int(repl["nvic"]["props"]["systickFrequency"]) == board.cpu_hz
        assert repl[uart]["type"] == "UART.CMSDK_APB_UART" and repl[uart]["address"] == ps["MPS2_UART0_BASE"]
        spans = _memory_spans(repl)
        for region in (board.memory["flash"], board.memory["ram"]):
            assert _covered(spans, region["origin"], region["origin"] + region["length"]), region


@pytest.mark.parametrize("name", MCU_BOARDS)
def test_resc_boots_this_boards_firmware_on_a_socket(name):
    resc = parse_resc((REPO_ROOT / "boards" / name / f"{name}.resc").read_text())
    assert resc["machine LoadPlatformDescription"] == f"@boards/{name}/{name}.repl"
    elf = Path(resc["$elf?="].removeprefix("@"))
    assert REPO_ROOT / elf == firmware_path(load_board(name))
    assert resc["sysbus LoadELF"] == "$elf"
    port, term, telnet = resc["emulation CreateServerSocketTerminal"].split()
    assert port == "$port" and telnet == "false"  # a raw byte link, no telnet negotiation
    assert resc["connector Connect"].split()[1] == term.strip('"')
    assert int(resc["$port?="]) > 1024


def test_robot_suite_has_a_case_per_board():
    robot = (REPO_ROOT / "tests" / "renode" / "edgeprop.robot").read_text()
    cases = re.findall(r"^Should Train On (\S+)$", robot, re.M)
    assert sorted(cases) == sorted(MCU_BOARDS)
    for b in MCU_BOARDS:
        assert re.search(rf"\[Tags\]\s+{re.escape(b)}\n\s+Train And Check Loss\s+{re.escape(b)}", robot)


def test_make_test_renode_skips_with_the_reason_without_renode(monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("renode_run", REPO_ROOT / "tests" / "renode" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod.shutil, "which", lambda name: None)
    assert mod.main([]) == 0
    assert "SKIPPED" in capsys.readouterr().out
    assert mod.main(["--strict"]) == 2
    monkeypatch.setattr(mod.shutil, "which", lambda name: "/x/renode-test" if name == "renode-test" else None)
    assert mod.renode_runner() == ["renode-test"]
    assert sorted(mod.renode_boards()) == sorted(MCU_BOARDS)
