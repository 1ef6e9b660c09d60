"""Write the seed corpus of the libFuzzer harnesses (tests/fuzz/*.c).

    .venv/bin/python tests/fuzz/make_corpus.py [--out tests/fuzz/corpus]

Deterministic: the same sources give the same files. The files are committed;
rerun this after a change of the blob or protocol format (host.ids versions).

  corpus/frame/  byte streams for fuzz_frame (its record format): a valid frame of
                 every message type, request and response, and damaged streams
  corpus/blob/   blob ‖ batch inputs for fuzz_blob: mlp-digits and small models
                 that together use every op the compiler emits
  corpus/app/    request sequences for fuzz_app: a whole session per model
                 (HELLO, upload, TRAIN, EVAL, STAGE, PROFILE, STATS, READ_WEIGHTS, EXIT)
                 and refusals
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from host import ids  # noqa: E402
from host.blob import build_blob, parse_blob  # noqa: E402
from host.compiler import TrainConfig, compile_model  # noqa: E402
from host.errors import EdgePropError  # noqa: E402
from host.ids import Encoding, MsgType, Status, TensorFlag  # noqa: E402
from host.protocol import (  # noqa: E402
    BATCH_REQ,
    LOAD_BEGIN_REQ,
    LOAD_CHUNK_MAX,
    PROFILE_REQ,
    READ_WEIGHTS_REQ,
    STAGE_REQ,
    Frame,
)
from host.zoo import init_params, load_model, parse_model  # noqa: E402

RESP = ids.FRAME_RESPONSE_BIT


def tiny(name, input_, layers, classes=3, loss="softmax_cross_entropy"):
    return {"name": name, "input": input_, "classes": classes, "layers": layers, "loss": loss}


LIN = [{"type": "linear", "name": "fc", "out": 3}]
#: (description or built-in name, TrainConfig): small models covering the ops
MODELS = [
    ("mlp-digits", TrainConfig(batch=8)),
    (tiny("tiny", [4], LIN), TrainConfig(batch=2)),
    (tiny("tiny-adamw-acc", [4], [{"type": "linear", "name": "fc1", "out": 5}, {"type": "relu", "name": "r"},
                                  {"type": "linear", "name": "fc2", "out": 3}]),
     TrainConfig(batch=3, optimizer="adamw", weight_decay=0.01, accumulate=2)),
    (tiny("tiny-momentum-mse", [4], [{"type": "linear", "name": "enc", "out": 2},
                                     {"type": "linear", "name": "dec", "out": 4}], classes=2, loss="mse"),
     TrainConfig(batch=2, optimizer="momentum")),
    (tiny("cnn2d", [1, 8, 8], [
        {"type": "conv2d", "name": "c1", "out": 2, "kernel": 3, "padding": 1},
        {"type": "relu", "name": "r1"},
        {"type": "maxpool2d", "name": "p1", "kernel": 2},
        {"type": "conv2d", "name": "c2", "out": 2, "kernel": 3},
        {"type": "avgpool2d", "name": "p2", "kernel": 2},
        {"type": "flatten", "name": "f"},
        {"type": "linear", "name": "fc", "out": 3}]), TrainConfig(batch=2, optimizer="adam")),
    (tiny("cnn1d", [2, 8], [
        {"type": "conv1d", "name": "c1", "out": 3, "kernel": 3},
        {"type": "maxpool1d", "name": "p1", "kernel": 2},
        {"type": "avgpool1d", "name": "p2", "kernel": 3},
        {"type": "global_avgpool", "name": "g"},
        {"type": "linear", "name": "fc", "out": 3}]), TrainConfig(batch=2)),
    (tiny("attention", [4, 8], [
        {"type": "mhsa", "name": "att", "heads": 2},
        {"type": "seqpool", "name": "pool"},
        {"type": "linear", "name": "fc", "out": 3}]), TrainConfig(batch=2)),
    (tiny("graph", [2, 4], [
        {"type": "linear", "name": "a", "out": 4},
        {"type": "add", "name": "res", "inputs": ["a", "input"]},
        {"type": "transpose", "name": "t"},
        {"type": "softmax", "name": "sm"},
        {"type": "concat", "name": "cat", "inputs": ["sm", "t"]},
        {"type": "reshape", "name": "rs", "shape": [16]},
        {"type": "linear", "name": "fc", "out": 3}]), TrainConfig(batch=2)),
    (tiny("norm-act", [2, 4, 4], [
        {"type": "conv2d", "name": "c1", "out": 4, "kernel": 3, "padding": 1},
        {"type": "batchnorm", "name": "bn"},
        {"type": "relu6", "name": "a1"},
        {"type": "groupnorm", "name": "gn", "groups": 2},
        {"type": "elu", "name": "a2"},
        {"type": "flatten", "name": "f"},
        {"type": "dropout", "name": "drop", "p": 0.25},
        {"type": "linear", "name": "fc1", "out": 6},
        {"type": "layernorm", "name": "ln"},
        {"type": "gelu", "name": "a3"},
        {"type": "sigmoid", "name": "a4"},
        {"type": "tanh", "name": "a5"},
        {"type": "linear", "name": "fc2", "out": 3}]), TrainConfig(batch=2, optimizer="momentum")),
    # int8 from conv to classifier: BATCHNORM_Q8, ACT_Q8, AVGPOOL2D_Q8, DROPOUT_Q8, ADD_Q8 (a
    # residual and its gradient sum), GLOBAL_AVGPOOL_Q8, per-sample conv sums
    (tiny("int8-chain", [2, 4, 8], [
        {"type": "conv2d", "name": "c1", "out": 4, "kernel": 3, "padding": 1},
        {"type": "batchnorm", "name": "bn"},
        {"type": "elu", "name": "a1"},
        {"type": "avgpool2d", "name": "p1", "kernel": 2},
        {"type": "dropout", "name": "drop", "p": 0.25},
        {"type": "conv2d", "name": "c2", "out": 4, "kernel": 1},
        {"type": "add", "name": "res", "inputs": ["c2", "drop"]},
        {"type": "global_avgpool", "name": "g"},
        {"type": "linear", "name": "fc", "out": 3}]), TrainConfig(batch=2, dtype="int8", int8_sums="sample")),
    # int8 tokenizer and attention: MAXPOOL2D_Q8, MHSA_Q8 (saved state as codes)
    (tiny("int8-attention", [1, 8, 8], [
        {"type": "conv2d", "name": "c1", "out": 4, "kernel": 3, "padding": 1},
        {"type": "relu", "name": "r1"},
        {"type": "maxpool2d", "name": "p1", "kernel": 3, "stride": 2, "padding": 1},
        {"type": "reshape", "name": "cm", "shape": [4, 16]},
        {"type": "transpose", "name": "tok"},
        {"type": "mhsa", "name": "att", "heads": 2},
        {"type": "seqpool", "name": "pool"},
        {"type": "linear", "name": "fc", "out": 3}]), TrainConfig(batch=2, dtype="int8")),
]


def compile_blobs() -> list[tuple[str, bytes, int, int, int]]:
    """(name, blob, input elements, classes, max_batch) of each model that compiles today."""
    out = []
    for desc, cfg in MODELS:
        try:
            spec = load_model(desc) if isinstance(desc, str) else parse_model(desc)
            prog = compile_model(spec, init_params(spec, seed=0), cfg)
            blob = build_blob(prog)
        except (EdgePropError, KeyError, ValueError, TypeError) as e:
            name = desc if isinstance(desc, str) else desc["name"]
            print(f"make_corpus: skipping model {name}: {e}", file=sys.stderr)
            continue
        elems = 1
        for d in spec.input:
            elems *= d
        out.append((spec.name, blob, elems, spec.classes, cfg.batch))
    return out


# ---- fuzz_blob: blob ‖ flags u8, n u16, scale f32, zero f32, labels, data ------

def blob_tail(rng: random.Random, n: int, elems: int, classes: int, u8: bool, flags: int) -> bytes:
    labels = bytes(rng.randrange(classes) for _ in range(n))
    if u8:
        data = bytes(rng.randrange(17) for _ in range(n * elems))
        return struct.pack("<BHff", flags | 1, n - 1, 1 / 16, 0.0) + labels + data
    data = struct.pack(f"<{n * elems}f", *(rng.uniform(-1, 1) for _ in range(n * elems)))
    return struct.pack("<BHff", flags, n - 1, 0.0, 0.0) + labels + data


# ---- fuzz_frame: timeout byte, then records [ctl][n-1][n bytes] ---------------

def records(stream: bytes, rng: random.Random, gaps: bool = False, timeout: int = 100) -> bytes:
    """stream split into records of 1..256 bytes; with gaps, random short gaps between them."""
    out = bytearray([timeout - 1])
    i = 0
    while i < len(stream):
        n = min(len(stream) - i, rng.choice((1, 7, 64, 256)))
        ctl = ((rng.randrange(8) << 2) | 1) if gaps else 0
        out += bytes([ctl, n - 1]) + stream[i:i + n]
        i += n
    return bytes(out)


def gap(kind: int, arg: int = 0) -> bytes:
    """A record with no bytes but a gap: kind 2 arg 1 is exactly the idle timeout."""
    return bytes([(arg << 2) | kind, 0])  # n-1 = 0 would push one byte: callers append it


def frame(t: int, req_id: int, payload: bytes = b"", status: int = 0) -> bytes:
    return Frame(type=t, req_id=req_id, payload=payload, status=status).pack()


def requests_of_every_type(blob: bytes, elems: int, batch: int) -> list[tuple[str, bytes]]:
    n = batch
    f32 = BATCH_REQ.build(dict(n=n, encoding=int(Encoding.F32), scale=0.0, zero=0.0, labels=bytes(n),
                               data=bytes(4 * n * elems)))
    return [
        ("hello", frame(MsgType.HELLO, 1)),
        ("load_begin", frame(MsgType.LOAD_BEGIN, 2, LOAD_BEGIN_REQ.build(dict(total_bytes=len(blob),
                                                                              crc32=zlib.crc32(blob))))),
        ("load_chunk", frame(MsgType.LOAD_CHUNK, 3, struct.pack("<I", 0) + blob[:LOAD_CHUNK_MAX])),
        ("load_end", frame(MsgType.LOAD_END, 4)),
        ("train", frame(MsgType.TRAIN, 5, f32)),
        ("eval", frame(MsgType.EVAL, 6, f32)),
        ("stats", frame(MsgType.STATS, 7)),
        ("read_weights", frame(MsgType.READ_WEIGHTS, 8, READ_WEIGHTS_REQ.build(dict(tensor=1, length=16,
                                                                                   offset=0)))),
        ("exit", frame(MsgType.EXIT, 9, b"\x00")),
        ("stage", frame(MsgType.STAGE, 10, STAGE_REQ.build(dict(offset=0, encoding=int(Encoding.U8_AFFINE),
                                                                scale=0.5, zero=0.0, data=bytes(elems))))),
        ("profile", frame(MsgType.PROFILE, 11, PROFILE_REQ.build(dict(first=0)))),
    ]


def responses_of_every_type() -> list[tuple[str, bytes]]:
    out = [(f"resp_{m.name.lower()}", frame(m | RESP, 7, bytes(range(20)))) for m in MsgType]
    out.append(("resp_error", frame(MsgType.ERROR | RESP, 0, b"bad crc32: frame dropped", Status.BAD_CRC)))
    return out


# ---- fuzz_app: records [type][status][req_id u16][len u16][payload] ----------

def app_record(t: int, req_id: int, payload: bytes = b"", status: int = 0) -> bytes:
    return struct.pack("<BBHH", t, status, req_id, len(payload)) + payload


def first_param(blob: bytes) -> int:
    return next(i for i, t in enumerate(parse_blob(blob).tensors) if t["flags"] & TensorFlag.PARAM)


def app_session(rng: random.Random, blob: bytes, elems: int, classes: int, batch: int) -> bytes:
    r = [app_record(MsgType.HELLO, 1), *upload(blob, 2)]
    rid = len(r)
    labels = bytes(rng.randrange(classes) for _ in range(batch))
    u8 = bytes(rng.randrange(17) for _ in range(batch * elems))
    batch_u8 = BATCH_REQ.build(dict(n=batch, encoding=int(Encoding.U8_AFFINE), scale=1 / 16, zero=0.0,
                                    labels=labels, data=u8))
    for t in (MsgType.TRAIN, MsgType.TRAIN, MsgType.EVAL):
        rid += 1
        r.append(app_record(t, rid, batch_u8))
    r.append(r[-1])  # a retry of the EVAL: answered from the cache
    half = batch * elems // 2
    for off, part in ((0, u8[:half]), (half, u8[half:])):
        rid += 1
        r.append(app_record(MsgType.STAGE, rid, STAGE_REQ.build(dict(
            offset=off, encoding=int(Encoding.U8_AFFINE), scale=1 / 16, zero=0.0, data=part))))
    staged = BATCH_REQ.build(dict(n=batch, encoding=int(Encoding.STAGED), scale=0.0, zero=0.0, labels=labels,
                                  data=b""))
    for t, payload in ((MsgType.TRAIN, staged), (MsgType.PROFILE, PROFILE_REQ.build(dict(first=0))),
                       (MsgType.STATS, b""),
                       (MsgType.READ_WEIGHTS, READ_WEIGHTS_REQ.build(dict(tensor=first_param(blob), length=8,
                                                                          offset=0))),
                       (MsgType.HELLO, b""), (MsgType.EXIT, b"\x00")):
        rid += 1
        r.append(app_record(t, rid, payload))
    return b"".join(r)


def upload(blob: bytes, rid: int) -> list[bytes]:
    """LOAD_BEGIN, LOAD_CHUNKs, LOAD_END of a blob, request ids from rid on."""
    r = [app_record(MsgType.LOAD_BEGIN, rid, LOAD_BEGIN_REQ.build(dict(total_bytes=len(blob),
                                                                       crc32=zlib.crc32(blob))))]
    for off in range(0, len(blob), LOAD_CHUNK_MAX):
        rid += 1
        r.append(app_record(MsgType.LOAD_CHUNK, rid, struct.pack("<I", off) + blob[off:off + LOAD_CHUNK_MAX]))
    return r + [app_record(MsgType.LOAD_END, rid + 1)]


def app_refusals(blob: bytes) -> bytes:
    """Refusals before and after a model is installed; a bad upload leaves the model in place."""
    bad = bytearray(blob)
    bad[20] ^= 1  # n_tensors: a bad blob (with right crcs)
    bad[12:16] = struct.pack("<I", zlib.crc32(bytes(bad[16:])))
    return b"".join([
        app_record(0x55, 1),                                   # unknown type
        app_record(MsgType.HELLO, 2, b"x"),                    # wrong length
        app_record(MsgType.TRAIN, 3, bytes(12)),               # no model
        app_record(MsgType.LOAD_CHUNK, 4, bytes(8)),           # no LOAD_BEGIN
        app_record(MsgType.LOAD_END, 5),                       # no upload
        *upload(blob, 10),                                     # installed
        *upload(bytes(bad), 20),                               # refused: the model stays
        app_record(MsgType.HELLO, 30),
        app_record(MsgType.TRAIN, 31, BATCH_REQ.build(dict(n=1, encoding=int(Encoding.U8_AFFINE), scale=1.0,
                                                           zero=0.0, labels=b"\x07", data=bytes(4)))),
        app_record(MsgType.READ_WEIGHTS, 32, READ_WEIGHTS_REQ.build(dict(tensor=first_param(blob),
                                                                         length=4096, offset=0))),
        app_record(MsgType.PROFILE, 33, PROFILE_REQ.build(dict(first=500))),
        app_record(0, 8, status=Status.BAD_CRC | 0x80),        # receive errors (status bit 7)
        app_record(0, 9, status=Status.OVERSIZE | 0x80),
        app_record(0, 0, status=Status.TRUNCATED | 0x80),
        app_record(MsgType.STATS, 34),
        app_record(MsgType.EXIT, 35, b"\x03"),
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "corpus")
    args = ap.parse_args(argv)
    rng = random.Random(8)
    blobs = compile_blobs()
    if not blobs:
        print("make_corpus: no model compiled", file=sys.stderr)
        return 1
    files: dict[str, bytes] = {}
    for name, blob, elems, classes, batch in blobs:
        files[f"blob/{name}-u8"] = blob + blob_tail(rng, batch, elems, classes, True, 0x54)
        files[f"blob/{name}-f32"] = blob + blob_tail(rng, min(batch, 2), elems, classes, False, 0x80)
        files[f"app/{name}-session"] = app_session(rng, blob, elems, classes, batch)
    files["blob/header-only"] = blobs[0][1][:ids.BLOB_HEADER_BYTES]
    files["app/refusals"] = app_refusals(blobs[1][1])

    _, blob, elems, _, _ = blobs[1]
    for what, fr in requests_of_every_type(blob, elems, 2) + responses_of_every_type():
        files[f"frame/{what}"] = records(fr, rng)
    hello, train = frame(MsgType.HELLO, 1), frame(MsgType.TRAIN, 2, bytes(40))
    bad_crc = bytearray(train)
    bad_crc[-1] ^= 0xFF
    oversize = bytearray(hello)
    oversize[6:8] = struct.pack("<H", ids.FRAME_MAX_PAYLOAD + 1)
    files["frame/session-gaps"] = records(b"".join(f for _, f in requests_of_every_type(blob, elems, 2)), rng,
                                          gaps=True)
    files["frame/garbage-then-frame"] = records(bytes(rng.randrange(256) for _ in range(100)) + b"\xe9\xe9" + hello,
                                                rng)
    files["frame/bad-crc-then-frame"] = records(bytes(bad_crc) + hello, rng)
    files["frame/bad-crc-hides-frame"] = records(train[:20] + hello + train[20 + len(hello):], rng)
    files["frame/oversize-then-frame"] = records(bytes(oversize) + hello, rng)
    # a partial frame, silence for exactly the idle timeout (gap kind 2, arg 1), then a good frame
    part = records(train[:15], rng, timeout=50)
    files["frame/truncated-then-frame"] = part + gap(2, 1) + hello[:1] + records(hello[1:], rng)[1:]
    files["frame/just-below-timeout"] = part + gap(2, 0) + train[15:16] + records(train[16:], rng)[1:]

    total = 0
    for rel, data in sorted(files.items()):
        path = args.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total += len(data)
    print(f"make_corpus: {len(files)} files, {total} bytes in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
