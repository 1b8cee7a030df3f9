"""The study, not the demo: one sweep directory of three grids and 120 real runs, and `runs/`
holding a second sweep beside it (tests/study.py), through report, status and the dashboard a
user opens: `resexp tensorboard` in a real Chromium, for the sweep and for all of `runs/`."""

from __future__ import annotations

import json
import re
import sys
import time

import pytest
from conftest import ROOT, run_cli
from study import DEPTHS, STUDY_RUNS, build_study

sys.path.insert(0, str(ROOT / "scripts"))
import dashboard_screenshots


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    built = build_study(tmp_path_factory.mktemp("study") / "runs")
    print(f"\nstudy: {STUDY_RUNS + 4} runs trained in {built['train_seconds']:.1f} s")
    return built


def test_the_study_is_one_directory_of_three_grids_and_over_100_runs(study):
    sweep = study["study"]
    runs = [p for p in sweep.iterdir() if (p / "summary.json").is_file()]
    assert len(runs) == STUDY_RUNS > 100
    assert all(json.loads((p / "summary.json").read_text())["status"] == "completed" for p in runs)
    assert (sweep / "sweep.json").is_file() and len(list((sweep / "grids").glob("*/sweep.json"))) == 2


def timed_cli(*args, **kwargs):
    start = time.perf_counter()
    proc = run_cli(*args, **kwargs)
    return proc, time.perf_counter() - start


def test_report_names_each_grid_and_wraps_no_line(study):
    """`resexp report` over 120 runs and three grids, its output going to a pipe with COLUMNS=80:
    a heading per grid naming it, and every line whole (the dashboard hint with its address)."""
    proc, seconds = timed_cli("report", study["study"], env={"COLUMNS": "80"})
    print(f"\nresexp report on {STUDY_RUNS} runs, 3 grids: {seconds:.1f} s")
    assert proc.returncode == 0, proc.stderr
    headings = [line for line in proc.stdout.splitlines() if line.startswith("grid ")]
    assert [h.split(" (")[0] for h in headings] == [
        "grid study",
        *(f"grid study/{p.parent.relative_to(study['study']).as_posix()}" for p in
          sorted((study["study"] / "grids").glob("*/sweep.json"))),
    ], proc.stdout  # fmt: skip
    assert max(map(len, proc.stdout.splitlines())) > 120  # nothing folded at 80 columns
    (hint,) = [line for line in proc.stdout.splitlines() if line.startswith("TensorBoard: ")]
    assert hint.endswith("#custom_scalars&_smoothingWeight=0&regexInput=%5Evs_depth"), hint
    assert seconds < 120


def test_status_is_a_table_sorted_by_depth_with_counts(study):
    proc, seconds = timed_cli("status", study["study"], env={"COLUMNS": "80"})
    print(f"\nresexp status on {STUDY_RUNS} runs: {seconds:.1f} s")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{study['study']}: {STUDY_RUNS} runs, {STUDY_RUNS} completed"
    assert re.match(r"\s*run\s+status\s+step\s+train loss\s+wall s\s*$", lines[2]), lines[:4]  # no job columns
    depths = [int(m.group(1)) for line in lines if (m := re.match(r"\s*(?:plain|resnet)(\d+)-", line))]
    assert len(depths) == STUDY_RUNS and depths == sorted(depths) and depths[-1] == 26  # 8 < 14 < 20 < 26
    assert seconds < 120


def dashboard_problems(logdir, out_dir):
    if dashboard_screenshots.find_chromium() is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); .ci/run installs it when it can")
    _, problems = dashboard_screenshots.take_screenshots(logdir, out_dir)
    return problems, json.loads((out_dir / "custom_scalars.json").read_text())


def test_dashboard_of_the_study_opens_at_the_answer(study, tmp_path):
    """`resexp tensorboard runs/study` in a fresh Chromium at the bare address: every Custom Scalars
    chart drawn with its data, no point outside its axes (the deep plain net included), plain blue
    and ResNet orange; the weight-decay grid's nets are further series of the same two runs."""
    problems, charts = dashboard_problems(study["study"], tmp_path)
    assert not problems, problems
    loss = next(c for c in charts if c["title"].startswith("final train loss vs depth"))
    names = {s["name"] for s in loss["series"]}
    assert names == {
        f"final_train_loss_vs_depth/weight_decay={wd}/mean (vs_depth/{net})"
        for net in ("ResNet", "plain")
        for wd in ("0.001", "1e-4")
    }, names
    steps = {p[0] for s in loss["series"] for p in s["points"]}
    assert steps == {*DEPTHS, 26}


def test_dashboard_of_all_runs_opens_at_every_sweeps_answer(study, tmp_path):
    """`resexp tensorboard runs` (what `make tensorboard` serves): every sweep's answer, one colour
    per family across sweeps, nothing empty or clipped."""
    problems, charts = dashboard_problems(study["runs"], tmp_path)
    assert not problems, problems
    text = (tmp_path / "custom_scalars.txt").read_text()
    assert "pair: Loss vs depth" in text and "study: Loss vs depth" in text
    runs = {s["name"].rsplit(" (", 1)[1] for c in charts for s in c["series"]}
    assert runs == {"vs_depth/plain)", "vs_depth/ResNet)"}, runs
