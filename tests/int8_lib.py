"""Helpers of tests/test_ops_int8.py: small int8 graphs, their blobs, and runners that
execute a blob on the runtime library (ctypes) or on a device and read tensors back.

A test graph is built by hand (the compiler does not know the int8 ops yet):
`QGraph` holds the header's input/label/stats tensors, the tensors and nodes a test
adds, and for every tensor the test wants to read a PARAM *alias* (same arena span,
PARAM flag) — READ_WEIGHTS only reads PARAM tensors, and batched intermediate
results are not parameters. Inputs of an op test are preloaded as initial values
(a batched tensor may carry an initial value for all max_batch samples), so an
EVAL over max_batch samples runs the op on exactly the codes the test chose.

The plan is trivial (every tensor its own span, aliases on their base): these
graphs are tiny, and the test must not depend on the planner.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import native_lib as nl
from host.blob import build_blob
from host.graph import Graph, Node, Tensor, align
from host.ids import DType, OpCode, OpFn, TensorFlag

ROOT = Path(__file__).resolve().parents[1]
from host.graph import NUMPY_DTYPE as NP_DTYPE  # noqa: E402
B, P, T = TensorFlag.BATCHED, TensorFlag.PARAM, TensorFlag.TRAINABLE


class QGraph:
    """A hand-built graph with readable tensors; names index tensors."""

    def __init__(self, name: str, max_batch: int, input_dims=(1,), num_classes: int = 2):
        self.g = Graph(name, max_batch, num_classes)
        self.names: dict[str, int] = {}
        self.aliases: dict[str, int] = {}
        #: tensors placed on another tensor's span (in-place outputs): name → that tensor
        self.spans: dict[str, int] = {}
        self.g.input_tensor = self.add("input", input_dims, DType.F32, B | TensorFlag.INPUT)
        self.g.label_tensor = self.add("labels", (1,), DType.I32, B | TensorFlag.LABEL)
        self.g.stats_tensor = self.add("stats", (2,), DType.F32)

    @property
    def max_batch(self) -> int:
        return self.g.max_batch

    def add(self, name: str, dims, dtype: DType, flags=TensorFlag(0), init=None) -> int:
        t = Tensor(name, tuple(int(d) for d in dims), dtype, TensorFlag(flags))
        if init is not None:
            want = t.elems * (self.max_batch if flags & B else 1)
            init = np.asarray(init).ravel()
            assert init.size == want, f"{name}: init of {init.size} values, want {want}"
            t.init = np.asarray(init).astype(NP_DTYPE[dtype])  # host.blob writes it in the tensor's dtype
        self.names[name] = self.g.add_tensor(t)
        return self.names[name]

    def exp(self, name: str, value=None, n: int = 1) -> int:
        """An i32 exponent vector (or any small i32 tensor)."""
        init = None if value is None else np.broadcast_to(np.asarray(value, np.int64), (n,))
        return self.add(name, (n,), DType.I32, init=init)

    def scratch(self, name: str, nbytes: int) -> int:
        """An unbatched s8 scratch tensor of at least nbytes bytes."""
        cols = 4096
        rows = max(1, math.ceil(nbytes / cols))
        return self.add(name, (rows, cols) if nbytes > cols else (max(nbytes, 1),), DType.S8)

    def node(self, op: OpCode, fn: OpFn, ins, outs, iattrs=(), fattrs=()) -> None:
        idx = lambda v: self.names[v] if isinstance(v, str) else int(v)  # noqa: E731
        self.g.add_node(Node(op, fn, [idx(v) for v in ins], [idx(v) for v in outs], tuple(iattrs), tuple(fattrs)))

    def inplace(self, name: str, base: str) -> int:
        """A tensor like `base` on base's very span (an in-place output)."""
        b = self.g.tensors[self.names[base]]
        self.names[name] = self.g.add_tensor(Tensor(name, b.dims, b.dtype, b.flags))
        self.spans[name] = self.names[base]
        return self.names[name]

    def readable(self, *names: str) -> None:
        """Give each named tensor a PARAM alias so READ_WEIGHTS can read it."""
        for name in names:
            t = self.g.tensors[self.names[name]]
            if t.is_param:
                continue
            dims = (self.max_batch, t.elems) if t.flags & B else t.dims
            assert all(d <= 0xFFFF for d in dims), f"{name}: too large to alias"
            a = Tensor(f"{name}@read", tuple(dims), t.dtype, P)
            self.aliases[name] = self.g.add_tensor(a)
            self.names[a.name] = self.aliases[name]

    def blob(self, eval_nodes: int | None = None, train_loss_end: int | None = None) -> bytes:
        """The blob; EVAL runs all nodes unless eval_nodes says otherwise (TRAIN: all)."""
        g = self.g
        g.n_eval_nodes = len(g.nodes) if eval_nodes is None else eval_nodes
        g.train_begin = 0
        g.train_loss_end = g.n_eval_nodes if train_loss_end is None else train_loss_end
        offsets, sizes, cur = [], [], 0
        base_of = {v: self.names[k] for k, v in self.aliases.items()}
        base_of.update({self.names[k]: v for k, v in self.spans.items()})
        for i, t in enumerate(g.tensors):
            sizes.append(t.nbytes(g.max_batch))
            if i in base_of:
                offsets.append(offsets[base_of[i]])
                assert sizes[i] == sizes[base_of[i]]
            else:
                offsets.append(cur)
                cur += align(sizes[i])
        plan = SimpleNamespace(offsets=offsets, sizes=sizes, arena_bytes=max(cur, 8))
        return build_blob(SimpleNamespace(graph=g, plan=plan))

    def decode(self, name: str, raw: bytes, n: int | None = None) -> np.ndarray:
        t = self.g.tensors[self.names[name]]
        a = np.frombuffer(raw, NP_DTYPE[t.dtype])
        if t.flags & B:
            n = self.max_batch if n is None else n
            return a[: n * t.elems].reshape(n, *t.dims).copy()
        return a[: t.elems].reshape(t.dims).copy()


# -- runners ------------------------------------------------------------------------------------

class LibRunner:
    """The blob on the runtime library (tests/native_lib.py, the host C compiler)."""

    name = "lib"

    def __init__(self, qg: QGraph, blob: bytes):
        self.qg = qg
        self.rt = nl.Runtime(blob, arena_bytes=max(1 << 16, qg_arena(blob)))

    def run(self, x, labels, train: bool = False):
        x = np.ascontiguousarray(x, np.float32)
        st, why, r = self.rt.run(bytes(np.asarray(labels, np.uint8)), x.tobytes(), train=train)
        assert st == 0, f"status {st}: {why}"
        return r

    def read(self, name: str, n: int | None = None) -> np.ndarray:
        t = self.rt.model.tensors[self.qg.names[name]]
        return self.qg.decode(name, self.rt.arena[t.offset:t.offset + t.bytes].tobytes(), n)


class DeviceRunner:
    """The blob on a device (native firmware or an emulated board) over the protocol."""

    def __init__(self, name: str, dev, qg: QGraph, blob: bytes):
        self.name, self.dev, self.qg = name, dev, qg
        dev.load(blob)

    def run(self, x, labels, train: bool = False):
        from host.device import Batch

        b = Batch.from_arrays(np.ascontiguousarray(x, np.float32), np.asarray(labels))
        return self.dev.train(b) if train else self.dev.evaluate(b)

    def read(self, name: str, n: int | None = None) -> np.ndarray:
        idx = self.qg.aliases.get(name, self.qg.names[name])
        t = self.qg.g.tensors[idx]
        assert t.is_param, f"{name} is not readable: call QGraph.readable('{name}') before blob()"
        return self.qg.decode(name, self.dev.read_tensor(idx, t.nbytes(self.qg.max_batch)), n)


def qg_arena(blob: bytes) -> int:
    return int.from_bytes(blob[16:20], "little")


# -- the portable (no-SIMD) build of a Cortex-M board --------------------------------------------

from host.bench_int8 import portable_firmware  # noqa: E402,F401  (one implementation, used by the benchmark too)
