"""Golden tests of the runtime's f32 kernels and crc32 against NumPy (float64).

Every kernel of firmware/runtime/ops is called directly through ctypes
(tests/native_lib.py) on random inputs of several shapes, odd ones included, and
compared with a float64 reference computed from the very same float32 inputs.

Tolerances are per element and come from standard floating-point error analysis
(Higham, "Accuracy and Stability of Numerical Algorithms", ch. 3): with unit
roundoff u = 2⁻²⁴ (float32, round to nearest), a sum of n terms computed one after
the other is off by at most γₙ·Σ|termᵢ| with γₙ = n·u/(1 − n·u). The bounds below
use that with a 1 % margin for the 1/(1 − n·u) factor, never a hand-tuned
constant, so a wrong index, sign or scale (errors of the size of the values
themselves) cannot hide inside them — `test_bound_catches_an_off_by_one` checks
that for the widest bound.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import native_lib as nl

U = 2.0 ** -24  # float32 unit roundoff


def gamma(n: int) -> float:
    """γₙ with the 1 % margin explained in the module docstring (n·u ≪ 0.01 here)."""
    return 1.01 * n * U


def assert_within(got: np.ndarray, ref: np.ndarray, bound, what: str) -> None:
    got = np.asarray(got, np.float64)
    err = np.abs(got - ref)
    bad = ~(err <= bound)  # NaN in got counts as a failure
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} elements beyond the bound; "
                           f"worst error {np.nanmax(err):.3g}, bound there {np.broadcast_to(bound, err.shape)[bad][0]:.3g}")


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# (n samples, K inputs, M outputs): K=1, M=1, sizes that are and are not multiples
# of the 4-way blocking, batch 1 and 5, and the mlp-digits layer sizes
LINEAR_SHAPES = [(1, 1, 1), (1, 7, 13), (5, 7, 13), (5, 1, 4), (5, 13, 1), (2, 4, 8),
                 (5, 9, 3), (3, 64, 32), (32, 32, 10)]


@pytest.fixture
def rng(request):
    """A generator seeded from the test id: reproducible, different per case."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


# -- linear ------------------------------------------------------------------------

@pytest.mark.parametrize("n,k,m", LINEAR_SHAPES)
def test_linear_fw(rng, n, k, m):
    x, w, b = rand(rng, n, k), rand(rng, m, k), rand(rng, m)
    x64, w64, b64 = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    y = nl.linear_fw(x, w, b)
    ref = x64 @ w64.T + b64
    # y[i,m] is a sum of K+1 terms (b[m] and K products, each product rounded once):
    # |error| ≤ γ_{K+1} · (|b[m]| + Σ_k |x[i,k] W[m,k]|)
    assert_within(y, ref, gamma(k + 1) * (np.abs(x64) @ np.abs(w64).T + np.abs(b64)), "y")


@pytest.mark.parametrize("n,k,m", LINEAR_SHAPES)
def test_linear_bw_input(rng, n, k, m):
    dy, w = rand(rng, n, m), rand(rng, m, k)
    dx = nl.linear_bw_input(dy, w)
    ref = dy.astype(np.float64) @ w.astype(np.float64)
    # dx[i,k] sums M products: |error| ≤ γ_M · Σ_m |dy[i,m] W[m,k]|
    assert_within(dx, ref, gamma(m) * (np.abs(dy.astype(np.float64)) @ np.abs(w.astype(np.float64))), "dx")


@pytest.mark.parametrize("n,k,m", LINEAR_SHAPES)
def test_linear_bw_param(rng, n, k, m):
    dy, x = rand(rng, n, m), rand(rng, n, k)
    dy64, x64 = dy.astype(np.float64), x.astype(np.float64)
    dw, db = nl.linear_bw_param(dy, x)
    # dW[m,k] sums n products over the batch: |error| ≤ γ_n · Σ_i |dy[i,m] x[i,k]|
    assert_within(dw, dy64.T @ x64, gamma(n) * (np.abs(dy64).T @ np.abs(x64)), "dW")
    # db[m] sums n values: |error| ≤ γ_n · Σ_i |dy[i,m]|
    assert_within(db, dy64.sum(axis=0), gamma(n) * np.abs(dy64).sum(axis=0), "db")


def test_linear_bw_param_overwrites(rng):
    """dW and db are overwritten, not accumulated (the wrappers pre-fill them with NaN)."""
    dy, x = rand(rng, 1, 3), rand(rng, 1, 5)
    dw, db = nl.linear_bw_param(dy, x)
    assert np.isfinite(dw).all() and np.isfinite(db).all()
    np.testing.assert_array_equal(db, dy[0])  # one sample: db is dy exactly


def test_bound_catches_an_off_by_one(rng):
    """The linear bound is far tighter than a plausible bug (the last input dropped)."""
    n, k, m = 5, 64, 13
    x, w, b = rand(rng, n, k), rand(rng, m, k), rand(rng, m)
    x64, w64, b64 = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    buggy = x64[:, :-1] @ w64[:, :-1].T + b64
    with pytest.raises(AssertionError):
        assert_within(buggy, x64 @ w64.T + b64,
                      gamma(k + 1) * (np.abs(x64) @ np.abs(w64).T + np.abs(b64)), "y")


# -- relu ----------------------------------------------------------------------------

@pytest.mark.parametrize("n,c", [(1, 1), (1, 7), (5, 13), (32, 32)])
def test_relu_fw_and_bw(rng, n, c):
    x = rand(rng, n, c)
    x[0, 0] = 0.0  # the kink: relu(0) = 0 and no gradient flows through it
    y = nl.relu_fw(x)
    # exact: max(x, 0) and the mask product involve no rounding
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    dy = rand(rng, n, c)
    np.testing.assert_array_equal(nl.relu_bw(dy, y), dy * (y > 0))


def test_relu_in_place(rng):
    x = rand(rng, 5, 13)
    expect = np.maximum(x, 0)
    buf = x.copy()
    nl.relu_fw(buf, out=buf)
    np.testing.assert_array_equal(buf, expect)
    dy = rand(rng, 5, 13)
    g = dy.copy()
    nl.relu_bw(g, expect, out=g)
    np.testing.assert_array_equal(g, dy * (expect > 0))


def test_relu_propagates_nan():
    y = nl.relu_fw(np.array([[np.nan, -1.0, 2.0]], np.float32))
    assert np.isnan(y[0, 0]) and y[0, 1] == 0 and y[0, 2] == 2


# -- softmax cross-entropy --------------------------------------------------------------

def softmax_ce_ref(z: np.ndarray, lab: np.ndarray):
    """float64: probs, per-sample loss, correct count, and d = z - max (for the bounds)."""
    z = z.astype(np.float64)
    d = z - z.max(axis=1, keepdims=True)
    s = np.exp(d).sum(axis=1, keepdims=True)
    p = np.exp(d) / s
    rows = np.arange(len(lab))
    loss = np.log(s[:, 0]) - d[rows, lab]
    correct = int((z.argmax(axis=1) == lab).sum())  # argmax: first maximum
    return p, loss, correct, d


def softmax_ce_bounds(p, loss, d, n, c):
    """Per-element bound on probs and the bound on the mean loss.

    probs: d_j = z_j - max is rounded once (relative error u → |d_j|·u after exp);
    expf is within 1 ulp ≤ 2u; the sum S of C terms adds γ_C plus the errors of its
    terms, Σ_k p_k (2u + |d_k| u); then 1/S and the product round once each. Hence
    |Δp_j| ≤ p_j·(γ_C + 2u + |d_j|u + Σ_k p_k(2u + |d_k|u) + 2u), plus 1e-37 for
    results that fall into float32 subnormals (where relative accuracy ends).
    loss_i = log S_i - d_label: |Δ| ≤ (relative error of S, as above) + 2u·log S
    (logf within 1 ulp) + |d_label|·u + u (the subtraction); the mean of n of them
    adds γ_n·Σ|loss_i|/n and one rounding for the division.
    """
    spread = (p * (2 * U + np.abs(d) * U)).sum(axis=1, keepdims=True)
    rel_p = gamma(c) + 2 * U + np.abs(d) * U + spread + 2 * U
    bound_p = p * rel_p + 1e-37
    s = np.exp(d).sum(axis=1)
    d_label = np.log(s) - loss
    per_sample = gamma(c) + spread[:, 0] + 2 * U * np.log(s) + np.abs(d_label) * U + U
    bound_loss = per_sample.mean() + (gamma(n) + U) * np.abs(loss).mean()
    return bound_p, bound_loss


@pytest.mark.parametrize("n,c,scale", [(1, 2, 1.0), (5, 10, 1.0), (5, 3, 10.0), (32, 10, 3.0),
                                       (7, 13, 1000.0)])
def test_softmax_ce_fw(rng, n, c, scale):
    z = rand(rng, n, c, scale=scale)
    lab = rng.integers(0, c, n)
    probs, loss, correct = nl.softmax_ce_fw(z, lab)
    p_ref, l_ref, c_ref, d = softmax_ce_ref(z, lab)
    bound_p, bound_loss = softmax_ce_bounds(p_ref, l_ref, d, n, c)
    assert_within(probs, p_ref, bound_p, "probs")
    assert_within(loss, l_ref.mean(), bound_loss, "loss")
    assert correct == c_ref  # the argmax reads the float32 logits themselves: exact


def test_softmax_ce_large_logits_stay_finite():
    """exp(1000) overflows float32: only the max-subtracted form gets these right."""
    z = np.array([[1000.0, 0.0, -1000.0], [-1000.0, 999.0, 1000.0]], np.float32)
    lab = np.array([1, 2])
    probs, loss, correct = nl.softmax_ce_fw(z, lab)
    p_ref, l_ref, _, d = softmax_ce_ref(z, lab)
    bound_p, bound_loss = softmax_ce_bounds(p_ref, l_ref, d, 2, 3)
    assert np.isfinite(probs).all() and np.isfinite(loss)
    assert_within(probs, p_ref, bound_p, "probs")
    # sample 0: -log p = 1000 exactly in real arithmetic; sample 1: log(1 + e⁻¹) ≈ 0.3133
    assert_within(loss, l_ref.mean(), bound_loss, "loss")
    assert correct == 1


@pytest.mark.parametrize("lab,expect", [(0, 1), (1, 0), (2, 0)])
def test_softmax_ce_argmax_ties_go_to_the_lowest_index(lab, expect):
    z = np.array([[3.0, 3.0, 1.0]], np.float32)
    _, _, correct = nl.softmax_ce_fw(z, np.array([lab]))
    assert correct == expect


def test_softmax_ce_all_equal_logits():
    z = np.zeros((4, 5), np.float32)
    probs, loss, correct = nl.softmax_ce_fw(z, np.array([0, 1, 2, 0]))
    np.testing.assert_allclose(probs, 0.2, rtol=4 * U)  # 1/5 through exp(0)=1, a sum and a divide
    assert abs(loss - np.log(5)) <= 8 * U * np.log(5)
    assert correct == 2  # ties: class 0 predicted everywhere


@pytest.mark.parametrize("bad,at", [(np.nan, 2), (np.inf, 2), (-np.inf, 1), (np.nan, 0)])
def test_softmax_ce_non_finite_logits_give_a_non_finite_loss(bad, at):
    """NaN anywhere, +inf anywhere, or -inf at the label: the executor must see it."""
    z = np.array([[0.5, 1.0, 2.0], [1.0, 2.0, 3.0]], np.float32)
    z[1, at] = bad
    _, loss, _ = nl.softmax_ce_fw(z, np.array([0, 1]))
    assert not np.isfinite(loss)


def test_softmax_ce_minus_inf_elsewhere_is_probability_zero():
    z = np.array([[0.5, -np.inf, 2.0]], np.float32)
    probs, loss, _ = nl.softmax_ce_fw(z, np.array([0]))
    p_ref, l_ref, _, d = softmax_ce_ref(z, np.array([0]))
    assert probs[0, 1] == 0.0
    # the bound formula multiplies |d| = inf by p = 0; take the finite classes only
    _, bound_loss = softmax_ce_bounds(p_ref[:, [0, 2]], l_ref, d[:, [0, 2]], 1, 3)
    assert_within(loss, l_ref.mean(), bound_loss, "loss")


@pytest.mark.parametrize("n,c", [(1, 2), (5, 10), (7, 13)])
def test_softmax_ce_bw(rng, n, c):
    p = rng.dirichlet(np.ones(c), n).astype(np.float32)
    lab = rng.integers(0, c, n)
    onehot = np.eye(c)[lab]
    ref = (p.astype(np.float64) - onehot) / n
    # one subtraction and one division, each rounded once: |error| ≤ 2u·|exact| (+ u²·…)
    bound = 2.01 * U * np.abs(ref)
    assert_within(nl.softmax_ce_bw(p, lab), ref, bound, "dlogits")
    # in place over probs, as ep_ops.h allows
    buf = p.copy()
    nl.softmax_ce_bw(buf, lab, out=buf)
    assert_within(buf, ref, bound, "dlogits in place")


# -- sgd ------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 7, 13 * 7, 2048])
@pytest.mark.parametrize("lr,wd", [(0.05, 0.0), (0.5, 1e-3), (1.0, 0.1)])
def test_sgd_update(rng, size, lr, wd):
    w, g = rand(rng, size), rand(rng, size)
    lr32, wd32 = float(np.float32(lr)), float(np.float32(wd))  # the kernel gets float32 attrs
    w64, g64 = w.astype(np.float64), g.astype(np.float64)
    ref = w64 - lr32 * (g64 + wd32 * w64)
    # four roundings (wd·w, +g, lr·(…), w − …), each at most u times a magnitude
    # bounded by |w| + lr·(|g| + wd·|w|)
    bound = 4.04 * U * (np.abs(w64) + lr32 * (np.abs(g64) + wd32 * np.abs(w64)))
    got = nl.sgd_update(w, g, lr, wd)
    assert_within(got, ref, bound, "param")
    assert not np.array_equal(got, w)


def test_sgd_matches_float32_arithmetic_exactly():
    """Same operations in the same order as NumPy float32: bit-identical on the host
    build (IEEE-754 ops are correctly rounded; -std=c11 contracts no a*b+c into an FMA)."""
    w = np.array([1.0, -2.0, 0.0, 3.5], np.float32)
    g = np.array([0.25, 0.5, -1.0, 0.0], np.float32)
    lr, wd = np.float32(0.5), np.float32(0.1)
    np.testing.assert_array_equal(nl.sgd_update(w, g, lr, wd), w - lr * (g + wd * w))


# -- crc32 ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 3, 64, 1000, 4096])
def test_crc32_matches_zlib(rng, size):
    data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    assert nl.crc32(data) == zlib.crc32(data)


def test_crc32_check_value_and_chaining():
    assert nl.crc32(b"123456789") == 0xCBF43926  # the CRC-32/ISO-HDLC check value
    a, b = b"EdgeProp trains ", b"on the device"
    assert nl.crc32(b, nl.crc32(a)) == zlib.crc32(a + b) == zlib.crc32(b, zlib.crc32(a))
    assert nl.crc32(b"", 0x12345678) == 0x12345678
