"""The device-side sample buffer (docs/protocol.md, "Sample buffer") on every kind of
device: the fake, the native build and the emulated boards. Samples uploaded once
(BUF_BEGIN/BUF_CHUNK) train and evaluate by index (TRAIN_BUF/EVAL_BUF) exactly as
the same samples sent in every batch; hostile requests are refused with a clear
error and the model keeps working; installing a model drops the buffer. And a
`host stream` session on fake:// that puts far fewer bytes on the wire per epoch."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from host import ids
from host.blob import build_blob
from host.cli import main
from host.compiler import TrainConfig, compile_model
from host.device import Batch, SampleBuffer
from host.errors import DeviceError
from host.ids import Cap, Encoding, MsgType, Status
from host.protocol import BUF_BEGIN_REQ, BUF_CHUNK_REQ, BUF_RUN_REQ, STEP_RESP, Frame, buffer_bytes
from host.zoo import init_params, load_model

SPEC = load_model("mlp-digits")  # 64 inputs, 10 classes


def program(batch=8):
    return compile_model(SPEC, init_params(SPEC, 0), TrainConfig(batch=batch, lr=0.1))


def samples(n=24, seed=0):
    """Digit-like samples: 64 values in [0, 1] (not on a u8 grid), labels 0..9."""
    rng = np.random.default_rng(seed)
    return rng.random((n, 64), np.float32), rng.integers(0, 10, n)


def train_direct(device, x, y, order, batch=8):
    return [device.train(Batch.from_arrays(x[order[s:s + batch]], y[order[s:s + batch]]))
            for s in range(0, len(order), batch)]


def train_buffered(device, order, batch=8):
    return [device.train_buffered(order[s:s + batch]) for s in range(0, len(order), batch)]


def params_equal(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


def refused(call, status, *words):
    with pytest.raises(DeviceError) as e:
        call()
    assert e.value.status == status, str(e.value)
    for w in words:
        assert w in str(e.value), str(e.value)
    return e.value


def answers(link, rid, wait=10.0):
    got, deadline = [], time.monotonic() + wait
    while time.monotonic() < deadline and not got:
        got = [f for f in link.read_frames(0.2) if f.req_id == rid]
    return got


def test_buffered_f32_trains_bit_exactly_like_direct_batches(device):
    assert Cap.SAMPLE_BUFFER in device.hello().caps
    prog = program()
    blob = build_blob(prog)
    x, y = samples()
    order = np.random.default_rng(1).permutation(len(y))
    order = np.concatenate([order, order[::-1]])  # two "epochs" from one upload
    device.load(blob)
    direct = train_direct(device, x, y, order)
    w_direct = device.read_params(prog)
    ev_direct = device.evaluate(Batch.from_arrays(x[:8], y[:8]))

    device.load(blob)  # back to the initial weights (and no buffer)
    buf = SampleBuffer.from_arrays(x, y, "f32")
    assert buf.bytes_per_sample == 64 * 4 + 1
    info = device.upload_buffer(buf)
    assert info["stream_bytes"] == len(buf.stream) == 24 * 257
    assert info["buffer_bytes"] == buffer_bytes(24, 64, Encoding.F32, 0)
    assert info["free_bytes"] == device.hello().arena_bytes - (prog.plan.arena_bytes + 7) // 8 * 8
    sent0 = device.link.bytes_sent
    buffered = train_buffered(device, order)
    assert device.link.bytes_sent - sent0 < 48 * 2 + 6 * 40  # indices and frames only
    assert [(r.loss, r.correct, r.step) for r in buffered] == [(r.loss, r.correct, r.step) for r in direct]
    assert params_equal(w_direct, device.read_params(prog))
    ev = device.evaluate_buffered(range(8))
    assert (ev.loss, ev.correct, ev.n) == (ev_direct.loss, ev_direct.correct, ev_direct.n)
    st = device.stats()
    assert st["steps"] == 6 and st["samples_trained"] == 2 * 48


def test_compact_encodings_decode_on_the_device_as_on_the_host(device):
    """i16/i8/u8 with per-channel scale: the device decodes exactly what the host says it
    does (EVAL_BUF == EVAL of the decoded values in f32), and i16 training matches f32
    training on the original values within the quantisation error."""
    prog = program()
    blob = build_blob(prog)
    x, y = samples(16, seed=3)
    x[:, :32] *= 40.0  # channels of very different ranges
    x[:, 32:] -= 0.5
    order = np.arange(16)
    rows = np.array([15, 0, 9, 3, 12, 6, 1, 10])
    device.load(blob)
    w_i16 = None
    for enc, channels in [("i16", 8), ("i8", 4), ("u8", 2)]:
        buf = SampleBuffer.from_arrays(x, y, enc, channels=channels)
        assert buf.channels == channels and buf.bytes_per_sample == 64 * ids.ENCODING_BYTES[buf.encoding] + 1
        dec = buf.decoded()
        step = np.repeat(np.asarray(buf.scale, np.float32), 64 // channels)
        assert (np.abs(dec - x) <= step / 2 * 1.001 + 1e-6).all()  # nothing clipped: at most half a step off
        device.upload_buffer(buf)
        r = device.evaluate_buffered(rows)
        ref = device.evaluate(Batch.from_arrays(dec[rows], y[rows]))
        assert (r.loss, r.correct) == (ref.loss, ref.correct), enc
        if enc == "i16":
            train_buffered(device, order)
            w_i16 = device.read_params(prog)
    device.load(blob)
    train_direct(device, x, y, order)
    w_f32 = device.read_params(prog)
    for k in w_f32:  # a step of 1/65534 of a channel's range: weights within 0.1 %
        np.testing.assert_allclose(w_i16[k], w_f32[k], rtol=1e-3, atol=1e-4, err_msg=k)


def test_retried_requests_are_applied_once(link, device):
    prog = program()
    device.load(build_blob(prog))
    x, y = samples(8)
    buf = SampleBuffer.from_arrays(x, y, "f32")
    device.buffer_begin(buf)
    stream = buf.stream
    half = len(stream) // 2
    chunk = Frame(MsgType.BUF_CHUNK, 4100, BUF_CHUNK_REQ.build(dict(offset=0, data=stream[:half]))).pack()
    replies = []
    for _ in range(2):  # the response was lost: the host resends the same frame
        link.send_raw(chunk)
        replies += answers(link, 4100)
    assert len(replies) == 2 and replies[0] == replies[1] and replies[0].status == Status.OK
    assert device.buffer_chunk(half, stream[half:]) == len(stream)  # appended once, not twice

    wire = Frame(MsgType.TRAIN_BUF, 4101, BUF_RUN_REQ.build(dict(n=8, indices=list(range(8))))).pack()
    replies = []
    for _ in range(2):
        link.send_raw(wire)
        replies += answers(link, 4101)
    assert len(replies) == 2 and replies[0] == replies[1]
    assert STEP_RESP.parse(replies[0].payload).step == 1
    assert device.stats()["steps"] == 1 and device.stats()["samples_trained"] == 8


def test_bad_buffers_and_indices_are_refused_and_everything_keeps_working(device):
    x, y = samples(8)
    buf = SampleBuffer.from_arrays(x, y, "i16", channels=4)
    refused(lambda: device.buffer_begin(buf), Status.NO_MODEL)
    refused(lambda: device.train_buffered([0]), Status.NO_MODEL)
    prog = program()
    device.load(build_blob(prog))
    refused(lambda: device.train_buffered([0]), Status.BAD_STATE, "BUF_BEGIN")
    refused(lambda: device.buffer_chunk(0, b"\0"), Status.BAD_STATE)

    def begin(**kw):
        d = dict(count=8, encoding=int(Encoding.I16_AFFINE), elems=64, channels=4, scale=[0.1] * 4, zero=[0.0] * 4)
        d.update(kw)
        return lambda: device.link.request(MsgType.BUF_BEGIN, BUF_BEGIN_REQ.build(d))

    refused(begin(encoding=2), Status.BAD_PAYLOAD, "encoding")           # STAGED is no buffer encoding
    refused(begin(encoding=9), Status.BAD_PAYLOAD, "encoding")
    refused(begin(channels=3, scale=[0.1] * 3, zero=[0.0] * 3), Status.BAD_PAYLOAD, "channels")  # 64 % 3
    refused(begin(encoding=int(Encoding.F32)), Status.BAD_PAYLOAD, "channels")  # f32 has no scale table
    refused(begin(scale=[0.1, float("nan"), 0.1, 0.1]), Status.BAD_PAYLOAD, "finite")
    refused(begin(count=0), Status.BAD_PAYLOAD, "count")
    refused(begin(elems=63, channels=1, scale=[0.1], zero=[0.0]), Status.BAD_BATCH, "elems")
    short = BUF_BEGIN_REQ.build(dict(count=8, encoding=4, elems=64, channels=4, scale=[0.1] * 4, zero=[0.0] * 4))
    refused(lambda: device.link.request(MsgType.BUF_BEGIN, short[:-4]), Status.BAD_PAYLOAD)
    # a buffer larger than the arena beyond the model: TOO_LARGE, with the byte counts
    free = device.hello().arena_bytes - (prog.plan.arena_bytes + 7) // 8 * 8
    count = min(0xFFFF, free // (64 * 4) + 1)
    e = refused(begin(count=count, encoding=int(Encoding.F32), channels=0, scale=[], zero=[]), Status.TOO_LARGE,
                "needs", str(buffer_bytes(count, 64, Encoding.F32, 0)), str(free))
    assert str(prog.plan.arena_bytes) in str(e)

    device.upload_buffer(buf)
    w0 = device.read_params(prog)
    for idx in ([8], [0, 1, 70], [0] * 9, []):  # past count, > max_batch, n = 0
        refused(lambda: device.train_buffered(idx), Status.BAD_BATCH)
    raw = BUF_RUN_REQ.build(dict(n=2, indices=[0, 1]))
    refused(lambda: device.link.request(MsgType.TRAIN_BUF, raw[:-1]), Status.BAD_PAYLOAD)
    refused(lambda: device.link.request(MsgType.EVAL_BUF, raw + b"\0\0"), Status.BAD_PAYLOAD)
    refused(lambda: device.buffer_chunk(0, b"\0"), Status.BAD_OFFSET)  # the stream is complete
    refused(lambda: device.buffer_chunk(len(buf.stream), b"\0"), Status.TOO_LARGE)
    assert params_equal(w0, device.read_params(prog))

    # a refused BUF_BEGIN left the buffer as it was; a new one replaces it
    refused(begin(count=count, encoding=int(Encoding.F32), channels=0, scale=[], zero=[]), Status.TOO_LARGE)
    assert device.train_buffered([7, 0, 3]).n == 3
    bad = SampleBuffer.from_arrays(x, np.full(8, 10), "i8", channels=1)  # label 10 of 10 classes
    device.buffer_begin(bad)
    refused(lambda: device.buffer_chunk(0, bad.stream[:8]), Status.BAD_BATCH, "label")
    refused(lambda: device.buffer_chunk(4, bad.stream[4:]), Status.BAD_OFFSET)
    refused(lambda: device.train_buffered([0]), Status.BAD_STATE)  # incomplete
    assert device.train(Batch.from_arrays(x, y)).n == 8  # the model works throughout
    device.upload_buffer(buf)
    assert device.evaluate_buffered(range(8)).n == 8


def test_installing_a_model_drops_the_buffer(device):
    prog = program()
    blob = build_blob(prog)
    device.load(blob)
    x, y = samples(8)
    device.upload_buffer(SampleBuffer.from_arrays(x, y, "i16", channels=8))
    assert device.train_buffered(range(8)).step == 1
    device.load(blob)
    refused(lambda: device.train_buffered(range(8)), Status.BAD_STATE, "buffer")
    refused(lambda: device.evaluate_buffered([0]), Status.BAD_STATE)
    refused(lambda: device.buffer_chunk(0, b"\0"), Status.BAD_STATE)
    assert device.train(Batch.from_arrays(x, y)).step == 1


# ---- a session on fake:// -------------------------------------------------------------

def stream_json(capsys, tmp_path, *extra):
    code = main(["stream", "--port", "fake://", "--dataset", "digits", "--runs-dir", str(tmp_path), "--json",
                 *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_stream_uploads_once_and_sends_indices_each_epoch(capsys, tmp_path):
    runs = {(buffered, epochs): stream_json(capsys, tmp_path, "--epochs", str(epochs),
                                            *([] if buffered else ["--no-buffer"]))
            for buffered in (True, False) for epochs in (1, 2)}
    b1, b2 = runs[True, 1], runs[True, 2]
    d1, d2 = runs[False, 1], runs[False, 2]
    assert b2["encoding"] == "u8" and b2["bytes_per_sample"] == 65  # digits: an exact u8 grid
    sb = b2["sample_buffer"]
    assert sb["train"] == b2["train_samples"] and sb["test"] == b2["test_samples"]
    assert sb["stream_bytes"] == (sb["train"] + sb["test"]) * 65
    assert d2["sample_buffer"] is None and d2["encoding"] == "u8"
    # the same samples, the same order, exact codes: the same model
    assert b2["final_eval"] == d2["final_eval"] and b2["epoch_train_loss"] == d2["epoch_train_loss"]
    # an epoch (training and the held-out evaluation): sample indices instead of samples
    per_epoch_buffered = b2["bytes_on_wire"] - b1["bytes_on_wire"]
    per_epoch_direct = d2["bytes_on_wire"] - d1["bytes_on_wire"]
    assert per_epoch_direct > (b2["train_samples"] + b2["test_samples"]) * 65
    assert per_epoch_buffered < per_epoch_direct / 5
    assert b2["bytes_on_wire"] < d2["bytes_on_wire"]


def test_stream_encoding_option_and_a_buffer_that_does_not_fit(capsys, tmp_path):
    s = stream_json(capsys, tmp_path, "--epochs", "1", "--encoding", "i16")
    assert s["encoding"] == "i16" and s["bytes_per_sample"] == 129 and s["status"] == "completed"
    assert s["final_eval"]["accuracy"] > 0.5
    records = [json.loads(line) for line in (tmp_path / s["run_dir"].split("/")[-1] / "metrics.jsonl")
               .read_text().splitlines()]
    assert records[0]["kind"] == "buffer" and records[0]["encoding"] == "i16"
    # 40 KB of arena: the model fits, the 1438 calibration samples (93 KB) do not
    code = main(["stream", "--port", "fake://?arena=40000", "--dataset", "digits", "--epochs", "1",
                 "--runs-dir", str(tmp_path), "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    s = json.loads(out)
    assert s["sample_buffer"] is None and s["encoding"] == "u8" and s["status"] == "completed"
