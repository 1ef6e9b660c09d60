"""Serial protocol v1 (docs/protocol.md), host side, written with `construct`.

`Frame` packs and parses one frame; `FrameReader` turns a byte stream into frames
with the same resynchronisation rules as the device; the payload structs below
are the message bodies. Numbers come from `host.ids`.
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass

from construct import (
    Array,
    Optional,
    Bytes,
    Const,
    Float32l,
    GreedyBytes,
    GreedyRange,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    Struct,
    this,
)

from . import ids
from .ids import MsgType, Status

HEADER = Struct(
    "sync" / Const(bytes([ids.FRAME_SYNC0, ids.FRAME_SYNC1])),
    "type" / Int8ul,
    "status" / Int8ul,
    "req_id" / Int16ul,
    "length" / Int16ul,
)
assert HEADER.sizeof() == ids.FRAME_HEADER_BYTES

MAX_FRAME = ids.FRAME_HEADER_BYTES + ids.FRAME_MAX_PAYLOAD + ids.FRAME_CRC_BYTES
_SYNC = bytes([ids.FRAME_SYNC0, ids.FRAME_SYNC1])


@dataclass(frozen=True)
class Frame:
    type: int
    req_id: int
    payload: bytes = b""
    status: int = 0

    @property
    def is_response(self) -> bool:
        return bool(self.type & ids.FRAME_RESPONSE_BIT)

    @property
    def request_type(self) -> int:
        return self.type & ~ids.FRAME_RESPONSE_BIT & 0xFF

    def pack(self) -> bytes:
        if len(self.payload) > ids.FRAME_MAX_PAYLOAD:
            raise ValueError(f"payload of {len(self.payload)} bytes exceeds {ids.FRAME_MAX_PAYLOAD}")
        head = HEADER.build(dict(type=self.type, status=self.status, req_id=self.req_id,
                                 length=len(self.payload)))
        body = head[2:] + self.payload
        return head[:2] + body + Int32ul.build(zlib.crc32(body))

    def describe(self) -> str:
        try:
            name = MsgType(self.request_type).name
        except ValueError:
            name = f"0x{self.request_type:02x}"
        kind = "response" if self.is_response else "request"
        return f"{name} {kind} id={self.req_id} status={status_name(self.status)} len={len(self.payload)}"


def status_name(code: int) -> str:
    try:
        return Status(code).name
    except ValueError:
        return f"status {code}"


class FrameReader:
    """Incremental frame decoder with the receiver rules of docs/protocol.md.

    feed() bytes in any split; frames() yields complete, CRC-checked frames.
    Damaged input is counted in `errors` (a list of (Status, req_id)) and skipped
    the way the device skips it: a bad CRC resynchronises inside the bytes
    already taken, so a good frame after a damaged one survives.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.errors: list[tuple[Status, int]] = []

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        while True:
            frame = self._next()
            if frame is None:
                return out
            out.append(frame)

    def pending(self) -> int:
        """Bytes held that do not form a frame yet."""
        return len(self._buf)

    def drop_partial(self) -> bool:
        """Discard a stalled partial frame (the idle-timeout rule). True if any."""
        had = bool(self._buf)
        if had:
            self.errors.append((Status.TRUNCATED, 0))
        self._buf.clear()
        return had

    def _next(self) -> Frame | None:
        buf = self._buf
        while True:
            start = buf.find(_SYNC)
            if start < 0:
                # keep a trailing sync0: its sync1 may be in the next read
                keep = 1 if buf[-1:] == _SYNC[:1] else 0
                del buf[: len(buf) - keep]
                return None
            del buf[:start]
            if len(buf) < ids.FRAME_HEADER_BYTES:
                return None
            head = HEADER.parse(bytes(buf[: ids.FRAME_HEADER_BYTES]))
            if head.length > ids.FRAME_MAX_PAYLOAD:
                self.errors.append((Status.OVERSIZE, head.req_id))
                del buf[:1]
                continue
            end = ids.FRAME_HEADER_BYTES + head.length
            if len(buf) < end + ids.FRAME_CRC_BYTES:
                return None
            body = bytes(buf[2:end])
            crc = Int32ul.parse(bytes(buf[end : end + ids.FRAME_CRC_BYTES]))
            if zlib.crc32(body) != crc:
                self.errors.append((Status.BAD_CRC, head.req_id))
                del buf[:1]
                continue
            del buf[: end + ids.FRAME_CRC_BYTES]
            return Frame(type=head.type, req_id=head.req_id, status=head.status,
                         payload=body[ids.FRAME_HEADER_BYTES - 2 :])


# ---- message bodies (docs/protocol.md, "Messages") ---------------------------

HELLO_RESP = Struct(
    "protocol" / Int16ul,
    "fw_major" / Int8ul,
    "fw_minor" / Int8ul,
    "fw_patch" / Int8ul,
    "reserved" / Const(0, Int8ul),
    "caps" / Int32ul,
    "arena_bytes" / Int32ul,
    "staging_bytes" / Int32ul,
    "max_payload" / Int16ul,
    "model_loaded" / Int8ul,
    "board_len" / Int8ul,
    "model_crc" / Int32ul,
    "board" / Bytes(this.board_len),
    # after the board name (absent from firmware without Cap.CHECKPOINTS): what storage holds
    # (NvFlag), the checkpoint the RAM weights are (0 = none), and the TRAIN steps applied
    "nv" / Optional(Struct(
        "flags" / Int8ul,
        "reserved0" / Const(0, Int8ul),
        "reserved1" / Const(0, Int16ul),
        "ckpt_seq" / Int32ul,
        "steps" / Int32ul,
    )),
    # after nv (absent from older firmware): bytes of L3 memory for tensors (0 = none)
    "l3_bytes" / Optional(Int32ul),
)


class NvFlag(enum.IntFlag):
    """nv flags of HELLO and CKPT_INFO (firmware/app/ep_app.h EP_NV_*; a test checks they agree)."""

    PRESENT = 1
    #: the installed model is also in storage: it survives a reset
    MODEL_STORED = 2
    #: the installed model was reinstalled from storage at boot...
    MODEL_RESTORED = 4
    #: ...with the weights of a checkpoint (CKPT_INFO boot_seq)
    CKPT_RESTORED = 8

LOAD_BEGIN_REQ = Struct("total_bytes" / Int32ul, "crc32" / Int32ul)
LOAD_CHUNK_REQ = Struct("offset" / Int32ul, "data" / GreedyBytes)
LOAD_CHUNK_RESP = Struct("received" / Int32ul)
LOAD_END_RESP = Struct(
    "model_crc" / Int32ul, "arena_used" / Int32ul, "n_tensors" / Int16ul, "n_nodes" / Int16ul
)

BATCH_REQ = Struct(
    "n" / Int16ul,
    "encoding" / Int8ul,
    "reserved" / Const(0, Int8ul),
    "scale" / Float32l,
    "zero" / Float32l,
    "labels" / Bytes(this.n),
    "data" / GreedyBytes,
)
#: bytes of a batch request before the labels
BATCH_REQ_FIXED = 12
#: STAGE: input values [offset, offset + count) of the next batch, for batches
#: larger than a frame; TRAIN/EVAL with encoding STAGED then carry only the labels
STAGE_REQ = Struct(
    "offset" / Int32ul,
    "encoding" / Int8ul,
    "reserved0" / Const(0, Int8ul),
    "reserved1" / Const(0, Int16ul),
    "scale" / Float32l,
    "zero" / Float32l,
    "data" / GreedyBytes,
)
STAGE_REQ_FIXED = 16
STAGE_RESP = Struct("staged" / Int32ul)

#: PROFILE: per-node cycles of the last TRAIN/EVAL, from node `first`
PROFILE_REQ = Struct("first" / Int16ul)
PROFILE_RESP = Struct("n_nodes" / Int16ul, "first" / Int16ul, "cycles" / GreedyRange(Int32ul))

#: Sample buffer (docs/protocol.md, "Sample buffer"). BUF_BEGIN declares count samples of
#: elems values for the installed model, with per-channel scale/zero for the affine encodings
#: (channels 0 for f32); the BUF_CHUNK stream is the labels (u8 × count), then the samples.
BUF_BEGIN_REQ = Struct(
    "count" / Int16ul,
    "encoding" / Int8ul,
    "reserved0" / Const(0, Int8ul),
    "elems" / Int32ul,
    "channels" / Int16ul,
    "reserved1" / Const(0, Int16ul),
    "scale" / Array(this.channels, Float32l),
    "zero" / Array(this.channels, Float32l),
)
BUF_BEGIN_REQ_FIXED = 12
#: stream_bytes: what the BUF_CHUNKs carry; buffer_bytes: arena it takes; free_bytes: arena beyond the model
BUF_BEGIN_RESP = Struct("stream_bytes" / Int32ul, "buffer_bytes" / Int32ul, "free_bytes" / Int32ul)
BUF_CHUNK_REQ = Struct("offset" / Int32ul, "data" / GreedyBytes)
BUF_CHUNK_RESP = Struct("received" / Int32ul)
#: largest BUF_CHUNK data that fits one request payload
BUF_CHUNK_MAX = ids.FRAME_MAX_PAYLOAD - 4
#: TRAIN_BUF / EVAL_BUF: a batch of buffered samples, by index (response: STEP_RESP)
BUF_RUN_REQ = Struct("n" / Int16ul, "indices" / Array(this.n, Int16ul))


def buffer_bytes(count: int, elems: int, encoding: int, channels: int) -> int:
    """Arena bytes a sample buffer takes on the device (the device's own rule):
    the scale/zero table and the labels, rounded up to 8, then the samples."""
    head = 8 * channels + count
    return (head + 7) // 8 * 8 + count * elems * ids.ENCODING_BYTES[ids.Encoding(encoding)]


STEP_RESP = Struct(
    "loss" / Float32l, "n" / Int16ul, "correct" / Int16ul, "step" / Int32ul, "cycles" / Int64ul
)

STATS_RESP = Struct(
    "steps" / Int32ul,
    "frames_bad" / Int32ul,
    "samples_trained" / Int64ul,
    "samples_evaluated" / Int64ul,
    "cycles_train" / Int64ul,
    "cycles_eval" / Int64ul,
    "arena_used" / Int32ul,
    "arena_bytes" / Int32ul,
)

READ_WEIGHTS_REQ = Struct("tensor" / Int16ul, "length" / Int16ul, "offset" / Int32ul)
READ_WEIGHTS_RESP = Struct(
    "tensor" / Int16ul, "reserved" / Const(0, Int16ul), "offset" / Int32ul, "data" / GreedyBytes
)
#: largest READ_WEIGHTS length that fits one response payload
READ_WEIGHTS_MAX = ids.FRAME_MAX_PAYLOAD - 8
#: largest LOAD_CHUNK data that fits one request payload
LOAD_CHUNK_MAX = ids.FRAME_MAX_PAYLOAD - 4

EXIT_REQ = Struct("code" / Int8ul)

#: Checkpoints (docs/protocol.md, "Checkpoints"). CKPT_SAVE and CKPT_RESTORE carry no
#: payload and answer with the checkpoint the RAM weights now are.
CKPT_RESP = Struct(
    "seq" / Int32ul,
    "steps" / Int32ul,
    "payload_bytes" / Int32ul,
    "slot" / Int8ul,
    "reserved0" / Const(0, Int8ul),
    "reserved1" / Const(0, Int16ul),
)
CKPT_INFO_RESP = Struct(
    "nv_bytes" / Int32ul,
    "slot_bytes" / Int32ul,
    "flags" / Int8ul,
    "reserved0" / Const(0, Int8ul),
    "reserved1" / Const(0, Int16ul),
    "stored_model_crc" / Int32ul,
    "newest_seq" / Int32ul,
    "newest_steps" / Int32ul,
    "boot_seq" / Int32ul,
    "current_seq" / Int32ul,
    "rollbacks" / Int32ul,
    "payload_bytes" / Int32ul,
)
#: GUARD: spike_k 0 turns the loss-spike rule off, else a factor > 1 (NaN/Inf checks are always on)
#: CORES: per cluster core, the instructions it ran inside forks during the last TRAIN/EVAL
#: (exact=1: measured core by core, the port's timing=turns mode; 0: no per-core counts)
CORES_RESP = Struct("n_cores" / Int16ul, "exact" / Int16ul, "instructions" / Array(this.n_cores, Int64ul))
GUARD_REQ = Struct("spike_k" / Float32l, "reserved" / Const(0, Int32ul))
GUARD_RESP = Struct("spike_k" / Float32l, "window" / Int16ul, "filled" / Int16ul, "rollbacks" / Int32ul)
