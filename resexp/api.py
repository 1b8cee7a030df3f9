"""The public Python API: what a notebook or a script calls, and what the CLI prints.

Each function takes a config (a path, or a bundled config's name such as "demo"), the same
`KEY=VALUE` overrides as `--set`, and returns typed results. A mistake a user can fix raises a
`resexp.UserError` (or a subclass) carrying the same one-line message the CLI prints:

    import resexp
    s = resexp.sweep("demo", jobs=2)
    s.rows                      # results.csv as a list of dicts (pandas.DataFrame(s.rows))
    s.figures["loss_vs_depth.png"]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resexp.errors import ConfigError, UserError
from resexp.variants import ShortcutOption

__all__ = [
    "AnalysisResult",
    "IdentityResult",
    "RunResult",
    "SweepPlan",
    "SweepResult",
    "analyze",
    "identity",
    "load_sweep",
    "plan_sweep",
    "report",
    "run_planned",
    "sweep",
    "train",
]

Overrides = Sequence[str]
Grid = dict[str, Sequence[Any]] | Sequence[str] | None


@dataclass(frozen=True)
class RunResult:
    """One run: where it lives, how it ended, its final numbers (None where not measured)."""

    run_id: str
    run_dir: Path
    status: str
    final_train_loss: float | None
    final_train_accuracy: float | None
    eval_loss: float | None
    eval_accuracy: float | None
    summary: dict[str, Any] = field(repr=False)

    @classmethod
    def from_summary(cls, run_dir: Path, summary: dict[str, Any]) -> RunResult:
        return cls(
            run_id=summary.get("run_id") or run_dir.name,
            run_dir=run_dir,
            status=str(summary.get("status")),
            final_train_loss=summary.get("final_train_loss"),
            final_train_accuracy=summary.get("final_train_accuracy"),
            eval_loss=summary.get("eval_loss"),
            eval_accuracy=summary.get("eval_accuracy"),
            summary=summary,
        )


@dataclass(frozen=True)
class SweepResult:
    """One grid of a sweep directory: its runs, the rows of its results.csv, its figures."""

    sweep_dir: Path
    name: str
    report_dir: Path
    runs: list[RunResult]
    rows: list[dict[str, Any]]
    figures: dict[str, Path]
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[RunResult]:
        """Runs that ended neither completed nor diverged (a diverged run is a result)."""
        return [r for r in self.runs if r.status not in ("completed", "diverged")]


def _overrides(overrides: Overrides | None) -> list[str]:
    if isinstance(overrides, str):  # a lone "k=v" would otherwise be read character by character
        return [overrides]
    return list(overrides or [])


def _grid_texts(grid: Grid) -> list[str]:
    """`{"model.depth": [8, 20]}` or `["model.depth=8,20"]` -> the `--grid` spelling."""
    if grid is None:
        return []
    if isinstance(grid, str):
        return [grid]
    if isinstance(grid, dict):
        return [f"{key}={','.join(str(v) for v in values)}" for key, values in grid.items()]
    return list(grid)


def _configure() -> None:
    from resexp.runtime import configure_jax

    configure_jax()


# ----------------------------------------------------------------------------- train


def train(config: str | Path, overrides: Overrides | None = None, *, out: str | Path = "runs") -> list[RunResult]:
    """Train one config (its `train.vmap_seeds` seeds); a finished run is answered from its directory."""
    from resexp.config import apply_overrides, load_config
    from resexp.runs import finished_runs

    cfg = load_config(config, _overrides(overrides))
    cfg = apply_overrides(cfg, cfg, str(config))
    finished = finished_runs(cfg, Path(out))
    if finished is not None:
        return [RunResult.from_summary(run_dir, s) for run_dir, s in finished]
    _configure()
    from resexp.train import train as train_runs

    return [
        RunResult.from_summary(o.run_dir, o.summary)
        for o in train_runs(cfg, Path(out), progress=False, source=str(config))
    ]


# ----------------------------------------------------------------------------- sweep


@dataclass(frozen=True)
class SweepPlan:
    """A sweep resolved before anything is written: its cells, this shard's share, where it goes."""

    source: str
    cfg: Any  # resexp.config.Config
    axes: dict[str, list[Any]]
    cells: list[Any]  # resexp.sweep.Cell, every cell of the grid
    mine: list[Any]  # this shard's cells
    groups: list[list[Any]]  # `mine`, seeds grouped by train.vmap_seeds
    sweep_dir: Path
    name: str
    shard: tuple[int, int]


def plan_sweep(
    config: str | Path,
    overrides: Overrides | None = None,
    *,
    grid: Grid = None,
    out: str | Path = "runs",
    name: str | None = None,
    shard: str | None = None,
) -> SweepPlan:
    """Resolve a sweep: config, grid axes, cells and directory; a bad input raises here."""
    from resexp.config import load_config
    from resexp.sweep import expand_grid, group_seeds, in_sweep_dir, parse_grid, parse_shard, shard_cells

    cfg = load_config(config, _overrides(overrides))
    axes = parse_grid(_grid_texts(grid), source=f"{config} (--grid)")
    index, count = parse_shard(shard)
    if (name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", name)) or name in (".", ".."):
        raise ConfigError("--name", None, f"{name!r}: use letters, digits, '_', '.' and '-' (a directory name)")
    sweep_dir = Path(out) / (name or cfg.name)
    # each cell named by its run's directory there: a run an earlier version made under an older id counts
    cells = in_sweep_dir(expand_grid(cfg, axes, source=str(config)), sweep_dir)
    mine = shard_cells(cells, index, count)
    return SweepPlan(
        source=str(config),
        cfg=cfg,
        axes=axes,
        cells=cells,
        mine=mine,
        groups=group_seeds(mine, cfg.train.vmap_seeds),
        sweep_dir=sweep_dir,
        name=name or cfg.name,
        shard=(index, count),
    )


def record_plan(plan: SweepPlan) -> Any:
    """Write the plan's manifest (resexp.runs.Manifest); an unwritable directory is one line."""
    from resexp.errors import RunError
    from resexp.sweep import grid_axes, record_grid

    try:
        return record_grid(plan.sweep_dir, plan.name, grid_axes(plan.cfg, plan.axes), plan.axes, plan.cells)
    except OSError as exc:
        raise RunError(f"{plan.sweep_dir}: cannot write the sweep manifest ({exc.strerror or exc})") from None


def check_data(plan: SweepPlan, *, load: bool) -> None:
    """Fail once, before any run, on a missing or corrupt dataset. `load=False` only checks that the
    files are there (worker processes load them; here they would hold device memory)."""
    from resexp.data import load_data
    from resexp.datasets import FILE_DATASETS, find_dataset

    if load:
        load_data(plan.cells[0].cfg.data, source=plan.source)
        return
    for name, directory in {(c.cfg.data.name, c.cfg.data.dir) for c in plan.mine if c.cfg.data.name in FILE_DATASETS}:
        find_dataset(name, directory)


def run_planned(
    plan: SweepPlan, *, jobs: int = 1, progress: bool = False, console=None, report_console=None
) -> tuple[SweepResult, list[dict]]:
    """Train a plan's runs (`jobs` at a time), rebuild its grid's report; (result, per-run outcomes)."""
    from resexp.sweep import run_sweep

    _configure()
    check_data(plan, load=jobs == 1)
    manifest = record_plan(plan)
    if console is not None:
        index, count = plan.shard
        console.print(
            f"[bold]{manifest.name}[/]: {len(plan.mine)} runs"
            + (f" (shard {index}/{count} of {len(plan.cells)})" if count > 1 else "")
            + f" -> {plan.sweep_dir}",
            highlight=False,
        )
    outcomes = run_sweep(plan.groups, plan.sweep_dir, jobs=jobs, progress=progress, console=console)
    return _report_grid(plan.sweep_dir, manifest.report_dir, report_console), outcomes


def sweep(
    config: str | Path,
    overrides: Overrides | None = None,
    *,
    grid: Grid = None,
    jobs: int = 1,
    out: str | Path = "runs",
    name: str | None = None,
    shard: str | None = None,
) -> SweepResult:
    """Train a grid (finished runs are kept, interrupted ones resume) and rebuild its report.

    `grid` adds or replaces axes: `{"model.depth": [8, 20, 56]}` or `["model.depth=8,20,56"]`.
    """
    if jobs < 1:
        raise UserError(f"jobs must be at least 1, not {jobs}")
    plan = plan_sweep(config, overrides, grid=grid, out=out, name=name, shard=shard)
    result, _ = run_planned(plan, jobs=jobs)
    return result


# ----------------------------------------------------------------------------- reports


def _quiet_console():
    from rich.console import Console

    return Console(quiet=True)


def _as_result(rep: Any) -> SweepResult:
    """A resexp.records.Report as the public, typed result."""
    return SweepResult(
        sweep_dir=rep.sweep_dir,
        name=rep.sweep_name,
        report_dir=rep.report_dir,
        runs=[RunResult.from_summary(r.path, r.summary) for r in rep.runs],
        rows=list(rep.rows),
        figures={n: p for n, p in rep.paths.items() if n.endswith(".png")},
        notes=list(rep.notes),
    )


def _report_grid(sweep_dir: Path, grid_dir: Path | None, console=None) -> SweepResult:
    from resexp.report import build_report

    rep = build_report(sweep_dir, console=console or _quiet_console(), grid_dir=grid_dir)
    return _as_result(rep)


def report(sweep_dir: str | Path) -> list[SweepResult]:
    """Rebuild results.csv, figures and TensorBoard aggregates of every grid in `sweep_dir`."""
    from resexp.report import build_reports

    return [_as_result(r) for r in build_reports(Path(sweep_dir), console=_quiet_console())]


def load_sweep(sweep_dir: str | Path, grid: str | None = None) -> SweepResult:
    """A sweep directory's grid (its first, or the one named `grid`), its aggregates rebuilt from the
    runs (results.csv and figures are derived files; TensorBoard's are left as they are)."""
    from resexp.report import build_reports

    reports = build_reports(Path(sweep_dir), console=_quiet_console(), write_tensorboard=False)
    if grid is None:
        return _as_result(reports[0])
    for rep in reports:
        if grid in (rep.sweep_name, rep.report_dir.name):
            return _as_result(rep)
    names = ", ".join(r.sweep_name for r in reports)
    raise UserError(f"{sweep_dir}: no grid named {grid!r} (grids: {names})")


# ----------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class IdentityResult:
    """Every residual branch's last layer zeroed: does each block return its input?"""

    architecture: str  # "ResNet-20, option A", "plain-20", ...
    dtype: str
    images: int
    dataset: str
    rows: list[dict[str, Any]]  # per block: block, shortcut, max_abs_diff_input, ..., holds, verdict
    shortcut: bool
    projection: str
    min_block_input: float | None  # over all blocks: >= 0, since each input is a relu output

    @property
    def holds(self) -> bool:
        """True when the net is residual and every block reduces to its shortcut."""
        return self.shortcut and all(r["holds"] for r in self.rows)


def _architecture(m: Any) -> str:
    """`ResNet-20, option A`, `plain-20`, `residual MLP depth 4`: the paper's names."""
    if m.kind == "cnn":
        name = f"{'ResNet' if m.shortcut else 'plain'}-{m.depth}"
    else:
        name = f"{'residual' if m.shortcut else 'plain'} MLP depth {m.depth}"
    if m.shortcut:
        name += f", option {ShortcutOption(m.projection).letter}"
    return name


def identity(
    config: str | Path, overrides: Overrides | None = None, *, seed: int | None = None, examples: int = 64
) -> IdentityResult:
    """The identity argument, checked on the initial net of `config` (see `resexp identity`)."""
    from resexp.config import load_config

    if examples < 1:
        raise UserError(f"examples must be at least 1, not {examples}")
    cfg = load_config(config, _overrides(overrides))
    _configure()
    import jax.numpy as jnp

    from resexp.data import load_data
    from resexp.diagnostics import identity_check
    from resexp.models import build_model

    data = load_data(cfg.data, source=str(config))
    seed = cfg.train.seed if seed is None else seed
    # The initialisation `resexp train` starts from (jitted, compute dtype included).
    net = build_model(cfg.model, data.image_shape, data.num_classes, seed=seed, dtype=cfg.train.dtype)
    x = data.normalize(data.x_test[: min(examples, data.x_test.shape[0])])
    rows = identity_check(net, jnp.asarray(x))
    return IdentityResult(
        architecture=_architecture(cfg.model),
        dtype=cfg.train.dtype,
        images=int(x.shape[0]),
        dataset=data.name,
        rows=rows,
        shortcut=cfg.model.shortcut,
        projection=cfg.model.projection,
        min_block_input=min((r["input_min"] for r in rows), default=None) if cfg.model.shortcut else None,
    )


# ----------------------------------------------------------------------------- the why lab


@dataclass(frozen=True)
class AnalysisResult:
    """What `analyze` did: the runs analysed, the figures against depth, and its notes."""

    sweep_dir: Path
    analysed: list[str]
    diverged: list[str]
    figures: dict[str, Path]
    notes: list[str]
    computed: int
    cached: int


def analyze(
    sweep_dir: str | Path,
    only: Sequence[str] | str | None = None,
    *,
    jobs: int = 1,
    grid: str | None = None,
    examples: int | None = None,
    precise_bn_batches: int | None = None,
) -> AnalysisResult:
    """The why lab (lesion, gradients, paths, landscape, hessian, or `only` those) on every run of a
    grid (the directory's first, `grid=NAME`, or `grid="all"`); results are cached per run, the
    figures against depth and the report's columns are rewritten. `load_sweep` then shows the columns."""
    from resexp.analysis import parse_only
    from resexp.analysis.sweep import analyze_sweep

    if jobs < 1:
        raise UserError(f"jobs must be at least 1, not {jobs}")
    names = parse_only(only if isinstance(only, str) or only is None else ",".join(only))
    _configure()
    res = analyze_sweep(
        Path(sweep_dir), names, jobs=jobs, grid=grid, examples=examples, precise_bn_batches=precise_bn_batches
    )
    return AnalysisResult(
        sweep_dir=res.sweep_dir,
        analysed=list(res.analysed),
        diverged=list(res.diverged),
        figures=dict(res.figures),
        notes=list(res.notes),
        computed=res.computed,
        cached=res.cached,
    )
