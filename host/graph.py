"""The training graph: tensors and a schedule of nodes, as the device runs it.

The compiler (`host.compiler`) builds a `Graph` from a model, the planner
(`host.planner`) gives every tensor an arena offset, and `host.blob` serialises
both into the `.epm` blob of docs/blob.md. Nothing here knows about serial links.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import ids
from .ids import DType, OpCode, OpFn, TensorFlag


#: each dtype's little-endian NumPy type (blob data, arena views)
NUMPY_DTYPE = {DType.F32: np.dtype("<f4"), DType.I32: np.dtype("<i4"), DType.U8: np.dtype("u1"),
               DType.S8: np.dtype("i1")}


def align(n: int, a: int = ids.BLOB_ALIGN) -> int:
    return (n + a - 1) // a * a


@dataclass
class Tensor:
    name: str
    dims: tuple[int, ...]          # per sample if BATCHED
    dtype: DType = DType.F32
    flags: TensorFlag = TensorFlag(0)
    init: np.ndarray | None = None  # initial values (parameters)
    #: a view: this tensor is tensor `alias_of` under another shape (same span)
    alias_of: int | None = None
    #: the view is an in-place result (host.passes), not a reshape: a plan without
    #: sharing would give it its own buffer
    in_place: bool = False

    @property
    def elems(self) -> int:
        return int(np.prod(self.dims))

    def nbytes(self, max_batch: int) -> int:
        """Arena bytes: elements × dtype size (× max_batch if batched), 8-aligned."""
        n = self.elems * ids.DTYPE_BYTES[self.dtype]
        if self.flags & TensorFlag.BATCHED:
            n *= max_batch
        return align(n)

    @property
    def is_param(self) -> bool:
        return bool(self.flags & TensorFlag.PARAM)


@dataclass
class Node:
    op: OpCode
    fn: OpFn
    inputs: list[int]
    outputs: list[int]
    iattrs: tuple[int, ...] = ()   # ≤ ids.NODE_IATTRS u16 (shapes, strides, flags)
    fattrs: tuple[float, ...] = () # ≤ ids.NODE_FATTRS f32 (hyper-parameters)
    layer: str = ""                # the model layer this node comes from

    def __post_init__(self) -> None:
        if len(self.inputs) > ids.MAX_NODE_INPUTS or len(self.outputs) > ids.MAX_NODE_OUTPUTS:
            raise ValueError(f"{self.op.name}: too many inputs or outputs for a node")
        if len(self.iattrs) > ids.NODE_IATTRS or any(not 0 <= a <= 0xFFFF for a in self.iattrs):
            raise ValueError(f"{self.op.name}: iattrs {self.iattrs} do not fit {ids.NODE_IATTRS} u16")
        if len(self.fattrs) > ids.NODE_FATTRS:
            raise ValueError(f"{self.op.name}: more than {ids.NODE_FATTRS} fattrs")

    def describe(self, g: "Graph") -> str:
        ins = ", ".join(g.tensors[i].name for i in self.inputs)
        outs = ", ".join(g.tensors[i].name for i in self.outputs)
        return f"{self.op.name.lower()}.{self.fn.name.lower()}({ins}) -> {outs}"


@dataclass
class Graph:
    name: str
    max_batch: int
    num_classes: int
    tensors: list[Tensor] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    n_eval_nodes: int = 0
    #: TRAIN runs [train_begin, train_loss_end), then the rest (docs/blob.md)
    train_begin: int = 0
    train_loss_end: int = 0
    #: the deferred optimizer section [update_begin, n_nodes) (None: no such section),
    #: run on every update_every-th TRAIN, counted in the i32 counter tensor
    update_begin: int | None = None
    update_every: int = 1
    counter_tensor: int = -1
    input_tensor: int = -1
    label_tensor: int = -1
    stats_tensor: int = -1

    def add_tensor(self, t: Tensor) -> int:
        self.tensors.append(t)
        return len(self.tensors) - 1

    def add_node(self, node: Node) -> None:
        self.nodes.append(node)

    def index(self, name: str) -> int:
        for i, t in enumerate(self.tensors):
            if t.name == name:
                return i
        raise KeyError(name)

    @property
    def params(self) -> list[int]:
        return [i for i, t in enumerate(self.tensors) if t.is_param]

    @property
    def trainable(self) -> list[int]:
        return [i for i, t in enumerate(self.tensors) if t.flags & TensorFlag.TRAINABLE]

    @property
    def input_elems(self) -> int:
        return self.tensors[self.input_tensor].elems
