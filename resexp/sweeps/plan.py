"""A sweep is a grid of ordinary runs under one directory, plus aggregates rebuilt from them.

    <out>/<name>/<run-id>/...            one run per grid cell (same layout as `resexp train`)
    <out>/<name>/sweep.json              the manifest of the first grid swept into the directory
    <out>/<name>/results.csv ...         its report, rebuilt by `resexp report` at any time
    <out>/<name>/grids/<grid>/sweep.json another grid swept into the same directory, and its report

Runs are shared: a cell that two grids have in common is trained once. A manifest is what
makes a grid's report show exactly its own cells.

Re-running a sweep skips completed runs and resumes interrupted ones; several processes
(`--jobs`, `--shard I/N`, two terminals) can share one directory because each run is
claimed with an atomic lock before it is trained.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from resexp.core.config import Config, ConfigError, apply_overrides, check_key, parse_value, run_id, with_updates
from resexp.core.errors import UserError
from resexp.core.placement import Placement, plan, sharing_rule, visible_gpus
from resexp.runs.store import FINAL, GRIDS_DIR, MANIFEST, Manifest, read_manifests, read_summary, write_json


@dataclass(frozen=True)
class Cell:
    """One grid point: its config (sweep section cleared) and the swept values that made it."""

    cfg: Config
    keys: dict[str, Any]
    dir_name: str | None = None  # set by `in_sweep_dir`: the run's directory there, if not named by its id

    @property
    def run_id(self) -> str:
        """The run's directory name: its id, or the older id an earlier version made it under."""
        return self.dir_name or run_id(self.cfg)


def in_sweep_dir(cells: list[Cell], sweep_dir: Path) -> list[Cell]:
    """`cells`, each named by the directory its run has in `sweep_dir`: a run an earlier version
    made under an older id keeps that directory (resexp.runs.store.run_dir_for)."""
    from resexp.runs.store import run_dir_for

    out = []
    for c in cells:
        name = run_dir_for(sweep_dir, c.cfg).name
        out.append(c if name == run_id(c.cfg) else Cell(c.cfg, c.keys, name))
    return out


def parse_grid(texts: list[str], source: str = "--grid") -> dict[str, list[Any]]:
    """`--grid model.depth=8,20,56` -> {"model.depth": [8, 20, 56]} (values typed as YAML)."""
    axes: dict[str, list[Any]] = {}
    for text in texts:
        if "=" not in text:
            raise ConfigError(source, text, "expected key=v1,v2,... (e.g. model.depth=8,20,56)")
        key, values = text.split("=", 1)
        key = key.strip()
        check_key(source, key)
        parsed = parse_value(values) if values.strip().startswith("[") else [parse_value(v) for v in values.split(",")]
        if not isinstance(parsed, list):
            parsed = [parsed]
        parsed = [v for v in parsed if v not in ("", None)]
        if not parsed:
            raise ConfigError(source, key, "empty sweep axis (give at least one value)")
        axes[key] = parsed
    return axes


def expand_grid(cfg: Config, extra_axes: dict[str, list[Any]] | None = None, source: str = "sweep") -> list[Cell]:
    """The cartesian product of the sweep axes, each cell validated before anything runs.

    `sweep_overrides` then adjust the cells they match (e.g. ResNet-110's warm-up)."""
    axes = grid_axes(cfg, extra_axes)
    base = cfg.model_copy(update={"sweep": {}, "sweep_overrides": []})
    if not axes:
        return [Cell(apply_overrides(cfg, base, source), {})]
    keys = list(axes)
    cells, seen = [], set()
    for values in itertools.product(*(axes[k] for k in keys)):
        updates = dict(zip(keys, values, strict=True))
        try:
            cell_cfg = apply_overrides(cfg, with_updates(base, updates, source=source), source)
        except ConfigError as exc:
            raise ConfigError(source, exc.key, f"{exc.message} (in sweep cell {updates})") from None
        rid = run_id(cell_cfg)
        if rid not in seen:  # e.g. projection swept for plain nets: identical runs collapse
            seen.add(rid)
            cells.append(Cell(cell_cfg, updates))
    return cells


def _grid_slug(extra_axes: dict[str, list[Any]], run_ids: list[str]) -> str:
    """`weight_decay=0,0.0001,0.001-3fa2b1`: the --grid axes, readable, plus a hash of the cells."""
    digest = hashlib.sha256(",".join(run_ids).encode()).hexdigest()[:6]
    parts = [f"{k.rsplit('.', 1)[-1]}={','.join(str(v) for v in vs)}" for k, vs in extra_axes.items()]
    text = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", "_".join(parts))[:80]
    return f"{text}-{digest}" if text else f"grid-{digest}"


def record_grid(
    sweep_dir: Path, name: str, axes: dict[str, list[Any]], extra_axes: dict[str, list[Any]], cells: list[Cell]
) -> Manifest:
    """The manifest of this grid in `sweep_dir`: an existing one with the same cells, else a new one
    (the directory's first grid at its top, any other in ``grids/<slug>/``)."""
    run_ids = sorted(c.run_id for c in cells)
    for m in read_manifests(sweep_dir):
        if sorted(m.run_ids) == run_ids:
            return m
    path = sweep_dir / MANIFEST
    if path.exists():
        path = sweep_dir / GRIDS_DIR / _grid_slug(extra_axes, run_ids) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = [c.run_id for c in cells]
    write_json(
        path,
        {
            "name": name,
            "axes": axes,
            "run_ids": ids,
            "command": " ".join(["resexp", *sys.argv[1:]]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    return Manifest(path, name, axes, ids)


def grid_axes(cfg: Config, extra_axes: dict[str, list[Any]] | None = None) -> dict[str, list[Any]]:
    """The axes `expand_grid` sweeps: the config's `sweep:` section, then `--grid` on top."""
    axes = dict(cfg.sweep)
    axes.update(extra_axes or {})
    return axes


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError("--shard", None, f"expected I/N with 0 <= I < N (got {text!r})") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError("--shard", None, f"expected I/N with 0 <= I < N (got {text!r})")
    return i, n


def shard_cells(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """Every `count`-th cell from `index`: shards are disjoint and together cover the grid."""
    return cells[index::count]


def group_seeds(cells: list[Cell], size: int) -> list[list[Cell]]:
    """Cells that differ only in `train.seed`, in groups of up to `size` (one vmapped program)."""
    if size <= 1:
        return [[c] for c in cells]
    buckets: dict[str, list[Cell]] = {}
    for c in cells:
        other = {k: v for k, v in c.keys.items() if k != "train.seed"}
        buckets.setdefault(repr(sorted(other.items(), key=lambda kv: kv[0])), []).append(c)
    groups = []
    for members in buckets.values():
        groups += [members[i : i + size] for i in range(0, len(members), size)]
    return groups


def record_failure(cells: list[Cell], sweep_dir: Path, exc: BaseException) -> list[dict]:
    """A crash becomes a `failed` summary of each unfinished run (config, sweep keys and, for a bug, its
    traceback), whichever executor trained it, so the report lists it; one result per run."""
    message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    results = []
    for c in cells:
        run_dir = sweep_dir / c.run_id
        summary = read_summary(run_dir) or {}
        if summary.get("status") not in FINAL and run_dir.exists():
            summary.update(
                {
                    "run_id": c.run_id,
                    "status": "failed",
                    "error": message,
                    "config": c.cfg.model_dump(mode="json"),
                    "sweep": {"name": c.cfg.name, "keys": c.keys},
                }
            )
            if not isinstance(exc, UserError):
                summary["traceback"] = "".join(traceback.format_exception(exc))
            write_json(run_dir / "summary.json", summary)
        results.append(
            {"run_id": c.run_id, "status": summary.get("status", "failed"), "skipped": False, "error": message}
        )
    return results


def _train_group(cells: list[Cell], sweep_dir: Path, progress: bool, extra_summary: dict | None = None) -> list[dict]:
    """Train one group; a crash becomes a `failed` summary so the sweep goes on."""
    from resexp.runs.train import train_runs

    try:
        outcomes = train_runs(
            [c.cfg for c in cells],
            sweep_dir,
            progress=progress,
            sweep_keys=[c.keys for c in cells],
            extra_summary=extra_summary,
        )
        return [
            {
                "run_id": o.run_dir.name,
                "status": o.summary.get("status"),
                "skipped": o.skipped,
                "final_train_loss": o.summary.get("final_train_loss"),
            }
            for o in outcomes
        ]
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # record and carry on: one broken cell must not stop the grid
        return record_failure(cells, sweep_dir, exc)


def _init_worker(slots, placements: list[Placement]) -> None:
    """A pool worker's first act, before JAX: take a free slot and its placement (GPU, memory)."""
    from resexp.core.placement import apply

    apply(placements[slots.get()])


def _worker(payload: tuple[list[dict], list[dict], str, dict | None]) -> list[dict]:
    from resexp.core.runtime import configure_jax

    configure_jax()
    cfg_dicts, keys, sweep_dir, extra_summary = payload
    cells = [Cell(Config.model_validate(d), k) for d, k in zip(cfg_dicts, keys, strict=True)]
    return _train_group(cells, Path(sweep_dir), progress=False, extra_summary=extra_summary)


class Stopped(KeyboardInterrupt):
    """The parent of a `--jobs K` pool was asked to stop by `signum`; its workers were told too."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _forward_stops:
    """A stop signal to the parent of a `--jobs K` pool (a scheduler's stop, `kill PID`) reaches its
    workers too: each checkpoints its run and exits as on Ctrl-C, and the parent stops like
    Ctrl-C (raising `Stopped`). Without it the parent would die at once and leave its workers
    training orphaned. SIGUSR1/SIGUSR2 (SLURM's `--signal=B:...`, sent to the batch shell only)
    are always passed on; SIGTERM only when `sigterm` is true: inside a SLURM job, SLURM sends
    it to every process of the job itself, and a second signal would stop a worker at once,
    without its checkpoint. Ctrl-C (SIGINT) reaches the workers from the terminal directly."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self, pool: ProcessPoolExecutor, sigterm: bool):
        self.pool, self.sigterm = pool, sigterm
        self.previous: dict[int, Any] = {}

    def _handler(self, signum, _frame) -> None:
        if signum != signal.SIGTERM or self.sigterm:
            for proc in list((getattr(self.pool, "_processes", None) or {}).values()):
                with contextlib.suppress(ProcessLookupError, OSError):
                    os.kill(proc.pid, signum)
        raise Stopped(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def run_sweep(
    groups: list[list[Cell]],
    sweep_dir: Path,
    *,
    jobs: int = 1,
    progress: bool = True,
    console=None,
    placements: list[Placement] | None = None,
    extra_summary: dict | None = None,
    forward_sigterm: bool | None = None,
) -> list[dict]:
    """Train every group (skipping finished runs), `jobs` at a time; returns one result per run.

    With `jobs` > 1 the groups go to a pool of worker processes, each placed by
    `resexp.core.placement.plan` (its own GPU, a share of its memory) unless `placements` says where.
    `extra_summary` is merged into every summary.json (a launcher's job id). `forward_sigterm`
    (default: unless this process is inside a SLURM job) passes a SIGTERM on to the workers.
    """
    results: list[dict] = []
    total = sum(len(g) for g in groups)

    def report(done: list[dict]) -> None:
        """One line per finished run, the same for sequential and `--jobs` sweeps."""
        for r in done:
            results.append(r)
            if console is not None:
                console.print(
                    f"[{len(results)}/{total}] {r['run_id']}: {r['status']}"
                    + (" (already done)" if r.get("skipped") else ""),
                    highlight=False,
                )

    if jobs <= 1:
        for group in groups:
            done = _train_group(group, sweep_dir, progress, extra_summary)
            report(done)
            if any(r["status"] == "interrupted" for r in done):
                break  # Ctrl-C/SIGTERM stops the sweep, not just the run in flight; a re-run resumes
        return results
    workers = max(1, min(jobs, len(groups)))
    if placements is None:
        placements = plan(workers, visible_gpus())
    workers = min(workers, len(placements))
    if forward_sigterm is None:
        forward_sigterm = "SLURM_JOB_ID" not in os.environ
    ctx = multiprocessing.get_context("spawn")  # JAX is not fork-safe
    slots = ctx.Queue()
    for i in range(workers):
        slots.put(i)
    with (
        ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(slots, placements)
        ) as pool,
        _forward_stops(pool, forward_sigterm),
    ):
        futures = [
            pool.submit(
                _worker,
                ([c.cfg.model_dump(mode="json") for c in g], [c.keys for c in g], str(sweep_dir), extra_summary),
            )
            for g in groups
        ]
        try:
            for fut in as_completed(futures):
                done = fut.result()
                report(done)
                if any(r["status"] == "interrupted" for r in done):
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            # Start nothing new; workers in flight got the signal too and checkpoint their runs.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results


# --------------------------------------------------------------------------- planned sweeps and their executors


@dataclass(frozen=True)
class SweepPlan:
    """A sweep resolved before anything is written: its cells, this shard's share, where it goes."""

    source: str
    cfg: Config
    axes: dict[str, list[Any]]
    cells: list[Cell]  # every cell of the grid
    mine: list[Cell]  # this shard's cells
    groups: list[list[Cell]]  # `mine`, seeds grouped by train.vmap_seeds
    sweep_dir: Path
    name: str
    shard: tuple[int, int]


def record_plan(plan: SweepPlan) -> Manifest:
    """Write the plan's manifest; an unwritable directory is one line."""
    from resexp.core.errors import RunError

    try:
        return record_grid(plan.sweep_dir, plan.name, grid_axes(plan.cfg, plan.axes), plan.axes, plan.cells)
    except OSError as exc:
        raise RunError(f"{plan.sweep_dir}: cannot write the sweep manifest ({exc.strerror or exc})") from None


def check_data(cells: list[Cell], *, source: str, load: bool) -> None:
    """Fail once, before any run, on a missing or corrupt dataset. `load=False` only checks that the
    files are there (worker processes and jobs load them; here they would hold device memory)."""
    from resexp.core.data import load_data
    from resexp.core.datasets import FILE_DATASETS, find_dataset

    if not cells:
        return
    if load:
        load_data(cells[0].cfg.data, source=source)
        return
    wanted = {(c.cfg.data.name, c.cfg.data.dir or "") for c in cells if c.cfg.data.name in FILE_DATASETS}
    for name, directory in sorted(wanted):
        find_dataset(name, directory or None)


def plan_table(plan: SweepPlan):
    """`sweep --dry-run`: each run of this shard, its swept values, and its state on disk."""
    from rich.table import Table

    index, count = plan.shard
    title = f"{plan.cfg.name}: {len(plan.mine)} of {len(plan.cells)} runs"
    table = Table(title=title + (f" (shard {index}/{count})" if count > 1 else ""))
    table.add_column("run id")
    keys = sorted({k for c in plan.mine for k in c.keys})
    for k in keys:
        table.add_column(k)
    table.add_column("state")
    for c in plan.mine:
        s = read_summary(plan.sweep_dir / c.run_id)
        table.add_row(c.run_id, *(str(c.keys.get(k, "")) for k in keys), (s or {}).get("status", "new"))
    return table


@dataclass
class Executed:
    """What an executor did: the sweep's exit code, the lines for stderr once it is over, and
    whether the grid's report is due (a launcher that stopped waiting or left a report job: not)."""

    code: int
    notes: list[str] = field(default_factory=list)
    report: bool = True
    missing_report_ok: bool = False  # no run got a summary (jobs that never started): a note, not an error


class Executor(Protocol):
    """Where a planned sweep's cells train: this process, a pool of processes, or submitit jobs."""

    @property
    def loads_data(self) -> bool:
        """The data pre-check loads the data (it trains here) or only finds its files."""

    def dry_run(self, plan: SweepPlan, console) -> None:
        """Print what would train; write nothing."""

    def prepare(self, plan: SweepPlan) -> tuple[SweepPlan, list[Cell]]:
        """Checks that need nothing written; the plan as it runs and the cells whose data it needs."""

    def execute(self, plan: SweepPlan, manifest: Manifest) -> Executed:
        """Train (or submit) the plan's cells."""


@dataclass
class InProcess:
    """The sweep trained by this process, or `jobs` at a time by a pool of worker processes."""

    jobs: int = 1
    progress: bool = False
    console: Any = None  # where each finished run is announced

    def __post_init__(self) -> None:
        if self.jobs > 1:
            sharing_rule()  # an unknown RESEXP_GPU_SHARING fails here, before anything is written

    @property
    def loads_data(self) -> bool:
        return self.jobs == 1

    def dry_run(self, plan: SweepPlan, console) -> None:
        console.print(plan_table(plan))

    def prepare(self, plan: SweepPlan) -> tuple[SweepPlan, list[Cell]]:
        from resexp.core.runtime import configure_jax

        configure_jax()
        return plan, plan.mine

    def execute(self, plan: SweepPlan, manifest: Manifest) -> Executed:
        if self.console is not None:
            index, count = plan.shard
            self.console.print(
                f"[bold]{manifest.name}[/]: {len(plan.mine)} runs"
                + (f" (shard {index}/{count} of {len(plan.cells)})" if count > 1 else "")
                + f" -> {plan.sweep_dir}",
                highlight=False,
            )
        outcomes = run_sweep(plan.groups, plan.sweep_dir, jobs=self.jobs, progress=self.progress, console=self.console)
        return outcome_notes(outcomes, plan.sweep_dir)


def outcome_notes(outcomes: list[dict], sweep_dir: Path) -> Executed:
    """The runs of an in-process sweep that did not finish, one line each; the sweep's exit code."""
    from rich.markup import escape

    bad = [r for r in outcomes if r["status"] not in FINAL]
    elsewhere = [r for r in bad if r["status"] == "running"]
    interrupted = [r for r in bad if r["status"] == "interrupted"]
    failed = [r for r in bad if r["status"] not in ("running", "interrupted")]
    notes = [
        f"[red]{r['status']}[/]: {r['run_id']}" + (f": {escape(r['error'])}" if r.get("error") else "") for r in failed
    ]
    if interrupted:
        notes.append(
            f"[yellow]interrupted[/]: {interrupted[0]['run_id']} saved a checkpoint; "
            "re-run the same command to resume the sweep"
        )
    if elsewhere:
        notes.append(
            f"{len(elsewhere)} run(s) are being trained by another process; "
            f"re-run `resexp report {sweep_dir}` when it finishes"
        )
    return Executed(130 if interrupted else 1 if failed else 0, notes)
