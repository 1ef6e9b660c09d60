"""The attention / tensor / loss / optimizer family end to end: layer rules →
compiler → blob → ep_model_parse (every node's prepare) → the runtime's adapters
and kernels on the host build (native_lib.Runtime), against PyTorch.

(a) Whole-graph golden runs. Small models using transpose, mhsa, softmax, seqpool
    (plus linear/flatten to reach the logits), the DAG ops add/concat, the MSE loss
    and the momentum/Adam/AdamW optimizers (with and without gradient accumulation)
    train for STEPS steps on the runtime and in PyTorch (float64 = reference, and
    float32 = the yardstick). Tolerance, as in test_models_golden: every loss and
    parameter must lie within TOL_FACTOR × (PyTorch-float32's own largest deviation
    from the float64 reference for that tensor) + TOL_FLOOR. The runtime sums in
    other orders and with FMA; a sound float32 implementation lands within a small
    multiple of PyTorch's float32 error, while a real mistake (wrong head split, sign,
    scale, transposition, step count) moves values by ~lr·|g| ≥ 1e-3, orders of
    magnitude beyond it (test_tolerance_catches_a_wrong_update).
(b) from_torch round trips of nn.Sequential models using Softmax, Transpose,
    SelfAttention and SeqPool, and ONNX import (torch.onnx.export, dynamo=False) of
    the ops mapped (Softmax, Transpose).
(c) prepare() rejections: a valid blob with one field of one node (or tensor)
    corrupted must be refused with BAD_BLOB and a reason naming the op.
"""

from __future__ import annotations

import os
import struct
import zlib

import native_lib as nl
from torch_golden import loss_of, torch_optimizer
import numpy as np
import pytest
import torch

from host import compiler as compiler_mod
from host.blob import CRC_START, build_blob
from host.compiler import Program, TrainConfig
from host.errors import ModelError
from host.graph import Node, Tensor
from host.ids import (
    BLOB_NODE_BYTES,
    MAX_NODE_INPUTS,
    MAX_NODE_OUTPUTS,
    NODE_IATTRS,
    OpCode,
    OpFn,
    Status,
)
from host.planner import plan_graph
from host.zoo import ModelSpec, init_params, load_model, parse_model

STEPS = 4
BATCH = 5
TOL_FACTOR = 20.0
TOL_FLOOR = 1e-6
BAD = int(Status.BAD_BLOB)


def _build_graph(*a, **k):
    return compiler_mod.build_graph(*a, **k)


def _compile(spec, params, cfg) -> Program:
    return compiler_mod.compile_model(spec, params, cfg)


# -- models --------------------------------------------------------------------------

# CCT in miniature: a conv tokenizer's [D][T] output, transposed to tokens, attention,
# sequence pooling, a classifier
CCT = {"name": "cct-mini", "input": [8, 6], "classes": 3, "loss": "softmax_cross_entropy",
       "layers": [{"type": "transpose", "name": "tr"},
                  {"type": "mhsa", "name": "attn", "heads": 2},
                  {"type": "seqpool", "name": "pool"},
                  {"type": "linear", "name": "head", "out": 3}]}
# a trainable layer before attention (so mhsa computes dx), softmax, 4 heads of 2
TOKENS = {"name": "tokens", "input": [5, 6], "classes": 4, "loss": "softmax_cross_entropy",
          "layers": [{"type": "linear", "name": "emb", "out": 8},
                     {"type": "mhsa", "name": "attn", "heads": 4},
                     {"type": "softmax", "name": "sm"},
                     {"type": "seqpool", "name": "pool"},
                     {"type": "linear", "name": "head", "out": 4}]}
# residual add and channel concat (the lead's DAG rules over ADD / ACCUMULATE / CONCAT)
DAG = {"name": "dag", "input": [4, 6], "classes": 3, "loss": "softmax_cross_entropy",
       "layers": [{"type": "linear", "name": "emb", "out": 6},
                  {"type": "mhsa", "name": "attn", "heads": 3},
                  {"type": "add", "name": "res", "inputs": ["emb", "attn"]},
                  {"type": "transpose", "name": "tr", "inputs": ["res"]},
                  {"type": "concat", "name": "cat", "inputs": ["tr", "tr"]},
                  {"type": "flatten", "name": "fl"},
                  {"type": "linear", "name": "head", "out": 3}]}
SOFTMAX_MLP = {"name": "sm-mlp", "input": [3, 5], "classes": 3, "loss": "softmax_cross_entropy",
               "layers": [{"type": "softmax", "name": "sm"}, {"type": "flatten", "name": "fl"},
                          {"type": "linear", "name": "fc", "out": 3}]}
AE = {"name": "deep-ae-mini", "input": [10], "classes": 2, "loss": "mse",
      "layers": [{"type": "linear", "name": "enc", "out": 4}, {"type": "relu", "name": "act"},
                 {"type": "linear", "name": "dec", "out": 10}]}


def make_batches(spec: ModelSpec, steps: int = STEPS, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((BATCH, *spec.input)).astype(np.float32),
             rng.integers(0, spec.classes, BATCH) if spec.loss != "mse" else np.zeros(BATCH, np.int64))
            for _ in range(steps)]


# -- PyTorch reference ---------------------------------------------------------------

_loss, _optimizer = loss_of, torch_optimizer


def torch_run(spec, params, cfg: TrainConfig, batches, dtype):
    """STEPS training steps in PyTorch (gradient accumulation: the mean of
    cfg.accumulate batches' gradients per step); per-batch losses, final state."""
    from host.importer import to_torch

    model = to_torch(spec, params).to(dtype).train()
    for name, p in model.named_parameters():  # a parameter trains with its layer
        p.requires_grad_(cfg.train_layers is None or name.split(".", 1)[0] in cfg.train_layers)
    opt = _optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    losses = []
    for i, (x, y) in enumerate(batches):
        xt = torch.from_numpy(x).to(dtype)
        if i % cfg.accumulate == 0:
            opt.zero_grad()
        loss = _loss(spec, model(xt), xt, torch.from_numpy(np.asarray(y, np.int64)))
        (loss / cfg.accumulate).backward()
        if (i + 1) % cfg.accumulate == 0:
            opt.step()
        losses.append(loss.item())
    return np.array(losses), {k: v.detach().double().numpy() for k, v in model.state_dict().items()}


def torch_eval(spec, params, x, y):
    from host.importer import to_torch

    model = to_torch(spec, params).double().eval()
    with torch.no_grad():
        xt = torch.from_numpy(x).double()
        out = model(xt)
        loss = _loss(spec, out, xt, torch.from_numpy(np.asarray(y, np.int64))).item()
    correct = 0 if spec.loss == "mse" else int((out.reshape(len(y), -1).argmax(1).numpy() == y).sum())
    return loss, correct


# -- the runtime ---------------------------------------------------------------------

def runtime_run(prog: Program, batches):
    rt = nl.Runtime(build_blob(prog))
    losses = []
    for x, y in batches:
        st, why, r = rt.run(bytes(int(v) for v in y), np.ascontiguousarray(x, "<f4").tobytes(), train=True)
        assert st == 0, why
        losses.append(r.loss)
    state = {name: rt.tensor(i).reshape(prog.graph.tensors[i].dims).astype(np.float64)
             for i, name in prog.param_names.items()}
    return rt, np.array(losses), state


def check_golden(spec_d: dict, cfg: TrainConfig, steps: int = STEPS, seed: int = 0):
    spec = parse_model(spec_d) if isinstance(spec_d, dict) else spec_d
    params = init_params(spec, seed=seed)
    data = make_batches(spec, steps, seed)
    prog = _compile(spec, params, cfg)
    _, dev_losses, dev = runtime_run(prog, data)
    ref_losses, ref = torch_run(spec, params, cfg, data, torch.float64)
    f32_losses, f32 = torch_run(spec, params, cfg, data, torch.float32)
    tol = TOL_FACTOR * np.abs(f32_losses - ref_losses).max() + TOL_FLOOR
    np.testing.assert_allclose(dev_losses, ref_losses, atol=tol, rtol=0, err_msg="losses")
    assert set(dev) == set(ref), (sorted(dev), sorted(ref))
    moved = max_tol = 0.0
    for name in dev:
        tol = TOL_FACTOR * np.abs(f32[name] - ref[name]).max() + TOL_FLOOR
        max_tol = max(max_tol, tol)
        np.testing.assert_allclose(dev[name], ref[name], atol=tol, rtol=0, err_msg=name)
        moved = max(moved, np.abs(ref[name] - params[name]).max())
    # training moved the parameters far beyond the tolerance: the comparison proves something
    assert moved > 10 * max_tol, (moved, max_tol)
    return spec, params, prog


# -- (a) whole-graph golden tests ----------------------------------------------------

@pytest.mark.parametrize("spec_d", [CCT, TOKENS, DAG, SOFTMAX_MLP], ids=lambda d: d["name"])
def test_sgd_steps_match_pytorch(spec_d):
    check_golden(spec_d, TrainConfig(batch=BATCH, lr=0.1))


@pytest.mark.parametrize("spec_d, train", [
    (CCT, ("head",)),            # attention and pooling frozen: forward only
    (CCT, ("attn",)),            # attention trains, first after transpose: bw_qkv alone, no dx
    (TOKENS, ("emb",)),          # attention, softmax, pooling frozen but pass dx through
    (TOKENS, ("attn", "head")),  # attention trains and its dx is not needed
    (CCT, ("pool",)),            # seqpool trains alone
], ids=lambda v: v["name"] if isinstance(v, dict) else "+".join(v))
def test_frozen_layers_match_pytorch(spec_d, train):
    _, params, prog = check_golden(spec_d, TrainConfig(batch=BATCH, lr=0.1, train_layers=train))
    frozen = [n for n in params if n.split(".", 1)[0] not in train]
    g = prog.graph
    for name in frozen:  # frozen parameters: no gradient tensors at all
        assert not any(t.name == f"{name}.grad" for t in g.tensors), name


def test_frozen_first_attention_emits_no_input_gradient():
    spec = parse_model(CCT)
    prog = _compile(spec, init_params(spec), TrainConfig(batch=BATCH, train_layers=("attn",)))
    nodes = [nd for nd in prog.graph.nodes if nd.op == OpCode.MHSA]
    assert [(nd.fn, len(nd.outputs)) for nd in nodes] == [(OpFn.FW, 2), (OpFn.BW_INPUT, 1), (OpFn.BW_PARAM, 4)]
    assert not any(nd.op == OpCode.TRANSPOSE and nd.fn == OpFn.BW_INPUT for nd in prog.graph.nodes)


@pytest.mark.parametrize("optimizer, wd, accumulate", [
    ("momentum", 0.0, 1), ("momentum", 0.01, 2), ("adam", 0.0, 1), ("adam", 0.01, 2), ("adamw", 0.05, 1),
])
def test_optimizers_on_mlp_digits(optimizer, wd, accumulate):
    lr = 0.05 if optimizer == "momentum" else 0.01
    cfg = TrainConfig(batch=BATCH, lr=lr, optimizer=optimizer, weight_decay=wd, accumulate=accumulate)
    check_golden(load_model("mlp-digits"), cfg, steps=6)


def test_optimizers_on_attention():
    check_golden(TOKENS, TrainConfig(batch=BATCH, lr=0.01, optimizer="adamw", weight_decay=0.01))
    check_golden(CCT, TrainConfig(batch=BATCH, lr=0.05, optimizer="momentum"))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_mse_autoencoder(optimizer):
    lr = 0.1 if optimizer == "sgd" else 0.01
    _, _, prog = check_golden(AE, TrainConfig(batch=BATCH, lr=lr, optimizer=optimizer))
    assert any(nd.op == OpCode.MSE and nd.fn == OpFn.BW_INPUT for nd in prog.graph.nodes)


@pytest.mark.parametrize("spec_d", [CCT, TOKENS, DAG, AE], ids=lambda d: d["name"])
def test_eval_equals_pytorch_eval(spec_d):
    spec = parse_model(spec_d)
    params = init_params(spec, seed=5)
    rt = nl.Runtime(build_blob(_compile(spec, params, TrainConfig(batch=BATCH))))
    (x, y), = make_batches(spec, 1, seed=9)
    st, why, r = rt.run(bytes(int(v) for v in y), x.astype("<f4").tobytes(), train=False)
    assert st == 0, why
    loss, correct = torch_eval(spec, params, x, y)
    # float32 forward of a few small layers: relative error ~1e-6 of a loss of ~1
    assert abs(r.loss - loss) < 1e-5 * max(1.0, abs(loss))
    assert r.correct == correct and r.n == BATCH


def test_tolerance_catches_a_wrong_update():
    """Scaling one attention gradient by 1.01 (a plausible bug) must fail the check."""
    spec = parse_model(CCT)
    params = init_params(spec)
    cfg = TrainConfig(batch=BATCH, lr=0.1)
    data = make_batches(spec)
    _, _, dev = runtime_run(_compile(spec, params, cfg), data)
    _, ref = torch_run(spec, params, cfg, data, torch.float64)
    _, f32 = torch_run(spec, params, cfg, data, torch.float32)
    bad = dict(params)
    bad["attn.in_proj_weight"] = params["attn.in_proj_weight"] * np.float32(1.01)
    _, wrong = torch_run(spec, bad, cfg, data, torch.float64)
    name = "attn.in_proj_weight"
    tol = TOL_FACTOR * np.abs(f32[name] - ref[name]).max() + TOL_FLOOR
    assert np.abs(dev[name] - ref[name]).max() <= tol < np.abs(wrong[name] - ref[name]).max() / 10


def test_init_matches_pytorch_distributions():
    spec = parse_model({"name": "i", "input": [16, 64], "classes": 2, "loss": "softmax_cross_entropy",
                        "layers": [{"type": "mhsa", "name": "a", "heads": 4}, {"type": "seqpool", "name": "p"},
                                   {"type": "linear", "name": "h", "out": 2}]})
    p = init_params(spec, seed=0)
    D = 64
    bound = np.sqrt(6 / (D + 3 * D))  # xavier_uniform_ of [3D][D]
    w = p["a.in_proj_weight"]
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.98 * bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.02 * bound
    assert not p["a.in_proj_bias"].any() and not p["a.out_proj.bias"].any()
    assert np.abs(p["a.out_proj.weight"]).max() <= 1 / np.sqrt(D)
    assert np.abs(p["p.attention_pool.weight"]).max() <= 1 / np.sqrt(D)
    assert p["p.attention_pool.weight"].shape == (1, D) and p["p.attention_pool.bias"].shape == (1,)
    # the same names and shapes as the PyTorch modules' state_dicts
    from host.importer import to_torch
    state = to_torch(spec).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: v.shape for k, v in p.items()}


def test_rules_refuse_bad_models():
    base = {"name": "b", "input": [4, 6], "classes": 2, "loss": "softmax_cross_entropy"}
    with pytest.raises(ModelError, match="heads 4 must divide"):
        parse_model({**base, "layers": [{"type": "mhsa", "heads": 4}, {"type": "flatten"},
                                        {"type": "linear", "out": 2}]})
    with pytest.raises(ModelError, match="heads"):
        parse_model({**base, "layers": [{"type": "mhsa", "heads": 0}]})
    with pytest.raises(ModelError, match=r"\[tokens\]\[dim\]"):
        parse_model({**base, "input": [24], "layers": [{"type": "seqpool"}, {"type": "linear", "out": 2}]})
    with pytest.raises(ModelError, match=r"\[tokens\]\[dim\]"):
        parse_model({**base, "input": [2, 3, 4], "layers": [{"type": "transpose"}, {"type": "flatten"},
                                                            {"type": "linear", "out": 2}]})


# -- (b) PyTorch and ONNX import -----------------------------------------------------

def _cct_torch():
    from host.layers.attn_optim import SelfAttention, SeqPool, Transpose

    torch.manual_seed(0)
    return torch.nn.Sequential(Transpose(), torch.nn.Linear(6, 8), SelfAttention(8, 2),
                               torch.nn.Softmax(dim=-1), SeqPool(8), torch.nn.Linear(8, 3))


def test_from_torch_round_trip():
    from host.importer import from_torch, to_torch

    src = _cct_torch()
    spec, params = from_torch(src, (6, 5), 3)  # checks the rebuilt model's output itself
    assert [l.type for l in spec.layers] == ["transpose", "linear", "mhsa", "softmax", "seqpool", "linear"]
    assert spec.layers[2]["heads"] == 2
    x = torch.randn(4, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(to_torch(spec, params).eval()(x), src.eval()(x), rtol=1e-5, atol=1e-6)
    # and it trains on the runtime as in PyTorch
    check_golden(spec, TrainConfig(batch=BATCH, lr=0.1))


def test_from_torch_refuses_unsupported_settings():
    from host.importer import from_torch
    from host.layers.attn_optim import SelfAttention

    for kw, what in [({"dropout": 0.1}, "dropout"), ({"bias": False}, "bias=False"),
                     ({"add_bias_kv": True}, "add_bias_kv"), ({"batch_first": False}, "batch_first"),
                     ({"add_zero_attn": True}, "add_zero_attn")]:
        with pytest.raises(ModelError, match=what):
            from_torch(torch.nn.Sequential(SelfAttention(8, 2, **kw), torch.nn.Flatten(),
                                           torch.nn.Linear(32, 2)), (4, 8), 2)
    with pytest.raises(ModelError, match="dim=1"):
        from_torch(torch.nn.Sequential(torch.nn.Softmax(dim=1), torch.nn.Flatten(), torch.nn.Linear(32, 2)),
                   (4, 8), 2)


def test_torch_modules_compute_multihead_attention():
    """SelfAttention is nn.MultiheadAttention(batch_first) on (x, x, x); SeqPool is CCT's."""
    from host.layers.attn_optim import SelfAttention, SeqPool

    torch.manual_seed(1)
    m = SelfAttention(8, 2)
    ref = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(m(x), ref(x, x, x)[0])
    sp = SeqPool(8)
    w = torch.softmax(x @ sp.attention_pool.weight.T + sp.attention_pool.bias, dim=1)  # [n][T][1]
    torch.testing.assert_close(sp(x), (w * x).sum(1))
    import pickle
    assert type(pickle.loads(pickle.dumps(m))) is SelfAttention


@pytest.mark.skipif(os.environ.get("EP_NATIVE_VARIANT") == "sanitize",
                    reason="torch's TorchScript ONNX exporter throws C++ exceptions ASan's interceptor cannot handle")
def test_onnx_import(tmp_path):
    from host.importer import from_onnx, to_torch
    from host.layers.attn_optim import Transpose

    torch.manual_seed(2)
    src = torch.nn.Sequential(Transpose(), torch.nn.Softmax(dim=-1), torch.nn.Flatten(),
                              torch.nn.Linear(20, 3)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(src, (torch.randn(1, 4, 5),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}})
    spec, params = from_onnx(path, classes=3)
    assert [l.type for l in spec.layers] == ["transpose", "softmax", "flatten", "linear"]
    x = torch.randn(3, 4, 5)
    with torch.no_grad():
        torch.testing.assert_close(to_torch(spec, params).eval()(x), src(x), rtol=1e-5, atol=1e-6)
    check_golden(spec, TrainConfig(batch=BATCH, lr=0.1))


# -- (c) prepare() rejections --------------------------------------------------------

_OUT = 4 + 2 * MAX_NODE_INPUTS
_IATTR = _OUT + 2 * MAX_NODE_OUTPUTS
_FATTR = _IATTR + 2 * NODE_IATTRS
NODE_FIELDS = {"fn": (1, "B"), "n_in": (2, "B"), "n_out": (3, "B"),
               **{f"in{i}": (4 + 2 * i, "<H") for i in range(MAX_NODE_INPUTS)},
               **{f"out{i}": (_OUT + 2 * i, "<H") for i in range(MAX_NODE_OUTPUTS)},
               **{f"iattr{i}": (_IATTR + 2 * i, "<H") for i in range(NODE_IATTRS)},
               **{f"fattr{i}": (_FATTR + 4 * i, "<f") for i in range(6)}}
TENSOR_FIELDS = {"dtype": (0, "B"), "flags": (1, "B"), "offset": (12, "<I")}


class Blob:
    """A compiled program's blob and helpers to corrupt one field (crc recomputed)."""

    def __init__(self, prog: Program):
        self.prog, self.g, self.blob = prog, prog.graph, build_blob(prog)
        self.tensors_off, self.nodes_off = struct.unpack_from("<II", self.blob, 36)
        assert nl.parse(self.blob).status == 0

    def node(self, op: OpCode, fn: OpFn, nth: int = 0) -> int:
        return [i for i, nd in enumerate(self.g.nodes) if nd.op == op and nd.fn == fn][nth]

    def t(self, name: str) -> int:
        return self.g.index(name)

    def patched(self, *edits) -> bytes:
        """Apply (kind, index, field, value) edits. Changing n_in / n_out also fixes
        the slots, as a consistent node needs (unused 0xFFFF, used: tensor 0)."""
        b = bytearray(self.blob)
        for kind, index, field, value in edits:
            if field in ("n_in", "n_out"):
                base = self.nodes_off + BLOB_NODE_BYTES * index
                old = b[base + NODE_FIELDS[field][0]]
                slot = "in" if field == "n_in" else "out"
                for k in range(min(old, value), max(old, value)):
                    off = NODE_FIELDS[f"{slot}{k}"][0]
                    struct.pack_into("<H", b, base + off, 0xFFFF if value < old else 0)
            off, fmt = (NODE_FIELDS if kind == "node" else TENSOR_FIELDS)[field]
            base = self.nodes_off + BLOB_NODE_BYTES * index if kind == "node" else self.tensors_off + 24 * index
            struct.pack_into(fmt, b, base + off, value)
        struct.pack_into("<I", b, 12, zlib.crc32(bytes(b[CRC_START:])))
        return bytes(b)

    def offset(self, name: str) -> int:
        return struct.unpack_from("<I", self.blob, self.tensors_off + 24 * self.t(name) + 12)[0]


def refused(blob: bytes, reason: str) -> None:
    p = nl.parse(blob)
    assert p.status == BAD, (p.status, p.why)
    assert p.why.startswith(reason), (p.why, reason)


@pytest.fixture(scope="module")
def cct_blob():
    spec = parse_model(TOKENS)
    return Blob(_compile(spec, init_params(spec), TrainConfig(batch=3, optimizer="adam")))


@pytest.fixture(scope="module")
def dag_blob():
    spec = parse_model(DAG)
    return Blob(_compile(spec, init_params(spec), TrainConfig(batch=3, optimizer="momentum", accumulate=2)))


def test_mhsa_prepare_rejections(cct_blob):
    b = cct_blob
    fw, bwi, bwp = b.node(OpCode.MHSA, OpFn.FW), b.node(OpCode.MHSA, OpFn.BW_INPUT), b.node(OpCode.MHSA, OpFn.BW_PARAM)
    nfw, nbwi = b.g.nodes[fw], b.g.nodes[bwi]
    x, y, scratch = nfw.inputs[0], nfw.outputs[0], nfw.inputs[5]
    cases = [
        (("node", fw, "iattr0", 0), "mhsa: heads"),
        (("node", fw, "iattr0", 3), "mhsa: heads"),           # 3 does not divide D = 8
        (("node", fw, "iattr0", 2), "mhsa.fw: saved"),        # divides, but saved was sized for 4 heads
        (("node", fw, "n_in", 5), "mhsa.fw: needs"),
        (("node", fw, "n_out", 1), "mhsa.fw: needs"),
        (("node", fw, "out1", y), "mhsa.fw: saved"),
        (("node", fw, "in5", nfw.inputs[2]), "mhsa.fw: scratch"),       # b_in as scratch: too small
        (("node", fw, "in1", nfw.inputs[3]), "mhsa.fw: want w_in"),     # w_out where w_in goes
        (("node", fw, "in0", nfw.inputs[2]), "mhsa.fw: x must"),        # b_in: unbatched, rank 1
        (("node", fw, "out0", x), "mhsa.fw: y, saved or scratch overlaps"),
        (("tensor", scratch, "offset", b.offset(b.g.tensors[x].name)), "mhsa.fw: y, saved or scratch overlaps"),
        (("tensor", nfw.inputs[1], "dtype", 2), "mhsa.fw: want w_in"),  # i32 weights
        (("node", bwi, "n_out", 3), "mhsa.bw_input: needs"),
        (("node", bwi, "out0", nbwi.outputs[1]), "mhsa.bw_input: dqkv"),
        (("node", bwi, "in4", nbwi.inputs[3]), "mhsa.bw_input: scratch"),
        (("node", bwi, "in3", nbwi.inputs[0]), "mhsa.bw_input: saved"),
        (("node", bwp, "in3", nbwi.inputs[0]), "mhsa.bw_param: dqkv"),
        (("node", bwp, "out2", b.g.nodes[bwp].outputs[0]), "mhsa.bw_param: want dw_in"),
        (("node", bwp, "fn", 3), "node"),                                # no such fn: the generic check
    ]
    for edit, reason in cases:
        refused(b.patched(edit), reason)


def test_seqpool_softmax_mse_prepare_rejections(cct_blob):
    b = cct_blob
    fw, bwi, bwp = (b.node(OpCode.SEQPOOL, f) for f in (OpFn.FW, OpFn.BW_INPUT, OpFn.BW_PARAM))
    nfw = b.g.nodes[fw]
    sm, smb = b.node(OpCode.SOFTMAX, OpFn.FW), b.node(OpCode.SOFTMAX, OpFn.BW_INPUT)
    cases = [
        (("node", fw, "in1", nfw.inputs[2]), "seqpool.fw: g"),
        (("node", fw, "out1", nfw.outputs[0]), "seqpool.fw: y must"),     # wts [T] ≠ [D]
        (("node", fw, "in0", nfw.outputs[0]), "seqpool.fw: x"),
        (("node", fw, "n_out", 1), "seqpool.fw: needs"),
        (("tensor", nfw.outputs[1], "offset", b.offset(b.g.tensors[nfw.inputs[0]].name)), "seqpool.fw: y or wts overlaps"),
        (("node", bwi, "in2", b.g.nodes[bwi].inputs[3]), "seqpool.bw_input: want"),
        (("node", bwp, "out1", b.g.nodes[bwp].outputs[0]), "seqpool.bw_param: dg"),
        (("node", sm, "out0", b.g.nodes[fw].outputs[0]), "softmax.fw: x and y"),
        (("node", sm, "n_in", 2), "softmax.fw: needs"),
        (("node", smb, "in1", b.g.nodes[fw].outputs[0]), "softmax.bw_input: dy, y"),
    ]
    for edit, reason in cases:
        refused(b.patched(edit), reason)
    # partial overlap of softmax's y with its x is refused; exact aliasing (in place) is allowed
    ns = b.g.nodes[sm]
    assert nl.parse(b.patched(("node", sm, "out0", ns.inputs[0]))).status == 0
    refused(b.patched(("tensor", ns.outputs[0], "offset", b.offset(b.g.tensors[ns.inputs[0]].name) + 8)),
            "softmax.fw: y partially overlaps x")


def test_optimizer_prepare_rejections(cct_blob, dag_blob):
    b = cct_blob
    adam = b.node(OpCode.ADAM, OpFn.FW)
    na = b.g.nodes[adam]
    p, m, _, t = na.outputs
    cases = [
        (("node", adam, "n_out", 3), "adam.fw: needs"),
        (("node", adam, "iattr0", 2), "adam.fw: iattr[0]"),
        (("node", adam, "fattr1", 1.0), "adam.fw: want"),          # beta1 = 1
        (("node", adam, "fattr3", 0.0), "adam.fw: want"),          # eps = 0
        (("node", adam, "fattr0", -0.1), "adam.fw: want"),         # negative lr
        (("node", adam, "fattr5", 0.0), "adam.fw: grad_scale"),
        (("node", adam, "fattr5", 2.0), "adam.fw: grad_scale"),
        (("node", adam, "out3", m), "adam.fw: t must"),
        (("node", adam, "out1", p), "adam.fw: m and v"),           # trainable, not state
        (("node", adam, "out2", m), "adam.fw: grad, param, m, v and t must be disjoint"),
        (("tensor", t, "flags", 0), "adam.fw: t must"),            # not PARAM: not persistent
        (("node", adam, "in0", b.g.nodes[b.node(OpCode.ADAM, OpFn.FW, 1)].inputs[0]), "adam.fw: grad"),
    ]
    for edit, reason in cases:
        refused(b.patched(edit), reason)
    d = dag_blob
    sgdm = d.node(OpCode.SGD_MOMENTUM, OpFn.FW)
    ns = d.g.nodes[sgdm]
    cases = [
        (("node", sgdm, "n_out", 1), "sgd_momentum.fw: needs"),
        (("node", sgdm, "iattr0", 2), "sgd_momentum.fw: nesterov (iattr[0])"),
        (("node", sgdm, "fattr3", 0.5), "sgd_momentum.fw: dampening needs a step counter"),
        (("node", sgdm, "fattr3", 1.5), "sgd_momentum.fw: want"),
        (("node", sgdm, "fattr1", -0.9), "sgd_momentum.fw: want"),
        (("node", sgdm, "fattr4", 0.0), "sgd_momentum.fw: grad_scale"),
        (("node", sgdm, "out1", ns.outputs[0]), "sgd_momentum.fw: velocity"),
        (("node", sgdm, "out0", ns.outputs[1]), "sgd_momentum.fw: param"),
    ]
    for edit, reason in cases:
        refused(d.patched(edit), reason)
    # nesterov is accepted (momentum > 0, no dampening)
    assert nl.parse(d.patched(("node", sgdm, "iattr0", 1))).status == 0


def test_tensor_op_prepare_rejections(dag_blob):
    d = dag_blob
    add = d.node(OpCode.ADD, OpFn.FW)
    na = d.g.nodes[add]
    cat, catb = d.node(OpCode.CONCAT, OpFn.FW), d.node(OpCode.CONCAT, OpFn.BW_INPUT)
    nc, ncb = d.g.nodes[cat], d.g.nodes[catb]
    tr, trb = d.node(OpCode.TRANSPOSE, OpFn.FW), d.node(OpCode.TRANSPOSE, OpFn.BW_INPUT)
    acc = d.node(OpCode.ACCUMULATE, OpFn.FW)
    nacc = d.g.nodes[acc]
    label = d.g.label_tensor
    cases = [
        (("node", add, "n_in", 1), "add.fw: needs"),
        (("node", add, "in1", nc.outputs[0]), "add.fw: a, b and y must have equal"),
        (("tensor", na.outputs[0], "offset", d.offset(d.g.tensors[na.inputs[0]].name) + 8), "add.fw: y partially"),
        (("node", cat, "out0", nc.inputs[0]), "concat.fw: want"),
        (("node", cat, "n_out", 2), "concat.fw: needs"),
        (("node", catb, "out1", ncb.inputs[0]), "concat.bw_input: want"),
        (("node", catb, "fn", 2), "node"),
        (("node", tr, "out0", d.g.nodes[tr].inputs[0]), "transpose.fw: want"),
        (("node", trb, "out0", d.g.nodes[trb].inputs[0]), "transpose.bw_input: want"),
        (("node", acc, "out0", nacc.inputs[1]), "accumulate.fw: the output must be"),
        (("node", acc, "in1", d.g.input_tensor), "accumulate.fw: acc and src must be f32, both"),
        (("node", acc, "in1", d.t("head.bias")), "accumulate.fw: acc and src must have equal"),
    ]
    for edit, reason in cases:
        refused(d.patched(edit), reason)
    # ADD's y may alias a or b exactly
    assert nl.parse(d.patched(("node", add, "out0", na.inputs[0]))).status == 0
    assert nl.parse(d.patched(("node", add, "out0", na.inputs[1]))).status == 0
    # ACCUMULATE's output must be exactly its input 0: same index, so in0 = out0
    refused(d.patched(("node", acc, "in0", nacc.inputs[1]), ("node", acc, "out0", nacc.inputs[1])),
            "accumulate.fw: src overlaps acc")
    assert label not in na.inputs


def test_mse_prepare_rejections():
    spec = parse_model(AE)
    b = Blob(_compile(spec, init_params(spec), TrainConfig(batch=3)))
    fw, bw = b.node(OpCode.MSE, OpFn.FW), b.node(OpCode.MSE, OpFn.BW_INPUT)
    nfw = b.g.nodes[fw]
    hidden = b.g.nodes[b.node(OpCode.RELU, OpFn.FW)].outputs[0]
    cases = [
        (("node", fw, "in1", hidden), "mse.fw: y and target"),
        (("node", fw, "out0", nfw.inputs[0]), "mse.fw: stats"),
        (("node", fw, "n_out", 2), "mse.fw: needs"),
        (("node", bw, "out0", hidden), "mse.bw_input: dy must"),
        (("node", bw, "in0", b.t("enc.weight")), "mse.bw_input: y and target"),
    ]
    for edit, reason in cases:
        refused(b.patched(edit), reason)


# -- CLIP_NORM (no compiler rule yet: nodes inserted by hand) ------------------------

def test_clip_norm_matches_clip_grad_norm():
    """sumsq over a layer's gradients, then scale them, before the SGD steps: one
    step equals torch.nn.utils.clip_grad_norm_ on that layer, then SGD."""
    spec = parse_model(AE)
    params = init_params(spec, seed=1)
    cfg = TrainConfig(batch=BATCH, lr=0.1, train_layers=("dec",))
    g, names = _build_graph(spec, params, cfg)
    sgd = [i for i, nd in enumerate(g.nodes) if nd.op == OpCode.SGD]
    grads = [g.nodes[i].inputs[0] for i in sgd]
    s = g.add_tensor(Tensor("clip.sumsq", (1,)))
    max_norm = 0.05
    g.nodes[sgd[0]:sgd[0]] = [Node(OpCode.CLIP_NORM, OpFn.FW, grads, [s], (0, 1)),
                              Node(OpCode.CLIP_NORM, OpFn.FW, [s], grads, (1,), (max_norm,))]
    prog = Program(spec, cfg, g, plan_graph(g), names)
    (x, y), = make_batches(spec, 1)
    _, _, dev = runtime_run(prog, [(x, y)])

    from host.importer import to_torch
    model = to_torch(spec, params).double()
    xt = torch.from_numpy(x).double()
    _loss(spec, model(xt), xt, None).backward()
    total = torch.nn.utils.clip_grad_norm_(model.dec.parameters(), max_norm)
    assert total > 2 * max_norm  # the clip is active
    with torch.no_grad():
        for name, p in model.dec.named_parameters():
            p -= cfg.lr * p.grad
            np.testing.assert_allclose(dev[f"dec.{name}"], p.numpy(), atol=1e-6, rtol=0)

    b = Blob(prog)
    ci = b.node(OpCode.CLIP_NORM, OpFn.FW, 1)
    for edit, reason in [(("node", ci, "fattr0", 0.0), "clip_norm.fw: max_norm"),
                         (("node", ci, "iattr0", 2), "clip_norm.fw: iattr[0]"),
                         (("node", ci, "in0", grads[1]), "clip_norm.fw: sumsq"),
                         (("node", ci, "out1", grads[0]), "clip_norm.fw: the scaled gradients")]:
        refused(b.patched(edit), reason)


# -- the same under AddressSanitizer + UBSan ------------------------------------------

@pytest.mark.skipif(os.environ.get("EP_NATIVE_VARIANT") == "sanitize", reason="already sanitized")
def test_under_sanitizers():
    """Rerun this module on the runtime built with -fsanitize=address,undefined: an
    out-of-bounds access in an adapter or kernel, or UB in a step counter, fails."""
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__)
    cmd = [sys.executable, "-m", "pytest", "-q", "--capture=sys", "-p", "no:cacheprovider",
           "-k", "not test_under_sanitizers", str(here)]
    nl.build("sanitize")
    proc = subprocess.run(cmd, env=nl.sanitized_env(), capture_output=True, text=True,
                          cwd=here.parents[1], timeout=600)
    assert proc.returncode == 0, proc.stderr[:6000] + proc.stdout[-3000:]


def test_adam_step_counter_is_clamped():
    """t lives in the arena (blob init, checkpoints): any value, NaN included, gives a
    defined step. It counts steps, restarts at 1 from NaN or a negative value, and
    saturates at 2^24 (where f32 stops counting and both bias corrections are 1)."""
    spec = parse_model(AE)
    prog = _compile(spec, init_params(spec), TrainConfig(batch=BATCH, lr=0.01, optimizer="adam"))
    rt = nl.Runtime(build_blob(prog))
    t_index = prog.graph.index("enc.weight.adam_t")
    t = rt.model.tensors[t_index].offset
    (x, _), = make_batches(spec, 1)
    data, labels = x.astype("<f4").tobytes(), bytes(BATCH)

    def step_with(value=None):
        if value is not None:
            rt.arena[t:t + 4] = np.frombuffer(np.float32(value).tobytes(), np.uint8)
        st, why, _ = rt.run(labels, data, train=True)
        assert st == 0, why
        return float(rt.arena[t:t + 4].view(np.float32)[0])

    assert [step_with() for _ in range(3)] == [1.0, 2.0, 3.0]
    assert step_with(np.nan) == 1.0
    assert step_with(-5.0) == 1.0
    assert step_with(2.5) == 3.0
    assert step_with(1e30) == 16777216.0
    assert step_with(np.inf) == 16777216.0
    assert all(np.isfinite(rt.tensor(i)).all() for i in prog.param_names)


def test_random_node_corruptions_never_crash(cct_blob, dag_blob):
    """Random edits of this family's nodes (tensor indices, counts, attributes, fn):
    parse refuses them or they run without touching memory outside their tensors
    (meaningful under test_under_sanitizers, where ASan checks every access)."""
    rng = np.random.default_rng(7)
    ours = {OpCode.MHSA, OpCode.SEQPOOL, OpCode.SOFTMAX, OpCode.ADD, OpCode.ACCUMULATE, OpCode.CONCAT,
            OpCode.TRANSPOSE, OpCode.SGD_MOMENTUM, OpCode.ADAM}
    accepted = 0
    for b in (cct_blob, dag_blob):
        nodes = [i for i, nd in enumerate(b.g.nodes) if nd.op in ours]
        n_t = len(b.g.tensors)
        for _ in range(150):
            i = int(rng.choice(nodes))
            field = str(rng.choice(["in0", "in1", "in2", "in3", "in4", "in5", "out0", "out1", "out2", "out3",
                                    "iattr0", "iattr1", "n_in", "n_out", "fn"]))
            nd = b.g.nodes[i]
            if field.startswith("in") and not field.startswith("iattr"):
                if int(field[2:]) >= len(nd.inputs):
                    continue
                value = int(rng.integers(0, n_t))
            elif field.startswith("out"):
                if int(field[3:]) >= len(nd.outputs):
                    continue
                value = int(rng.integers(0, n_t))
            elif field in ("n_in", "n_out"):
                value = int(rng.integers(0, (MAX_NODE_INPUTS if field == "n_in" else MAX_NODE_OUTPUTS) + 1))
            elif field == "fn":
                value = int(rng.integers(0, 3))
            else:
                value = int(rng.choice([0, 1, 2, 3, 4, 8, 0xFFFF]))
            blob = b.patched(("node", i, field, value))
            p = nl.parse(blob)
            assert p.status in (0, BAD), (p.status, p.why)
            if p.status == 0:
                accepted += 1
                rt = nl.Runtime(blob)
                (x, y), = make_batches(b.prog.spec, 1)
                n = b.prog.config.batch
                rt.run(bytes(int(v) for v in y[:n]), x[:n].astype("<f4").tobytes(), train=True)
    assert accepted > 0  # some edits are harmless (e.g. a same-shaped tensor): they ran
