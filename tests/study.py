"""A study, not a demo: `runs/` holding a sweep directory of three grids and 120 real runs, and a
second, small sweep directory beside it (test helper; `build_study`).

The runs really train (tiny nets, 4 steps), and cheaply: a sweep trains the seeds of a cell as
one compiled program (`train.vmap_seeds`, looped inside the program on CPU), so the first grid's
96 runs are 6 programs of 16 seeds, and each later grid adds its new cells with 4 seeds each.
What a program costs is tracing it (compiling it only once per machine: the suite shares a
persistent compile cache, see `conftest`); what a run costs on its own is its checkpoint,
summary and event files.

    runs/study/                       grids, in the order they were swept
      sweep.json                      depth 8,14,20 x shortcut x seeds 0..15         96 runs
      grids/weight_decay=.../         weight decay 1e-4,1e-3 x depth 8,20 x shortcut
                                      x seeds 0..3                                   +16 runs
      grids/depth=20,26.../           depth 20,26 x shortcut x seeds 0..3             +8 runs
    runs/pair/                        depth 8,14 x shortcut, one seed                4 runs
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

from conftest import tiny_dict
from rich.console import Console

from resexp.core.config import Config
from resexp.reporting.report import build_reports
from resexp.sweeps.plan import expand_grid, grid_axes, group_seeds, record_grid, run_sweep

DEPTHS = [8, 14, 20]
SEEDS = list(range(16))
STUDY = tiny_dict(
    name="study",
    data={"batch_size": 32, "eval_batch_size": 64},
    sweep={"model.depth": DEPTHS, "model.shortcut": [False, True], "train.seed": SEEDS},
    train={"steps": 4, "log_every": 2, "checkpoint_every": 0, "eval_examples": 64, "vmap_seeds": len(SEEDS)},
)
# The later grids, as `resexp sweep CONFIG --grid ...` into the same directory adds them. Each new cell
# brings 4 seeds (one program): the cost of a grid is its programs, not its runs.
LATER_GRIDS: list[dict[str, list[Any]]] = [
    {"optim.weight_decay": [1e-4, 1e-3], "model.depth": [8, 20], "train.seed": [0, 1, 2, 3]},
    {"model.depth": [20, 26], "train.seed": [0, 1, 2, 3]},
]
PAIR = tiny_dict(
    name="pair",
    data={"batch_size": 32, "eval_batch_size": 64},
    sweep={"model.depth": [8, 14], "model.shortcut": [False, True]},
    train={"steps": 4, "log_every": 2, "checkpoint_every": 0, "eval_examples": 64},
)
STUDY_RUNS = 96 + 16 + 8
STUDY_PROGRAMS = 6 + 4 + 2  # seed groups trained: one compiled program each


def sweep_into(out: Path, config: dict, extra_axes: dict[str, list[Any]] | None = None) -> Path:
    """What `resexp sweep` does, in this process: record the grid, train its cells, report."""
    cfg = Config.model_validate(config)
    cells = expand_grid(cfg, extra_axes)
    sweep_dir = out / cfg.name
    record_grid(sweep_dir, cfg.name, grid_axes(cfg, extra_axes), extra_axes or {}, cells)
    results = run_sweep(group_seeds(cells, cfg.train.vmap_seeds), sweep_dir, progress=False)
    assert {r["status"] for r in results} == {"completed"}, results
    return sweep_dir


def build_study(runs: Path) -> dict[str, Any]:
    """Train and report the study into `runs` (the README's `runs/`); returns paths and timings."""
    start = time.perf_counter()
    study = sweep_into(runs, STUDY)
    for axes in LATER_GRIDS:
        sweep_into(runs, STUDY, axes)
    pair = sweep_into(runs, PAIR)
    trained = time.perf_counter() - start
    quiet = Console(file=io.StringIO())
    build_reports(study, console=quiet)
    build_reports(pair, console=quiet)
    return {"runs": runs, "study": study, "pair": pair, "train_seconds": trained}
