"""ep_model_parse refuses every malformed blob, and ep_model_run runs the good ones.

A blob built by the host (host.blob.build_blob) for a small MLP must parse; then
each field of docs/blob.md is corrupted in turn — with the crc32 recomputed, so
the check under test is the field's own and not the crc — and the status and the
reason string (which names the check that fired) are compared. Random corruptions
then show parse never crashes and never accepts a blob that breaks the invariants
of ep_runtime.h. `test_under_sanitizers` reruns this module and the kernel tests
against the library built with -fsanitize=address,undefined, so an out-of-bounds
read in parse or a kernel fails the suite instead of passing silently.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import native_lib as nl
from host import ids
from host.blob import CRC_START, build_blob, parse_blob
from host.compiler import TrainConfig, compile_model
from host.executor import BlobExecutor
from host.ids import Status
from host.reference import ReferenceModel
from host.zoo import init_params, parse_model

SPEC = parse_model({
    "name": "tiny", "input": [7], "classes": 3, "loss": "softmax_cross_entropy",
    "layers": [{"type": "linear", "name": "fc1", "out": 5}, {"type": "relu"},
               {"type": "linear", "name": "fc2", "out": 3}]})
BATCH, LR, WD = 4, 0.1, 0.01
PROG = compile_model(SPEC, init_params(SPEC, seed=0), TrainConfig(batch=BATCH, lr=LR, weight_decay=WD))
BLOB = build_blob(PROG)
G = PROG.graph
T = G.index  # tensor index by name

HDR = {  # header field → (offset, struct format), docs/blob.md
    "magic": (0, "4s"), "version": (4, "<H"), "header_bytes": (6, "<H"), "total_bytes": (8, "<I"),
    "crc32": (12, "<I"), "arena_bytes": (16, "<I"), "n_tensors": (20, "<H"), "n_nodes": (22, "<H"),
    "n_eval_nodes": (24, "<H"), "max_batch": (26, "<H"), "input_tensor": (28, "<H"),
    "label_tensor": (30, "<H"), "stats_tensor": (32, "<H"), "num_classes": (34, "<H"),
    "tensors_off": (36, "<I"), "nodes_off": (40, "<I"), "data_off": (44, "<I"),
    "data_bytes": (48, "<I"), "train_begin": (52, "<H"), "train_loss_end": (54, "<H"),
    "update_begin": (56, "<H"), "update_every": (58, "<H"), "counter_tensor": (60, "<H"),
    "reserved": (62, "B"),
}
TENSOR = {"dtype": (0, "B"), "flags": (1, "B"), "rank": (2, "B"), "reserved": (3, "B"),
          "dim0": (4, "<H"), "dim1": (6, "<H"), "dim2": (8, "<H"), "dims": (4, "<4H"),
          "offset": (12, "<I"), "bytes": (16, "<I"), "init": (20, "<I")}
_N_OUT = 4 + 2 * ids.MAX_NODE_INPUTS
_N_IATTR = _N_OUT + 2 * ids.MAX_NODE_OUTPUTS
_N_FATTR = _N_IATTR + 2 * ids.NODE_IATTRS
assert _N_FATTR + 4 * ids.NODE_FATTRS == ids.BLOB_NODE_BYTES
NODE = {"op": (0, "B"), "fn": (1, "B"), "n_in": (2, "B"), "n_out": (3, "B"),
        **{f"in{i}": (4 + 2 * i, "<H") for i in range(ids.MAX_NODE_INPUTS)},
        **{f"out{i}": (_N_OUT + 2 * i, "<H") for i in range(ids.MAX_NODE_OUTPUTS)},
        **{f"iattr{i}": (_N_IATTR + 2 * i, "<H") for i in range(ids.NODE_IATTRS)},
        **{f"fattr{i}": (_N_FATTR + 4 * i, "<f") for i in range(ids.NODE_FATTRS)}}


def header(name: str) -> int:
    off, fmt = HDR[name]
    return struct.unpack_from(fmt, BLOB, off)[0]


def fix_crc(b: bytearray) -> bytes:
    struct.pack_into("<I", b, 12, zlib.crc32(bytes(b[CRC_START:])))
    return bytes(b)


def patched(*edits: tuple[int, str, object], crc: bool = True) -> bytes:
    """BLOB with struct.pack_into(fmt, off, value) applied per edit; crc recomputed."""
    b = bytearray(BLOB)
    for off, fmt, value in edits:
        struct.pack_into(fmt, b, off, *(value if isinstance(value, tuple) else (value,)))
    return fix_crc(b) if crc else bytes(b)


def h(name: str, value):
    off, fmt = HDR[name]
    return (off, fmt, value)


def t(index: int, field: str, value):
    off, fmt = TENSOR[field]
    return (header("tensors_off") + 24 * index + off, fmt, value)


def n(index: int, field: str, value):
    off, fmt = NODE[field]
    return (header("nodes_off") + ids.BLOB_NODE_BYTES * index + off, fmt, value)


def node_of(op: str, fn: str, layer: str = "") -> int:
    for i, nd in enumerate(G.nodes):
        if nd.op.name == op and nd.fn.name == fn and layer in ("", nd.layer):
            return i
    raise KeyError((op, fn, layer))


def tensor_field(index: int, field: str):
    off, fmt = TENSOR[field]
    return struct.unpack_from(fmt, BLOB, header("tensors_off") + 24 * index + off)[0]


L_FW1 = node_of("LINEAR", "FW", "fc1")
RELU_FW = node_of("RELU", "FW")
SM_FW = node_of("SOFTMAX_CE", "FW")
BWP2 = node_of("LINEAR", "BW_PARAM", "fc2")
SGD_W2 = next(i for i, nd in enumerate(G.nodes) if nd.op.name == "SGD" and nd.outputs == [T("fc2.weight")])
NAN, INF = float("nan"), float("inf")
BAD = Status.BAD_BLOB

# (id, edits, expected status, a word of the reason that must appear)
CASES = [
    # header
    ("magic", [h("magic", b"EPMX")], BAD, "magic"),
    ("version", [h("version", ids.BLOB_VERSION - 1)], BAD, "version"),
    ("header_bytes", [h("header_bytes", 32)], BAD, "header_bytes"),
    ("total_bytes-long", [h("total_bytes", len(BLOB) + 8)], BAD, "total_bytes"),
    ("total_bytes-short", [h("total_bytes", len(BLOB) - 8)], BAD, "total_bytes"),
    ("arena_bytes-small", [h("arena_bytes", header("arena_bytes") - 8)], BAD, "outside the arena"),
    ("n_tensors-0", [h("n_tensors", 0)], BAD, "n_tensors"),
    ("n_tensors-above-limit", [h("n_tensors", ids.MAX_TENSORS + 1)], BAD, "n_tensors"),
    ("n_tensors-too-many-for-blob", [h("n_tensors", ids.MAX_TENSORS)], BAD, "tensors_off"),
    ("n_nodes-0", [h("n_nodes", 0)], BAD, "n_nodes"),
    ("n_nodes-above-limit", [h("n_nodes", ids.MAX_NODES + 1)], BAD, "n_nodes"),
    ("n_eval_nodes", [h("n_eval_nodes", len(G.nodes) + 1)], BAD, "n_eval_nodes"),
    ("train_begin-after-loss-end", [h("train_begin", len(G.nodes)), h("train_loss_end", 1)], BAD, "train_begin"),
    ("train_loss_end-past-nodes", [h("train_loss_end", len(G.nodes) + 1)], BAD, "train_loss_end"),
    ("update_begin-before-loss-end", [h("update_begin", 0)], BAD, "update_begin"),
    ("update_begin-past-nodes", [h("update_begin", len(G.nodes) + 1)], BAD, "update_begin"),
    ("update_every-0", [h("update_every", 0)], BAD, "update_every"),
    ("update_every-without-counter", [h("update_every", 4)], BAD, "update_every"),
    ("counter-without-accumulation", [h("counter_tensor", T("fc1.bias"))], BAD, "update_every"),
    ("counter-not-i32", [h("update_every", 4), h("counter_tensor", T("fc1.bias"))], BAD, "counter_tensor"),
    ("max_batch-0", [h("max_batch", 0)], BAD, "max_batch"),
    ("max_batch-differs", [h("max_batch", BATCH + 1)], BAD, "bytes"),
    ("input_tensor-range", [h("input_tensor", len(G.tensors))], BAD, "out of range"),
    ("input_tensor-not-input", [h("input_tensor", T("fc1.out"))], BAD, "INPUT"),
    ("input_tensor-not-f32", [h("input_tensor", T("labels"))], BAD, "input_tensor"),
    ("label_tensor-range", [h("label_tensor", 0xFFFF)], BAD, "out of range"),
    ("label_tensor-not-i32", [h("label_tensor", T("input"))], BAD, "label_tensor"),
    ("stats_tensor-range", [h("stats_tensor", 500)], BAD, "out of range"),
    ("stats_tensor-size", [h("stats_tensor", T("fc1.bias"))], BAD, "stats_tensor"),
    ("num_classes-1", [h("num_classes", 1)], BAD, "num_classes"),
    ("num_classes-differs", [h("num_classes", 4)], BAD, "num_classes"),
    ("tensors_off-misaligned", [h("tensors_off", header("tensors_off") + 4)], BAD, "tensors_off"),
    ("tensors_off-in-header", [h("tensors_off", 8)], BAD, "tensors_off"),
    ("tensors_off-past-end", [h("tensors_off", len(BLOB))], BAD, "tensors_off"),
    ("tensors_off-wraps", [h("tensors_off", 0xFFFFFFF8)], BAD, "tensors_off"),
    ("nodes_off-misaligned", [h("nodes_off", header("nodes_off") + 4)], BAD, "nodes_off"),
    ("nodes_off-wraps", [h("nodes_off", 0xFFFFFFF8)], BAD, "nodes_off"),
    ("data_off-misaligned", [h("data_off", header("data_off") + 4)], BAD, "data_off"),
    ("data_off-wraps", [h("data_off", 0xFFFFFFF8)], BAD, "data_off"),
    ("data_bytes", [h("data_bytes", header("data_bytes") + 8)], BAD, "data"),
    ("data_bytes-wraps", [h("data_bytes", 0xFFFFFFFF)], BAD, "data"),
    ("reserved", [h("reserved", 1)], BAD, "reserved"),
    # tensor table
    ("t.dtype-0", [t(T("fc1.weight"), "dtype", 0)], BAD, "dtype"),
    ("t.dtype-5", [t(T("fc1.weight"), "dtype", 5)], BAD, "dtype"),
    ("t.dtype-size", [t(T("fc1.weight"), "dtype", ids.DType.U8)], BAD, "bytes"),
    ("t.flags-unknown", [t(T("fc1.out"), "flags", 0x81)], BAD, "flag bits"),
    ("t.flags-trainable-not-param", [t(T("fc1.weight"), "flags", 4)], BAD, "TRAINABLE"),
    ("t.flags-param-batched", [t(T("fc1.bias"), "flags", 7)], BAD, "BATCHED"),
    ("t.flags-second-input", [t(T("fc1.out"), "flags", 9)], BAD, "INPUT"),
    ("t.flags-second-label", [t(T("fc1.out"), "flags", 17)], BAD, "LABEL"),
    ("t.rank-0", [t(T("fc1.weight"), "rank", 0)], BAD, "rank"),
    ("t.rank-5", [t(T("fc1.weight"), "rank", 5)], BAD, "rank"),
    ("t.reserved", [t(T("fc1.weight"), "reserved", 1)], BAD, "reserved"),
    ("t.dim-0", [t(T("fc1.weight"), "dim0", 0)], BAD, "dims"),
    ("t.dim-beyond-rank", [t(T("fc1.bias"), "dim1", 2)], BAD, "dims"),
    ("t.dims-huge", [t(T("fc1.weight"), "rank", 4), t(T("fc1.weight"), "dims", (0xFFFF,) * 4)],
     BAD, "too many"),
    ("t.dims-size", [t(T("fc1.weight"), "dim0", 6)], BAD, "bytes"),
    ("t.offset-misaligned", [t(T("fc1.weight"), "offset", 4)], BAD, "offset"),
    ("t.offset-outside", [t(T("fc1.weight"), "offset", header("arena_bytes") - 8)], BAD, "outside the arena"),
    ("t.offset-wraps", [t(T("fc1.weight"), "offset", 0xFFFFFFF8)], BAD, "outside the arena"),
    ("t.bytes", [t(T("fc1.weight"), "bytes", tensor_field(T("fc1.weight"), "bytes") + 8)], BAD, "bytes"),
    ("t.init-outside", [t(T("fc1.weight"), "init", header("data_bytes") - 8)], BAD, "init"),
    ("t.init-wraps", [t(T("fc1.weight"), "init", 0xFFFFFFF0)], BAD, "init"),
    ("t.overlaps-labels", [t(T("labels"), "offset", tensor_field(T("fc1.out"), "offset"))], BAD, "label"),
    # node table
    ("n.op-0", [n(0, "op", 0)], BAD, "unknown op"),
    ("n.op-past-table", [n(0, "op", max(ids.OpCode) + 1)], BAD, "unknown op"),
    ("n.op-255", [n(0, "op", 255)], BAD, "unknown op"),
    ("n.fn-3", [n(0, "fn", 3)], BAD, "fn"),
    ("n.fn-relu-bw_param", [n(RELU_FW, "fn", ids.OpFn.BW_PARAM)], BAD, "fn"),
    ("n.fn-sgd-bw_input", [n(SGD_W2, "fn", ids.OpFn.BW_INPUT)], BAD, "fn"),
    ("n.n_in-too-many", [n(0, "n_in", ids.MAX_NODE_INPUTS + 1)], BAD, "n_in"),
    ("n.n_out-too-many", [n(0, "n_out", ids.MAX_NODE_OUTPUTS + 1)], BAD, "n_out"),
    ("n.in-range", [n(0, "in0", len(G.tensors))], BAD, "input index"),
    ("n.in-unused-slot", [n(0, f"in{ids.MAX_NODE_INPUTS - 1}", 0)], BAD, "input index"),
    ("n.out-range", [n(0, "out0", 0xFFFF)], BAD, "output index"),
    ("n.out-unused-slot", [n(0, f"out{ids.MAX_NODE_OUTPUTS - 1}", 0)], BAD, "output index"),
    ("n.fattr-nan", [n(SGD_W2, "fattr0", NAN)], BAD, "fattr"),
    ("n.fattr-inf", [n(SGD_W2, f"fattr{ids.NODE_FATTRS - 1}", -INF)], BAD, "fattr"),
    ("n.writes-labels", [n(RELU_FW, "out0", T("labels"))], BAD, "label"),
    # each op's prepare
    ("linear.arity", [n(L_FW1, "n_in", 2), n(L_FW1, "in2", 0xFFFF)], BAD, "linear.fw: needs"),
    ("linear.w-b-swapped", [n(L_FW1, "in1", T("fc1.bias")), n(L_FW1, "in2", T("fc1.weight"))],
     BAD, "linear.fw: W"),
    ("linear.w-of-other-layer", [n(L_FW1, "in1", T("fc2.weight"))], BAD, "linear.fw: W"),
    ("linear.b-of-other-layer", [n(L_FW1, "in2", T("fc2.bias"))], BAD, "linear.fw: b"),
    ("linear.y-overlaps-w", [t(T("fc1.out"), "offset", tensor_field(T("fc1.weight"), "offset"))],
     BAD, "overlaps"),
    ("linear.bw_param-dw-is-db", [n(BWP2, "out0", T("fc2.bias.grad"))], BAD, "dW"),
    ("relu.shape", [n(RELU_FW, "out0", T("fc2.out"))], BAD, "relu.fw"),
    ("relu.partial-overlap", [t(T("relu1.out"), "offset", tensor_field(T("fc1.out"), "offset") + 8)],
     BAD, "partially"),
    ("softmax.labels", [n(SM_FW, "in1", T("fc2.out"))], BAD, "label tensor"),
    ("softmax.stats", [n(SM_FW, "out1", T("fc1.bias"))], BAD, "stats"),
    ("softmax.probs", [n(SM_FW, "out0", T("fc1.out"))], BAD, "probs"),
    ("sgd.param-batched", [n(SGD_W2, "out0", T("fc2.out"))], BAD, "param"),
    ("sgd.param-frozen", [t(T("fc2.weight"), "flags", 2)], BAD, "trainable"),
    ("sgd.grad-shape", [n(SGD_W2, "in0", T("fc1.weight.grad"))], BAD, "grad"),
]


def test_valid_blob_parses():
    p = nl.parse(BLOB)
    assert (p.status, p.why) == (Status.OK, "")
    m = p.model
    assert m.crc == header("crc32") and m.arena_bytes == PROG.plan.arena_bytes
    assert (m.n_tensors, m.n_nodes, m.n_eval_nodes, m.max_batch) == (
        len(G.tensors), len(G.nodes), G.n_eval_nodes, BATCH)
    assert (m.input_tensor, m.label_tensor, m.stats_tensor, m.num_classes) == (
        G.input_tensor, G.label_tensor, G.stats_tensor, SPEC.classes)
    for i, tensor in enumerate(G.tensors):
        assert m.tensors[i].elems == tensor.elems
        assert m.tensors[i].offset == PROG.plan.offsets[i]
    assert m.nodes[SGD_W2].fattr[0] == pytest.approx(LR) and m.nodes[SGD_W2].fattr[1] == pytest.approx(WD)


@pytest.mark.parametrize("edits,status,word", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_corrupted_field_is_refused(edits, status, word):
    p = nl.parse(patched(*edits))
    assert p.status == status, p.why
    assert word.lower() in p.why.lower()


def test_relu_in_place_is_accepted():
    """docs/blob.md allows y to alias x exactly; only partial overlap is refused."""
    p = nl.parse(patched(n(RELU_FW, "out0", T("fc1.out"))))  # relu.fw(fc1.out) -> fc1.out
    assert p.status == Status.OK, p.why


def test_arena_too_small_is_no_fit():
    p = nl.parse(BLOB, arena_bytes=PROG.plan.arena_bytes - 8)
    assert p.status == Status.NO_FIT and "arena" in p.why
    assert nl.parse(BLOB, arena_bytes=PROG.plan.arena_bytes).status == Status.OK


@pytest.mark.parametrize("where", [12, 16, 100, len(BLOB) - 1])
def test_bad_crc_is_bad_hash(where):
    b = bytearray(BLOB)
    b[where] ^= 0x01
    assert nl.parse(bytes(b)).status == Status.BAD_HASH


@pytest.mark.parametrize("keep", [0, 1, 16, 63, 64, 200, len(BLOB) - 1])
def test_truncated_blob_is_refused(keep):
    p = nl.parse(BLOB[:keep])
    assert p.status == Status.BAD_BLOB
    assert ("truncated" if keep < 64 else "total_bytes") in p.why


def test_random_corruption_never_crashes_nor_accepts_a_broken_blob():
    """Random byte edits (crc fixed up): any refusal is fine; an accepted blob must
    still satisfy the invariants ep_runtime.h promises."""
    rng = np.random.default_rng(7)
    accepted = 0
    for _ in range(3000):
        b = bytearray(BLOB)
        for pos in rng.integers(0, len(b), rng.integers(1, 4)):
            b[pos] = rng.integers(0, 256)
        p = nl.parse(fix_crc(b))
        assert p.status in (Status.OK, Status.BAD_BLOB, Status.NO_FIT, Status.BAD_HASH)
        assert p.status == Status.OK or p.why
        if p.status == Status.OK:
            accepted += 1
            m = p.model
            for i in range(m.n_tensors):
                assert m.tensors[i].offset + m.tensors[i].bytes <= m.arena_bytes
            for nd in m.nodes[:m.n_nodes]:
                assert all(x < m.n_tensors for x in list(nd.in_)[:nd.n_in] + list(nd.out)[:nd.n_out])
    assert accepted > 0  # edits to initial values and padding keep the blob valid


def test_host_parse_agrees_on_the_valid_blob():
    parse_blob(BLOB)  # the host's structural checks pass too: both sides read the same format


# -- running the blob ----------------------------------------------------------------

def batch(rng, size=BATCH):
    x = rng.standard_normal((size, 7)).astype(np.float32)
    y = rng.integers(0, 3, size)
    return x, y


def params_of(rt: nl.Runtime) -> dict[str, np.ndarray]:
    return {name: rt.tensor(i).reshape(G.tensors[i].dims) for i, name in PROG.param_names.items()}


# Tolerances for the run against the float64 reference (host.reference). Sums here
# have at most K = 7 terms of magnitude ≲ 1, so each float32 forward/backward value
# is within ~(K+1)·u ≈ 5e-7 relative of the exact one, and one SGD step moves a
# weight by lr·(g + wd·w) with lr = 0.1: an error ≤ 0.1 · 5e-7 · |g| plus float32
# rounding of the stored weight (|w| ≤ 0.5: 3e-8) per step. Over 5 steps, with the
# error passing through two layers (×~3), that is < 1e-6; 5e-6 keeps a 5× margin
# and is still 200× smaller than one step's change (lr·|g| ≈ 1e-3).
WEIGHT_ATOL = 5e-6
# Loss values are ~1 and each is a log-sum-exp over 3 classes of logits carrying
# the forward error above (≤ 1e-6 absolute) plus the weight drift (5e-6 × ‖x‖₁ ≲ 4e-5
# on a logit); 1e-4 bounds both.
LOSS_ATOL = 1e-4


def test_train_steps_match_the_float64_reference():
    rng = np.random.default_rng(11)
    rt = nl.Runtime(BLOB)
    ref = ReferenceModel(SPEC, init_params(SPEC, seed=0))
    for step in range(5):
        x, y = batch(rng)
        st, why, r = rt.run(y.astype(np.uint8), x.astype("<f4").tobytes(), train=True)
        assert st == Status.OK, why
        loss, correct = ref.train_step(x, y, LR, WD)
        assert r.n == BATCH and r.correct == correct
        assert abs(r.loss - loss) <= LOSS_ATOL, step
    for name, w in params_of(rt).items():
        np.testing.assert_allclose(w, ref.params[name], atol=WEIGHT_ATOL, rtol=0, err_msg=name)
        assert np.abs(w - PROG.graph.tensors[PROG.param_index(name)].init).max() > 100 * WEIGHT_ATOL


def test_eval_matches_the_fake_device_and_changes_nothing():
    rng = np.random.default_rng(12)
    rt = nl.Runtime(BLOB)
    before = rt.arena.copy()
    x, y = batch(rng, 3)  # fewer samples than max_batch
    st, why, r = rt.run(y.astype(np.uint8), x.astype("<f4").tobytes())
    assert st == Status.OK, why
    fake_loss, fake_correct = BlobExecutor(parse_blob(BLOB)).run(
        3, 0, 1.0, 0.0, y.astype(np.uint8).tobytes(), x.astype("<f4").tobytes(), train=False)
    assert r.n == 3 and r.correct == fake_correct
    assert abs(r.loss - fake_loss) <= LOSS_ATOL
    for i in PROG.param_names:
        sl = slice(PROG.plan.offsets[i], PROG.plan.offsets[i] + PROG.plan.sizes[i])
        np.testing.assert_array_equal(rt.arena[sl], before[sl])


def test_u8_affine_input_decodes_as_q_times_scale_plus_zero():
    rng = np.random.default_rng(13)
    q = rng.integers(0, 256, (BATCH, 7), dtype=np.uint8)
    y = rng.integers(0, 3, BATCH).astype(np.uint8)
    scale, zero = np.float32(0.01), np.float32(-1.25)
    rt = nl.Runtime(BLOB)
    st, why, r_q = rt.run(y, q.tobytes(), encoding=ids.Encoding.U8_AFFINE, scale=scale, zero=zero)
    assert st == Status.OK, why
    x = rt.tensor(G.input_tensor, BATCH).reshape(BATCH, 7)
    # one product and one sum in float32 on both sides: identical bits
    np.testing.assert_array_equal(x, q.astype(np.float32) * scale + zero)
    st, why, r_f = rt.run(y, x.astype("<f4").tobytes())
    assert st == Status.OK and (r_q.loss, r_q.correct) == (r_f.loss, r_f.correct)


@pytest.mark.parametrize("case", ["n-0", "n-above-max", "encoding", "short", "long", "u8-size", "label"])
def test_bad_batch_is_refused(case):
    rng = np.random.default_rng(14)
    x, y = batch(rng)
    labels, data, kw = y.astype(np.uint8), x.astype("<f4").tobytes(), {}
    if case == "n-0":
        labels, data = b"", b""
    elif case == "n-above-max":
        x, y = batch(rng, BATCH + 1)
        labels, data = y.astype(np.uint8), x.astype("<f4").tobytes()
    elif case == "encoding":
        kw = {"encoding": 2}
    elif case == "short":
        data = data[:-4]
    elif case == "long":
        data = data + bytes(4)
    elif case == "u8-size":
        kw = {"encoding": ids.Encoding.U8_AFFINE}  # f32-sized data under the u8 encoding
    elif case == "label":
        labels = labels.copy()
        labels[-1] = SPEC.classes
    rt = nl.Runtime(BLOB)
    before = rt.arena.copy()
    st, why, r = rt.run(labels, data, **kw)
    assert st == Status.BAD_BATCH and why.startswith("batch")
    assert r.n == 0
    np.testing.assert_array_equal(rt.arena, before)  # refused before anything was written


def test_non_finite_loss_is_numeric_and_skips_the_update():
    rng = np.random.default_rng(15)
    x, y = batch(rng)
    x[1, 2] = np.inf
    rt = nl.Runtime(BLOB)
    before = params_of(rt)
    st, why, r = rt.run(y.astype(np.uint8), x.astype("<f4").tobytes(), train=True)
    assert st == Status.NUMERIC and "loss" in why and not np.isfinite(r.loss)
    after = params_of(rt)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


# -- the same under AddressSanitizer + UBSan ------------------------------------------

@pytest.mark.skipif(os.environ.get("EP_NATIVE_VARIANT") == "sanitize", reason="already sanitized")
def test_under_sanitizers():
    tests = Path(__file__).parent
    # --capture=sys leaves file descriptor 2 alone, so a sanitizer report (written
    # there just before the abort) reaches proc.stderr instead of a lost temp file
    cmd = [sys.executable, "-m", "pytest", "-q", "--capture=sys", "-p", "no:cacheprovider",
           "-k", "not test_under_sanitizers",
           str(tests / "test_blob_validation.py"), str(tests / "test_runtime_ops.py")]
    nl.build("sanitize")
    proc = subprocess.run(cmd, env=nl.sanitized_env(), capture_output=True, text=True,
                          cwd=tests.parent, timeout=600)
    assert proc.returncode == 0, proc.stderr[:6000] + proc.stdout[-3000:]
