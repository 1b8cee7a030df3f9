"""The study, not the demo: one sweep directory of three grids and 112 real runs, and `runs/`
holding a second sweep beside it (tests/study.py), through report, status and the dashboard."""

from __future__ import annotations

import json

import pytest
from study import STUDY_RUNS, build_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return build_study(tmp_path_factory.mktemp("study") / "runs")


def test_the_study_is_one_directory_of_three_grids_and_over_100_runs(study):
    sweep = study["study"]
    runs = [p for p in sweep.iterdir() if (p / "summary.json").is_file()]
    assert len(runs) == STUDY_RUNS > 100
    assert all(json.loads((p / "summary.json").read_text())["status"] == "completed" for p in runs)
    assert len(list((sweep / "grids").glob("*/sweep.json"))) == 2 and (sweep / "sweep.json").is_file()
    print(f"study trained in {study['train_seconds']:.1f} s")
