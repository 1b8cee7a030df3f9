"""Training end to end, in process: it learns, writes a complete run dir, and resumes exactly."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import tiny_dict

from resexp.core.config import Config, run_id
from resexp.runs.tblog import event_files
from resexp.runs.train import train_runs


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny run trained to completion (shared: training is the expensive part)."""
    out = tmp_path_factory.mktemp("runs")
    cfg = Config.model_validate(
        tiny_dict(train={"steps": 40, "log_every": 10, "checkpoint_every": 20, "eval_every": 20})
    )
    (outcome,) = train_runs([cfg], out, progress=False)
    return cfg, out, outcome


def test_a_run_learns(finished):
    _, _, outcome = finished
    s = outcome.summary
    assert s["status"] == "completed" and s["steps"] == 40
    losses = s["history"]["train_loss"]
    assert len(losses) == 4 and losses[-1] < 0.5 * losses[0]  # the loss falls
    assert s["eval_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert s["final_train_loss"] == losses[-1]


def test_the_run_directory_is_complete(finished):
    cfg, out, outcome = finished
    run = out / run_id(cfg)
    assert outcome.run_dir == run
    s = json.loads((run / "summary.json").read_text())
    for key in (
        "run_id",
        "status",
        "steps",
        "final_train_loss",
        "final_train_accuracy",
        "eval_loss",
        "eval_accuracy",
        "params",
        "compile_seconds",
        "wall_seconds",
        "config",
        "history",
    ):
        assert s[key] is not None, key
    assert s["config"] == cfg.model_dump(mode="json")
    assert Config.model_validate(__import__("yaml").safe_load((run / "config.yaml").read_text())) == cfg
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [20, 40]
    assert event_files(run) and not (run / ".lock").exists()
    assert s["history"]["eval_step"] == [20, 40]
    # precise BN off: the running averages, and nothing to compare them with
    assert s["eval_bn"] == {"statistics": "running"}
    assert s["eval_running_accuracy"] is None and "eval_running_accuracy" not in s["history"]


def test_tensorboard_scalars(finished):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, out, _ = finished
    acc = EventAccumulator(str(out / run_id(cfg)))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {
        "train/loss",
        "train/accuracy",
        "eval/loss",
        "eval/accuracy",
        "train/learning_rate",
        "perf/images_per_second",
    } <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [10, 20, 30, 40]
    assert not any(t.endswith("_running_bn") for t in tags)  # those are for precise BN


def test_completed_run_is_not_retrained(finished):
    cfg, out, _ = finished
    before = (out / run_id(cfg) / "summary.json").read_bytes()
    (again,) = train_runs([cfg], out, progress=False)
    assert again.skipped and again.summary["status"] == "completed"
    assert (out / run_id(cfg) / "summary.json").read_bytes() == before


def test_resume_from_checkpoint_gives_the_same_numbers(finished, tmp_path):
    """Drop the last checkpoint as if killed after step 20: resuming must replay steps 21-40 exactly."""
    cfg, out, outcome = finished
    run = tmp_path / run_id(cfg)
    shutil.copytree(out / run_id(cfg), run)
    shutil.rmtree(run / "checkpoints" / "40")
    summary = json.loads((run / "summary.json").read_text())
    summary["status"] = "interrupted"
    (run / "summary.json").write_text(json.dumps(summary))
    (resumed,) = train_runs([cfg], tmp_path, progress=False)
    assert not resumed.skipped and resumed.summary["status"] == "completed"
    assert resumed.summary["history"] == outcome.summary["history"]  # exactly, on CPU
    assert resumed.summary["final_train_loss"] == outcome.summary["final_train_loss"]
    assert resumed.summary["eval_loss"] == outcome.summary["eval_loss"]
