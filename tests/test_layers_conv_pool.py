"""conv2d/conv1d, avg/max pooling and global average pooling end to end.

(a) Whole graphs: small models using every layer of the family are compiled
    (host.compiler), run for several TRAIN steps on the host build of the runtime
    (native_lib.Runtime) and compared with the same SGD steps in PyTorch, float64,
    on the same float32 starting values; then EVAL against eval-mode PyTorch.
(b) Import: from_torch round trips of nn.Sequential models, and ONNX import of the
    same models exported with torch.onnx.export(dynamo=False).
(c) The device's prepare(): one field of one conv/pool node (or of a tensor it
    reads) corrupted in a valid blob is refused with BAD_BLOB and a reason that
    names the op.
Node contracts: docs/ops/conv_pool.md.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import native_lib as nl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from host import ids
from host.blob import CRC_START, build_blob
from host.compiler import TrainConfig, compile_model
from host.errors import ModelError
from host.ids import OpCode, OpFn, Status
from host.importer import from_onnx, from_torch, to_torch
from host.zoo import init_params, parse_model

BATCH, LR, STEPS = 8, 0.2, 6

# Tolerances. The device computes in float32 (u = 2^-24 ≈ 6e-8), PyTorch here in
# float64 from the same float32 values. The longest sums are the conv weight
# gradients: n·H_out·W_out ≤ 8·100 = 800 products per entry (the forward sums are
# C_in/groups·kh·kw ≤ 54 terms). A float32 sum of m terms is within m·u·Σ|terms|
# of the exact sum in any order (Higham ch. 3); here Σ|dy·x| per weight-gradient
# entry is ≤ ~1 (dy carries the 1/n of the mean loss and |x| ≲ 3), so one gradient
# entry is off by ≤ 800·6e-8 ≈ 5e-5 in the worst case, and typically √m·u·Σ ≈ 2e-6
# (rounding errors of random sign). Times lr = 0.2 per step and, over 6 steps,
# compounded through the other layers' weights, the worst case reaches ~3e-4 but a
# realistic bound is ~1e-5. We take 1e-4: 10× the realistic bound (measured
# differences are ≈1e-7..1e-6), while a real mistake (wrong tap, padding side,
# stride phase, a missing gradient term) moves a weight by ≥ lr·|g| ≈ 1e-3 and a
# check below asserts the weights moved by far more than this.
WEIGHT_ATOL = 1e-4
# The loss moves with the weights: |ΔL| ≤ ‖∂L/∂w‖₁·max|Δw|; ‖∂L/∂w‖₁ is ≲ 5 for
# these few-hundred-parameter models, so 5·1e-4 = 5e-4, plus float32 rounding of
# the loss (|L| ≤ 3 → 2e-7).
LOSS_ATOL = 5e-4

MODELS = {
    # 2-D: padded conv, max pool, grouped + dilated + strided asymmetric-padded conv
    # without bias, avg pool excluding the padding, global average pooling
    "conv2d-pools": {
        "name": "cp2d", "input": [4, 10, 10], "classes": 5, "loss": "softmax_cross_entropy",
        "layers": [
            {"type": "conv2d", "name": "c1", "out": 6, "kernel": 3, "padding": 1},
            {"type": "relu", "name": "r1"},
            {"type": "maxpool2d", "name": "mp", "kernel": 2},
            {"type": "conv2d", "name": "c2", "out": 8, "kernel": [3, 2], "stride": [2, 1],
             "padding": [1, 0, 1, 1], "dilation": [1, 2], "groups": 2, "bias": False},
            {"type": "avgpool2d", "name": "ap", "kernel": [2, 3], "stride": 1, "padding": [1, 1],
             "count_include_pad": False},
            {"type": "global_avgpool", "name": "gap"},
            {"type": "linear", "name": "fc", "out": 5}]},
    # pointwise (1x1) conv, depthwise strided conv, max pool with padding,
    # avg pool counting the padding, flatten
    "pointwise-depthwise": {
        "name": "pwdw", "input": [3, 9, 9], "classes": 4, "loss": "softmax_cross_entropy",
        "layers": [
            {"type": "conv2d", "name": "pw", "out": 4, "kernel": 1},
            {"type": "conv2d", "name": "dw", "out": 4, "kernel": 3, "groups": 4, "padding": 1, "stride": 2},
            {"type": "maxpool2d", "name": "mp", "kernel": 3, "stride": 1, "padding": 1},
            {"type": "avgpool2d", "name": "ap", "kernel": 2, "padding": 1},
            {"type": "flatten", "name": "fl"},
            {"type": "linear", "name": "fc", "out": 4}]},
    # 1-D: conv1d with dilation and left-only padding, strided padded max pool,
    # grouped conv1d, avg pool with asymmetric padding, global pool keeping dims
    "conv1d-pools": {
        "name": "cp1d", "input": [2, 16], "classes": 3, "loss": "softmax_cross_entropy",
        "layers": [
            {"type": "conv1d", "name": "c1", "out": 4, "kernel": 3, "padding": [2, 0], "dilation": 2},
            {"type": "relu", "name": "r1"},
            {"type": "maxpool1d", "name": "mp", "kernel": 3, "stride": 2, "padding": 1},
            {"type": "conv1d", "name": "c2", "out": 6, "kernel": 2, "groups": 2},
            {"type": "avgpool1d", "name": "ap", "kernel": 2, "stride": 1, "padding": [1, 0]},
            {"type": "global_avgpool", "name": "gap", "keepdims": True},
            {"type": "flatten", "name": "fl"},
            {"type": "linear", "name": "fc", "out": 3}]},
}


def _batches(spec, seed: int, sizes):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        x = torch.randn((n, *spec.input), generator=g).numpy().astype(np.float32)
        y = torch.randint(0, spec.classes, (n,), generator=g).numpy()
        out.append((x, y))
    return out


def _device(prog):
    return nl.Runtime(build_blob(prog), arena_bytes=max(1 << 20, prog.plan.arena_bytes))


def _run(rt, x, y, train):
    st, why, r = rt.run(bytes(y.astype(np.uint8)), x.astype("<f4").tobytes(), train=train)
    assert st == Status.OK, why
    return r


def _device_params(rt, prog, params):
    return {k: rt.tensor(prog.param_index(k)).reshape(v.shape) for k, v in params.items()}


def _torch_steps(spec, params, batches, train_layers):
    model = to_torch(spec, params).double().train()
    trained = [p for name, p in model.named_parameters() if name.split(".")[0] in train_layers]
    opt = torch.optim.SGD(trained, lr=LR)
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = F.cross_entropy(model(torch.from_numpy(x).double()), torch.from_numpy(y).long())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


@pytest.mark.parametrize("train_layers", [None, ("c1",), ("fc",)], ids=["all", "first-only", "head-only"])
@pytest.mark.parametrize("model", list(MODELS))
def test_sgd_steps_and_eval_match_pytorch(model, train_layers):
    spec = parse_model(MODELS[model])
    names = [layer.name for layer in spec.layers]
    if train_layers == ("c1",) and "c1" not in names:
        train_layers = (names[0],)
    params = init_params(spec, seed=1)
    prog = compile_model(spec, params, TrainConfig(batch=BATCH, lr=LR, train_layers=train_layers))
    rt = _device(prog)
    # full batches, then a short one (the adapters take n from the request)
    batches = _batches(spec, 2, [BATCH] * (STEPS - 1) + [5])
    dev_losses = [_run(rt, x, y, train=True).loss for x, y in batches]
    ref, ref_losses = _torch_steps(spec, params, batches, train_layers or names)

    np.testing.assert_allclose(dev_losses, ref_losses, atol=LOSS_ATOL, rtol=0)
    got = _device_params(rt, prog, params)
    want = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    moved = 0.0
    for k in params:
        np.testing.assert_allclose(got[k], want[k], atol=WEIGHT_ATOL, rtol=0, err_msg=k)
        trains = k.split(".")[0] in (train_layers or names)
        if not trains:
            np.testing.assert_array_equal(got[k], params[k], err_msg=f"{k} is frozen")
        moved = max(moved, float(np.abs(got[k] - params[k]).max()))
    assert moved > 30 * WEIGHT_ATOL  # training did something the tolerance cannot hide

    # EVAL: loss, correct count and probabilities of eval-mode PyTorch
    (x, y), = _batches(spec, 3, [BATCH])
    r = _run(rt, x, y, train=False)
    with torch.no_grad():
        logits = ref.eval()(torch.from_numpy(x).double())
    loss = F.cross_entropy(logits, torch.from_numpy(y).long()).item()
    assert r.loss == pytest.approx(loss, abs=1e-5)
    assert r.correct == int((logits.argmax(1).numpy() == y).sum()) and r.n == BATCH
    probs = rt.tensor(prog.graph.index("loss.probs"), BATCH).reshape(BATCH, -1)
    np.testing.assert_allclose(probs, torch.softmax(logits, 1).numpy(), atol=1e-5, rtol=0)


def test_frozen_layers_emit_only_what_they_need():
    """A frozen conv that feeds a trained layer runs bw_input only (never reads x in
    backward); the first trained layer computes no input gradient."""
    spec = parse_model(MODELS["conv2d-pools"])
    params = init_params(spec)
    g = compile_model(spec, params, TrainConfig(batch=2, train_layers=("c1",))).graph
    fns = {(nd.layer, nd.op, nd.fn) for nd in g.nodes}
    assert ("c2", OpCode.CONV2D, OpFn.BW_INPUT) in fns and ("c2", OpCode.CONV2D, OpFn.BW_PARAM) not in fns
    assert ("c1", OpCode.CONV2D, OpFn.BW_PARAM) in fns and ("c1", OpCode.CONV2D, OpFn.BW_INPUT) not in fns
    assert ("mp", OpCode.MAXPOOL2D, OpFn.BW_INPUT) in fns
    g = compile_model(spec, params, TrainConfig(batch=2, train_layers=("fc",))).graph
    assert not any(nd.layer in ("c1", "mp", "c2", "ap", "gap") and nd.fn != OpFn.FW for nd in g.nodes)


def test_attribute_errors_are_model_errors():
    base = MODELS["conv2d-pools"]

    def with_layer(i, **kw):
        d = {**base, "layers": [dict(layer) for layer in base["layers"]]}
        d["layers"][i].update(kw)
        return d

    for i, kw, word in [(0, {"kernel": 0}, "kernel"), (0, {"stride": [1, 0]}, "stride"),
                        (0, {"padding": [1, 2, 3]}, "padding"), (0, {"groups": 4}, "groups"),
                        (0, {"kernel": 20}, "fit"), (0, {"bias": 1}, "bias"),
                        (2, {"padding": 2}, "half"), (4, {"count_include_pad": "no"}, "count_include_pad"),
                        (5, {"keepdims": 1}, "keepdims")]:
        with pytest.raises(ModelError, match=word):
            parse_model(with_layer(i, **kw))
    with pytest.raises(ModelError, match=r"\[C\]\[H\]\[W\]"):
        parse_model({**base, "input": [100]})


# -- (b) import ------------------------------------------------------------------------

def _seq_2d():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, padding=1),
        nn.Conv2d(6, 8, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, bias=False),
        nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
        nn.Conv2d(8, 8, 4, padding="same"),   # even kernel: asymmetric padding
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def _seq_1d():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=2, dilation=2), nn.ReLU(), nn.MaxPool1d(3, stride=2, padding=1),
        nn.Conv1d(4, 6, 2, groups=2), nn.AvgPool1d(2, padding=1),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(6, 3))


SEQS = {"2d": (_seq_2d, (3, 12, 12), 5), "1d": (_seq_1d, (2, 20), 3)}


def _same_output(a, b, shape):
    x = torch.randn((4, *shape), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    assert ya.shape == yb.shape
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", list(SEQS))
def test_from_torch_round_trip(which):
    make, shape, classes = SEQS[which]
    module = make()
    spec, params = from_torch(module, shape, classes)  # checks the outputs itself too
    types = [layer.type for layer in spec.layers]
    if which == "2d":
        assert types == ["conv2d", "relu", "maxpool2d", "conv2d", "avgpool2d", "conv2d", "global_avgpool",
                         "flatten", "linear"]
        assert spec.layers[5]["padding"] == [1, 2, 1, 2]  # 'same' with k = 4: the odd pad at the end
    else:
        assert types == ["conv1d", "relu", "maxpool1d", "conv1d", "avgpool1d", "global_avgpool", "flatten", "linear"]
    rebuilt = to_torch(spec, params)
    _same_output(module, rebuilt, shape)
    # and what to_torch builds imports again to the same description
    spec2, params2 = from_torch(rebuilt, shape, classes)
    assert [(la.type, la.attrs) for la in spec2.layers] == [(la.type, la.attrs) for la in spec.layers]
    for k in params:
        np.testing.assert_array_equal(params[k], params2[k])
    # the imported model compiles and parses on the device
    prog = compile_model(spec, params, TrainConfig(batch=2))
    assert nl.parse(build_blob(prog)).status == Status.OK


@pytest.mark.parametrize("module,word", [
    (nn.Conv2d(3, 4, 3, padding_mode="reflect"), "padding_mode"),
    (nn.MaxPool2d(2, ceil_mode=True), "ceil_mode"),
    (nn.MaxPool2d(3, dilation=2), "dilation"),
    (nn.AvgPool2d(2, divisor_override=3), "divisor_override"),
    (nn.AdaptiveAvgPool2d(2), "output_size"),
])
def test_from_torch_refuses_unsupported_settings(module, word):
    with pytest.raises(ModelError, match=word):
        from_torch(nn.Sequential(module), (3, 8, 8), 2, check=False)


@pytest.mark.parametrize("which", list(SEQS))
def test_onnx_import(which, tmp_path):
    make, shape, classes = SEQS[which]
    module = make().eval()
    path = tmp_path / f"{which}.onnx"
    x = torch.randn((1, *shape))
    torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    spec, params = from_onnx(path, classes=classes)
    assert spec.input == shape and spec.classes == classes
    _same_output(module, to_torch(spec, params), shape)
    prog = compile_model(spec, params, TrainConfig(batch=2))
    assert nl.parse(build_blob(prog)).status == Status.OK


# -- (c) prepare() refuses corrupted nodes ------------------------------------------

_N_IN, _N_OUT = 4, 4 + 2 * ids.MAX_NODE_INPUTS
_N_IATTR = _N_OUT + 2 * ids.MAX_NODE_OUTPUTS
_N_FATTR = _N_IATTR + 2 * ids.NODE_IATTRS
NODE = {"fn": (1, "B"), "n_in": (2, "B"), "n_out": (3, "B"),
        **{f"in{i}": (_N_IN + 2 * i, "<H") for i in range(ids.MAX_NODE_INPUTS)},
        **{f"out{i}": (_N_OUT + 2 * i, "<H") for i in range(ids.MAX_NODE_OUTPUTS)},
        **{f"iattr{i}": (_N_IATTR + 2 * i, "<H") for i in range(ids.NODE_IATTRS)},
        **{f"fattr{i}": (_N_FATTR + 4 * i, "<f") for i in range(ids.NODE_FATTRS)}}
TENSOR = {"dtype": (0, "B"), "flags": (1, "B"), "rank": (2, "B"), "dims": (4, "<4H"), "offset": (12, "<I")}


class Blob:
    """A valid blob of one of MODELS and helpers to corrupt it (crc fixed up)."""

    def __init__(self, model: str, batch: int = 2):
        spec = parse_model(MODELS[model])
        self.prog = compile_model(spec, init_params(spec), TrainConfig(batch=batch))
        self.g = self.prog.graph
        self.blob = build_blob(self.prog)
        self.tensors_off, self.nodes_off = struct.unpack_from("<II", self.blob, 36)

    def node(self, layer: str, op: OpCode, fn: OpFn) -> int:
        return next(i for i, nd in enumerate(self.g.nodes) if (nd.layer, nd.op, nd.fn) == (layer, op, fn))

    def T(self, name: str) -> int:
        return self.g.index(name)

    def n(self, i: int, field: str, value):
        off, fmt = NODE[field]
        return self.nodes_off + ids.BLOB_NODE_BYTES * i + off, fmt, value

    def t(self, i: int, field: str, value):
        off, fmt = TENSOR[field]
        return self.tensors_off + ids.BLOB_TENSOR_BYTES * i + off, fmt, value

    def offset(self, i: int) -> int:
        return struct.unpack_from("<I", self.blob, self.tensors_off + ids.BLOB_TENSOR_BYTES * i + 12)[0]

    def patched(self, *edits) -> bytes:
        b = bytearray(self.blob)
        for off, fmt, value in edits:
            struct.pack_into(fmt, b, off, *(value if isinstance(value, tuple) else (value,)))
        struct.pack_into("<I", b, 12, zlib.crc32(bytes(b[CRC_START:])))
        return bytes(b)


B2 = Blob("conv2d-pools")
B1 = Blob("conv1d-pools")
B2_ONE = Blob("conv2d-pools", batch=1)  # batched and unbatched tensors have equal sizes
C, BW, M, A, GP = OpCode.CONV2D, OpCode.AVGPOOL2D, OpCode.MAXPOOL2D, OpCode.AVGPOOL2D, OpCode.GLOBAL_AVGPOOL
FW, BI, BP = OpFn.FW, OpFn.BW_INPUT, OpFn.BW_PARAM
c1_fw, c2_fw = B2.node("c1", C, FW), B2.node("c2", C, FW)
c2_bi, c2_bp, c1_bp = B2.node("c2", C, BI), B2.node("c2", C, BP), B2.node("c1", C, BP)
mp_fw, mp_bi = B2.node("mp", M, FW), B2.node("mp", M, BI)
ap_fw, ap_bi = B2.node("ap", A, FW), B2.node("ap", A, BI)
gp_fw, gp_bi = B2.node("gap", GP, FW), B2.node("gap", GP, BI)
d1_fw, m1_fw = B1.node("c1", C, FW), B1.node("mp", M, FW)

CASES = [
    # conv2d: arity, attributes, shapes, dtype, rank, overlap
    ("conv.fw-arity", B2, [B2.n(c1_fw, "n_in", 1), B2.n(c1_fw, "in1", 0xFFFF), B2.n(c1_fw, "in2", 0xFFFF)],
     "conv2d.fw: needs"),
    ("conv.zero-stride", B2, [B2.n(c1_fw, "iattr0", 0)], "conv2d: zero stride"),
    ("conv.zero-dilation", B2, [B2.n(c2_fw, "iattr7", 0)], "conv2d: zero dilation"),
    ("conv.zero-groups", B2, [B2.n(c2_fw, "iattr8", 0)], "conv2d: zero groups"),
    ("conv.groups-not-dividing", B2, [B2.n(c1_fw, "iattr8", 4)], "conv2d: groups does not divide"),
    ("conv.groups-vs-weight", B2, [B2.n(c2_fw, "iattr8", 1)], "conv2d: W dims"),
    ("conv.kernel-too-large", B2, [B2.n(c1_fw, "iattr6", 50)], "conv2d: dilated kernel larger"),
    ("conv.padding-vs-y", B2, [B2.n(c1_fw, "iattr3", 2)], "conv2d: y/dy spatial dims"),
    ("conv.stride-vs-dy", B2, [B2.n(c2_bi, "iattr1", 2)], "conv2d: y/dy spatial dims"),
    ("conv.unused-iattr", B2, [B2.n(c1_fw, "iattr10", 1)], "conv2d: iattr[9..11]"),
    ("conv.fattr", B2, [B2.n(c1_fw, "fattr0", 0.5)], "conv2d: fattrs"),
    ("conv.bias-shape", B2, [B2.n(c1_fw, "in2", B2.T("fc.bias"))], "conv2d.fw: b"),
    ("conv.weight-rank", B2, [B2.t(B2.T("c1.weight"), "rank", 3), B2.t(B2.T("c1.weight"), "dims", (6, 4, 9, 1))],
     "conv2d: W/dW"),
    ("conv.y-dtype", B2, [B2.t(B2.T("c1.out"), "dtype", ids.DType.I32)], "conv2d: x/dx and y/dy"),
    ("conv.y-unbatched", B2_ONE, [B2_ONE.t(B2_ONE.T("c1.out"), "flags", 0)], "conv2d: x/dx and y/dy"),
    ("conv.y-overlaps-x", B2, [B2.t(B2.T("c1.out"), "offset", B2.offset(B2.T("input")))], "conv2d.fw: y overlaps"),
    ("conv.bw_input-dx-is-dy", B2, [B2.n(c2_bi, "out0", B2.g.nodes[c2_bi].inputs[0])], "conv2d"),
    ("conv.bw_param-arity", B2, [B2.n(c1_bp, "n_out", 3), B2.n(c1_bp, "out2", 0)], "conv2d.bw_param: needs"),
    ("conv.bw_param-dw-of-other-layer", B2, [B2.n(c2_bp, "out0", B2.T("c1.weight.grad"))], "conv2d: W dims"),
    ("conv.bw_param-db-shape", B2, [B2.n(c1_bp, "out1", B2.T("fc.bias"))], "conv2d.bw_param: db"),
    ("conv.bw_param-db-is-dw", B2, [B2.n(c1_bp, "out1", B2.g.nodes[c1_bp].outputs[0])], "conv2d.bw_param: db"),
    ("conv.1d-stride-h", B1, [B1.n(d1_fw, "iattr0", 2)], "conv2d: 1-D node"),
    # pools
    ("maxpool.zero-kernel", B2, [B2.n(mp_fw, "iattr0", 0)], "maxpool2d: zero kernel"),
    ("maxpool.zero-stride", B2, [B2.n(mp_fw, "iattr3", 0)], "maxpool2d: zero stride"),
    ("maxpool.count_include_pad", B2, [B2.n(mp_fw, "iattr8", 1)], "maxpool2d: iattr[8]"),
    ("maxpool.pad-over-half", B2, [B2.n(mp_fw, "iattr4", 2)], "maxpool2d: a pad exceeds half"),
    ("maxpool.kernel-too-large", B2, [B2.n(mp_fw, "iattr0", 12), B2.n(mp_fw, "iattr1", 12)],
     "maxpool2d: kernel larger"),
    ("maxpool.stride-vs-y", B2, [B2.n(mp_fw, "iattr2", 1)], "maxpool2d: y/dy spatial dims"),
    ("maxpool.bw-arity", B2, [B2.n(mp_bi, "n_in", 1), B2.n(mp_bi, "in1", 0xFFFF)], "maxpool2d.bw_input: needs"),
    ("maxpool.bw-x-shape", B2, [B2.n(mp_bi, "in1", B2.g.nodes[mp_bi].inputs[0])], "maxpool2d.bw_input: x"),
    ("maxpool.bw-dx-is-x", B2, [B2.n(mp_bi, "in1", B2.g.nodes[mp_bi].outputs[0])], "maxpool2d.bw_input: dx overlaps"),
    ("maxpool.1d-kh", B1, [B1.n(m1_fw, "iattr0", 2)], "maxpool2d: 1-D node"),
    ("avgpool.count_include_pad-2", B2, [B2.n(ap_fw, "iattr8", 2)], "avgpool2d: iattr[8]"),
    ("avgpool.unused-iattr", B2, [B2.n(ap_bi, "iattr9", 1)], "avgpool2d: iattr[9..11]"),
    ("avgpool.fattr", B2, [B2.n(ap_fw, "fattr5", 1.0)], "avgpool2d: fattrs"),
    ("avgpool.channels", B2, [B2.n(ap_fw, "in0", B2.T("c1.out"))], "avgpool2d: x/dx and y/dy"),
    ("avgpool.fn", B2, [B2.n(ap_fw, "fn", OpFn.BW_PARAM)], "fn"),
    ("avgpool.y-overlaps-x", B2, [B2.t(B2.T("ap.out"), "offset", B2.offset(B2.T("c2.out")))],
     "avgpool2d.fw: y overlaps"),
    # global average pooling
    ("gap.iattr", B2, [B2.n(gp_fw, "iattr0", 1)], "global_avgpool: iattrs"),
    ("gap.arity", B2, [B2.n(gp_fw, "n_in", 2), B2.n(gp_fw, "in1", 0)], "global_avgpool.fw: needs"),
    ("gap.y-size", B2, [B2.n(gp_fw, "out0", B2.T("ap.out"))], "global_avgpool: y/dy"),
    ("gap.x-rank", B2, [B2.n(gp_bi, "out0", B2.g.nodes[gp_bi].inputs[0])], "global_avgpool: x/dx"),
]


def test_valid_blobs_parse():
    for b in (B1, B2, B2_ONE):
        p = nl.parse(b.blob)
        assert (p.status, p.why) == (Status.OK, "")


@pytest.mark.parametrize("blob,edits,word", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_corrupted_node_is_refused(blob, edits, word):
    p = nl.parse(blob.patched(*edits))
    assert p.status == Status.BAD_BLOB == 11, p.why
    assert word in p.why


@pytest.mark.skipif(os.environ.get("EP_NATIVE_VARIANT") == "sanitize", reason="already sanitized")
def test_under_sanitizers():
    """The device-side tests again (training steps, eval, prepare() on corrupted nodes)
    against the -fsanitize=address,undefined library: any UB in an adapter or in
    prepare() reading a corrupted node aborts the subprocess."""
    here = Path(__file__)
    cmd = [sys.executable, "-m", "pytest", "-q", "--capture=sys", "-p", "no:cacheprovider",
           "-k", "test_sgd_steps or test_corrupted_node or test_valid_blobs", str(here)]
    nl.build("sanitize")
    proc = subprocess.run(cmd, check=False, env=nl.sanitized_env(), capture_output=True, text=True,
                          cwd=here.parent.parent, timeout=600)
    assert proc.returncode == 0, proc.stderr[:6000] + proc.stdout[-3000:]
    assert " passed" in proc.stdout
