"""A NumPy interpreter of model blobs: the fake device's engine.

It runs a parsed blob exactly as docs/blob.md describes, in float32, over one
byte arena laid out by the blob's plan, so aliasing mistakes in a plan show up
here as they would on the device. It is not the golden reference (that is
`host.reference`, written from the model description, not from the graph).
"""

from __future__ import annotations

import numpy as np

from . import ids
from .blob import ParsedBlob
from .ids import DType, Encoding, OpCode, OpFn, Status, TensorFlag

_NP = {DType.F32: np.float32, DType.I32: np.int32, DType.U8: np.uint8, DType.S8: np.int8}


class StepError(Exception):
    def __init__(self, status: Status, message: str):
        super().__init__(message)
        self.status = status


class BlobExecutor:
    def __init__(self, blob: ParsedBlob):
        self.blob = blob
        self.h = blob.header
        self.arena = np.zeros(self.h["arena_bytes"], np.uint8)
        for t in blob.tensors:
            if t["init"] != ids.NO_INIT:
                self.arena[t["offset"]:t["offset"] + t["bytes"]] = np.frombuffer(
                    blob.data, np.uint8, t["bytes"], t["init"])
        self.steps = 0

    # -- tensors ------------------------------------------------------------
    def elems(self, i: int) -> int:
        t = self.blob.tensors[i]
        return int(np.prod(t["dims"][: t["rank"]]))

    def view(self, i: int, n: int | None = None) -> np.ndarray:
        """Tensor i as an array; batched tensors as [n, elems]."""
        t = self.blob.tensors[i]
        dt = _NP[DType(t["dtype"])]
        dims = tuple(t["dims"][: t["rank"]])
        count = self.elems(i) * (n if (t["flags"] & TensorFlag.BATCHED) else 1)
        flat = self.arena[t["offset"]:t["offset"] + count * np.dtype(dt).itemsize].view(dt)
        return flat.reshape((n, -1) if t["flags"] & TensorFlag.BATCHED else dims)

    def param(self, i: int) -> np.ndarray:
        return self.view(i).copy()

    # -- one request -----------------------------------------------------------
    def run(self, n: int, encoding: int, scale: float, zero: float, labels: bytes, data: bytes,
            train: bool) -> tuple[float, int]:
        h = self.h
        feats = self.elems(h["input_tensor"])
        width = {Encoding.F32: 4, Encoding.U8_AFFINE: 1}.get(encoding)
        if not 1 <= n <= h["max_batch"] or width is None or len(data) != n * feats * width:
            raise StepError(Status.BAD_BATCH, "batch size, encoding or data length is wrong")
        lab = np.frombuffer(labels, np.uint8).astype(np.int32)
        if (lab >= h["num_classes"]).any():
            raise StepError(Status.BAD_BATCH, "label out of range")
        if encoding == Encoding.F32:
            x = np.frombuffer(data, "<f4")
        else:
            x = np.frombuffer(data, np.uint8).astype(np.float32) * np.float32(scale) + np.float32(zero)
        self.view(h["input_tensor"], n)[:] = x.reshape(n, feats)
        self.view(h["label_tensor"], n)[:] = lab.reshape(n, 1)
        nodes = self.blob.nodes
        fw = nodes[h["train_begin"]:h["train_loss_end"]] if train else nodes[:h["n_eval_nodes"]]
        for node in fw:
            self._node(node, n)
        loss, correct = self.view(h["stats_tensor"])
        if not np.isfinite(loss):
            raise StepError(Status.NUMERIC, "loss is not finite")
        if train:
            for node in nodes[h["train_loss_end"]:]:
                self._node(node, n)
            self.steps += 1
        return float(loss), int(correct)

    def _node(self, node: dict, n: int) -> None:
        i = node["inputs"][: node["n_in"]]
        o = node["outputs"][: node["n_out"]]
        op, fn = OpCode(node["op"]), OpFn(node["fn"])
        v = lambda k: self.view(k, n)  # noqa: E731
        if op == OpCode.LINEAR and fn == OpFn.FW:
            v(o[0])[:] = v(i[0]) @ v(i[1]).T + v(i[2])
        elif op == OpCode.LINEAR and fn == OpFn.BW_INPUT:
            v(o[0])[:] = v(i[0]) @ v(i[1])
        elif op == OpCode.LINEAR and fn == OpFn.BW_PARAM:
            dy, x = v(i[0]), v(i[1])
            v(o[0])[:] = dy.T @ x
            v(o[1])[:] = dy.sum(axis=0)
        elif op == OpCode.RELU and fn == OpFn.FW:
            v(o[0])[:] = np.maximum(v(i[0]), 0)
        elif op == OpCode.RELU and fn == OpFn.BW_INPUT:
            v(o[0])[:] = v(i[0]) * (v(i[1]) > 0)
        elif op == OpCode.SOFTMAX_CE and fn == OpFn.FW:
            z = v(i[0]).astype(np.float64)
            lab = v(i[1])[:, 0]
            z = z - z.max(axis=1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            v(o[0])[:] = np.exp(logp)
            v(o[1])[:] = [-logp[np.arange(n), lab].mean(), (z.argmax(axis=1) == lab).sum()]
        elif op == OpCode.SOFTMAX_CE and fn == OpFn.BW_INPUT:
            p = v(i[0]).copy()
            p[np.arange(n), v(i[1])[:, 0]] -= 1
            v(o[0])[:] = p / n
        elif op == OpCode.SGD and fn == OpFn.FW:
            lr, wd = (np.float32(a) for a in node["fattrs"][:2])
            w = v(o[0])
            w -= lr * (v(i[0]) + wd * w)
        else:
            raise StepError(Status.BAD_BLOB, f"op {op.name} has no function {fn.name}")
