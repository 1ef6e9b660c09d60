"""Run records: `runs/<timestamp>/` with metrics.jsonl, summary.json and weights.npz.

Every file is written so that a crash never leaves a corrupt one: metrics.jsonl
is appended a whole line at a time and flushed; summary.json and weights.npz
are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

#: bump when a field changes meaning; readers check it
RECORD_VERSION = 1


class RunRecord:
    def __init__(self, root: Path | str = "runs", name: str | None = None):
        stamp = name or time.strftime("%Y%m%d-%H%M%S")
        base = Path(root) / stamp
        path, k = base, 1
        while path.exists():  # two runs in the same second
            path, k = Path(f"{base}-{k}"), k + 1
        path.mkdir(parents=True)
        self.path = path
        self._metrics = open(path / "metrics.jsonl", "a", encoding="utf-8")

    def log(self, record: dict) -> None:
        self._metrics.write(json.dumps(record, sort_keys=True) + "\n")
        self._metrics.flush()

    def save_summary(self, summary: dict) -> Path:
        return self._atomic("summary.json", (json.dumps({"version": RECORD_VERSION, **summary},
                                                        indent=2, sort_keys=True) + "\n").encode())

    def save_weights(self, weights: dict[str, np.ndarray]) -> Path:
        tmp = self.path / ".weights.npz.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **weights)
            f.flush()
            os.fsync(f.fileno())
        final = self.path / "weights.npz"
        os.replace(tmp, final)
        return final

    def _atomic(self, name: str, data: bytes) -> Path:
        tmp = self.path / f".{name}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        final = self.path / name
        os.replace(tmp, final)
        return final

    def close(self) -> None:
        self._metrics.close()
