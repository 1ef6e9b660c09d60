"""Training with tensors in L3 on devices that have it: the native build (a plain array
standing in for L3) and the emulated GAP9 (L3 = 8 MiB of DRAM past L1; on the chip, its
HyperRAM).

- The same model and steps with some persistent tensors in L3 and with all of them in the
  arena give the same losses and weights bit for bit on one device (the copies are exact),
  with Adam and with gradient accumulation (L3 copies in the update section).
- Checkpoints save and restore L3 tensors.
- On GAP9, a model whose weights and gradients exceed the 896 KiB L2 arena trains, and
  matches the float64 reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import board_device
from host.blob import build_blob
from host.compiler import TrainConfig, compile_model
from host.datasets import load_dataset
from host.device import Batch
from host.reference import ReferenceModel
from host.bench import L3_MODEL
from host.zoo import init_params, load_model, parse_model

L3_KINDS = ["native", "gap9"]


def _batches(n: int, batch: int = 8):
    ds = load_dataset("digits", seed=0)
    return [(ds.x_train[i * batch:(i + 1) * batch], ds.y_train[i * batch:(i + 1) * batch]) for i in range(n)]


def _train(dev, prog, batches) -> tuple[list[float], dict[str, np.ndarray]]:
    dev.load(build_blob(prog))
    losses = [dev.train(Batch.from_arrays(x, y)).loss for x, y in batches]
    return losses, dev.read_params(prog)


@pytest.mark.parametrize("kind", L3_KINDS)
@pytest.mark.parametrize("cfg", [TrainConfig(batch=8, lr=1e-2, optimizer="adam"),
                                 TrainConfig(batch=8, lr=0.1, accumulate=2)], ids=["adam", "accumulate"])
def test_l3_trains_bit_for_bit_as_the_arena(request, kind, cfg):
    spec = load_model("mlp-digits")
    params = init_params(spec, 0)
    batches = _batches(6)
    with board_device(request, kind) as dev:
        hello = dev.hello()
        assert hello.l3_bytes > 0
        full = compile_model(spec, params, cfg, arena_limit=hello.arena_bytes)
        l3 = compile_model(spec, params, cfg, arena_limit=int(full.plan.arena_bytes * 0.9), l3_limit=hello.l3_bytes)
        assert l3.plan.l3_tensors and l3.plan.arena_bytes < full.plan.arena_bytes
        (losses_a, w_a), (losses_b, w_b) = _train(dev, full, batches), _train(dev, l3, batches)
    assert losses_a == losses_b
    for name in w_a:
        assert w_a[name].tobytes() == w_b[name].tobytes(), name
    assert not np.array_equal(w_b["fc1.weight"], params["fc1.weight"])  # it trained


@pytest.mark.parametrize("kind", L3_KINDS)
def test_checkpoints_keep_the_tensors_in_l3(request, kind):
    spec = load_model("mlp-digits")
    params = init_params(spec, 0)
    cfg = TrainConfig(batch=8, lr=1e-2, optimizer="adam")
    batches = _batches(4)
    with board_device(request, kind) as dev:
        hello = dev.hello()
        full = compile_model(spec, params, cfg)
        prog = compile_model(spec, params, cfg, arena_limit=int(full.plan.arena_bytes * 0.9), l3_limit=hello.l3_bytes)
        moved = {prog.graph.tensors[i].name for i in prog.plan.l3_tensors}
        assert moved & set(prog.param_names.values())  # a weight, readable by name, lives in L3
        _, saved = _train(dev, prog, batches[:2])
        dev.checkpoint_save()
        for x, y in batches[2:]:
            dev.train(Batch.from_arrays(x, y))
        assert dev.read_params(prog)["fc1.weight"].tobytes() != saved["fc1.weight"].tobytes()
        dev.checkpoint_restore()
        restored = dev.read_params(prog)
    for name in saved:
        assert restored[name].tobytes() == saved[name].tobytes(), name


STEPS, LR = 3, 0.05
# The device computes in float32 (u = 6e-8) what the reference computes in float64. A
# gradient entry sums K ≤ 256 products: error ≤ K·u·|g| ≈ 256 · 6e-8 · 0.1 ≈ 1.5e-6 (|g|
# ≤ ~0.1 here), and errors of earlier layers' activations reach it through ≤ 4 layers of
# |W| ≤ 1/16 (init bound 1/√256) sums, which shrink rather than grow them. Times lr 0.05 per
# step, over 3 steps, plus the stored weights' float32 rounding (|w| ≤ 0.13 → 1e-8 each):
# below 1e-6. 1e-5 keeps a margin for builds that contract differently and still catches a
# wrong or stale copy: a weight that missed its update is off by lr·|g| ≈ 1e-3 or more.
DEEP_ATOL = 1e-5


def test_gap9_trains_a_model_whose_weights_exceed_l2(request):
    spec = parse_model(L3_MODEL)
    params = init_params(spec, 0)
    cfg = TrainConfig(batch=8, lr=LR)
    batches = _batches(STEPS)
    with board_device(request, "gap9", timeout=60.0) as dev:
        hello = dev.hello()
        everything = compile_model(spec, params, cfg)
        assert everything.plan.arena_bytes > hello.arena_bytes  # it would not fit without L3
        prog = compile_model(spec, params, cfg, arena_limit=hello.arena_bytes, l3_limit=hello.l3_bytes)
        weights = sum(prog.plan.sizes[i] for i, n in prog.param_names.items() if n.endswith(".weight"))
        assert weights > 800 * 1024 and prog.plan.l3_tensors
        losses, trained = _train(dev, prog, batches)
    ref = ReferenceModel(spec, params)
    ref_losses = [ref.train_step(x, y, LR)[0] for x, y in batches]
    np.testing.assert_allclose(losses, ref_losses, atol=1e-4, rtol=0)  # the loss moves with ≤ 1e-5 weights
    for name, w in trained.items():
        np.testing.assert_allclose(w, ref.params[name], atol=DEEP_ATOL, rtol=0, err_msg=name)
    assert np.abs(trained["fc5.weight"] - params["fc5.weight"]).max() > 100 * DEEP_ATOL
