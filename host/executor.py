"""A NumPy interpreter of model blobs: the fake device's engine.

It runs a parsed blob exactly as docs/blob.md describes, in float32, over one
byte arena laid out by the blob's plan, so aliasing mistakes in a plan show up
here as they would on the device. It is not the golden reference (that is
`host.reference`, written from the model description, not from the graph).
"""

from __future__ import annotations

import numpy as np

from . import ids, quant
from .blob import ParsedBlob
from .graph import NUMPY_DTYPE
from .ids import DType, Encoding, OpCode, OpFn, Status, TensorFlag



#: (op, fn) pairs _node implements
_SUPPORTED = {(OpCode.LINEAR, OpFn.FW), (OpCode.LINEAR, OpFn.BW_INPUT), (OpCode.LINEAR, OpFn.BW_PARAM),
              (OpCode.RELU, OpFn.FW), (OpCode.RELU, OpFn.BW_INPUT), (OpCode.SOFTMAX_CE, OpFn.FW),
              (OpCode.SOFTMAX_CE, OpFn.BW_INPUT), (OpCode.SGD, OpFn.FW), (OpCode.ZERO, OpFn.FW),
              (OpCode.ACCUMULATE, OpFn.FW), (OpCode.ADD, OpFn.FW), (OpCode.GATHER, OpFn.FW),
              (OpCode.SCATTER, OpFn.FW), (OpCode.BIAS_GRAD, OpFn.FW),
              # int8 (docs/ops/int8.md), from host.quant: linear layers with f32 master weights
              (OpCode.QUANTIZE, OpFn.FW), (OpCode.DEQUANTIZE, OpFn.FW), (OpCode.LINEAR_Q8, OpFn.FW),
              (OpCode.LINEAR_Q8, OpFn.BW_INPUT), (OpCode.LINEAR_Q8, OpFn.BW_PARAM), (OpCode.RELU_Q8, OpFn.FW),
              (OpCode.RELU_Q8, OpFn.BW_INPUT), (OpCode.REQUANT_WEIGHTS, OpFn.FW), (OpCode.SGD_Q8, OpFn.FW),
              (OpCode.L3_LOAD, OpFn.FW), (OpCode.L3_STORE, OpFn.FW)}


class StepError(Exception):
    def __init__(self, status: Status, message: str):
        super().__init__(message)
        self.status = status


class BlobExecutor:
    def __init__(self, blob: ParsedBlob):
        self.blob = blob
        self.h = blob.header
        self.arena = np.zeros(self.h["arena_bytes"], np.uint8)
        #: the board's L3 memory as far as the blob uses it (tensors flagged L3)
        self.l3 = np.zeros(self.h.get("l3_bytes", 0), np.uint8)
        for i, t in enumerate(blob.tensors):
            if t["init"] != ids.NO_INIT:
                self.storage(i)[:] = np.frombuffer(blob.data, np.uint8, t["bytes"], t["init"])
        self.steps = 0

    # -- tensors ------------------------------------------------------------
    def storage(self, i: int) -> np.ndarray:
        """Tensor i's storage: in the arena, or in L3 for a tensor flagged L3."""
        t = self.blob.tensors[i]
        mem = self.l3 if t["flags"] & TensorFlag.L3 else self.arena
        return mem[t["offset"]:t["offset"] + t["bytes"]]

    def elems(self, i: int) -> int:
        t = self.blob.tensors[i]
        return int(np.prod(t["dims"][: t["rank"]]))

    def view(self, i: int, n: int | None = None) -> np.ndarray:
        """Tensor i as an array; batched tensors as [n, elems]."""
        t = self.blob.tensors[i]
        dt = NUMPY_DTYPE[DType(t["dtype"])]
        dims = tuple(t["dims"][: t["rank"]])
        count = self.elems(i) * (n if (t["flags"] & TensorFlag.BATCHED) else 1)
        flat = self.storage(i)[:count * np.dtype(dt).itemsize].view(dt)
        return flat.reshape((n, -1) if t["flags"] & TensorFlag.BATCHED else dims)

    def param(self, i: int) -> np.ndarray:
        return self.view(i).copy()

    # -- one request -----------------------------------------------------------
    def stage(self, offset: int, encoding: int, scale: float, zero: float, data: bytes) -> int:
        """Decode values into input elements [offset, ...); returns the end offset."""
        h = self.h
        width = {Encoding.F32: 4, Encoding.U8_AFFINE: 1}.get(encoding)
        if width is None or len(data) % width:
            raise StepError(Status.BAD_BATCH, "unknown encoding, or f32 data not whole values")
        count = len(data) // width
        if offset + count > h["max_batch"] * self.elems(h["input_tensor"]):
            raise StepError(Status.BAD_BATCH, "values past max_batch samples")
        if encoding == Encoding.F32:
            x = np.frombuffer(data, "<f4")
        else:
            x = np.frombuffer(data, np.uint8).astype(np.float32) * np.float32(scale) + np.float32(zero)
        self.view(h["input_tensor"], h["max_batch"]).reshape(-1)[offset:offset + count] = x
        return offset + count

    def _labels(self, n: int, labels: bytes) -> None:
        lab = np.frombuffer(labels, np.uint8).astype(np.int32)
        if len(lab) != n or (lab >= self.h["num_classes"]).any():
            raise StepError(Status.BAD_BATCH, "label out of range")
        self.view(self.h["label_tensor"], n)[:] = lab.reshape(n, 1)

    def run(self, n: int, encoding: int, scale: float, zero: float, labels: bytes, data: bytes,
            train: bool) -> tuple[float, int]:
        feats = self.elems(self.h["input_tensor"])
        width = {Encoding.F32: 4, Encoding.U8_AFFINE: 1}.get(encoding)
        if not 1 <= n <= self.h["max_batch"] or width is None or len(data) != n * feats * width:
            raise StepError(Status.BAD_BATCH, "batch size, encoding or data length is wrong")
        self._labels(n, labels)
        self.stage(0, encoding, scale, zero, data)
        return self._run_rows(n, train)

    def run_decoded(self, x: np.ndarray, labels: bytes, train: bool) -> tuple[float, int]:
        """Run on samples already decoded to float32 ([n, input elements]), e.g. from the
        sample buffer."""
        n = len(x)
        if not 1 <= n <= self.h["max_batch"]:
            raise StepError(Status.BAD_BATCH, "batch: n not in 1..max_batch")
        self._labels(n, labels)
        self.view(self.h["input_tensor"], n)[:] = np.asarray(x, np.float32).reshape(n, -1)
        return self._run_rows(n, train)

    def run_staged(self, n: int, labels: bytes, train: bool) -> tuple[float, int]:
        if not 1 <= n <= self.h["max_batch"]:
            raise StepError(Status.BAD_BATCH, "n not in 1..max_batch")
        self._labels(n, labels)
        return self._run_rows(n, train)

    def _run_rows(self, n: int, train: bool) -> tuple[float, int]:
        h = self.h
        nodes = self.blob.nodes
        fw = nodes[h["train_begin"]:h["train_loss_end"]] if train else nodes[:h["n_eval_nodes"]]
        for node in fw:
            self._node(node, n)
        loss, correct = self.view(h["stats_tensor"])
        if not np.isfinite(loss):
            raise StepError(Status.NUMERIC, "loss is not finite")
        if train:
            for node in nodes[h["train_loss_end"]:h["update_begin"]]:
                self._node(node, n)
            update = True
            if h["counter_tensor"] != ids.NO_TENSOR:
                count = self.view(h["counter_tensor"]).reshape(-1)
                nxt = int(count[0]) + 1 if 0 <= count[0] < h["update_every"] else 1
                update = nxt == h["update_every"]
                count[0] = 0 if update else nxt
            if update:
                for node in nodes[h["update_begin"]:]:
                    self._node(node, n)
            self.steps += 1
        return float(loss), int(correct)

    def unsupported(self) -> list[str]:
        """Op functions of the blob this interpreter does not implement."""
        return sorted({f"{OpCode(nd['op']).name.lower()}.{OpFn(nd['fn']).name.lower()}"
                       for nd in self.blob.nodes if (nd["op"], nd["fn"]) not in _SUPPORTED})

    def _channels(self, op: OpCode, node: dict, i: list, o: list, n: int) -> None:
        """GATHER / SCATTER / BIAS_GRAD: tensors as [rows][C or k][inner] (docs/blob.md)."""
        c, inner = node["iattrs"][0], node["iattrs"][1] | node["iattrs"][2] << 16
        split = lambda k, ch: self.view(k, n).reshape(-1, ch, inner)  # noqa: E731
        if op == OpCode.BIAS_GRAD:
            self.view(o[0], n)[:] = split(i[0], c).sum(axis=(0, 2), dtype=np.float32)
            return
        idx = self.view(i[1], n).astype(np.int64)
        ok = idx < c  # untrusted indices: out of range reads zeros, writes nothing
        if op == OpCode.GATHER:
            part = split(o[0], len(idx))
            part[:] = 0
            part[:, ok] = split(i[0], c)[:, idx[ok]]
        else:
            split(o[0], c)[:, idx[ok]] = split(i[0], len(idx))[:, ok]

    def _int8(self, op: OpCode, fn: OpFn, node: dict, i: list, o: list, n: int) -> None:
        """The int8 ops, as host.quant computes them (the reference the device matches bit for bit)."""
        v = lambda k: self.view(k, n)  # noqa: E731
        e = lambda k: int(self.view(k, n)[0])  # noqa: E731  an I32 [1] exponent
        if op == OpCode.QUANTIZE:
            v(o[0])[:], v(o[1])[0] = quant.quantize(v(i[0]))
        elif op == OpCode.DEQUANTIZE:
            v(o[0])[:] = quant.dequantize(v(i[0]), e(i[1]))
        elif op == OpCode.RELU_Q8 and fn == OpFn.FW:
            v(o[0])[:], v(o[1])[0] = quant.relu_fw(v(i[0]), e(i[1]))
        elif op == OpCode.RELU_Q8:
            v(o[0])[:], v(o[1])[0] = quant.relu_bw(v(i[0]), e(i[1]), v(i[2]))
        elif op == OpCode.REQUANT_WEIGHTS and len(i) == 1:
            v(o[0])[:], v(o[1])[:] = quant.quantize_weights(v(i[0]), node["iattrs"][0])
        elif op == OpCode.REQUANT_WEIGHTS:
            v(o[0])[:] = quant.quantize_bias(v(i[0]), e(i[1]))
        elif op == OpCode.SGD_Q8:
            lr_q, lr_shift, which = node["iattrs"][:3]
            rng = v(o[1]).reshape(-1)
            new, state = quant.sgd_q8(v(o[0]), v(i[0]), int(v(i[1]).reshape(-1)[which]), v(i[2]).reshape(-1),
                                      lr_q, lr_shift, int(rng[0]) & 0xFFFFFFFF)
            v(o[0])[:] = new.reshape(v(o[0]).shape)
            rng[:] = np.array([state], np.uint32).view(np.int32)
        elif fn == OpFn.FW:  # LINEAR_Q8: rows of K → rows of M
            w = v(i[2])
            bias = (v(i[4]), e(i[5])) if len(i) == 6 else (None, 0)
            y, v(o[1])[0] = quant.linear_fw(v(i[0]).reshape(-1, w.shape[1]), e(i[1]), w, v(i[3]), *bias)
            v(o[0])[:] = y.reshape(v(o[0]).shape)
        elif fn == OpFn.BW_INPUT:
            w = v(i[2])
            dx, v(o[1])[0] = quant.linear_bw_input(v(i[0]).reshape(-1, w.shape[0]), e(i[1]), w, v(i[3]))
            v(o[0])[:] = dx.reshape(v(o[0]).shape)
        else:  # BW_PARAM: the sums as f32 gradients, or (4 outputs) as int32 with their exponents
            dw = v(o[0])
            sums_w, sums_b, (e_w, e_b) = quant.linear_bw_param(v(i[0]).reshape(-1, dw.shape[0]), e(i[1]),
                                                               v(i[2]).reshape(-1, dw.shape[1]), e(i[3]))
            if len(o) == 4:
                dw[:], v(o[1])[:], v(o[2])[:] = sums_w, sums_b, [e_w, e_b]
            else:
                dw[:] = quant.acc_to_f32(sums_w, e_w)
                v(o[1])[:] = quant.acc_to_f32(sums_b, e_b)

    def _node(self, node: dict, n: int) -> None:
        i = node["inputs"][: node["n_in"]]
        o = node["outputs"][: node["n_out"]]
        op, fn = OpCode(node["op"]), OpFn(node["fn"])
        v = lambda k: self.view(k, n)  # noqa: E731
        # linear maps rows of K to rows of M; a sample may hold several rows (tokens)
        rows = lambda k, width: v(k).reshape(-1, width)  # noqa: E731
        if op == OpCode.LINEAR and fn == OpFn.FW:
            w = v(i[1])
            rows(o[0], w.shape[0])[:] = rows(i[0], w.shape[1]) @ w.T + v(i[2])
        elif op == OpCode.LINEAR and fn == OpFn.BW_INPUT:
            w = v(i[1])
            rows(o[0], w.shape[1])[:] = rows(i[0], w.shape[0]) @ w
        elif op == OpCode.LINEAR and fn == OpFn.BW_PARAM:
            dw = v(o[0])
            dy, x = rows(i[0], dw.shape[0]), rows(i[1], dw.shape[1])
            dw[:] = dy.T @ x
            v(o[1])[:] = dy.sum(axis=0)
        elif op == OpCode.RELU and fn == OpFn.FW:
            x = v(i[0])
            if len(o) == 2:  # the bit mask first: y may overwrite x (docs/blob.md, RELU)
                v(o[1])[:] = np.packbits(x > 0, axis=1, bitorder="little")
            v(o[0])[:] = np.maximum(x, 0)
        elif op == OpCode.RELU and fn == OpFn.BW_INPUT:
            dy = v(i[0])
            if self.blob.tensors[i[1]]["dtype"] == DType.U8:
                on = np.unpackbits(v(i[1]), axis=1, count=dy.shape[1], bitorder="little").astype(bool)
            else:
                on = v(i[1]) > 0
            v(o[0])[:] = np.where(on, dy, np.float32(0))
        elif op in (OpCode.GATHER, OpCode.SCATTER, OpCode.BIAS_GRAD):
            self._channels(op, node, i, o, n)
        elif op in (OpCode.QUANTIZE, OpCode.DEQUANTIZE, OpCode.LINEAR_Q8, OpCode.RELU_Q8, OpCode.REQUANT_WEIGHTS,
                    OpCode.SGD_Q8):
            self._int8(op, fn, node, i, o, n)
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
        elif op == OpCode.ZERO:
            v(o[0])[:] = 0
        elif op in (OpCode.L3_LOAD, OpCode.L3_STORE):
            self.storage(o[0])[:] = self.storage(i[0])
        elif op == OpCode.ACCUMULATE:
            v(o[0])[:] += v(i[1]).reshape(v(o[0]).shape)
        elif op == OpCode.ADD:
            v(o[0])[:] = v(i[0]) + v(i[1]).reshape(v(i[0]).shape)
        else:
            raise StepError(Status.BAD_BLOB, f"op {op.name} has no function {fn.name}")
