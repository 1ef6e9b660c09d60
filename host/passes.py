"""Memory passes over a built training graph, before the planner places it.

1. `relu_masks`: a ReLU backward needs only where x > 0. Where nothing but the
   ReLU backward keeps the forward output y alive into the backward pass, the
   forward also writes a bit mask (1/32 of y's bytes) and the backward reads it,
   so y dies as soon as the forward is done with it (docs/blob.md, RELU).
2. `in_place`: an elementwise node whose input dies at that node writes its
   output over the input (RELU and the other activations, forward and input
   gradient): the output becomes a view of the input's span, so the two never
   take separate memory. The kernels allow exact aliasing for these (ep_ops.h).

Both only shorten or merge lifetimes; `host.planner.check_plan` proves the result.
"""

from __future__ import annotations

from .graph import Graph, Tensor
from .ids import DType, OpCode, OpFn, TensorFlag

#: (op, fn) whose output 0 may alias input 0 exactly
ELEMENTWISE = {(op, fn) for op in (OpCode.RELU, OpCode.RELU6, OpCode.ELU, OpCode.GELU, OpCode.SIGMOID,
                                   OpCode.TANH)
               for fn in (OpFn.FW, OpFn.BW_INPUT)}


def _root(g: Graph, t: int) -> int:
    while g.tensors[t].alias_of is not None:
        t = g.tensors[t].alias_of
    return t


def _uses(g: Graph) -> dict[int, list[int]]:
    """Root tensor → the nodes touching it or any view of it, in schedule order."""
    uses: dict[int, list[int]] = {}
    for k, node in enumerate(g.nodes):
        for t in dict.fromkeys(node.inputs + node.outputs):
            uses.setdefault(_root(g, t), []).append(k)
    return uses


def _pinned(g: Graph, t: int) -> bool:
    """Tensors that live across steps or that the host reads and writes."""
    return g.tensors[t].is_param or t in (g.input_tensor, g.label_tensor, g.stats_tensor)


def relu_masks(g: Graph) -> int:
    """Give ReLU backwards a bit mask where that frees y early; returns how many."""
    uses = _uses(g)
    made = 0
    for node in g.nodes:
        if (node.op, node.fn) != (OpCode.RELU, OpFn.BW_INPUT):
            continue
        y = node.inputs[1]
        fw = next((n for n in g.nodes if (n.op, n.fn) == (OpCode.RELU, OpFn.FW) and n.outputs[0] == y
                   and len(n.outputs) == 1), None)
        if fw is None or g.tensors[y].dtype != DType.F32:
            continue
        others = [k for k in uses[_root(g, y)] if g.nodes[k] is not node]
        if max(others) >= g.train_loss_end:  # y is read in backward anyway: the mask saves nothing
            continue
        elems = g.tensors[y].elems
        mask = g.add_tensor(Tensor(f"{node.layer}.mask", ((elems + 7) // 8,), DType.U8, TensorFlag.BATCHED))
        fw.outputs.append(mask)
        node.inputs[1] = mask
        made += 1
    return made


def in_place(g: Graph) -> int:
    """Alias the output of elementwise nodes onto an input that dies there; returns how many."""
    made = 0
    for k, node in enumerate(g.nodes):
        if (node.op, node.fn) not in ELEMENTWISE:
            continue
        x, y = node.inputs[0], node.outputs[0]
        rx, ry = _root(g, x), _root(g, y)
        tx, ty = g.tensors[x], g.tensors[y]
        if rx == ry or ty.alias_of is not None or _pinned(g, rx) or tx.dtype != ty.dtype \
                or tx.elems != ty.elems or (tx.flags & TensorFlag.BATCHED) != (ty.flags & TensorFlag.BATCHED):
            continue
        uses = _uses(g)  # re-read: earlier merges changed the roots
        if uses[rx][-1] != k or uses[ry][0] != k:
            continue
        ty.alias_of, ty.in_place = rx, True
        for t in g.tensors:  # views of y are now views of x's span
            if t.alias_of == y:
                t.alias_of = rx
        made += 1
    return made
