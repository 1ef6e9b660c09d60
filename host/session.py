"""A training session on a device: connect, make sure it holds the model, stream
batches, evaluate held-out data, read the weights back, record everything.

The CLI (`host stream`) and the tests drive the same functions; display is a
callback, so nothing here prints.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .blob import blob_crc, build_blob
from .boards import load_board
from .compiler import Program, TrainConfig, compile_model
from .datasets import Dataset
from .device import Batch, Device, Hello
from .emulator import running_boards, start
from .errors import EdgePropError, LinkError, UsageError
from .link import Link
from .runrecord import RunRecord
from .zoo import resolve_model

Event = Callable[[str, dict], None]


@contextlib.contextmanager
def open_device(port: str | None, board: str | None, emulate: bool, timeout: float = 5.0
                ) -> Iterator[tuple[Device, Hello]]:
    """Connect to `port`, or to a private emulated `board` (emulate=True), or to the
    one board `make flash` left running. Yields the device and its HELLO."""
    running = None
    if emulate:
        running = start(load_board(board or "mps2-an386"))
        port = running.url
    elif port is None:
        boards = [r for r in running_boards() if board in (None, r.board)]
        if not boards:
            raise LinkError("no device given and no emulated board running",
                            hint="start one with `make flash BOARD=mps2-an386`, or pass --port URL "
                                 "(/dev/ttyACM0, socket://HOST:PORT) or --emulate")
        if len(boards) > 1:
            raise UsageError("several boards are running: "
                             + ", ".join(f"{r.board} ({r.url})" for r in boards) + "; choose with --board or --port")
        port = boards[0].url
    try:
        with Link.open(port, timeout=timeout) as link:
            device = Device(link)
            yield device, device.hello()
    finally:
        if running is not None:
            running.stop()


@dataclass(frozen=True)
class StreamOptions:
    model: str = "mlp-digits"
    epochs: int = 3
    train: TrainConfig = TrainConfig()
    seed: int = 0
    reflash: bool = False

    @property
    def batch(self) -> int:
        return self.train.batch


def prepare_program(opts: StreamOptions, ds: Dataset, hello: Hello) -> tuple[Program, bytes]:
    spec, params = resolve_model(opts.model, opts.seed, (ds.features,), ds.classes)
    if int(np.prod(spec.input)) != ds.features or spec.classes != ds.classes:
        raise UsageError(f"model {spec.name} takes {spec.input} → {spec.classes} classes; "
                         f"dataset {ds.name} has {ds.features} features and {ds.classes} classes")
    prog = compile_model(spec, params, opts.train, arena_limit=hello.arena_bytes)
    return prog, build_blob(prog)


def ensure_model(device: Device, hello: Hello, blob: bytes, reflash: bool, on_event: Event) -> bool:
    """Upload the blob unless the device already holds this model. True if uploaded."""
    if hello.model_loaded and hello.model_crc == blob_crc(blob) and not reflash:
        on_event("model_kept", {"model_crc": hello.model_crc})
        return False
    t0 = time.monotonic()
    info = device.load(blob, progress=lambda sent, total: on_event("flash", {"sent": sent, "total": total}))
    on_event("flashed", {**info, "bytes": len(blob), "seconds": time.monotonic() - t0})
    return True


def _batches(x: np.ndarray, y: np.ndarray, size: int, order: np.ndarray | None = None):
    idx = np.arange(len(y)) if order is None else order
    for s in range(0, len(idx), size):
        sel = idx[s:s + size]
        yield x[sel], y[sel]


def evaluate(device: Device, ds: Dataset, batch: int) -> dict:
    loss_sum, correct, n, cycles = 0.0, 0, 0, 0
    for xb, yb in _batches(ds.x_test, ds.y_test, batch):
        r = device.evaluate(Batch.from_arrays(xb, yb, ds.quant))
        loss_sum += r.loss * r.n
        correct += r.correct
        n += r.n
        cycles += r.cycles
    return {"loss": loss_sum / n, "accuracy": correct / n, "n": n, "cycles": cycles}


def stream(device: Device, hello: Hello, ds: Dataset, opts: StreamOptions, record: RunRecord,
           on_event: Event = lambda kind, data: None) -> dict:
    prog, blob = prepare_program(opts, ds, hello)
    flashed = ensure_model(device, hello, blob, opts.reflash, on_event)
    rng = np.random.default_rng(opts.seed)
    t_start = time.monotonic()
    samples = 0
    train_cycles = 0
    step = 0

    def eval_record(epoch: int) -> dict:
        ev = evaluate(device, ds, opts.batch)
        rec = {"kind": "eval", "epoch": epoch, "step": step, "samples": samples, **ev,
               "time_s": round(time.monotonic() - t_start, 3)}
        record.log(rec)
        on_event("eval", rec)
        return rec

    evals: list[dict] = []
    epoch_losses: list[float] = []

    def summary(status: str, **extra) -> dict:
        elapsed = time.monotonic() - t_start
        out = {
            "status": status, "board": hello.board, "firmware": hello.firmware, "model": prog.spec.name,
            "model_crc": f"{blob_crc(blob):08x}", "flashed": flashed, "dataset": ds.name,
            "train_samples": len(ds.y_train), "test_samples": len(ds.y_test),
            "epochs": opts.epochs, "batch": opts.batch, "lr": opts.train.lr, "weight_decay": opts.train.weight_decay,
            "optimizer": opts.train.optimizer,
            "seed": opts.seed, "steps": step, "samples": samples, "epoch_train_loss": epoch_losses,
            "initial_eval": {k: evals[0][k] for k in ("loss", "accuracy")} if evals else None,
            "final_eval": {k: evals[-1][k] for k in ("loss", "accuracy")} if evals else None,
            "cycles_per_sample": train_cycles / samples if samples else None,
            "samples_per_s": samples / elapsed if elapsed > 0 else None,
            "seconds": round(elapsed, 3), "arena_bytes": prog.plan.arena_bytes,
            "run_dir": str(record.path), **extra,
        }
        record.save_summary(out)
        return out

    try:
        evals.append(eval_record(0))
        for epoch in range(1, opts.epochs + 1):
            losses = []
            order = rng.permutation(len(ds.y_train))
            for xb, yb in _batches(ds.x_train, ds.y_train, opts.batch, order):
                t0 = time.monotonic()
                r = device.train(Batch.from_arrays(xb, yb, ds.quant))
                dt = time.monotonic() - t0
                samples += r.n
                train_cycles += r.cycles
                step = r.step
                losses.append(r.loss)
                rec = {"kind": "train", "epoch": epoch, "step": r.step, "loss": r.loss, "n": r.n,
                       "correct": r.correct, "samples": samples, "cycles": r.cycles,
                       "cycles_per_sample": r.cycles / r.n, "samples_per_s": r.n / dt if dt > 0 else None,
                       "time_s": round(time.monotonic() - t_start, 3)}
                record.log(rec)
                on_event("train", rec)
            epoch_losses.append(float(np.mean(losses)))
            evals.append(eval_record(epoch))
        weights_path = record.save_weights(device.read_params(prog))
    except EdgePropError as e:
        # what was measured so far stays on disk; the device keeps the weights it trained
        summary("failed", error=f"{type(e).__name__}: {e}")
        raise
    return summary("ok", weights=weights_path.name)
