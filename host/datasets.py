"""Datasets the host streams to a device. Everything is local: nothing downloads.

Each dataset gives a train split (streamed for on-device training) and a
held-out test split (evaluated on the device, never trained on), plus the u8
encoding that carries its samples compactly over the slow serial link.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import UsageError


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    x_train: np.ndarray  # [n, features] float32
    y_train: np.ndarray  # [n] int
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    #: x = q * scale + zero with q in 0..255 represents every sample exactly
    quant: tuple[float, float] | None

    @property
    def features(self) -> int:
        return int(self.x_train.shape[1])

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "features": self.features,
                "classes": self.classes, "train": len(self.y_train), "test": len(self.y_test)}


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    """Stratified shuffle split: every class keeps its share in both parts."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.extend(idx[: int(round(len(idx) * test_fraction))])
    mask = np.zeros(len(y), bool)
    mask[test] = True
    train_idx = rng.permutation(np.flatnonzero(~mask))
    test_idx = np.flatnonzero(mask)
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def digits(seed: int = 0) -> Dataset:
    """scikit-learn's 8×8 handwritten digits (1797 real scans, UCI), pixels 0..16 → 0..1."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    xtr, ytr, xte, yte = _split(x, y, 0.2, seed)
    return Dataset("digits", "scikit-learn 8x8 handwritten digits (UCI), 10 classes",
                   xtr, ytr, xte, yte, 10, quant=(1 / 16, 0.0))


REGISTRY: dict[str, Callable[..., Dataset]] = {"digits": digits}


def load_dataset(name: str, seed: int = 0) -> Dataset:
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown dataset {name!r}; available: {', '.join(REGISTRY)}") from None
    return factory(seed=seed)
