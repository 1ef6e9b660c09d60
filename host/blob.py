"""The `.epm` model blob (docs/blob.md): build it from a program, parse it back.

`build_blob` is what `host compile` writes and `host flash` uploads; `parse_blob`
is used by the fake device and the tests, and applies the same checks as the
device where a check does not need the device's op table.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from construct import Array, Const, ConstructError, Float32l, Int8ul, Int16ul, Int32ul, Padding, Struct

from . import ids
from .errors import ModelError
from .graph import NUMPY_DTYPE, align
from .ids import OpCode, TensorFlag
from .compiler import Program

HEADER = Struct(
    "magic" / Const(ids.BLOB_MAGIC),
    "version" / Int16ul,
    "header_bytes" / Int16ul,
    "total_bytes" / Int32ul,
    "crc32" / Int32ul,
    "arena_bytes" / Int32ul,
    "n_tensors" / Int16ul,
    "n_nodes" / Int16ul,
    "n_eval_nodes" / Int16ul,
    "max_batch" / Int16ul,
    "input_tensor" / Int16ul,
    "label_tensor" / Int16ul,
    "stats_tensor" / Int16ul,
    "num_classes" / Int16ul,
    "tensors_off" / Int32ul,
    "nodes_off" / Int32ul,
    "data_off" / Int32ul,
    "data_bytes" / Int32ul,
    "train_begin" / Int16ul,
    "train_loss_end" / Int16ul,
    "update_begin" / Int16ul,
    "update_every" / Int16ul,
    "counter_tensor" / Int16ul,
    Padding(2),
)
TENSOR = Struct(
    "dtype" / Int8ul,
    "flags" / Int8ul,
    "rank" / Int8ul,
    Padding(1),
    "dims" / Array(ids.MAX_RANK, Int16ul),
    "offset" / Int32ul,
    "bytes" / Int32ul,
    "init" / Int32ul,
)
NODE = Struct(
    "op" / Int8ul,
    "fn" / Int8ul,
    "n_in" / Int8ul,
    "n_out" / Int8ul,
    "inputs" / Array(ids.MAX_NODE_INPUTS, Int16ul),
    "outputs" / Array(ids.MAX_NODE_OUTPUTS, Int16ul),
    "iattrs" / Array(ids.NODE_IATTRS, Int16ul),
    "fattrs" / Array(ids.NODE_FATTRS, Float32l),
)
assert HEADER.sizeof() == ids.BLOB_HEADER_BYTES
assert TENSOR.sizeof() == ids.BLOB_TENSOR_BYTES
assert NODE.sizeof() == ids.BLOB_NODE_BYTES

#: the crc covers everything after the crc field
CRC_START = 16


def _pad(seq: list[int], n: int, fill: int) -> list[int]:
    return list(seq) + [fill] * (n - len(seq))


def build_blob(prog: Program) -> bytes:
    g, plan = prog.graph, prog.plan
    for t in g.tensors:
        if any(d > 0xFFFF for d in t.dims) or len(t.dims) > ids.MAX_RANK:
            raise ModelError(f"tensor {t.name}: dims {t.dims} exceed the blob's limits")
    data = bytearray()
    tensor_rows = []
    for i, t in enumerate(g.tensors):
        init = ids.NO_INIT
        if t.init is not None:
            init = len(data)
            raw = np.ascontiguousarray(t.init, dtype=NUMPY_DTYPE[t.dtype]).tobytes()
            data += raw + bytes(plan.sizes[i] - len(raw))
        tensor_rows.append(TENSOR.build(dict(
            dtype=int(t.dtype), flags=int(t.flags), rank=len(t.dims),
            dims=_pad(list(t.dims), ids.MAX_RANK, 1), offset=plan.offsets[i],
            bytes=plan.sizes[i], init=init)))
    node_rows = [NODE.build(dict(
        op=int(n.op), fn=int(n.fn), n_in=len(n.inputs), n_out=len(n.outputs),
        inputs=_pad(n.inputs, ids.MAX_NODE_INPUTS, ids.NO_TENSOR),
        outputs=_pad(n.outputs, ids.MAX_NODE_OUTPUTS, ids.NO_TENSOR),
        iattrs=_pad(list(n.iattrs), ids.NODE_IATTRS, 0),
        fattrs=_pad(list(n.fattrs), ids.NODE_FATTRS, 0.0))) for n in g.nodes]

    tensors_off = ids.BLOB_HEADER_BYTES
    nodes_off = align(tensors_off + len(tensor_rows) * ids.BLOB_TENSOR_BYTES)
    data_off = align(nodes_off + len(node_rows) * ids.BLOB_NODE_BYTES)
    total = data_off + len(data)
    body = bytearray(total)
    body[tensors_off:tensors_off + len(tensor_rows) * ids.BLOB_TENSOR_BYTES] = b"".join(tensor_rows)
    body[nodes_off:nodes_off + len(node_rows) * ids.BLOB_NODE_BYTES] = b"".join(node_rows)
    body[data_off:] = data
    header = dict(
        version=ids.BLOB_VERSION, header_bytes=ids.BLOB_HEADER_BYTES, total_bytes=total, crc32=0,
        arena_bytes=plan.arena_bytes, n_tensors=len(g.tensors), n_nodes=len(g.nodes),
        n_eval_nodes=g.n_eval_nodes, max_batch=g.max_batch, input_tensor=g.input_tensor,
        label_tensor=g.label_tensor, stats_tensor=g.stats_tensor, num_classes=g.num_classes,
        tensors_off=tensors_off, nodes_off=nodes_off, data_off=data_off, data_bytes=len(data),
        train_begin=g.train_begin, train_loss_end=g.train_loss_end,
        update_begin=g.update_begin if g.update_begin is not None else len(g.nodes),
        update_every=g.update_every, counter_tensor=ids.NO_TENSOR if g.counter_tensor < 0 else g.counter_tensor)
    body[:ids.BLOB_HEADER_BYTES] = HEADER.build(header)
    crc = zlib.crc32(bytes(body[CRC_START:]))
    body[12:16] = crc.to_bytes(4, "little")
    return bytes(body)


@dataclass
class ParsedBlob:
    header: dict
    tensors: list[dict]
    nodes: list[dict]
    data: bytes

    @property
    def crc(self) -> int:
        return self.header["crc32"]


def blob_crc(blob: bytes) -> int:
    """The crc32 field of a blob: the model's identity on the device."""
    return int.from_bytes(blob[12:16], "little")


def parse_blob(blob: bytes, arena_limit: int | None = None, l3_limit: int | None = None) -> ParsedBlob:
    """Parse and check the structure of a blob (docs/blob.md); raises ModelError. The
    header dict gains `l3_bytes`: the L3 span its L3 tensors take (0 if none)."""
    try:
        h = HEADER.parse(blob)
    except ConstructError as e:
        raise ModelError(f"blob header: {e}") from e
    checks = [
        (h.version == ids.BLOB_VERSION, "version"),
        (h.header_bytes == ids.BLOB_HEADER_BYTES, "header_bytes"),
        (h.total_bytes == len(blob), "total_bytes"),
        (zlib.crc32(blob[CRC_START:]) == h.crc32, "crc32"),
        (1 <= h.n_tensors <= ids.MAX_TENSORS, "n_tensors"),
        (1 <= h.n_nodes <= ids.MAX_NODES, "n_nodes"),
        (h.n_eval_nodes <= h.n_nodes, "n_eval_nodes"),
        (h.train_begin <= h.train_loss_end <= h.update_begin <= h.n_nodes, "train_begin/train_loss_end/update_begin"),
        (h.update_every >= 1 and (h.update_every > 1) == (h.counter_tensor != ids.NO_TENSOR), "update_every"),
        (h.max_batch >= 1, "max_batch"),
        (h.tensors_off + h.n_tensors * ids.BLOB_TENSOR_BYTES <= len(blob), "tensors_off"),
        (h.nodes_off + h.n_nodes * ids.BLOB_NODE_BYTES <= len(blob), "nodes_off"),
        (h.data_off + h.data_bytes <= len(blob), "data_bytes"),
    ]
    for ok, field in checks:
        if not ok:
            raise ModelError(f"blob field {field} is invalid")
    if arena_limit is not None and h.arena_bytes > arena_limit:
        raise ModelError(f"blob needs a {h.arena_bytes}-byte arena; the device has {arena_limit}")
    tensors = [TENSOR.parse(blob[h.tensors_off + i * ids.BLOB_TENSOR_BYTES:]) for i in range(h.n_tensors)]
    nodes = [NODE.parse(blob[h.nodes_off + i * ids.BLOB_NODE_BYTES:]) for i in range(h.n_nodes)]
    l3 = [t["flags"] & TensorFlag.L3 != 0 for t in tensors]
    for i, t in enumerate(tensors):
        if l3[i]:
            if not t["flags"] & TensorFlag.PARAM or t["flags"] & TensorFlag.BATCHED:
                raise ModelError(f"blob tensor {i}: an L3 tensor must be an unbatched PARAM")
            if l3_limit is not None and t["offset"] + t["bytes"] > l3_limit:
                raise ModelError(f"blob tensor {i}: beyond the device's {l3_limit} bytes of L3 memory")
        elif t["offset"] + t["bytes"] > h.arena_bytes:
            raise ModelError(f"blob tensor {i}: outside the arena")
        if t["init"] != ids.NO_INIT and t["init"] + t["bytes"] > h.data_bytes:
            raise ModelError(f"blob tensor {i}: init outside the data section")
    for i, n in enumerate(nodes):
        used = list(n["inputs"][: n["n_in"]]) + list(n["outputs"][: n["n_out"]])
        if any(x >= h.n_tensors for x in used):
            raise ModelError(f"blob node {i}: tensor index out of range")
        if n["op"] not in (OpCode.L3_LOAD, OpCode.L3_STORE) and any(l3[x] for x in used):
            raise ModelError(f"blob node {i}: only L3_LOAD/L3_STORE may name an L3 tensor")
    header = _plain(h)
    header["l3_bytes"] = max((t["offset"] + t["bytes"] for t, on in zip(tensors, l3) if on), default=0)
    return ParsedBlob(header, [_plain(t) for t in tensors], [_plain(n) for n in nodes],
                      blob[h.data_off:h.data_off + h.data_bytes])


def _plain(c) -> dict:
    """A construct Container as a plain dict, without its private `_io` entry."""
    return {k: (list(v) if isinstance(v, list) else v) for k, v in c.items() if not k.startswith("_")}
