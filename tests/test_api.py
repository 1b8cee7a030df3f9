"""The public Python API, as a notebook uses it: typed results, the same one-line errors as the CLI,
and the same run directories and numbers as the command line."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from conftest import ROOT, tiny_dict, write_config

import resexp

GRID = {"model.depth": [8, 14]}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    config = write_config(tmp / "tiny.yaml", tiny_dict(train={"steps": 20, "checkpoint_every": 20}))
    return config, resexp.sweep(config, ["optim.lr=0.05"], grid=GRID, out=tmp / "runs")


def test_sweep_returns_the_rows_of_results_csv_and_its_figure(swept):
    _, s = swept
    assert [r.status for r in s.runs] == ["completed", "completed"]
    with (s.report_dir / "results.csv").open() as f:
        on_disk = list(csv.DictReader(f))
    assert [row["run_id"] for row in s.rows] == [row["run_id"] for row in on_disk]
    assert {row["run_id"] for row in s.rows} == {r.run_id for r in s.runs}
    for run in s.runs:
        assert run.final_train_loss == pytest.approx(run.summary["final_train_loss"])
        assert (run.run_dir / "summary.json").is_file()
    assert s.figures["loss_vs_depth.png"].read_bytes()[:4] == b"\x89PNG"
    assert not s.failed


def test_a_second_call_trains_nothing_and_load_sweep_reads_the_same(swept):
    config, s = swept
    mtimes = {r.run_id: (r.run_dir / "summary.json").stat().st_mtime_ns for r in s.runs}
    again = resexp.sweep(config, ["optim.lr=0.05"], grid=["model.depth=8,14"], out=s.sweep_dir.parent)
    assert {r.run_id: (r.run_dir / "summary.json").stat().st_mtime_ns for r in again.runs} == mtimes
    loaded = resexp.load_sweep(s.sweep_dir)
    assert [r["final_train_loss"] for r in loaded.rows] == [r["final_train_loss"] for r in s.rows]


def test_the_cli_gives_the_same_run_ids_and_numbers(swept, tmp_path):
    config, s = swept
    cli = subprocess.run(
        [sys.executable, "-m", "resexp", "sweep", str(config), "--set", "optim.lr=0.05", "--grid",
         "model.depth=8,14", "--out", str(tmp_path / "runs"), "--no-progress"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-2000:]
    by_cli = resexp.load_sweep(tmp_path / "runs" / s.name)
    assert [(r["run_id"], r["final_train_loss"]) for r in by_cli.rows] == [
        (r["run_id"], r["final_train_loss"]) for r in s.rows
    ]


def test_a_local_launcher_sweep_gives_the_same_typed_result(swept, tmp_path):
    config, s = swept
    jobs = resexp.sweep(
        config,
        ["optim.lr=0.05"],
        grid=GRID,
        out=tmp_path / "runs",
        launcher="local",
        launcher_options={"max_parallel": 2},
    )
    assert isinstance(jobs, resexp.SweepResult) and not jobs.failed
    assert [(r["run_id"], r["final_train_loss"]) for r in jobs.rows] == [
        (r["run_id"], r["final_train_loss"]) for r in s.rows
    ]
    assert all(r.summary.get("restarts") == 0 for r in jobs.runs)  # trained by the jobs, not here
    with pytest.raises(resexp.UserError, match="--launcher cannot be combined with --jobs"):
        resexp.sweep(config, out=tmp_path / "runs", launcher="local", jobs=2)


def test_errors_are_exceptions_with_the_cli_one_line_message(tmp_path):
    config = write_config(tmp_path / "tiny.yaml", tiny_dict())
    with pytest.raises(resexp.ConfigError) as err:
        resexp.sweep(config, ["model.depht=8"], out=tmp_path / "runs")
    cli = subprocess.run(
        [sys.executable, "-m", "resexp", "sweep", str(config), "--set", "model.depht=8", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 2 and "\n" not in str(err.value)
    assert str(err.value) in cli.stderr
    assert not (tmp_path / "runs").exists()
    with pytest.raises(resexp.UserError, match="jobs must be at least 1"):
        resexp.sweep(config, jobs=0)
    with pytest.raises(resexp.UserError):
        resexp.load_sweep(tmp_path / "does-not-exist")


def test_identity_holds_for_a_residual_net_and_not_for_a_plain_one(tmp_path):
    config = write_config(tmp_path / "tiny.yaml", tiny_dict())
    res = resexp.identity(config, examples=16)
    assert res.holds and res.architecture == "ResNet-8, option A" and res.images == 16
    assert res.min_block_input is not None and res.min_block_input >= 0
    assert all(r["max_abs_diff_input"] == 0.0 for r in res.rows if r["shortcut"] == "identity")
    plain = resexp.identity(config, ["model.shortcut=false"], examples=16)
    assert not plain.holds and plain.architecture == "plain-8"
    assert all(not r["holds"] for r in plain.rows)
