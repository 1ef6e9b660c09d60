"""An in-process device that speaks protocol v1, for tests and demos without a board.

It follows docs/protocol.md like the firmware (same framing, statuses, retry cache,
boot HELLO) and trains with `host.executor`. Reach it through pyserial as
`fake://` (see host/transports/protocol_fake.py), e.g. `host stream --port fake://`.
"""

from __future__ import annotations

import math
import time
import zlib

from construct import ConstructError
import numpy as np

from . import ids
from .blob import parse_blob
from .errors import ModelError
from .device import SampleBuffer
from .executor import BlobExecutor, StepError
from .ids import Cap, Encoding, MsgType, Status, TensorFlag
from .protocol import (
    CKPT_INFO_RESP,
    CKPT_RESP,
    GUARD_REQ,
    GUARD_RESP,
    NvFlag,
    BATCH_REQ,
    BATCH_REQ_FIXED,
    BUF_BEGIN_REQ,
    BUF_BEGIN_REQ_FIXED,
    BUF_BEGIN_RESP,
    BUF_CHUNK_REQ,
    BUF_CHUNK_RESP,
    BUF_RUN_REQ,
    buffer_bytes,
    PROFILE_REQ,
    PROFILE_RESP,
    CORES_RESP,
    STAGE_REQ,
    STAGE_REQ_FIXED,
    STAGE_RESP,
    EXIT_REQ,
    HELLO_RESP,
    LOAD_BEGIN_REQ,
    LOAD_CHUNK_REQ,
    LOAD_CHUNK_RESP,
    LOAD_END_RESP,
    READ_WEIGHTS_MAX,
    READ_WEIGHTS_REQ,
    READ_WEIGHTS_RESP,
    STATS_RESP,
    STEP_RESP,
    Frame,
    FrameReader,
)

CAPS = (Cap.F32 | Cap.SGD | Cap.CYCLES | Cap.U8_AFFINE_INPUT | Cap.STAGED_BATCH | Cap.SAMPLE_BUFFER
        | Cap.CHECKPOINTS | Cap.GUARDS)
#: the device's loss-spike window (firmware/app/ep_app.c GUARD_WINDOW)
GUARD_WINDOW = 8


class _Refused(Exception):
    def __init__(self, status: Status, message: str):
        super().__init__(message)
        self.status = status


class FakeNv:
    """The fake device's non-volatile storage: the stored model blob and two checkpoint slots,
    each (seq, model_crc, steps, payload) or None. Share one between FakeDevices to model a reboot."""

    def __init__(self) -> None:
        self.model: bytes | None = None
        self.slots: list[tuple[int, int, int, bytes] | None] = [None, None]


class FakeDevice:
    def __init__(self, board: str = "fake", arena_bytes: int = 1 << 20, staging_bytes: int = 1 << 19,
                 nv: FakeNv | None = None, l3_bytes: int = 0):
        self.board = board
        self.nv = nv if nv is not None else FakeNv()
        self.nv_flags = NvFlag.PRESENT
        self.ckpt_seq = 0
        self.boot_seq = 0
        self.spike_k = 0.0
        self.losses: list[float] = []
        self.rollbacks = 0
        self.arena_bytes = arena_bytes
        self.staging_bytes = staging_bytes
        self.l3_bytes = l3_bytes
        self.reader = FrameReader()
        self.out = bytearray()
        self.model: BlobExecutor | None = None
        self.staged = 0  # input values [0, staged) hold STAGEd samples
        self.profiled = 0  # nodes of the last TRAIN/EVAL
        self.upload: bytearray | None = None
        #: the sample buffer: its BUF_BEGIN header and the stream received so far; None if none
        self.buf: dict | None = None
        self.upload_total = 0
        self.upload_crc = 0
        self.last: tuple[int, int, bytes] | None = None
        self.exit_code: int | None = None
        self._last_rx = time.monotonic()
        self.counters = dict(frames_bad=0, samples_trained=0, samples_evaluated=0,
                             cycles_train=0, cycles_eval=0)
        self._restore_at_boot()
        self._send(Frame(MsgType.HELLO | ids.FRAME_RESPONSE_BIT, 0, self._hello()))

    # -- bytes in, bytes out ------------------------------------------------
    def receive(self, data: bytes) -> None:
        self._last_rx = time.monotonic()
        frames = self.reader.feed(data)
        self._report_errors()
        for f in frames:
            self._request(f)

    def tick(self) -> None:
        """Apply the idle timeout: a partial frame that stalled is dropped and reported."""
        if self.reader.pending() and time.monotonic() - self._last_rx > ids.FRAME_IDLE_TIMEOUT_MS / 1000:
            self.reader.drop_partial()
            self._report_errors()

    def _report_errors(self) -> None:
        for status, rid in self.reader.errors:
            self.counters["frames_bad"] += 1
            self._send(Frame(MsgType.ERROR | ids.FRAME_RESPONSE_BIT, rid, status.name.encode(), status))
        self.reader.errors.clear()

    def take_output(self) -> bytes:
        out = bytes(self.out)
        self.out.clear()
        return out

    def _send(self, frame: Frame) -> bytes:
        wire = frame.pack()
        self.out += wire
        return wire

    def _request(self, f: Frame) -> None:
        if self.last and self.last[:2] == (f.type, f.req_id):
            self.out += self.last[2]
            return
        rtype = f.type | ids.FRAME_RESPONSE_BIT
        try:
            payload = self._dispatch(f)
            wire = self._send(Frame(rtype, f.req_id, payload))
        except _Refused as e:
            wire = self._send(Frame(rtype, f.req_id, str(e).encode(), e.status))
        except (ConstructError, ValueError) as e:
            wire = self._send(Frame(rtype, f.req_id, f"bad payload: {e}".encode()[:200], Status.BAD_PAYLOAD))
        self.last = (f.type, f.req_id, wire)

    # -- messages -------------------------------------------------------------
    def _hello(self) -> bytes:
        board = self.board.encode()
        return HELLO_RESP.build(dict(
            protocol=ids.PROTOCOL_VERSION, fw_major=ids.FIRMWARE_VERSION[0],
            fw_minor=ids.FIRMWARE_VERSION[1], fw_patch=ids.FIRMWARE_VERSION[2], caps=int(CAPS),
            arena_bytes=self.arena_bytes, staging_bytes=self.staging_bytes,
            max_payload=ids.FRAME_MAX_PAYLOAD, model_loaded=int(self.model is not None),
            board_len=len(board), model_crc=self.model.blob.crc if self.model else 0, board=board,
            nv=dict(flags=int(self.nv_flags), ckpt_seq=self.ckpt_seq, steps=self.model.steps if self.model else 0),
            l3_bytes=self.l3_bytes))

    def _dispatch(self, f: Frame) -> bytes:
        t, p = f.type, f.payload
        if t == MsgType.HELLO:
            _exact(p, 0)
            return self._hello()
        if t == MsgType.LOAD_BEGIN:
            r = LOAD_BEGIN_REQ.parse(_exact(p, LOAD_BEGIN_REQ.sizeof()))
            if not ids.BLOB_HEADER_BYTES <= r.total_bytes <= self.staging_bytes:
                raise _Refused(Status.TOO_LARGE, f"blob of {r.total_bytes} bytes; staging holds {self.staging_bytes}")
            self.upload, self.upload_total, self.upload_crc = bytearray(), r.total_bytes, r.crc32
            return b""
        if t == MsgType.LOAD_CHUNK:
            r = LOAD_CHUNK_REQ.parse(p)
            if self.upload is None:
                raise _Refused(Status.BAD_STATE, "LOAD_CHUNK without LOAD_BEGIN")
            if r.offset != len(self.upload):
                raise _Refused(Status.BAD_OFFSET, f"offset {r.offset}, expected {len(self.upload)}")
            if r.offset + len(r.data) > self.upload_total:
                raise _Refused(Status.TOO_LARGE, "chunk runs past total_bytes")
            self.upload += r.data
            return LOAD_CHUNK_RESP.build(dict(received=len(self.upload)))
        if t == MsgType.LOAD_END:
            return self._load_end(p)
        if t in (MsgType.TRAIN, MsgType.EVAL):
            return self._step(p, train=t == MsgType.TRAIN)
        if t == MsgType.STAGE:
            return self._stage(p)
        if t == MsgType.BUF_BEGIN:
            return self._buf_begin(p)
        if t == MsgType.BUF_CHUNK:
            return self._buf_chunk(p)
        if t in (MsgType.TRAIN_BUF, MsgType.EVAL_BUF):
            return self._buf_run(p, train=t == MsgType.TRAIN_BUF)
        if t == MsgType.CORES:  # one core, no cluster: no per-core counts
            _exact(p, 0)
            return CORES_RESP.build(dict(n_cores=0, exact=0, instructions=[]))
        if t == MsgType.PROFILE:
            # the fake measures nothing: every node of the last run cost 0 "cycles"
            first = PROFILE_REQ.parse(_exact(p, PROFILE_REQ.sizeof())).first
            if first > self.profiled:
                raise _Refused(Status.BAD_PAYLOAD, "profile: first node past the nodes of the last run")
            count = min(self.profiled - first, (ids.FRAME_MAX_PAYLOAD - 4) // 4)
            return PROFILE_RESP.build(dict(n_nodes=self.profiled, first=first, cycles=[0] * count))
        if t == MsgType.STATS:
            _exact(p, 0)
            m = self.model
            return STATS_RESP.build(dict(steps=m.steps if m else 0, arena_used=m.h["arena_bytes"] if m else 0,
                                         arena_bytes=self.arena_bytes, **self.counters))
        if t == MsgType.READ_WEIGHTS:
            r = READ_WEIGHTS_REQ.parse(_exact(p, READ_WEIGHTS_REQ.sizeof()))
            m = self._need_model()
            if r.tensor >= len(m.blob.tensors):
                raise _Refused(Status.BAD_TENSOR, "no such tensor")
            td = m.blob.tensors[r.tensor]
            if not td["flags"] & TensorFlag.PARAM or r.length > READ_WEIGHTS_MAX \
                    or r.offset + r.length > td["bytes"]:
                raise _Refused(Status.BAD_TENSOR, "not a parameter, or range outside it")
            return READ_WEIGHTS_RESP.build(dict(tensor=r.tensor, offset=r.offset,
                                                data=m.storage(r.tensor)[r.offset:r.offset + r.length].tobytes()))
        if t == MsgType.CKPT_SAVE:
            _exact(p, 0)
            return self._ckpt_save()
        if t == MsgType.CKPT_RESTORE:
            _exact(p, 0)
            return self._ckpt_restore()
        if t == MsgType.CKPT_INFO:
            _exact(p, 0)
            return self._ckpt_info()
        if t == MsgType.GUARD:
            r = GUARD_REQ.parse(_exact(p, 8))
            if not math.isfinite(r.spike_k) or r.spike_k < 0 or 0 < r.spike_k <= 1:
                raise _Refused(Status.BAD_PAYLOAD, "spike_k: 0 (off) or a finite factor above 1")
            self.spike_k = r.spike_k
            return GUARD_RESP.build(dict(spike_k=r.spike_k, window=GUARD_WINDOW, filled=len(self.losses),
                                         rollbacks=self.rollbacks))
        if t == MsgType.EXIT:
            self.exit_code = EXIT_REQ.parse(_exact(p, 1)).code
            return b""
        raise _Refused(Status.UNKNOWN_TYPE, f"unknown message type 0x{t:02x}")

    def _need_model(self) -> BlobExecutor:
        if self.model is None:
            raise _Refused(Status.NO_MODEL, "no model installed: flash one first")
        return self.model

    def _load_end(self, p: bytes) -> bytes:
        _exact(p, 0)
        if self.upload is None or len(self.upload) != self.upload_total:
            raise _Refused(Status.BAD_STATE, "upload incomplete")
        blob = bytes(self.upload)
        self.upload = None
        if zlib.crc32(blob) != self.upload_crc:
            raise _Refused(Status.BAD_HASH, "blob crc32 does not match LOAD_BEGIN")
        try:
            parsed = parse_blob(blob)
        except ModelError as e:
            raise _Refused(Status.BAD_BLOB, str(e)) from e
        if parsed.header["arena_bytes"] > self.arena_bytes:
            raise _Refused(Status.NO_FIT, "blob arena_bytes exceeds the device arena")
        if parsed.header["l3_bytes"] > self.l3_bytes:
            raise _Refused(Status.NO_FIT, "tensor: in L3, beyond the device's L3 memory (or it has none)")
        model = BlobExecutor(parsed)
        if missing := model.unsupported():
            raise _Refused(Status.BAD_BLOB, f"the fake device does not implement {', '.join(missing)}; "
                                            "use the native build (--board native) for this model")
        self.model, self.staged, self.profiled = model, 0, 0
        self.buf = None  # the new model's span may cover it
        self.nv.model, self.nv.slots = blob, [None, None]  # old checkpoints belong to another upload
        self.nv_flags = NvFlag.PRESENT | NvFlag.MODEL_STORED
        self.ckpt_seq, self.losses = 0, []
        h = parsed.header
        return LOAD_END_RESP.build(dict(model_crc=parsed.crc, arena_used=h["arena_bytes"],
                                        n_tensors=h["n_tensors"], n_nodes=h["n_nodes"]))

    def _stage(self, p: bytes) -> bytes:
        if len(p) < STAGE_REQ_FIXED:
            raise _Refused(Status.BAD_PAYLOAD, "stage header too short")
        r = STAGE_REQ.parse(p)
        m = self._need_model()
        if r.offset > self.staged:
            raise _Refused(Status.BAD_BATCH, "stage: values must follow on from those staged (no gap)")
        try:
            end = m.stage(r.offset, r.encoding, r.scale, r.zero, r.data)
        except StepError as e:
            raise _Refused(e.status, str(e)) from e
        self.staged = max(self.staged, end)
        return STAGE_RESP.build(dict(staged=self.staged))

    # -- the sample buffer (docs/protocol.md, "Sample buffer") -----------------------
    def _buf_begin(self, p: bytes) -> bytes:
        if len(p) < BUF_BEGIN_REQ_FIXED:
            raise _Refused(Status.BAD_PAYLOAD, "payload shorter than the buffer header")
        channels = int.from_bytes(p[8:10], "little")
        if len(p) != BUF_BEGIN_REQ_FIXED + 8 * channels:
            raise _Refused(Status.BAD_PAYLOAD, "payload length: not the header and channels x (scale, zero)")
        r = BUF_BEGIN_REQ.parse(p)
        width = ids.ENCODING_BYTES.get(r.encoding)
        if width is None:
            raise _Refused(Status.BAD_PAYLOAD, "encoding: not f32, u8, i8 or i16 affine")
        if (channels != 0) if r.encoding == Encoding.F32 else (channels < 1 or r.elems % channels):
            raise _Refused(Status.BAD_PAYLOAD, "channels: 0 for f32; else 1..elems and dividing elems")
        if not all(math.isfinite(v) for v in [*r.scale, *r.zero]):
            raise _Refused(Status.BAD_PAYLOAD, "scale, zero: not finite")
        if r.count < 1:
            raise _Refused(Status.BAD_PAYLOAD, "count: 0 samples")
        m = self._need_model()
        if r.elems != m.elems(m.h["input_tensor"]):
            raise _Refused(Status.BAD_BATCH, "elems: not the installed model's input elements per sample")
        model = m.h["arena_bytes"]
        free = max(0, self.arena_bytes - (model + 7) // 8 * 8)
        need = buffer_bytes(r.count, r.elems, r.encoding, channels)
        if need > free:
            raise _Refused(Status.TOO_LARGE, f"buffer: needs {need} bytes of arena; {free} are free beyond "
                                             f"the model's {model} (arena {self.arena_bytes})")
        stream = r.count * (1 + r.elems * width)
        self.buf = dict(encoding=Encoding(r.encoding), count=r.count, elems=r.elems,
                        scale=tuple(r.scale), zero=tuple(r.zero), stream=stream, data=bytearray(), x=None)
        return BUF_BEGIN_RESP.build(dict(stream_bytes=stream, buffer_bytes=need, free_bytes=free))

    def _buf_chunk(self, p: bytes) -> bytes:
        r = BUF_CHUNK_REQ.parse(p)
        b = self.buf
        if b is None:
            raise _Refused(Status.BAD_STATE, "BUF_CHUNK without BUF_BEGIN (or a model was installed since)")
        if r.offset != len(b["data"]):
            raise _Refused(Status.BAD_OFFSET, f"offset {r.offset}, expected {len(b['data'])}")
        if r.offset + len(r.data) > b["stream"]:
            raise _Refused(Status.TOO_LARGE, "data: runs past the buffer's count x sample bytes")
        labels = r.data[:max(0, b["count"] - r.offset)]
        if any(v >= self.model.h["num_classes"] for v in labels):
            raise _Refused(Status.BAD_BATCH, "label: not below the model's num_classes")
        b["data"] += r.data
        if len(b["data"]) == b["stream"]:
            n = b["count"]
            sb = SampleBuffer(b["encoding"], n, b["elems"], b["scale"], b["zero"], bytes(b["data"][:n]),
                              bytes(b["data"][n:]))
            b["x"], b["labels"] = sb.decoded(), sb.labels
        return BUF_CHUNK_RESP.build(dict(received=len(b["data"])))

    def _buf_run(self, p: bytes, train: bool) -> bytes:
        if len(p) < 2 or len(p) != 2 + 2 * int.from_bytes(p[:2], "little"):
            raise _Refused(Status.BAD_PAYLOAD, "payload length: not n and n u16 indices")
        r = BUF_RUN_REQ.parse(p)
        m = self._need_model()
        b = self.buf
        if b is None or b["x"] is None:
            raise _Refused(Status.BAD_STATE, "no complete sample buffer: BUF_BEGIN and every BUF_CHUNK first")
        idx = list(r.indices)
        try:
            if not 1 <= r.n <= m.h["max_batch"]:
                raise StepError(Status.BAD_BATCH, "batch: n not in 1..max_batch")
            if any(i >= b["count"] for i in idx):
                raise StepError(Status.BAD_BATCH, "index: not below the buffer's sample count")
            labels = bytes(b["labels"][i] for i in idx)
            loss, correct = m.run_decoded(b["x"][idx], labels, train)
        except StepError as e:
            raise _Refused(e.status, str(e)) from e
        finally:
            self.staged = 0
            self.profiled = len(m.blob.nodes)
        return self._answer_step(m, r.n, train, loss, correct)

    def _step(self, p: bytes, train: bool) -> bytes:
        if len(p) < BATCH_REQ_FIXED:
            raise _Refused(Status.BAD_PAYLOAD, "batch header too short")
        r = BATCH_REQ.parse(p)
        m = self._need_model()
        try:
            if r.encoding == Encoding.STAGED:
                if r.data:
                    raise StepError(Status.BAD_PAYLOAD, "a staged run carries labels but no data")
                if not 1 <= r.n or r.n * m.elems(m.h["input_tensor"]) > self.staged:
                    raise StepError(Status.BAD_BATCH, "staged run: n is 0 or more samples than were staged")
                loss, correct = m.run_staged(r.n, r.labels, train)
            else:
                loss, correct = m.run(r.n, r.encoding, r.scale, r.zero, r.labels, r.data, train)
        except StepError as e:
            raise _Refused(e.status, str(e)) from e
        finally:
            self.staged = 0
            self.profiled = len(m.blob.nodes)
        return self._answer_step(m, r.n, train, loss, correct)

    # -- checkpoints and guards (the device's rules: firmware/app/ep_ckpt.h, ep_app.c) ----------
    def _params(self, m: BlobExecutor) -> list[int]:
        return [i for i, t in enumerate(m.blob.tensors) if t["flags"] & TensorFlag.PARAM]

    def _payload(self, m: BlobExecutor) -> bytes:
        return b"".join(m.storage(i).tobytes() for i in self._params(m))

    def _newest(self, m: BlobExecutor) -> tuple[int, tuple[int, int, int, bytes]] | None:
        size = sum(m.blob.tensors[i]["bytes"] for i in self._params(m))
        best = None
        for i, slot in enumerate(self.nv.slots):
            if slot and slot[1] == m.blob.crc and len(slot[3]) == size and (best is None or slot[0] > best[1][0]):
                best = (i, slot)
        return best

    def _ckpt_save(self) -> bytes:
        m = self._need_model()
        seqs = [(s[0], i) for i, s in enumerate(self.nv.slots) if s]
        seq, newest = max(seqs) if seqs else (0, 1)
        target = 1 - newest
        self.nv.slots[target] = (seq + 1, m.blob.crc, m.steps, self._payload(m))
        self.ckpt_seq = seq + 1
        return CKPT_RESP.build(dict(seq=seq + 1, steps=m.steps, payload_bytes=len(self.nv.slots[target][3]),
                                    slot=target))

    def _restore(self, m: BlobExecutor) -> tuple[int, tuple[int, int, int, bytes]]:
        found = self._newest(m)
        if found is None:
            raise _Refused(Status.NO_CHECKPOINT, "no valid checkpoint of the installed model")
        at = 0
        for i in self._params(m):
            n = m.blob.tensors[i]["bytes"]
            m.storage(i)[:] = np.frombuffer(found[1][3], np.uint8, n, at)
            at += n
        m.steps, self.ckpt_seq, self.losses = found[1][2], found[1][0], []
        return found

    def _ckpt_restore(self) -> bytes:
        slot, (seq, _, steps, payload) = self._restore(self._need_model())
        return CKPT_RESP.build(dict(seq=seq, steps=steps, payload_bytes=len(payload), slot=slot))

    def _ckpt_info(self) -> bytes:
        found = self._newest(self.model) if self.model else None
        stored = parse_blob(self.nv.model).crc if self.nv.model else 0
        return CKPT_INFO_RESP.build(dict(
            nv_bytes=0, slot_bytes=0, flags=int(self.nv_flags), stored_model_crc=stored,
            newest_seq=found[1][0] if found else 0, newest_steps=found[1][2] if found else 0,
            boot_seq=self.boot_seq, current_seq=self.ckpt_seq, rollbacks=self.rollbacks,
            payload_bytes=sum(self.model.blob.tensors[i]["bytes"] for i in self._params(self.model)) if self.model else 0))

    def _restore_at_boot(self) -> None:
        if self.nv.model is None:
            return
        self.model = BlobExecutor(parse_blob(self.nv.model))
        self.nv_flags = NvFlag.PRESENT | NvFlag.MODEL_STORED | NvFlag.MODEL_RESTORED
        try:
            self._restore(self.model)
        except _Refused:
            return
        self.boot_seq = self.ckpt_seq
        self.nv_flags |= NvFlag.CKPT_RESTORED

    def _guard(self, m: BlobExecutor, loss: float) -> None:
        """Reject a TRAIN step like the device: NaN/Inf loss or parameter, or a loss spike."""
        cause = None
        if not math.isfinite(loss):
            cause = "loss is NaN or infinite"
        elif any(m.blob.tensors[i]["dtype"] == ids.DType.F32 and not np.isfinite(m.storage(i).view("<f4")).all()
                 for i in self._params(m)):
            cause = "a parameter is NaN or infinite after the update"
        elif (self.spike_k > 0 and len(self.losses) == GUARD_WINDOW
              and np.float32(loss) > np.float32(self.spike_k) * np.float32(np.mean(np.float32(self.losses)))):
            cause = f"loss spike: above spike_k x the mean of the last {GUARD_WINDOW} losses"
        if cause is None:
            self.losses = (self.losses + [loss])[-GUARD_WINDOW:]
            return
        m.steps -= 1  # the step is not applied
        self.losses = []
        try:
            _, (seq, _, steps, _) = self._restore(m)
        except _Refused as e:
            raise _Refused(Status.NUMERIC, f"{cause}; NOT rolled back: {e}") from None
        self.rollbacks += 1
        raise _Refused(Status.NUMERIC, f"{cause}; rolled back to checkpoint {seq} (step {steps})")

    def _answer_step(self, m: BlobExecutor, n: int, train: bool, loss: float, correct: int) -> bytes:
        if train:
            self._guard(m, loss)
        # the fake counts one "cycle" per input value it decodes: a stand-in
        cycles = n * m.elems(m.h["input_tensor"])
        kind = "train" if train else "eval"
        self.counters[f"samples_{'trained' if train else 'evaluated'}"] += n
        self.counters[f"cycles_{kind}"] += cycles
        return STEP_RESP.build(dict(loss=loss, n=n, correct=correct, step=m.steps, cycles=cycles))


def _exact(payload: bytes, n: int) -> bytes:
    if len(payload) != n:
        raise _Refused(Status.BAD_PAYLOAD, f"payload has {len(payload)} bytes, expected {n}")
    return payload
