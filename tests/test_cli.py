"""The CLI as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import json

from conftest import ROOT, run_cli


def test_model_json_reports_paper_param_counts():
    r = run_cli("model", ROOT / "configs" / "cifar10.yaml", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["params"] == 269_722 and info["depth"] == 20
    r = run_cli("model", ROOT / "configs" / "cifar10.yaml", "--set", "model.depth=110", "--json")
    assert json.loads(r.stdout)["params"] == 1_727_962


def test_model_table():
    r = run_cli("model", ROOT / "configs" / "demo.yaml", "--set", "model.projection=learned")
    assert r.returncode == 0, r.stderr
    assert "ResNet-20 option B" in r.stdout and "Ws learned" in r.stdout and "total" in r.stdout


def test_train_then_rerun_says_where_results_are(tiny_config, tmp_path):
    out = tmp_path / "runs"
    r = run_cli("train", tiny_config, "--set", "train.steps=20", "--out", out)
    assert r.returncode == 0, r.stderr
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 20
    assert run.name in r.stdout and "train loss" in r.stdout
    again = run_cli("train", tiny_config, "--set", "train.steps=20", "--out", out)
    assert again.returncode == 0 and "already completed" in again.stderr and str(run) in again.stderr


def test_data_info_digits(tiny_config):
    r = run_cli("data", "info", tiny_config)
    assert r.returncode == 0 and "1500 train / 297 test" in r.stdout
