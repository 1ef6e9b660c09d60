"""A training session on a device: connect, make sure it holds the model, put the
calibration (and held-out) samples into the device's sample buffer once when it has
one (Cap.SAMPLE_BUFFER; else stream every batch), train by sample index, evaluate
held-out data, read the weights back, record everything.

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
from . import sparse
from .compiler import Program, TrainConfig, compile_model
from .datasets import Dataset
from .device import BUFFER_ENCODINGS, Batch, Device, Hello, RolledBack, SampleBuffer, StepResult
from .emulator import running_boards, start
from .errors import DeviceError, LinkError, UsageError
from .ids import Cap, Status
from .protocol import NvFlag, buffer_bytes
from .link import Link
from .plots import write_plots
from .runrecord import RunRecord
from .importer import resolve_model
from .layers import q8

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
    #: how samples go into the device's sample buffer: "f32", "i16", "i8", "u8"; None picks
    #: u8 for a dataset with an exact u8 grid (ds.quant), else i16 (see sample_encoding)
    encoding: str | None = None
    #: use the device-side sample buffer when the device has it (Cap.SAMPLE_BUFFER)
    use_buffer: bool = True
    #: how often a dropped link (or a reset device) is reconnected and the epoch resumed
    #: from the last batch the device applied (train_batches); 0 = give up at once
    reconnects: int = 3
    #: the device's loss-spike guard (Device.set_guard): roll back a step whose loss is above
    #: this factor x the mean of the recent ones; 0 = off (NaN/Inf are always rolled back)
    spike_k: float = 0.0

    @property
    def batch(self) -> int:
        return self.train.batch


def prepare_program(opts: StreamOptions, ds: Dataset, hello: Hello) -> tuple[Program, bytes]:
    spec, params = resolve_model(opts.model, opts.seed, tuple(ds.input_shape), ds.classes)
    if int(np.prod(spec.input)) != ds.features or spec.classes != ds.classes:
        raise UsageError(f"model {spec.name} takes {spec.input} → {spec.classes} classes; "
                         f"dataset {ds.name} has {ds.features} features and {ds.classes} classes")
    # a sparse strategy chooses its channels on this calibration set, within the device's arena
    cfg = sparse.configure(spec, params, opts.train, ds, hello.arena_bytes)
    prog = compile_model(spec, params, cfg, arena_limit=hello.arena_bytes, l3_limit=hello.l3_bytes)
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


def sample_encoding(ds: Dataset, requested: str | None) -> str:
    """The sample-buffer encoding: `requested`, or u8 where the dataset has an exact u8
    grid, else i16 (quantisation error at most 1/65534 of each channel's range)."""
    if requested is None:
        return "u8" if ds.quant is not None else "i16"
    if requested not in BUFFER_ENCODINGS:
        raise UsageError(f"encoding {requested!r}: choose one of {', '.join(BUFFER_ENCODINGS)}")
    return requested


def _channels(ds: Dataset) -> int:
    """Affine channels of a sample: every axis but the last ([1, C, T] → C); 1 if flat or
    too many for one BUF_BEGIN frame."""
    shape = tuple(ds.input_shape)
    c = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return c if c <= 510 else 1


@dataclass
class BufferPlan:
    """What the session put into the device's sample buffer: the calibration split at
    indices [0, n_train) and, if it fitted, the held-out split at [n_train, n_train + n_test)."""

    encoding: str
    bytes_per_sample: int
    n_train: int
    n_test: int
    info: dict

    @property
    def has_test(self) -> bool:
        return self.n_test > 0


def build_buffer(ds: Dataset, encoding: str, with_test: bool) -> SampleBuffer:
    """The calibration split (and the held-out one after it), encoded for the sample buffer.
    An affine scale spans each channel's range over the samples uploaded: nothing is clipped."""
    x, y = ds.x_train, ds.y_train
    if with_test:
        x, y = np.concatenate([x, ds.x_test]), np.concatenate([y, ds.y_test])
    quant = ds.quant if encoding == "u8" else None
    return SampleBuffer.from_arrays(x, y, encoding, channels=_channels(ds), quant=quant)


def upload_samples(device: Device, hello: Hello, ds: Dataset, prog: Program, encoding: str,
                   on_event: Event) -> BufferPlan | None:
    """Put the calibration split (and the held-out split, when both fit) into the device's
    sample buffer, once. None when the device has no buffer or not even the calibration
    split fits: the session then streams every batch as before."""
    if Cap.SAMPLE_BUFFER not in hello.caps or not len(ds.y_train) or len(ds.y_train) > 0xFFFF:
        return None
    free = hello.arena_bytes - (prog.plan.arena_bytes + 7) // 8 * 8
    for with_test in (True, False):
        if with_test and (not len(ds.y_test) or len(ds.y_train) + len(ds.y_test) > 0xFFFF):
            continue
        buf = build_buffer(ds, encoding, with_test)
        if buffer_bytes(buf.count, buf.elems, buf.encoding, buf.channels) > free:
            continue
        n_test = len(ds.y_test) if with_test else 0
        t0 = time.monotonic()
        meta = {"encoding": encoding, "samples": buf.count, "train": len(ds.y_train), "test": n_test,
                "bytes_per_sample": buf.bytes_per_sample}
        try:
            info = device.upload_buffer(buf, progress=lambda sent, total: on_event(
                "buffer", {**meta, "sent": sent, "total": total, "seconds": time.monotonic() - t0}))
        except DeviceError as e:
            if e.status == Status.TOO_LARGE:
                continue  # the device counts its arena otherwise: try the smaller buffer
            raise
        info = {**meta, **info, "seconds": round(time.monotonic() - t0, 3)}
        on_event("buffered", info)
        return BufferPlan(encoding, buf.bytes_per_sample, len(ds.y_train), n_test, info)
    on_event("buffer_skipped", {"encoding": encoding, "free_bytes": free,
                                "reason": "the calibration split does not fit the arena beyond the model"})
    return None


def evaluate(device: Device, ds: Dataset, batch: int, buffer_offset: int | None = None) -> dict:
    """Evaluate the held-out split. The samples go in class-homogeneous batches (grouped by
    label, each group cut into batches of `batch`), so the device's per-batch `correct`
    gives the accuracy of each class with no protocol change; loss and accuracy over the
    whole split are the same as with mixed batches. `per_class[c]` is None for a class
    with no held-out sample. With `buffer_offset`, the held-out samples are in the device's
    sample buffer from that index on, and only their indices travel (EVAL_BUF)."""
    loss_sum, correct, n, cycles = 0.0, 0, 0, 0
    c_correct = np.zeros(ds.classes, np.int64)
    c_n = np.zeros(ds.classes, np.int64)
    for label in np.unique(ds.y_test):
        idx = np.flatnonzero(ds.y_test == label)
        for s in range(0, len(idx), batch):
            sel = idx[s:s + batch]
            if buffer_offset is not None:
                r = device.evaluate_buffered(sel + buffer_offset)
            else:
                r = device.evaluate(Batch.from_arrays(ds.x_test[sel], ds.y_test[sel], ds.quant))
            loss_sum += r.loss * r.n
            correct += r.correct
            n += r.n
            cycles += r.cycles
            if 0 <= label < ds.classes:
                c_correct[label] += r.correct
                c_n[label] += r.n
    per_class = [float(c_correct[c] / c_n[c]) if c_n[c] else None for c in range(ds.classes)]
    return {"loss": loss_sum / n if n else None, "accuracy": correct / n if n else None, "n": n,
            "cycles": cycles, "per_class": per_class, "per_class_n": [int(v) for v in c_n]}


def train_batches(device: Device, batches: list, *, buffered: bool, model_crc: int, reconnects: int = 3,
                  on_reset: Callable[[Hello], None] | None = None, on_event: Event = lambda kind, data: None
                  ) -> Iterator[tuple[int, StepResult | RolledBack]]:
    """Train on `batches` in order (index lists if `buffered`, else Batch objects) so that each is
    applied once, whatever happens to the link; yields (index, StepResult) per applied batch, or
    (index, RolledBack) for a step the device's guards rejected (the run goes on with the next).

    Lost frames are retried by the link (same request id: never applied twice). When the link
    itself drops, or the device resets, the device is reopened (up to `reconnects` times), its
    HELLO must show the same model, and the batches resume from its step count: a device that
    lost the link resumes after the last batch it applied; one that was reset comes back at its
    last checkpoint and the batches since are replayed (`on_reset(hello)` first, e.g. to upload
    the sample buffer again). A device back before this list began cannot resume: LinkError.
    """
    step0 = device.stats()["steps"]  # the device's step count before batches[0]
    i = 0
    while i < len(batches):
        try:
            r = device.train_buffered(batches[i]) if buffered else device.train(batches[i])
        except RolledBack as e:
            step0 = device.stats()["steps"] - (i + 1)  # the device went back to its checkpoint
            yield i, e
            i += 1
            continue
        except LinkError as e:
            if reconnects <= 0:
                raise
            reconnects -= 1
            on_event("reconnect", {"batch": i, "reason": str(e)})
            try:
                hello = device.reopen()
                device.require_model(hello, model_crc)
                if NvFlag.MODEL_RESTORED in hello.nv_flags and on_reset is not None:
                    on_reset(hello)
                done = hello.steps - step0
                if not 0 <= done <= len(batches):
                    raise DeviceError(f"the device is at step {hello.steps}, before this epoch "
                                      f"(which began at step {step0}): it was reset to an older checkpoint")
            except (LinkError, DeviceError) as why:
                # the run stops as a dead link does (an interrupted record), saying why it could not go on
                raise LinkError(f"{e} (resuming failed: {why})", hint=getattr(why, "hint", None)) from why
            on_event("resumed", {"batch": done, "step": hello.steps, "ckpt_seq": hello.ckpt_seq})
            i = done
            continue
        yield i, r
        i += 1


def training_strategy(cfg: TrainConfig) -> str:
    """The strategy's name (host.strategies), or "layers=a,b" for TrainConfig.train_layers."""
    return cfg.strategy if cfg.train_layers is None else "layers=" + ",".join(cfg.train_layers)


def trained_layer_names(prog, cfg: TrainConfig) -> list[str] | None:
    """The layers that train (None: all), from the compiled program where there is one."""
    if cfg.train_layers is None and cfg.strategy == "full":
        return None
    if prog is None:
        return list(cfg.train_layers or [])
    names = [prog.graph.tensors[i].name.split(".", 1)[0] for i in prog.graph.trainable]
    return list(dict.fromkeys(names))


def training_dtype(cfg: TrainConfig) -> str:
    """The arithmetic the device trains in: fp32 unless the config says otherwise."""
    return str(getattr(cfg, "dtype", None) or "fp32")


def stream(device: Device, hello: Hello, ds: Dataset, opts: StreamOptions, record: RunRecord,
           on_event: Event = lambda kind, data: None) -> dict:
    """Run one session and record it in `record`; returns the summary (also summary.json).

    summary.json is rewritten after every evaluation (status "running"), so even a killed
    process leaves a valid one; at the end its status is "completed", "interrupted"
    (Ctrl-C, or the link died: LinkError) or "failed" (any other error, with the reason),
    it holds everything measured so far, and the plots of host/plots.py are written next
    to it. Interruptions and errors are re-raised after the record is written.
    """
    link = device.link
    sent0, received0 = getattr(link, "bytes_sent", 0), getattr(link, "bytes_received", 0)
    t_start = time.monotonic()
    prog: Program | None = None
    blob: bytes | None = None
    flashed: bool | None = None
    samples = 0
    train_cycles = 0
    step = 0
    evals: list[dict] = []
    trains: list[dict] = []
    rollbacks: list[dict] = []  # TRAIN steps the device's guards rejected
    epoch_losses: list[float] = []
    plan: BufferPlan | None = None
    # without the sample buffer, batches travel as Batch.from_arrays sends them
    direct_encoding = "u8" if ds.quant is not None else "f32"
    direct_bps = ds.features * (1 if ds.quant is not None else 4) + 1
    class_names = [str(c) for c in ds.class_names] if len(ds.class_names) == ds.classes \
        else [str(c) for c in range(ds.classes)]

    def eval_record(epoch: int) -> dict:
        ev = evaluate(device, ds, opts.batch, plan.n_train if plan is not None and plan.has_test else None)
        rec = {"kind": "eval", "epoch": epoch, "step": step, "samples": samples, **ev,
               "time_s": round(time.monotonic() - t_start, 3)}
        record.log(rec)
        evals.append(rec)  # before the event: a callback that interrupts does not lose it
        on_event("eval", rec)
        return rec

    def summary(status: str, t_end: float | None = None, **extra) -> dict:
        elapsed = (time.monotonic() if t_end is None else t_end) - t_start
        before = evals[0] if evals else None
        trained = [e for e in evals[1:] if e["epoch"] >= 1]
        after = trained[-1] if trained else (evals[-1] if status == "completed" and evals else None)
        sent = getattr(link, "bytes_sent", 0) - sent0
        received = getattr(link, "bytes_received", 0) - received0
        out = {
            "status": status, "board": hello.board, "firmware": hello.firmware,
            "model": prog.spec.name if prog is not None else opts.model,
            "model_crc": f"{blob_crc(blob):08x}" if blob is not None else None,
            "blob_bytes": len(blob) if blob is not None else None, "flashed": flashed,
            "dataset": ds.name, "classes": ds.classes, "class_names": class_names,
            "train_samples": len(ds.y_train), "test_samples": len(ds.y_test),
            "strategy": training_strategy(opts.train), "dtype": training_dtype(opts.train),
            "train_layers": trained_layer_names(prog, opts.train),
            "epochs": opts.epochs, "epochs_completed": len(epoch_losses), "batch": opts.batch,
            "lr": opts.train.lr, "weight_decay": opts.train.weight_decay, "optimizer": opts.train.optimizer,
            "seed": opts.seed, "steps": step, "samples": samples, "samples_trained": samples,
            "epoch_train_loss": epoch_losses,
            "initial_eval": {k: before[k] for k in ("loss", "accuracy")} if before else None,
            "final_eval": {k: evals[-1][k] for k in ("loss", "accuracy")} if evals else None,
            "accuracy_before": before["accuracy"] if before else None,
            "accuracy_after": after["accuracy"] if after else None,
            "loss_before": before["loss"] if before else None,
            "loss_after": after["loss"] if after else None,
            "per_class_before": before["per_class"] if before else None,
            "per_class_after": after["per_class"] if after else None,
            "per_class_n": before["per_class_n"] if before else None,
            "bytes_sent": sent, "bytes_received": received, "bytes_on_wire": sent + received,
            "cycles_per_sample": train_cycles / samples if samples else None,
            "samples_per_s": samples / elapsed if elapsed > 0 else None,
            "seconds": round(elapsed, 3), "arena_bytes": prog.plan.arena_bytes if prog is not None else None,
            "encoding": plan.encoding if plan is not None else direct_encoding,
            "bytes_per_sample": plan.bytes_per_sample if plan is not None else direct_bps,
            "sample_buffer": plan.info if plan is not None else None,
            "rollbacks": len(rollbacks), "rollback_reasons": [r["reason"] for r in rollbacks],
            "run_dir": str(record.path), **extra,
        }
        record.save_summary(out)
        return out

    def finish(status: str, **extra) -> dict:
        """The final summary, then the plots (with what exists), then the summary naming them."""
        t_end = time.monotonic()  # the session's time, without the plotting
        summary(status, t_end, **extra)  # on disk first: a plot that fails or hangs costs nothing
        try:
            written = write_plots(record.path, trains, evals, class_names)
            plots = {"plots": [p.name for p in written]}
        except Exception as e:  # noqa: BLE001 — a plot never costs the run record
            plots = {"plots": [], "plots_error": f"{type(e).__name__}: {e}"}
        return summary(status, t_end, **extra, **plots)

    try:
        summary("running")
        prog, blob = prepare_program(opts, ds, hello)
        flashed = ensure_model(device, hello, blob, opts.reflash, on_event)
        if opts.use_buffer:
            encoding = sample_encoding(ds, opts.encoding)
            plan = upload_samples(device, hello, ds, prog, encoding, on_event)
            if plan is not None:
                record.log({"kind": "buffer", **plan.info, "time_s": round(time.monotonic() - t_start, 3)})
        rng = np.random.default_rng(opts.seed)
        if opts.spike_k and Cap.GUARDS in hello.caps:
            device.set_guard(opts.spike_k)
        eval_record(0)
        summary("running")

        def upload_again(h: Hello) -> None:
            nonlocal plan
            if plan is not None:  # a reset device lost its sample buffer (RAM)
                plan = upload_samples(device, h, ds, prog, plan.encoding, on_event)
                if plan is None:
                    raise LinkError("the reset device no longer takes the sample buffer")

        for epoch in range(1, opts.epochs + 1):
            losses = []
            order = rng.permutation(len(ds.y_train))
            sels = [order[s:s + opts.batch] for s in range(0, len(order), opts.batch)]
            # the samples are on the device: only indices travel
            batches = sels if plan is not None else \
                [Batch.from_arrays(ds.x_train[sel], ds.y_train[sel], ds.quant) for sel in sels]
            t0 = time.monotonic()
            for _, r in train_batches(device, batches, buffered=plan is not None, model_crc=blob_crc(blob),
                                      reconnects=opts.reconnects, on_reset=upload_again, on_event=on_event):
                if isinstance(r, RolledBack):
                    rec = {"kind": "rollback", "epoch": epoch, "rolled_back": r.rolled_back, "reason": str(r),
                           "time_s": round(time.monotonic() - t_start, 3)}
                    record.log(rec)
                    rollbacks.append(rec)
                    on_event("rollback", rec)
                    t0 = time.monotonic()
                    continue
                dt = time.monotonic() - t0
                t0 = time.monotonic()
                samples += r.n
                train_cycles += r.cycles
                step = r.step
                losses.append(r.loss)
                rec = {"kind": "train", "epoch": epoch, "step": r.step, "loss": r.loss, "n": r.n,
                       "correct": r.correct, "samples": samples, "cycles": r.cycles,
                       "cycles_per_sample": r.cycles / r.n, "samples_per_s": r.n / dt if dt > 0 else None,
                       "time_s": round(time.monotonic() - t_start, 3)}
                record.log(rec)
                trains.append(rec)
                on_event("train", rec)
            epoch_losses.append(float(np.mean(losses)) if losses else float("nan"))
            eval_record(epoch)
            summary("running")
        values = device.read_params(prog)
        # int8 layers trained in place (SGD_Q8) exist only as codes: add their f32 values
        weights_path = record.save_weights({**values, **q8.dequantized(prog, values)})
    except (KeyboardInterrupt, SystemExit) as e:
        # Ctrl-C: what was measured so far stays on disk; the device keeps the weights it trained
        finish("interrupted", reason=type(e).__name__)
        raise
    except LinkError as e:
        # the link died (unplugged, board reset, timeouts): the same, with the reason
        finish("interrupted", reason=f"{type(e).__name__}: {e}")
        raise
    except BaseException as e:
        finish("failed", reason=f"{type(e).__name__}: {e}", error=f"{type(e).__name__}: {e}")
        raise
    return finish("completed", weights=weights_path.name)
