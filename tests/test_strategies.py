"""Training strategies train what they say, as PyTorch does with the rest frozen.

For every shipped model and the strategies bias, lora=2 and sparse (a fixed
channel choice here; test_sparse_choice covers the Fisher choice): three SGD
steps on the runtime (host build through ctypes; and the emulated Cortex-M4F for
two models) against the same steps in PyTorch where only the strategy's
parameters train:

- bias: requires_grad on the biases alone;
- lora: adapters added to the PyTorch modules as forward hooks
  (y + B·(A·x)), base weights frozen;
- sparse: weights and biases of the chosen layers train, and the gradient rows
  of the channels not chosen are zeroed before the SGD step (plain SGD without
  weight decay leaves a row with zero gradient exactly where it was).

Tolerances are those of test_models_golden (20 × PyTorch-float32's own drift
from the float64 reference, + 1e-6): see that module's docstring for why.
Parameters the strategy does not train must come back bit-identical.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from host.blob import build_blob
from host.compiler import TrainConfig, compile_model
from host.device import Batch
from host.errors import ModelError
from host.finetune import TorchFinetune, adapter
from host.importer import to_torch
from host.strategies import merge_lora, select
from host.zoo import init_params, load_model, model_names
from test_models_golden import TOL_FACTOR, TOL_FLOOR, batches, train_on_host_build, without_dropout

LR = 0.05
STRATEGIES = ["bias", "lora=2", "sparse"]


def fixed_channels(spec):
    """A sparse choice without data: every other output channel of the last two weighted
    layers that can train single channels, the whole layer otherwise."""
    from host.layers import rule_for

    picks = []
    for layer, s in zip(spec.layers, spec.in_shapes()):
        if layer.type not in ("linear", "conv2d", "conv1d"):
            continue
        ok = layer.type == "linear" or rule_for(layer.type).sparse_ok(layer, s)
        out = layer["out"]
        picks.append((layer.name, tuple(range(0, out, 2)) if ok and out > 1 else tuple(range(out))))
    return tuple(picks[-2:])


def config(spec, strategy: str) -> TrainConfig:
    cfg = TrainConfig(batch=4, lr=LR, strategy=strategy)
    return dataclasses.replace(cfg, train_channels=fixed_channels(spec)) if strategy == "sparse" else cfg


def torch_strategy_steps(spec, params, prog, data, dtype):
    """The same SGD steps in PyTorch (dtype), training what prog's strategy trains."""
    init = {n: prog.graph.tensors[i].init for i, n in prog.param_names.items()}
    ref = TorchFinetune(spec, params, prog.config, dtype, adapters=init)
    losses = [ref.step(x, y) for x, y in data]
    return losses, ref.state()


def check(spec, params, prog, data, dev_losses, dev_state):
    ref_losses, ref = torch_strategy_steps(spec, params, prog, data, torch.float64)
    f32_losses, f32 = torch_strategy_steps(spec, params, prog, data, torch.float32)
    tol = TOL_FACTOR * np.abs(np.subtract(f32_losses, ref_losses)).max() + TOL_FLOOR * 10
    np.testing.assert_allclose(dev_losses, ref_losses, rtol=0, atol=tol, err_msg="losses")
    assert set(dev_state) == set(ref)
    for name, want in ref.items():
        tol = TOL_FACTOR * np.abs(f32[name] - want).max() + TOL_FLOOR
        np.testing.assert_allclose(np.asarray(dev_state[name], np.float64).reshape(want.shape), want,
                                   rtol=0, atol=tol, err_msg=f"{spec.name}: {name}")
    # what the strategy does not train comes back bit for bit
    sel = select(spec, prog.config.strategy, None, prog.config.train_channels)
    buffers = spec.buffer_names()
    moved = 0
    for i, name in prog.param_names.items():
        start = prog.graph.tensors[i].init
        got = np.asarray(dev_state[name], np.float32).reshape(start.shape)
        layer, _, local = name.partition(".")
        if name in buffers:
            continue
        if name not in sel.trainable:
            assert np.array_equal(got, start), f"{name} changed but does not train"
        elif layer in sel.channels and local in ("weight", "bias"):
            frozen = np.setdiff1d(np.arange(start.shape[0]), sel.channels[layer])
            assert np.array_equal(got[frozen], start[frozen]), f"{name}: untrained channels changed"
        moved += name in sel.trainable and not np.array_equal(got, start)
    # (a bias right before a batch norm has gradient 0: not every trained tensor moves)
    assert moved, "nothing trained"


def case(name: str, strategy: str):
    spec = without_dropout(load_model(name))
    params = init_params(spec, seed=1)
    prog = compile_model(spec, params, config(spec, strategy))
    return spec, params, prog, batches(spec)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", model_names())
def test_strategy_trains_like_pytorch_with_the_rest_frozen(name, strategy):
    spec, params, prog, data = case(name, strategy)
    losses, state = train_on_host_build(prog, data)
    check(spec, params, prog, data, losses, state)


@pytest.mark.emulated
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", ["eegnet-scp1", "cct-fashion"])
def test_strategy_trains_on_the_emulated_cortex_m4f(name, strategy, request):
    from conftest import board_device

    spec, params, prog, data = case(name, strategy)
    with board_device(request, "mps2-an386") as dev:
        dev.load(build_blob(prog))
        losses = [dev.train(Batch.from_arrays(x, y)).loss for x, y in data]
        state = dev.read_params(prog)
    check(spec, params, prog, data, losses, state)


def test_the_check_catches_a_frozen_parameter_that_moved():
    spec, params, prog, data = case("mlp-digits", "bias")
    losses, state = train_on_host_build(prog, data)
    state = dict(state)
    state["fc1.weight"] = state["fc1.weight"] + np.float32(1e-3)
    with pytest.raises(AssertionError):
        check(spec, params, prog, data, losses, state)


def test_graphs_hold_backward_work_only_where_gradients_are_needed():
    spec = load_model("cct-fashion")
    params = init_params(spec, seed=1)
    ops = lambda strategy: [(n.op.name, n.fn.name, n.layer) for n in  # noqa: E731
                            compile_model(spec, params, config(spec, strategy)).graph.nodes]
    bias = ops("bias")
    assert not any(fn == "BW_PARAM" for _, fn, _ in bias), "bias-only computes no weight gradient"
    assert any(op == "BIAS_GRAD" for op, _, _ in bias)
    lora = ops("lora=2")
    assert not any(fn == "BW_PARAM" and layer.startswith("tok_") for _, fn, layer in lora), \
        "the conv tokenizer has no adapter: nothing before the first adapter runs backward"
    sparse = ops("sparse")
    assert {op for op, _, _ in sparse} >= {"GATHER", "SCATTER"}


def test_lora_cuts_trainable_parameters_and_memory_on_cct():
    """The issue's target: LoRA on CCT trains ≥ 10× fewer parameters than full, in less memory."""
    spec = load_model("cct-fashion")
    params = init_params(spec, seed=1)
    full = compile_model(spec, params, TrainConfig(batch=32))
    lora = compile_model(spec, params, TrainConfig(batch=32, strategy="lora=4"))
    assert full.report()["trainable_params"] >= 10 * lora.report()["trainable_params"]
    assert lora.plan.arena_bytes < full.plan.arena_bytes


def test_merge_lora_folds_adapters_into_the_weights():
    """The merged plain model computes what base + adapters compute."""
    spec = without_dropout(load_model("eegnet-scp1"))
    params = init_params(spec, seed=1)
    prog = compile_model(spec, params, config(spec, "lora=2"))
    rng = np.random.default_rng(0)
    state = {n: prog.graph.tensors[i].init for i, n in prog.param_names.items()}
    trained = {k: (v + rng.standard_normal(v.shape).astype(np.float32) * 0.1 if ".lora_" in k else v)
               for k, v in state.items()}
    merged = merge_lora(trained)
    assert not any(".lora_" in k for k in merged)
    x = torch.from_numpy(rng.standard_normal((3, *spec.input)).astype(np.float32)).double()
    with_adapters = to_torch(spec, {k: v for k, v in trained.items() if ".lora_" not in k}).double().eval()
    for layer in select(spec, "lora=2").lora_layers:
        a = torch.from_numpy(trained[f"{layer}.lora_A"]).double()
        b = torch.from_numpy(trained[f"{layer}.lora_B"]).double()
        module = getattr(with_adapters, layer)
        extra = adapter(module, a, b)
        module.register_forward_hook(lambda m, i, out, extra=extra: out + extra(i[0]))
    plain = to_torch(spec, merged).double().eval()
    with torch.no_grad():
        np.testing.assert_allclose(plain(x).numpy(), with_adapters(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad, why", [("lora=0", "RANK"), ("lora=x", "RANK"), ("sparse=2", "fraction"),
                                       ("sparse", "calibration data"), ("bias=1", "unknown")])
def test_bad_strategies_say_what_to_do(bad, why):
    spec = load_model("mlp-digits")
    with pytest.raises(ModelError, match=why):
        compile_model(spec, init_params(spec, seed=1), TrainConfig(strategy=bad))
