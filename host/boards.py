"""Board descriptions (`boards/<name>/board.toml`) and what is generated from them.

A board description is the single source for a board's core, clock, memory
budgets, toolchain flags, emulator command and flash method. The firmware build
never hard-codes any of these: `python -m host.boards render BOARD OUTDIR` writes

- `OUTDIR/board.mk`: CROSS, CFLAGS, LDFLAGS, PORT and the -D settings of
  `firmware/port/ep_port.h` (EP_L3_REGION=1 for a board with an [memory] l3 region),
  plus the port's own settings from the board's
  `[port_settings]` table (register addresses, pins: one `-DNAME=value` each), included
  by `firmware/Makefile`;
- `OUTDIR/link.ld`: the port's linker-script template (in its folder or the
  shared folder its `port.mk` names) with the board's memory regions and
  budgets filled in.
"""

from __future__ import annotations

import argparse
import re
import shutil
import string
import sys
import tomllib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from . import ids
from .errors import BoardError

REPO_ROOT = Path(__file__).resolve().parents[1]
BOARDS_DIR = REPO_ROOT / "boards"
FIRMWARE_DIR = REPO_ROOT / "firmware"
OPS_DIR = FIRMWARE_DIR / "runtime" / "ops"


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    core: str
    port: str
    cpu_hz: int
    memory: dict[str, dict[str, int]]
    arena_bytes: int
    staging_bytes: int
    stack_bytes: int
    #: graph limits of this board's firmware (ids.MAX_TENSORS / MAX_NODES unless lowered)
    max_tensors: int
    max_nodes: int
    toolchain: dict
    emulator: dict | None
    flash: dict = field(default_factory=dict)
    port_settings: dict[str, int | str] = field(default_factory=dict)
    #: bytes of L3 memory for tensors ([runtime] l3_bytes; 0: the board has no L3 tier). With an
    #: [memory] l3 region (gap9) the firmware keeps them, and the upload staging buffer, there
    l3_bytes: int = 0
    #: op files of firmware/runtime/ops left out of this board's firmware ([runtime] omit_ops:
    #: a board short of flash); its op table then lacks their ops (omitted_ops)
    omit_ops: tuple[str, ...] = ()

    @property
    def emulated(self) -> bool:
        """True if this machine can run the board: the native build always, others
        when the emulator their description names is installed."""
        if self.port == "posix":
            return True
        return bool(self.emulator) and shutil.which(self.emulator["binary"]) is not None

    @property
    def has_toolchain(self) -> bool:
        return shutil.which(self.toolchain["prefix"] + "gcc") is not None

    @property
    def cluster_cores(self) -> int:
        """Cores of the board's compute cluster (gap9: 8), 0 for boards without one:
        the `-smp` of its emulator minus the controller hart."""
        if not self.emulator or self.port != "riscv_virt":
            return 0
        args = list(self.emulator.get("args", []))
        smp = int(args[args.index("-smp") + 1]) if "-smp" in args else 1
        return max(smp - 1, 0)

    def cycles_to_instructions(self, cycles: int) -> int:
        """Emulated boards already report instructions (see docs/protocol.md)."""
        return cycles

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "core": self.core,
            "cpu_hz": self.cpu_hz,
            "flash_bytes": self.memory["flash"]["length"],
            "ram_bytes": self.memory["ram"]["length"],
            "l1_bytes": self.memory["l1"]["length"] if "l1" in self.memory else None,
            "l3_bytes": self.l3_bytes,
            "cluster_cores": self.cluster_cores,
            "arena_bytes": self.arena_bytes,
            "max_tensors": self.max_tensors,
            "max_nodes": self.max_nodes,
            "staging_bytes": self.staging_bytes,
            "emulator": self.emulator["machine"] if self.emulator else None,
            "emulated_here": self.emulated,
            "toolchain_here": self.has_toolchain,
            "flash_method": self.flash.get("method"),
            "pyocd_target": self.flash.get("target"),
        }


def with_cluster(board: Board, cores: int, timing: str | None = None) -> Board:
    """`board` booted with `cores` cluster cores (gap9: 1..8), as the emulator runs it:
    QEMU `-smp cores+1` (hart 0 is the fabric controller) and `-append "cores=N"`,
    which the port reads from the device tree (firmware/port/riscv_virt/cluster.c).
    timing="turns" makes the cores of a fork run one after another, so the device's
    cycle counts are the cluster's critical path (FC instructions + per phase the
    slowest core's): what the benchmark measures. Same firmware image either way."""
    if board.cluster_cores == 0:
        raise BoardError(f"board {board.name} has no cluster")
    if not 1 <= cores <= board.cluster_cores:
        raise BoardError(f"{board.name} has {board.cluster_cores} cluster cores, not {cores}")
    if timing not in (None, "turns"):
        raise BoardError(f"timing {timing!r}: want None (cores run at once) or 'turns'")
    args = list(board.emulator.get("args", []))
    args[args.index("-smp") + 1] = str(cores + 1)
    bootargs = f"cores={cores}" + (f" timing={timing}" if timing else "")
    return dataclasses.replace(board, emulator=dict(board.emulator, args=[*args, "-append", bootargs]))


def board_names() -> list[str]:
    return sorted(p.parent.name for p in BOARDS_DIR.glob("*/board.toml"))


def load_board(name: str) -> Board:
    path = BOARDS_DIR / name / "board.toml"
    if not path.is_file():
        known = ", ".join(board_names()) or "none"
        raise BoardError(f"unknown board {name!r} (known boards: {known})")
    try:
        d = tomllib.loads(path.read_text())
        rt = d["runtime"]
        board = Board(
            name=d["name"], description=d.get("description", ""), core=d["core"],
            port=d["port"], cpu_hz=int(d["cpu_hz"]), memory=d["memory"],
            arena_bytes=int(rt["arena_bytes"]), staging_bytes=int(rt["staging_bytes"]),
            stack_bytes=int(rt["stack_bytes"]), toolchain=d["toolchain"],
            max_tensors=int(rt.get("max_tensors", ids.MAX_TENSORS)),
            max_nodes=int(rt.get("max_nodes", ids.MAX_NODES)),
            emulator=d.get("emulator"), flash=d.get("flash", {}), port_settings=d.get("port_settings", {}),
            l3_bytes=int(rt.get("l3_bytes", 0)), omit_ops=tuple(rt.get("omit_ops", ())),
        )
        for f in board.omit_ops:
            if not isinstance(f, str) or "/" in f or not (OPS_DIR / f).is_file():
                raise ValueError(f"[runtime] omit_ops: {f!r} is not a file of firmware/runtime/ops")
        if board.l3_bytes < 0 or board.l3_bytes % 8:
            raise ValueError(f"[runtime] l3_bytes = {board.l3_bytes}: want a multiple of 8, >= 0")
        if not (1 <= board.max_tensors <= ids.MAX_TENSORS and 1 <= board.max_nodes <= ids.MAX_NODES):
            raise ValueError(f"[runtime] max_tensors/max_nodes must be in 1..{ids.MAX_TENSORS}/{ids.MAX_NODES}")
        for key, value in board.port_settings.items():
            if not re.fullmatch(r"[A-Z][A-Z0-9_]*", key) or not isinstance(value, (int, str)) \
                    or isinstance(value, bool):
                raise ValueError(f"[port_settings] {key} = {value!r}: want UPPER_CASE = integer or string")
    except (KeyError, TypeError, ValueError, tomllib.TOMLDecodeError) as e:
        raise BoardError(f"{path}: malformed board description ({e!r})") from e
    if board.name != name:
        raise BoardError(f"{path}: name {board.name!r} does not match its folder {name!r}")
    return board


def omitted_ops(board: Board) -> set[str]:
    """Names (OpCode names, lower case) of the ops board's firmware leaves out: those its
    omit_ops files define (`const ep_op_t ep_op_<name>`)."""
    names: set[str] = set()
    for f in board.omit_ops:
        names |= set(re.findall(r"^const ep_op_t ep_op_(\w+)\s*=", (OPS_DIR / f).read_text(), re.M))
    return names


def render_board_mk(board: Board) -> str:
    tc = board.toolchain
    defines = [
        f'-DEP_BOARD_NAME=\\"{board.name}\\"',
        f"-DEP_ARENA_BYTES={board.arena_bytes}",
        f"-DEP_STAGING_BYTES={board.staging_bytes}",
        f"-DEP_CPU_HZ={board.cpu_hz}",
        f"-DEP_MAX_TENSORS={board.max_tensors}",
        f"-DEP_MAX_NODES={board.max_nodes}",
        f"-DEP_L3_BYTES={board.l3_bytes}",
    ]
    if "l3" in board.memory:  # the linker script has a memory-mapped L3 region and its .l3 section
        defines.append("-DEP_L3_REGION=1")
    if board.emulator and "icount_shift" in board.emulator:
        defines.append(f"-DEP_ICOUNT_SHIFT={int(board.emulator['icount_shift'])}")
    if board.emulator and any(a.startswith("-semihosting") for a in board.emulator.get("args", [])):
        defines.append("-DEP_SEMIHOSTING=1")  # the port may end the program through the emulator
    for key, value in board.port_settings.items():
        defines.append(f"-D{key}=0x{value:X}" if isinstance(value, int) else f"-D{key}={value}")
    lines = [
        f"# GENERATED from boards/{board.name}/board.toml by `python -m host.boards render`.",
        f"BOARD_NAME := {board.name}",
        f"PORT := {board.port}",
        f"CROSS := {tc.get('prefix', '')}",
        f"BOARD_CFLAGS := {' '.join(tc.get('cflags', []))} {' '.join(defines)}",
        f"BOARD_LDFLAGS := {' '.join(tc.get('ldflags', []))}",
        f"BOARD_OMIT := {' '.join(f'runtime/ops/{f}' for f in board.omit_ops)}",
    ]
    return "\n".join(lines) + "\n"


def port_dirs(port: str) -> list[Path]:
    """The port's folder, then the shared one its `port.mk` names (PORT_SHARED := armv7m),
    as firmware/Makefile reads it."""
    dirs = [FIRMWARE_DIR / "port" / port]
    mk = dirs[0] / "port.mk"
    if mk.is_file():
        m = re.search(r"^PORT_SHARED\s*:?=\s*(.*)$", mk.read_text(), re.M)
        dirs += [FIRMWARE_DIR / "port" / d for d in (m.group(1).split() if m else [])]
    return dirs


def render_linker_script(board: Board, template: Path | None = None) -> str | None:
    """Fill the port's `link.ld.in` template (or `template`, e.g. an RTOS port's own);
    None for ports without one (posix)."""
    template = template or next((d / "link.ld.in" for d in port_dirs(board.port)
                                 if (d / "link.ld.in").is_file()), None)
    if template is None:
        return None
    mem = board.memory
    values = {
        "BOARD": board.name,
        "FLASH_ORIGIN": f"0x{mem['flash']['origin']:08X}",
        "FLASH_LENGTH": f"0x{mem['flash']['length']:08X}",
        "RAM_ORIGIN": f"0x{mem['ram']['origin']:08X}",
        "RAM_LENGTH": f"0x{mem['ram']['length']:08X}",
        "STACK_BYTES": str(board.stack_bytes),
    }
    # gap9's cluster L1 (the riscv_virt templates put the core stacks there) and external L3
    # (section .l3: L3 tensors and the upload staging)
    for region in ("l1", "l3"):
        if region in mem:
            values[f"{region.upper()}_ORIGIN"] = f"0x{mem[region]['origin']:08X}"
            values[f"{region.upper()}_LENGTH"] = f"0x{mem[region]['length']:08X}"
    return string.Template(template.read_text()).substitute(values)


def render(board: Board, outdir: Path, link_template: Path | None = None) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    _write_if_changed(outdir / "board.mk", render_board_mk(board))
    ld = render_linker_script(board, link_template)
    if ld is not None:
        _write_if_changed(outdir / "link.ld", ld)


def _write_if_changed(path: Path, text: str) -> None:
    # Keeps make from rebuilding everything when nothing changed.
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host.boards")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="write board.mk and link.ld for a board")
    r.add_argument("board")
    r.add_argument("outdir", type=Path)
    r.add_argument("--link-template", type=Path, help="linker-script template to fill instead of the "
                   "port's (RTOS ports with their own memory layout)")
    args = ap.parse_args(argv)
    try:
        render(load_board(args.board), args.outdir, args.link_template)
    except BoardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
