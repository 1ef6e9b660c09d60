"""Golden tests of the attention / tensor / loss / optimizer kernels (ep_attn_optim.h)
against PyTorch run in float64 on the very same float32 inputs.

Tolerances come from floating-point error analysis, as in test_runtime_ops.py
(Higham, ch. 3): u = 2⁻²⁴, a sum of k terms in any order is off by at most
γ_k·Σ|termᵢ|, γ_k = k·u/(1 − k·u) (taken as 1.01·k·u). For the composite kernels
(attention, sequence pooling, the optimizers over several steps) the bound is
propagated through the computation in float64 alongside the reference, to first
order: for C = A·B computed in float32 from A, B that carry absolute errors eA, eB,
  eC = γ_k·|A||B| + eA|B| + |A|eB,
and for softmax p = softmax(s) with input errors e_s,
  e_p = p·(e_s + Σ p e_s) + p·(γ_T + 4u + |d|u + Σ_k p_k(2u + |d_k|u)) + 1e-37
(d = s − max: its rounding, expf within 1 ulp, the sum, 1/sum and the product; 1e-37
covers results in the float32 subnormal range). The neglected second-order terms
(products of two error bounds) are below 1e-4 of the first-order ones at these
sizes, so every propagated bound gets a ×1.05 margin (FIRST_ORDER_MARGIN) and no
hand-tuned constant. Such bounds are orders of magnitude below the size of a wrong
index, sign, scale or head split: the test_bound_catches_* tests show that.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import attn_optim_lib as al
import native_lib as nl

U = 2.0 ** -24
FIRST_ORDER_MARGIN = 1.05


def gamma(k) -> float:
    return 1.01 * k * U


def assert_within(got, ref, bound, what: str) -> None:
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    err = np.abs(got - ref)
    bad = ~(err <= bound)  # NaN counts as a failure
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} elements beyond the bound; worst error "
                           f"{np.nanmax(err):.3g}, bound there {np.broadcast_to(bound, err.shape)[bad][0]:.3g}")


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def f64(a):
    return np.asarray(a, np.float64)


def t64(a, grad=False):
    return torch.tensor(f64(a), dtype=torch.float64, requires_grad=grad)


@pytest.fixture
def rng(request):
    """A generator seeded from the test id: reproducible, different per case."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def softmax_err(p, d, e_in):
    """The softmax bound of the module docstring: p = softmax over the last axis,
    d = s − max (float64), e_in = absolute error bound of the inputs s."""
    T = p.shape[-1]
    spread = (p * (2 * U + np.abs(d) * U)).sum(-1, keepdims=True)
    carried = p * (e_in + (p * e_in).sum(-1, keepdims=True))
    return carried + p * (gamma(T) + 4 * U + np.abs(d) * U + spread) + 1e-37


# == multi-head self-attention ==========================================================

def mhsa_torch(x, w_in, b_in, w_out, b_out, heads, dy):
    """nn.MultiheadAttention (batch_first, self-attention) in float64: y, P, dx and the
    parameter gradients by autograd."""
    n, t, d = x.shape
    mha = torch.nn.MultiheadAttention(d, heads, bias=True, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(t64(w_in))
        mha.in_proj_bias.copy_(t64(b_in))
        mha.out_proj.weight.copy_(t64(w_out))
        mha.out_proj.bias.copy_(t64(b_out))
    xt = t64(x, grad=True)
    y, P = mha(xt, xt, xt, need_weights=True, average_attn_weights=False)
    y.backward(t64(dy))
    return dict(y=y.detach().numpy(), P=P.detach().numpy(), dx=xt.grad.numpy(),
                dw_in=mha.in_proj_weight.grad.numpy(), db_in=mha.in_proj_bias.grad.numpy(),
                dw_out=mha.out_proj.weight.grad.numpy(), db_out=mha.out_proj.bias.grad.numpy())


def mhsa_bounds(x, w_in, b_in, w_out, b_out, heads, dy):
    """float64 intermediates of the kernel's computation and first-order error bounds
    of every output (see the module docstring), following ep_mhsa.c step by step."""
    x, w_in, b_in, w_out, b_out, dy = map(f64, (x, w_in, b_in, w_out, b_out, dy))
    A = np.abs
    n, T, D = x.shape
    H, E = heads, D // heads
    s = 1.0 / np.sqrt(E)

    def heads_of(a):  # [n][T][D] -> [n][H][T][E]
        return a.reshape(n, T, H, E).transpose(0, 2, 1, 3)

    def cat(a):  # [n][H][T][E] -> [n][T][D]
        return a.transpose(0, 2, 1, 3).reshape(n, T, D)

    def tr(a):
        return np.swapaxes(a, -1, -2)

    qkv = x @ w_in.T + b_in
    e_qkv = gamma(D + 1) * (A(x) @ A(w_in).T + A(b_in))
    q, k, v = (heads_of(qkv[..., i * D:(i + 1) * D]) for i in range(3))
    eq, ek, ev = (heads_of(e_qkv[..., i * D:(i + 1) * D]) for i in range(3))
    # scores: E-term dot products, then × scale (1/sqrtf(E): 2 roundings) rounded once
    S = s * (q @ tr(k))
    e_S = s * (gamma(E) * (A(q) @ tr(A(k))) + eq @ tr(A(k)) + A(q) @ tr(ek)) + 3 * U * A(S)
    dd = S - S.max(-1, keepdims=True)
    P = np.exp(dd) / np.exp(dd).sum(-1, keepdims=True)
    e_P = softmax_err(P, dd, e_S)
    O = P @ v
    e_O = gamma(T) * (P @ A(v)) + e_P @ A(v) + P @ ev
    Oc, e_Oc = cat(O), cat(e_O)
    e_y = gamma(D + 1) * (A(Oc) @ A(w_out).T + A(b_out)) + e_Oc @ A(w_out).T

    dO = dy @ w_out
    e_dO = gamma(D) * (A(dy) @ A(w_out))
    dOh, e_dOh = heads_of(dO), heads_of(e_dO)
    dP = dOh @ tr(v)
    e_dP = gamma(E) * (A(dOh) @ tr(A(v))) + e_dOh @ tr(A(v)) + A(dOh) @ tr(ev)
    r = (P * dP).sum(-1, keepdims=True)
    e_r = (gamma(T) * (P * A(dP)) + e_P * A(dP) + P * e_dP).sum(-1, keepdims=True)
    dS = P * (dP - r)
    e_dS = e_P * A(dP - r) + P * (e_dP + e_r) + 2 * U * P * A(dP - r)
    dq = s * (dS @ k)
    e_dq = s * (gamma(T) * (A(dS) @ A(k)) + e_dS @ A(k) + A(dS) @ ek) + 3 * U * A(dq)
    dk = s * (tr(dS) @ q)
    e_dk = s * (gamma(T) * (tr(A(dS)) @ A(q)) + tr(e_dS) @ A(q) + tr(A(dS)) @ eq) + 3 * U * A(dk)
    e_dv = gamma(T) * (tr(P) @ A(dOh)) + tr(e_P) @ A(dOh) + tr(P) @ e_dOh
    dv = tr(P) @ dOh
    dqkv = np.concatenate([cat(dq), cat(dk), cat(dv)], axis=-1)
    e_dqkv = np.concatenate([cat(e_dq), cat(e_dk), cat(e_dv)], axis=-1)
    e_dx = gamma(3 * D) * (A(dqkv) @ A(w_in)) + e_dqkv @ A(w_in)
    rows = n * T
    fl = lambda a: a.reshape(rows, -1)  # noqa: E731
    e_dw_in = gamma(rows) * (A(fl(dqkv)).T @ A(fl(x))) + fl(e_dqkv).T @ A(fl(x))
    e_db_in = gamma(rows) * A(fl(dqkv)).sum(0) + fl(e_dqkv).sum(0)
    e_dw_out = gamma(rows) * (A(fl(dy)).T @ A(fl(Oc))) + A(fl(dy)).T @ fl(e_Oc)
    e_db_out = gamma(rows) * A(fl(dy)).sum(0)
    m = FIRST_ORDER_MARGIN
    return dict(qkv=qkv, P=P, dqkv=dqkv,
                e_qkv=m * e_qkv, e_P=m * e_P, e_y=m * e_y, e_dqkv=m * e_dqkv, e_dx=m * e_dx,
                e_dw_in=m * e_dw_in, e_db_in=m * e_db_in, e_dw_out=m * e_dw_out,
                e_db_out=m * e_db_out)


def mhsa_inputs(rng, n, t, d, heads, scale=1.0):
    """x ~ N(0, scale²), weights ~ N(0, 1/D) (the scale of PyTorch's xavier init)."""
    ws = 1.0 / np.sqrt(d)
    return (rand(rng, n, t, d, scale=scale), rand(rng, 3 * d, d, scale=ws), rand(rng, 3 * d, scale=0.1),
            rand(rng, d, d, scale=ws), rand(rng, d, scale=0.1), rand(rng, n, t, d))


# (n, T, D, heads): T = 1, heads = 1, heads = D, D and head dim not multiples of 4,
# T not a multiple of 4, batch 1 and 3, and a CCT-like layer
MHSA_SHAPES = [(1, 1, 4, 1), (3, 1, 5, 5), (3, 5, 6, 2), (1, 7, 6, 6), (3, 4, 8, 1),
               (2, 9, 12, 3), (1, 3, 10, 2), (3, 6, 7, 7), (2, 17, 16, 4)]


@pytest.mark.parametrize("n,t,d,heads", MHSA_SHAPES)
def test_mhsa(rng, n, t, d, heads):
    x, w_in, b_in, w_out, b_out, dy = mhsa_inputs(rng, n, t, d, heads)
    ref = mhsa_torch(x, w_in, b_in, w_out, b_out, heads, dy)
    bd = mhsa_bounds(x, w_in, b_in, w_out, b_out, heads, dy)

    y, saved = al.mhsa_fw(x, w_in, b_in, w_out, b_out, heads)
    qkv, P = al.mhsa_unpack_saved(saved, n, t, d, heads)
    assert_within(qkv, bd["qkv"], bd["e_qkv"], "saved qkv")
    assert_within(P, ref["P"], bd["e_P"], "saved P")
    assert_within(y, ref["y"], bd["e_y"], "y")

    dqkv, dx = al.mhsa_bw_input(dy, w_in, w_out, saved, heads)
    assert_within(dqkv, bd["dqkv"], bd["e_dqkv"], "dqkv")
    assert_within(dx, ref["dx"], bd["e_dx"], "dx")
    # bw_qkv alone is the same computation: bit-identical
    np.testing.assert_array_equal(al.mhsa_bw_qkv(dy, w_out, saved, heads), dqkv)

    dw_in, db_in, dw_out, db_out = al.mhsa_bw_param(dy, x, saved, dqkv, heads)
    assert_within(dw_in, ref["dw_in"], bd["e_dw_in"], "dw_in")
    assert_within(db_in, ref["db_in"], bd["e_db_in"], "db_in")
    assert_within(dw_out, ref["dw_out"], bd["e_dw_out"], "dw_out")
    assert_within(db_out, ref["db_out"], bd["e_db_out"], "db_out")


def test_mhsa_byte_counts():
    p = al.mhsa_params(3, 5, 6, 2)
    assert al.lib().ep_mhsa_saved_bytes(p) == 4 * 3 * (3 * 5 * 6 + 2 * 5 * 5)
    assert al.lib().ep_mhsa_scratch_bytes(p) == 4 * (5 * 6 + 5 * 5)


def test_mhsa_large_scores_stay_finite(rng):
    """Scores of several hundred: only the max-subtracted softmax keeps P finite."""
    n, t, d, heads = 2, 5, 8, 2
    x, w_in, b_in, w_out, b_out, dy = mhsa_inputs(rng, n, t, d, heads, scale=30.0)
    y, saved = al.mhsa_fw(x, w_in, b_in, w_out, b_out, heads)
    _, P = al.mhsa_unpack_saved(saved, n, t, d, heads)
    bd = mhsa_bounds(x, w_in, b_in, w_out, b_out, heads, dy)
    assert np.isfinite(y).all() and np.isfinite(P).all()
    assert_within(P, bd["P"], bd["e_P"], "saved P")
    assert_within(y, mhsa_torch(x, w_in, b_in, w_out, b_out, heads, dy)["y"], bd["e_y"], "y")


def test_bound_catches_a_wrong_head_split(rng):
    """The mhsa bounds are far tighter than a plausible bug: one head instead of two
    (a wrong head split / scale), or dK and dV swapped."""
    n, t, d = 2, 5, 6
    x, w_in, b_in, w_out, b_out, dy = mhsa_inputs(rng, n, t, d, 2)
    y, saved = al.mhsa_fw(x, w_in, b_in, w_out, b_out, 2)
    bd = mhsa_bounds(x, w_in, b_in, w_out, b_out, 2, dy)
    wrong = mhsa_torch(x, w_in, b_in, w_out, b_out, 1, dy)
    with pytest.raises(AssertionError):
        assert_within(y, wrong["y"], bd["e_y"], "y")
    dqkv, _ = al.mhsa_bw_input(dy, w_in, w_out, saved, 2)
    swapped = dqkv[..., [*range(d), *range(2 * d, 3 * d), *range(d, 2 * d)]]
    with pytest.raises(AssertionError):
        assert_within(swapped, bd["dqkv"], bd["e_dqkv"], "dqkv")


# == sequence pooling ===================================================================

def seqpool_torch(x, g, c, dy):
    """CCT's SeqPool: matmul(softmax(attention_pool(x), dim=1)ᵀ, x).squeeze(-2)."""
    xt, gt, ct = t64(x, True), t64(g.reshape(1, -1), True), t64(c.reshape(1), True)
    w = torch.softmax(torch.nn.functional.linear(xt, gt, ct), dim=1)  # [n][T][1]
    y = torch.matmul(w.transpose(-1, -2), xt).squeeze(-2)
    y.backward(t64(dy))
    return dict(y=y.detach().numpy(), w=w.detach().numpy()[..., 0], dx=xt.grad.numpy(),
                dg=gt.grad.numpy()[0], dc=ct.grad.numpy())


def seqpool_bounds(x, g, c, dy):
    """First-order bounds following ep_seqpool.c (see the module docstring)."""
    x, g, c, dy = f64(x), f64(g), f64(c), f64(dy)
    A = np.abs
    n, T, D = x.shape
    l = x @ g + c[0]
    e_l = gamma(D + 1) * (A(x) @ A(g) + A(c[0]))
    dd = l - l.max(-1, keepdims=True)
    w = np.exp(dd) / np.exp(dd).sum(-1, keepdims=True)
    e_w = softmax_err(w, dd, e_l)
    e_y = gamma(T) * np.einsum("nt,ntd->nd", w, A(x)) + np.einsum("nt,ntd->nd", e_w, A(x))
    e = np.einsum("nd,ntd->nt", dy, x)
    e_e = gamma(D) * np.einsum("nd,ntd->nt", A(dy), A(x))
    r = (w * e).sum(-1, keepdims=True)
    e_r = (gamma(T) * w * A(e) + e_w * A(e) + w * e_e).sum(-1, keepdims=True)
    dl = w * (e - r)
    e_dl = e_w * A(e - r) + w * (e_e + e_r) + 2 * U * w * A(e - r)
    # dx_t = w_t dy + dl_t g: two products and a sum
    e_dx = (e_w[..., None] * A(dy)[:, None, :] + e_dl[..., None] * A(g)
            + gamma(2) * (w[..., None] * A(dy)[:, None, :] + A(dl)[..., None] * A(g)))
    rows = n * T
    e_dg = gamma(rows) * np.einsum("nt,ntd->d", A(dl), A(x)) + np.einsum("nt,ntd->d", e_dl, A(x))
    e_dc = gamma(rows) * A(dl).sum() + e_dl.sum()
    m = FIRST_ORDER_MARGIN
    return dict(w=w, e_w=m * e_w, e_y=m * e_y, e_dx=m * e_dx, e_dg=m * e_dg,
                e_dc=np.array([m * e_dc]))


SEQPOOL_SHAPES = [(1, 1, 1), (1, 1, 5), (3, 1, 4), (1, 5, 7), (3, 4, 8), (3, 9, 13), (2, 17, 16)]


@pytest.mark.parametrize("n,t,d", SEQPOOL_SHAPES)
def test_seqpool(rng, n, t, d):
    x, g, c, dy = rand(rng, n, t, d), rand(rng, d), rand(rng, 1), rand(rng, n, d)
    ref, bd = seqpool_torch(x, g, c, dy), seqpool_bounds(x, g, c, dy)
    y, w = al.seqpool_fw(x, g, c)
    assert_within(w, ref["w"], bd["e_w"], "saved w")
    assert_within(y, ref["y"], bd["e_y"], "y")
    assert_within(al.seqpool_bw_input(dy, x, g, w), ref["dx"], bd["e_dx"], "dx")
    dg, dc = al.seqpool_bw_param(dy, x, w)
    assert_within(dg, ref["dg"], bd["e_dg"], "dg")
    assert_within(dc, ref["dc"], bd["e_dc"], "dc")


def test_seqpool_large_logits(rng):
    """Token logits of ±hundreds: max-subtraction keeps everything finite."""
    n, t, d = 2, 6, 5
    x, g, c, dy = rand(rng, n, t, d, scale=40.0), rand(rng, d), rand(rng, 1), rand(rng, n, d)
    ref, bd = seqpool_torch(x, g, c, dy), seqpool_bounds(x, g, c, dy)
    y, w = al.seqpool_fw(x, g, c)
    assert np.isfinite(y).all() and np.isfinite(w).all()
    assert_within(y, ref["y"], bd["e_y"], "y")
    assert_within(al.seqpool_bw_input(dy, x, g, w), ref["dx"], bd["e_dx"], "dx")


def test_bound_catches_a_seqpool_sign_error(rng):
    """dx with the softmax-Jacobian term's sign flipped (dl = w (r - e)) must fail."""
    n, t, d = 3, 5, 7
    x, g, c, dy = rand(rng, n, t, d), rand(rng, d), rand(rng, 1), rand(rng, n, d)
    bd = seqpool_bounds(x, g, c, dy)
    _, w = al.seqpool_fw(x, g, c)
    x64, dy64, w64 = f64(x), f64(dy), f64(w)
    e = np.einsum("nd,ntd->nt", dy64, x64)
    r = (w64 * e).sum(-1, keepdims=True)
    buggy = w64[..., None] * dy64[:, None, :] + (w64 * (r - e))[..., None] * f64(g)
    with pytest.raises(AssertionError):
        assert_within(buggy, seqpool_torch(x, g, c, dy)["dx"], bd["e_dx"], "dx")


# == softmax ============================================================================

def softmax_fw_bound(x):
    x = f64(x)
    d = x - x.max(-1, keepdims=True)
    p = np.exp(d) / np.exp(d).sum(-1, keepdims=True)
    return p, softmax_err(p, d, 0.0)  # exact inputs: no carried error


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (3, 4), (3, 13), (2, 3, 5), (4, 64)])
def test_softmax(rng, shape):
    x = rand(rng, *shape, scale=3.0)
    ref = torch.softmax(t64(x), dim=-1).numpy()
    _, bound = softmax_fw_bound(x)
    y = al.softmax_fw(x)
    assert_within(y, ref, bound, "y")
    assert_within(al.softmax_fw(x, in_place=True), ref, bound, "y in place")

    dy = rand(rng, *shape)
    # the input gradient from y alone, as PyTorch's own softmax backward computes it
    ref_dx = torch.ops.aten._softmax_backward_data(t64(dy), t64(y), -1, torch.float64).numpy()
    y64, dy64 = f64(y), f64(dy)
    s = (y64 * dy64).sum(-1, keepdims=True)
    # s sums C products (γ_C·Σ|y dy|); dy − s and the product round once each
    bound_dx = (y64 * (gamma(shape[-1]) * np.abs(y64 * dy64).sum(-1, keepdims=True)
                       + U * np.abs(dy64 - s)) + U * np.abs(ref_dx)) * 1.01
    assert_within(al.softmax_bw(dy, y), ref_dx, bound_dx, "dx")
    assert_within(al.softmax_bw(dy, y, alias="dy"), ref_dx, bound_dx, "dx over dy")
    assert_within(al.softmax_bw(dy, y, alias="y"), ref_dx, bound_dx, "dx over y")


def test_softmax_large_logits_do_not_overflow(rng):
    """Logits of ±80 (rows all near +80, all near −80, mixed: e^−160 underflows to 0)
    and a mixed ±100 row, where a softmax without the max subtraction overflows
    (e^100 > FLT_MAX) and returns NaN; the max-subtracted kernel stays within the bound."""
    x = np.where(rng.random((5, 9)) < 0.5, -80.0, 80.0)
    x[0], x[1] = 80.0, -80.0
    x[4] *= 100.0 / 80.0
    x = (x + rng.standard_normal((5, 9)) * 0.5).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        naive = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
    assert not np.isfinite(naive[4]).all()
    y = al.softmax_fw(x)
    assert np.isfinite(y).all()
    ref = torch.softmax(t64(x), dim=-1).numpy()
    _, bound = softmax_fw_bound(x)
    assert_within(y, ref, bound, "y")
    # each row sums to 1 (summed in float64): |Σ y − 1| ≤ Σ |y − p| ≤ the row's bounds
    assert_within(f64(y).sum(-1), np.ones(5), bound.sum(-1), "row sums")


def test_softmax_minus_inf_is_probability_zero():
    y = al.softmax_fw(np.array([[0.0, -np.inf, 1.0]], np.float32))
    assert y[0, 1] == 0.0 and np.isfinite(y).all()


def test_bound_catches_a_softmax_axis_bug(rng):
    """Softmax over the wrong axis (columns) is caught by the row bound."""
    x = rand(rng, 4, 6, scale=3.0)
    _, bound = softmax_fw_bound(x)
    wrong = torch.softmax(t64(x), dim=0).numpy()
    with pytest.raises(AssertionError):
        assert_within(al.softmax_fw(x), wrong, bound, "y")


# == tensor ops =========================================================================
# add, accumulate, concat and transpose are exact: a float32 sum is correctly rounded
# (IEEE 754), so it equals NumPy's float32 a + b bit for bit, and the copies move bits.

@pytest.mark.parametrize("size", [1, 5, 64, 1001])
def test_add_and_accumulate(rng, size):
    a, b = rand(rng, size), rand(rng, size)
    expect = a + b
    assert (torch.from_numpy(expect) == torch.from_numpy(a) + torch.from_numpy(b)).all()
    np.testing.assert_array_equal(al.add_fw(a, b), expect)
    for alias in ("a", "b"):
        np.testing.assert_array_equal(al.add_fw(a, b, alias=alias), expect)
    np.testing.assert_array_equal(al.add_fw(a, a, alias="both"), a + a)
    np.testing.assert_array_equal(al.accumulate(a, b), expect)


def test_gradient_fan_in_matches_autograd(rng):
    """x feeding two consumers: autograd sums the two gradients; so does accumulate."""
    x = t64(rand(rng, 3, 5), True)
    g1, g2 = rand(rng, 3, 5), rand(rng, 3, 5)
    ((x * 1.0) * t64(g1)).sum().backward(retain_graph=True)
    (x * t64(g2)).sum().backward()
    got = al.accumulate(g1, g2)
    # one float32 addition per element: within u·|exact|
    assert_within(got, x.grad.numpy(), U * np.abs(x.grad.numpy()), "fan-in gradient")


@pytest.mark.parametrize("n,c0,c1,hw", [(1, 1, 1, (1,)), (3, 2, 5, (3, 4)), (2, 3, 1, (7,)),
                                        (1, 4, 4, (2, 3))])
def test_concat(rng, n, c0, c1, hw):
    a, b = rand(rng, n, c0, *hw), rand(rng, n, c1, *hw)
    at, bt = t64(a, True), t64(b, True)
    yt = torch.cat([at, bt], dim=1)
    y = al.concat_fw(a, b)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    dy = rand(rng, *y.shape)
    yt.backward(t64(dy))
    da, db = al.concat_bw(dy, c0)
    np.testing.assert_array_equal(da, at.grad.numpy())
    np.testing.assert_array_equal(db, bt.grad.numpy())


@pytest.mark.parametrize("n,a,b", [(1, 1, 1), (1, 1, 7), (3, 7, 1), (3, 5, 6), (2, 8, 4), (1, 9, 13)])
def test_transpose(rng, n, a, b):
    x = rand(rng, n, a, b)
    xt = t64(x, True)
    yt = xt.transpose(1, 2)
    y = al.transpose_fw(x)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    dy = rand(rng, n, b, a)
    yt.backward(t64(dy))
    np.testing.assert_array_equal(al.transpose_bw(dy), xt.grad.numpy())


# == MSE ================================================================================

@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (3, 5), (3, 64), (32, 13), (2, 3, 4, 5)])
def test_mse(rng, shape):
    pred, target = rand(rng, *shape), rand(rng, *shape)
    pt = t64(pred, True)
    loss = torch.nn.MSELoss()(pt, t64(target))
    loss.backward()
    N = pred.size
    d2 = (f64(pred) - f64(target)) ** 2
    # each term: the difference and the square round once each (3u relative, as the
    # square doubles the relative error of d); the sum of N terms γ_N; /N rounds once
    bound = (gamma(N) + 4 * U) * d2.sum() / N * 1.01
    assert_within(al.mse_fw(pred, target), loss.item(), bound, "loss")
    # (2/N)·(pred − target): 2/N, the difference and the product round once each
    ref = pt.grad.numpy()
    bound_d = 3.03 * U * np.abs(ref)
    assert_within(al.mse_bw(pred, target), ref, bound_d, "dpred")
    assert_within(al.mse_bw(pred, target, alias="pred"), ref, bound_d, "dpred over pred")
    assert_within(al.mse_bw(pred, target, alias="target"), ref, bound_d, "dpred over target")


def test_bound_catches_an_mse_scale_bug(rng):
    """A gradient of the sum instead of the mean (missing 1/N, or missing 2) fails."""
    pred, target = rand(rng, 3, 5), rand(rng, 3, 5)
    ref = 2.0 * (f64(pred) - f64(target)) / pred.size
    with pytest.raises(AssertionError):
        assert_within(ref / 2.0, ref, 3.03 * U * np.abs(ref), "dpred")


# == optimizers =========================================================================

STEPS = 5


def f32val(v: float) -> float:
    """The float32 value the kernel receives for a hyper-parameter, as a Python float."""
    return float(np.float32(v))


def _sgd_bound_step(st, g_in, cfg, step):
    """One step of the float64 first-order error bound of ep_sgd_momentum_update_f32.
    st: dict p, e_p, buf, e_buf (float64 arrays); g_in = grad_scale·grad in float64."""
    lr, mu, damp, wd = cfg["lr"], cfg["momentum"], cfg["dampening"], cfg["weight_decay"]
    A = np.abs
    p, e_p = st["p"], st["e_p"]
    g = g_in + wd * p
    e_g = wd * e_p + gamma(3) * (A(g_in) + wd * A(p))
    if mu == 0.0:
        d, e_d = g, e_g
    else:
        keep = 1.0 - damp
        if step == 1:
            buf, e_buf = g, e_g
        else:
            buf = mu * st["buf"] + keep * g
            e_buf = mu * st["e_buf"] + keep * e_g + gamma(4) * (mu * A(st["buf"]) + keep * A(g))
        st["buf"], st["e_buf"] = buf, e_buf
        if cfg["nesterov"]:
            d, e_d = g + mu * buf, e_g + mu * e_buf + gamma(2) * (A(g) + mu * A(buf))
        else:
            d, e_d = buf, e_buf
    st["p"] = p - lr * d
    st["e_p"] = e_p + lr * e_d + gamma(2) * (A(p) + lr * A(d))


SGD_CONFIGS = [
    dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=1e-2, nesterov=True),
    dict(lr=0.01, momentum=0.5, dampening=0.3, weight_decay=5e-4, nesterov=False),
]


@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=lambda c: f"mu{c['momentum']}-nest{int(c['nesterov'])}-"
                         f"damp{c['dampening']}-wd{c['weight_decay']}")
@pytest.mark.parametrize("size,accum", [(1, 1), (13, 1), (257, 3)])
def test_sgd_momentum_matches_torch(rng, cfg, size, accum):
    cfg = {k: (f32val(v) if isinstance(v, float) else v) for k, v in cfg.items()}
    scale = f32val(1.0 / accum)
    p0 = rand(rng, size)
    # accum micro-batch gradients per step, summed by the accumulate kernel
    acc_grads = []
    for _ in range(STEPS):
        acc = np.zeros(size, np.float32)
        for _ in range(accum):
            acc = al.accumulate(acc, rand(rng, size))
        acc_grads.append(acc)
    pt = t64(p0, True)
    opt = torch.optim.SGD([pt], **cfg)
    w, buf = p0.copy(), np.zeros(size, np.float32)
    st = dict(p=f64(p0), e_p=np.zeros(size))
    for k, acc in enumerate(acc_grads, start=1):
        g_in = f64(acc) * scale  # the gradient torch sees: the mean of the micro-batches
        pt.grad = torch.tensor(g_in)
        opt.step()
        w, buf = al.sgd_momentum_step(w, buf, acc, step=k, grad_scale=scale, **cfg)
        _sgd_bound_step(st, g_in, cfg, k)
        assert_within(w, pt.detach().numpy(), FIRST_ORDER_MARGIN * st["e_p"], f"param after step {k}")
        if cfg["momentum"] != 0.0:
            mb = opt.state[pt]["momentum_buffer"].numpy()
            assert_within(buf, mb, FIRST_ORDER_MARGIN * st["e_buf"], f"momentum buffer after step {k}")


def test_sgd_momentum_zero_needs_no_buffer(rng):
    w, g = rand(rng, 9), rand(rng, 9)
    got, _ = al.sgd_momentum_step(w, None, g, step=3, lr=0.5, buf_null=True)
    np.testing.assert_array_equal(got, w - np.float32(0.5) * (np.float32(1.0) * g + np.float32(0.0) * w))


def _one_minus_pow_rel(beta: float, t: int) -> float:
    """Relative error bound of −expm1f(t·log1pf(β − 1)): β − 1 exact (Sterbenz),
    log1pf and expm1f within 2u of their results, the product u; d bc / dz = −(1 − bc)."""
    z = t * np.log(beta)
    bc = -np.expm1(z)
    return 2 * U + (2 * U + U) * abs(z) * (1 - bc) / bc + 2 * U


def _adam_bound_step(st, g_in, cfg, t):
    """One step of the float64 first-order error bound of ep_adam_update_f32."""
    lr, b1, b2, eps, wd = cfg["lr"], cfg["beta1"], cfg["beta2"], cfg["eps"], cfg["weight_decay"]
    A = np.abs
    p, e_p, m, e_m, v, e_v = st["p"], st["e_p"], st["m"], st["e_m"], st["v"], st["e_v"]
    if cfg["decoupled"]:
        decay = 1.0 - lr * wd
        w = p * decay
        e_w = e_p * decay + A(p) * (U * lr * wd + U * decay) + U * A(w)
        g, e_g = g_in, gamma(1) * A(g_in)
    else:
        w, e_w = p, e_p
        g = g_in + wd * p
        e_g = wd * e_p + gamma(3) * (A(g_in) + wd * A(p))
    c1, c2 = 1.0 - b1, 1.0 - b2  # exact in float32 too (Sterbenz: β ∈ [0.5, 1])
    m2 = m + c1 * (g - m)
    e_m2 = b1 * e_m + c1 * e_g + 2 * U * c1 * A(g - m) + U * A(m2)
    v2 = b2 * v + c2 * g * g
    e_v2 = b2 * e_v + 2 * c2 * A(g) * e_g + 4 * U * v2
    rel_ss = _one_minus_pow_rel(b1, t) + U               # lr / bc1
    rel_b2s = _one_minus_pow_rel(b2, t) / 2 + U          # sqrtf(bc2)
    bc2s = np.sqrt(-np.expm1(t * np.log(b2)))
    sq = np.sqrt(v2)
    e_sq = e_v2 / (np.sqrt(v2 + e_v2) + sq) + U * sq     # |√(v+e) − √v| ≤ e / (√(v+e) + √v)
    den = sq / bc2s + eps
    e_den = (e_sq / bc2s + sq / bc2s * (rel_b2s + U)) + U * den
    q = m2 / den
    e_q = (e_m2 + A(m2) * e_den / den) / den + U * A(q)
    ss = lr / -np.expm1(t * np.log(b1))
    upd = ss * q
    e_upd = ss * e_q + A(upd) * (rel_ss + U)
    st.update(p=w - upd, e_p=e_w + e_upd + U * A(w - upd), m=m2, e_m=e_m2, v=v2, e_v=e_v2)


ADAM_CONFIGS = [
    dict(cls="Adam", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, gscale=1.0),
    dict(cls="Adam", lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2, gscale=1.0),
    dict(cls="AdamW", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, gscale=1.0),
    dict(cls="AdamW", lr=5e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, gscale=1.0),
    # the eps regime: gradients far below eps, denom ≈ eps
    dict(cls="Adam", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, gscale=1e-12),
    dict(cls="AdamW", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, gscale=1e-11),
]


@pytest.mark.parametrize("cfg", ADAM_CONFIGS, ids=lambda c: f"{c['cls']}-lr{c['lr']}-wd{c['weight_decay']}"
                         f"-g{c['gscale']}")
@pytest.mark.parametrize("size,accum", [(1, 1), (13, 1), (257, 2)])
def test_adam_matches_torch(rng, cfg, size, accum):
    lr, (b1, b2), eps, wd = (f32val(cfg["lr"]), tuple(map(f32val, cfg["betas"])), f32val(cfg["eps"]),
                             f32val(cfg["weight_decay"]))
    decoupled = cfg["cls"] == "AdamW"
    scale = f32val(1.0 / accum)
    p0 = rand(rng, size)
    grads = []
    for _ in range(STEPS):
        acc = np.zeros(size, np.float32)
        for _ in range(accum):
            acc = al.accumulate(acc, rand(rng, size, scale=cfg["gscale"]))
        grads.append(acc)
    pt = t64(p0, True)
    opt = getattr(torch.optim, cfg["cls"])([pt], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    w, m, v = p0.copy(), np.zeros(size, np.float32), np.zeros(size, np.float32)
    z = np.zeros(size)
    st = dict(p=f64(p0), e_p=z, m=z, e_m=z, v=z, e_v=z)
    bcfg = dict(lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd, decoupled=decoupled)
    for t, acc in enumerate(grads, start=1):
        g_in = f64(acc) * scale
        pt.grad = torch.tensor(g_in)
        opt.step()
        w, m, v = al.adam_step(w, m, v, acc, step=t, lr=lr, beta1=b1, beta2=b2, eps=eps,
                               weight_decay=wd, decoupled=decoupled, grad_scale=scale)
        _adam_bound_step(st, g_in, bcfg, t)
        s = opt.state[pt]
        assert_within(w, pt.detach().numpy(), FIRST_ORDER_MARGIN * st["e_p"], f"param after step {t}")
        assert_within(m, s["exp_avg"].numpy(), FIRST_ORDER_MARGIN * st["e_m"], f"m after step {t}")
        assert_within(v, s["exp_avg_sq"].numpy(), FIRST_ORDER_MARGIN * st["e_v"], f"v after step {t}")
    assert not np.array_equal(w, p0)


def test_adam_bias_correction_at_large_step(rng):
    """At step 10000 β2ᵗ is far from 1 and β1ᵗ underflows toward 0: still torch's value."""
    size, t = 7, 10000
    lr, b1, b2, eps = f32val(1e-3), f32val(0.9), f32val(0.999), f32val(1e-8)
    p0, m0, g = rand(rng, size), rand(rng, size, scale=0.1), rand(rng, size)
    v0 = np.abs(rand(rng, size, scale=0.1)).astype(np.float32)
    pt = t64(p0, True)
    opt = torch.optim.Adam([pt], lr=lr, betas=(b1, b2), eps=eps)
    pt.grad = t64(g)
    opt.state[pt] = dict(step=torch.tensor(float(t - 1)), exp_avg=t64(m0), exp_avg_sq=t64(v0))
    opt.step()
    w, _, _ = al.adam_step(p0, m0, v0, g, step=t, lr=lr, beta1=b1, beta2=b2, eps=eps)
    st = dict(p=f64(p0), e_p=np.zeros(size), m=f64(m0), e_m=np.zeros(size), v=f64(v0), e_v=np.zeros(size))
    _adam_bound_step(st, f64(g), dict(lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=0.0,
                                      decoupled=False), t)
    assert_within(w, pt.detach().numpy(), FIRST_ORDER_MARGIN * st["e_p"], "param")


def test_bound_catches_missing_bias_correction(rng):
    """Adam without the bias correction (bc1 = bc2 = 1) is caught after one step."""
    size = 13
    lr, b1, b2, eps = f32val(1e-3), f32val(0.9), f32val(0.999), f32val(1e-8)
    p0, g = rand(rng, size), rand(rng, size)
    w, _, _ = al.adam_step(p0, np.zeros(size), np.zeros(size), g, step=1, lr=lr, beta1=b1,
                           beta2=b2, eps=eps)
    st = dict(p=f64(p0), e_p=np.zeros(size), m=np.zeros(size), e_m=np.zeros(size),
              v=np.zeros(size), e_v=np.zeros(size))
    _adam_bound_step(st, f64(g), dict(lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=0.0,
                                      decoupled=False), 1)
    g64 = f64(g)
    m, v = (1 - b1) * g64, (1 - b2) * g64 * g64
    uncorrected = f64(p0) - lr * m / (np.sqrt(v) + eps)
    assert_within(w, st["p"], FIRST_ORDER_MARGIN * st["e_p"], "param")
    with pytest.raises(AssertionError):
        assert_within(w, uncorrected, FIRST_ORDER_MARGIN * st["e_p"], "param")


# == gradient clipping ==================================================================

@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e3])
def test_clip_grad_norm_matches_torch(rng, max_norm):
    sizes = [1, 13, 64, 7]
    grads = [rand(rng, s) for s in sizes]
    params = [t64(np.zeros(s), True) for s in sizes]
    for p, g in zip(params, grads):
        p.grad = t64(g)
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    acc = 0.0
    for g in grads:
        acc = al.clip_norm_sumsq(g, acc)
    total = sum(float((f64(g) ** 2).sum()) for g in grads)
    N = sum(sizes)
    # the sum of squares: N + 1 nonnegative terms (each square rounded too): γ_{N+1}·total
    assert_within(acc, total, gamma(N + 1) * total, "sum of squares")
    # coef = max_norm / (sqrtf(acc) + 1e-6): half acc's relative error through sqrt, then
    # sqrtf, + 1e-6, the division and the product x·coef round once each
    rel = gamma(N + 1) / 2 + 4 * U
    for g, p in zip(grads, params):
        got = al.clip_norm_scale(g, acc, max_norm)
        ref = p.grad.numpy()
        assert_within(got, ref, 1.01 * rel * np.abs(ref), "clipped gradient")
        if max_norm / (np.sqrt(total) + 1e-6) > 1.0 + 1e-3:
            np.testing.assert_array_equal(got, g)  # not clipped: untouched


def test_clip_norm_nan_propagates():
    g = np.array([1.0, 2.0], np.float32)
    assert np.isnan(al.clip_norm_scale(g, np.nan, 1.0)).all()


# == the whole file under the sanitizers ================================================

@pytest.mark.skipif(os.environ.get("EP_NATIVE_VARIANT") == "sanitize", reason="already sanitized")
def test_under_sanitizers():
    """Every test above again, against the -fsanitize=address,undefined library: an
    out-of-bounds read of an input (exact-size NumPy buffers, malloc'd through
    PYTHONMALLOC=malloc) or any UB in the index arithmetic aborts the subprocess."""
    tests = Path(__file__).parent
    cmd = [sys.executable, "-m", "pytest", "-q", "--capture=sys", "-p", "no:cacheprovider",
           "-k", "not test_under_sanitizers", str(Path(__file__))]
    nl.build("sanitize")
    proc = subprocess.run(cmd, env=nl.sanitized_env(), capture_output=True, text=True,
                          cwd=tests.parent, timeout=600)
    assert proc.returncode == 0, proc.stderr[:6000] + proc.stdout[-3000:]
    assert " passed" in proc.stdout
