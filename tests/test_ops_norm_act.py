"""Golden tests of the normalisation, activation and dropout kernels (ep_norm_act.h)
against PyTorch.

Each kernel is called through ctypes (tests/norm_act_lib.py) on random float32
inputs and compared with PyTorch run in float64 on the very same float32 values
(outputs, running statistics, and gradients from torch.autograd).

Tolerances are per element and come from floating-point error analysis (Higham,
"Accuracy and Stability of Numerical Algorithms", ch. 3) with u = 2⁻²⁴ and
γₖ = k·u/(1 − k·u) (taken with a 1 % margin, k·u ≪ 0.01): a float32 sum of k terms
in any order is within γₖ·Σ|termᵢ| of the exact sum. For the normalisations
(sets of m values; for BatchNorm a channel's n·hw values, for LayerNorm a row,
for GroupNorm a sample's group) the kernels compute, per set:
  mean  μ̂ = x₀ + Σ(x − x₀)/m  (x₀ the set's first element):
        |μ̂ − μ| ≤ dμ := u·|μ| + γ_{m+2}·mean|x − x₀|
        (the sum adds deviations, not the offset: data of mean 1000 keep their
        precision; u·|μ| is the unavoidable rounding of μ to float32)
  k̂ = 1/sqrt(v̂ + eps), v̂ from the corrected two-pass formula, whose error does
        not depend on dμ to first order: |k̂/k − 1| ≤ rk := γ_{m+8}
  x̂ = (x − μ̂)·k̂:  |Δx̂| ≤ k·(dμ + u·|x − μ|) + |x̂|·(rk + u)
and every later expression is bounded term by term from those (see each test).
Errors of a wrong index, channel, group, sign or scale are of the size of the
values themselves (O(1) after normalisation), orders of magnitude above these
bounds; the test_bound_catches_* tests check that for plausible bugs.

The activations use the libm accuracies of expf/expm1f/tanhf/erfcf (glibc: ≤ 2
ulp, so 4u for a relative bound) plus one u per float operation after them, and
the condition number of the function where the argument itself is rounded (GELU).
Dropout is tested for exactness (the mask is reproduced bit for bit by the host's
xorshift32) and for keep-rate statistics.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import zlib
from pathlib import Path

import native_lib as nl
import norm_act_lib as na
import numpy as np
import pytest
import torch
import torch.nn.functional as F

U = 2.0 ** -24  # float32 unit roundoff
TINY = 2.0 ** -126  # smallest normal float32: below it relative bounds do not hold
EPS = 1e-5


def gamma(k) -> float:
    """γₖ with a 1 % margin for the 1/(1 − k·u) factor (k·u ≪ 0.01 here)."""
    return 1.01 * k * U


def assert_within(got, ref, bound, what: str) -> None:
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    err = np.abs(got - ref)
    bad = ~(err <= bound)  # NaN in got counts as a failure
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} elements beyond the bound; "
                           f"worst error {np.nanmax(err):.3g}, bound there "
                           f"{np.broadcast_to(bound, err.shape)[bad][0]:.3g}")


def rand(rng, *shape, scale=1.0, offset=0.0):
    return (rng.standard_normal(shape) * scale + offset).astype(np.float32)


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, np.float64), dtype=torch.float64, requires_grad=grad)


@pytest.fixture
def rng(request):
    """A generator seeded from the test id: reproducible, different per case."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


# -- the shared error model of the normalisations ------------------------------------

class SetStats:
    """Exact (float64) statistics of the float32 input and the error bounds of the
    module docstring, per element, in x's own layout. to_sets maps an array of x's
    shape to [S sets, m members] in memory order; from_sets maps back."""

    def __init__(self, x, to_sets, from_sets, eps=EPS):
        x2 = to_sets(np.asarray(x, np.float64))
        m = x2.shape[1]
        mu = x2.mean(axis=1, keepdims=True)
        var = ((x2 - mu) ** 2).mean(axis=1, keepdims=True)
        k = 1.0 / np.sqrt(var + np.float64(np.float32(eps)))
        xhat = (x2 - mu) * k
        dmu = U * np.abs(mu) + gamma(m + 2) * np.abs(x2 - x2[:, :1]).mean(axis=1, keepdims=True)
        self.m, self.rk = m, gamma(m + 8)
        dxhat = k * (dmu + U * np.abs(x2 - mu)) + np.abs(xhat) * (self.rk + U)
        self.to_sets, self.from_sets = to_sets, from_sets
        full = lambda a: from_sets(np.broadcast_to(a, x2.shape).copy())
        self.mu, self.k, self.xhat, self.dxhat, self.dmu = full(mu), full(k), from_sets(xhat), from_sets(dxhat), full(dmu)
        self.mu_set, self.k_set, self.dmu_set = mu[:, 0], k[:, 0], dmu[:, 0]

    def fw_bound(self, gam, beta, y):
        """y = fmaf(x − μ̂, k̂·γ, β) (or ((x − μ̂)·k̂)·γ + β): |γ|·Δx̂ plus one rounding of
        k̂·γ (u·|γ x̂|) and of the fused add (u·|y|); β enters exactly."""
        return np.abs(gam) * self.dxhat + 2 * U * np.abs(gam * self.xhat) + 2 * U * np.abs(y)

    def bw_input_bound(self, g, dx, extra_terms=0):
        """dx = k·(g − A − x̂·B), g = dy·γ, A = mean g, B = mean g·x̂ over the set:
        ΔA ≤ γ_{m+2}·mean|g| (g rounded once, sum of m), ΔB ≤ mean(|g|·Δx̂) +
        γ_{m+4}·mean|g·x̂| (m + extra_terms when the sums take more roundings); the two subtractions and the product with g round
        (2u·(|g| + |A| + |x̂B|) + u|g|); the final scale by k̂ adds (rk + 4u)·|dx|."""
        S = self.to_sets
        g2, xh2, dxh2 = S(g), S(self.xhat), S(self.dxhat)
        A = g2.mean(axis=1, keepdims=True)
        B = (g2 * xh2).mean(axis=1, keepdims=True)
        m = self.m + extra_terms
        dA = gamma(m + 2) * np.abs(g2).mean(axis=1, keepdims=True)
        dB = (np.abs(g2) * dxh2).mean(axis=1, keepdims=True) + gamma(m + 4) * np.abs(g2 * xh2).mean(axis=1, keepdims=True)
        inner = (U * np.abs(g2) + dA + dxh2 * np.abs(B) + np.abs(xh2) * dB
                 + 2 * U * (np.abs(g2) + np.abs(A) + np.abs(xh2 * B)))
        return self.from_sets(S(self.k) * inner) + (self.rk + 4 * U) * np.abs(dx)

    def dgamma_terms(self, dy, terms):
        """Per-element contributions to the bound of dγ = Σ dy·x̂ over `terms` elements:
        |dy|·Δx̂ (x̂'s error) + γ_{terms+3}·|dy·x̂| (products and the sum); sum them
        over the parameter's elements."""
        return np.abs(dy) * self.dxhat + gamma(terms + 3) * np.abs(dy * self.xhat)


# == BatchNorm =========================================================================

# (shape of x = (n, C, *spatial)): BN2d, BN1d over [C][L], BN1d over [C] features;
# C = 1, odd sizes, batch 1, hw not a multiple of 4, hw = 1
BN_SHAPES = [(5, 3, 4, 7), (1, 1, 3, 3), (2, 1, 5), (1, 4, 9), (7, 5), (2, 6), (3, 2, 1, 1),
             (4, 8, 2, 2), (2, 3, 1, 13)]


def bn_sets(shape):
    n, c = shape[:2]
    hw = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    to = lambda a: a.reshape(n, c, hw).transpose(1, 0, 2).reshape(c, n * hw)
    back = lambda a: a.reshape(c, n, hw).transpose(1, 0, 2).reshape(shape)
    return to, back


def torch_bn(shape, g, b, rm, rv, momentum=0.1):
    c = shape[1]
    mod = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(
        c, eps=EPS, momentum=momentum).double()
    with torch.no_grad():
        mod.weight[:] = t64(g)
        mod.bias[:] = t64(b)
        mod.running_mean[:] = t64(rm)
        mod.running_var[:] = t64(rv)
    return mod


def bn_case(rng, shape, offset):
    c = shape[1]
    x = rand(rng, *shape, offset=offset)
    g, b = rand(rng, c), rand(rng, c)
    rm, rv = rand(rng, c), (rng.random(c) + 0.5).astype(np.float32)
    return x, g, b, rm, rv


def bcast_c(v, shape):
    """A per-channel vector broadcast over x's shape."""
    return np.asarray(v, np.float64).reshape((1, -1) + (1,) * (len(shape) - 2))


@pytest.mark.parametrize("offset", [0.0, 1000.0])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_train(rng, shape, offset):
    x, g, b, rm, rv = bn_case(rng, shape, offset)
    dy = rand(rng, *shape)
    m = x.size // shape[1]
    mom = 0.1
    y, saved, rm2, rv2 = na.bn_fw_train(x, g, b, rm, rv, EPS, mom)
    x_in = x.copy()  # in place (y over x, when the backward gets x elsewhere): same bits
    got = na.bn_fw_train(x_in, g, b, rm, rv, EPS, mom, out=x_in)
    assert all(np.array_equal(u, v) for u, v in zip(got, (y, saved, rm2, rv2))) and got[0] is x_in
    mod = torch_bn(shape, g, b, rm, rv, mom)
    mod.train()
    xt = t64(x, True)
    yt = mod(xt)
    yt.backward(t64(dy))
    st = SetStats(x, *bn_sets(shape))
    G, B = bcast_c(g, shape), bcast_c(b, shape)
    y_ref = yt.detach().numpy()
    assert_within(y, y_ref, st.fw_bound(G, B, y_ref), "y")
    # saved = [mean | inv_std]: the mean within dμ, inv_std within rk (relative)
    c = shape[1]
    assert_within(saved[:c], st.mu_set, st.dmu_set, "saved mean")
    assert_within(saved[c:], st.k_set, st.rk * st.k_set, "saved inv_std")
    # running_mean = (1 − mom)·rm + mom·μ̂: mom·dμ, plus the roundings of the two
    # products, the fused add and of mom itself (0.1 in float32): γ₄·(|rm| + mom·|μ|)
    rm_ref, rv_ref = mod.running_mean.numpy(), mod.running_var.numpy()
    assert_within(rm2, rm_ref, mom * st.dmu_set + gamma(4) * (np.abs(rm) + mom * np.abs(st.mu_set)),
                  "running_mean")
    # running_var with the UNBIASED variance: v̂ relative error ≤ γ_{m+8} (as rk, twice the
    # square root's), the factor m/(m − 1) and the products: γ_{2m+24}·mom·v_unb + γ₄·|rv|
    v_unb = (1.0 / st.k_set ** 2 - np.float32(EPS)) * m / (m - 1)
    assert_within(rv2, rv_ref, gamma(2 * m + 24) * mom * v_unb + gamma(4) * np.abs(rv), "running_var")
    # backward, training mode: dx, dγ, dβ
    dx = na.bn_bw_input_train(dy, x, g, saved)
    dx_ref = xt.grad.numpy()
    assert_within(dx, dx_ref, st.bw_input_bound(dy.astype(np.float64) * G, dx_ref), "dx")
    dg, db = na.bn_bw_param_train(dy, x, saved)
    # dγ = k̂·Σ dy·(x − μ̂) (the sum of m products, then one product): as dgamma_terms
    dg_bound = st.dgamma_terms(dy, m).sum(axis=tuple(i for i in range(len(shape)) if i != 1))
    assert_within(dg, mod.weight.grad.numpy(), dg_bound, "dgamma")
    db_bound = gamma(m) * np.abs(dy.astype(np.float64)).sum(axis=tuple(i for i in range(len(shape)) if i != 1))
    assert_within(db, mod.bias.grad.numpy(), db_bound, "dbeta")
    # in place: dx over dy
    dy2 = dy.copy()
    na.bn_bw_input_train(dy2, x, g, saved, out=dy2)
    assert np.array_equal(dy2, dx)


@pytest.mark.parametrize("mom", [0.0, 0.01, 0.5, 1.0])
def test_batchnorm_running_stats_two_steps(rng, mom):
    """Two training batches in a row: the running statistics follow PyTorch's
    (1 − mom)·old + mom·batch (unbiased variance) for any momentum. Per step the
    bounds of test_batchnorm_train; over two steps the first step's error is carried
    on with factor (1 − mom) ≤ 1: the sum of both steps' bounds."""
    shape = (3, 4, 5)
    x1, g, b, rm, rv = bn_case(rng, shape, 2.0)
    x2 = rand(rng, *shape, scale=3.0, offset=-1.0)
    m = 15
    mod = torch_bn(shape, g, b, rm, rv, mom).train()
    rm_k, rv_k = rm, rv
    b_rm = np.zeros(4)
    b_rv = np.zeros(4)
    for x in (x1, x2):
        mod(t64(x))
        _, _, rm_k, rv_k = na.bn_fw_train(x, g, b, rm_k, rv_k, EPS, mom)
        st = SetStats(x, *bn_sets(shape))
        v_unb = (1.0 / st.k_set ** 2 - np.float32(EPS)) * m / (m - 1)
        b_rm = b_rm + mom * st.dmu_set + gamma(4) * (np.abs(mod.running_mean.numpy()) + mom * np.abs(st.mu_set))
        b_rv = b_rv + gamma(2 * m + 24) * mom * v_unb + gamma(4) * np.abs(mod.running_var.numpy())
        assert_within(rm_k, mod.running_mean.numpy(), b_rm, "running_mean")
        assert_within(rv_k, mod.running_var.numpy(), b_rv, "running_var")


def test_batchnorm_train_no_running_stats(rng):
    """running_mean = running_var = NULL (track_running_stats=False): same y and saved."""
    x, g, b, rm, rv = bn_case(rng, (3, 4, 5), 0.0)
    y1, s1, _, _ = na.bn_fw_train(x, g, b, rm, rv)
    y2, s2, _, _ = na.bn_fw_train(x, g, b)
    assert np.array_equal(y1, y2) and np.array_equal(s1, s2)


@pytest.mark.parametrize("shape", [(1, 3), (1, 1, 1, 1), (1, 2, 1)])
def test_batchnorm_train_single_value_per_channel(rng, shape):
    """m = n·hw = 1 (PyTorch raises): documented behaviour, no NaN anywhere.
    var = 0, so y = β exactly ((x − x)·k + β), mean = x, inv_std = 1/sqrt(eps);
    running_mean updated as usual, running_var unchanged; dx = 0, dγ = 0, dβ = dy."""
    x, g, b, rm, rv = bn_case(rng, shape, 3.0)
    c = shape[1]
    with pytest.raises(ValueError):
        torch_bn(shape, g, b, rm, rv).train()(t64(x))
    y, saved, rm2, rv2 = na.bn_fw_train(x, g, b, rm, rv, EPS, 0.1)
    for a in (y, saved, rm2, rv2):
        assert np.isfinite(a).all()
    assert np.array_equal(y.reshape(c), b)
    assert np.array_equal(saved[:c], x.reshape(c))
    assert_within(saved[c:], np.full(c, 1 / math.sqrt(np.float32(EPS))), gamma(4) / math.sqrt(EPS), "inv_std")
    assert_within(rm2, 0.9 * rm.astype(np.float64) + 0.1 * x.reshape(c).astype(np.float64),
                  gamma(4) * (np.abs(rm) + np.abs(x.reshape(c))), "running_mean")
    assert np.array_equal(rv2, rv)
    dy = rand(rng, *shape)
    dx = na.bn_bw_input_train(dy, x, g, saved)
    assert np.array_equal(dx, np.zeros_like(dx))
    dg, db = na.bn_bw_param_train(dy, x, saved)
    assert np.array_equal(dg, np.zeros(c, np.float32)) and np.array_equal(db, dy.reshape(c))


@pytest.mark.parametrize("offset", [0.0, 1000.0])
@pytest.mark.parametrize("shape", BN_SHAPES + [(1, 3), (1, 1, 1, 1)])
def test_batchnorm_eval(rng, shape, offset):
    x, g, b, rm, rv = bn_case(rng, shape, offset)
    rm = (rm + offset).astype(np.float32)
    dy = rand(rng, *shape)
    m = x.size // shape[1]
    mod = torch_bn(shape, g, b, rm, rv)
    mod.eval()
    xt = t64(x, True)
    yt = mod(xt)
    yt.backward(t64(dy))
    G, RM, RV = (bcast_c(v, shape) for v in (g, rm, rv))
    s = G / np.sqrt(RV + np.float32(EPS))
    # y = fmaf(x − rm, ŝ, β), ŝ = γ/sqrt(rv + eps) (3 roundings): the subtraction (u),
    # ŝ (3u) and the fused add (u·|y|): γ₅·|(x − rm)·s| + u·|y|
    y = na.bn_fw_eval(x, g, b, rm, rv)
    y_ref = yt.detach().numpy()
    assert_within(y, y_ref, gamma(5) * np.abs((x - RM) * s) + U * np.abs(y_ref), "y")
    # in place (y over x): same bits
    x2 = x.copy()
    na.bn_fw_eval(x2, g, b, rm, rv, out=x2)
    assert np.array_equal(x2, y)
    # dx = dy·ŝ: γ₄·|dx|
    dx = na.bn_bw_input_eval(dy, g, rv)
    assert_within(dx, xt.grad.numpy(), gamma(4) * np.abs(xt.grad.numpy()), "dx")
    dy2 = dy.copy()
    na.bn_bw_input_eval(dy2, g, rv, out=dy2)
    assert np.array_equal(dy2, dx)
    # dγ = Σ dy·(x − rm) / sqrt(rv + eps): m products of a rounded difference, the sum,
    # the square root and the division: γ_{m+5}·Σ|dy·(x − rm)|·k
    red = tuple(i for i in range(len(shape)) if i != 1)
    dg, db = na.bn_bw_param_eval(dy, x, rm, rv)
    k = (1 / np.sqrt(RV + np.float32(EPS))).reshape(-1)
    assert_within(dg, mod.weight.grad.numpy(),
                  gamma(m + 5) * np.abs(dy.astype(np.float64) * (x - RM)).sum(axis=red) * k, "dgamma")
    assert_within(db, mod.bias.grad.numpy(), gamma(m) * np.abs(dy.astype(np.float64)).sum(axis=red), "dbeta")
    # the running statistics are untouched by eval
    assert np.array_equal(mod.running_mean.numpy().astype(np.float32), rm)


# == LayerNorm =========================================================================

LN_SHAPES = [(2, 5, 7), (1, 13), (4, 3, 16), (6, 33), (3, 1), (1, 1, 4), (5, 64)]


def ln_sets(shape):
    d = shape[-1]
    return (lambda a: a.reshape(-1, d)), (lambda a: a.reshape(shape))


@pytest.mark.parametrize("offset", [0.0, 1000.0])
@pytest.mark.parametrize("shape", LN_SHAPES)
def test_layernorm(rng, shape, offset):
    d = shape[-1]
    x = rand(rng, *shape, offset=offset)
    g, b, dy = rand(rng, d), rand(rng, d), rand(rng, *shape)
    mod = torch.nn.LayerNorm(d, eps=EPS).double()
    with torch.no_grad():
        mod.weight[:] = t64(g)
        mod.bias[:] = t64(b)
    xt = t64(x, True)
    yt = mod(xt)
    yt.backward(t64(dy))
    st = SetStats(x, *ln_sets(shape))
    G = g.astype(np.float64)
    y, saved = na.ln_fw(x, g, b)
    y_ref = yt.detach().numpy()
    assert_within(y, y_ref, st.fw_bound(G, b, y_ref), "y")
    rows = x.size // d
    assert_within(saved[:rows], st.mu_set, st.dmu_set, "saved mean")
    assert_within(saved[rows:], st.k_set, st.rk * st.k_set, "saved inv_std")
    x_in = x.copy()  # in place (y over x, when the backward gets x elsewhere): same bits
    _, saved_in = na.ln_fw(x_in, g, b, out=x_in)
    assert np.array_equal(x_in, y) and np.array_equal(saved_in, saved)
    dx = na.ln_bw_input(dy, x, g, saved)
    dx_ref = xt.grad.numpy()
    assert_within(dx, dx_ref, st.bw_input_bound(dy.astype(np.float64) * G, dx_ref), "dx")
    dy2 = dy.copy()
    na.ln_bw_input(dy2, x, g, saved, out=dy2)
    assert np.array_equal(dy2, dx)
    dg, db = na.ln_bw_param(dy, x, saved)
    red = tuple(range(len(shape) - 1))
    assert_within(dg, mod.weight.grad.numpy(), st.dgamma_terms(dy, rows).sum(axis=red), "dgamma")
    assert_within(db, mod.bias.grad.numpy(), gamma(rows) * np.abs(dy.astype(np.float64)).sum(axis=red), "dbeta")


# == GroupNorm =========================================================================

# (shape, groups): G = 1 (LayerNorm-like over C·hw), G = C (InstanceNorm-like), C = 1,
# 1-D signals, batch 1, odd sizes
GN_CASES = [((3, 6, 4, 5), 3), ((1, 4, 3, 3), 2), ((2, 5, 7), 5), ((2, 6, 9), 1), ((1, 1, 5, 3), 1),
            ((4, 8, 1, 1), 4), ((2, 9, 2, 3), 3), ((3, 4, 13), 2)]


def gn_sets(shape, groups):
    n = shape[0]
    return (lambda a: a.reshape(n * groups, -1)), (lambda a: a.reshape(shape))


@pytest.mark.parametrize("offset", [0.0, 1000.0])
@pytest.mark.parametrize("shape,groups", GN_CASES)
def test_groupnorm(rng, shape, groups, offset):
    c = shape[1]
    x = rand(rng, *shape, offset=offset)
    g, b, dy = rand(rng, c), rand(rng, c), rand(rng, *shape)
    mod = torch.nn.GroupNorm(groups, c, eps=EPS).double()
    with torch.no_grad():
        mod.weight[:] = t64(g)
        mod.bias[:] = t64(b)
    xt = t64(x, True)
    yt = mod(xt)
    yt.backward(t64(dy))
    st = SetStats(x, *gn_sets(shape, groups))
    G, B = bcast_c(g, shape), bcast_c(b, shape)
    y, saved = na.gn_fw(x, g, b, groups)
    y_ref = yt.detach().numpy()
    assert_within(y, y_ref, st.fw_bound(G, B, y_ref), "y")
    ng = shape[0] * groups
    assert_within(saved[:ng], st.mu_set, st.dmu_set, "saved mean")
    assert_within(saved[ng:], st.k_set, st.rk * st.k_set, "saved inv_std")
    x_in = x.copy()  # in place (y over x, when the backward gets x elsewhere): same bits
    _, saved_in = na.gn_fw(x_in, g, b, groups, out=x_in)
    assert np.array_equal(x_in, y) and np.array_equal(saved_in, saved)
    dx = na.gn_bw_input(dy, x, g, saved, groups)
    dx_ref = xt.grad.numpy()
    # the group sums are formed as Σ_c γ_c·(Σ_hw dy): c/G more roundings (one fused
    # multiply-add per channel) on top of the m-term sums
    assert_within(dx, dx_ref, st.bw_input_bound(dy.astype(np.float64) * G, dx_ref, c // groups), "dx")
    dy2 = dy.copy()
    na.gn_bw_input(dy2, x, g, saved, groups, out=dy2)
    assert np.array_equal(dy2, dx)
    dg, db = na.gn_bw_param(dy, x, saved, groups)
    red = tuple(i for i in range(len(shape)) if i != 1)
    terms = x.size // c
    assert_within(dg, mod.weight.grad.numpy(), st.dgamma_terms(dy, terms).sum(axis=red), "dgamma")
    assert_within(db, mod.bias.grad.numpy(), gamma(terms) * np.abs(dy.astype(np.float64)).sum(axis=red), "dbeta")


# == bound sanity: the normalisation bounds catch real bugs ============================

def test_bound_catches_batchnorm_bugs(rng):
    """With mean-1000 data (the widest bounds): a y computed with the variance divided
    by m − 1 instead of m, a dx missing the mean-of-dy term, and a channel off by one
    in dγ all fail."""
    shape = (4, 3, 5)
    x, g, b, rm, rv = bn_case(rng, shape, 1000.0)
    dy = rand(rng, *shape)
    mod = torch_bn(shape, g, b, rm, rv).train()
    xt = t64(x, True)
    yt = mod(xt)
    yt.backward(t64(dy))
    st = SetStats(x, *bn_sets(shape))
    G, B = bcast_c(g, shape), bcast_c(b, shape)
    y_ref = yt.detach().numpy()
    m = 4 * 5
    unb = st.xhat * math.sqrt((m - 1) / m) * G + B
    with pytest.raises(AssertionError):
        assert_within(unb, y_ref, st.fw_bound(G, B, y_ref), "y")
    y, saved, _, _ = na.bn_fw_train(x, g, b, rm, rv)
    assert_within(y, y_ref, st.fw_bound(G, B, y_ref), "y")  # the kernel itself passes
    dx_ref = xt.grad.numpy()
    dy64 = dy.astype(np.float64)
    no_mean = G * st.k * (dy64 - st.xhat * (dy64 * st.xhat).mean(axis=(0, 2), keepdims=True))
    with pytest.raises(AssertionError):
        assert_within(no_mean, dx_ref, st.bw_input_bound(dy64 * G, dx_ref), "dx")
    dg, _ = na.bn_bw_param_train(dy, x, saved)
    bound = st.dgamma_terms(dy, m).sum(axis=(0, 2))
    with pytest.raises(AssertionError):
        assert_within(np.roll(dg, 1), mod.weight.grad.numpy(), bound, "dgamma")


def test_bound_catches_groupnorm_group_bug(rng):
    """Statistics over the wrong grouping (channel-interleaved instead of contiguous
    blocks) fail the y bound."""
    shape, groups = (2, 4, 6), 2
    x = rand(rng, *shape)
    g, b = rand(rng, 4), rand(rng, 4)
    mod = torch.nn.GroupNorm(groups, 4, eps=EPS).double()
    with torch.no_grad():
        mod.weight[:] = t64(g)
        mod.bias[:] = t64(b)
    y_ref = mod(t64(x)).detach().numpy()
    st = SetStats(x, *gn_sets(shape, groups))
    G, B = bcast_c(g, shape), bcast_c(b, shape)
    x64 = x.astype(np.float64)
    xi = x64.reshape(2, 2, 2, 6)  # channel c in group c % 2: the interleaved grouping
    mu = xi.mean(axis=(1, 3), keepdims=True)
    sd = np.sqrt(xi.var(axis=(1, 3), keepdims=True) + EPS)
    wrong = ((xi - mu) / sd).reshape(shape) * G + B
    with pytest.raises(AssertionError):
        assert_within(wrong, y_ref, st.fw_bound(G, B, y_ref), "y")


# == activations =======================================================================

def torch_act(name, xt, alpha):
    return {"relu6": lambda: F.relu6(xt), "elu": lambda: F.elu(xt, alpha), "gelu": lambda: F.gelu(xt),
            "sigmoid": lambda: torch.sigmoid(xt), "tanh": lambda: torch.tanh(xt)}[name]()


def gelu_bounds(x, dy):
    """GELU error bounds (relative, per element) from the libm accuracy of erfcf/expf
    (4u each) and the argument roundings. t = −x/√2 is rounded twice (the constant and
    the product: |Δt| ≤ 2u·|t|), which changes erfc(t) by the factor exp(±2u·|t|·L(t)),
    L(t) = |d ln erfc/dt| = 2·exp(−t²)/(√π·erfc(t)) (≈ 2|t| for t ≫ 1); the pdf's
    argument −x²/2 is rounded once (rel. u): exp changes by u·x²/2. Subnormal results
    lose relative precision: an absolute 2⁻¹²⁶·(|x| + 1) covers them."""
    x = np.asarray(x, np.float64)
    t = -x / math.sqrt(2)
    erfc = torch.special.erfc(torch.tensor(t)).numpy()
    L = np.where(erfc > 0, 2 * np.exp(-t * t) / (math.sqrt(math.pi) * np.where(erfc > 0, erfc, 1)), 2 * np.abs(t))
    e_cdf = 6 * U + 2.02 * U * np.abs(t) * L
    cdf = 0.5 * erfc
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    e_pdf = 6 * U + 1.01 * U * 0.5 * x * x
    tiny = TINY * (np.abs(x) + 1)
    # The float64 REFERENCE has an error of its own: PyTorch's GELU is 0.5·x·(1 + erf(x/√2)),
    # which cancels for x ≪ 0 (float64 gives −0 at x = −9.5, the true value is −1e-20):
    # ≤ 3·2⁻⁵³·|x| absolute for y, 4·2⁻⁵³·|dy| for dx (cdf = (1 + erf)/2 the same way).
    y_bound = np.abs(x * cdf) * (e_cdf + 2 * U) + tiny + 3 * 2.0 ** -53 * np.abs(x)
    d = cdf + x * pdf
    dx_bound = np.abs(dy) * (cdf * e_cdf + np.abs(x) * pdf * e_pdf + 3 * U * np.abs(d) + tiny + 4 * 2.0 ** -53)
    return y_bound, dx_bound


def act_bounds(name, x, y_ref, dy, dx_ref):
    """(fw bound, bw bound) per element; bw reads the KERNEL's y (or x for GELU), so its
    bound includes the propagated forward error."""
    x, y, dy = (np.asarray(a, np.float64) for a in (x, y_ref, dy))
    if name == "relu6":  # exact: a comparison and a copy
        return 0.0, 0.0
    if name == "elu":
        # y = α·expm1f(x) (≤ 2 ulp) times α: γ₃·|y|; dx = dy·(ŷ + α): ŷ's error (γ₃·|y|),
        # the sum and the product (2u·|dx|)
        return gamma(3) * np.abs(y), np.abs(dy) * gamma(3) * np.abs(y) + gamma(2) * np.abs(dx_ref)
    if name == "gelu":
        return gelu_bounds(x, dy)
    if name == "sigmoid":
        # ŷ = 1/(1 + expf(−x)): expf (2 ulp, 4u) relative in e/(1+e) ≤ 1, the add and the
        # division: |ŷ − y| ≤ 6u·y; dx = dy·ŷ(1 − ŷ): ŷ(1 − ŷ) changes by ≤ |Δy| and two
        # roundings: |dy|·(6u·y + 2u·y(1 − y)) + u·|dx| → γ₉·|dy|·y
        # (+ 2⁻¹²⁶ absolute: expf(−x) overflows to Inf for x < −88.7, giving 0 for a true
        # value below the normal range, as float32 PyTorch does)
        return gamma(6) * np.abs(y) + TINY, np.abs(dy) * (gamma(9) * np.abs(y) + TINY)
    if name == "tanh":
        # tanhf ≤ 2 ulp: 4u·|y|; dx = dy·fmaf(−ŷ, ŷ, 1): 2|y|·|Δy| + u(1 − y²) + u → γ₁₀·|dy|
        return gamma(4) * np.abs(y), gamma(10) * np.abs(dy)
    raise KeyError(name)


EXTREMES = np.array([30, -30, 1e4, -1e4, 88.5, -88.5, 104, -104, 6, 0, -0.0, 1e-8, -1e-8, 5.9999995,
                     6.0000005, 17, -17, 9.5, -9.5, 3e38, -3e38], np.float32)


# (name, alpha): alpha is ELU's only; ELU also with α ≠ 1 (not a float32 value: 0.3)
ACT_CASES = [(a, 1.0) for a in na.ACTS] + [("elu", 0.3)]


@pytest.mark.parametrize("name,alpha", ACT_CASES)
@pytest.mark.parametrize("kind", ["random", "wide", "extreme"])
def test_activation(rng, name, kind, alpha):
    alpha = float(np.float32(alpha))  # the reference uses the very float32 α the kernel gets
    if kind == "random":
        x = rand(rng, 3, 37)
    elif kind == "wide":
        x = rand(rng, 2, 5, 13, scale=8.0)
    else:
        x = EXTREMES.copy()
    dy = rand(rng, *x.shape)
    xt = t64(x, True)
    yt = torch_act(name, xt, alpha)
    yt.backward(t64(dy))
    y_ref, dx_ref = yt.detach().numpy(), xt.grad.numpy()
    assert np.isfinite(y_ref).all() and np.isfinite(dx_ref).all()
    y = na.act_fw(name, x, alpha)
    assert np.isfinite(y).all(), f"{name}: non-finite y where PyTorch is finite"
    yb, dxb = act_bounds(name, x, y_ref, dy, dx_ref)
    assert_within(y, y_ref, yb, f"{name} y")
    t = x if name == "gelu" else y
    dx = na.act_bw(name, dy, t, alpha)
    assert np.isfinite(dx).all(), f"{name}: non-finite dx where PyTorch is finite"
    assert_within(dx, dx_ref, dxb, f"{name} dx")
    # in place: fw over x, bw over dy (and over y / x, the tensor bw reads)
    x2 = x.copy()
    na.act_fw(name, x2, alpha, out=x2)
    assert np.array_equal(x2, y, equal_nan=True)
    dy2 = dy.copy()
    na.act_bw(name, dy2, t, alpha, out=dy2)
    assert np.array_equal(dy2, dx)
    t2 = t.copy()
    na.act_bw(name, dy, t2, alpha, out=t2)
    assert np.array_equal(t2, dx)


@pytest.mark.parametrize("name", na.ACTS)
def test_activation_nan_propagates(name):
    y = na.act_fw(name, np.array([np.nan, 1.0], np.float32))
    assert np.isnan(y[0]) and np.isfinite(y[1])


def test_relu6_gradient_at_the_kinks():
    """PyTorch's hardtanh gradient is 0 at x = 0 and x = 6 (strict interior), as ours from y."""
    x = np.array([0.0, 6.0, 3.0, -1.0, 7.0], np.float32)
    xt = t64(x, True)
    F.relu6(xt).backward(torch.ones(5, dtype=torch.float64))
    y = na.act_fw("relu6", x)
    assert np.array_equal(na.act_bw("relu6", np.ones(5, np.float32), y), xt.grad.numpy().astype(np.float32))


def test_bound_catches_activation_bugs(rng):
    """GELU with the tanh approximation, sigmoid bw with y(1 + y), tanh bw with 1 − y:
    each fails its bound."""
    x = rand(rng, 4, 25, scale=3.0)
    dy = rand(rng, *x.shape)
    for name, wrong_fw, wrong_bw in [
            ("gelu", lambda xt: F.gelu(xt, approximate="tanh"), None),
            ("sigmoid", None, lambda y, dy: dy * y * (1 + y)),
            ("tanh", None, lambda y, dy: dy * (1 - y))]:
        xt = t64(x, True)
        yt = torch_act(name, xt, 1.0)
        yt.backward(t64(dy))
        y_ref, dx_ref = yt.detach().numpy(), xt.grad.numpy()
        yb, dxb = act_bounds(name, x, y_ref, dy, dx_ref)
        if wrong_fw is not None:
            with pytest.raises(AssertionError):
                assert_within(wrong_fw(t64(x)).numpy(), y_ref, yb, name)
        if wrong_bw is not None:
            with pytest.raises(AssertionError):
                assert_within(wrong_bw(y_ref, dy.astype(np.float64)), dx_ref, dxb, name)


# == dropout ===========================================================================

@pytest.mark.parametrize("count,p_drop,state", [(1, 0.5, 1), (7, 0.5, 12345), (8, 0.3, 99), (13, 0.2, 0),
                                                (64, 0.9, 0xDEADBEEF), (1001, 0.5, 7), (37, 0.0, 5),
                                                (37, 1.0, 5)])
def test_dropout_exact(rng, count, p_drop, state):
    """Given the mask, y and dx are exact: keep ? v·scale : 0 with scale = 1/(1 − p) in
    float32 (one rounding, as PyTorch); the mask and the new state are the host's
    xorshift32 reproduction bit for bit; unused bits of the last byte are 0."""
    x, dy = rand(rng, count), rand(rng, count)
    y, mask, new_state = na.dropout_fw_train(x, p_drop, state)
    keep, s = na.xorshift_keep(count, p_drop, state)
    assert new_state == s
    assert mask.size == (count + 7) // 8
    assert np.array_equal(na.unpack_mask(mask, count), keep)
    assert np.array_equal(np.unpackbits(mask, bitorder="little")[count:], np.zeros(8 * mask.size - count, np.uint8))
    scale = np.float32(1) / (np.float32(1) - np.float32(p_drop)) if p_drop < 1 else np.float32(0)
    assert np.array_equal(y, np.where(keep, x * scale, np.float32(0)))
    dx = na.dropout_bw(dy, mask, p_drop)
    assert np.array_equal(dx, np.where(keep, dy * scale, np.float32(0)))
    if p_drop == 0.0:
        assert keep.all() and np.array_equal(y, x)
    if p_drop == 1.0:
        assert not keep.any() and not y.any()
    # PyTorch's dropout given the same mask: x·mask/(1 − p) in float32
    if 0 < p_drop < 1:
        # (with the float32 p the kernel gets: 1 − p is then exact, and PyTorch rounds
        # 1/(1 − p) and the product, we round the scale and the product: ≤ 2u apart)
        p32 = float(np.float32(p_drop))
        tref = torch.tensor(x) * torch.tensor(keep, dtype=torch.float32) / (1 - p32)
        assert np.allclose(y, tref.numpy(), rtol=2.02 * U, atol=0)
    # in place, and chained calls draw fresh masks from the advanced state
    x2 = x.copy()
    _, mask2, st2 = na.dropout_fw_train(x2, p_drop, state, out=x2)
    assert np.array_equal(x2, y) and np.array_equal(mask2, mask) and st2 == new_state
    dy2 = dy.copy()
    na.dropout_bw(dy2, mask, p_drop, out=dy2)
    assert np.array_equal(dy2, dx)


def test_dropout_state_chains(rng):
    x = rand(rng, 200)
    _, m1, s1 = na.dropout_fw_train(x, 0.5, 42)
    _, m2, s2 = na.dropout_fw_train(x, 0.5, s1)
    _, m12, s12 = na.dropout_fw_train(np.concatenate([x, x]), 0.5, 42)
    assert not np.array_equal(m1, m2)
    assert s12 == s2 and np.array_equal(np.concatenate([na.unpack_mask(m1, 200), na.unpack_mask(m2, 200)]),
                                        na.unpack_mask(m12, 400))


@pytest.mark.parametrize("p_drop", [0.1, 0.5, 0.8])
def test_dropout_keep_rate(p_drop):
    """Over N = 200 000 draws the keep rate is within 5 binomial standard deviations of
    1 − p (false-failure probability < 1e-6), and so is every 8-aligned bit position
    (a stuck bit or a repeating mask would show there), over a few seeds."""
    N = 200_000
    x = np.ones(N, np.float32)
    for seed in (1, 2024, 0xFFFFFFFF):
        _, mask, _ = na.dropout_fw_train(x, p_drop, seed)
        keep = na.unpack_mask(mask, N)
        sd = math.sqrt(p_drop * (1 - p_drop) / N)
        assert abs(keep.mean() - (1 - p_drop)) < 5 * sd
        per_bit = keep.reshape(-1, 8).mean(axis=0)
        assert (np.abs(per_bit - (1 - p_drop)) < 5 * sd * math.sqrt(8)).all()
        # neighbouring decisions are uncorrelated (xorshift's successive outputs)
        c = np.corrcoef(keep[:-1], keep[1:])[0, 1]
        assert abs(c) < 5 / math.sqrt(N)


def test_dropout_eval_identity(rng):
    x = rand(rng, 3, 11)
    assert np.array_equal(na.dropout_fw_eval(x), x)
    x2 = x.copy()
    na.dropout_fw_eval(x2, out=x2)
    assert np.array_equal(x2, x)


def test_bound_catches_dropout_mask_bug(rng):
    """A mask shifted by one element (an off-by-one in the bit index) fails the exactness check."""
    count = 50
    x = rand(rng, count)
    y, mask, _ = na.dropout_fw_train(x, 0.5, 3)
    keep = na.unpack_mask(mask, count)
    scale = np.float32(2)
    assert np.array_equal(y, np.where(keep, x * scale, 0))
    assert not np.array_equal(y, np.where(np.roll(keep, 1), x * scale, 0))


# == the same under AddressSanitizer + UBSan ===========================================

@pytest.mark.skipif(os.environ.get("EP_NATIVE_VARIANT") == "sanitize", reason="already sanitized")
def test_under_sanitizers():
    """Every test above again, against the -fsanitize=address,undefined,float-cast-overflow
    library: an out-of-bounds access of any buffer (exact-size NumPy buffers, malloc'd
    through PYTHONMALLOC=malloc) or any UB aborts the subprocess."""
    tests = Path(__file__).parent
    cmd = [sys.executable, "-m", "pytest", "-q", "--capture=sys", "-p", "no:cacheprovider",
           "-k", "not test_under_sanitizers and not keep_rate", str(Path(__file__))]
    nl.build("sanitize")
    proc = subprocess.run(cmd, check=False, env=nl.sanitized_env(), capture_output=True, text=True,
                          cwd=tests.parent, timeout=600)
    assert proc.returncode == 0, proc.stderr[:6000] + proc.stdout[-3000:]
    assert " passed" in proc.stdout
