"""Boot emulated boards (QEMU) and the native build, with their UART on a local socket.

Both listen as a TCP server and start the firmware only once the host attaches
(QEMU `-chardev socket,server=on,wait=on`; the native build does the same), so
no byte the device sends is lost. `start(..., detach=True)` leaves the board
running after the command ends and records it in a state file, which is how
`host stream` finds the board `make flash` booted.

Non-volatile storage: each board instance keeps its flash (the stored model and
checkpoints, firmware/app/ep_ckpt.h) in `edgeprop-nv.bin` inside its NV
directory — the emulator's working directory (QEMU opens it through
semihosting) or the native build's `--nv` file. Pass the same `nv_dir` to
`start` again and the restarted board finds its flash as it left it, even after
a kill; by default a board gets a fresh directory that is removed when it stops
(a detached board keeps `<state dir>/<board>.nv/` across restarts).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .boards import REPO_ROOT, Board
from .errors import ToolError, UsageError

BUILD_DIR = REPO_ROOT / "build"
#: the storage file's name inside a board's NV directory (firmware/port/ep_nv_semihost.h)
NV_FILE = "edgeprop-nv.bin"


def state_dir() -> Path:
    d = Path(os.environ.get("EDGEPROP_STATE_DIR") or Path.home() / ".cache" / "edgeprop" / "boards")
    d.mkdir(parents=True, exist_ok=True)
    return d


def firmware_path(board: Board) -> Path:
    name = "edgeprop" if board.port == "posix" else "edgeprop.elf"
    return BUILD_DIR / board.name / name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(board: Board, elf: Path, port: int, nv_dir: Path | None = None) -> list[str]:
    if board.port == "posix":
        nv = ["--nv", str(Path(nv_dir) / NV_FILE)] if nv_dir else []
        return [str(elf), "--listen", f"127.0.0.1:{port}", *nv]
    if not board.emulator:
        raise UsageError(f"board {board.name} has no emulator; attach the real board and pass --port")
    emu = board.emulator
    return [emu["binary"], "-M", emu["machine"], *emu.get("args", []), "-kernel", str(elf),
            "-chardev", f"socket,id=s0,host=127.0.0.1,port={port},server=on,wait=on",
            "-serial", "chardev:s0"]


@dataclass
class Running:
    board: str
    url: str
    pid: int
    log: Path
    proc: subprocess.Popen | None = None
    #: where the board's flash lives (NV_FILE inside); removed at stop() if owned
    nv_dir: Path | None = None
    owns_nv: bool = False

    def wait(self, timeout: float | None = None) -> int:
        """Exit code of the board process (the firmware's, through semihosting)."""
        if self.proc is None:
            raise UsageError("only a board started by this process can be waited for")
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """Kill the board at once (SIGKILL: like pulling the power); its NV directory stays."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.owns_nv and self.nv_dir is not None:
            try:
                self._stop_process()
            finally:
                shutil.rmtree(self.nv_dir, ignore_errors=True)
        else:
            self._stop_process()

    def _stop_process(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        else:
            _kill(self.pid)
            self.log.unlink(missing_ok=True)  # a board that died on its own keeps its log
        _state_file(self.board).unlink(missing_ok=True)

    def to_json(self) -> dict:
        return {"board": self.board, "url": self.url, "pid": self.pid, "log": str(self.log)}

    def __enter__(self) -> "Running":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start(board: Board, elf: Path | None = None, detach: bool = False, port: int | None = None,
          nv_dir: Path | None = None) -> Running:
    """Boot `board` with its UART on a local TCP port; `nv_dir` holds its flash (see the module doc)."""
    elf = Path(elf) if elf else firmware_path(board)
    if not elf.is_file():
        raise ToolError(f"no firmware at {elf}", hint=f"build it with `make firmware BOARD={board.name}`")
    port = port or free_port()
    owns_nv = nv_dir is None and not detach
    if nv_dir is None:
        nv_dir = (state_dir() / f"{board.name}.nv" if detach
                  else Path(tempfile.mkdtemp(prefix=f"{board.name}-nv-", dir=_scratch_dir())))
    nv_dir = Path(nv_dir).resolve()
    nv_dir.mkdir(parents=True, exist_ok=True)
    cmd = command(board, elf, port, nv_dir)
    if board.port != "posix" and not board.emulated:
        raise ToolError(f"{cmd[0]} is not installed", hint="`make setup` installs QEMU (apt-get)")
    url = f"socket://127.0.0.1:{port}"
    log = (state_dir() if detach else BUILD_DIR / board.name) / f"{board.name}-{os.getpid()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=detach, cwd=nv_dir)
    running = Running(board.name, url, proc.pid, log, proc, nv_dir, owns_nv)
    try:
        _wait_listening(running)
    except BaseException:
        running.stop()
        raise
    if detach:
        _state_file(board.name).write_text(json.dumps(running.to_json()))
    return running


def _scratch_dir() -> Path:
    d = BUILD_DIR / "nv"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _wait_listening(r: Running, timeout: float = 10.0) -> None:
    """Return once the board's socket accepts (checked without connecting to it)."""
    port = int(r.url.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if r.proc and r.proc.poll() is not None:
            raise ToolError(f"{r.board} exited at start (code {r.proc.returncode}); see {r.log}:\n"
                            + r.log.read_text(errors="replace")[-800:])
        if _is_listening(port):
            return
        time.sleep(0.02)
    raise ToolError(f"{r.board} did not open its serial socket within {timeout:.0f}s; see {r.log}")


def _is_listening(port: int) -> bool:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:  # 0A = LISTEN
            return True
    return False


def _state_file(board: str) -> Path:
    return state_dir() / f"{board}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def running_boards() -> list[Running]:
    """Boards started with detach=True that are still alive (stale records are removed)."""
    out = []
    for f in sorted(state_dir().glob("*.json")):
        try:
            d = json.loads(f.read_text())
            r = Running(d["board"], d["url"], int(d["pid"]), Path(d["log"]))
        except (ValueError, KeyError, OSError):
            f.unlink(missing_ok=True)
            continue
        if _alive(r.pid):
            out.append(r)
        else:
            f.unlink(missing_ok=True)
    return out
