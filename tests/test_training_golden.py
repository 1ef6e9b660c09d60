"""On-device training equals a NumPy reference of the same SGD steps.

The reference (host.reference) is written from the model description in float64
and shares no code with the compiler, planner, blob or firmware. The device runs
the same N steps on the same real batches (scikit-learn digits) in float32.
"""

from __future__ import annotations

import numpy as np

from host.blob import build_blob
from host.compiler import TrainConfig, compile_model
from host.datasets import load_dataset
from host.device import Batch
from host.reference import ReferenceModel
from host.zoo import init_params, load_model

STEPS = 20
BATCH = 32
LR = 0.5

# Tolerances. The device computes in float32 (unit roundoff u = 6e-8); each
# step's matmuls sum K ≤ 64 products, so a gradient entry carries an error of
# at most about K·u·|g| ≈ 64 · 6e-8 · 0.5 ≈ 2e-6 (|g| ≤ ~0.5 here), times
# lr = 0.5 per step: 1e-6. Added worst-case over 20 steps: 2e-5, plus float32
# rounding of the stored weights (|w| ≤ 0.6 → 4e-8 per step). 5e-5 sits above
# that worst case and still catches any real mistake: a wrong sign, index or
# scale moves a weight by ≥ lr·|g| ≈ 1e-3 after one step. (Typical measured
# differences are ~1e-7: the bound is deliberately not tuned to one build.)
WEIGHT_ATOL = 5e-5
# The loss moves with the weights: |ΔL| ≤ ‖∂L/∂w‖₁ · max|Δw|. The gradient's
# L1 norm over the 2410 parameters reaches ~25 on these batches (measured with
# the reference), so the weight bound above allows 25 · 5e-5 ≈ 1.3e-3, plus
# float32 rounding of the loss itself (|L| ≤ 3 → 2e-7). Hence 1.5e-3; the
# weights, compared above, are the tight check.
LOSS_ATOL = 1.5e-3


def test_n_sgd_steps_match_the_numpy_reference(device):
    spec = load_model("mlp-digits")
    params = init_params(spec, seed=3)
    prog = compile_model(spec, params, TrainConfig(batch=BATCH, lr=LR))
    device.load(build_blob(prog))
    ds = load_dataset("digits", seed=3)
    ref = ReferenceModel(spec, params)

    dev_losses, ref_losses = [], []
    for step in range(STEPS):
        sel = slice(step * BATCH, (step + 1) * BATCH)
        x, y = ds.x_train[sel], ds.y_train[sel]
        r = device.train(Batch.from_arrays(x, y, ds.quant))
        loss, correct = ref.train_step(x, y, LR)
        assert r.step == step + 1 and r.n == BATCH
        assert r.correct == correct, f"step {step}: device {r.correct} correct, reference {correct}"
        dev_losses.append(r.loss)
        ref_losses.append(loss)
        assert r.cycles > 0

    np.testing.assert_allclose(dev_losses, ref_losses, atol=LOSS_ATOL, rtol=0)
    weights = device.read_params(prog)
    assert set(weights) == set(ref.params)
    for name, w in weights.items():
        np.testing.assert_allclose(w, ref.params[name], atol=WEIGHT_ATOL, rtol=0, err_msg=name)
    # and training did something: the loss fell and the weights moved
    assert np.mean(dev_losses[-5:]) < np.mean(dev_losses[:5]) - 0.1
    assert np.abs(weights["fc2.weight"] - params["fc2.weight"]).max() > 100 * WEIGHT_ATOL


def test_eval_does_not_change_the_model(device):
    spec = load_model("mlp-digits")
    params = init_params(spec, seed=1)
    prog = compile_model(spec, params, TrainConfig(batch=BATCH, lr=LR))
    device.load(build_blob(prog))
    ds = load_dataset("digits")
    x, y = ds.x_test[:BATCH], ds.y_test[:BATCH]
    r1 = device.evaluate(Batch.from_arrays(x, y, ds.quant))
    r2 = device.evaluate(Batch.from_arrays(x, y, ds.quant))
    loss, correct = ReferenceModel(spec, params).evaluate(x, y)
    # cycles are wall-clock on the native build, so compare everything but them
    assert (r1.loss, r1.n, r1.correct, r1.step) == (r2.loss, r2.n, r2.correct, 0)
    assert abs(r1.loss - loss) < LOSS_ATOL and r1.correct == correct
    for name, w in device.read_params(prog).items():
        np.testing.assert_array_equal(w, params[name])


def test_f32_and_u8_encodings_train_identically(device):
    """The compact u8 encoding is exact for digits: both encodings give the same step."""
    spec = load_model("mlp-digits")
    params = init_params(spec)
    ds = load_dataset("digits")
    x, y = ds.x_train[:15], ds.y_train[:15]  # 15 f32 samples fill one frame
    prog = compile_model(spec, params, TrainConfig(batch=15, lr=LR))
    blob = build_blob(prog)
    results = []
    for quant in (ds.quant, None):
        device.load(blob)
        r = device.train(Batch.from_arrays(x, y, quant))
        results.append((r.loss, r.correct, device.read_params(prog)))
    assert results[0][:2] == results[1][:2]
    for name in params:
        np.testing.assert_array_equal(results[0][2][name], results[1][2][name])



def test_gradient_accumulation_steps_once_per_k_batches_on_their_mean(device):
    """accumulate=3: the weights move only on every third TRAIN, by SGD on the mean
    gradient of the three batches, which is one step on their union (equal sizes)."""
    spec = load_model("mlp-digits")
    params = init_params(spec, seed=5)
    k, n = 3, 8
    prog = compile_model(spec, params, TrainConfig(batch=n, lr=LR, accumulate=k))
    device.load(build_blob(prog))
    ds = load_dataset("digits", seed=5)
    ref = ReferenceModel(spec, params)
    for cycle in range(2):
        sel = slice(cycle * k * n, (cycle + 1) * k * n)
        x, y = ds.x_train[sel], ds.y_train[sel]
        before = device.read_params(prog)
        for j in range(k):
            device.train(Batch.from_arrays(x[j * n:(j + 1) * n], y[j * n:(j + 1) * n], ds.quant))
            if j < k - 1:  # nothing applied yet
                for name, w in device.read_params(prog).items():
                    np.testing.assert_array_equal(w, before[name], err_msg=f"{name} moved before the k-th batch")
        ref.train_step(x, y, LR)  # one step on the k·n samples: the mean of the k batch means
        for name, w in device.read_params(prog).items():
            np.testing.assert_allclose(w, ref.params[name], atol=WEIGHT_ATOL, rtol=0, err_msg=name)
