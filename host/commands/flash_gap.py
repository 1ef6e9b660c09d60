"""`make flash BOARD=gap9`: the GAP SDK on real GAP9 hardware, the emulated board otherwise.

A board whose `[flash] method` is "gap_sdk" (boards/gap9/board.toml) is flashed
with the GreenWaves GAP SDK's `gapy` when all three are here:

- the SDK: `GAP_SDK_HOME` names an existing folder (the SDK's `sourceme.sh` sets
  it) and `gapy` is on PATH or at $GAP_SDK_HOME/tools/gapy/gapy;
- a board: a GAP9 EVK's on-board FTDI JTAG/UART bridge on USB (vendor 0x0403,
  product 0x6010 — what the SDK's OpenOCD configuration for gap9.evk opens),
  found in /sys/bus/usb/devices;
- an image built for the chip: build/gap9-pmsis/edgeprop.elf, from `make
  firmware BOARD=gap9 RTOS=pmsis` (firmware/port/pmsis: the SDK's UART driver,
  its perf counter, pi_cl_team_fork behind ep_parallel.h; built with the SDK's
  make rules). The default gap9 image (build/gap9/edgeprop.elf) is for QEMU's
  `virt` machine — 16550 UART, CLINT, DRAM at 0x80000000 — and would not run
  on the chip.

Then it runs `gapy --target=gap9.evk --platform=board ... run --image --flash
--exec-prepare --exec --binary=<image>` (the SDK makefiles' flash-and-run line).
Otherwise it boots the emulated gap9 in the background, as for every emulated
board, and says which of the three was missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ..boards import REPO_ROOT, Board
from ..errors import ToolError
from . import emulate_cmd

#: USB IDs of the GAP9 EVK's FTDI FT2232 bridge (JTAG + UART)
GAP9_EVK_USB = ("0403", "6010")
USB_DEVICES = Path("/sys/bus/usb/devices")
SDK_IMAGE = REPO_ROOT / "build" / "gap9-pmsis" / "edgeprop.elf"


@dataclass
class GapFlow:
    """What is present for the real-hardware flow; `missing` says what is not."""

    sdk: Path | None
    gapy: str | None
    board_found: bool
    image: Path | None

    @property
    def missing(self) -> list[str]:
        out = []
        if self.sdk is None:
            out.append("the GAP SDK (GAP_SDK_HOME is unset or not a folder: source the SDK's sourceme.sh)")
        elif self.gapy is None:
            out.append(f"gapy (not on PATH nor in {self.sdk}/tools/gapy)")
        if not self.board_found:
            out.append(f"a GAP9 board (no USB device {GAP9_EVK_USB[0]}:{GAP9_EVK_USB[1]}, the EVK's FTDI bridge)")
        if self.image is None:
            out.append(f"a GAP9 image ({SDK_IMAGE.relative_to(REPO_ROOT)}: needs a PMSIS port of the firmware, "
                       "which is not written yet; build/gap9/edgeprop.elf is for QEMU virt)")
        return out


def find_sdk(env: dict[str, str] | None = None) -> tuple[Path | None, str | None]:
    env = os.environ if env is None else env
    home = env.get("GAP_SDK_HOME")
    if not home or not Path(home).is_dir():
        return None, None
    in_sdk = Path(home) / "tools" / "gapy" / "gapy"
    gapy = shutil.which("gapy") or (str(in_sdk) if in_sdk.is_file() and os.access(in_sdk, os.X_OK) else None)
    return Path(home), gapy


def board_connected(usb_root: Path = USB_DEVICES) -> bool:
    """True if a USB device with the GAP9 EVK's vendor:product IDs is attached."""
    if not usb_root.is_dir():
        return False
    for dev in usb_root.iterdir():
        try:
            ids = ((dev / "idVendor").read_text().strip(), (dev / "idProduct").read_text().strip())
        except OSError:
            continue
        if ids == GAP9_EVK_USB:
            return True
    return False


def detect(env: dict[str, str] | None = None, usb_root: Path = USB_DEVICES, image: Path = SDK_IMAGE) -> GapFlow:
    sdk, gapy = find_sdk(env)
    return GapFlow(sdk, gapy, board_connected(usb_root), image if image.is_file() else None)


def gapy_command(gapy: str, image: Path, work_dir: Path) -> list[str]:
    return [gapy, "--target=gap9.evk", "--platform=board", f"--work-dir={work_dir}",
            "run", "--image", "--flash", "--exec-prepare", "--exec", f"--binary={image}"]


def run(args, board: Board) -> int:
    flow = detect()
    c = Console(stderr=getattr(args, "json", False))
    if not flow.missing:
        cmd = gapy_command(flow.gapy, flow.image, flow.image.parent / "gapy")
        c.print(f"==> {' '.join(cmd)}", highlight=False)
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise ToolError(f"gapy failed (exit {proc.returncode})", hint=f"run `{' '.join(cmd)}` to see why")
        return 0
    c.print(f"{board.name}: not flashing real hardware — missing " + "; ".join(flow.missing) +
            ". Booting the emulated board (QEMU virt, 8 cluster cores) instead.", highlight=False)
    args.stop = args.list = False
    return emulate_cmd.run(args)
