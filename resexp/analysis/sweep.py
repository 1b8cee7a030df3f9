"""`resexp analyze SWEEP_DIR`: every analysis on every run of a grid, then the figures against
depth (plain vs ResNet), TensorBoard `vs_depth_analysis` series and images, and the report's
columns.

A sweep directory may hold several grids (`resexp.sweeps.plan`): `analyze` takes the first by default,
`--grid NAME` another (its directory under `grids/`), `--grid all` every one. Each grid's
figures go beside its manifest, as its report does, and draw exactly its runs: colour is plain
vs ResNet, every other key the grid sweeps is a marker and line style, named in the legend.

Runs are independent, so `--jobs K` analyses K runs at once in worker processes (each compiles
its own architecture's programs; the persistent compile cache is shared), deepest first. Progress
(per run and analysis, with the time left) comes back to the parent through a queue. A diverged
run is skipped and counted; an analysis that does not apply (paths on a plain net) is one note.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resexp.analysis import REGISTRY, prepare_requests, run_analyses, uncached
from resexp.analysis.common import EVENT_SUFFIX, AnalysisError, inspect_run
from resexp.reporting.analysis_results import HEADLINE, headline_metrics, read_result
from resexp.reporting.records import ANALYSIS_VS_DEPTH_DIR, RunRow, group_dirname, group_label
from resexp.runs.store import write_atomic

ALL_GRIDS = "all"
NOT_LINE_KEYS = ("model.depth", "train.seed", "model.shortcut")  # x axis, pooled, colour


def default_requests(names: list[str], **overrides: Any) -> dict[str, dict]:
    """What `analyze` asks of each run: the commands' defaults with each analysis's
    `SWEEP_OPTIONS`, and `examples` / `precise_bn_batches` for the analyses that take them (None:
    their defaults)."""
    out = {}
    for name in names:
        mod = REGISTRY[name]
        opts: dict[str, Any] = dict(mod.SWEEP_OPTIONS)
        if mod.EXAMPLES is not None:
            opts.update({k: v for k, v in overrides.items() if v is not None})
        out[name] = opts
    return out


@dataclass
class GridRuns:
    """One grid to analyse: its name, where its figures go, its swept keys and its run directories."""

    name: str
    out_dir: Path
    axes: list[str]
    run_dirs: list[Path]


@dataclass
class SweepAnalysis:
    sweep_dir: Path
    grids: list[GridRuns] = field(default_factory=list)
    analysed: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    computed: int = 0
    cached: int = 0
    figures: dict[str, Path] = field(default_factory=dict)


# --------------------------------------------------------------------------- which runs


def grid_label(grid_dir: Path, sweep_dir: Path) -> str:
    """How `--grid` names a grid: "first" for the top one, else its directory under grids/."""
    return "first" if grid_dir.resolve() == sweep_dir.resolve() else grid_dir.name


def select_grids(sweep_dir: Path, grid: str | None) -> list[GridRuns]:
    """The grids `--grid` asks for: None the first, "all" every one, else the one named
    (its directory under grids/, or a unique prefix of it)."""
    from resexp.reporting.report import read_grids

    grids = read_grids(sweep_dir)
    if not grids:  # runs of `resexp train`, or an older resexp: the directory is one grid
        dirs = sorted(p for p in sweep_dir.iterdir() if (p / "summary.json").is_file())
        found = [GridRuns("first", sweep_dir, _inferred_axes(dirs), dirs)]
    else:
        found = [
            GridRuns(
                grid_label(g.report_dir, sweep_dir),
                g.report_dir,
                list(g.axes),
                [sweep_dir / rid for rid in (g.run_ids or []) if (sweep_dir / rid / "summary.json").is_file()],
            )
            for g in grids
        ]
    if grid is None:
        return found[:1]
    if grid == ALL_GRIDS:
        return found
    hits = [g for g in found if g.name == grid] or [g for g in found if g.name.startswith(grid)]
    if len(hits) != 1:
        names = ", ".join(g.name for g in found)
        what = "matches several grids" if hits else "no such grid"
        raise AnalysisError(f"--grid {grid}: {what} in {sweep_dir}; choose from {names}, or all")
    return hits


def _inferred_axes(run_dirs: list[Path]) -> list[str]:
    """Model and optimiser keys that differ between the runs (a directory without manifests)."""
    configs = [json.loads((d / "summary.json").read_text()).get("config") or {} for d in run_dirs]
    keys = []
    for section in ("model", "optim", "train"):
        for k in sorted({k for c in configs for k in (c.get(section) or {})}):
            if len({json.dumps((c.get(section) or {}).get(k), sort_keys=True) for c in configs}) > 1:
                keys.append(f"{section}.{k}")
    return keys


def _applicable(run_dir: Path, requests: dict[str, dict]) -> tuple[dict[str, dict], dict[str, str]]:
    """(the requests that apply to this run, analysis -> why not for those that don't)."""
    info = inspect_run(run_dir)
    ok, skipped = {}, {}
    for name, opts in requests.items():
        try:
            REGISTRY[name].prepare(info, **opts)
        except AnalysisError as exc:
            skipped[name] = str(exc).split(": ", 1)[-1]
            continue
        ok[name] = opts
    return ok, skipped


def summarize_skips(skips: list[tuple[str, str, str]]) -> list[str]:
    """[(run, analysis, reason)] -> one note per (analysis, reason): "paths: not applicable to
    4 runs (paths need a residual net ...)"."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for run, name, reason in skips:
        grouped.setdefault((name, reason), []).append(run)
    return [
        f"{name}: not applicable to {len(runs)} run{'s' if len(runs) > 1 else ''} ({reason})"
        + (f": {runs[0]}" if len(runs) == 1 else "")
        for (name, reason), runs in grouped.items()
    ]


# --------------------------------------------------------------------------- analysing


def _analyze_one(run_dir: str, requests: dict[str, dict], sink=None) -> dict[str, bool]:
    """In a worker (or in-process): name -> answered from the cache."""
    return {name: cached for name, (_, cached) in run_analyses(Path(run_dir), requests, sink).items()}


def analyze_sweep(
    sweep_dir: Path,
    names: list[str],
    *,
    jobs: int = 1,
    grid: str | None = None,
    examples: int | None = None,
    precise_bn_batches: int | None = None,
    console=None,
) -> SweepAnalysis:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise AnalysisError(f"{sweep_dir}: not a sweep directory")
    out = SweepAnalysis(sweep_dir, grids=select_grids(sweep_dir, grid))
    requests = default_requests(names, examples=examples, precise_bn_batches=precise_bn_batches)
    work: list[tuple[Path, dict]] = []
    skips: list[tuple[str, str, str]] = []
    seen: set[Path] = set()
    for g in out.grids:
        for child in g.run_dirs:
            if child in seen:  # a run shared by two grids is analysed once
                continue
            seen.add(child)
            try:
                ok, skipped = _applicable(child, requests)
            except AnalysisError as exc:
                status = json.loads((child / "summary.json").read_text()).get("status")
                if status == "diverged":
                    out.diverged.append(child.name)
                else:
                    out.notes.append(f"{child.name}: skipped ({str(exc).split(': ', 1)[-1]})")
                continue
            skips += [(child.name, name, reason) for name, reason in skipped.items()]
            if ok:
                work.append((child, ok))
    out.notes += summarize_skips(skips)
    if not work:
        raise AnalysisError(
            f"{sweep_dir}: no completed run to analyse" + (f" ({len(out.diverged)} diverged)" if out.diverged else "")
        )
    # Deepest first: the costliest runs start at once, so K workers finish together.
    work.sort(key=lambda w: -inspect_run(w[0]).summary["config"]["model"]["depth"])
    results = _run_all(work, jobs, console)
    for (d, _), res in zip(work, results, strict=True):
        out.analysed.append(d.name)
        out.cached += sum(res.values())
        out.computed += sum(not c for c in res.values())
    for g in out.grids:
        written = write_sweep_outputs(sweep_dir, g)
        out.figures.update({(f"{g.name}/{k}" if len(out.grids) > 1 else k): v for k, v in written.items()})
    from rich.console import Console

    from resexp.reporting.report import build_reports

    build_reports(sweep_dir, console=Console(quiet=True))
    return out


def _run_all(work: list[tuple[Path, dict]], jobs: int, console) -> list[dict[str, bool]]:
    """Analyse every run (in `jobs` worker processes when > 1), showing progress on `console`."""
    from resexp.analysis.progress import ProgressBoard, QueueSink

    board_runs = []
    for d, r in work:
        info = inspect_run(d)
        todo = uncached(info, prepare_requests(info, r))
        if todo:
            board_runs.append((d.name, info.n_blocks, todo))
    workers = min(jobs, max(1, len(board_runs)))
    board = ProgressBoard(console, board_runs, jobs=workers) if console is not None else None
    if jobs <= 1 or len(work) <= 1:
        with board or contextlib.nullcontext():
            return [_analyze_one(str(d), r, board) for d, r in work]
    import multiprocessing as mp
    import threading
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, board or contextlib.nullcontext():
        queue = manager.Queue()

        def pump() -> None:
            while (event := queue.get()) is not None:
                if board is not None:
                    board(event)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            with ProcessPoolExecutor(max_workers=min(jobs, len(work)), mp_context=ctx) as pool:
                futures = [pool.submit(_analyze_one, str(d), r, QueueSink(queue)) for d, r in work]
                results = [f.result() for f in futures]
        finally:
            queue.put(None)
            reader.join()
    return results


# --------------------------------------------------------------------------- figures and TensorBoard


def _dotted(config: dict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def line_group(summary: dict, axes: list[str]) -> dict[str, Any]:
    """The grid's swept values of a run that make it a line of its own (all but depth, seed and
    shortcut), read from its resolved config."""
    return {k: _dotted(summary["config"], k) for k in axes if k not in NOT_LINE_KEYS}


def net_label(summary: dict, group: dict[str, Any]) -> str:
    """ "plain", "ResNet (option A)", "ResNet (wd=0.0001)": the family plus what else the grid sweeps."""
    record = RunRow(summary.get("run_id", ""), Path("."), str(summary.get("status")), {}, summary)
    return group_label(group, [record])


def _points(run_dirs: list[Path], axes: list[str]) -> list[dict]:
    """One point per run for the figures against depth: its line, depth, headline numbers, each
    analysis's `POINT_KEYS` and, under "results", every stored result."""
    points = []
    for d in run_dirs:
        try:
            summary = json.loads((d / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        group = line_group(summary, axes)
        p: dict[str, Any] = {
            "net": net_label(summary, group),
            "plain": not summary["config"]["model"]["shortcut"],
            "group": {"model.shortcut": summary["config"]["model"]["shortcut"], **group},
            "depth": summary["config"]["model"]["depth"],
            **headline_metrics(d),
        }
        results = {}
        for name, mod in REGISTRY.items():
            doc = read_result(d, name)
            if doc is None:
                continue
            results[name] = doc
            p.update({(f"{name}_{k}" if k == "bn_statistics" else k): doc.get(k) for k in mod.POINT_KEYS})
        p["results"] = results
        points.append(p)
    return points


def write_sweep_outputs(sweep_dir: Path, grid: GridRuns) -> dict[str, Path]:
    """Each analysis's figure against depth (`VS_DEPTH`) and the TensorBoard vs-depth series and
    images of one grid, beside its manifest (the grid's runs only)."""
    from resexp.runs.tblog import EventWriter, event_files

    points = _points(grid.run_dirs, grid.axes)
    name = sweep_dir.name if grid.out_dir == sweep_dir else f"{sweep_dir.name}/{grid.name}"
    pngs: dict[str, bytes | None] = {
        mod.VS_DEPTH: mod.plot_vs_depth(points, name) for mod in REGISTRY.values() if mod.VS_DEPTH
    }
    out_dir = grid.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for fname, png in pngs.items():
        if png is not None:
            write_atomic(out_dir / fname, png)
            written[fname] = out_dir / fname
    vs = out_dir / ANALYSIS_VS_DEPTH_DIR
    for old in event_files(vs, EVENT_SUFFIX, recursive=True) if vs.is_dir() else []:
        old.unlink(missing_ok=True)
    groups: dict[str, list[dict]] = {}
    for p in points:
        groups.setdefault(group_dirname(p["group"]), []).append(p)
    for gname, members in groups.items():
        with EventWriter(vs / gname, EVENT_SUFFIX) as w:
            w.session_start(0)  # a live TensorBoard drops what it read from the replaced file (see tblog)
            for depth in sorted({p["depth"] for p in members}):
                at = [p for p in members if p["depth"] == depth]
                values = {}
                for col in HEADLINE:
                    vals = [p[col] for p in at if p.get(col) is not None and p[col] == p[col]]
                    if vals:
                        values[f"{col}_vs_depth/mean"] = sum(vals) / len(vals)
                w.scalars(int(depth), values)
    if written:
        with EventWriter(vs, EVENT_SUFFIX) as w:
            w.session_start(0)
            for fname, png in pngs.items():
                if png is not None:  # exactly the figures in `written`, in the same order
                    w.image(f"analysis/{fname.removesuffix('.png')}", png, step=0)
    return written
