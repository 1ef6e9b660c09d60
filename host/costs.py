"""Multiply-accumulates per node of a compiled graph: the work a kernel must do.

`node_macs(graph, node, n)` counts, for a batch of n samples, the MACs of the
mathematical definition (a conv's MACs are those of the direct formula: taps
that fall in padding are not counted, as the kernels skip them). The benchmark
divides them by the instructions the device reports per node (PROFILE) to get
MAC per instruction. Ops without a rule here count 0 MACs: they are not matrix
work (activations, losses, optimizers), and the benchmark reports their
instructions only.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .graph import Graph, Node
from .ids import OpCode, OpFn

_RULES: dict[OpCode, Callable[[Graph, Node, int], int]] = {}


def rule(op: OpCode):
    def deco(fn):
        _RULES[op] = fn
        return fn
    return deco


def node_macs(g: Graph, node: Node, n: int) -> int:
    f = _RULES.get(node.op)
    return int(f(g, node, n)) if f else 0


def graph_macs(g: Graph, n: int, nodes: range | None = None) -> int:
    return sum(node_macs(g, g.nodes[i], n) for i in (nodes if nodes is not None else range(len(g.nodes))))


def is_matrix_work(node: Node) -> bool:
    """Nodes the benchmark reports one by one: conv and linear (where the MAC-per-
    instruction target applies, forward and backward) and attention."""
    return node.op in (OpCode.LINEAR, OpCode.CONV2D, OpCode.MHSA)


@rule(OpCode.LINEAR)
def _linear(g: Graph, node: Node, n: int) -> int:
    # every fn is one [rows, K] x [K, M] product: fw y = x Wᵀ, bw_input dx = dy W,
    # bw_param dW = dyᵀ x (db's additions are not MACs)
    w = node.inputs[1] if node.fn != OpFn.BW_PARAM else node.outputs[0]
    m_out, k = g.tensors[w].dims
    out = node.outputs[0] if node.fn == OpFn.FW else node.inputs[0]
    rows = n * g.tensors[out].elems // m_out
    return rows * m_out * k


@rule(OpCode.CONV2D)
def _conv2d(g: Graph, node: Node, n: int) -> int:
    """Every fn does, per output position and output channel, C_in/groups taps of each
    kernel row and column that land inside the input (docs/ops/conv_pool.md: iattr
    0-1 stride, 2-5 padding top/bottom/left/right, 6-7 dilation; W [C_out][C_in/g][kh][kw],
    or [C_out][C_in/g][k] for 1-D)."""
    w = node.inputs[1] if node.fn != OpFn.BW_PARAM else node.outputs[0]
    x = {OpFn.FW: node.inputs[0], OpFn.BW_INPUT: node.outputs[0], OpFn.BW_PARAM: node.inputs[1]}[node.fn]
    y = node.outputs[0] if node.fn == OpFn.FW else node.inputs[0]
    wd, xd, yd = g.tensors[w].dims, g.tensors[x].dims, g.tensors[y].dims
    kh, kw = (wd[2], wd[3]) if len(wd) == 4 else (1, wd[2])
    (h_in, w_in), (h_out, w_out) = (xd[1:] if len(xd) == 3 else (1, xd[1])), (yd[1:] if len(yd) == 3 else (1, yd[1]))
    a = tuple(node.iattrs) + (0,) * 12
    sh, sw, pt, pl, dh, dw = a[0], a[1], a[2], a[4], a[6], a[7]
    taps = _valid_taps(h_in, h_out, kh, sh, dh, pt) * _valid_taps(w_in, w_out, kw, sw, dw, pl)
    return n * wd[0] * wd[1] * taps


def _valid_taps(in_len: int, out_len: int, k: int, stride: int, dil: int, pad_lo: int) -> int:
    """Σ over output positions of the kernel taps that land inside the input, along one axis."""
    pos = np.arange(out_len)[:, None] * stride + np.arange(k)[None, :] * dil - pad_lo
    return int(((pos >= 0) & (pos < in_len)).sum())


@rule(OpCode.MHSA_Q8)
@rule(OpCode.MHSA)
def _mhsa(g: Graph, node: Node, n: int) -> int:
    """Per sample with T tokens of D (docs/ops/attn_optim.md): forward is the Q/K/V and
    output projections (4·T·D²) plus scores and P·V (2·T²·D); the input gradient
    runs the projections' and attention's products backward (4·T·D² + 4·T²·D);
    the parameter gradient the projections' weight products plus O = P·V again
    (4·T·D² + T²·D)."""
    x = node.inputs[0] if node.fn != OpFn.BW_INPUT else None
    t, d = g.tensors[x].dims if x is not None else g.tensors[node.inputs[0]].dims
    per = {OpFn.FW: 4 * t * d * d + 2 * t * t * d, OpFn.BW_INPUT: 4 * t * d * d + 4 * t * t * d,
           OpFn.BW_PARAM: 4 * t * d * d + t * t * d}[node.fn]
    return n * per
