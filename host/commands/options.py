"""The one registry of options shared by subcommands (pyOCD's options shape):
each is defined once here and added by the subcommands that take it."""

from __future__ import annotations

import argparse

from ..compiler import DTYPES, INT8_SUMS, INT8_UPDATES, OPTIMIZERS, TrainConfig
from ..importer import resolve_model

OPTIONS = {
    "port": (("-p", "--port"), dict(metavar="URL", help="serial port: /dev/ttyACM0, socket://HOST:PORT, fake://; "
                                     "default: the board `make flash` started")),
    "board": (("-b", "--board"), dict(help="board name (see `host boards`)")),
    "emulate": (("--emulate",), dict(action="store_true",
                                     help="boot a private emulated --board for this command")),
    "timeout": (("--timeout",), dict(type=float, default=5.0, help="seconds to wait for each answer")),
    "json": (("--json",), dict(action="store_true", help="print machine-readable JSON on stdout")),
}


def add_options(parser: argparse.ArgumentParser, *names: str) -> None:
    for name in names:
        flags, kw = OPTIONS[name]
        parser.add_argument(*flags, **kw)


def add_training_arguments(p) -> None:
    """Model and optimiser options shared by compile, flash and stream."""
    p.add_argument("-m", "--model", default="mlp-digits",
                   help="built-in model name, a .json description, a PyTorch module as file.py:factory, "
                        "or an .onnx file")
    p.add_argument("--input-shape", type=_shape, metavar="C,H,W",
                   help="per-sample input shape of a file.py:factory model (e.g. 1,22,128)")
    p.add_argument("--classes", type=int, help="number of classes of a file.py:factory model")
    p.add_argument("--batch", type=int, default=TrainConfig.batch, help="batch size (samples per TRAIN request)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=TrainConfig.optimizer, help="optimizer")
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="learning rate")
    p.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay, help="weight decay")
    p.add_argument("--accumulate", type=int, default=1, metavar="K",
                   help="gradient accumulation: one optimizer step per K batches (default 1)")
    p.add_argument("--clip-norm", type=float, default=0.0, metavar="MAX",
                   help="clip the gradient's global L2 norm to MAX (default 0: off)")
    p.add_argument("--strategy", default="full", metavar="S",
                   help="what trains: full (default), last (the last layer with parameters), "
                        "layers=NAME,... (or indices), bias (biases only), sparse[=RATIO] (the channels "
                        "that matter most on the calibration data, within RATIO of full backprop's "
                        "backward MACs; default 0.25), lora=RANK (low-rank adapters on linear and 1x1 "
                        "conv layers); layers before the first trained one run forward only")
    p.add_argument("--dtype", choices=DTYPES, default="fp32",
                   help="arithmetic: fp32 (default); int8 (linear/conv/relu in int8 forward and backward, "
                        "f32 master weights for what trains); mixed (int8 for frozen layers that run "
                        "forward only, fp32 where anything trains)")
    p.add_argument("--int8-updates", choices=INT8_UPDATES, default="auto",
                   help="with --dtype int8, how trained int8 layers update: master (f32 master weights, any "
                        "optimizer), sr (the int8 codes in place, SGD with stochastic rounding: no f32 copy, "
                        "plain SGD only), auto (default: master, or sr when only that fits the board)")
    p.add_argument("--int8-sums", choices=INT8_SUMS, default="auto",
                   help="with --dtype int8/mixed, how int8 convs hold their int32 sums: batch (fastest), "
                        "sample (one sample's at a time, made twice: less memory, twice those MACs), auto "
                        "(default: batch, or sample when only that fits the board)")
    p.add_argument("--seed", type=int, default=0, help="seed for initial weights and data order")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: want comma-separated integers, e.g. 1,22,128") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every dimension must be ≥ 1")
    return shape


def train_config(args) -> TrainConfig:
    return TrainConfig(batch=args.batch, lr=args.lr, weight_decay=args.weight_decay,
                       optimizer=args.optimizer, strategy=args.strategy,
                       accumulate=args.accumulate, clip_norm=args.clip_norm, dtype=args.dtype,
                       int8_updates=args.int8_updates, int8_sums=args.int8_sums)


def compile_config(args, spec, params, arena_limit: int | None) -> TrainConfig:
    """train_config(args), with a sparse strategy's channels chosen on --dataset (or the
    model's own dataset) within the board's arena."""
    from ..sparse import configure

    return configure(spec, params, train_config(args), getattr(args, "dataset", None), arena_limit)


def model_and_params(args):
    """(spec, initial params) of --model (see host.importer.resolve_model)."""
    return resolve_model(args.model, args.seed, args.input_shape, args.classes)
