"""Run records: `runs/<timestamp>/` with metrics.jsonl, summary.json, weights.npz and
the PNG plots (host/plots.py).

Every file is written so that a crash never leaves a corrupt one: metrics.jsonl
is appended a whole line at a time and flushed; summary.json and weights.npz
are written to a temporary name and renamed into place. A session rewrites
summary.json after every evaluation (status "running"), and at the end with
status "completed", "interrupted" or "failed" (host/session.py); `read_summary`
is the checked reader (`host compare`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .errors import EdgePropError, UsageError

#: bump when a field changes meaning; readers check it
RECORD_VERSION = 1


class RunRecordError(EdgePropError):
    """A run folder whose summary.json cannot be read (corrupt, not an object, too new)."""


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


def read_summary(run: Path | str) -> dict:
    """The summary.json of a run folder (or the file itself), checked: raises UsageError
    when there is none, RunRecordError when it is not valid JSON, not an object, or
    written by a newer record version. Messages name the folder."""
    path = Path(run)
    file = path if path.is_file() else path / "summary.json"
    if not path.exists():
        raise UsageError(f"{run}: no such run folder")
    if not file.is_file():
        raise UsageError(f"{run}: no summary.json in this folder (not a run folder, or a run that "
                         "never started)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise RunRecordError(f"{run}: summary.json is corrupt (not UTF-8 text: {e})") from None
    except json.JSONDecodeError as e:
        raise RunRecordError(f"{run}: summary.json is corrupt (invalid JSON at line {e.lineno}, "
                             f"column {e.colno}: {e.msg})") from None
    except OSError as e:
        raise RunRecordError(f"{run}: cannot read summary.json: {e}") from None
    if not isinstance(data, dict):
        raise RunRecordError(f"{run}: summary.json is corrupt (a JSON {type(data).__name__}, not an object)")
    version = data.get("version")
    if isinstance(version, int) and version > RECORD_VERSION:
        raise RunRecordError(f"{run}: summary.json has record version {version}; this host reads up to "
                             f"{RECORD_VERSION}", hint="update the host")
    return data
