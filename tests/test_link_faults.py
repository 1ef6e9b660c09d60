"""Training over a damaged link ends with the same weights as over a clean one.

tests/linkproxy.py sits between the host and the board and drops, duplicates,
corrupts and delays bytes (seeded), or cuts the connection. The link retries with
the same request id (the device answers a repeat from its cache: nothing is
applied twice), and `host.session.train_batches` reconnects and resumes from the
device's step count; a reset board comes back at its checkpoint and the batches
since are replayed. Every case compares every parameter tensor bit for bit with
a run over a clean link.
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from conftest import _require_firmware, start_kind
from host import ids
from host.blob import blob_crc, build_blob
from host.compiler import TrainConfig, compile_model
from host.device import Batch, Device
from host.emulator import start
from host.errors import DeviceError, LinkError
from host.ids import TensorFlag
from host.link import Link
from host.session import train_batches
from host.zoo import init_params, load_model
from linkproxy import Faults, LinkProxy

SPEC = load_model("mlp-digits")
N_BATCHES = 12
# per-byte fault rates: ~1.5e-4 in all, so a 4 KiB frame arrives intact ~half the time
# (a harsher line would only make the run slower, not different), and a run of ~80 KB
# meets a dozen faults
NOISY = dict(drop=5e-5, duplicate=5e-5, corrupt=5e-5, delay=0.02)


def program():
    return compile_model(SPEC, init_params(SPEC, 0), TrainConfig(batch=8, lr=0.1, momentum=0.9))


def batches():
    out = []
    for i in range(N_BATCHES):
        rng = np.random.default_rng(100 + i)
        out.append(Batch.from_arrays(rng.integers(0, 17, (8, 64)) / 16, rng.integers(0, 10, 8)))
    return out


def param_state(dev: Device, prog) -> dict[int, bytes]:
    return {i: dev.read_tensor(i, t.elems * ids.DTYPE_BYTES[t.dtype])
            for i, t in enumerate(prog.graph.tensors) if t.flags & TensorFlag.PARAM}


def train_all(dev: Device, prog, blob, events=None, reconnects=0) -> dict[int, bytes]:
    dev.hello()
    dev.load(blob)
    log = (lambda kind, data: events.append((kind, data))) if events is not None else (lambda *a: None)
    done = [i for i, _ in train_batches(dev, batches(), buffered=False, model_crc=blob_crc(blob),
                                        reconnects=reconnects, on_event=log)]
    assert done[-1] == N_BATCHES - 1
    assert dev.stats()["steps"] == N_BATCHES  # each batch applied exactly once
    return param_state(dev, prog)


_clean: dict[str, dict[int, bytes]] = {}


def clean_run(board_name: str) -> dict[int, bytes]:
    """The reference: the same training on a fresh board over a clean link (once per board)."""
    if board_name not in _clean:
        prog = program()
        with start_kind(board_name) as running, Link.open(running.url, timeout=20) as lk:
            _clean[board_name] = train_all(Device(lk), prog, build_blob(prog))
    return _clean[board_name]


@pytest.mark.parametrize("board_name,seed", [("native", 1), ("native-asan", 2), ("mps2-an386", 3)])
def test_training_over_a_noisy_link_gives_the_clean_links_weights(board_name, seed):
    reference = clean_run(board_name)
    prog = program()
    with start_kind(board_name) as running, LinkProxy(running.url, Faults(**NOISY, seed=seed)) as proxy:
        # short timeouts, many retries: a damaged frame costs one timeout, never a wrong answer
        with Link.open(proxy.url, timeout=1.0, retries=12) as lk:
            got = train_all(Device(lk), prog, build_blob(prog))
        st = proxy.stats
    assert st.dropped + st.duplicated + st.corrupted >= 3, st  # the line really was noisy
    assert got == reference


@pytest.mark.parametrize("board_name", ["native-asan", "mps2-an386"])
def test_a_dropped_link_resumes_after_the_last_applied_batch(board_name):
    reference = clean_run(board_name)
    prog = program()
    blob = build_blob(prog)
    events: list = []
    # the cut lands in the training: after the upload (~10 KB) and a few batches (~2.1 KB each)
    with start_kind(board_name) as running, LinkProxy(running.url, Faults(cut_after=len(blob) + 9000)) as proxy:
        with Link.open(proxy.url, timeout=2.0, retries=1) as lk:
            dev = Device(lk)
            got = train_all(dev, prog, blob, events, reconnects=2)
            dev.link.close()
        # one cut; reopening may take more than one connection (a HELLO too early is retried)
        assert proxy.stats.cuts == 1 and proxy.stats.connections >= 2
    kinds = [k for k, _ in events]
    assert kinds == ["reconnect", "resumed"], events
    assert 0 < events[1][1]["batch"] < N_BATCHES
    assert got == reference


def test_a_reset_board_resumes_from_its_checkpoint(tmp_path):
    """The board is killed mid-run and booted again on the same port with its storage: it
    comes back at its checkpoint and the batches since are replayed, bit-exactly."""
    board = _require_firmware("mps2-an386")
    reference = clean_run("mps2-an386")
    prog = program()
    blob = build_blob(prog)
    nv = tmp_path / "nv"
    first = start(board, nv_dir=nv)
    port = int(first.url.rsplit(":", 1)[1])
    boards = [first]
    events: list = []

    def on_event(kind, data):
        events.append((kind, data))

    try:
        with Link.open(first.url, timeout=2.0, retries=1) as lk:
            dev = Device(lk)
            dev.hello()
            dev.load(blob)
            results = []
            for i, r in train_batches(dev, batches(), buffered=False, model_crc=blob_crc(blob), reconnects=3,
                                      on_event=on_event):
                results.append(i)
                if i == 5 and len(boards) == 1:
                    assert dev.checkpoint_save().steps == 6
                if i == 8 and len(boards) == 1:  # power cut after batch 8, back 0.3 s later
                    first.kill()
                    first.stop()

                    def reboot():
                        time.sleep(0.3)
                        boards.append(start(board, nv_dir=nv, port=port))

                    t = threading.Thread(target=reboot)
                    t.start()
                    t.join()
            assert dev.stats()["steps"] == N_BATCHES
            got = param_state(dev, prog)
            dev.link.close()
    finally:
        for b in boards:
            b.stop()
    resumed = [d for k, d in events if k == "resumed"]
    assert resumed and resumed[0]["step"] == 6 and resumed[0]["ckpt_seq"] == 1
    assert results == list(range(9)) + list(range(6, N_BATCHES))  # 6, 7, 8 replayed
    assert got == reference


def test_a_device_running_another_model_is_refused_on_reconnect():
    prog = program()
    other = compile_model(SPEC, init_params(SPEC, 7), TrainConfig(batch=8, lr=0.1))
    with start_kind("native-asan") as running:
        with Link.open(running.url, timeout=2.0) as lk:
            dev = Device(lk)
            dev.hello()
            dev.load(build_blob(other))
            hello = dev.reopen()
            with pytest.raises(DeviceError, match="runs model .* not this run's model"):
                dev.require_model(hello, blob_crc(build_blob(prog)))
            dev.link.close()


def test_a_port_that_is_not_our_device_gives_a_clear_error():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        url = f"socket://127.0.0.1:{silent.getsockname()[1]}"
        with Link.open(url, timeout=0.3, retries=0) as lk:
            with pytest.raises(LinkError, match="does not answer HELLO") as e:
                Device(lk).hello()
    assert "port" in (e.value.hint or "")


# ---- the session (host stream) over the same faults ------------------------------------

@pytest.fixture(scope="module")
def digits():
    from host.datasets import load_dataset

    return load_dataset("digits")


def run_stream(url: str, digits, tmp_path, name: str, on_event=lambda kind, data: None, **opts):
    import json

    from host.runrecord import RunRecord
    from host.session import StreamOptions, stream

    record = RunRecord(tmp_path / name)
    with Link.open(url, timeout=2.0, retries=2) as lk:
        dev = Device(lk)
        summary = stream(dev, dev.hello(), digits, StreamOptions(epochs=1, **opts), record, on_event)
        dev.link.close()
    record.close()
    metrics = [json.loads(line) for line in (record.path / "metrics.jsonl").read_text().splitlines()]
    with np.load(record.path / "weights.npz") as w:
        weights = {k: w[k].copy() for k in w.files}
    return summary, metrics, weights


def test_a_stream_whose_link_drops_completes_with_the_uninterrupted_weights(tmp_path, digits):
    """`host stream` over the proxy: the connection is cut after the 10th batch; the session
    reconnects, resumes after the last applied batch, and ends as a clean run does."""
    with start_kind("native-asan") as running:
        clean, _, clean_w = run_stream(running.url, digits, tmp_path, "clean")
    with start_kind("native-asan") as running, LinkProxy(running.url, Faults()) as proxy:
        def cut_at_ten(kind, data):
            if kind == "train" and data["step"] == 10:
                proxy.cut()

        cut, metrics, cut_w = run_stream(proxy.url, digits, tmp_path, "cut", cut_at_ten)
    assert proxy.stats.cuts == 1 and proxy.stats.connections >= 2
    assert cut["status"] == "completed" and cut["steps"] == clean["steps"]
    steps = [m["step"] for m in metrics if m["kind"] == "train"]
    assert steps == list(range(1, clean["steps"] + 1))  # every batch once, in order
    assert cut_w.keys() == clean_w.keys()
    assert all(np.array_equal(cut_w[k], clean_w[k]) for k in clean_w)


def test_a_rolled_back_step_is_reported_in_the_run_record(tmp_path, digits, monkeypatch):
    """The device's answer to a rejected step (as the guards send it) lands in metrics.jsonl,
    summary.json and the events the CLI shows; the run goes on."""
    from host.device import RolledBack

    real = Device.train_buffered
    calls = []

    def third_rolls_back(self, indices):
        calls.append(1)
        if len(calls) == 3:
            raise RolledBack("device refused TRAIN_BUF: NUMERIC: loss spike: above spike_k x the mean of "
                             "the last 8 losses; rolled back to checkpoint 1 (step 0)", status=ids.Status.NUMERIC)
        return real(self, indices)

    monkeypatch.setattr(Device, "train_buffered", third_rolls_back)
    events = []
    summary, metrics, _ = run_stream("fake://", digits, tmp_path, "rb", lambda k, d: events.append(k))
    rb = [m for m in metrics if m["kind"] == "rollback"]
    assert len(rb) == 1 and rb[0]["rolled_back"] and "loss spike" in rb[0]["reason"]
    assert summary["status"] == "completed" and summary["rollbacks"] == 1
    assert "rolled back to checkpoint 1" in summary["rollback_reasons"][0]
    assert "rollback" in events
