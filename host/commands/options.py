"""The one registry of options shared by subcommands (pyOCD's options shape):
each is defined once here and added by the subcommands that take it."""

from __future__ import annotations

import argparse

from ..compiler import TrainConfig

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
    p.add_argument("-m", "--model", default="mlp-digits", help="built-in model name or a .json model file")
    p.add_argument("--batch", type=int, default=TrainConfig.batch, help="batch size (samples per TRAIN request)")
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="SGD learning rate")
    p.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay, help="SGD weight decay")
    p.add_argument("--seed", type=int, default=0, help="seed for initial weights and data order")
