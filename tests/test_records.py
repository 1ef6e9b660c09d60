"""Run records as a user gets them: summary.json (the fields `host compare` and the
reports read), the PNG plots, a valid record after Ctrl-C or a dead link, and
`host compare` over run folders. Everything runs on the fake device (digits, mlp-digits)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from host import cli
from host.commands import compare_cmd
from host.datasets import load_dataset
from host.device import Device
from host.errors import LinkError
from host.link import Link
from host.runrecord import RunRecord
from host.session import StreamOptions, stream

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("loss.png", "accuracy.png", "per_class.png")


@pytest.fixture
def main(monkeypatch):
    """host.cli.main with `compare` registered (whether or not host/commands/__init__.py has it yet)."""
    if compare_cmd not in cli.ALL:
        monkeypatch.setattr(cli, "ALL", [*cli.ALL, compare_cmd])
    return cli.main


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def stream_cli(main, capsys, runs: Path, *extra: str) -> dict:
    code = main(["stream", "--port", "fake://", "--dataset", "digits", "--epochs", "1",
                 "--runs-dir", str(runs), "--json", *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def run_dir_of(summary: dict) -> Path:
    return Path(summary["run_dir"])


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def assert_pngs(run_dir: Path, names=PLOTS) -> None:
    for name in names:
        png = run_dir / name
        assert png.is_file(), name
        data = png.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 1000, name
    assert not list(run_dir.glob(".*.tmp")), "temporary files left behind"


def test_summary_holds_every_field_and_the_plots(main, capsys, tmp_path, digits):
    printed = stream_cli(main, capsys, tmp_path, "--epochs", "2")
    run_dir = run_dir_of(printed)
    s = read_summary(run_dir)
    assert s["version"] == 1
    assert {k: v for k, v in s.items() if k != "version"} == printed
    assert s["status"] == "completed"
    assert (s["dataset"], s["model"], s["board"]) == ("digits", "mlp-digits", "fake")
    assert (s["strategy"], s["dtype"]) == ("full", "fp32")
    for k in ("accuracy_before", "accuracy_after"):
        assert isinstance(s[k], float) and 0.0 <= s[k] <= 1.0, k
    assert s["accuracy_after"] > s["accuracy_before"] and s["accuracy_after"] > 0.5
    assert s["accuracy_before"] == s["initial_eval"]["accuracy"]
    assert s["accuracy_after"] == s["final_eval"]["accuracy"]
    assert isinstance(s["samples_trained"], int) and s["samples_trained"] == 2 * len(digits.y_train)
    # the byte counter of the link: everything sent (flash, batches, reads) and received
    assert isinstance(s["bytes_on_wire"], int) and s["bytes_on_wire"] > 0
    assert s["bytes_on_wire"] == s["bytes_sent"] + s["bytes_received"]
    assert s["bytes_sent"] > s["blob_bytes"] + 4 * digits.x_train.size // 16  # the blob and u8 batches at least
    assert s["bytes_received"] > 0
    # per class: one entry per class of the dataset, consistent with the overall accuracy
    counts = [int((digits.y_test == c).sum()) for c in range(digits.classes)]
    assert s["per_class_n"] == counts and s["class_names"] == list(digits.class_names)
    for key, overall in (("per_class_before", "accuracy_before"), ("per_class_after", "accuracy_after")):
        per = s[key]
        assert isinstance(per, list) and len(per) == digits.classes, key
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in per), key
        weighted = sum(v * n for v, n in zip(per, counts)) / sum(counts)
        assert math.isclose(weighted, s[overall], abs_tol=1e-9), key
    assert "reason" not in s and s["weights"] == "weights.npz"
    assert s["plots"] == list(PLOTS)
    assert_pngs(run_dir)
    # every evaluation in metrics.jsonl carries its per-class accuracy too
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert [e["epoch"] for e in evals] == [0, 1, 2] and evals[-1]["per_class"] == s["per_class_after"]


def test_strategy_names_the_trained_layers(main, capsys, tmp_path):
    s = stream_cli(main, capsys, tmp_path, "--strategy", "layers=fc2")
    assert s["strategy"] == "layers=fc2" and s["train_layers"] == ["fc2"] and s["status"] == "completed"


@pytest.mark.parametrize("strategy", ["bias", "sparse", "lora=2"])
def test_every_strategy_streams_on_the_fake_device(main, capsys, tmp_path, strategy):
    s = stream_cli(main, capsys, tmp_path, "--strategy", strategy)
    assert s["strategy"] == strategy and s["status"] == "completed" and s["train_layers"]
    with np.load(run_dir_of(s) / "weights.npz") as w:
        assert any(".lora_" in k for k in w.files) == strategy.startswith("lora")


def test_merge_lora_writes_a_plain_model(main, capsys, tmp_path):
    s = stream_cli(main, capsys, tmp_path, "--strategy", "lora=2")
    assert main(["merge-lora", str(run_dir_of(s))]) == 0
    with np.load(run_dir_of(s) / "weights_merged.npz") as w:
        assert w.files and not any(".lora_" in k for k in w.files)
    assert main(["merge-lora", str(tmp_path / "nowhere")]) == 2
    assert "no such weights file" in capsys.readouterr().err


def _session(tmp_path, digits, on_event, epochs=3):
    """A session on the fake, driven directly (the CLI drives the same function)."""
    record = RunRecord(tmp_path)
    with Link.open("fake://") as link:
        dev = Device(link)
        try:
            stream(dev, dev.hello(), digits, StreamOptions(epochs=epochs), record, on_event)
        finally:
            record.close()
    return record.path


def test_ctrl_c_after_the_first_epoch_leaves_a_valid_record(tmp_path, digits):
    def on_event(kind, data):
        if kind == "eval" and data["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _session(tmp_path, digits, on_event)
    (run_dir,) = tmp_path.iterdir()
    s = read_summary(run_dir)
    assert s["status"] == "interrupted" and s["reason"] == "KeyboardInterrupt"
    # everything measured before the interruption: the eval that was being reported included
    assert s["samples_trained"] == len(digits.y_train) and s["epochs_completed"] == 1
    assert 0.0 <= s["accuracy_before"] <= 1.0 and 0.5 < s["accuracy_after"] <= 1.0
    assert len(s["per_class_before"]) == len(s["per_class_after"]) == digits.classes
    assert s["bytes_on_wire"] == s["bytes_sent"] + s["bytes_received"] > 0
    assert "weights" not in s and not (run_dir / "weights.npz").exists()
    assert s["plots"] == list(PLOTS)
    assert_pngs(run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "eval"] == [0, 1]


def test_a_dead_link_leaves_an_interrupted_record(tmp_path, digits):
    trained = []

    def on_event(kind, data):
        if kind == "train":
            trained.append(data)
            if len(trained) == 5:
                dev_link.port.close()  # the cable is pulled: the next write fails

    record = RunRecord(tmp_path)
    with Link.open("fake://") as dev_link:
        dev = Device(dev_link)
        with pytest.raises(LinkError):
            stream(dev, dev.hello(), digits, StreamOptions(epochs=2), record, on_event)
    record.close()
    s = read_summary(record.path)
    assert s["status"] == "interrupted" and s["reason"].startswith("LinkError: serial link lost")
    assert s["samples_trained"] == trained[-1]["samples"] == 5 * 32
    assert s["accuracy_before"] is not None and s["accuracy_after"] is None and s["per_class_after"] is None
    assert len(s["per_class_before"]) == digits.classes and s["bytes_on_wire"] > 0
    # what exists is plotted: the losses and the one evaluation (per-class: before only)
    assert s["plots"] == list(PLOTS)
    assert_pngs(record.path)


def test_ctrl_c_in_the_cli_exits_130_and_names_the_record(main, capsys, tmp_path, monkeypatch):
    from host.commands import stream_cmd

    real = stream_cmd.stream

    def interrupted(dev, hello, ds, opts, record, on_event=lambda k, d: None):
        def ev(kind, data):
            on_event(kind, data)
            if kind == "train" and data["step"] == 3:
                raise KeyboardInterrupt
        return real(dev, hello, ds, opts, record, ev)

    monkeypatch.setattr(stream_cmd, "stream", interrupted)
    code = main(["stream", "--port", "fake://", "--epochs", "1", "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err.replace("\n", "")  # rich wraps long paths
    assert code == 130
    (run_dir,) = tmp_path.iterdir()
    assert "interrupted: run record so far in" in err and run_dir.name in err
    s = read_summary(run_dir)
    assert s["status"] == "interrupted" and s["samples_trained"] == 3 * 32 and s["accuracy_after"] is None


def test_compare_two_runs(main, capsys, tmp_path):
    a = run_dir_of(stream_cli(main, capsys, tmp_path, "--lr", "0.5"))
    b = run_dir_of(stream_cli(main, capsys, tmp_path, "--lr", "0.05", "--strategy", "layers=fc2"))
    assert main(["compare", str(b), str(a)]) == 0
    out = capsys.readouterr().out
    assert a.name in out and b.name in out
    assert "0.5" in out and "0.05" in out and "layers=fc2" in out and "completed" in out
    assert "digits" in out and "mlp-digits" in out and "→" in out

    assert main(["compare", str(b), str(a), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert isinstance(rows, list) and len(rows) == 2
    # sorted by dataset, then strategy: "full" before "layers=fc2"
    assert [r["run"] for r in rows] == [str(a), str(b)]
    assert [r["lr"] for r in rows] == [0.5, 0.05]
    for r in rows:
        assert {"dataset", "model", "board", "strategy", "dtype", "accuracy_before", "accuracy_after",
                "samples_trained", "bytes_on_wire", "status"} <= r.keys()
        assert r["status"] == "completed" and r["bytes_on_wire"] > 0


def test_compare_names_a_folder_without_summary(main, capsys, tmp_path):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    code = main(["compare", str(empty)])
    err = capsys.readouterr().err.replace("\n", "")  # rich wraps long paths
    assert code != 0 and "not-a-run" in err and "summary.json" in err

    assert main(["compare", str(tmp_path / "missing"), "--json"]) != 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "error" and "missing" in out["message"]


def test_compare_says_a_summary_is_corrupt(main, capsys, tmp_path):
    good = run_dir_of(stream_cli(main, capsys, tmp_path))
    bad = tmp_path / "broken-run"
    bad.mkdir()
    (bad / "summary.json").write_text('{"status": "completed", "dataset": ')
    code = main(["compare", str(good), str(bad)])
    err = capsys.readouterr().err.replace("\n", "")  # rich wraps long paths
    assert code != 0 and "broken-run" in err and "corrupt" in err and "Traceback" not in err
    (bad / "summary.json").write_text("[1, 2]")
    assert main(["compare", str(bad)]) != 0
    assert "corrupt" in capsys.readouterr().err


def test_compare_reads_a_record_from_before_these_fields(main, capsys, tmp_path):
    old = tmp_path / "old-run"
    old.mkdir()
    (old / "summary.json").write_text(json.dumps({
        "version": 1, "status": "ok", "board": "fake", "model": "mlp-digits", "dataset": "digits",
        "samples": 1438, "lr": 0.5, "initial_eval": {"loss": 2.3, "accuracy": 0.1},
        "final_eval": {"loss": 0.6, "accuracy": 0.83}}))
    assert main(["compare", str(old), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["accuracy_before"] == 0.1 and row["accuracy_after"] == 0.83 and row["samples_trained"] == 1438
    assert row["bytes_on_wire"] is None
    assert main(["compare", str(old)]) == 0
    assert "old-run" in capsys.readouterr().out


def test_plots_redraw_from_a_run_folder(main, capsys, tmp_path):
    from host.plots import plot_run

    run_dir = run_dir_of(stream_cli(main, capsys, tmp_path))
    for name in PLOTS:
        (run_dir / name).unlink()
    assert [p.name for p in plot_run(run_dir)] == list(PLOTS)
    assert_pngs(run_dir)


def test_the_host_core_imports_without_matplotlib():
    import subprocess
    import sys

    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import host.session, host.plots, host.cli, host.runrecord\n"
            "assert 'matplotlib.figure' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_without_matplotlib_the_run_is_still_recorded(tmp_path, digits, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    run_dir = _session(tmp_path, digits, lambda k, d: None, epochs=1)
    s = read_summary(run_dir)
    assert s["status"] == "completed" and s["plots"] == [] and "matplotlib" in s["plots_error"]
    assert not list(run_dir.glob("*.png"))
