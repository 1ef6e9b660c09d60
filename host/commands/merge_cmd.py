"""Fold a LoRA run's trained adapters into its base weights (W += B·A).

    host merge-lora runs/20261123-101500/           → runs/.../weights_merged.npz

The result holds the model's own parameters only: it loads as a plain model
(`--model`'s weights, host.zoo.load_weights, PyTorch via host.importer.to_torch)
with no adapters left to compute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console

from ..errors import UsageError
from ..strategies import merge_lora

NAME = "merge-lora"
HELP = "fold a LoRA run's adapters into the base weights (weights_merged.npz)"


def add_arguments(p) -> None:
    p.add_argument("run", type=Path, help="a run folder (runs/<timestamp>/) or its weights.npz")
    p.add_argument("-o", "--output", type=Path, help="where to write (default: weights_merged.npz beside it)")


def run(args) -> int:
    src = args.run / "weights.npz" if args.run.is_dir() else args.run
    if not src.is_file():
        raise UsageError(f"{src}: no such weights file", hint="give a run folder written by host stream")
    with np.load(src) as f:
        params = {k: f[k] for k in f.files}
    adapters = sorted(k for k in params if k.endswith(".lora_A"))
    if not adapters:
        raise UsageError(f"{src} holds no LoRA adapters", hint="only runs with --strategy lora=RANK have them")
    out = args.output or src.with_name("weights_merged.npz")
    np.savez(out, **merge_lora(params))
    Console().print(f"merged {len(adapters)} adapters ({', '.join(a[:-7] for a in adapters)}) → {out}",
                    highlight=False)
    return 0
