"""Static memory plan: one arena, an offset for every tensor.

The planner is a pure function of (size, first use, last use) per tensor, as in
TFLM's greedy planner:

1. Lifetimes come from the schedule. A tensor is live from the first node that
   touches it to the last. Parameters live for the whole program (they persist
   between steps); the input and labels are written before node 0; the stats
   tensor is read after the eval prefix, so it lives to the end.
2. Tensors are placed one by one, each at the lowest 8-aligned offset where it
   overlaps no already-placed tensor whose lifetime intersects its own. The order
   matters; the planner tries a few (largest first, as TFLM; longest-lived first;
   largest bytes × lifetime first; earliest first) and keeps the smallest arena.
   Where that arena is above the lower bound, a local search moves one of the
   largest tensors to the front of the best order at a time and keeps every move
   that shrinks the arena (a large tensor placed late can be what pushes the top
   up: in-place norms made one such plan 23 % above its bound, and this takes it
   to the bound).
3. `check_plan` proves the result: no two tensors that are live at the same time
   share a byte, and every tensor lies inside the arena.

`lower_bound` is the largest total size of tensors live at one node: no plan
can be smaller.

Tensors flagged L3 (host.passes.spill_to_l3: persistent tensors moved to a board's
external memory) are not in the arena: they sit one after another in the L3
region, from offset 0, for the whole program (`Plan.l3_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .graph import Graph, align
from .ids import TensorFlag


@dataclass(frozen=True)
class Plan:
    offsets: list[int]
    sizes: list[int]
    first: list[int]
    last: list[int]
    arena_bytes: int
    lower_bound: int
    #: per tensor, the tensor it is a view of (same span), or None
    views: tuple[int | None, ...] = ()

    #: arena size if nothing shared memory: every tensor its own buffer, except that
    #: reshapes (flatten) are free; in-place results count as buffers of their own
    naive_bytes: int = 0
    #: L3 region span (tensors flagged L3); 0 when everything is in the arena
    l3_bytes: int = 0
    #: the tensors placed in L3 (offsets into the L3 region, not the arena)
    l3_tensors: frozenset[int] = frozenset()

    def in_l3(self, i: int) -> bool:
        return i in self.l3_tensors


def lifetimes(g: Graph) -> tuple[list[int], list[int]]:
    n = len(g.nodes)
    first = [n] * len(g.tensors)
    last = [-1] * len(g.tensors)
    for t, node in enumerate(g.nodes):
        for i in node.inputs + node.outputs:
            first[i] = min(first[i], t)
            last[i] = max(last[i], t)
    end = max(n - 1, 0)
    for i, tensor in enumerate(g.tensors):
        if tensor.is_param or i in (g.input_tensor, g.label_tensor, g.stats_tensor):
            first[i] = 0
            last[i] = end
    # a view and its base are one span: it lives while any of them is used
    for i, tensor in enumerate(g.tensors):
        if tensor.alias_of is not None and last[i] >= 0:
            b = tensor.alias_of
            first[b], last[b] = min(first[b], first[i]), max(last[b], last[i])
    for i, tensor in enumerate(g.tensors):
        if tensor.alias_of is not None:
            first[i], last[i] = first[tensor.alias_of], last[tensor.alias_of]
        if last[i] < 0:  # never used: still give it a slot, briefly
            first[i] = last[i] = 0
    return first, last


#: placement orders the planner tries (the smallest arena wins): largest first, longest-lived
#: first, largest area (bytes × lifetime) first, earliest first
_ORDERS = (
    lambda sizes, first, last, i: (-sizes[i], first[i], i),
    lambda sizes, first, last, i: (-(last[i] - first[i]), -sizes[i], i),
    lambda sizes, first, last, i: (-sizes[i] * (last[i] - first[i] + 1), i),
    lambda sizes, first, last, i: (first[i], -sizes[i], i),
)


#: local search: how many of the largest tensors it tries to move, and how many rounds
_IMPROVE_TENSORS, _IMPROVE_ROUNDS = 16, 4


def _improve(best, roots, sizes, first, last, bound):
    """Move-to-front local search from the best greedy (arena, offsets, order) while the
    arena is above the lower bound; returns the best (arena, offsets, order) found."""
    big = sorted(roots, key=lambda i: (-sizes[i], i))[:_IMPROVE_TENSORS]
    for _ in range(_IMPROVE_ROUNDS):
        moved = False
        for i in big:
            if align(best[0]) <= align(bound):
                return best
            order = [i] + [j for j in best[2] if j != i]
            offsets = _place(order, sizes, first, last)
            arena = max((offsets[j] + sizes[j] for j in roots), default=0)
            if arena < best[0]:
                best, moved = (arena, offsets, order), True
        if not moved:
            break
    return best


def _place(order: list[int], sizes: list[int], first: list[int], last: list[int]) -> list[int]:
    """Greedy: each tensor at the lowest 8-aligned offset free over its whole lifetime."""
    offsets = [0] * len(sizes)
    placed: list[int] = []
    for i in order:
        busy = sorted((offsets[j], offsets[j] + sizes[j]) for j in placed
                      if first[j] <= last[i] and first[i] <= last[j])
        off = 0
        for lo, hi in busy:
            if off + sizes[i] <= lo:
                break
            off = max(off, align(hi))
        offsets[i] = off
        placed.append(i)
    return offsets


def plan_graph(g: Graph) -> Plan:
    sizes = [t.nbytes(g.max_batch) for t in g.tensors]
    first, last = lifetimes(g)
    views = [i for i, t in enumerate(g.tensors) if t.alias_of is not None]
    l3 = [i for i, t in enumerate(g.tensors) if t.flags & TensorFlag.L3]
    roots = sorted(set(range(len(sizes))) - set(views) - set(l3))
    bound = max((sum(sizes[i] for i in roots if first[i] <= t <= last[i])
                 for t in range(max(len(g.nodes), 1))), default=0)
    best = None
    for key in _ORDERS:
        order = sorted(roots, key=lambda i: key(sizes, first, last, i))
        offsets = _place(order, sizes, first, last)
        arena = max((offsets[i] + sizes[i] for i in roots), default=0)
        if best is None or arena < best[0]:
            best = (arena, offsets, order)
        if arena == 0:
            break
    arena, offsets, _ = _improve(best, roots, sizes, first, last, bound)
    for i in views:
        offsets[i] = offsets[g.tensors[i].alias_of]
    l3_end = 0
    for i in l3:
        offsets[i], l3_end = l3_end, l3_end + sizes[i]
    naive = sum(s for i, s in enumerate(sizes)
                if i not in l3 and (g.tensors[i].alias_of is None or g.tensors[i].in_place))
    plan = Plan(offsets, sizes, first, last, align(arena), bound,
                tuple(g.tensors[i].alias_of if i in views else None for i in range(len(sizes))), naive,
                l3_end, frozenset(l3))
    check_plan(plan)
    return plan


def check_plan(plan: Plan) -> None:
    """Raise AssertionError if two simultaneously live tensors of one region overlap."""
    n = len(plan.sizes)
    root = [plan.views[i] if plan.views and plan.views[i] is not None else i for i in range(n)]
    for i in range(n):
        assert plan.offsets[i] % 8 == 0, f"tensor {i} misaligned"
        limit = plan.l3_bytes if plan.in_l3(i) else plan.arena_bytes
        assert plan.offsets[i] + plan.sizes[i] <= limit, f"tensor {i} outside its region"
        for j in range(i + 1, n):
            if plan.in_l3(i) != plan.in_l3(j):
                continue
            live_together = plan.first[i] <= plan.last[j] and plan.first[j] <= plan.last[i]
            disjoint = (plan.offsets[i] + plan.sizes[i] <= plan.offsets[j]
                        or plan.offsets[j] + plan.sizes[j] <= plan.offsets[i])
            same_span = root[i] == root[j] and plan.offsets[i] == plan.offsets[j]
            assert not live_together or disjoint or same_span or 0 in (plan.sizes[i], plan.sizes[j]), \
                f"tensors {i} and {j} are live together and overlap"


def format_plan(g: Graph, plan: Plan) -> str:
    """A readable table: offset, size, lifetime and a bar per tensor."""
    width = 40
    scale = max(plan.arena_bytes, 1)
    rows = [f"arena {plan.arena_bytes} B, lower bound {plan.lower_bound} B, "
            f"no sharing {plan.naive_bytes} B"
            + (f"; L3 {plan.l3_bytes} B in {len(plan.l3_tensors)} tensors (listed last)" if plan.l3_tensors else ""),
            f"{'tensor':<22} {'offset':>8} {'bytes':>8}  life    layout"]
    for i in sorted(range(len(g.tensors)), key=lambda i: (plan.in_l3(i), plan.offsets[i])):
        if plan.in_l3(i):
            rows.append(f"{g.tensors[i].name:<22} {plan.offsets[i]:>8} {plan.sizes[i]:>8}  "
                        f"{plan.first[i]:>2}-{plan.last[i]:<3}  L3")
            continue
        lo = plan.offsets[i] * width // scale
        hi = max(lo + 1, (plan.offsets[i] + plan.sizes[i]) * width // scale)
        bar = " " * lo + "█" * (hi - lo)
        rows.append(f"{g.tensors[i].name:<22} {plan.offsets[i]:>8} {plan.sizes[i]:>8}  "
                    f"{plan.first[i]:>2}-{plan.last[i]:<3}  |{bar:<{width}}|")
    return "\n".join(rows)
