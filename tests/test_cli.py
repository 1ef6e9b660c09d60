"""The `host` CLI as a user runs it: output, run records, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from host.cli import main
from host.errors import BoardError, LinkError, ModelError, UsageError


def run_json(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_stream_on_the_fake_device_writes_a_run_record(capsys, tmp_path):
    code, summary = run_json(capsys, "stream", "--port", "fake://", "--dataset", "digits", "--epochs", "2",
                             "--runs-dir", str(tmp_path), "--json")
    assert code == 0
    run_dir = tmp_path / summary["run_dir"].split("/")[-1]
    assert (run_dir / "summary.json").is_file() and (run_dir / "weights.npz").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["version"] == 1
    assert summary["status"] == "completed" and summary["weights"] == "weights.npz"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 3 and len(train) == 2 * -(-summary["train_samples"] // 32)
    for r in train:
        assert {"step", "loss", "samples", "cycles"} <= r.keys()
    assert [r["step"] for r in train] == list(range(1, len(train) + 1))
    assert train[-1]["samples"] == summary["samples"] == 2 * summary["train_samples"]
    assert summary["final_eval"]["loss"] < summary["initial_eval"]["loss"]
    assert summary["final_eval"]["accuracy"] > 0.5


def test_stream_human_output(capsys, tmp_path):
    assert main(["stream", "--port", "fake://", "--epochs", "1", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "on-device training" in out and "held-out accuracy" in out and "run record:" in out


def test_second_stream_keeps_the_model_the_device_holds(tmp_path):
    """The fake lives per connection, so check ensure_model directly on one device."""
    from host.device import Device
    from host.link import Link
    from host.session import StreamOptions, ensure_model, prepare_program
    from host.datasets import load_dataset

    with Link.open("fake://") as link:
        dev = Device(link)
        prog, blob = prepare_program(StreamOptions(), load_dataset("digits"), dev.hello())
        events = []
        assert ensure_model(dev, dev.hello(), blob, False, lambda k, d: events.append(k))
        assert not ensure_model(dev, dev.hello(), blob, False, lambda k, d: events.append(k))
        assert ensure_model(dev, dev.hello(), blob, True, lambda k, d: events.append(k))
        assert events.count("flashed") == 2 and "model_kept" in events


@pytest.mark.parametrize("argv,error", [
    (["stream", "--port", "socket://127.0.0.1:1", "--timeout", "0.5"], LinkError),
    (["stream", "--port", "fake://", "--model", "no-such-model"], ModelError),
    # a model that does not take the dataset's samples (digits: 64 features, 10 classes)
    (["stream", "--port", "fake://", "--model", str(ROOT / "tests" / "data" / "wide3.json")], UsageError),
    (["compile", "--board", "no-such-board"], BoardError),
    (["stream"], LinkError),   # nothing given and no board running
    (["stream", "--port", "fake://?arena=4096"], ModelError),   # does not fit the device
])
def test_errors_map_to_exit_codes(capsys, argv, error, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == error.exit_code, err
    assert "error:" in err


def test_json_errors_are_machine_readable(capsys, tmp_path):
    code = main(["stream", "--port", "fake://", "--model", "nope", "--json", "--runs-dir", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert code == 5 and out["status"] == "error" and out["error"] == "ModelError"


def test_exit_codes_are_distinct():
    from host import errors
    classes = [errors.UsageError, errors.LinkError, errors.DeviceError, errors.ModelError,
               errors.BoardError, errors.ToolError]
    assert len({c.exit_code for c in classes}) == len(classes)


def test_boards_json(capsys):
    code, out = run_json(capsys, "boards", "--json")
    names = {b["name"]: b for b in out["boards"]}
    assert code == 0 and "mps2-an386" in names and "native" in names
    assert names["mps2-an386"]["core"] == "cortex-m4f" and names["mps2-an386"]["arena_bytes"] > 0
    assert set(names) >= {"mps2-an500", "mps3-an547", "netduinoplus2", "nucleo-f446re"}
    # the real board is described but never emulated; its flash method is pyOCD
    nucleo = names["nucleo-f446re"]
    assert not nucleo["emulated_here"] and nucleo["emulator"] is None
    assert nucleo["flash_method"] == "pyocd" and nucleo["pyocd_target"] == "stm32f446retx"
    assert names["netduinoplus2"]["ram_bytes"] == 128 * 1024


def test_every_board_compiles_the_digits_model_within_its_arena(capsys):
    """The tight boards still hold the default training model (batch 32)."""
    from host.boards import board_names, load_board
    for name in board_names():
        code, info = run_json(capsys, "compile", "--board", name, "-o", "/dev/null", "--json")
        assert code == 0, name
        board = load_board(name)
        assert info["arena_bytes"] <= board.arena_bytes and info["blob_bytes"] <= board.staging_bytes, name


def test_a_board_short_of_flash_leaves_op_files_out(capsys, monkeypatch, tmp_path):
    """nucleo-f446re's firmware leaves out the L3 ops and attention ([runtime] omit_ops):
    its build drops those files, and `host compile` refuses a model that needs them."""
    import dataclasses

    import host.commands.compile_cmd as compile_cmd
    from host.boards import REPO_ROOT, load_board, omitted_ops, render_board_mk

    nucleo = load_board("nucleo-f446re")
    assert omitted_ops(nucleo) == {"l3_load", "l3_store", "mhsa_q8", "seqpool_q8", "mhsa"}
    assert "BOARD_OMIT := runtime/ops/ep_l3.c runtime/ops/ep_q8_attn.c runtime/ops/ep_mhsa.c" in render_board_mk(nucleo)
    assert omitted_ops(load_board("mps2-an386")) == set()
    # a board without the linear layers' file cannot take mlp-digits
    short = dataclasses.replace(load_board("mps2-an386"), omit_ops=("ep_linear.c",))
    monkeypatch.setattr(compile_cmd, "load_board", lambda name: short)
    with pytest.raises(ModelError, match="needs linear, which mps2-an386's firmware leaves out"):
        compile_cmd.run(compile_cmd_args(tmp_path))
    # an omit_ops entry that names no op file is a malformed board description
    bad = tmp_path / "boards" / "nucleo-f446re"
    bad.mkdir(parents=True)
    (bad / "board.toml").write_text((REPO_ROOT / "boards" / "nucleo-f446re" / "board.toml").read_text()
                                    .replace('"ep_q8_attn.c"', '"ep_nope.c"'))
    monkeypatch.setattr("host.boards.BOARDS_DIR", tmp_path / "boards")
    with pytest.raises(BoardError, match="ep_nope.c"):
        load_board("nucleo-f446re")


def compile_cmd_args(tmp_path):
    import argparse

    import host.commands.compile_cmd as compile_cmd
    p = argparse.ArgumentParser()
    compile_cmd.add_arguments(p)
    return p.parse_args(["--model", "mlp-digits", "-o", str(tmp_path / "m.epm")])


def test_compile_writes_a_blob_and_reports_the_plan(capsys, tmp_path):
    out_file = tmp_path / "m.epm"
    code, info = run_json(capsys, "compile", "--model", "mlp-digits", "-o", str(out_file), "--json")
    assert code == 0 and out_file.stat().st_size == info["blob_bytes"]
    assert info["lower_bound_bytes"] <= info["arena_bytes"] <= info["naive_bytes"]
    assert info["trainable_params"] == 64 * 32 + 32 + 32 * 10 + 10
    assert main(["compile", "-o", str(out_file), "--plan"]) == 0
    assert "lower bound" in capsys.readouterr().out


def test_flash_a_compiled_blob_on_the_fake(capsys, tmp_path):
    blob = tmp_path / "m.epm"
    assert main(["compile", "-o", str(blob), "--json"]) == 0
    capsys.readouterr()
    code, out = run_json(capsys, "flash", "--port", "fake://", "--blob", str(blob), "--json")
    assert code == 0 and out["uploaded"] and out["bytes"] == blob.stat().st_size
    bad = tmp_path / "bad.epm"
    bad.write_bytes(b"EPMB" + bytes(100))
    assert main(["flash", "--port", "fake://", "--blob", str(bad)]) == 4
    assert "BAD_BLOB" in capsys.readouterr().err


def test_console_script_and_module_entry_points():
    r = subprocess.run([sys.executable, "-m", "host", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "edgeprop host" in r.stdout


def test_a_busy_serial_port_is_named_as_busy(tmp_path):
    """Two programs on one serial port would steal each other's bytes: the second open
    is refused, saying the port is busy (a pty stands in for a USB serial port)."""
    import os
    import pty

    from host.errors import LinkError
    from host.link import Link

    master, slave = pty.openpty()
    try:
        path = os.ttyname(slave)
        with Link.open(path, timeout=0.5):
            with pytest.raises(LinkError, match="busy") as e:
                Link.open(path, timeout=0.5)
            assert "close the other program" in e.value.hint
    finally:
        os.close(master)
        os.close(slave)
