"""Int8 training of whole models: the device matches the NumPy reference bit for bit,
step after step, and learns about as well as fp32.

The reference is host.executor (the fake device's engine), whose int8 ops are
host.quant's NumPy arithmetic written from the maths; f32 master weights are
stepped by the same single-precision SGD on both sides. After every TRAIN step
every parameter (f32 masters, int8 codes, exponents) must be identical, bit for
bit. The one float island, softmax cross-entropy, is computed by libm's expf/logf
on the device and in float64 by the reference, so the loss it reports may differ
in its last bits (rtol 1e-6); its gradient enters the integer backward through
QUANTIZE, which only a rounding tie could tell apart — the seeded runs here have
none, and a real arithmetic difference would change codes at once. Per-op bit-exactness (every fn, the SIMD and portable kernels, every
board) is tests/test_ops_int8.py's.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import native_lib as nl
from host.blob import build_blob, parse_blob
from host.compiler import TrainConfig, compile_model
from host.datasets import load_dataset
from host.device import Batch
from host.executor import BlobExecutor
from host.graph import NUMPY_DTYPE
from host.ids import DTYPE_BYTES, DType, OpCode, OpFn
from host.importer import resolve_model
from host.zoo import init_params, load_model

BATCH = 16


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def program(dtype: str, strategy: str = "full", lr: float = 0.5, int8_updates: str = "master"):
    spec = load_model("mlp-digits")
    return compile_model(spec, init_params(spec, seed=3), TrainConfig(batch=BATCH, lr=lr, dtype=dtype,
                                                                      strategy=strategy, int8_updates=int8_updates))


def batches(ds, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        sel = rng.choice(len(ds.y_train), BATCH, replace=False)
        yield ds.x_train[sel].astype(np.float32), ds.y_train[sel]


def params_of(prog, arena: np.ndarray) -> dict[str, bytes]:
    """Every parameter's bytes in an arena laid out by prog's plan (any dtype)."""
    out = {}
    for i, name in prog.param_names.items():
        t = prog.graph.tensors[i]
        off = prog.plan.offsets[i]
        out[name] = bytes(arena[off:off + t.elems * DTYPE_BYTES[t.dtype]])
    return out


def random_steps(prog, steps: int = 3, batch: int = 4) -> tuple[list[float], dict[str, bytes]]:
    """The losses of `steps` TRAIN steps on seeded random batches on the C runtime, and
    every parameter's bytes after them: two programs that compute the same bits agree."""
    spec = prog.spec
    rng = np.random.default_rng(0)
    rt = nl.Runtime(build_blob(prog), arena_bytes=max(1 << 20, prog.plan.arena_bytes))
    losses = []
    for _ in range(steps):
        x = rng.standard_normal((batch, *spec.input)).astype(np.float32)
        y = bytes(rng.integers(0, spec.classes, batch).astype(np.uint8))
        st, why, r = rt.run(y, x.tobytes(), train=True)
        assert st == 0, why
        losses.append(r.loss)
    return losses, params_of(prog, rt.arena)


def steps_on_one_batch(prog, dataset: str, seed: int, steps: int) -> list[float]:
    """The losses of `steps` TRAIN steps on the C runtime, all on one real batch of
    `dataset` (max_batch training samples drawn with `seed`): they must fall."""
    ds = load_dataset(dataset)
    b = prog.graph.max_batch
    sel = np.random.default_rng(seed).choice(len(ds.y_train), b, replace=False)
    x, y = ds.x_train[sel].astype(np.float32).tobytes(), bytes(ds.y_train[sel].astype(np.uint8))
    rt = nl.Runtime(build_blob(prog), arena_bytes=max(1 << 20, prog.plan.arena_bytes))
    losses = []
    for _ in range(steps):
        st, why, r = rt.run(y, x, train=True)
        assert st == 0, why
        losses.append(r.loss)
    return losses


@pytest.mark.parametrize("dtype, strategy, updates", [("int8", "full", "master"), ("mixed", "last", "master"),
                                                      ("int8", "last", "master"), ("int8", "full", "sr"),
                                                      ("int8", "last", "sr")])
def test_int8_steps_match_the_numpy_reference_bit_for_bit(digits, dtype, strategy, updates):
    """Every step, every parameter: f32 masters + REQUANT_WEIGHTS, or codes stepped by SGD_Q8
    (its stochastic rounding included: the xorshift32 state is a parameter too)."""
    prog = program(dtype, strategy, int8_updates=updates)
    ops = {n.op for n in prog.graph.nodes}
    assert OpCode.LINEAR_Q8 in ops and OpCode.QUANTIZE in ops
    assert (OpCode.REQUANT_WEIGHTS in ops) == (dtype == "int8" and updates == "master")
    assert (OpCode.SGD_Q8 in ops) == (updates == "sr")
    prog_q8 = {n.layer for n in prog.graph.nodes if n.op == OpCode.LINEAR_Q8}
    blob = build_blob(prog)
    rt = nl.Runtime(blob, arena_bytes=max(1 << 20, prog.plan.arena_bytes))
    ref = BlobExecutor(parse_blob(blob))
    for step, (x, y) in enumerate(batches(digits, 8)):
        st, why, r = rt.run(bytes(y.astype(np.uint8)), x.tobytes(), train=True)
        assert st == 0, why
        loss, correct = ref.run_decoded(x, bytes(y.astype(np.uint8)), train=True)
        assert r.correct == correct and r.loss == pytest.approx(loss, rel=1e-6), f"step {step}"
        dev, want = params_of(prog, rt.arena), params_of(prog, ref.arena)
        for i, name in prog.param_names.items():
            if prog.graph.tensors[i].dtype == DType.F32 and name.split(".")[0] not in prog_q8:
                # an fp32 layer (mixed): float sums in another order (C tiles with FMA)
                np.testing.assert_allclose(np.frombuffer(dev[name], np.float32), np.frombuffer(want[name], np.float32),
                                           rtol=1e-5, atol=1e-7, err_msg=f"step {step}: {name}")
            else:  # int8 codes, exponents, and the f32 masters of int8 layers: bit for bit
                assert dev[name] == want[name], f"step {step}: {name}"


def test_frozen_int8_layers_keep_only_their_codes():
    """mixed + last: fc1 runs in int8 and keeps no f32 weights on the device."""
    prog = program("mixed", "last")
    names = set(prog.param_names.values())
    assert "fc1.weight" not in names and "fc1.weight.q8" in names and "fc1.weight.exp" in names
    assert "fc2.weight" in names and "fc2.weight.q8" not in names  # the trained classifier: fp32
    g = prog.graph
    assert g.tensors[g.index("fc1.weight.q8")].dtype == DType.S8


def test_sr_updates_keep_no_f32_copy_and_export_f32_weights(digits):
    """int8_updates sr: the trained layers exist only as codes (the arena saves about what
    the f32 masters take), and the weights a run saves include their f32 values (codes · 2^e)."""
    from host.layers.q8 import dequantized

    master, sr = program("int8", int8_updates="master"), program("int8", int8_updates="sr")
    names = set(sr.param_names.values())
    assert "fc1.weight" not in names and "fc2.bias" not in names and "int8.sgd_rng" in names
    masters = sum(master.plan.sizes[i] for i in master.graph.trainable if master.graph.tensors[i].dtype == DType.F32)
    assert masters > 9000 and master.plan.arena_bytes - sr.plan.arena_bytes > 0.9 * masters
    rt = nl.Runtime(build_blob(sr), arena_bytes=1 << 20)
    for x, y in batches(digits, 5):
        assert rt.run(bytes(y.astype(np.uint8)), x.tobytes(), train=True)[0] == 0
    raw = params_of(sr, rt.arena)
    values = {n: np.frombuffer(raw[n], NUMPY_DTYPE[sr.graph.tensors[i].dtype]).reshape(sr.graph.tensors[i].dims)
              for i, n in sr.param_names.items()}
    f32 = dequantized(sr, values)
    assert set(f32) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    e = values["fc1.weight.exp"].astype(np.int64)[:, None]
    np.testing.assert_array_equal(f32["fc1.weight"], values["fc1.weight.q8"] * np.exp2(e).astype(np.float32))


def test_auto_int8_updates_pick_sr_only_where_masters_do_not_fit():
    spec = load_model("mlp-digits")
    params = init_params(spec, seed=3)
    cfg = TrainConfig(batch=BATCH, lr=0.5, dtype="int8")  # int8_updates "auto"
    master = compile_model(spec, params, cfg, arena_limit=1 << 20)
    assert master.config.int8_updates == "master"
    tight = compile_model(spec, params, cfg, arena_limit=master.plan.arena_bytes - 1)
    assert tight.config.int8_updates == "sr" and tight.plan.arena_bytes < master.plan.arena_bytes
    # Adam has no int8-code form: auto keeps masters and the too-small arena is refused
    from host.errors import ModelError
    with pytest.raises(ModelError, match="needs a"):
        compile_model(spec, params, TrainConfig(batch=BATCH, lr=1e-3, dtype="int8", optimizer="adam"),
                      arena_limit=master.plan.arena_bytes - 1)
    with pytest.raises(ModelError, match="plain SGD"):
        TrainConfig(dtype="int8", optimizer="adam", int8_updates="sr").validate()


@pytest.mark.emulated
@pytest.mark.parametrize("updates", ["master", "sr"])
def test_int8_steps_on_the_emulated_cortex_m4f_match_the_reference(request, digits, updates):
    """The SMLAD kernels of the M4F, through the serial protocol, against the same reference."""
    from conftest import board_device

    prog = program("int8", int8_updates=updates)
    blob = build_blob(prog)
    ref = BlobExecutor(parse_blob(blob))
    with board_device(request, "mps2-an386") as dev:
        dev.load(blob)
        for x, y in batches(digits, 4):
            r = dev.train(Batch.from_arrays(x, y))
            loss, _ = ref.run_decoded(x, bytes(y.astype(np.uint8)), train=True)
            assert r.loss == pytest.approx(loss, rel=1e-6)
        got = dev.read_params(prog)
    want = params_of(prog, ref.arena)
    for i, name in prog.param_names.items():
        t = prog.graph.tensors[i]
        assert np.asarray(got[name]).astype(NUMPY_DTYPE[t.dtype]).tobytes() == want[name], name


def test_int8_training_learns_about_as_well_as_fp32(digits):
    """A short run (3 epochs of digits from random weights): int8 ends within 3 points of
    fp32 on the held-out split, with f32 masters and with the codes trained in place. The 1.5-point target on the shipped models with real
    data (EEG, EOG, Fashion-MNIST) is measured by `python -m host.results` (docs/results.md)."""
    acc = {}
    for dtype, updates in (("fp32", "master"), ("int8", "master"), ("int8", "sr")):
        prog = program(dtype, int8_updates=updates)
        rt = nl.Runtime(build_blob(prog), arena_bytes=max(1 << 20, prog.plan.arena_bytes))
        rng = np.random.default_rng(0)
        for _ in range(3):
            order = rng.permutation(len(digits.y_train))
            for s in range(0, len(order) - BATCH + 1, BATCH):
                sel = order[s:s + BATCH]
                st, why, _ = rt.run(bytes(digits.y_train[sel].astype(np.uint8)),
                                    digits.x_train[sel].astype(np.float32).tobytes(), train=True)
                assert st == 0, why
        correct = 0
        for s in range(0, len(digits.y_test), BATCH):
            y = digits.y_test[s:s + BATCH]
            st, why, r = rt.run(bytes(y.astype(np.uint8)), digits.x_test[s:s + BATCH].astype(np.float32).tobytes(),
                                train=False)
            correct += r.correct
        acc[dtype, updates] = correct / len(digits.y_test)
    fp32 = acc["fp32", "master"]
    assert fp32 > 0.85
    assert acc["int8", "master"] >= fp32 - 0.03 and acc["int8", "sr"] >= fp32 - 0.03, acc


def test_every_shipped_model_compiles_and_loads_in_int8_and_mixed():
    """Every shipped model has int8 (and mixed) programs the runtime accepts: layers without
    an int8 form (norms, ELU, attention, pools) run in fp32 between QUANTIZE/DEQUANTIZE."""
    from host.zoo import model_names

    for name in model_names():
        spec, params = resolve_model(name, 0)
        for dtype, strategy in (("int8", "full"), ("mixed", "last")):
            prog = compile_model(spec, params, TrainConfig(batch=4, dtype=dtype, strategy=strategy))
            assert any(n.op in (OpCode.LINEAR_Q8, OpCode.CONV2D_Q8) for n in prog.graph.nodes), (name, dtype)
            nl.Runtime(build_blob(prog), arena_bytes=max(1 << 20, prog.plan.arena_bytes))


#: int8 convs around group norms (no int8 form): each norm's f32 input is a DEQUANTIZE
#: output its backward reads again
GN_INT8 = {"name": "gn-int8", "input": [2, 16, 16], "classes": 3, "dataset": "images",
           "loss": "softmax_cross_entropy", "layers": [
               {"type": "conv2d", "name": "c1", "out": 8, "kernel": 3, "padding": 1},
               {"type": "groupnorm", "name": "gn1", "groups": 2},
               {"type": "relu", "name": "r1"},
               {"type": "conv2d", "name": "c2", "out": 8, "kernel": 3, "padding": 1},
               {"type": "groupnorm", "name": "gn2", "groups": 2},
               {"type": "relu", "name": "r2"},
               {"type": "global_avgpool", "name": "g"},
               {"type": "linear", "name": "fc", "out": 3}]}


@pytest.mark.parametrize("name", ["deepae-digits", "gn-int8"])
def test_redequantized_backward_inputs_change_no_bit_and_save_memory(monkeypatch, name):
    """passes.redequantize: a DEQUANTIZE output an f32 backward reads again (an f32 norm's
    saved input) is dequantized anew there instead of living across the forward.
    The same steps with and without the pass give the same losses and parameters, bit for
    bit, on the C runtime, and the pass lowers the activation peak (of the group-norm
    model; the shipped models have int8 forms of nearly every such layer now)."""
    from host import passes
    from host.bench_int8 import live_peak
    from host.zoo import parse_model

    if name == "gn-int8":
        spec = parse_model(GN_INT8)
        params = init_params(spec, seed=0)
    else:
        spec, params = resolve_model(name, 0)
    cfg = TrainConfig(batch=4, lr=1e-3, optimizer="adam", dtype="int8")
    prog = compile_model(spec, params, cfg)
    with monkeypatch.context() as m:
        m.setattr(passes, "redequantize", lambda g, max_nodes, max_tensors: 0)
        plain = compile_model(spec, params, cfg)
    extra = [n for n in prog.graph.nodes if n.op == OpCode.DEQUANTIZE and n.outputs[0] >= len(plain.graph.tensors)]
    assert extra and len(prog.graph.nodes) == len(plain.graph.nodes) + len(extra)
    assert all(prog.graph.nodes.index(n) >= prog.graph.train_loss_end for n in extra)  # in the backward
    assert live_peak(prog) <= live_peak(plain) and (name != "gn-int8" or live_peak(prog) < live_peak(plain))
    assert random_steps(plain) == random_steps(prog)



def test_int8_batch_norm_between_int8_layers_changes_no_bit(monkeypatch):
    """eegnet-scp1's first batch norm sits between two int8 convs: under --dtype int8 it is
    one BATCHNORM_Q8 (stats and train forward, both backwards) instead of DEQUANTIZE →
    BATCHNORM → QUANTIZE, which it computes bit for bit, without the f32 tensors. Three
    steps with and without the int8 form: the same losses and parameters, bit for bit,
    and a lower activation peak. (With pooling and dropout kept in f32, the other batch
    norms and ELUs feed an f32 layer and stay f32: an int8 output there would be a
    rounding the f32 program does not make.)"""
    from host.bench_int8 import live_peak
    from host.layers.conv_pool import AvgPool2d
    from host.layers.norm_act import BatchNorm, Dropout

    spec, params = resolve_model("eegnet-scp1", 0)
    cfg = TrainConfig(batch=4, lr=1e-3, optimizer="adam", dtype="int8")
    with monkeypatch.context() as m:  # pooling and dropout in f32: bn2, bn3 (→ ELU → pool) stay f32
        m.setattr(AvgPool2d, "int8", False)
        m.setattr(Dropout, "int8", False)
        prog = compile_model(spec, params, cfg)
        m.setattr(BatchNorm, "int8", False)
        plain = compile_model(spec, params, cfg)
    layers = {n.layer for n in prog.graph.nodes if n.op == OpCode.BATCHNORM_Q8}
    assert layers == {"bn1"}, layers
    assert not any(n.op == OpCode.BATCHNORM_Q8 for n in plain.graph.nodes)
    assert live_peak(prog) < 0.8 * live_peak(plain)
    assert random_steps(plain) == random_steps(prog)


def test_int8_batch_norm_and_activations_train_cnn_fashion():
    """cnn-fashion under --dtype int8 runs int8 from its first conv to its classifier: batch
    norms, ReLU6s, the residual add and the global pool as BATCHNORM_Q8, ACT_Q8, ADD_Q8 and
    GLOBAL_AVGPOOL_Q8, and the gradient of the tensor that feeds both the block and the
    skip summed by ADD_Q8.
    A few SGD steps on real Fashion-MNIST batches lower the loss on those batches."""
    spec, params = resolve_model("cnn-fashion", 0)
    prog = compile_model(spec, params, TrainConfig(batch=16, lr=0.05, optimizer="sgd", dtype="int8"))
    g = prog.graph
    ops = {n.op for n in g.nodes[g.train_begin:]}
    assert {OpCode.BATCHNORM_Q8, OpCode.ACT_Q8, OpCode.ADD_Q8, OpCode.GLOBAL_AVGPOOL_Q8} <= ops
    assert not ops & {OpCode.BATCHNORM, OpCode.RELU6, OpCode.ADD, OpCode.GLOBAL_AVGPOOL}
    assert sum(n.op == OpCode.ADD_Q8 for n in g.nodes[g.train_loss_end:]) == 1  # stem_act's gradient sum
    losses = steps_on_one_batch(prog, "images", seed=1, steps=8)
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses


def test_per_sample_sums_change_no_bit_and_fit_where_batch_sums_do_not():
    """TrainConfig.int8_sums "sample": the int8 convs keep one sample's int32 sums (CONV2D_Q8
    iattr[9]) and make them twice. Three steps of eegnet-scp1 give the same losses and
    parameters as with the whole batch's sums, with a smaller arena; "auto" picks it when
    only it fits the arena, and says so in the program's config."""
    spec, params = resolve_model("eegnet-scp1", 0)
    cfg = TrainConfig(batch=4, lr=1e-3, optimizer="adam", dtype="int8")
    progs = [compile_model(spec, params, replace(cfg, int8_sums=s)) for s in ("batch", "sample")]
    assert progs[1].plan.arena_bytes < progs[0].plan.arena_bytes
    assert any(n.op == OpCode.CONV2D_Q8 and len(n.iattrs) == 10 and n.iattrs[9] == 1 for n in progs[1].graph.nodes)
    assert random_steps(progs[0]) == random_steps(progs[1])
    limit = (progs[0].plan.arena_bytes + progs[1].plan.arena_bytes) // 2
    auto = compile_model(spec, params, cfg, arena_limit=limit)
    assert auto.config.int8_sums == "sample" and auto.plan.arena_bytes == progs[1].plan.arena_bytes
    assert compile_model(spec, params, cfg).config.int8_sums == "batch"



def test_eegnet_runs_int8_from_conv_to_conv():
    """By default every layer of eegnet-scp1 between its convs has an int8 form: batch norm,
    ELU, average pooling and dropout (BATCHNORM_Q8, ACT_Q8, AVGPOOL2D_Q8, DROPOUT_Q8), so
    its training program holds no f32 activation but the loss's; it trains on the C
    runtime (a few Adam steps on real SCP1 trials lower the loss on them)."""
    spec, params = resolve_model("eegnet-scp1", 0)
    prog = compile_model(spec, params, TrainConfig(batch=16, lr=1e-3, optimizer="adam", dtype="int8"))
    g = prog.graph
    ops = {n.op for n in g.nodes[g.train_begin:g.train_loss_end]}
    assert {OpCode.BATCHNORM_Q8, OpCode.ACT_Q8, OpCode.AVGPOOL2D_Q8, OpCode.DROPOUT_Q8} <= ops
    assert not ops & {OpCode.BATCHNORM, OpCode.ELU, OpCode.AVGPOOL2D, OpCode.DROPOUT}
    losses = steps_on_one_batch(prog, "eeg", seed=2, steps=10)
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0], losses


def _stale_reads(g) -> list[str]:
    """Nodes that read a QUANTIZE/DEQUANTIZE output after its source was written again."""
    made = {}  # conversion output → (its source, node index)
    bad = []
    for k, n in enumerate(g.nodes):
        for t in n.inputs:
            if t in made:
                src, at = made[t]
                if any(src in m.outputs for m in g.nodes[at + 1:k]):
                    bad.append(n.describe(g))
        if n.op in (OpCode.QUANTIZE, OpCode.DEQUANTIZE):
            made[n.outputs[0]] = (n.inputs[0], k)
    return bad


def test_cct_trains_with_int8_attention_and_max_pools():
    """cct-fashion under --dtype int8 runs int8 from its first conv to its classifier: the
    tokenizer's max pools, the token transpose, attention, layer norms, residual adds and
    the sequence pooling as MAXPOOL2D_Q8, TRANSPOSE over codes, MHSA_Q8 (saved Q, K, V and
    probabilities as int8 codes), LAYERNORM_Q8, ADD_Q8 and SEQPOOL_Q8; no f32 activation
    is left but the loss's. The
    residual stream's gradient is summed in place (ACCUMULATE) between the layers that
    read it: each reads codes of its current value, not of an earlier one. A few Adam
    steps on one real Fashion-MNIST batch lower the loss on it."""
    spec, params = resolve_model("cct-fashion", 0)
    prog = compile_model(spec, params, TrainConfig(batch=8, lr=1e-3, optimizer="adam", dtype="int8"))
    g = prog.graph
    ops = {n.op for n in g.nodes[g.train_begin:]}
    assert {OpCode.MHSA_Q8, OpCode.MAXPOOL2D_Q8, OpCode.LAYERNORM_Q8, OpCode.ADD_Q8, OpCode.SEQPOOL_Q8} <= ops
    assert not ops & {OpCode.MHSA, OpCode.MAXPOOL2D, OpCode.LAYERNORM, OpCode.ADD, OpCode.SEQPOOL, OpCode.ACCUMULATE}
    assert all(g.tensors[n.inputs[0]].dtype == DType.S8 for n in g.nodes if n.op == OpCode.TRANSPOSE)
    assert all(g.tensors[i].dtype == DType.S8 for i in range(len(g.tensors)) if g.tensors[i].name.endswith("attn.saved"))
    assert _stale_reads(g) == []
    losses = steps_on_one_batch(prog, "images", seed=1, steps=8)
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses
