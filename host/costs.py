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
    """Nodes the MAC-per-instruction target applies to (conv and linear, fw and bw)."""
    return node.op in (OpCode.LINEAR, OpCode.CONV2D)


@rule(OpCode.LINEAR)
def _linear(g: Graph, node: Node, n: int) -> int:
    # every fn is one [rows, K] x [K, M] product: fw y = x Wᵀ, bw_input dx = dy W,
    # bw_param dW = dyᵀ x (db's additions are not MACs)
    w = node.inputs[1] if node.fn != OpFn.BW_PARAM else node.outputs[0]
    m_out, k = g.tensors[w].dims
    out = node.outputs[0] if node.fn == OpFn.FW else node.inputs[0]
    rows = n * g.tensors[out].elems // m_out
    return rows * m_out * k
