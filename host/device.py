"""A device as the host sees it: typed calls over a `Link`."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from . import ids
from .errors import ProtocolError
from .ids import Cap, Encoding, MsgType
from .link import Link
from .protocol import (
    BATCH_REQ,
    PROFILE_REQ,
    PROFILE_RESP,
    STAGE_REQ,
    STAGE_REQ_FIXED,
    STAGE_RESP,
    HELLO_RESP,
    LOAD_BEGIN_REQ,
    LOAD_CHUNK_MAX,
    LOAD_CHUNK_REQ,
    LOAD_CHUNK_RESP,
    LOAD_END_RESP,
    READ_WEIGHTS_MAX,
    READ_WEIGHTS_REQ,
    READ_WEIGHTS_RESP,
    STATS_RESP,
    STEP_RESP,
    EXIT_REQ,
)


@dataclass(frozen=True)
class Hello:
    protocol: int
    firmware: str
    caps: Cap
    arena_bytes: int
    staging_bytes: int
    max_payload: int
    model_loaded: bool
    model_crc: int
    board: str

    def to_json(self) -> dict:
        return {"protocol": self.protocol, "firmware": self.firmware, "board": self.board,
                "caps": [c.name for c in Cap if c in self.caps], "arena_bytes": self.arena_bytes,
                "staging_bytes": self.staging_bytes, "model_loaded": self.model_loaded,
                "model_crc": f"{self.model_crc:08x}"}


@dataclass(frozen=True)
class StepResult:
    loss: float
    n: int
    correct: int
    step: int
    cycles: int


@dataclass(frozen=True)
class Batch:
    """Samples ready to send: u8-affine encoded if the values allow, else f32."""

    n: int
    encoding: Encoding
    scale: float
    zero: float
    labels: bytes
    data: bytes

    @classmethod
    def from_arrays(cls, x: np.ndarray, y: np.ndarray, quant: tuple[float, float] | None = None) -> "Batch":
        """`quant=(scale, zero)` sends x as u8 codes q with x = q·scale + zero (x must be
        exactly representable, e.g. pixel counts); otherwise x is sent as f32."""
        x = np.asarray(x, np.float32).reshape(len(x), -1)
        labels = np.asarray(y, np.uint8).tobytes()
        if quant is not None:
            scale, zero = quant
            q = np.rint((x - np.float32(zero)) / np.float32(scale))
            if q.min() < 0 or q.max() > 255:
                raise ValueError("values outside the u8 range of the given scale/zero")
            return cls(len(x), Encoding.U8_AFFINE, scale, zero, labels, q.astype(np.uint8).tobytes())
        return cls(len(x), Encoding.F32, 0.0, 0.0, labels, x.astype("<f4").tobytes())

    def pack(self) -> bytes:
        return BATCH_REQ.build(dict(n=self.n, encoding=int(self.encoding), scale=self.scale,
                                    zero=self.zero, labels=self.labels, data=self.data))


class Device:
    def __init__(self, link: Link):
        self.link = link

    def hello(self) -> Hello:
        r = HELLO_RESP.parse(self.link.request(MsgType.HELLO).payload)
        if r.protocol != ids.PROTOCOL_VERSION:
            raise ProtocolError(f"device speaks protocol v{r.protocol}; this host speaks v{ids.PROTOCOL_VERSION}")
        return Hello(r.protocol, f"{r.fw_major}.{r.fw_minor}.{r.fw_patch}", Cap(r.caps), r.arena_bytes,
                     r.staging_bytes, r.max_payload, bool(r.model_loaded), r.model_crc,
                     r.board.decode("ascii", "replace"))

    def load(self, blob: bytes, progress=None) -> dict:
        """Upload and install a model blob; `progress(sent, total)` after each chunk."""
        self.link.request(MsgType.LOAD_BEGIN, LOAD_BEGIN_REQ.build(dict(total_bytes=len(blob),
                                                                        crc32=zlib.crc32(blob))))
        for off in range(0, len(blob), LOAD_CHUNK_MAX):
            chunk = blob[off:off + LOAD_CHUNK_MAX]
            r = LOAD_CHUNK_RESP.parse(self.link.request(
                MsgType.LOAD_CHUNK, LOAD_CHUNK_REQ.build(dict(offset=off, data=chunk))).payload)
            if r.received != off + len(chunk):
                raise ProtocolError(f"device acknowledged {r.received} bytes, expected {off + len(chunk)}")
            if progress:
                progress(off + len(chunk), len(blob))
        r = LOAD_END_RESP.parse(self.link.request(MsgType.LOAD_END, timeout=max(self.link.timeout, 10)).payload)
        return {"model_crc": r.model_crc, "arena_used": r.arena_used, "n_tensors": r.n_tensors,
                "n_nodes": r.n_nodes}

    def _step(self, mtype: MsgType, batch: Batch) -> StepResult:
        payload = batch.pack()
        if len(payload) > ids.FRAME_MAX_PAYLOAD:
            self._stage(batch)
            payload = BATCH_REQ.build(dict(n=batch.n, encoding=int(Encoding.STAGED), scale=0.0, zero=0.0,
                                           labels=batch.labels, data=b""))
        r = STEP_RESP.parse(self.link.request(mtype, payload).payload)
        if r.n != batch.n:
            raise ProtocolError(f"device processed {r.n} samples of {batch.n}")
        return StepResult(r.loss, r.n, r.correct, r.step, r.cycles)

    def _stage(self, batch: Batch) -> None:
        """Send the values of a batch too large for one frame as STAGE requests."""
        width = 4 if batch.encoding == Encoding.F32 else 1
        per_frame = (ids.FRAME_MAX_PAYLOAD - STAGE_REQ_FIXED) // width * width
        for start in range(0, len(batch.data), per_frame):
            chunk = batch.data[start:start + per_frame]
            req = STAGE_REQ.build(dict(offset=start // width, encoding=int(batch.encoding), scale=batch.scale,
                                       zero=batch.zero, data=chunk))
            r = STAGE_RESP.parse(self.link.request(MsgType.STAGE, req).payload)
            if r.staged != (start + len(chunk)) // width:
                raise ProtocolError(f"device staged {r.staged} values, expected {(start + len(chunk)) // width}")

    def train(self, batch: Batch) -> StepResult:
        return self._step(MsgType.TRAIN, batch)

    def evaluate(self, batch: Batch) -> StepResult:
        return self._step(MsgType.EVAL, batch)

    def profile(self) -> list[int]:
        """Cycles each node of the installed model took in the last TRAIN/EVAL
        (0 for nodes that did not run; each includes one read of the clock)."""
        out: list[int] = []
        while True:
            r = PROFILE_RESP.parse(self.link.request(MsgType.PROFILE, PROFILE_REQ.build(dict(first=len(out)))).payload)
            if r.first != len(out):
                raise ProtocolError(f"PROFILE answered from node {r.first}, asked {len(out)}")
            out += list(r.cycles)
            if len(out) >= r.n_nodes or not r.cycles:
                return out[:r.n_nodes]

    def stats(self) -> dict:
        r = STATS_RESP.parse(self.link.request(MsgType.STATS).payload)
        return {k: v for k, v in r.items() if not k.startswith("_")}

    def read_tensor(self, tensor: int, nbytes: int) -> bytes:
        out = bytearray()
        while len(out) < nbytes:
            length = min(READ_WEIGHTS_MAX, nbytes - len(out))
            req = READ_WEIGHTS_REQ.build(dict(tensor=tensor, length=length, offset=len(out)))
            r = READ_WEIGHTS_RESP.parse(self.link.request(MsgType.READ_WEIGHTS, req).payload)
            if r.tensor != tensor or r.offset != len(out) or len(r.data) != length:
                raise ProtocolError("READ_WEIGHTS answered another range than asked")
            out += r.data
        return bytes(out)

    def read_params(self, prog) -> dict[str, np.ndarray]:
        """Every parameter of a compiled program (host.compiler.Program), read back."""
        out = {}
        for idx, name in prog.param_names.items():
            t = prog.graph.tensors[idx]
            raw = self.read_tensor(idx, t.elems * 4)
            out[name] = np.frombuffer(raw, "<f4").reshape(t.dims).copy()
        return out

    def exit(self, code: int = 0) -> None:
        self.link.request(MsgType.EXIT, EXIT_REQ.build(dict(code=code)))

