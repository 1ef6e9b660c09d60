"""Upload a model's training blob to a device, verified by crc32.

Takes a built-in model (compiled on the fly for the device's arena) or a .epm
file from `host compile`. The device validates the blob before installing it;
a refused blob leaves the previous model working.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from ..blob import blob_crc, build_blob
from ..compiler import compile_model
from ..session import ensure_model, open_device
from .options import add_options, add_training_arguments, model_and_params, train_config

NAME = "flash"
HELP = "upload a model blob (weights + training graph) to the device"


def add_arguments(p) -> None:
    add_training_arguments(p)
    add_options(p, "port", "board", "emulate", "timeout", "json")
    p.add_argument("--blob", type=Path, help="a .epm file from `host compile` instead of --model")
    p.add_argument("--force", action="store_true", help="upload even if the device holds this model")


def run(args) -> int:
    c = Console(stderr=args.json)
    with open_device(args.port, args.board, args.emulate, args.timeout) as (dev, hello):
        if args.blob:
            blob = args.blob.read_bytes()
        else:
            spec, params = model_and_params(args)
            prog = compile_model(spec, params, train_config(args), arena_limit=hello.arena_bytes,
                                 l3_limit=hello.l3_bytes)
            blob = build_blob(prog)
        with Progress(console=c, transient=True, disable=args.json) as bar:
            task = bar.add_task(f"flashing {len(blob)} B to {hello.board}", total=len(blob))
            events = {}

            def on_event(kind, data):
                events[kind] = data
                if kind == "flash":
                    bar.update(task, completed=data["sent"])

            uploaded = ensure_model(dev, hello, blob, args.force, on_event)
    result = {"version": 1, "board": hello.board, "model_crc": f"{blob_crc(blob):08x}",
              "bytes": len(blob), "uploaded": uploaded}
    if uploaded:
        result["seconds"] = round(events["flashed"]["seconds"], 3)
        result["arena_used"] = events["flashed"]["arena_used"]
    if args.json:
        print(json.dumps(result))
    elif uploaded:
        c.print(f"flashed {len(blob)} B to {hello.board} in {result['seconds']:.1f} s; "
                f"model {result['model_crc']}, arena {result['arena_used']} B", highlight=False)
    else:
        c.print(f"{hello.board} already holds model {result['model_crc']} (use --force to upload again)",
                highlight=False)
    return 0
