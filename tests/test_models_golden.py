"""Every shipped model trains on the device as it trains in PyTorch.

For each model of models/*.json: N optimizer steps on the same random batches
(i) in PyTorch, float64, from `host.importer.to_torch` (the reference), (ii) in
PyTorch, float32 (how far honest float32 arithmetic drifts from the reference),
and (iii) on the runtime: the host build through ctypes and the firmware on the
emulated Cortex-M4F through the serial protocol. Losses and every parameter and
buffer (batch-norm running statistics included) are compared.

Tolerance. A float32 implementation cannot match float64 exactly; how far it may
drift depends on the model (normalisation divides by small variances, attention
exponentiates). The yardstick is PyTorch's own float32 run of the same steps:
the runtime must stay within TOL_FACTOR times PyTorch-float32's largest
deviation from the reference for that tensor, plus TOL_FLOOR. TOL_FACTOR = 20
allows a different but sound order of summation (the runtime sums in other
orders and uses FMA; error bounds of summations grow with the number of terms,
not with the order, so a sound kernel lands within a small multiple of
PyTorch's error); TOL_FLOOR = 1e-6 covers tensors PyTorch happens to get
exactly. A real mistake (a wrong stride, tap, sign or statistic) moves values
by the size of the update itself, ~lr·|g| ≥ 1e-3 here, orders of magnitude
beyond either term; `test_tolerance_catches_a_wrong_update` shows it.

Dropout cannot be compared step by step (PyTorch's masks are not reproducible),
so these runs set p = 0; the dropout op has its own tests.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import native_lib as nl
from host.blob import build_blob
from host.compiler import TrainConfig, compile_model
from host.device import Batch
from host.layers import Layer
from host.zoo import ModelSpec, init_params, load_model, model_names
from torch_golden import torch_steps

STEPS = 3
BATCH = 4
TOL_FACTOR = 20.0
TOL_FLOOR = 1e-6
LR = 0.05


def without_dropout(spec: ModelSpec) -> ModelSpec:
    layers = tuple(Layer(l.type, l.name, {**l.attrs, "p": 0.0}, l.inputs) if l.type == "dropout" else l
                   for l in spec.layers)
    return dataclasses.replace(spec, layers=layers)


def batches(spec: ModelSpec, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((BATCH, *spec.input)).astype(np.float32), rng.integers(0, spec.classes, BATCH))
            for _ in range(STEPS)]


def torch_f32_steps(spec, params, cfg, data):
    """The same steps as torch_golden.torch_steps, in float32."""
    from host.importer import to_torch
    from torch_golden import loss_of, torch_optimizer

    model = to_torch(spec, params).train()
    opt = torch_optimizer(model.parameters(), cfg)
    losses = []
    for x, y in data:
        xt, yt = torch.from_numpy(x), torch.from_numpy(np.asarray(y, np.int64))
        opt.zero_grad()
        loss = loss_of(spec, model(xt), xt, yt)
        loss.backward()
        if cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(model.parameters()), cfg.clip_norm)
        opt.step()
        losses.append(loss.item())
    return losses, {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()
                    if not k.endswith("num_batches_tracked")}


def check_against_reference(spec, params, cfg, data, dev_losses, dev_state):
    ref_losses, _, ref_state = torch_steps(spec, params, cfg, data)
    f32_losses, f32_state = torch_f32_steps(spec, params, cfg, data)
    loss_tol = TOL_FACTOR * np.abs(np.subtract(f32_losses, ref_losses)).max() + TOL_FLOOR * 10
    np.testing.assert_allclose(dev_losses, ref_losses, rtol=0, atol=loss_tol, err_msg="losses")
    assert set(dev_state) == set(ref_state)
    for name, ref in ref_state.items():
        tol = TOL_FACTOR * np.abs(f32_state[name] - ref).max() + TOL_FLOOR
        np.testing.assert_allclose(np.asarray(dev_state[name], np.float64).reshape(ref.shape), ref,
                                   rtol=0, atol=tol, err_msg=f"{spec.name}: {name}")


def compiled(name: str):
    spec = without_dropout(load_model(name))
    params = init_params(spec, seed=1)
    cfg = TrainConfig(batch=BATCH, lr=LR)
    return spec, params, cfg, compile_model(spec, params, cfg)


def train_on_host_build(prog, data) -> tuple[list[float], dict[str, np.ndarray]]:
    """TRAIN each batch on the runtime library; the losses and every parameter after."""
    rt = nl.Runtime(build_blob(prog), arena_bytes=max(1 << 20, prog.plan.arena_bytes))
    losses = []
    for x, y in data:
        st, why, r = rt.run(bytes(np.asarray(y, np.uint8)), x.tobytes(), train=True)
        assert st == 0, why
        losses.append(r.loss)
    return losses, {n: rt.tensor(i) for i, n in prog.param_names.items()}


@pytest.mark.parametrize("name", model_names())
def test_model_trains_on_the_host_build_like_pytorch(name):
    spec, params, cfg, prog = compiled(name)
    data = batches(spec)
    losses, state = train_on_host_build(prog, data)
    check_against_reference(spec, params, cfg, data, losses, state)


@pytest.mark.emulated
@pytest.mark.parametrize("name", model_names())
def test_model_trains_on_the_emulated_cortex_m4f_like_pytorch(name, request):
    from conftest import board_device

    spec, params, cfg, prog = compiled(name)
    data = batches(spec)
    with board_device(request, "mps2-an386") as dev:
        dev.load(build_blob(prog))
        losses = [dev.train(Batch.from_arrays(x, y)).loss for x, y in data]
        state = dev.read_params(prog)
    check_against_reference(spec, params, cfg, data, losses, state)


def test_tolerance_catches_a_wrong_update():
    """A runtime that applied the update with the wrong learning rate (a mistake of
    the size of the update) must fail the comparison."""
    spec, params, cfg, prog = compiled("mlp-digits")
    data = batches(spec)
    _, _, state = torch_steps(spec, params, dataclasses.replace(cfg, lr=cfg.lr * 1.1), data)
    losses, _, _ = torch_steps(spec, params, cfg, data)
    with pytest.raises(AssertionError):
        check_against_reference(spec, params, cfg, data, losses, state)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_gradient_clipping_matches_clip_grad_norm(optimizer):
    """clip_norm small enough to clip every step: the runtime's steps equal PyTorch's
    clip_grad_norm_ followed by the optimizer."""
    spec = without_dropout(load_model("mlp-digits"))
    params = init_params(spec, seed=2)
    cfg = TrainConfig(batch=BATCH, lr=LR, optimizer=optimizer, clip_norm=0.05)
    prog = compile_model(spec, params, cfg)
    assert sum(n.op.name == "CLIP_NORM" for n in prog.graph.nodes) >= 2
    data = batches(spec)
    losses, state = train_on_host_build(prog, data)
    check_against_reference(spec, params, cfg, data, losses, state)
    # and clipping did bite: without it the weights end elsewhere
    _, _, unclipped = torch_steps(spec, params, dataclasses.replace(cfg, clip_norm=0.0), data)
    assert max(np.abs(state[k].reshape(v.shape) - v).max() for k, v in unclipped.items()) > 1e-3
