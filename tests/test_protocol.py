"""Protocol v1 on the host side: frames, the stream decoder, message bodies, generated ids."""

from __future__ import annotations

import random
import zlib

import pytest

from host import codegen, ids
from host.ids import MsgType, Status
from host.protocol import (
    BATCH_REQ, CKPT_INFO_RESP, CKPT_RESP, GUARD_REQ, GUARD_RESP, HELLO_RESP, LOAD_END_RESP, READ_WEIGHTS_REQ, READ_WEIGHTS_RESP, STATS_RESP, STEP_RESP,
    Frame, FrameReader,
)


def test_frame_layout_matches_the_spec():
    wire = Frame(MsgType.TRAIN, 0x1234, b"\x01\x02\x03").pack()
    assert wire[:2] == bytes([0xE9, 0x50])
    assert wire[2] == MsgType.TRAIN and wire[3] == 0
    assert wire[4:6] == b"\x34\x12" and wire[6:8] == b"\x03\x00"
    assert wire[8:11] == b"\x01\x02\x03"
    assert int.from_bytes(wire[11:], "little") == zlib.crc32(wire[2:11])


@pytest.mark.parametrize("payload", [b"", b"x", bytes(range(256)) * 16])
def test_round_trip_in_any_split(payload):
    frame = Frame(MsgType.LOAD_CHUNK | 0x80, 7, payload, Status.BAD_OFFSET)
    wire = frame.pack() * 2
    rng = random.Random(len(payload))
    reader, got, i = FrameReader(), [], 0
    while i < len(wire):
        step = rng.randint(1, 50)
        got += reader.feed(wire[i:i + step])
        i += step
    assert got == [frame, frame] and not reader.errors


def test_garbage_before_a_frame_is_skipped():
    frame = Frame(MsgType.HELLO, 1)
    got = FrameReader().feed(b"\x00\xe9\xe9junk\x50" + frame.pack())
    assert got == [frame]


def test_bad_crc_is_reported_and_the_next_frame_survives():
    good = Frame(MsgType.STATS, 9)
    bad = bytearray(Frame(MsgType.HELLO, 8, b"abc").pack())
    bad[9] ^= 0xFF
    reader = FrameReader()
    assert reader.feed(bytes(bad) + good.pack()) == [good]
    assert reader.errors == [(Status.BAD_CRC, 8)]


def test_truncated_frame_followed_by_a_good_one():
    """The good frame's bytes first complete the truncated one (bad CRC); resync finds it."""
    good = Frame(MsgType.STATS, 3)
    partial = Frame(MsgType.HELLO, 2, b"0123456789").pack()[:12]
    reader = FrameReader()
    got = reader.feed(partial + good.pack() + bytes(20))
    assert good in got
    assert (Status.BAD_CRC, 2) in reader.errors


def test_oversize_length_is_refused_without_waiting_for_the_payload():
    head = bytes([0xE9, 0x50, MsgType.TRAIN, 0, 5, 0]) + (ids.FRAME_MAX_PAYLOAD + 1).to_bytes(2, "little")
    good = Frame(MsgType.HELLO, 6)
    reader = FrameReader()
    assert reader.feed(head + good.pack()) == [good]
    assert reader.errors == [(Status.OVERSIZE, 5)]


def test_idle_partial_frame_is_dropped():
    reader = FrameReader()
    assert reader.feed(Frame(MsgType.HELLO, 1, b"abcdef").pack()[:7]) == []
    assert reader.pending() == 7
    assert reader.drop_partial()
    assert reader.errors == [(Status.TRUNCATED, 0)] and reader.pending() == 0


def test_payload_too_long_cannot_be_sent():
    with pytest.raises(ValueError):
        Frame(MsgType.TRAIN, 1, bytes(ids.FRAME_MAX_PAYLOAD + 1)).pack()


@pytest.mark.parametrize("struct,value", [
    (HELLO_RESP, dict(protocol=1, fw_major=0, fw_minor=1, fw_patch=2, caps=15, arena_bytes=1 << 20,
                      staging_bytes=1 << 19, max_payload=4096, model_loaded=1, board_len=10,
                      model_crc=0xDEADBEEF, board=b"mps2-an386")),
    (LOAD_END_RESP, dict(model_crc=1, arena_used=2, n_tensors=3, n_nodes=4)),
    (BATCH_REQ, dict(n=2, encoding=1, scale=0.0625, zero=0.0, labels=b"\x01\x09", data=bytes(128))),
    (STEP_RESP, dict(loss=1.5, n=32, correct=7, step=99, cycles=1 << 40)),
    (STATS_RESP, dict(steps=1, frames_bad=2, samples_trained=3, samples_evaluated=4, cycles_train=5,
                      cycles_eval=6, arena_used=7, arena_bytes=8)),
    (READ_WEIGHTS_REQ, dict(tensor=3, length=100, offset=4)),
    (READ_WEIGHTS_RESP, dict(tensor=3, offset=4, data=b"abcd")),
    (CKPT_RESP, dict(seq=5, steps=40, payload_bytes=9640, slot=1)),
    (CKPT_INFO_RESP, dict(nv_bytes=1 << 22, slot_bytes=1 << 20, flags=15, stored_model_crc=0xDEADBEEF,
                          newest_seq=5, newest_steps=40, boot_seq=4, current_seq=5, rollbacks=1,
                          payload_bytes=9640)),
    (GUARD_REQ, dict(spike_k=3.0)),
    (GUARD_RESP, dict(spike_k=3.0, window=8, filled=2, rollbacks=0)),
])
def test_message_bodies_round_trip(struct, value):
    parsed = struct.parse(struct.build(value))
    assert {k: parsed[k] for k in value} == value


def test_generated_c_header_is_current():
    """firmware/runtime/ep_ids.h must be what host/ids.py renders (one source of truth)."""
    assert codegen.HEADER_PATH.read_text() == codegen.render(), "run `python -m host.codegen`"
    assert "#define EP_FRAME_MAX_PAYLOAD 4096" in codegen.render()
    assert "EP_MSG_TRAIN = 5," in codegen.render()


def test_nv_flags_agree_with_the_firmware():
    """NvFlag mirrors the EP_NV_* enum of firmware/app/ep_app.h (not generated: it is the app's)."""
    import re
    from pathlib import Path

    from host.protocol import NvFlag

    header = (Path(__file__).resolve().parents[1] / "firmware" / "app" / "ep_app.h").read_text()
    in_c = {m[0]: int(m[1]) for m in re.findall(r"EP_NV_([A-Z_]+) = (\d+)", header)}
    assert in_c == {f.name: int(f.value) for f in NvFlag}


def test_hello_without_the_storage_fields_still_parses():
    """Firmware without Cap.CHECKPOINTS ends HELLO at the board name: nv is then None."""
    base = dict(protocol=1, fw_major=0, fw_minor=1, fw_patch=0, caps=1, arena_bytes=1024, staging_bytes=512,
                max_payload=4096, model_loaded=0, board_len=3, model_crc=0, board=b"abc")
    old = HELLO_RESP.build(dict(base, nv=None))
    assert HELLO_RESP.parse(old).nv is None
    new = HELLO_RESP.build(dict(base, nv=dict(flags=3, ckpt_seq=7, steps=42)))
    assert len(new) == len(old) + 12
    nv = HELLO_RESP.parse(new).nv
    assert (nv.flags, nv.ckpt_seq, nv.steps) == (3, 7, 42)
