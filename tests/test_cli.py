"""The CLI as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import json
import re

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
    """... on whole lines: output to a pipe is never folded at 80 columns (COLUMNS=80 here)."""
    out = tmp_path / "runs"
    r = run_cli("train", tiny_config, "--set", "train.steps=20", "--out", out, env={"COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 20
    (line,) = [ln for ln in r.stdout.splitlines() if "train loss" in ln]
    assert line.startswith(run.name) and line.endswith(" img/s"), r.stdout
    again = run_cli("train", tiny_config, "--set", "train.steps=20", "--out", out)
    assert again.returncode == 0 and "already completed" in again.stderr and str(run) in again.stderr


def test_data_info_digits(tiny_config):
    r = run_cli("data", "info", tiny_config)
    assert r.returncode == 0 and "1500 train / 297 test" in r.stdout


def test_help_shows_flags_as_flags_and_the_jobs_default():
    r = run_cli("sweep", "--help")
    assert r.returncode == 0, r.stderr
    lines = {ln.split()[1]: ln for ln in r.stdout.splitlines() if ln.startswith("│ --")}
    for flag in ("--help", "--dry-run", "--progress"):
        assert "<bool>" not in lines[flag], lines[flag]  # a flag takes no value
    assert "on this machine. [default: 1]" in lines["--jobs"], lines["--jobs"]


def test_a_sweep_ends_with_a_dashboard_command_that_works_without_the_venv(tiny_config, tmp_path):
    """The last line names a command that runs from a shell where the venv is not active (PATH
    without .venv/bin) and the address that opens at the answer."""
    import os
    import shlex
    import subprocess
    import sys
    import time
    import urllib.request

    sys.path.insert(0, str(ROOT / "scripts"))
    from dashboard_screenshots import free_port, stop_process

    r = run_cli("sweep", tiny_config, "--grid", "model.depth=8", "--set", "train.steps=20", "--out", tmp_path / "runs",
                cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    hint = r.stdout.strip().splitlines()[-1]
    found = re.fullmatch(r"TensorBoard: (.+) tensorboard (\S+), then open (http://127\.0\.0\.1:6006/#\S+)", hint)
    assert found, hint
    assert found.group(3).endswith("/#custom_scalars&_smoothingWeight=0&regexInput=%5Evs_depth"), hint
    port = free_port()
    command = [*shlex.split(found.group(1)), "tensorboard", found.group(2), "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")} | {"PATH": "/usr/bin:/bin"}
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, runs = time.monotonic() + 60, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2) as resp:
                    runs = json.loads(resp.read())
                if "vs_depth/plain" in runs:
                    break
            except OSError:
                time.sleep(0.3)
        assert runs and runs[:2] == ["vs_depth/ResNet", "vs_depth/plain"], (runs, server.poll())
    finally:
        stop_process(server)


def test_status_sorts_by_depth_counts_and_names_an_unreadable_summary(tmp_path):
    """`resexp status` on local runs: a header, runs by depth as numbers (8 before 20), the counts,
    no job columns, and a corrupt summary.json shown as unreadable, not as "not started"."""
    sweep = tmp_path / "sweep"
    for name, depth, shortcut in (("plain20-s0", 20, False), ("resnet8-s0", 8, True), ("plain8-s0", 8, False)):
        (sweep / name).mkdir(parents=True)
        summary = {"status": "completed", "steps": 40, "total_steps": 40, "final_train_loss": 0.5,
                   "wall_seconds": 3.0, "config": {"model": {"depth": depth, "shortcut": shortcut}}}  # fmt: skip
        (sweep / name / "summary.json").write_text(json.dumps(summary))
    (sweep / "plain14-s0").mkdir()
    (sweep / "plain14-s0" / "config.yaml").write_text("model: {depth: 14, shortcut: false}\n")
    (sweep / "plain14-s0" / "summary.json").write_text('{"status": "runn')  # cut off mid-write
    r = run_cli("status", sweep)
    assert r.returncode == 0, r.stderr
    lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
    assert lines[0] == f"{sweep}: 4 runs, 3 completed, 1 unreadable"
    assert lines[1].split() == ["run", "status", "step", "train", "loss", "wall", "s"]
    rows = [ln.split()[:3] for ln in lines[3:7]]
    assert rows == [["plain8-s0", "completed", "40/40"], ["resnet8-s0", "completed", "40/40"],
                    ["plain14-s0", "unreadable", "-"], ["plain20-s0", "completed", "40/40"]]  # fmt: skip
    assert lines[7].startswith("note: plain14-s0: unreadable summary.json (JSONDecodeError"), lines[7]
