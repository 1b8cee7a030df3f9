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
from typing import TYPE_CHECKING, Any

from resexp.core.errors import ConfigError, RunError, UserError
from resexp.core.variants import ShortcutOption

if TYPE_CHECKING:
    from resexp.sweeps.plan import Executor, SweepPlan

__all__ = [
    "AnalysisResult",
    "IdentityResult",
    "RunResult",
    "SweepOutcome",
    "SweepResult",
    "analyze",
    "execute_sweep",
    "identity",
    "load_sweep",
    "plan_sweep",
    "report",
    "sweep",
    "sweep_executor",
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
    skipped: bool = False  # final already, or being trained by another process: not trained by this call

    @classmethod
    def from_summary(cls, run_dir: Path, summary: dict[str, Any], *, skipped: bool = False) -> RunResult:
        return cls(
            run_id=summary.get("run_id") or run_dir.name,
            run_dir=run_dir,
            status=str(summary.get("status")),
            final_train_loss=summary.get("final_train_loss"),
            final_train_accuracy=summary.get("final_train_accuracy"),
            eval_loss=summary.get("eval_loss"),
            eval_accuracy=summary.get("eval_accuracy"),
            summary=summary,
            skipped=skipped,
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
    from resexp.core.runtime import configure_jax

    configure_jax()


# ----------------------------------------------------------------------------- train


def train(
    config: str | Path,
    overrides: Overrides | None = None,
    *,
    out: str | Path = "runs",
    progress: bool = False,
    console=None,
    distributed: bool | None = False,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> list[RunResult]:
    """Train one config (its `train.vmap_seeds` seeds); a finished run is answered from its directory.

    `distributed` (None: under srun with several tasks) trains one run over several processes
    (jax.distributed); `coordinator`, `num_processes`, `process_id` where srun does not say them.
    """
    from resexp.core.config import apply_overrides, load_config
    from resexp.core.distributed import under_srun
    from resexp.runs.store import finished_runs

    cfg = load_config(config, _overrides(overrides))
    cfg = apply_overrides(cfg, cfg, str(config))  # a sweep_overrides entry this config matches applies here too
    multi = distributed if distributed is not None else under_srun()
    finished = None if multi else finished_runs(cfg, Path(out))  # answered at once, without starting JAX
    if finished is not None:
        return [RunResult.from_summary(run_dir, s, skipped=True) for run_dir, s in finished]
    _configure()
    if multi:
        from resexp.core.distributed import initialize

        initialize(coordinator, num_processes, process_id)
    from resexp.runs.train import train as train_runs

    return [
        RunResult.from_summary(o.run_dir, o.summary, skipped=o.skipped)
        for o in train_runs(cfg, Path(out), progress=progress, console=console, source=str(config))
    ]


# ----------------------------------------------------------------------------- sweep


def plan_sweep(
    config: str | Path,
    overrides: Overrides | None = None,
    *,
    grid: Grid = None,
    out: str | Path = "runs",
    name: str | None = None,
    shard: str | None = None,
) -> SweepPlan:
    """Resolve a sweep (`resexp.sweeps.plan.SweepPlan`): config, grid axes, cells and directory; a bad
    input raises here."""
    from resexp.core.config import load_config
    from resexp.sweeps.plan import (
        SweepPlan,
        expand_grid,
        group_seeds,
        in_sweep_dir,
        parse_grid,
        parse_shard,
        shard_cells,
    )

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


def sweep_executor(
    launcher: str | None = None,
    *,
    jobs: int | None = None,
    shard: str | None = None,
    launcher_options: dict[str, Any] | None = None,
    wait: bool = True,
    progress: bool = False,
    console=None,
    err_console=None,
) -> Executor:
    """Where a sweep trains: this process (`jobs` 1), a pool of `jobs` processes, or submitit jobs
    (`launcher` slurm or local, `launcher_options` named as resexp.sweeps.launch.LAUNCH_FLAGS); a combination
    that cannot work raises here, before anything is read or written."""
    from resexp.sweeps.launch import SubmititExecutor, launch_options
    from resexp.sweeps.plan import InProcess

    opts = launch_options(launcher, shard, jobs, wait=wait, **(launcher_options or {}))
    if launcher is None or opts is None:
        return InProcess(jobs or 1, progress=progress, console=err_console)
    quiet = _quiet_console()
    return SubmititExecutor(launcher, opts, wait=wait, console=console or quiet, err_console=err_console or quiet)


@dataclass(frozen=True)
class SweepOutcome:
    """How a sweep ended: its grid's report (None when none was due), its exit code, lines for stderr."""

    result: SweepResult | None
    code: int
    notes: list[str]


def execute_sweep(plan: SweepPlan, executor: Executor, *, report_console=None) -> SweepOutcome:
    """The one path of every sweep, whatever trains it: the executor's checks, the data pre-check,
    the manifest, the runs, the grid's report (its table printed on `report_console`)."""
    from resexp.sweeps.plan import check_data, record_plan

    plan, cells = executor.prepare(plan)
    check_data(cells, source=plan.source, load=executor.loads_data)
    manifest = record_plan(plan)
    done = executor.execute(plan, manifest)
    if not done.report:
        return SweepOutcome(None, done.code, done.notes)
    try:
        result = _report_grid(plan.sweep_dir, manifest.report_dir, report_console)
    except UserError as exc:
        if not done.missing_report_ok:
            raise
        return SweepOutcome(None, done.code, [f"no report: {exc}", *done.notes])
    return SweepOutcome(result, done.code, done.notes)


def sweep(
    config: str | Path,
    overrides: Overrides | None = None,
    *,
    grid: Grid = None,
    jobs: int = 1,
    out: str | Path = "runs",
    name: str | None = None,
    shard: str | None = None,
    launcher: str | None = None,
    launcher_options: dict[str, Any] | None = None,
) -> SweepResult:
    """Train a grid (finished runs are kept, interrupted ones resume) and rebuild its report.

    `grid` adds or replaces axes: `{"model.depth": [8, 20, 56]}` or `["model.depth=8,20,56"]`.
    `launcher` ("slurm" or "local") runs the cells as submitit jobs and waits for them, with
    `launcher_options` such as `{"partition": "gpu", "gpus_per_run": 1, "time": "1:00:00"}`.
    """
    if jobs < 1:
        raise UserError(f"jobs must be at least 1, not {jobs}")
    executor = sweep_executor(
        launcher, jobs=None if launcher and jobs == 1 else jobs, shard=shard, launcher_options=launcher_options
    )
    outcome = execute_sweep(plan_sweep(config, overrides, grid=grid, out=out, name=name, shard=shard), executor)
    if outcome.result is None:
        if outcome.code == 130:
            raise KeyboardInterrupt
        raise RunError(outcome.notes[0] if outcome.notes else "no report")
    return outcome.result


# ----------------------------------------------------------------------------- reports


def _quiet_console():
    from rich.console import Console

    return Console(quiet=True)


def _as_result(rep: Any) -> SweepResult:
    """A resexp.reporting.records.Report as the public, typed result."""
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
    from resexp.reporting.report import build_report

    rep = build_report(sweep_dir, console=console or _quiet_console(), grid_dir=grid_dir)
    return _as_result(rep)


def report(sweep_dir: str | Path) -> list[SweepResult]:
    """Rebuild results.csv, figures and TensorBoard aggregates of every grid in `sweep_dir`."""
    from resexp.reporting.report import build_reports

    return [_as_result(r) for r in build_reports(Path(sweep_dir), console=_quiet_console())]


def load_sweep(sweep_dir: str | Path, grid: str | None = None) -> SweepResult:
    """A sweep directory's grid (its first, or the one named `grid`), its aggregates rebuilt from the
    runs (results.csv and figures are derived files; TensorBoard's are left as they are)."""
    from resexp.reporting.report import build_reports

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
    from resexp.core.config import load_config

    if examples < 1:
        raise UserError(f"examples must be at least 1, not {examples}")
    cfg = load_config(config, _overrides(overrides))
    _configure()
    import jax.numpy as jnp

    from resexp.core.data import load_data
    from resexp.core.diagnostics import identity_check
    from resexp.core.models import build_model

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
