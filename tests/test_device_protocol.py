"""Protocol v1 against every kind of device: the fake, the native firmware build and
the firmware on the emulated Cortex-M4F. Damaged or hostile input always gets an
error answer, and the device keeps working (and keeps its model) afterwards."""

from __future__ import annotations

import random
import time
import zlib

import numpy as np
import pytest

from host import ids
from host.blob import build_blob
from host.compiler import TrainConfig, compile_model
from host.device import Batch
from host.errors import DeviceError
from host.ids import MsgType, Status
from host.protocol import LOAD_BEGIN_REQ, LOAD_CHUNK_REQ, STEP_RESP, Frame
from host.zoo import init_params, load_model, parse_model

import native_lib as nl

SPEC = load_model("mlp-digits")


def program(seed=0, batch=8):
    return compile_model(SPEC, init_params(SPEC, seed), TrainConfig(batch=batch, lr=0.1))


def a_batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return Batch.from_arrays(rng.integers(0, 17, (n, 64)) / 16, rng.integers(0, 10, n), quant=(1 / 16, 0.0))


def answers(link, wait=3.0, until=None):
    """Frames the device sends within `wait` s (stops early once `until(frame)` is true)."""
    got, deadline = [], time.monotonic() + wait
    while time.monotonic() < deadline:
        for f in link.read_frames(0.2):
            got.append(f)
            if until and until(f):
                return got
    return got


def test_hello_describes_the_device(device):
    h = device.hello()
    assert h.protocol == ids.PROTOCOL_VERSION
    assert h.firmware == ".".join(map(str, ids.FIRMWARE_VERSION))
    # every board holds the default model (mlp-digits: 30 KB arena at batch 32, 10 KB blob);
    # the tight 128 KiB boards have 48 KiB and 16 KiB
    assert h.arena_bytes >= 32 * 1024 and h.staging_bytes >= 16 * 1024
    assert h.max_payload == ids.FRAME_MAX_PAYLOAD
    assert not h.model_loaded and h.model_crc == 0
    assert ids.Cap.F32 in h.caps and ids.Cap.SGD in h.caps


def test_boot_hello_arrives_with_request_id_zero(raw_link):
    frames = answers(raw_link, until=lambda f: f.req_id == 0)
    assert any(f.req_id == 0 and f.type == MsgType.HELLO | 0x80 for f in frames)


def test_bad_crc_gets_an_error_and_the_device_answers_after(link, device):
    wire = bytearray(Frame(MsgType.STATS, 77).pack())
    wire[-1] ^= 0x55
    link.send_raw(bytes(wire))
    frames = answers(link, until=lambda f: f.type == 0xFF)
    assert any(f.type == 0xFF and f.status == Status.BAD_CRC and f.req_id == 77 for f in frames)
    assert device.stats()["frames_bad"] >= 1


def test_oversize_length_gets_an_error(link, device):
    head = bytes([0xE9, 0x50, MsgType.TRAIN, 0, 0x21, 0]) + (ids.FRAME_MAX_PAYLOAD + 1).to_bytes(2, "little")
    link.send_raw(head)
    frames = answers(link, until=lambda f: f.type == 0xFF)
    assert any(f.status == Status.OVERSIZE and f.req_id == 0x21 for f in frames)
    assert device.hello().protocol == ids.PROTOCOL_VERSION


def test_truncated_frame_is_dropped_after_the_idle_timeout(link, device):
    link.send_raw(Frame(MsgType.HELLO, 55, b"").pack()[:9])
    frames = answers(link, wait=ids.FRAME_IDLE_TIMEOUT_MS / 1000 * 4, until=lambda f: f.type == 0xFF)
    assert any(f.status == Status.TRUNCATED for f in frames)
    assert device.hello().protocol == ids.PROTOCOL_VERSION


def test_unknown_type_and_bad_payloads_are_refused(device):
    with pytest.raises(DeviceError) as e:
        device.link.request(0x42)
    assert e.value.status == Status.UNKNOWN_TYPE
    with pytest.raises(DeviceError) as e:
        device.link.request(MsgType.STATS, b"xyz")
    assert e.value.status == Status.BAD_PAYLOAD
    with pytest.raises(DeviceError) as e:
        device.link.request(MsgType.TRAIN, b"\x01")
    assert e.value.status in (Status.BAD_PAYLOAD, Status.BAD_BATCH, Status.NO_MODEL)


def test_random_garbage_never_stops_the_device(link, device):
    rng = random.Random(1)
    for _ in range(20):
        link.send_raw(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
    # a sync pair + huge length in the garbage may leave a partial frame pending: wait it out
    time.sleep(ids.FRAME_IDLE_TIMEOUT_MS / 1000 * 1.5)
    assert device.hello().protocol == ids.PROTOCOL_VERSION


def test_requests_without_a_model_or_out_of_order(device):
    with pytest.raises(DeviceError) as e:
        device.train(a_batch())
    assert e.value.status == Status.NO_MODEL
    with pytest.raises(DeviceError) as e:
        device.link.request(MsgType.LOAD_CHUNK, LOAD_CHUNK_REQ.build(dict(offset=0, data=b"abc")))
    assert e.value.status == Status.BAD_STATE
    with pytest.raises(DeviceError) as e:
        device.link.request(MsgType.LOAD_BEGIN, LOAD_BEGIN_REQ.build(dict(total_bytes=1 << 30, crc32=0)))
    assert e.value.status == Status.TOO_LARGE


def test_bad_blobs_are_refused_and_the_installed_model_keeps_working(device):
    prog = program()
    blob = build_blob(prog)
    device.load(blob)
    before = device.read_params(prog)
    device.train(a_batch())
    trained = device.read_params(prog)
    assert not np.array_equal(before["fc1.weight"], trained["fc1.weight"])

    corrupt = bytearray(blob)
    corrupt[len(blob) // 2] ^= 1             # upload crc still matches: the blob's own crc does not
    bad_magic = b"XXXX" + blob[4:]
    fix_crc = lambda b: b[:12] + zlib.crc32(b[16:]).to_bytes(4, "little") + b[16:]  # noqa: E731
    bad_offset = bytearray(blob)
    bad_offset[64 + 12:64 + 16] = (1 << 30).to_bytes(4, "little")   # tensor 0 offset far outside
    for bad, status in [(bytes(corrupt), Status.BAD_HASH), (bad_magic, Status.BAD_BLOB),
                        (fix_crc(bytes(bad_offset)), Status.BAD_BLOB)]:
        with pytest.raises(DeviceError) as e:
            device.load(bad)
        assert e.value.status in (status, Status.BAD_BLOB, Status.BAD_HASH), str(e.value)
    # a blob whose upload hash does not match what LOAD_BEGIN announced
    device.link.request(MsgType.LOAD_BEGIN, LOAD_BEGIN_REQ.build(dict(total_bytes=len(blob), crc32=1)))
    for off in range(0, len(blob), 4000):
        device.link.request(MsgType.LOAD_CHUNK, LOAD_CHUNK_REQ.build(dict(offset=off, data=blob[off:off + 4000])))
    with pytest.raises(DeviceError) as e:
        device.link.request(MsgType.LOAD_END)
    assert e.value.status == Status.BAD_HASH

    h = device.hello()
    assert h.model_loaded and h.model_crc == zlib.crc32(blob[16:])
    assert all(np.array_equal(trained[k], v) for k, v in device.read_params(prog).items())
    device.train(a_batch())                       # and it still trains


def test_bad_batches_are_refused_without_touching_the_weights(device):
    prog = program()
    device.load(build_blob(prog))
    w0 = device.read_params(prog)
    good = a_batch()
    for bad in [Batch(0, good.encoding, good.scale, good.zero, b"", b""),
                Batch(9, good.encoding, good.scale, good.zero, bytes(9), bytes(9 * 64)),   # > max_batch
                Batch(8, good.encoding, good.scale, good.zero, bytes([10] * 8), good.data),  # label 10
                Batch(8, good.encoding, good.scale, good.zero, good.labels, good.data[:-1]),
                Batch(8, 7, good.scale, good.zero, good.labels, good.data)]:
        with pytest.raises(DeviceError) as e:
            device.train(bad)
        assert e.value.status == Status.BAD_BATCH
    assert all(np.array_equal(w0[k], v) for k, v in device.read_params(prog).items())


def test_a_retried_train_request_is_applied_once(link, device):
    prog = program()
    device.load(build_blob(prog))
    wire = Frame(MsgType.TRAIN, 4242, a_batch().pack()).pack()
    replies = []
    for _ in range(2):
        link.send_raw(wire)
        replies += [f for f in answers(link, wait=10, until=lambda f: f.req_id == 4242) if f.req_id == 4242]
    assert len(replies) == 2 and replies[0] == replies[1]
    assert STEP_RESP.parse(replies[0].payload).step == 1
    assert device.stats()["steps"] == 1


def test_read_weights_refuses_non_parameters(device):
    prog = program()
    device.load(build_blob(prog))
    from host.protocol import READ_WEIGHTS_REQ
    act = prog.graph.index("fc1.out")
    w = prog.graph.index("fc1.weight")
    for tensor, length, offset in [(act, 4, 0), (999, 4, 0), (w, 8, prog.plan.sizes[w] - 4)]:
        with pytest.raises(DeviceError) as e:
            device.link.request(MsgType.READ_WEIGHTS, READ_WEIGHTS_REQ.build(
                dict(tensor=tensor, length=length, offset=offset)))
        assert e.value.status == Status.BAD_TENSOR


# A model whose samples (600 f32 = 2400 B) make a 4-sample batch larger than one frame.
WIDE = parse_model({"name": "wide", "input": [600], "classes": 3, "loss": "softmax_cross_entropy",
                    "layers": [{"type": "linear", "name": "fc", "out": 3}]})


def wide_batch(seed, n=4, quant=None):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 600)) / 255.0
    return Batch.from_arrays(x, rng.integers(0, 3, n), quant)


def test_batches_larger_than_a_frame_are_staged_and_train_as_one(device):
    params = init_params(WIDE, 0)
    prog = compile_model(WIDE, params, TrainConfig(batch=4, lr=0.1))
    blob = build_blob(prog)
    device.load(blob)
    batches = [wide_batch(s) for s in range(3)] + [wide_batch(9, quant=(1 / 255, 0.0))]
    assert all(len(b.pack()) > ids.FRAME_MAX_PAYLOAD for b in batches[:3])
    results = [device.train(b) for b in batches]
    ev = device.evaluate(wide_batch(5, n=3))
    # the same steps on the runtime library, one call each (no protocol, no staging)
    rt = nl.Runtime(blob)
    for b, r in zip(batches, results):
        st, why, ref = rt.run(b.labels, b.data, encoding=int(b.encoding), scale=b.scale, zero=b.zero, train=True)
        assert st == 0, why
        # one float32 matmul of 600 terms per logit: the host library and a board
        # may round differently (FMA contraction), |Δ| ≤ γ₆₀₀·Σ|x·w| ≈ 600·6e-8·25 ≈ 1e-3
        # in the worst case, far less in practice; a staging mistake (a row off, a
        # label shifted) changes the loss by ~0.1
        assert abs(r.loss - ref.loss) < 1e-3 and r.correct == ref.correct and r.n == 4
    b = wide_batch(5, n=3)
    st, _, ref = rt.run(b.labels, b.data, train=False)
    assert abs(ev.loss - ref.loss) < 1e-3 and ev.n == 3
    w = device.read_params(prog)["fc.weight"]
    np.testing.assert_allclose(w.ravel(), rt.tensor(prog.param_index("fc.weight")), atol=1e-5)


def test_staging_refuses_gaps_short_runs_and_bad_labels(device):
    from host.protocol import BATCH_REQ, STAGE_REQ

    def stage(offset, data, encoding=ids.Encoding.F32):
        return device.link.request(MsgType.STAGE, STAGE_REQ.build(dict(
            offset=offset, encoding=int(encoding), scale=1.0, zero=0.0, data=data)))

    def staged_run(n, labels):
        return device.link.request(MsgType.TRAIN, BATCH_REQ.build(dict(
            n=n, encoding=int(ids.Encoding.STAGED), scale=0.0, zero=0.0, labels=bytes(labels), data=b"")))

    with pytest.raises(DeviceError) as e:
        stage(0, bytes(16))
    assert e.value.status == Status.NO_MODEL
    prog = compile_model(WIDE, init_params(WIDE, 0), TrainConfig(batch=4, lr=0.1))
    device.load(build_blob(prog))
    stage(0, np.ones(600, "<f4").tobytes())               # sample 0
    with pytest.raises(DeviceError) as e:                  # a gap: values 601.. before 600
        stage(601, bytes(8))
    assert e.value.status == Status.BAD_BATCH
    with pytest.raises(DeviceError) as e:                  # 2 samples asked, 1 staged
        staged_run(2, [0, 1])
    assert e.value.status == Status.BAD_BATCH
    stage(0, np.ones(600, "<f4").tobytes())               # the failed run consumed the rows
    with pytest.raises(DeviceError) as e:                  # label 3 of 3 classes
        staged_run(1, [3])
    assert e.value.status == Status.BAD_BATCH
    for i in range(4):                                     # all 4 samples of max_batch...
        stage(600 * i, np.ones(600, "<f4").tobytes())
    with pytest.raises(DeviceError) as e:                  # ...and one value past them
        stage(2400, bytes(4))
    assert e.value.status == Status.BAD_BATCH
    stage(0, np.ones(600, "<f4").tobytes())
    with pytest.raises(DeviceError) as e:                  # labels with data is not a staged run
        device.link.request(MsgType.TRAIN, BATCH_REQ.build(dict(
            n=1, encoding=int(ids.Encoding.STAGED), scale=0.0, zero=0.0, labels=b"\x00", data=b"x")))
    assert e.value.status == Status.BAD_PAYLOAD
    before = device.read_params(prog)
    stage(0, np.ones(600, "<f4").tobytes())
    r = STEP_RESP.parse(staged_run(1, [2]).payload)
    assert r.n == 1 and r.step == 1
    assert not np.array_equal(device.read_params(prog)["fc.weight"], before["fc.weight"])


def test_cores_has_no_per_core_counts_without_a_cluster(device):
    """CORES on a one-core device (fake, native, any board here but gap9 in turns mode,
    which tests/test_cluster.py covers): an empty, well-formed answer."""
    device.load(build_blob(program(batch=8)))
    device.train(a_batch())
    assert device.core_instructions() == []


def test_profile_gives_the_cost_of_every_node_of_the_last_run(device, device_url):
    prog = program(batch=8)
    device.load(build_blob(prog))
    assert device.profile() == []                      # nothing ran since the install
    r = device.train(a_batch())
    cycles = device.profile()
    assert len(cycles) == len(prog.graph.nodes)
    if device_url.startswith("fake://"):
        assert set(cycles) == {0}                       # the fake measures nothing
        return
    assert all(c > 0 for c in cycles)                   # TRAIN runs every node
    assert sum(cycles) <= r.cycles
    ev = device.evaluate(a_batch(seed=1))
    eval_cycles = device.profile()
    n_eval = prog.graph.n_eval_nodes
    assert all(c > 0 for c in eval_cycles[:n_eval]) and not any(eval_cycles[n_eval:])
    assert sum(eval_cycles) <= ev.cycles
    if "socket://" in device_url and device.hello().board != "native":
        # emulated boards count instructions: the same work costs the same, node by node
        device.evaluate(a_batch(seed=1))
        assert device.profile() == eval_cycles
