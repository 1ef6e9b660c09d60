"""A device as the host sees it: typed calls over a `Link`."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

import numpy as np

from . import ids
from .errors import DeviceError, LinkError, ProtocolError
from .graph import NUMPY_DTYPE
from .ids import DTYPE_BYTES, Cap, Encoding, MsgType
from .link import Link
from .protocol import (
    BATCH_REQ,
    CKPT_INFO_RESP,
    CKPT_RESP,
    GUARD_REQ,
    GUARD_RESP,
    NvFlag,
    BUF_BEGIN_REQ,
    BUF_BEGIN_RESP,
    BUF_CHUNK_MAX,
    BUF_CHUNK_REQ,
    BUF_CHUNK_RESP,
    BUF_RUN_REQ,
    PROFILE_REQ,
    PROFILE_RESP,
    CORES_RESP,
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
    #: what non-volatile storage holds (NvFlag; 0 from firmware without checkpoints)
    nv_flags: NvFlag = NvFlag(0)
    #: the checkpoint the device's weights are (restored at boot, saved or restored since); 0 = none
    ckpt_seq: int = 0
    #: TRAIN steps applied to the installed model (a restored checkpoint's count included)
    steps: int = 0
    #: bytes of L3 memory for tensors that do not fit the arena (GAP9's HyperRAM); 0 = none
    l3_bytes: int = 0

    def to_json(self) -> dict:
        return {"protocol": self.protocol, "firmware": self.firmware, "board": self.board,
                "caps": [c.name for c in Cap if c in self.caps], "arena_bytes": self.arena_bytes,
                "staging_bytes": self.staging_bytes, "model_loaded": self.model_loaded,
                "model_crc": f"{self.model_crc:08x}", "nv": [f.name for f in NvFlag if f in self.nv_flags],
                "ckpt_seq": self.ckpt_seq, "steps": self.steps, "l3_bytes": self.l3_bytes}


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as CKPT_SAVE / CKPT_RESTORE report it."""

    seq: int
    steps: int
    payload_bytes: int
    slot: int


class RolledBack(DeviceError):
    """A TRAIN the device refused with NUMERIC: the runtime found the loss NaN/Inf (the step
    was not applied), or the guards rejected the update (a NaN/Inf parameter, a loss spike)
    and restored the newest checkpoint (`rolled_back`; the message says which), or, with
    no checkpoint stored, could not (`rolled_back` False: the weights are as the step left them)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message, status=status,
                         hint="lower the learning rate, or raise the spike factor (GUARD)")
        self.rolled_back = "rolled back to checkpoint" in message


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


#: sample-buffer encodings by their `host stream --encoding` name
BUFFER_ENCODINGS = {"f32": Encoding.F32, "u8": Encoding.U8_AFFINE, "i8": Encoding.I8_AFFINE,
                    "i16": Encoding.I16_AFFINE}
#: code range of each affine encoding
_CODE_RANGE = {Encoding.U8_AFFINE: (0, 255, np.uint8), Encoding.I8_AFFINE: (-127, 127, np.int8),
               Encoding.I16_AFFINE: (-32767, 32767, np.dtype("<i2"))}


@dataclass(frozen=True)
class SampleBuffer:
    """Samples for the device-side sample buffer (BUF_BEGIN/BUF_CHUNK), encoded.

    f32 carries the values as they are. The affine encodings carry codes q with
    x = q·scale[c] + zero[c] per channel c (a sample is [channels][elems/channels]):
    the scale of each channel spans the range of the values given, so nothing is
    clipped and the error is at most scale[c]/2 (u8: 255 steps, i8: 254, i16: 65534).
    `quant=(scale, zero)` (u8 only) uses that exact global grid instead (pixel counts).
    """

    encoding: Encoding
    count: int
    elems: int
    scale: tuple[float, ...]
    zero: tuple[float, ...]
    labels: bytes
    codes: bytes

    @property
    def channels(self) -> int:
        return len(self.scale)

    @property
    def bytes_per_sample(self) -> int:
        """Bytes per sample on the wire: its values and its u8 label."""
        return self.elems * ids.ENCODING_BYTES[self.encoding] + 1

    @property
    def stream(self) -> bytes:
        """What the BUF_CHUNKs carry: the labels, then the samples."""
        return self.labels + self.codes

    @classmethod
    def from_arrays(cls, x: np.ndarray, y: np.ndarray, encoding: Encoding | str = Encoding.F32,
                    channels: int = 1, quant: tuple[float, float] | None = None) -> "SampleBuffer":
        encoding = BUFFER_ENCODINGS[encoding] if isinstance(encoding, str) else Encoding(encoding)
        x = np.asarray(x, np.float32).reshape(len(x), -1)
        n, elems = x.shape
        labels = np.asarray(y, np.uint8).tobytes()
        if not 1 <= n <= 0xFFFF:
            raise ValueError(f"a sample buffer holds 1..65535 samples, not {n}")
        if encoding == Encoding.F32:
            return cls(encoding, n, elems, (), (), labels, x.astype("<f4").tobytes())
        if encoding not in _CODE_RANGE:
            raise ValueError(f"encoding {encoding.name} cannot be buffered")
        lo_q, hi_q, dt = _CODE_RANGE[encoding]
        if quant is not None:
            if encoding != Encoding.U8_AFFINE:
                raise ValueError("an exact quant grid is a u8 one")
            channels = 1
            scale = np.array([quant[0]], np.float32)
            zero = np.array([quant[1]], np.float32)
        else:
            if channels < 1 or elems % channels:
                raise ValueError(f"{channels} channels do not divide {elems} values per sample")
            per = x.reshape(n, channels, -1)
            lo = per.min(axis=(0, 2)).astype(np.float64)
            hi = per.max(axis=(0, 2)).astype(np.float64)
            span = np.where(hi > lo, hi - lo, 1.0)
            scale = (span / (hi_q - lo_q)).astype(np.float32)
            # codes lo_q..hi_q cover [lo, hi]: zero is the value of code 0
            zero = (lo - lo_q * scale.astype(np.float64)).astype(np.float32)
        q = np.rint((x.reshape(n, channels, -1).astype(np.float64) - zero[None, :, None])
                    / scale[None, :, None].astype(np.float64))
        if quant is not None and (q.min() < lo_q or q.max() > hi_q):
            raise ValueError("values outside the u8 range of the given scale/zero")
        q = np.clip(q, lo_q, hi_q).astype(dt)
        return cls(encoding, n, elems, tuple(float(v) for v in scale), tuple(float(v) for v in zero), labels,
                   q.tobytes())

    def decoded(self) -> np.ndarray:
        """The values the device decodes: [count, elems] float32, computed as it does."""
        if self.encoding == Encoding.F32:
            return np.frombuffer(self.codes, "<f4").reshape(self.count, self.elems).copy()
        dt = _CODE_RANGE[self.encoding][2]
        q = np.frombuffer(self.codes, dt).reshape(self.count, self.channels, -1).astype(np.float32)
        x = q * np.asarray(self.scale, np.float32)[None, :, None] + np.asarray(self.zero, np.float32)[None, :, None]
        return x.reshape(self.count, self.elems)

    def begin_request(self) -> bytes:
        return BUF_BEGIN_REQ.build(dict(count=self.count, encoding=int(self.encoding), elems=self.elems,
                                        channels=self.channels, scale=list(self.scale), zero=list(self.zero)))


class Device:
    def __init__(self, link: Link):
        self.link = link

    def hello(self) -> Hello:
        try:
            frame = self.link.request(MsgType.HELLO)
        except LinkError as e:
            raise LinkError(f"{self.link.url or 'the port'} does not answer HELLO: {e}",
                            hint="is this the EdgeProp device's port, and is its firmware running? "
                                 "(`host boards`, `make flash`, or pass another --port)") from e
        try:
            r = HELLO_RESP.parse(frame.payload)
        except Exception as e:  # construct's errors: a frame that is not our HELLO
            raise ProtocolError(f"the HELLO answer is not EdgeProp's ({e})",
                                hint="the port answers, but not with this protocol: another device?") from e
        if r.protocol != ids.PROTOCOL_VERSION:
            raise ProtocolError(f"device speaks protocol v{r.protocol}; this host speaks v{ids.PROTOCOL_VERSION}")
        nv = r.nv
        return Hello(r.protocol, f"{r.fw_major}.{r.fw_minor}.{r.fw_patch}", Cap(r.caps), r.arena_bytes,
                     r.staging_bytes, r.max_payload, bool(r.model_loaded), r.model_crc,
                     r.board.decode("ascii", "replace"), NvFlag(nv.flags) if nv else NvFlag(0),
                     nv.ckpt_seq if nv else 0, nv.steps if nv else 0, r.l3_bytes or 0)

    def reopen(self, attempts: int = 5, wait: float = 0.5) -> Hello:
        """Close the link and open it again at the same URL (after the link dropped or the
        device was reset); returns the device's HELLO. Tries `attempts` times, `wait` s apart."""
        if not self.link.url:
            raise LinkError("this link cannot be reopened: it was not opened from a URL")
        old, last = self.link, None
        old.close()
        for _ in range(attempts):
            try:
                self.link = type(old).open(old.url, timeout=old.timeout, retries=old.retries)
                # a device that was reset sends its boot HELLO as the link opens; bytes sent
                # before it may be lost (a UART not set up yet), so give it a moment first
                self.link.read_frames(0.3)
                return self.hello()
            except LinkError as e:
                last = e
                if self.link is not old:
                    self.link.close()
                time.sleep(wait)
        raise LinkError(f"could not reconnect to {old.url} after {attempts} tries: {last}")

    def require_model(self, hello: Hello, model_crc: int) -> None:
        """Refuse to go on with a device that runs another model than `model_crc`."""
        if not hello.model_loaded or hello.model_crc != model_crc:
            have = f"model {hello.model_crc:08x}" if hello.model_loaded else "no model"
            raise DeviceError(f"the device runs {have}, not this run's model {model_crc:08x}",
                              hint="it was re-flashed or reset without storage: start the run again "
                                   "(it will upload the model)")

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
        r = STEP_RESP.parse(self._request_step(mtype, payload).payload)
        if r.n != batch.n:
            raise ProtocolError(f"device processed {r.n} samples of {batch.n}")
        return StepResult(r.loss, r.n, r.correct, r.step, r.cycles)

    def _request_step(self, mtype: MsgType, payload: bytes):
        try:
            return self.link.request(mtype, payload)
        except DeviceError as e:
            if e.status == ids.Status.NUMERIC and mtype in (MsgType.TRAIN, MsgType.TRAIN_BUF):
                raise RolledBack(str(e), status=e.status) from e
            raise

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

    # -- the device-side sample buffer (Cap.SAMPLE_BUFFER) -------------------------
    def buffer_begin(self, buf: SampleBuffer) -> dict:
        """BUF_BEGIN: declare `buf` (replaces any buffer the device holds)."""
        r = BUF_BEGIN_RESP.parse(self.link.request(MsgType.BUF_BEGIN, buf.begin_request()).payload)
        return {"stream_bytes": r.stream_bytes, "buffer_bytes": r.buffer_bytes, "free_bytes": r.free_bytes}

    def buffer_chunk(self, offset: int, data: bytes) -> int:
        """BUF_CHUNK: stream bytes [offset, offset + len(data)); returns the bytes received so far."""
        req = BUF_CHUNK_REQ.build(dict(offset=offset, data=data))
        return BUF_CHUNK_RESP.parse(self.link.request(MsgType.BUF_CHUNK, req).payload).received

    def upload_buffer(self, buf: SampleBuffer, progress=None) -> dict:
        """Upload `buf` into the device's sample buffer: BUF_BEGIN, then the stream in
        BUF_CHUNKs; `progress(sent, total)` after each chunk. Returns BUF_BEGIN's answer."""
        info = self.buffer_begin(buf)
        stream = buf.stream
        if info["stream_bytes"] != len(stream):
            raise ProtocolError(f"device expects {info['stream_bytes']} buffer bytes, host has {len(stream)}")
        for off in range(0, len(stream), BUF_CHUNK_MAX):
            chunk = stream[off:off + BUF_CHUNK_MAX]
            got = self.buffer_chunk(off, chunk)
            if got != off + len(chunk):
                raise ProtocolError(f"device acknowledged {got} buffer bytes, expected {off + len(chunk)}")
            if progress:
                progress(off + len(chunk), len(stream))
        return info

    def _step_buffered(self, mtype: MsgType, indices) -> StepResult:
        idx = [int(i) for i in indices]
        r = STEP_RESP.parse(self._request_step(mtype, BUF_RUN_REQ.build(dict(n=len(idx), indices=idx))).payload)
        if r.n != len(idx):
            raise ProtocolError(f"device processed {r.n} samples of {len(idx)}")
        return StepResult(r.loss, r.n, r.correct, r.step, r.cycles)

    def train_buffered(self, indices) -> StepResult:
        """TRAIN_BUF: one training step on the buffered samples `indices` (in that order)."""
        return self._step_buffered(MsgType.TRAIN_BUF, indices)

    def evaluate_buffered(self, indices) -> StepResult:
        """EVAL_BUF: evaluate the buffered samples `indices`."""
        return self._step_buffered(MsgType.EVAL_BUF, indices)

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

    def core_instructions(self) -> list[int]:
        """Instructions each cluster core ran inside forks during the last TRAIN/EVAL (CORES),
        measured core by core; [] where the port has no exact per-core counts (no cluster, or
        gap9 without timing=turns)."""
        r = CORES_RESP.parse(self.link.request(MsgType.CORES).payload)
        return list(r.instructions) if r.exact else []

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
            raw = self.read_tensor(idx, t.elems * DTYPE_BYTES[t.dtype])  # int8 codes, i32 exponents too
            out[name] = np.frombuffer(raw, NUMPY_DTYPE[t.dtype]).reshape(t.dims).copy()
        return out

    # -- checkpoints and training guards (Cap.CHECKPOINTS, Cap.GUARDS) -------------
    def checkpoint_save(self) -> Checkpoint:
        """CKPT_SAVE: write the installed model's parameters to the older storage slot."""
        r = CKPT_RESP.parse(self.link.request(MsgType.CKPT_SAVE, timeout=max(self.link.timeout, 30)).payload)
        return Checkpoint(r.seq, r.steps, r.payload_bytes, r.slot)

    def checkpoint_restore(self) -> Checkpoint:
        """CKPT_RESTORE: load the newest valid checkpoint of the installed model into RAM."""
        r = CKPT_RESP.parse(self.link.request(MsgType.CKPT_RESTORE, timeout=max(self.link.timeout, 30)).payload)
        return Checkpoint(r.seq, r.steps, r.payload_bytes, r.slot)

    def checkpoint_info(self) -> dict:
        """CKPT_INFO: storage size, what it holds, what was restored at boot."""
        r = CKPT_INFO_RESP.parse(self.link.request(MsgType.CKPT_INFO, timeout=max(self.link.timeout, 30)).payload)
        d = {k: v for k, v in r.items() if not k.startswith(("_", "reserved"))}
        d["flags"] = NvFlag(r.flags)
        return d

    def set_guard(self, spike_k: float) -> dict:
        """GUARD: roll back a TRAIN whose loss exceeds spike_k x the mean of the recent ones (0: off)."""
        r = GUARD_RESP.parse(self.link.request(MsgType.GUARD, GUARD_REQ.build(dict(spike_k=spike_k))).payload)
        return {k: v for k, v in r.items() if not k.startswith("_")}

    def exit(self, code: int = 0) -> None:
        self.link.request(MsgType.EXIT, EXIT_REQ.build(dict(code=code)))

