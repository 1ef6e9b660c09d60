"""The firmware side of the L3 tier (docs/blob.md "L3", firmware/runtime/ops/ep_l3.c).

Blobs with L3 tensors are made by hand here, independent of the compiler's own L3
pass: the tiny MLP of test_blob_validation with some of its weights moved to L3
(`spill`: each weight's nodes use an arena copy, one L3_LOAD per weight at the start
of the schedule fills it, one L3_STORE per weight at the end writes it back). Then:

- ep_model_parse enforces the rules of ep_runtime.h: an L3 tensor is an unbatched
  PARAM inside the device's L3 memory (else NO_FIT), only L3_LOAD/L3_STORE name one,
  and their tensors agree in dtype, elements and bytes (each corruption in turn, the
  crc fixed up, as test_blob_validation does);
- through ctypes (native_lib.L3Memory: an ep_l3_t over a NumPy array), install writes
  the initial values (or zeros) into L3, the copies are exact, and training with
  weights in L3 gives the same bits as training with everything in the arena;
- on the native build (with and without sanitizers) and the emulated gap9, the whole
  app: HELLO reports L3, the blob installs, trains bit for bit as the arena-only one,
  READ_WEIGHTS and checkpoints reach the weights in L3;
- the board descriptions render the L3 settings, and the GAP9 hardware port's L3
  (firmware/port/pmsis/l3.c) compiles against the PMSIS API with and without the
  SDK's HyperRAM driver headers.
"""

from __future__ import annotations

import copy
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import native_lib as nl
from conftest import await_boot_hello, start_kind
from host import ids
from host.blob import build_blob
from host.boards import REPO_ROOT, load_board, render_board_mk, render_linker_script
from host.device import Batch, Device
from host.graph import Node, Tensor, align
from host.ids import OpCode, OpFn, Status, TensorFlag
from host.link import Link
from test_blob_validation import BATCH, BLOB, HDR, NODE, PROG, TENSOR, fix_crc

L3 = TensorFlag.L3
SPILLED = ("fc1.weight", "fc2.weight")
BAD, NO_FIT = Status.BAD_BLOB, Status.NO_FIT
L3_MEM = 1 << 16  # the L3 memory the ctypes tests give the runtime


def spill(prog, names):
    """prog (a compiled Program) with the parameters `names` in L3, as (blob, graph, plan):
    per name an arena copy `<name>@l2` (the parameter's flags, no initial value) that
    every node uses instead, an L3_LOAD at the front of the schedule (EVAL and TRAIN
    start there: train_begin is 0) and an L3_STORE at the end (the update section).
    L3 tensors lie one after another from 0, the copies after the arena's old end."""
    g = copy.deepcopy(prog.graph)
    assert g.train_begin == 0 and g.update_every == 1
    offsets, sizes = list(prog.plan.offsets), list(prog.plan.sizes)
    arena = align(prog.plan.arena_bytes)
    l3_at = 0
    loads, stores = [], []
    for name in names:
        p = g.index(name)
        home = g.tensors[p]
        w = g.add_tensor(Tensor(f"{name}@l2", home.dims, home.dtype, flags=home.flags))
        for node in g.nodes:
            node.inputs = [w if i == p else i for i in node.inputs]
            node.outputs = [w if i == p else i for i in node.outputs]
        home.flags |= L3
        offsets[p], l3_at = l3_at, align(l3_at + sizes[p])
        offsets.append(arena)
        sizes.append(sizes[p])
        arena = align(arena + sizes[p])
        loads.append(Node(OpCode.L3_LOAD, OpFn.FW, [p], [w]))
        stores.append(Node(OpCode.L3_STORE, OpFn.FW, [w], [p]))
    k = len(names)
    update_begin = g.update_begin if g.update_begin is not None else len(g.nodes)
    g.nodes = loads + g.nodes + stores
    g.n_eval_nodes += k
    g.train_loss_end += k
    g.update_begin = update_begin + k
    plan = SimpleNamespace(offsets=offsets, sizes=sizes, arena_bytes=arena)
    return build_blob(SimpleNamespace(graph=g, plan=plan)), g, plan


L3_BLOB, G3, PLAN3 = spill(PROG, SPILLED)
T3 = G3.index
L3_SPAN = sum(PLAN3.sizes[T3(n)] for n in SPILLED)


def _h(name: str) -> int:
    off, fmt = HDR[name]
    return struct.unpack_from(fmt, L3_BLOB, off)[0]


def t(index: int, field: str, value):
    off, fmt = TENSOR[field]
    return (_h("tensors_off") + ids.BLOB_TENSOR_BYTES * index + off, fmt, value)


def n(index: int, field: str, value):
    off, fmt = NODE[field]
    return (_h("nodes_off") + ids.BLOB_NODE_BYTES * index + off, fmt, value)


def patched(*edits) -> bytes:
    b = bytearray(L3_BLOB)
    for off, fmt, value in edits:
        struct.pack_into(fmt, b, off, *(value if isinstance(value, tuple) else (value,)))
    return fix_crc(b)


def node_of(op: OpCode, tensor: str) -> int:
    return next(i for i, nd in enumerate(G3.nodes) if nd.op == op and T3(tensor) in nd.inputs + nd.outputs)


LOAD1, LOAD2 = node_of(OpCode.L3_LOAD, "fc1.weight"), node_of(OpCode.L3_LOAD, "fc2.weight")
STORE1 = node_of(OpCode.L3_STORE, "fc1.weight")
L_FW1 = next(i for i, nd in enumerate(G3.nodes) if nd.op == OpCode.LINEAR and nd.fn == OpFn.FW)
W1, W1_L2, W2_L2 = T3("fc1.weight"), T3("fc1.weight@l2"), T3("fc2.weight@l2")
PARAM_TRAINABLE = int(TensorFlag.PARAM | TensorFlag.TRAINABLE)


def parse(blob: bytes, l3_bytes: int | None = 1 << 20):
    return nl.parse(blob, l3=nl.L3Memory(l3_bytes) if l3_bytes is not None else None)


def test_the_l3_blob_parses_and_spans_its_l3_tensors():
    p = parse(L3_BLOB, L3_MEM)
    assert (p.status, p.why) == (Status.OK, "")
    assert p.model.l3_bytes == L3_SPAN and p.model.arena_bytes == PLAN3.arena_bytes
    for name in SPILLED:
        i = T3(name)
        assert p.model.tensors[i].flags & L3 and p.model.tensors[i].offset == PLAN3.offsets[i]
    assert p.model.l3  # the L3 memory given to parse is kept
    assert nl.parse(BLOB).model.l3_bytes == 0  # none without L3 tensors


@pytest.mark.parametrize("l3_bytes", [None, 0, L3_SPAN - 8])
def test_l3_tensors_beyond_the_devices_l3_do_not_fit(l3_bytes):
    p = parse(L3_BLOB, l3_bytes)
    assert p.status == NO_FIT and "beyond the device's L3 memory" in p.why
    assert parse(L3_BLOB, L3_SPAN).status == Status.OK


# (id, edits, expected status, a word of the reason that must appear)
CASES = [
    ("l3-activation", [t(T3("fc1.out"), "flags", int(TensorFlag.BATCHED | L3))], BAD, "not a PARAM"),
    ("l3-gradient", [t(T3("fc1.weight.grad"), "flags", int(TensorFlag.GRAD | L3))], BAD, "not a PARAM"),
    ("l3-param-batched", [t(W1, "flags", int(TensorFlag.PARAM | TensorFlag.BATCHED | L3))], BAD, "BATCHED"),
    ("l3-misaligned", [t(W1, "offset", 4)], BAD, "misaligned"),
    ("l3-offset-beyond", [t(W1, "offset", (1 << 20) - 8)], NO_FIT, "L3 memory"),
    ("l3-offset-wraps", [t(W1, "offset", 0xFFFFFFF8)], NO_FIT, "L3 memory"),
    ("l3-init-outside", [t(W1, "init", _h("data_bytes") - 8)], BAD, "init"),
    ("l3-stats", [t(G3.stats_tensor, "flags", int(TensorFlag.PARAM | L3))], BAD, "stats_tensor"),
    ("linear-names-l3", [n(L_FW1, "in1", W1)], BAD, "only L3_LOAD/L3_STORE"),
    ("load-bytes", [n(LOAD1, "out0", W2_L2)], BAD, "differ"),
    ("load-dtype", [t(W1_L2, "dtype", int(ids.DType.I32))], BAD, "differ"),
    ("load-from-arena", [n(LOAD1, "in0", W2_L2)], BAD, "one L3 tensor"),
    ("load-into-l3", [n(LOAD1, "out0", T3("fc2.weight"))], BAD, "one L3 tensor"),
    ("store-from-l3", [n(STORE1, "in0", W1), n(STORE1, "out0", W1_L2)], BAD, "one L3 tensor"),
    ("load-arity", [n(LOAD1, "n_in", 2), n(LOAD1, "in1", W2_L2)], BAD, "needs (src) -> (dst)"),
    ("load-iattr", [n(LOAD1, "iattr0", 1)], BAD, "no attributes"),
    ("load-fattr", [n(LOAD1, "fattr5", 0.5)], BAD, "no attributes"),
    ("load-bw", [n(LOAD1, "fn", int(OpFn.BW_INPUT))], BAD, "fn not implemented"),
    ("unknown-flag", [t(W1, "flags", PARAM_TRAINABLE | L3 | 0x80)], BAD, "flag bits"),
]


@pytest.mark.parametrize("edits,status,word", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_l3_rules_refuse_a_corrupted_blob(edits, status, word):
    p = parse(patched(*edits))
    assert p.status == status, p.why
    assert word.lower() in p.why.lower(), p.why


def test_a_plain_op_naming_an_l3_tensor_is_refused():
    """The tiny MLP as compiled, its fc1 weight flagged L3 in place: LINEAR would read it."""
    b = bytearray(BLOB)
    g = PROG.graph
    struct.pack_into("B", b, struct.unpack_from("<I", BLOB, 36)[0] + ids.BLOB_TENSOR_BYTES * g.index("fc1.weight") + 1,
                     PARAM_TRAINABLE | L3)
    p = parse(fix_crc(b))
    assert p.status == BAD and "only L3_LOAD/L3_STORE may name an L3 tensor" in p.why


def _runtime(blob: bytes, l3_bytes: int = 0) -> nl.Runtime:
    return nl.Runtime(blob, arena_bytes=1 << 16, l3_bytes=l3_bytes)


def _l3_bytes(rt: nl.Runtime, name: str) -> bytes:
    i = T3(name)
    return rt.l3.mem[PLAN3.offsets[i]:PLAN3.offsets[i] + PLAN3.sizes[i]].tobytes()


def _arena_bytes(rt: nl.Runtime, prog_offsets, sizes, i: int) -> bytes:
    return rt.arena[prog_offsets[i]:prog_offsets[i] + sizes[i]].tobytes()


def test_install_writes_the_initial_values_into_l3():
    rt = _runtime(L3_BLOB, L3_MEM)
    for name in SPILLED:
        init = np.ascontiguousarray(G3.tensors[T3(name)].init, "<f4").tobytes()
        assert _l3_bytes(rt, name)[:len(init)] == init
    assert not rt.l3.mem[L3_SPAN:].any()  # nothing beyond the model's span
    assert sorted(rt.l3.log) == sorted(("write", PLAN3.offsets[T3(x)], PLAN3.sizes[T3(x)]) for x in SPILLED)
    assert rt.l3.bad == []


def test_an_l3_tensor_without_initial_values_is_zeroed():
    blob = patched(t(W1, "init", ids.NO_INIT))
    rt = _runtime(blob, L3_MEM)
    rt.l3.mem[:] = 0xAB
    nl.load().ep_model_init_arena(nl.C.byref(rt.model), rt._blob, rt.arena.ctypes.data_as(nl.U8P))
    assert _l3_bytes(rt, "fc1.weight") == bytes(PLAN3.sizes[W1])
    assert _l3_bytes(rt, "fc2.weight") != bytes(PLAN3.sizes[T3("fc2.weight")])
    assert rt.l3.bad == []


def test_load_and_store_copy_exactly_and_training_matches_the_arena_bit_for_bit():
    rng = np.random.default_rng(21)
    plain, spilled = _runtime(BLOB), _runtime(L3_BLOB, L3_MEM)
    x = rng.standard_normal((BATCH, 7)).astype("<f4")
    y = rng.integers(0, 3, BATCH).astype(np.uint8)
    spilled.l3.log.clear()
    st, why, r = spilled.run(y, x.tobytes())  # EVAL: the loads only
    assert st == Status.OK, why
    assert spilled.l3.log == [("read", PLAN3.offsets[T3(s)], PLAN3.sizes[T3(s)]) for s in SPILLED]
    for s in SPILLED:
        assert _arena_bytes(spilled, PLAN3.offsets, PLAN3.sizes, T3(f"{s}@l2")) == _l3_bytes(spilled, s)
    for step in range(4):
        x = rng.standard_normal((BATCH, 7)).astype("<f4")
        y = rng.integers(0, 3, BATCH).astype(np.uint8)
        a = plain.run(y, x.tobytes(), train=True)
        spilled.l3.log.clear()
        b = spilled.run(y, x.tobytes(), train=True)
        assert a[0] == b[0] == Status.OK, (a[1], b[1])
        assert (a[2].loss, a[2].correct) == (b[2].loss, b[2].correct), step
        kinds = [k for k, _, _ in spilled.l3.log]
        assert kinds == ["read"] * len(SPILLED) + ["write"] * len(SPILLED)
        for s in SPILLED:  # the store wrote back exactly the trained arena copy
            assert _l3_bytes(spilled, s) == _arena_bytes(spilled, PLAN3.offsets, PLAN3.sizes, T3(f"{s}@l2"))
    p = PROG.plan
    for s in SPILLED:
        i = PROG.graph.index(s)
        assert _l3_bytes(spilled, s) == _arena_bytes(plain, p.offsets, p.sizes, i), s
        assert _l3_bytes(spilled, s) != np.ascontiguousarray(PROG.graph.tensors[i].init, "<f4").tobytes()
    for name in ("fc1.bias", "fc2.bias"):
        i = PROG.graph.index(name)
        assert plain.tensor(i).tobytes() == spilled.tensor(T3(name)).tobytes()
    assert spilled.l3.bad == []


# -- the whole app, on devices that have L3 -----------------------------------------------

DEVICES = ["native", "native-asan", "gap9"]


def _batches(count: int, seed: int = 5):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((BATCH, 7)).astype(np.float32), rng.integers(0, 3, BATCH)) for _ in range(count)]


def _weights(dev: Device, g) -> dict[str, bytes]:
    out = {}
    for i, tensor in enumerate(g.tensors):
        if tensor.is_param and "@" not in tensor.name:
            out[tensor.name] = dev.read_tensor(i, tensor.elems * 4)
    return out


@pytest.mark.parametrize("kind", DEVICES)
def test_the_app_trains_reads_and_checkpoints_weights_in_l3(kind):
    board = load_board("native" if kind.startswith("native") else kind)
    batches = _batches(5)
    with start_kind(kind) as running, Link.open(running.url, timeout=60.0) as lk:
        await_boot_hello(lk)
        dev = Device(lk)
        hello = dev.hello()
        assert hello.l3_bytes == board.l3_bytes > 0
        dev.load(BLOB)
        plain_losses = [dev.train(Batch.from_arrays(x, y)).loss for x, y in batches[:3]]
        plain = _weights(dev, PROG.graph)
        dev.load(L3_BLOB)
        losses = [dev.train(Batch.from_arrays(x, y)).loss for x, y in batches[:3]]
        assert losses == plain_losses
        assert _weights(dev, G3) == plain  # READ_WEIGHTS of fc1/fc2.weight reads L3
        saved = dev.checkpoint_save()
        assert saved.payload_bytes == sum(PLAN3.sizes[i] for i, x in enumerate(G3.tensors) if x.is_param)
        for x, y in batches[3:]:
            dev.train(Batch.from_arrays(x, y))
        assert _weights(dev, G3)["fc1.weight"] != plain["fc1.weight"]
        assert dev.checkpoint_restore().steps == saved.steps == 3
        assert _weights(dev, G3) == plain  # the L3 weights came back from storage


# -- boards and ports ------------------------------------------------------------------------

def test_boards_render_their_l3_settings():
    gap9, native, mps2 = load_board("gap9"), load_board("native"), load_board("mps2-an386")
    assert gap9.l3_bytes == 6 << 20 and native.l3_bytes == 4 << 20 and mps2.l3_bytes == 0
    mk = render_board_mk(gap9)
    assert f"-DEP_L3_BYTES={6 << 20}" in mk and "-DEP_L3_REGION=1" in mk
    mk = render_board_mk(native)
    assert f"-DEP_L3_BYTES={4 << 20}" in mk and "EP_L3_REGION" not in mk
    assert "-DEP_L3_BYTES=0" in render_board_mk(mps2)
    assert gap9.to_json()["l3_bytes"] == 6 << 20 and mps2.to_json()["l3_bytes"] == 0
    l3 = gap9.memory["l3"]
    ld = render_linker_script(gap9)
    assert f"L3 (rw) : ORIGIN = 0x{l3['origin']:08X}, LENGTH = 0x{l3['length']:08X}" in ld
    assert "exceed the L3 budget of board.toml" in ld
    freertos = render_linker_script(gap9, REPO_ROOT / "firmware" / "port" / "freertos" / "riscv_virt" / "link.ld.in")
    assert ".l3 (NOLOAD)" in freertos and "exceed the L3 budget" in freertos
    # the tensors and the staging buffer share L3; on QEMU virt it is DRAM past L1, inside
    # the machine's default 128 MiB (0x80000000..0x88000000)
    assert gap9.l3_bytes + gap9.staging_bytes <= l3["length"]
    assert l3["origin"] >= gap9.memory["l1"]["origin"] + gap9.memory["l1"]["length"]
    assert l3["origin"] + l3["length"] <= 0x88000000


# Stand-ins for the GAP SDK's BSP RAM headers (declarations as the SDK's bsp/ram.h,
# bsp/ram/aps25xxxn.h and bsp/ram/hyperram.h give them), so both RAM paths of
# pmsis/l3.c are compiled too.
BSP_RAM_H = """#ifndef __BSP_RAM_H__
#define __BSP_RAM_H__
#include "pmsis.h"
struct pi_ram_conf { void *api; };
int32_t pi_ram_open(struct pi_device *device);
int pi_ram_alloc(struct pi_device *device, uint32_t *addr, uint32_t size);
void pi_ram_read(struct pi_device *device, uint32_t pi_ram_addr, void *data, uint32_t size);
void pi_ram_write(struct pi_device *device, uint32_t pi_ram_addr, void *data, uint32_t size);
#endif
"""
BSP_HYPERRAM_H = """#ifndef __BSP__RAM__HYPERRAM_H__
#define __BSP__RAM__HYPERRAM_H__
#include "bsp/ram.h"
struct pi_hyperram_conf { struct pi_ram_conf ram; int hyper_itf; int hyper_cs; char skip_pads_config;
    int xip_en; int ram_start; int ram_size; uint32_t baudrate; int reserve_addr_0; };
void pi_hyperram_conf_init(struct pi_hyperram_conf *conf);
#endif
"""
BSP_APS25XXXN_H = """#ifndef __BSP__RAM__APS25XXXN_H__
#define __BSP__RAM__APS25XXXN_H__
#include "bsp/ram.h"
struct pi_aps25xxxn_conf { struct pi_ram_conf ram; int spi_itf; int spi_cs; char skip_pads_config;
    int xip_en; int ram_start; int ram_size; uint32_t baudrate; int reserve_addr_0; };
void pi_aps25xxxn_conf_init(struct pi_aps25xxxn_conf *conf);
#endif
"""
BSP_RAM_HEADERS = {"hyperram": BSP_HYPERRAM_H, "aps25xxxn": BSP_APS25XXXN_H}


@pytest.mark.parametrize("bsp", [None, "hyperram", "aps25xxxn"], ids=["api-only", "hyperram", "aps25xxxn"])
def test_the_pmsis_l3_compiles_against_the_pmsis_api(tmp_path, bsp):
    from test_pmsis_port import API, DIAG, SHIM, _board_flags

    if not (API / "pmsis" / "drivers" / "hyperbus.h").is_file():
        pytest.skip(f"PMSIS API headers not found in {API} (see tests/test_pmsis_port.py)")
    cc, flags = _board_flags()
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} not installed")
    if bsp:
        (tmp_path / "bsp" / "ram").mkdir(parents=True)
        (tmp_path / "bsp" / "ram.h").write_text(BSP_RAM_H)
        (tmp_path / "bsp" / "ram" / f"{bsp}.h").write_text(BSP_RAM_HEADERS[bsp])
    fw = REPO_ROOT / "firmware"
    src = fw / "port" / "pmsis" / "l3.c"
    cmd = [cc, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-function", "-fsyntax-only", *flags,
           f"-DEP_L3_BYTES={load_board('gap9').l3_bytes}", f"-I{tmp_path}", f"-I{SHIM}", "-isystem", str(API),
           f"-I{fw / 'port'}", f"-I{fw / 'runtime'}", str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # as in test_pmsis_port: none in our code (nor the stand-ins); the API headers only
    # say that the SDK defines their inline functions
    for m in DIAG.finditer(proc.stderr):
        assert Path(m.group("path")).resolve().is_relative_to(API.resolve()), m.group(0)
        assert "used but never defined" in m.group("msg"), m.group(0)
    # which branch was compiled: the preprocessed source calls the driver only with the BSP
    pre = subprocess.run([c for c in cmd if c != "-fsyntax-only"] + ["-E"], capture_output=True, text=True)
    assert pre.returncode == 0, pre.stderr
    assert ("pi_ram_read(&ram" in pre.stdout) == bool(bsp)
    if bsp:
        assert f"pi_{bsp}_conf_init(&ram_conf)" in pre.stdout


@pytest.mark.skipif(os.environ.get("EP_NATIVE_VARIANT") == "sanitize", reason="already sanitized")
def test_the_ctypes_cases_under_sanitizers():
    """The parse and copy cases above again, on the runtime built with ASan + UBSan (as
    test_blob_validation.test_under_sanitizers does for the rest of the runtime)."""
    tests = Path(__file__).parent
    cmd = [sys.executable, "-m", "pytest", "-q", "--capture=sys", "-p", "no:cacheprovider",
           "-k", "not sanitizers and not the_app and not pmsis and not boards", str(tests / "test_l3_firmware.py")]
    nl.build("sanitize")
    proc = subprocess.run(cmd, env=nl.sanitized_env(), capture_output=True, text=True, cwd=tests.parent, timeout=600)
    assert proc.returncode == 0, proc.stderr[:6000] + proc.stdout[-3000:]
