"""Memory passes over a built training graph, before the planner places it; the
compiler runs the first three in this order.

1. `relu_masks`: a ReLU backward needs only where x > 0. Where nothing but the
   ReLU backward keeps the forward output y alive into the backward pass, the
   forward also writes a bit mask (1/32 of y's bytes) and the backward reads it,
   so y dies as soon as the forward is done with it (docs/blob.md, RELU).
2. `redequantize` (int8 programs): an f32 tensor that a DEQUANTIZE writes in the TRAIN
   forward and an f32 op's backward reads again (a norm's or GELU's saved input) is not
   kept alive across the forward: the backward gets its own DEQUANTIZE of the same
   int8 codes, placed just before its first use. Its codes are kept alive instead (a
   quarter of the bytes, often alive anyway for an int8 layer's backward). The copy is
   bit-identical, so this saves memory and changes no result.
3. `in_place`: a node whose input 0 dies at that node writes its output 0 over it:
   the activations (forward and input gradient), dropout (forward and input
   gradient), the norms' input gradients (dx over dy) and the norms' forwards (y over
   x, which happens only when pass 2 gave the backward its own copy of x), and their
   int8 forms (RELU_Q8, ACT_Q8, BATCHNORM_Q8, LAYERNORM_Q8, DROPOUT_Q8, ADD_Q8). The
   output becomes a view of the input's span, so the two never take separate memory.
   Those kernels allow exact aliasing (each op's header comment;
   tests/test_ops_norm_act.py runs each in place against its out-of-place result).

Passes 1 and 3 only shorten or merge lifetimes; `host.planner.check_plan` proves the result.

4. `spill_to_l3` (run by the compiler only when a plan does not fit the board's arena
   and the board has L3 memory): chosen persistent tensors move to L3 (flag L3, planned
   in their own region); every maximal run of consecutive nodes that uses one reads and
   writes a fresh arena tensor instead, filled by an L3_LOAD before the run and, when
   the run writes it, copied back by an L3_STORE after. A run never crosses a section
   boundary (eval prefix, TRAIN forward, backward, update section), since the device
   runs the sections separately. The copies are exact, so the program computes the
   same bits as without L3; only the arena gets smaller.
"""

from __future__ import annotations

from .graph import Graph, Node, Tensor
from .ids import DType, OpCode, OpFn, TensorFlag

#: (op, fn) whose output 0 may alias input 0 exactly
IN_PLACE = ({(op, fn) for op in (OpCode.RELU, OpCode.RELU6, OpCode.ELU, OpCode.GELU, OpCode.SIGMOID, OpCode.TANH,
                                 OpCode.DROPOUT)
             for fn in (OpFn.FW, OpFn.BW_INPUT)}
            | {(op, fn) for op in (OpCode.BATCHNORM, OpCode.LAYERNORM, OpCode.GROUPNORM)
               for fn in (OpFn.FW, OpFn.BW_INPUT)}
            # int8 (docs/ops/int8.md): y over x, dx over dy (batch norm's stats node writes f32
            # statistics, never of x's dtype, so it is never merged)
            | {(op, fn) for op in (OpCode.RELU_Q8, OpCode.ACT_Q8, OpCode.BATCHNORM_Q8, OpCode.LAYERNORM_Q8,
                                   OpCode.DROPOUT_Q8, OpCode.ADD_Q8)
               for fn in (OpFn.FW, OpFn.BW_INPUT)})


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
    """Alias output 0 of IN_PLACE nodes onto their input 0 where it dies there; returns how many."""
    made = 0
    for k, node in enumerate(g.nodes):
        if (node.op, node.fn) not in IN_PLACE:
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


def redequantize(g: Graph, max_nodes: int, max_tensors: int) -> int:
    """Give backward readers of long-lived DEQUANTIZE outputs their own DEQUANTIZE (see the
    module docstring), largest tensors first while the graph stays within the device's
    limits; returns how many."""
    bw_end = g.update_begin if g.update_begin is not None else len(g.nodes)
    viewed = {t.alias_of for t in g.tensors if t.alias_of is not None}
    found = []
    for k in range(g.train_begin, g.train_loss_end):
        d = g.nodes[k]
        y = d.outputs[0] if d.op == OpCode.DEQUANTIZE else None
        if y is None or y in viewed or g.tensors[y].alias_of is not None:
            continue  # a view, or overwritten in place by a later op: not a plain copy of the codes
        readers = [j for j in range(g.train_loss_end, bw_end) if y in g.nodes[j].inputs]
        if not readers or any(y in n.outputs for n in g.nodes[k + 1:]):
            continue
        codes = {_root(g, t) for t in d.inputs}
        if any(_root(g, t) in codes for n in g.nodes[k + 1:readers[0]] for t in n.outputs):
            continue  # the codes or their exponent change before the backward reads: not the same values
        found.append((g.tensors[y].nbytes(g.max_batch), k, y, readers))
    room = min(max_nodes - len(g.nodes), max_tensors - len(g.tensors))
    chosen = sorted(found, key=lambda f: (-f[0], f[1]))[:max(room, 0)]
    before: dict[int, list[Node]] = {}
    for _, k, y, readers in chosen:
        d, t = g.nodes[k], g.tensors[y]
        again = g.add_tensor(Tensor(f"{t.name}.bw", t.dims, t.dtype, t.flags))
        for j in readers:
            g.nodes[j].inputs = [again if i == y else i for i in g.nodes[j].inputs]
        before.setdefault(readers[0], []).append(
            Node(d.op, d.fn, list(d.inputs), [again], d.iattrs, d.fattrs, d.layer))
    _insert(g, before, {})
    return len(chosen)


def _insert(g: Graph, before: dict[int, list[Node]], after: dict[int, list[Node]]) -> None:
    """Insert nodes before and after nodes of g (by current index), moving the section bounds:
    a node inserted before node k belongs to k's section, one after it to k's."""
    nodes: list[Node] = []
    start: dict[int, int] = {}
    for k, node in enumerate(g.nodes):
        start[k] = len(nodes)
        nodes += before.get(k, []) + [node] + after.get(k, [])
    start[len(g.nodes)] = len(nodes)
    g.n_eval_nodes, g.train_begin, g.train_loss_end = (start[g.n_eval_nodes], start[g.train_begin],
                                                       start[g.train_loss_end])
    if g.update_begin is not None:
        g.update_begin = start[g.update_begin]
    g.nodes = nodes


def l3_candidates(g: Graph) -> list[int]:
    """Tensors spill_to_l3 may move, largest first: persistent (PARAM) roots with no
    views, except the update counter (the executor reads it directly). The working copies
    carry no flags: the device marks each L3_LOAD's output as its tensor's copy, and the
    optimizers accept it as they would the tensor (ep_runtime.h, "L3 tier")."""
    viewed = {t.alias_of for t in g.tensors if t.alias_of is not None}
    cands = [i for i, t in enumerate(g.tensors) if t.is_param and t.alias_of is None and i not in viewed
             and i != g.counter_tensor and not t.flags & TensorFlag.L3]
    return sorted(cands, key=lambda i: (-g.tensors[i].nbytes(g.max_batch), i))


def spill_to_l3(g: Graph, chosen: list[int]) -> None:
    """Move the chosen tensors (from l3_candidates) to L3 and insert the copies (see the
    module docstring). Changes g in place; node indices and section bounds move."""
    bounds = {g.n_eval_nodes, g.train_begin, g.train_loss_end, len(g.nodes)}
    if g.update_begin is not None:
        bounds.add(g.update_begin)
    before: dict[int, list[Node]] = {}
    after: dict[int, list[Node]] = {}
    for p in chosen:
        home = g.tensors[p]
        users = [k for k, n in enumerate(g.nodes) if p in n.inputs or p in n.outputs]
        runs: list[list[int]] = []
        for k in users:
            if runs and runs[-1][-1] == k - 1 and k not in bounds:
                runs[-1].append(k)
            else:
                runs.append([k])
        for r, run in enumerate(runs):
            work = g.add_tensor(Tensor(f"{home.name}@l2.{r}", home.dims, home.dtype))
            writes = False
            for k in run:
                node = g.nodes[k]
                node.inputs = [work if t == p else t for t in node.inputs]
                writes |= p in node.outputs
                node.outputs = [work if t == p else t for t in node.outputs]
            layer = g.nodes[run[0]].layer
            before.setdefault(run[0], []).append(Node(OpCode.L3_LOAD, OpFn.FW, [p], [work], layer=layer))
            if writes:
                after.setdefault(run[-1], []).append(Node(OpCode.L3_STORE, OpFn.FW, [work], [p], layer=layer))
        home.flags |= TensorFlag.L3
    _insert(g, before, after)
