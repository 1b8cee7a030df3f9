"""Sweeps: grid expansion, shards, aggregation, kill-and-resume, and the live TensorBoard."""

from __future__ import annotations

import csv
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
from conftest import run_cli, tiny_dict, write_config
from tb_server import TensorBoardServer

from resexp.core.config import Config, ConfigError
from resexp.core.placement import plan
from resexp.reporting.report import build_report
from resexp.runs.store import read_summary
from resexp.sweeps.plan import expand_grid, group_seeds, parse_grid, run_sweep, shard_cells

GRID = {"model.depth": [8, 14], "model.shortcut": [False, True], "train.seed": [0, 1]}
SWEEP = tiny_dict(name="grid", sweep=GRID, train={"steps": 20, "log_every": 10, "checkpoint_every": 10})


def test_grid_is_the_cartesian_product_on_top_of_the_config():
    cells = expand_grid(Config.model_validate(SWEEP))
    assert len(cells) == 8 and len({c.run_id for c in cells}) == 8
    assert {(c.cfg.model.depth, c.cfg.model.shortcut, c.cfg.train.seed) for c in cells} == {
        (d, s, seed) for d in (8, 14) for s in (False, True) for seed in (0, 1)
    }
    assert all(c.cfg.model.widths == [4, 8, 8] and c.cfg.sweep == {} for c in cells)
    assert cells[0].keys == {"model.depth": 8, "model.shortcut": False, "train.seed": 0}


def test_grid_option_replaces_or_adds_axes():
    axes = parse_grid(["model.depth=8,20,56", "optim.weight_decay=0,1e-4"])
    assert axes == {"model.depth": [8, 20, 56], "optim.weight_decay": [0, 1e-4]}
    cells = expand_grid(Config.model_validate(SWEEP), axes)
    assert len(cells) == 3 * 2 * 2 * 2
    assert sorted({c.cfg.model.depth for c in cells}) == [8, 20, 56]


def test_identical_cells_collapse_and_bad_cells_fail_before_any_run():
    cfg = Config.model_validate(
        tiny_dict(sweep={"model.shortcut": [False], "model.projection": ["zero_pad", "learned"]})
    )
    assert len(expand_grid(cfg)) == 1  # a plain net has no projection: one run, not two
    with pytest.raises(ConfigError, match=r"model\.depth.*6n\+2"):
        expand_grid(Config.model_validate(tiny_dict()), parse_grid(["model.depth=8,9"]))


def test_shards_partition_the_grid():
    cells = expand_grid(Config.model_validate(SWEEP), parse_grid(["optim.lr=0.1,0.05,0.01"]))
    for n in (1, 2, 3, 5, 30):
        shards = [shard_cells(cells, i, n) for i in range(n)]
        ids = [c.run_id for s in shards for c in s]
        assert sorted(ids) == sorted(c.run_id for c in cells) and len(ids) == len(set(ids)), n


def test_dry_run_lists_each_shard_without_training(tmp_path):
    path = write_config(tmp_path / "grid.yaml", SWEEP)
    listed = []
    for i in range(3):
        r = run_cli("sweep", path, "--dry-run", "--shard", f"{i}/3", "--out", tmp_path / "runs")
        assert r.returncode == 0, r.stderr
        listed += [line.split()[1] for line in r.stdout.splitlines() if "-wd" in line]
    assert len(listed) == 8 and len(set(listed)) == 8
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_seed_groups_for_vmap():
    cells = expand_grid(Config.model_validate(SWEEP))
    groups = group_seeds(cells, 2)
    assert len(groups) == 4 and all(len(g) == 2 for g in groups)
    assert all(
        len({tuple(sorted((k, v) for k, v in c.keys.items() if k != "train.seed")) for c in g}) == 1 for g in groups
    )


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The tiny grid trained once, in process, then reported."""
    out = tmp_path_factory.mktemp("sweep")
    cfg = Config.model_validate(SWEEP)
    results = run_sweep([[c] for c in expand_grid(cfg)], out / "grid", progress=False)
    report = build_report(out / "grid", console=None)
    return out / "grid", results, report


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_results_csv_has_a_row_per_run_and_a_column_per_axis(swept):
    sweep_dir, results, _ = swept
    assert [r["status"] for r in results] == ["completed"] * 8
    rows = _rows(sweep_dir / "results.csv")
    assert len(rows) == 8
    for column in (
        "run_id",
        "model.depth",
        "model.shortcut",
        "train.seed",
        "status",
        "final_train_loss",
        "final_train_accuracy",
        "eval_loss",
        "eval_accuracy",
        "params",
        "wall_seconds",
    ):
        assert column in rows[0], column
    assert all(float(r["final_train_loss"]) > 0 for r in rows)


def test_aggregation_across_seeds(swept):
    sweep_dir, _, _ = swept
    rows = _rows(sweep_dir / "results.csv")
    agg = _rows(sweep_dir / "aggregate.csv")
    assert len(agg) == 4  # depth x shortcut; seeds averaged
    for cell in agg:
        members = [
            float(r["final_train_loss"])
            for r in rows
            if r["model.depth"] == cell["model.depth"] and r["model.shortcut"] == cell["model.shortcut"]
        ]
        assert len(members) == 2
        mean_col = next(k for k in cell if k.startswith("final_train_loss") and "mean" in k)
        std_col = next(k for k in cell if k.startswith("final_train_loss") and "std" in k)
        assert float(cell[mean_col]) == pytest.approx(statistics.mean(members), rel=1e-6)
        assert float(cell[std_col]) == pytest.approx(statistics.stdev(members), rel=1e-5, abs=1e-9)


def test_loss_vs_depth_png(swept):
    sweep_dir, _, report = swept
    png = sweep_dir / "loss_vs_depth.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert report.paths["loss_vs_depth.png"] == png


def test_rerun_skips_completed_runs(swept):
    sweep_dir, _, _ = swept
    start = time.perf_counter()
    again = run_sweep([[c] for c in expand_grid(Config.model_validate(SWEEP))], sweep_dir, progress=False)
    assert all(r["skipped"] and r["status"] == "completed" for r in again)
    assert time.perf_counter() - start < 30


def test_jobs_2_workers_are_pinned_share_memory_and_match_their_sequential_twins(swept, tmp_path):
    """Two pool workers placed on one GPU ("7": CUDA_VISIBLE_DEVICES, a memory share each, as on a
    GPU machine; here JAX runs on the CPU and ignores both) train exactly what one process did,
    and each run's summary.json says where it ran and with how many others."""
    sweep_dir, _, _ = swept
    cells = [c for c in expand_grid(Config.model_validate(SWEEP)) if c.cfg.model.depth == 8 and c.cfg.model.shortcut]
    assert len(cells) == 2  # seeds 0 and 1: one compiled program
    results = run_sweep([[c] for c in cells], tmp_path, jobs=2, progress=False, placements=plan(2, ["7"], environ={}))
    assert [r["status"] for r in results] == ["completed"] * 2
    for c in cells:
        packed, alone = read_summary(tmp_path / c.run_id), read_summary(sweep_dir / c.run_id)
        assert packed["history"] == alone["history"] and packed["eval_loss"] == alone["eval_loss"]
        assert packed["placement"] == {
            "device": alone["device"],
            "device_count": 1,
            "cuda_visible_devices": "7",
            "runs_sharing_device": 2,
            "gpu_memory_rule": "fraction",
            "gpu_memory": {"XLA_CLIENT_MEM_FRACTION": "0.45"},
        }
        assert alone["placement"]["runs_sharing_device"] == 1 and alone["placement"]["gpu_memory_rule"] == "default"


def test_killed_sweep_resumes_to_the_same_results(swept, tmp_path):
    """SIGKILL a CLI sweep mid-grid; running it again finishes the rest with identical numbers."""
    sweep_dir, _, _ = swept
    path = write_config(tmp_path / "grid.yaml", SWEEP)
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "resexp", "sweep", str(path), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    deadline = time.time() + 240
    while time.time() < deadline:  # wait until at least one run has finished, then kill mid-grid
        done = [p for p in (out / "grid").glob("*/summary.json") if '"completed"' in p.read_text()]
        if done:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done, "no run finished before the deadline"
    finished_before = len([p for p in (out / "grid").glob("*/summary.json") if '"completed"' in p.read_text()])
    assert finished_before < 8, "the sweep finished before it could be killed"
    r = run_cli("sweep", path, "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    key = lambda row: row["run_id"]  # noqa: E731
    numbers = ("status", "final_train_loss", "final_train_accuracy", "eval_loss", "eval_accuracy", "params")
    resumed = sorted(_rows(out / "grid" / "results.csv"), key=key)
    uninterrupted = sorted(_rows(sweep_dir / "results.csv"), key=key)
    assert [[row[k] for k in ("run_id", *numbers)] for row in resumed] == [
        [row[k] for k in ("run_id", *numbers)] for row in uninterrupted
    ]


def test_live_tensorboard_serves_runs_depth_curves_and_hparams(swept):
    sweep_dir, _, _ = swept
    run_ids = [r["run_id"] for r in _rows(sweep_dir / "results.csv")]
    with TensorBoardServer(sweep_dir) as tb:
        deadline = time.time() + 60
        while time.time() < deadline:
            runs = tb.runs()
            if set(run_ids) <= set(runs) and any(r.startswith("vs_depth/") for r in runs):
                break
            time.sleep(1)
        assert set(run_ids) <= set(runs)
        groups = [r for r in runs if r.startswith("vs_depth/")]
        assert groups == ["vs_depth/ResNet", "vs_depth/plain"] == runs[:2]  # one run per family, first
        tags = tb.scalar_tags()
        depth_tags = [t for g in groups for t in tags.get(g, {}) if t.endswith("_vs_depth/mean")]
        assert depth_tags
        steps = [s for s, _ in tb.scalars(groups[0], depth_tags[0])]
        assert sorted(steps) == [8, 14]  # the step axis is the depth
        assert "train/loss" in tags[run_ids[0]]
        sessions = [s for g in tb.session_groups()["sessionGroups"] for s in g["sessions"]]
        assert sorted(s["name"] for s in sessions) == sorted(run_ids)
