"""batchnorm, layernorm, groupnorm, the activations and dropout end to end.

(a) Whole graphs: small models using every layer of the family (a Deep-AE-like
    MLP autoencoder with batchnorm over [C] features, an EEGNet-like conv net with
    batchnorm over [C][H][W], elu, average pooling and dropout, and a model of
    group/layer norms and the other activations over [C][L]) are compiled
    (host.compiler), run for several TRAIN steps on the host build of the runtime
    (native_lib.Runtime) and compared with the same SGD steps of PyTorch in train()
    mode, float64, from the same float32 starting values: losses, parameters and
    the batchnorm running statistics; then EVAL against eval-mode PyTorch.
    Dropout: p = 0 in those models (PyTorch's mask cannot be reproduced); a
    separate device test reproduces the device's masks from the documented
    xorshift32 stream and checks forward, backward and the persistent state.
    The batchnorm eval-mode (frozen statistics) node functions, which the compiler
    does not emit today, are checked on a hand-patched graph.
(b) Import: from_torch round trips of nn.Sequential models, and ONNX import of the
    same models exported with torch.onnx.export(dynamo=False).
(c) The device's prepare(): one field of one node of the family (or of a tensor it
    reads) corrupted in a valid blob is refused with BAD_BLOB and a reason that
    names the op.
Node contracts: docs/ops/norm_act.md.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import native_lib as nl
import norm_act_lib as nal
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from host import ids
from host.blob import CRC_START, build_blob
from host.compiler import Program, TrainConfig, build_graph, compile_model
from host.errors import ModelError
from host.ids import OpCode, OpFn, Status
from host.importer import from_onnx, from_torch, to_torch
from host.layers.norm_act import dropout_seed
from host.planner import plan_graph
from host.zoo import init_params, parse_model

BATCH, LR, STEPS = 8, 0.1, 6

# Tolerances. The device computes in float32 (u = 2^-24 ≈ 6e-8), PyTorch here in
# float64 from the same float32 values. The normalisations add two things to the
# plain sums of test_layers_conv_pool.py: (1) the division by the standard
# deviation, which scales an absolute error of the centred values by inv_std — the
# batch of 8 gives per-channel variances of order 0.1..1 after these layers, so
# inv_std ≲ 3; (2) the backward's subtraction of the two projections (dy − mean(dy)
# − x̂·mean(dy·x̂)), whose rounding error is ≈ u·(|dy| + |x̂||dy|)·m ≈ a few u per
# element relative to |dy| for m ≤ 8·16 elements per channel. So one gradient
# entry carries a relative error of ≈ 1e-6 (≈ 10 u · inv_std · √m); with |g| ≲ 1
# and lr = 0.1 that is ≲ 1e-7 per step, compounded over 6 steps through the other
# layers: ≲ 1e-6. We take 2e-5 for the weights — 20× that bound and 100× what we
# measure (≤ 2e-7 on every model and training set here), while a real mistake (a
# wrong sum, the biased variance in the running average, a mask applied twice, a
# missing x̂ term) moves a weight by ≥ lr·|g| ≈ 1e-3, and a check asserts that the
# trained weights moved by far more than the tolerance.
WEIGHT_ATOL = 2e-5
# Running statistics are plain averages of batch moments (no gradient): float32
# moment errors ≈ m·u·|x|² ≲ 1e-5 for |x| ≲ 3 and m ≤ 128; the biased variance in
# place of the unbiased one would be off by momentum·var/(m − 1) ≥ 1e-3.
STAT_ATOL = 2e-5
# The loss moves with the weights (‖∂L/∂w‖₁ ≲ 5 for these models): 5·2e-5; measured ≤ 2e-7.
LOSS_ATOL = 1e-4

MODELS = {
    # Deep-AE-like: an MLP autoencoder (mse against the input) with batchnorm over
    # [C] features after linear layers, elu, tanh, relu6 and a sigmoid output
    "deep-ae": {
        "name": "dae", "input": [12], "classes": 2, "loss": "mse",
        "layers": [
            {"type": "linear", "name": "fc1", "out": 10},
            {"type": "batchnorm", "name": "bn1"},
            {"type": "elu", "name": "act1", "alpha": 0.8},
            {"type": "linear", "name": "fc2", "out": 4},
            {"type": "batchnorm", "name": "bn2", "eps": 1e-3, "momentum": 0.3},
            {"type": "tanh", "name": "act2"},
            {"type": "linear", "name": "fc3", "out": 10},
            {"type": "relu6", "name": "act3"},
            {"type": "linear", "name": "fc4", "out": 12},
            {"type": "sigmoid", "name": "out"}]},
    # EEGNet-like: temporal conv, batchnorm over [C][H][W], depthwise spatial conv,
    # batchnorm, elu, average pooling, dropout (p = 0: see the module docstring)
    "eegnet": {
        "name": "eeg", "input": [1, 4, 16], "classes": 3, "loss": "softmax_cross_entropy",
        "layers": [
            {"type": "conv2d", "name": "c1", "out": 4, "kernel": [1, 5], "padding": [0, 2], "bias": False},
            {"type": "batchnorm", "name": "bn1"},
            {"type": "conv2d", "name": "dw", "out": 8, "kernel": [4, 1], "groups": 4, "bias": False},
            {"type": "batchnorm", "name": "bn2"},
            {"type": "elu", "name": "act"},
            {"type": "avgpool2d", "name": "ap", "kernel": [1, 4]},
            {"type": "dropout", "name": "drop", "p": 0.0},
            {"type": "flatten", "name": "fl"},
            {"type": "linear", "name": "fc", "out": 3}]},
    # [C][L] signals: groupnorm, sigmoid, layernorm over the last dim, gelu, a
    # token-wise linear, batchnorm over [C][L], tanh, dropout, layernorm over [D]
    "norms": {
        "name": "nrm", "input": [4, 8], "classes": 3, "loss": "softmax_cross_entropy",
        "layers": [
            {"type": "groupnorm", "name": "gn", "groups": 2},
            {"type": "sigmoid", "name": "sg"},
            {"type": "layernorm", "name": "ln1"},
            {"type": "gelu", "name": "ge"},
            {"type": "linear", "name": "tok", "out": 6},
            {"type": "batchnorm", "name": "bn", "momentum": 0.5},
            {"type": "tanh", "name": "th"},
            {"type": "dropout", "name": "drop", "p": 0.0},
            {"type": "flatten", "name": "fl"},
            {"type": "layernorm", "name": "ln2", "eps": 1e-4},
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


def _loss(spec, out, x, y):
    if spec.loss == "mse":
        return F.mse_loss(out, x.reshape(out.shape))
    return F.cross_entropy(out, y)


def _torch_steps(spec, params, batches, train_layers, model=None):
    model = model if model is not None else to_torch(spec, params).double().train()
    trained = [p for name, p in model.named_parameters() if name.split(".")[0] in train_layers]
    opt = torch.optim.SGD(trained, lr=LR)
    losses = []
    for x, y in batches:
        opt.zero_grad()
        xt = torch.from_numpy(x).double()
        loss = _loss(spec, model(xt), xt, torch.from_numpy(y).long())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


def _compare(rt, prog, params, ref, train_layers, names):
    got = _device_params(rt, prog, params)
    want = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    moved = 0.0
    for k in params:
        stat = k.endswith(("running_mean", "running_var"))
        np.testing.assert_allclose(got[k], want[k], atol=STAT_ATOL if stat else WEIGHT_ATOL, rtol=0, err_msg=k)
        trains = k.split(".")[0] in (train_layers or names)
        if not trains and not stat:
            np.testing.assert_array_equal(got[k], params[k], err_msg=f"{k} is frozen")
        if trains and not stat:
            moved = max(moved, float(np.abs(got[k] - params[k]).max()))
    assert moved > 30 * WEIGHT_ATOL  # training did something the tolerance cannot hide


def _train_layers_for(spec, which):
    names = [layer.name for layer in spec.layers]
    with_params = [la.name for la in spec.layers if spec.param_shapes().keys() & {f"{la.name}.weight"}]
    return {"all": None, "first-only": (with_params[0],), "head-only": (with_params[-1],)}[which], names


@pytest.mark.parametrize("which", ["all", "first-only", "head-only"])
@pytest.mark.parametrize("model", list(MODELS))
def test_sgd_steps_and_eval_match_pytorch(model, which):
    spec = parse_model(MODELS[model])
    train_layers, names = _train_layers_for(spec, which)
    params = init_params(spec, seed=1)
    # non-default affine values and running statistics, so every term is exercised
    rng = np.random.default_rng(7)
    for k in params:
        if k.split(".")[0].startswith(("bn", "gn", "ln")):
            base = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}[k.split(".")[1]]
            params[k] = (base + rng.uniform(0.0 if "var" in k else -0.3, 0.3, params[k].shape)).astype(np.float32)
    prog = compile_model(spec, params, TrainConfig(batch=BATCH, lr=LR, train_layers=train_layers))
    rt = _device(prog)
    # full batches, then a short one (the adapters take n from the request)
    batches = _batches(spec, 2, [BATCH] * (STEPS - 1) + [5])
    dev_losses = [_run(rt, x, y, train=True).loss for x, y in batches]
    ref, ref_losses = _torch_steps(spec, params, batches, train_layers or names)

    np.testing.assert_allclose(dev_losses, ref_losses, atol=LOSS_ATOL, rtol=0)
    _compare(rt, prog, params, ref, train_layers, names)

    # EVAL: loss (and for classifiers the correct count and probabilities) of eval-mode PyTorch
    (x, y), = _batches(spec, 3, [BATCH])
    r = _run(rt, x, y, train=False)
    xt = torch.from_numpy(x).double()
    with torch.no_grad():
        out = ref.eval()(xt)
    assert r.loss == pytest.approx(_loss(spec, out, xt, torch.from_numpy(y).long()).item(), abs=1e-5)
    assert r.n == BATCH
    if spec.loss != "mse":
        assert r.correct == int((out.argmax(1).numpy() == y).sum())
        probs = rt.tensor(prog.graph.index("loss.probs.eval"), BATCH).reshape(BATCH, -1)
        np.testing.assert_allclose(probs, torch.softmax(out, 1).numpy(), atol=1e-5, rtol=0)


def test_frozen_and_first_layers_emit_only_what_they_need():
    spec = parse_model(MODELS["deep-ae"])
    params = init_params(spec)
    g = compile_model(spec, params, TrainConfig(batch=2, train_layers=("fc1",))).graph
    fns = {(nd.layer, nd.op, nd.fn) for nd in g.nodes}
    # frozen batchnorm feeding a trained layer: bw_input (train mode) only
    assert ("bn1", OpCode.BATCHNORM, OpFn.BW_INPUT) in fns and ("bn1", OpCode.BATCHNORM, OpFn.BW_PARAM) not in fns
    # the training forward uses batch statistics and updates the running ones even when frozen
    fw = [nd for nd in g.nodes if (nd.layer, nd.op, nd.fn) == ("bn1", OpCode.BATCHNORM, OpFn.FW)]
    assert [nd.iattrs for nd in fw] == [(1,), (0,)]  # the eval prefix, then the training forward
    assert g.tensors[fw[1].outputs[2]].name == "bn1.running_mean"
    g = compile_model(spec, params, TrainConfig(batch=2, train_layers=("fc4",))).graph
    assert not any(nd.layer not in ("fc4", "out", "loss") and nd.fn != OpFn.FW for nd in g.nodes)
    # a first trained norm computes no input gradient
    spec = parse_model(MODELS["norms"])
    g = compile_model(spec, init_params(spec), TrainConfig(batch=2)).graph
    fns = {(nd.layer, nd.op, nd.fn) for nd in g.nodes}
    assert ("gn", OpCode.GROUPNORM, OpFn.BW_PARAM) in fns and ("gn", OpCode.GROUPNORM, OpFn.BW_INPUT) not in fns


def test_attribute_errors_are_model_errors():
    base = MODELS["norms"]

    def with_layer(i, **kw):
        d = {**base, "layers": [dict(layer) for layer in base["layers"]]}
        d["layers"][i].update(kw)
        return d

    for i, kw, word in [(0, {"groups": 3}, "groups"), (0, {"groups": 0}, "groups"), (0, {"eps": 0}, "eps"),
                        (2, {"eps": -1.0}, "eps"), (5, {"momentum": 1.5}, "momentum"),
                        (5, {"affine": False}, "affine"), (7, {"p": 1.0}, "'p'"), (7, {"p": -0.1}, "'p'"),
                        (3, {"approximate": "tanh"}, "approximate")]:
        with pytest.raises(ModelError, match=word):
            parse_model(with_layer(i, **kw))
    with pytest.raises(ModelError, match="alpha"):
        parse_model({**MODELS["deep-ae"], "layers": [dict(la, alpha=-1.0) if la["name"] == "act1" else la
                                                      for la in MODELS["deep-ae"]["layers"]]})
    with pytest.raises(ModelError, match=r"\[C\]\[H\]\[W\]"):
        parse_model({"name": "x", "input": [2, 2, 2, 2], "classes": 16, "loss": "softmax_cross_entropy",
                     "layers": [{"type": "batchnorm", "name": "bn"}, {"type": "flatten", "name": "f"}]})


# -- dropout on the device ------------------------------------------------------------

DROP = {"name": "drop", "input": [20], "classes": 3, "loss": "softmax_cross_entropy",
        "layers": [{"type": "linear", "name": "fc1", "out": 24},
                   {"type": "dropout", "name": "do", "p": 0.3},
                   {"type": "linear", "name": "fc2", "out": 3}]}


@pytest.mark.parametrize("train_layers", [None, ("fc2",)], ids=["all", "after-dropout-only"])
def test_dropout_masks_follow_the_device_stream(train_layers):
    """The device's masks are the documented xorshift32 stream from the layer's seed,
    advanced by n·E per TRAIN (fresh masks each step, persisting across steps): a
    float64 replay with those masks reproduces the losses and weights, so the
    forward applies the mask with scale 1/(1 − p) and the backward reuses it."""
    spec = parse_model(DROP)
    params = init_params(spec, seed=3)
    prog = compile_model(spec, params, TrainConfig(batch=BATCH, lr=LR, train_layers=train_layers))
    rt = _device(prog)
    state_t = prog.graph.index("do.rng_state")
    state = dropout_seed("do")
    assert int(rt.tensor(state_t).view(np.uint32)[0]) == state
    sizes = [BATCH, BATCH, 5, BATCH]
    batches = _batches(spec, 4, sizes)
    dev_losses = [_run(rt, x, y, train=True).loss for x, y in batches]

    w = {k: torch.from_numpy(v).double().requires_grad_() for k, v in params.items()}
    trained = [w[k] for k in w if k.split(".")[0] in (train_layers or ("fc1", "fc2"))]
    opt = torch.optim.SGD(trained, lr=LR)
    ref_losses, keeps = [], []
    for x, y in batches:
        keep, state = nal.xorshift_keep(len(x) * 24, 0.3, state)
        keeps.append(keep)
        opt.zero_grad()
        h = F.linear(torch.from_numpy(x).double(), w["fc1.weight"], w["fc1.bias"])
        h = h * torch.from_numpy(keep.reshape(len(x), 24)).double() / (1 - np.float32(0.3))
        loss = F.cross_entropy(F.linear(h, w["fc2.weight"], w["fc2.bias"]), torch.from_numpy(y).long())
        loss.backward()
        opt.step()
        ref_losses.append(loss.item())
    np.testing.assert_allclose(dev_losses, ref_losses, atol=LOSS_ATOL, rtol=0)
    got = _device_params(rt, prog, params)
    for k in params:
        np.testing.assert_allclose(got[k], w[k].detach().numpy(), atol=WEIGHT_ATOL, rtol=0, err_msg=k)
    assert int(rt.tensor(state_t).view(np.uint32)[0]) == state  # the state persisted and advanced
    # the masks differ from step to step, and keep ≈ 1 − p of the elements
    assert not np.array_equal(keeps[0], keeps[1])
    rate = np.concatenate(keeps).mean()
    assert abs(rate - 0.7) < 4 * np.sqrt(0.21 / sum(len(k) for k in keeps))
    # EVAL is the identity: equal to the float64 model without dropout
    (x, y), = _batches(spec, 5, [BATCH])
    r = _run(rt, x, y, train=False)
    with torch.no_grad():
        h = F.linear(torch.from_numpy(x).double(), w["fc1.weight"], w["fc1.bias"])
        loss = F.cross_entropy(F.linear(h, w["fc2.weight"], w["fc2.bias"]), torch.from_numpy(y).long())
    assert r.loss == pytest.approx(loss.item(), abs=1e-5)


def test_dropout_keep_rate_on_a_large_tensor():
    """One TRAIN over 8·1000 elements keeps 1 − p of them: read through the first
    layer's weight gradient (input → dropout → linear with a zero-initialised
    linear: dW[m] = dlogits[:, m]ᵀ · dropout(x) is zero exactly where dropped)."""
    p = 0.6
    spec = parse_model({"name": "d", "input": [1000], "classes": 2, "loss": "softmax_cross_entropy",
                        "layers": [{"type": "dropout", "name": "do", "p": p},
                                   {"type": "linear", "name": "fc", "out": 2}]})
    params = {k: np.zeros_like(v) for k, v in init_params(spec).items()}
    prog = compile_model(spec, params, TrainConfig(batch=1, lr=1.0))
    rt = _device(prog)
    x = np.ones((1, 1000), np.float32)
    _run(rt, x, np.array([1]), train=True)
    wrow = rt.tensor(prog.param_index("fc.weight")).reshape(2, 1000)[1]
    keep = wrow != 0
    np.testing.assert_array_equal(keep, nal.xorshift_keep(1000, p, dropout_seed("do"))[0])
    # kept: dW = (softmax − onehot)·x/(1 − p) = (0.5 − 1)·2.5, times lr = 1, subtracted
    np.testing.assert_allclose(wrow[keep], 0.5 / (1 - np.float32(p)), rtol=1e-6)
    assert abs(keep.mean() - (1 - p)) < 4 * np.sqrt(p * (1 - p) / 1000)


# -- batchnorm eval-mode node functions (frozen statistics) -----------------------------

def test_batchnorm_eval_mode_nodes_match_frozen_statistics():
    """Fine-tuning with frozen statistics (PyTorch: model.train() with the batchnorm in
    eval()): a hand-patched graph whose batchnorm runs fw, bw_input and bw_param in
    eval mode (iattr 1: running statistics) matches PyTorch, and the running
    statistics stay unchanged."""
    spec = parse_model(MODELS["deep-ae"])
    params = init_params(spec, seed=2)
    rng = np.random.default_rng(3)
    for k in ("bn1.running_mean", "bn2.running_mean"):
        params[k] = rng.uniform(-0.5, 0.5, params[k].shape).astype(np.float32)
    for k in ("bn1.running_var", "bn2.running_var"):
        params[k] = rng.uniform(0.5, 2.0, params[k].shape).astype(np.float32)
    cfg = TrainConfig(batch=BATCH, lr=LR)
    g, names = build_graph(spec, params, cfg)
    P = {n: i for i, n in names.items()}
    for i, nd in enumerate(g.nodes):
        if nd.op != OpCode.BATCHNORM or i < g.train_begin:
            continue
        L = nd.layer
        w, rm, rv = P[f"{L}.weight"], P[f"{L}.running_mean"], P[f"{L}.running_var"]
        eps = (nd.fattrs[0],)
        if nd.fn == OpFn.FW:
            ins, outs = [nd.inputs[0], w, P[f"{L}.bias"], rm, rv], [nd.outputs[0]]
        elif nd.fn == OpFn.BW_INPUT:
            ins, outs = [nd.inputs[0], w, rv], nd.outputs
        else:
            ins, outs = [nd.inputs[0], nd.inputs[1], rm, rv], nd.outputs
        g.nodes[i] = dataclasses.replace(nd, inputs=ins, outputs=outs, iattrs=(1,), fattrs=eps)
    prog = Program(spec, cfg, g, plan_graph(g), names)
    rt = _device(prog)
    batches = _batches(spec, 6, [BATCH] * 4)
    dev_losses = [_run(rt, x, y, train=True).loss for x, y in batches]
    model = to_torch(spec, params).double().train()
    model.bn1.eval()
    model.bn2.eval()
    ref, ref_losses = _torch_steps(spec, params, batches, [la.name for la in spec.layers], model)
    np.testing.assert_allclose(dev_losses, ref_losses, atol=LOSS_ATOL, rtol=0)
    got = _device_params(rt, prog, params)
    for k, v in ref.state_dict().items():
        if k in params:
            np.testing.assert_allclose(got[k], v.numpy(), atol=WEIGHT_ATOL, rtol=0, err_msg=k)
    for k in ("bn1.running_mean", "bn1.running_var", "bn2.running_var"):
        np.testing.assert_array_equal(got[k], params[k])


# -- (b) import ------------------------------------------------------------------------

def _seq_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 10), nn.BatchNorm1d(10, eps=1e-3, momentum=0.2), nn.ELU(0.5),
                         nn.Dropout(0.3), nn.Linear(10, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 6),
                         nn.Sigmoid(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU6(), nn.Linear(4, 3))


def _seq_conv():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, (1, 5), padding=(0, 2), bias=False), nn.BatchNorm2d(4),
                         nn.Conv2d(4, 8, (4, 1), groups=4, bias=False), nn.BatchNorm2d(8), nn.ELU(),
                         nn.AvgPool2d((1, 4)), nn.Dropout(0.25), nn.GroupNorm(2, 8), nn.Flatten(),
                         nn.Linear(32, 3))


SEQS = {"mlp": (_seq_mlp, (12,), 3), "conv": (_seq_conv, (1, 4, 16), 3)}


def _perturb_stats(module):
    """Non-trivial running statistics and affine values (as after training)."""
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.5, 0.5, generator=g)
    return module


def _same_output(a, b, shape):
    x = torch.randn((4, *shape), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    assert ya.shape == yb.shape
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", list(SEQS))
def test_from_torch_round_trip(which):
    make, shape, classes = SEQS[which]
    module = _perturb_stats(make())
    spec, params = from_torch(module, shape, classes)  # checks the outputs itself too
    types = [layer.type for layer in spec.layers]
    if which == "mlp":
        assert types == ["linear", "batchnorm", "elu", "dropout", "linear", "layernorm", "gelu", "linear",
                         "sigmoid", "linear", "tanh", "linear", "relu6", "linear"]
        assert spec.layers[1].attrs == {"eps": 1e-3, "momentum": 0.2}
        assert spec.layers[2].attrs == {"alpha": 0.5} and spec.layers[3].attrs == {"p": 0.3}
    else:
        assert types == ["conv2d", "batchnorm", "conv2d", "batchnorm", "elu", "avgpool2d", "dropout", "groupnorm",
                         "flatten", "linear"]
    bn = spec.layers[1].name
    np.testing.assert_array_equal(params[f"{bn}.running_var"], module[1].running_var.numpy())
    rebuilt = to_torch(spec, params)
    _same_output(module, rebuilt, shape)
    spec2, params2 = from_torch(rebuilt, shape, classes)
    assert [(la.type, la.attrs) for la in spec2.layers] == [(la.type, la.attrs) for la in spec.layers]
    for k in params:
        np.testing.assert_array_equal(params[k], params2[k])
    prog = compile_model(spec, params, TrainConfig(batch=2))
    assert nl.parse(build_blob(prog)).status == Status.OK


@pytest.mark.parametrize("module,shape,word", [
    (nn.BatchNorm1d(4, affine=False), (4,), "affine"),
    (nn.BatchNorm1d(4, track_running_stats=False), (4,), "track_running_stats"),
    (nn.BatchNorm1d(4, momentum=None), (4,), "momentum"),
    (nn.BatchNorm2d(4), (4, 3), "BatchNorm2d"),
    (nn.LayerNorm(4, elementwise_affine=False), (4,), "elementwise_affine"),
    (nn.LayerNorm((2, 4)), (2, 4), "normalized_shape"),
    (nn.GroupNorm(2, 4, affine=False), (4, 3), "affine"),
    (nn.GELU(approximate="tanh"), (4,), "approximate"),
    (nn.ELU(alpha=-1.0), (4,), "alpha"),
])
def test_from_torch_refuses_unsupported_settings(module, shape, word):
    with pytest.raises(ModelError, match=word):
        from_torch(nn.Sequential(module), shape, 2, check=False)


@pytest.mark.parametrize("which", list(SEQS))
def test_onnx_import(which, tmp_path):
    make, shape, classes = SEQS[which]
    module = _perturb_stats(make()).eval()
    if which == "conv":  # GroupNorm exports as a decomposition (no chain): leave it out here
        module = nn.Sequential(*[m for m in module if not isinstance(m, nn.GroupNorm)])
    path = tmp_path / f"{which}.onnx"
    x = torch.randn((1, *shape))
    torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=20,
                      input_names=["x"], output_names=["y"])
    spec, params = from_onnx(path, classes=classes)
    types = [layer.type for layer in spec.layers]
    assert "dropout" not in types  # ONNX Dropout is the eval identity
    if which == "mlp":
        assert {"batchnorm", "layernorm", "gelu", "elu", "sigmoid", "tanh", "relu6"} <= set(types)
        assert spec.layers[types.index("batchnorm")].attrs == {"eps": 1e-3, "momentum": 0.2}
        assert spec.layers[types.index("elu")].attrs == {"alpha": 0.5}
    else:  # the exporter folds each eval-mode BatchNorm2d into the conv before it
        assert types == ["conv2d", "conv2d", "elu", "avgpool2d", "flatten", "linear"]
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

    def __init__(self, model: dict, batch: int = 2):
        spec = parse_model(model)
        self.prog = compile_model(spec, init_params(spec), TrainConfig(batch=batch))
        self.g = self.prog.graph
        self.blob = build_blob(self.prog)
        self.tensors_off, self.nodes_off = struct.unpack_from("<II", self.blob, 36)

    def node(self, layer: str, op: OpCode, fn: OpFn, last: bool = True) -> int:
        hits = [i for i, nd in enumerate(self.g.nodes) if (nd.layer, nd.op, nd.fn) == (layer, op, fn)]
        return hits[-1] if last else hits[0]

    def ins(self, i: int) -> list[int]:
        return self.g.nodes[i].inputs

    def outs(self, i: int) -> list[int]:
        return self.g.nodes[i].outputs

    def T(self, name: str) -> int:
        """The tensor of that name (the eval forward's, where both forwards use the name)."""
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


DROP_BLOB = {**DROP, "layers": [DROP["layers"][0], dict(DROP["layers"][1], p=0.5), DROP["layers"][2]]}
BA, BN = Blob(MODELS["deep-ae"]), Blob(MODELS["norms"])
BN1 = Blob(MODELS["norms"], batch=1)  # batched and unbatched tensors have equal sizes
BD = Blob(DROP_BLOB)
BATCHN, LAYERN, GROUPN = OpCode.BATCHNORM, OpCode.LAYERNORM, OpCode.GROUPNORM
FW, BI, BP = OpFn.FW, OpFn.BW_INPUT, OpFn.BW_PARAM
bn_fw, bn_fw_eval = BA.node("bn1", BATCHN, FW), BA.node("bn1", BATCHN, FW, last=False)
bn_bi, bn_bp = BA.node("bn1", BATCHN, BI), BA.node("bn1", BATCHN, BP)
ln_fw, ln_bi, ln_bp = BN.node("ln1", LAYERN, FW), BN.node("ln1", LAYERN, BI), BN.node("ln1", LAYERN, BP)
gn_fw, gn_bp = BN.node("gn", GROUPN, FW), BN.node("gn", GROUPN, BP)
elu_fw, elu_bi = BA.node("act1", OpCode.ELU, FW), BA.node("act1", OpCode.ELU, BI)
r6_fw, th_bi = BA.node("act3", OpCode.RELU6, FW), BA.node("act2", OpCode.TANH, BI)
sg_fw, ge_bi = BA.node("out", OpCode.SIGMOID, FW), BN.node("ge", OpCode.GELU, BI)
do_fw, do_bi = BD.node("do", OpCode.DROPOUT, FW), BD.node("do", OpCode.DROPOUT, BI)
ln1_fw = BN1.node("ln1", LAYERN, FW)

CASES = [
    # batchnorm
    ("bn.mode", BA, [BA.n(bn_fw, "iattr0", 2)], "batchnorm: iattr[0] (mode)"),
    ("bn.unused-iattr", BA, [BA.n(bn_bi, "iattr3", 1)], "batchnorm: iattr[1..11]"),
    ("bn.zero-eps", BA, [BA.n(bn_fw, "fattr0", 0.0)], "batchnorm: eps"),
    ("bn.negative-eps", BA, [BA.n(bn_bp, "fattr0", -1e-5)], "batchnorm: eps"),
    ("bn.momentum-range", BA, [BA.n(bn_fw, "fattr1", 1.5)], "batchnorm: momentum"),
    ("bn.momentum-on-bw", BA, [BA.n(bn_bi, "fattr1", 0.1)], "batchnorm: momentum"),
    ("bn.momentum-on-eval", BA, [BA.n(bn_fw_eval, "fattr1", 0.1)], "batchnorm: momentum"),
    ("bn.fattr2", BA, [BA.n(bn_fw, "fattr2", 1.0)], "batchnorm: fattr[2..5]"),
    ("bn.fw-arity", BA, [BA.n(bn_fw, "n_out", 3), BA.n(bn_fw, "out3", 0xFFFF)], "batchnorm.fw: needs"),
    ("bn.train-fw-as-eval", BA, [BA.n(bn_fw, "iattr0", 1), BA.n(bn_fw, "fattr1", 0.0)], "batchnorm.fw: needs"),
    ("bn.eval-fw-as-train", BA, [BA.n(bn_fw_eval, "iattr0", 0), BA.n(bn_fw_eval, "fattr1", 0.1)],
     "batchnorm.fw: needs"),
    ("bn.y-shape", BA, [BA.n(bn_fw, "out0", BA.T("fc2.out"))], "batchnorm.fw: x and y"),
    ("bn.y-dtype", BA, [BA.t(BA.T("bn1.out.eval"), "dtype", ids.DType.I32)], "batchnorm.fw: x and y"),
    ("bn.gamma-shape", BA, [BA.n(bn_fw, "in1", BA.T("bn2.weight"))], "batchnorm.fw: gamma"),
    ("bn.running-var-shape", BA, [BA.n(bn_fw, "out3", BA.T("bn2.running_var"))], "batchnorm.fw: gamma"),
    ("bn.saved-size", BA, [BA.n(bn_fw, "out1", BA.T("bn2.saved"))], "batchnorm.fw: saved"),
    # y may alias x exactly (in place), never partly
    ("bn.y-overlaps-x", BA, [BA.t(BA.T("bn1.out"), "offset", BA.offset(BA.ins(bn_fw)[0]) + 8)], "batchnorm.fw: an output"),
    ("bn.saved-is-running-mean", BA, [BA.n(bn_fw, "out1", BA.T("bn1.running_mean"))], "batchnorm.fw: saved"),
    ("bn.running-mean-is-var", BA, [BA.n(bn_fw, "out2", BA.T("bn1.running_var"))], "batchnorm.fw: an output"),
    ("bn.bw-x-shape", BA, [BA.n(bn_bi, "in1", BA.T("fc2.out"))], "batchnorm.bw_input: dy, x"),
    ("bn.bw-saved", BA, [BA.n(bn_bi, "in3", BA.T("bn1.running_mean"))], "batchnorm.bw_input: gamma"),
    ("bn.bw-dx-is-x", BA, [BA.n(bn_bi, "out0", BA.ins(bn_bi)[1])], "batchnorm.bw_input: dx overlaps"),
    ("bn.bw_param-arity", BA, [BA.n(bn_bp, "n_out", 1), BA.n(bn_bp, "out1", 0xFFFF)], "batchnorm.bw_param: needs"),
    ("bn.bw_param-db-is-dg", BA, [BA.n(bn_bp, "out1", BA.outs(bn_bp)[0])], "batchnorm.bw_param: dgamma"),
    ("bn.bw_param-dg-shape", BA, [BA.n(bn_bp, "out0", BA.T("bn2.weight.grad"))], "batchnorm.bw_param: dgamma"),
    # layernorm
    ("ln.iattr", BN, [BN.n(ln_fw, "iattr0", 1)], "layernorm: iattrs"),
    ("ln.eps", BN, [BN.n(ln_bi, "fattr0", 0.0)], "layernorm: eps"),
    ("ln.fattr1", BN, [BN.n(ln_fw, "fattr1", 0.5)], "layernorm: fattr[1..5]"),
    ("ln.fw-arity", BN, [BN.n(ln_fw, "n_out", 1), BN.n(ln_fw, "out1", 0xFFFF)], "layernorm.fw: needs"),
    ("ln.gamma-shape", BN, [BN.n(ln_fw, "in1", BN.T("gn.weight"))], "layernorm.fw: gamma"),
    ("ln.saved-size", BN, [BN.n(ln_fw, "out1", BN.T("gn.saved"))], "layernorm.fw: saved"),
    ("ln.saved-unbatched", BN1, [BN1.t(BN1.T("ln1.saved"), "flags", 0)], "layernorm.fw: saved"),
    ("ln.y-overlaps-x", BN, [BN.t(BN.T("ln1.out"), "offset", BN.offset(BN.T("sg.out")) + 8)], "layernorm.fw: y or saved"),
    ("ln.bw-dx-is-x", BN, [BN.n(ln_bi, "out0", BN.ins(ln_bi)[1])], "layernorm.bw_input: dx overlaps"),
    ("ln.bw-x-shape", BN, [BN.n(ln_bi, "in1", BN.T("tok.out"))], "layernorm.bw_input: dy, x"),
    ("ln.bw_param-dbeta", BN, [BN.n(ln_bp, "out1", BN.T("tok.bias.grad"))], "layernorm.bw_param: dgamma"),
    # groupnorm
    ("gn.zero-groups", BN, [BN.n(gn_fw, "iattr0", 0)], "groupnorm: zero groups"),
    ("gn.groups-not-dividing", BN, [BN.n(gn_fw, "iattr0", 3)], "groupnorm: groups does not divide"),
    ("gn.groups-vs-saved", BN, [BN.n(gn_bp, "iattr0", 4)], "groupnorm: gamma, beta"),
    ("gn.unused-iattr", BN, [BN.n(gn_fw, "iattr1", 1)], "groupnorm: iattr[1..11]"),
    ("gn.eps", BN, [BN.n(gn_fw, "fattr0", -1.0)], "groupnorm: eps"),
    ("gn.arity", BN, [BN.n(gn_bp, "n_in", 4), BN.n(gn_bp, "in3", 0)], "groupnorm: needs"),
    ("gn.x-rank", BN, [BN.n(gn_fw, "in0", BN.T("fl.out")), BN.n(gn_fw, "out0", BN.T("ln2.out"))],
     "groupnorm: gamma"),
    ("gn.y-shape", BN, [BN.n(gn_fw, "out0", BN.T("tok.out"))], "groupnorm: x, y"),
    ("gn.dgamma-is-dy", BN, [BN.n(gn_bp, "out0", BN.ins(gn_bp)[0])], "groupnorm"),
    # activations
    ("elu.negative-alpha", BA, [BA.n(elu_fw, "fattr0", -1.0)], "elu: alpha"),
    ("elu.bw-fattr1", BA, [BA.n(elu_bi, "fattr1", 1.0)], "elu: alpha"),
    ("relu6.fattr", BA, [BA.n(r6_fw, "fattr0", 1.0)], "relu6: attributes"),
    ("sigmoid.iattr", BA, [BA.n(sg_fw, "iattr0", 1)], "sigmoid: attributes"),
    ("tanh.arity", BA, [BA.n(th_bi, "n_in", 1), BA.n(th_bi, "in1", 0xFFFF)], "tanh.bw_input: needs"),
    ("tanh.shape", BA, [BA.n(th_bi, "in1", BA.T("fc1.out"))], "tanh: x, y"),
    ("gelu.bw-x-shape", BN, [BN.n(ge_bi, "in1", BN.T("tok.out"))], "gelu: x, y"),
    ("sigmoid.y-partially-over-x", BA,
     [BA.t(BA.T("out.out"), "offset", BA.offset(BA.T("fc4.out")) + 8)], "sigmoid: the output partially"),
    ("gelu.fn", BN, [BN.n(ge_bi, "fn", OpFn.BW_PARAM)], "fn"),
    # dropout
    ("dropout.mode", BD, [BD.n(do_fw, "iattr0", 2)], "dropout: iattr[0] (mode)"),
    ("dropout.eval-bw", BD, [BD.n(do_bi, "iattr0", 1)], "dropout: iattr[0] (mode)"),
    ("dropout.unused-iattr", BD, [BD.n(do_fw, "iattr5", 1)], "dropout: iattr[1..11]"),
    ("dropout.p-range", BD, [BD.n(do_fw, "fattr0", 1.5)], "dropout: p"),
    ("dropout.p-negative", BD, [BD.n(do_bi, "fattr0", -0.5)], "dropout: p"),
    ("dropout.fattr1", BD, [BD.n(do_fw, "fattr1", 0.5)], "dropout: fattr[1..5]"),
    ("dropout.fw-arity", BD, [BD.n(do_fw, "n_out", 2), BD.n(do_fw, "out2", 0xFFFF)], "dropout.fw: needs"),
    ("dropout.eval-with-mask", BD, [BD.n(do_fw, "iattr0", 1), BD.n(do_fw, "fattr0", 0.0)], "dropout.fw: needs"),
    ("dropout.mask-size", BD, [BD.t(BD.T("do.mask"), "dims", (2, 1, 1, 1))], "dropout.fw: mask"),
    ("dropout.mask-dtype", BD, [BD.n(do_fw, "out1", BD.T("fc1.out"))], "dropout.fw: mask"),
    ("dropout.state-dtype", BD, [BD.t(BD.T("do.rng_state"), "dtype", ids.DType.F32)], "dropout.fw: state"),
    ("dropout.state-is-mask", BD, [BD.n(do_fw, "out2", BD.T("do.mask"))], "dropout.fw: state"),
    ("dropout.state-over-mask", BD, [BD.t(BD.T("do.rng_state"), "offset", BD.offset(BD.T("do.mask")))],
     "dropout.fw: mask or state overlaps"),
    ("dropout.y-partially-over-x", BD,
     [BD.t(BD.T("do.out"), "offset", BD.offset(BD.ins(do_fw)[0]) + 8)], "dropout.fw: y partially"),
    ("dropout.bw-mask", BD, [BD.n(do_bi, "in1", BD.T("do.rng_state"))], "dropout.bw_input: mask"),
    ("dropout.bw-dx-is-mask", BD, [BD.n(do_bi, "out0", BD.T("do.mask"))], "dropout.bw_input"),
]


def test_valid_blobs_parse():
    for b in (BA, BN, BN1, BD):
        p = nl.parse(b.blob)
        assert (p.status, p.why) == (Status.OK, "")


@pytest.mark.parametrize("blob,edits,word", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_corrupted_node_is_refused(blob, edits, word):
    p = nl.parse(blob.patched(*edits))
    assert p.status == Status.BAD_BLOB == 11, p.why
    assert word in p.why


def test_eval_mode_dropout_node_is_accepted():
    """The eval fw (x) → (y), mode 1, p 0, which the compiler does not emit (the eval
    forward of dropout is no node), parses; in place too."""
    g = BD.g
    x, y = BD.ins(do_fw)[0], BD.outs(do_fw)[0]
    edits = [BD.n(do_fw, "iattr0", 1), BD.n(do_fw, "fattr0", 0.0), BD.n(do_fw, "n_out", 1),
             BD.n(do_fw, "out1", 0xFFFF), BD.n(do_fw, "out2", 0xFFFF)]
    assert nl.parse(BD.patched(*edits)).status == Status.OK
    assert nl.parse(BD.patched(*edits, BD.n(do_fw, "out0", x))).status == Status.OK
    assert g.tensors[y].dims == g.tensors[x].dims


@pytest.mark.skipif(os.environ.get("EP_NATIVE_VARIANT") == "sanitize", reason="already sanitized")
def test_under_sanitizers():
    """The device-side tests again against the -fsanitize=address,undefined library:
    any UB in an adapter or in prepare() reading a corrupted node aborts."""
    here = Path(__file__)
    cmd = [sys.executable, "-m", "pytest", "-q", "--capture=sys", "-p", "no:cacheprovider",
           "-k", "test_sgd_steps or test_corrupted_node or test_valid_blobs or test_dropout or test_batchnorm_eval",
           str(here)]
    nl.build("sanitize")
    proc = subprocess.run(cmd, check=False, env=nl.sanitized_env(), capture_output=True, text=True,
                          cwd=here.parent.parent, timeout=600)
    assert proc.returncode == 0, proc.stderr[:6000] + proc.stdout[-3000:]
    assert " passed" in proc.stdout
