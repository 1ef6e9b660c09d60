"""The RTOS ports run the same firmware, protocol and host commands as bare metal.

FreeRTOS (firmware/port/freertos, docs/rtos.md) on the emulated mps2-an386
(Cortex-M4F) and gap9 (RISC-V): the app's command loop in a task fed by the
UART receive interrupt through a stream buffer, responses sent by a
lower-priority task, every kernel object static. Each test builds the port with
`make` (a no-op when `make test` already did) into build/<board>-freertos/ and
boots it in QEMU exactly as the bare-metal image is booted.

Without the kernel sources (third_party/FreeRTOS-Kernel from `west update`, or
FREERTOS_KERNEL_PATH=) the tests that need them skip and say so; that the build
then stops with the same advice is checked always.

Zephyr (zephyr/ module, firmware/port/zephyr/ application, tests/zephyr/ ztest
suite): the suite's checks run natively always; the Zephyr builds need
ZEPHYR_BASE (or third_party/zephyr) and skip without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from host.blob import build_blob
from host.boards import REPO_ROOT, load_board
from host.compiler import TrainConfig, compile_model
from host.datasets import load_dataset
from host.device import Batch, Device
from host.emulator import BUILD_DIR, firmware_path, start
from host.link import Link
from host.zoo import init_params, load_model

import test_training_golden as golden
from conftest import streamed_twice

FREERTOS_BOARDS = ["mps2-an386", "gap9"]
PORT_DIR = REPO_ROOT / "firmware" / "port" / "freertos"


def kernel_path() -> Path:
    return Path(os.environ.get("FREERTOS_KERNEL_PATH") or REPO_ROOT / "third_party" / "FreeRTOS-Kernel")


def build_freertos(board_name: str, variant: str = "", extra_cflags: str = "") -> tuple:
    """Build (make: incremental) the FreeRTOS image of a board; skip without the kernel
    sources, the cross compiler or the emulator. Returns (board, elf)."""
    kernel = kernel_path()
    if not (kernel / "tasks.c").is_file():
        pytest.skip(f"FreeRTOS-Kernel sources not found in {kernel}: run `west update` "
                    "(west.yml pins V11.1.0) or set FREERTOS_KERNEL_PATH=<a FreeRTOS-Kernel checkout>")
    board = load_board(board_name)
    if not board.has_toolchain:
        pytest.skip(f"{board.toolchain['prefix']}gcc is not installed (run `make setup`)")
    if not board.emulated:
        pytest.skip(f"the emulator for {board_name} is not installed (run `make setup`)")
    out = BUILD_DIR / f"{board_name}-freertos{variant}"
    out.mkdir(parents=True, exist_ok=True)
    # pytest-xdist workers may want the same image at once: one make per build dir
    with open(out / ".build-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        r = subprocess.run(["make", "--no-print-directory", "-C", str(PORT_DIR), f"BOARD={board_name}",
                            f"BUILD={out}", f"FREERTOS_KERNEL_PATH={kernel}", f"EXTRA_CFLAGS={extra_cflags}"],
                           capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"FreeRTOS build for {board_name} failed:\n{(r.stdout + r.stderr)[-3000:]}")
    return board, out / "edgeprop.elf"


@pytest.fixture(params=FREERTOS_BOARDS)
def freertos_image(request):
    return build_freertos(request.param)


@contextlib.contextmanager
def booted(board, elf: Path, timeout: float = 30.0):
    """A Device on a freshly booted image, once its boot HELLO has arrived."""
    with start(board, elf=elf) as running, Link.open(running.url, timeout=timeout) as lk:
        deadline = time.monotonic() + 20.0
        while not any(f.req_id == 0 for f in lk.read_frames(0.2)):
            if time.monotonic() > deadline:
                pytest.fail(f"{elf} sent no boot HELLO within 20 s (log: {running.log})")
        yield Device(lk), running


def test_training_matches_the_numpy_reference(freertos_image):
    """The bare-metal golden test, unchanged, on the FreeRTOS image: 20 SGD steps on
    real digits, losses and weights against the float64 NumPy reference (tolerances
    and their justification in tests/test_training_golden.py)."""
    board, elf = freertos_image
    with booted(board, elf) as (dev, _):
        golden.test_n_sgd_steps_match_the_numpy_reference(dev)


def _train_and_read(board, elf: Path, steps: int = 6, model: str = "mlp-digits") -> tuple[list, dict]:
    """`steps` SGD steps of `model` from seeded weights: on digits for the MLP, on
    seeded normal noise otherwise; the (loss, correct) of each step and the weights."""
    spec = load_model(model)
    batch = 24 if model == "mlp-digits" else 4
    prog = compile_model(spec, init_params(spec, seed=7), TrainConfig(batch=batch, lr=0.05))
    if model == "mlp-digits":
        ds = load_dataset("digits", seed=7)
        batches = [(ds.x_train[s * batch:(s + 1) * batch], ds.y_train[s * batch:(s + 1) * batch], ds.quant)
                   for s in range(steps)]
    else:
        rng = np.random.default_rng(7)
        batches = [(rng.standard_normal((batch, prog.graph.input_elems)).astype(np.float32),
                    rng.integers(0, prog.graph.num_classes, batch), None) for _ in range(steps)]
    with booted(board, elf) as (dev, _):
        dev.load(build_blob(prog))
        losses = []
        for x, y, quant in batches:
            r = dev.train(Batch.from_arrays(x, y, quant))
            losses.append((r.loss, r.correct))
        return losses, dev.read_params(prog)


@pytest.mark.parametrize("board_name, model", [("mps2-an386", "mlp-digits"), ("mps2-an386", "eegnet-scp1"),
                                               ("gap9", "eegnet-scp1")])
def test_same_bits_as_the_bare_metal_build(board_name, model):
    """The runtime is compiled with the bare-metal flags, so the FreeRTOS image
    computes the very same float32 results: interrupts and context switches land in
    the middle of every EEGNet step (its conv layers run for many tick periods), and
    the FPU state must come back intact each time (lazy stacking on the M4F; the
    f0-f31/fcsr context extension on RISC-V). gap9's bare-metal build may run
    kernels on its cluster, which the runtime keeps bit-identical to one core."""
    board, elf = build_freertos(board_name)
    bare = firmware_path(board)
    if not bare.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{bare} is not built")
        pytest.skip(f"{bare} is not built (run `make firmware BOARD={board_name}`)")
    rtos_losses, rtos_w = _train_and_read(board, elf, steps=3, model=model)
    bare_losses, bare_w = _train_and_read(board, bare, steps=3, model=model)
    assert rtos_losses == bare_losses
    assert set(rtos_w) == set(bare_w)
    for name in bare_w:
        np.testing.assert_array_equal(rtos_w[name], bare_w[name], err_msg=name)


@pytest.mark.parametrize("board_name", FREERTOS_BOARDS)
def test_a_full_receive_buffer_holds_bytes_back_instead_of_losing_them(board_name):
    """With a 16-byte rx stream buffer every upload overflows it: the receive ISR must
    mask the UART interrupt and leave bytes in the UART until the train task has made
    room. A lost byte would fail a frame's CRC; the model must load and train."""
    board, elf = build_freertos(board_name, "-rx16", "-DEP_FREERTOS_RX_BUFFER_BYTES=16")
    losses, weights = _train_and_read(board, elf, steps=3)
    ref_losses, ref_weights = _train_and_read(*build_freertos(board_name), steps=3)
    assert losses == ref_losses
    for name in ref_weights:
        np.testing.assert_array_equal(weights[name], ref_weights[name], err_msg=name)


def test_host_commands_drive_the_rtos_board(freertos_image, capsys, tmp_path):
    """`host emulate --elf` boots the FreeRTOS image; `host stream` finds it, trains,
    and a second stream reconnects to the model the device still holds."""
    board, elf = freertos_image
    with streamed_twice(capsys, tmp_path, board.name, ["--board", board.name, "--elf", str(elf)]):
        pass


def test_exit_sends_its_answer_then_ends_qemu_with_the_code(freertos_image):
    """EXIT's response goes through the tx task's buffer: ep_port_exit waits for it to
    reach the UART before the emulator stops with the firmware's exit code."""
    board, elf = freertos_image
    with booted(board, elf) as (dev, running):
        dev.exit(3)  # raises if the response never arrives
        assert running.wait(timeout=10) == 3


def test_no_heap_behind_the_kernel(freertos_image):
    """Every kernel object is static: no FreeRTOS heap (pvPortMalloc) and no libc
    malloc in the image."""
    board, elf = freertos_image
    nm = subprocess.run([board.toolchain["prefix"] + "nm", str(elf)], capture_output=True, text=True, check=True)
    symbols = {line.split()[-1] for line in nm.stdout.splitlines() if line.strip()}
    assert {"xTaskCreateStatic", "xStreamBufferGenericCreateStatic", "vTaskStartScheduler"} <= symbols
    assert not symbols & {"pvPortMalloc", "vPortFree", "malloc", "_malloc_r", "free", "calloc", "realloc"}


def test_without_kernel_sources_the_build_says_what_to_set(tmp_path):
    """No FreeRTOS checkout: the build stops at once and names the two ways out."""
    r = subprocess.run(["make", "--no-print-directory", "-C", str(PORT_DIR), "BOARD=mps2-an386",
                        f"BUILD={tmp_path / 'out'}", f"FREERTOS_KERNEL_PATH={tmp_path / 'missing'}"],
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert "FREERTOS_KERNEL_PATH" in r.stderr and "west update" in r.stderr
    assert not (tmp_path / "out" / "edgeprop.elf").exists()


def test_an_unported_board_is_refused_by_name(tmp_path):
    r = subprocess.run(["make", "--no-print-directory", "-C", str(PORT_DIR), "BOARD=netduinoplus2",
                        f"BUILD={tmp_path / 'out'}"], capture_output=True, text=True)
    assert r.returncode != 0 and "mps2-an386 gap9" in r.stderr and "netduinoplus2" in r.stderr


# ---- Zephyr ------------------------------------------------------------------------
# The module (zephyr/), the application (firmware/port/zephyr/) and the ztest suite
# (tests/zephyr/). The suite's checks are plain C (tests/zephyr/src/golden_check.c):
# they are built and run natively here always, with the limits the suite's prj.conf
# gives Zephyr, and the op families zephyr/Kconfig can leave out are linked without
# each. Building with Zephyr itself needs ZEPHYR_BASE (see docs/rtos.md).

ZEPHYR_SUITE = REPO_ROOT / "tests" / "zephyr"
RUNTIME = REPO_ROOT / "firmware" / "runtime"


def _kconfig_values(prj_conf: Path) -> dict[str, str]:
    out = {}
    for line in prj_conf.read_text().splitlines():
        m = re.fullmatch(r"CONFIG_(\w+)=(.*)", line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip('"')
    return out


def _op_families() -> dict[str, list[str]]:
    """The op files each Kconfig option removes, read from zephyr/CMakeLists.txt."""
    text = (REPO_ROOT / "zephyr" / "CMakeLists.txt").read_text()
    families = {m.group(1): m.group(2).split() for m in re.finditer(r"set\(EP_OPS_(\w+) ([^)]*)\)", text)}
    assert families, "zephyr/CMakeLists.txt names no op family"
    families["DTYPE_Q8"] = sorted(p.name for p in (RUNTIME / "ops").glob("ep_q8_*.c"))
    return families


@pytest.fixture(scope="module")
def suite_objects(tmp_path_factory):
    """The golden header (gen_golden.py) and every object of the native suite build,
    compiled once with the limits of tests/zephyr/prj.conf."""
    out = tmp_path_factory.mktemp("zephyr-suite")
    subprocess.run([sys.executable, str(ZEPHYR_SUITE / "gen_golden.py"), str(out / "golden.h")], check=True)
    conf = _kconfig_values(ZEPHYR_SUITE / "prj.conf")
    flags = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", f"-I{RUNTIME}", f"-I{ZEPHYR_SUITE / 'src'}",
             f"-I{out}", f"-DEP_ARENA_BYTES={conf['EDGEPROP_ARENA_BYTES']}",
             f"-DEP_MAX_TENSORS={conf['EDGEPROP_MAX_TENSORS']}", f"-DEP_MAX_NODES={conf['EDGEPROP_MAX_NODES']}"]
    sources = [*RUNTIME.glob("*.c"), *(RUNTIME / "ops").glob("*.c"),
               ZEPHYR_SUITE / "src" / "golden_check.c", ZEPHYR_SUITE / "native" / "main.c"]
    objects = {}
    for src in sources:
        obj = out / (src.parent.name + "-" + src.stem + ".o")
        r = subprocess.run(["cc", *flags, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
        assert r.returncode == 0, f"{src.name}:\n{r.stderr[-2000:]}"
        objects[src.name] = obj
    return out, objects


def _link_and_run(out: Path, objects: dict, leave_out: list[str], name: str):
    exe = out / name
    r = subprocess.run(["cc", "-o", str(exe), *(str(o) for n, o in objects.items() if n not in leave_out), "-lm"],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"link without {leave_out}:\n{r.stderr[-2000:]}"
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)


def test_zephyr_suite_checks_pass_natively(suite_objects):
    """The ztest suite's checks against the NumPy reference, built for the host with
    the suite's Kconfig limits (arena, tensors, nodes): the model must fit them and
    train onto the reference; corrupt blobs must be refused."""
    out, objects = suite_objects
    r = _link_and_run(out, objects, [], "suite")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == ["train: ok", "corrupt: ok"]


@pytest.mark.parametrize("family", sorted(_op_families()))
def test_zephyr_op_families_can_be_left_out(suite_objects, family):
    """Each op family zephyr/Kconfig can turn off links without the rest of the runtime
    missing it (a left-out op is refused at load, through the weak op table), and the
    MLP, which uses none of them, still trains onto the reference."""
    out, objects = suite_objects
    leave_out = _op_families()[family]
    assert set(leave_out) <= set(objects), f"{family}: {set(leave_out) - set(objects)} do not exist"
    r = _link_and_run(out, objects, leave_out, f"suite-no-{family.lower()}")
    assert r.returncode == 0 and r.stdout.startswith("train: ok"), r.stdout + r.stderr


def zephyr_base() -> Path:
    base = os.environ.get("ZEPHYR_BASE")
    path = Path(base) if base else REPO_ROOT / "third_party" / "zephyr"
    if not (path / "cmake" / "modules" / "zephyr_default.cmake").is_file():
        pytest.skip(f"Zephyr not found in {path}: run `west update` (west.yml pins zephyr v3.7.0) or set "
                    "ZEPHYR_BASE=<a Zephyr checkout>, with cmake, ninja, dtc and Zephyr's Python requirements")
    return path


def test_zephyr_ztest_suite_under_twister(tmp_path):
    """The suite on QEMU through twister (qemu_cortex_m3: lm3s6965, 64 KiB of RAM)."""
    base = zephyr_base()
    env = {**os.environ, "ZEPHYR_BASE": str(base)}
    env.setdefault("ZEPHYR_TOOLCHAIN_VARIANT", "gnuarmemb")
    env.setdefault("GNUARMEMB_TOOLCHAIN_PATH", "/usr")
    r = subprocess.run([sys.executable, str(base / "scripts" / "twister"), "-T", str(ZEPHYR_SUITE),
                        "-p", "qemu_cortex_m3", "--outdir", str(tmp_path / "twister"), "--inline-logs",
                        f"-x=ZEPHYR_EXTRA_MODULES={REPO_ROOT}"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]


def test_zephyr_app_trains_like_bare_metal():
    """The Zephyr application (mps2/an385 image on QEMU's mps2-an386 machine, reporting
    the EdgeProp board mps2-an386) under the bare-metal golden training test."""
    base = zephyr_base()
    out = BUILD_DIR / "mps2-an386-zephyr"
    r = subprocess.run(["make", "--no-print-directory", "-C", str(REPO_ROOT / "firmware" / "port" / "zephyr"),
                        "BOARD=mps2-an386", f"BUILD={out}", f"ZEPHYR_BASE={base}"], capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    board = load_board("mps2-an386")
    with booted(board, out / "edgeprop.elf") as (dev, _):
        golden.test_n_sgd_steps_match_the_numpy_reference(dev)
