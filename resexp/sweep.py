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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resexp.config import Config, ConfigError, apply_overrides, check_key, parse_value, run_id, with_updates
from resexp.errors import UserError
from resexp.placement import Placement, plan, visible_gpus
from resexp.runs import GRIDS_DIR, MANIFEST, Manifest, read_manifests, read_summary, write_json


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
    made under an older id keeps that directory (resexp.runs.run_dir_for)."""
    from resexp.runs import run_dir_for

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


def _train_group(cells: list[Cell], sweep_dir: Path, progress: bool, extra_summary: dict | None = None) -> list[dict]:
    """Train one group; a crash becomes a `failed` summary so the sweep goes on."""
    from resexp.train import train_runs

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
        message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        results = []
        for c in cells:
            run_dir = sweep_dir / c.run_id
            summary = read_summary(run_dir) or {}
            if summary.get("status") not in ("completed", "diverged") and run_dir.exists():
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
                    summary["traceback"] = traceback.format_exc()
                write_json(run_dir / "summary.json", summary)
            results.append(
                {"run_id": c.run_id, "status": summary.get("status", "failed"), "skipped": False, "error": message}
            )
        return results


def _init_worker(slots, placements: list[Placement]) -> None:
    """A pool worker's first act, before JAX: take a free slot and its placement (GPU, memory)."""
    from resexp.placement import apply

    apply(placements[slots.get()])


def _worker(payload: tuple[list[dict], list[dict], str, dict | None]) -> list[dict]:
    from resexp.runtime import configure_jax

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
    `resexp.placement.plan` (its own GPU, a share of its memory) unless `placements` says where.
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
