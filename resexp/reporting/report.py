"""Rebuild every aggregate of a sweep directory from its runs' ``summary.json`` files.

This module reads the runs, writes the files and prints the tables; what they hold (runs, cells,
groups, names) is `resexp.reporting.records`.

A sweep directory holds runs (one directory each) and the grids swept into it. Each
``resexp sweep`` records its grid in a manifest: the first grid of a directory in
``SWEEP/sweep.json``, any other grid later swept into the same directory in
``SWEEP/grids/<name>/sweep.json`` (runs are shared: a cell of both grids is trained once).
Every grid's report is written beside its manifest and shows exactly that grid's cells:

* ``results.csv`` / ``results.json``: one row per run (swept keys as dotted columns);
* ``aggregate.csv``: one row per cell (the swept keys except ``train.seed``) with
  mean and SAMPLE standard deviation (ddof=1; 0 when n=1) over the cell's
  completed runs, the number of runs and of diverged runs;
* figures (``resexp.reporting.figures``): ``loss_vs_depth.png``, ``response_std.png`` and
  ``residual_ratio_vs_wd.png`` when the grid allows;
* TensorBoard, for the whole directory (every grid's runs pooled by config): the answer in
  ``SWEEP/vs_depth/<family>/``, one run per family (plain, ResNet) whose series step over
  depth and name the other swept keys in their tags, and every grid's figures as images in
  ``SWEEP/vs_depth/``; the Custom Scalars layout and the HParams experiment at ``SWEEP/``,
  one HParams session per run in ``SWEEP/<run-id>/``. One run per family, written first,
  is what keeps a family's colour in TensorBoard (`resexp.reporting.colors`).

A run's swept values are always read from its own resolved config (``summary.json`` →
``config``), never from what happened to be swept when it was launched, so runs reused by
a later grid aggregate correctly. A directory without manifests (runs from ``resexp
train``, or an older resexp) is reported as one grid. Report event files end with
`REPORT_SUFFIX` and are deleted and rewritten each time: re-running replaces, never
duplicates.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from resexp.core.errors import UserError
from resexp.reporting.analysis_results import HEADLINE, headline_metrics
from resexp.reporting.colors import family_position
from resexp.reporting.records import (
    AGGREGATE_METRICS,
    ANALYSIS_VS_DEPTH_DIR,
    DEPTH_KEY,
    REPORT_SUFFIX,
    RUNNING_BN_METRICS,
    SEED_KEY,
    SHORTCUT_KEY,
    VS_DEPTH_DIR,
    WD_KEY,
    GridCell,
    Report,
    RunRow,
    aggregate,
    eval_bn_note,
    finite,
    format_value,
    group_dirname,
    group_label,
    mean_std,
    net_name,
    short_names,
    sort_key,
    to_float,
)
from resexp.runs.store import GRIDS_DIR, MANIFEST, read_manifests, write_atomic
from resexp.runs.tblog import (
    EventWriter,
    answer_wall_time,
    by_depth_tag,
    by_layer_tag,
    counts_tag,
    event_files,
    hparam_domains,
    metric_tag,
    sweep_layout,
    vs_depth_tag,
)

__all__ = ["FIGURES", "TABLE_NOTE", "Grid", "build_report", "build_reports", "load_runs", "read_grids", "render_table"]

ROW_METRICS = (*AGGREGATE_METRICS, "params", "wall_seconds", "diverged_at_step")
FIGURES = ("loss_vs_depth.png", "response_std.png", "residual_ratio_vs_wd.png", "test_error_vs_paper.png")

_METRIC_NAMES = {
    "final_train_loss": "final train loss",
    "final_train_accuracy": "final train accuracy",
    "eval_loss": "eval loss",
    "eval_accuracy": "eval accuracy",
    "diverged": "diverged (1 = yes)",
}


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def _json_clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    return value


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    write_atomic(path, buf.getvalue())


# ----------------------------------------------------------------------------- loading


def load_runs(sweep_dir: Path, notes: list[str], unreadable: dict[str, str] | None = None) -> list[RunRow]:
    """Every ``<run-id>/summary.json`` under `sweep_dir`; problems become notes, and a summary that
    cannot be read is also recorded in `unreadable` (run id -> why)."""
    runs = []
    for child in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        if child.name.startswith(".") or child.name in (VS_DEPTH_DIR, GRIDS_DIR, ANALYSIS_VS_DEPTH_DIR):
            continue
        summary_path = child / "summary.json"
        if not summary_path.is_file():
            notes.append(f"{child.name}: no summary.json (not started, or killed before its first summary) - skipped")
            continue
        try:
            summary = json.loads(summary_path.read_text())
            if not isinstance(summary, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            notes.append(f"{child.name}: unreadable summary.json ({exc}) - skipped")
            if unreadable is not None:
                unreadable[child.name] = str(exc)
            continue
        status = str(summary.get("status") or "unknown")
        runs.append(RunRow(child.name, child, status, {}, summary))
    return runs


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, Mapping):
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return {k.rstrip("."): v for k, v in out.items()}


def _inferred_axes(runs: Sequence[RunRow], notes: list[str]) -> list[str]:
    """The axes of a directory without a manifest: the keys its runs say were swept
    (``summary.json`` → ``sweep.keys``), or else the config keys whose values differ."""
    named: list[str] = []
    for r in runs:
        for k in (r.summary.get("sweep") or {}).get("keys") or {}:
            if k not in named:
                named.append(k)
    if named or len(runs) < 2:
        return named
    flat = [_flatten(r.summary.get("config") or {}) for r in runs]
    varying = []
    for k in sorted({k for f in flat for k in f}):
        values = [f.get(k) for f in flat]
        if all(v is None or isinstance(v, (bool, int, float, str)) for v in values) and len(set(values)) > 1:
            varying.append(k)
    if varying:
        notes.append(f"no sweep.keys in the summaries - grid inferred from config differences: {', '.join(varying)}")
    return varying


@dataclass
class Grid:
    """One grid swept into a directory: its axes, its runs, and where its report goes."""

    report_dir: Path
    name: str
    axes: list[str]  # swept dotted keys, seed included
    run_ids: list[str] | None  # None: every run of the directory (no manifest)


def read_grids(sweep_dir: Path) -> list[Grid]:
    """The grids recorded in `sweep_dir`'s manifests: the root one first, then ``grids/*``."""
    return [Grid(m.report_dir, m.name, list(m.axes), list(m.run_ids)) for m in read_manifests(sweep_dir)]


def _grid_runs(grid: Grid, runs: Mapping[str, RunRow], notes: list[str], unreadable: Mapping[str, str]) -> list[RunRow]:
    """The grid's runs, each a copy keyed by the grid's axes read from the run's resolved config."""
    ids = list(runs) if grid.run_ids is None else grid.run_ids
    broken = [rid for rid in ids if rid in unreadable]
    if broken and grid.run_ids is not None:  # (a directory without manifests has its load notes already)
        notes += [f"{rid}: unreadable summary.json ({unreadable[rid]}) - skipped" for rid in broken]
    missing = [rid for rid in ids if rid not in runs and rid not in unreadable]
    if missing:
        notes.append(
            f"{len(missing)} of this grid's {len(ids)} runs have no summary yet (not started): "
            f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}"
        )
    return [replace(runs[rid], keys={k: _swept_value(runs[rid], k) for k in grid.axes}) for rid in ids if rid in runs]


_ABSENT = object()


def _swept_value(run: RunRow, key: str) -> Any:
    """`key`'s value in the run's resolved config; only a summary without that key at all (written
    by hand, or by a resexp older than the key) falls back to what its sweep recorded."""
    value = run.config(key, _ABSENT)
    return ((run.summary.get("sweep") or {}).get("keys") or {}).get(key) if value is _ABSENT else value


# ----------------------------------------------------------------------------- terminal


def _pm(mean: float, std: float, pct: bool = False) -> str:
    if not math.isfinite(mean):
        return "-"
    if pct:
        return f"{100 * mean:.1f}±{100 * std:.1f}" if std else f"{100 * mean:.1f}"
    return f"{mean:.3g}±{std:.1g}".replace("e-0", "e-") if std else f"{mean:.3g}"


def grid_title(report: Report) -> str:
    """Which grid a table shows: ``grid demo (depth x shortcut)`` for a directory's first grid,
    ``grid demo/grids/weight_decay=0,0.001-3fa2b1 (depth x shortcut x weight_decay)`` for a later one."""
    where = report.sweep_dir.name
    if report.report_dir.resolve() != report.sweep_dir.resolve():
        where += "/" + report.report_dir.relative_to(report.sweep_dir).as_posix()
    axes = " x ".join(short_names(report.cell_keys).values())
    return f"grid {where}" + (f" ({axes})" if axes else "")


TABLE_NOTE = "mean±std: sample std (ddof=1) over completed seeds; diverged runs are counted, not averaged"


def table_heading(report: Report) -> str:
    """The line above a grid's table: which grid, how many cells and runs."""
    return f"{grid_title(report)}: {len(report.cells)} cells from {sum(c.n for c in report.cells)} runs"


def render_table(report: Report) -> Table:
    """The aggregate as a rich table: one row per cell, diverged cells in red (its heading and
    footnote are lines of their own, `table_heading` and `TABLE_NOTE`: a table wraps its title)."""
    from rich import box

    shown = [k for k in report.cell_keys if k not in (DEPTH_KEY, SHORTCUT_KEY)]
    short = {**short_names(report.cell_keys), WD_KEY: "wd"}
    labels = [group_label({k: v for k, v in c.key.items() if k == SHORTCUT_KEY}, c.runs, c.key.get(DEPTH_KEY))
              for c in report.cells]  # fmt: skip
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("net", no_wrap=True, min_width=max(map(len, labels), default=3))
    for k in shown:
        table.add_column(short[k], justify="right", no_wrap=True)
    table.add_column("n", justify="right")
    table.add_column("div", justify="right")
    table.add_column("train loss", justify="right", no_wrap=True)
    table.add_column("acc%", justify="right", no_wrap=True)
    table.add_column("eval loss", justify="right", no_wrap=True)
    table.add_column("eval acc%", justify="right", no_wrap=True)
    for c, name in zip(report.cells, labels, strict=True):
        div = f"[bold red]{c.n_diverged}/{c.n}[/]" if c.n_diverged else "0"
        if c.all_diverged:
            metrics = ["[bold red]DIVERGED[/]", "-", "-", "-"]
        else:
            metrics = [
                _pm(c.mean["final_train_loss"], c.std["final_train_loss"]),
                _pm(c.mean["final_train_accuracy"], c.std["final_train_accuracy"], pct=True),
                _pm(c.mean["eval_loss"], c.std["eval_loss"]),
                _pm(c.mean["eval_accuracy"], c.std["eval_accuracy"], pct=True),
            ]
        style = "red" if c.all_diverged else None
        table.add_row(name, *[format_value(c.key.get(k)) for k in shown], str(c.n), div, *metrics, style=style)
    return table


# ----------------------------------------------------------------------------- TensorBoard


def _clear_report_events(sweep_dir: Path) -> None:
    """Delete every event file a previous report of this directory wrote (and only those)."""
    stale = event_files(sweep_dir, REPORT_SUFFIX)
    for child in sweep_dir.iterdir():
        if child.is_dir():
            stale += event_files(child, REPORT_SUFFIX, recursive=child.name in (VS_DEPTH_DIR, GRIDS_DIR))
    for path in stale:
        path.unlink(missing_ok=True)
    for vs in [sweep_dir / VS_DEPTH_DIR, *(sweep_dir / GRIDS_DIR).glob(f"*/{VS_DEPTH_DIR}")]:
        if vs.is_dir():  # drop group dirs left empty (a group may have disappeared)
            for d in sorted((p for p in vs.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                if not any(d.iterdir()):
                    d.rmdir()


def _mean_series(runs: Sequence[RunRow], get: Any) -> list[tuple[int, float]]:
    """(x, mean over `runs` of the finite values at x): `get(run)` gives (xs, values).
    Seeds of one cell share their x; a diverged seed drops out where it went NaN."""
    pooled: dict[int, list[float]] = {}
    for r in runs:
        xs, values = get(r)
        for x, v in zip(xs or [], values or [], strict=False):
            if isinstance(v, (int, float)) and math.isfinite(v):
                pooled.setdefault(int(x), []).append(float(v))
    return [(x, sum(vs) / len(vs)) for x, vs in sorted(pooled.items())]


def _train_curve(r: RunRow) -> tuple[list, list]:
    history = r.summary.get("history") or {}
    return history.get("step") or [], history.get("train_loss") or []


def _profile(name: str) -> Any:
    def get(r: RunRow) -> tuple[list, list]:
        values = (r.summary.get("diagnostics") or {}).get(name) or []
        return list(range(len(values))), values

    return get


def _write_hparams(sweep_dir: Path, runs: Sequence[RunRow], shown: Mapping[str, set]) -> list[Path]:
    """The directory-wide TensorBoard files: one HParams session per run in the run's own
    directory (the hparams being every axis any grid of the directory swept), and at the root
    the HParams experiment and the Custom Scalars layout of everything the grids charted."""
    domains = hparam_domains(r.keys for r in runs)
    times = {r.run_id: r.times for r in runs}
    written = []
    for r in runs:
        start, end = times[r.run_id]
        with EventWriter(r.path, REPORT_SUFFIX) as w:
            w.hparams_session_start(r.keys, domains=domains, start_time_secs=start)
            w.hparams_session_end(r.status, end_time_secs=end)
            if r.finished:
                steps = to_float(r.summary.get("steps"))
                step = int(steps) if math.isfinite(steps) else 0
                values = {m: r.metric(m) for m in AGGREGATE_METRICS}
                values["diverged"] = 1.0 if r.diverged else 0.0
                w.hparams_metrics(step, values)
            written.append(w.path)
    analyses = [col for col in HEADLINE if col in shown["analyses"]]  # charted in a fixed order
    layout = sweep_layout(vs_depth=shown["vs_depth"], depths=shown["depths"], diagnostics=shown["diagnostics"],
                          analyses=analyses)  # fmt: skip
    metrics = {metric_tag(m): _METRIC_NAMES[m] for m in (*AGGREGATE_METRICS, "diverged")}
    # Every report file outside run dirs opens with a START at step 0: a live TensorBoard then drops
    # what it read from the previous report's files (the first START of a run is ignored, so a fresh
    # one loses nothing).
    with EventWriter(sweep_dir, REPORT_SUFFIX) as w:
        w.session_start(0)
        w.hparams_experiment(domains, metrics, time_created_secs=min(t[0] for t in times.values()))
        if layout.category:
            w.custom_scalars_layout(layout)
        written.insert(0, w.path)
    return written


def _answer_keys(runs: Sequence[RunRow], grids: Sequence[Grid]) -> list[str]:
    """What tells the directory's nets apart besides family, depth and seed: every axis a grid
    swept, and any config key whose value differs between the runs (two grids swept with
    different `--set`s), so runs of different configs are never averaged together."""
    keys = [k for g in grids for k in g.axes]
    flat = [_flatten(r.summary.get("config") or {}) for r in runs]
    for k in sorted({k for f in flat for k in f}):
        if len({repr(f.get(k)) for f in flat}) > 1:
            keys.append(k)
    return [k for k in dict.fromkeys(keys) if k not in (SEED_KEY, DEPTH_KEY, SHORTCUT_KEY, "name", "data.dir")]


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def _family_runs(runs: Sequence[RunRow]) -> dict[bool, str]:
    """TensorBoard run name (under ``vs_depth/``) of each family: ``plain`` and ``ResNet`` (MLPs:
    ``plain-MLP``, ``ResMLP``). Both always exist: the residual run must sit first in the run
    list and the plain run second for each to get its colour, whatever the sweep holds."""
    names = {}
    for shortcut in (True, False):
        members = [r for r in runs if (r.config(SHORTCUT_KEY) is not False) == shortcut] or list(runs)
        names[shortcut] = net_name(members, {SHORTCUT_KEY: shortcut})
    return names


def _write_answer(
    sweep_dir: Path, runs: Sequence[RunRow], grids: Sequence[Grid], reports: Sequence[Report]
) -> tuple[list[Path], dict[str, set]]:
    """The directory's answer for TensorBoard, in ``vs_depth/``: one run per family whose series
    (step = depth, or step = training step / layer index for the per-depth curves and profiles) pool
    every finished run of the directory by config, each group of other swept keys in its own tags;
    and every grid's figures as images. Returns the files and what was charted (for the layout)."""
    keys = _answer_keys(runs, grids)
    cell_keys = [SHORTCUT_KEY, *keys, DEPTH_KEY]
    records = [replace(r, keys={k: _hashable(_swept_value(r, k)) for k in cell_keys}) for r in runs]
    cells = aggregate(records, cell_keys)
    analysis = {r.run_id: headline_metrics(r.path) for r in runs}
    shown: dict[str, set] = {"vs_depth": set(), "depths": set(), "diagnostics": set(), "analyses": set()}
    out_dir = sweep_dir / VS_DEPTH_DIR
    written = []
    for shortcut, run_name in _family_runs(runs).items():
        members = [c for c in cells if (c.key[SHORTCUT_KEY] is not False) == shortcut]
        with EventWriter(out_dir / run_name, REPORT_SUFFIX, wall_time=answer_wall_time(family_position(shortcut))) as w:
            w.session_start(0)  # a live TensorBoard drops what it read from the previous report (see tblog)
            for c in members:
                depth = to_float(c.key[DEPTH_KEY])
                if math.isfinite(depth):
                    group = group_dirname({k: c.key[k] for k in keys}) if keys else ""
                    _write_cell(w, c, int(depth), group, analysis, shown)
            written.append(w.path)
    images = {f"figures/{n.removesuffix('.png')}": png for n, png in reports[0].figures.items()}
    for report in reports[1:]:
        images |= {
            f"figures/{report.report_dir.name}/{n.removesuffix('.png')}": png for n, png in report.figures.items()
        }
    if images:
        with EventWriter(out_dir, REPORT_SUFFIX) as w:
            w.session_start(0)
            for tag, png in images.items():
                w.image(tag, png, step=0)
            written.append(w.path)
    return written, shown


# Which layout category a vs-depth series belongs to (anything else is an analysis's headline number).
_CHART_KINDS = {**dict.fromkeys(AGGREGATE_METRICS, "vs_depth"), "residual_ratio_mean": "diagnostics"}


def _write_cell(
    w: EventWriter, c: GridCell, depth: int, group: str, analysis: Mapping[str, dict], shown: dict[str, set]
) -> None:
    """One depth of one group: the metrics at step = depth, the seed-mean training curve, the
    layer profiles and the analyses' headline numbers; records in `shown` what it wrote."""
    point: dict[str, float | None] = {counts_tag("runs", group): float(c.n),
                                      counts_tag("diverged_runs", group): float(c.n_diverged)}  # fmt: skip
    columns = {m: (c.mean[m], c.std[m]) for m in AGGREGATE_METRICS}
    ratios = [finite(to_float(v) for v in (r.summary.get("diagnostics") or {}).get("residual_ratio") or [])
              for r in c.completed]  # fmt: skip
    columns["residual_ratio_mean"] = mean_std([sum(v) / len(v) for v in ratios if v])
    for col in {k for r in c.completed for k in analysis[r.run_id]}:
        columns[col] = mean_std([analysis[r.run_id].get(col, math.nan) for r in c.completed])
    for name, (mean, std) in columns.items():
        if math.isfinite(mean):
            point[vs_depth_tag(name, "mean", group)] = mean
            point[vs_depth_tag(name, "std", group)] = std
            shown[_CHART_KINDS.get(name, "analyses")].add(name)
    w.scalars(depth, point)
    for step, v in _mean_series(c.runs, _train_curve):
        w.scalars(step, {by_depth_tag(depth, "train_loss", group): v})
        shown["depths"].add(depth)
    for diag in ("residual_ratio", "response_std"):
        for index, v in _mean_series(c.runs, _profile(diag)):
            w.scalars(index, {by_layer_tag(diag, depth, group): v})
            shown["diagnostics"].add(diag)


# ----------------------------------------------------------------------------- entry points


def _check_sweep_dir(sweep_dir: Path) -> None:
    """A clear one-line refusal for the directories people pass by mistake."""
    if not sweep_dir.exists():
        raise UserError(f"{sweep_dir}: does not exist")
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir}: not a sweep directory")
    if (sweep_dir / "summary.json").is_file():
        raise UserError(
            f"{sweep_dir}: this is a run directory; pass its sweep directory (resexp report {sweep_dir.parent})"
        )
    sweeps = sorted(
        c.name
        for c in sweep_dir.iterdir()
        if c.is_dir()
        and not c.name.startswith(".")
        and c.name not in (VS_DEPTH_DIR, GRIDS_DIR, ANALYSIS_VS_DEPTH_DIR)
        and not (c / "summary.json").exists()
        and ((c / MANIFEST).is_file() or any(c.glob("*/summary.json")))
    )
    if sweeps:
        raise UserError(
            f"{sweep_dir}: holds sweep directories ({', '.join(sweeps)}), not runs; pass one of them "
            f"(e.g. resexp report {sweep_dir / sweeps[0]})"
        )


def _build_grid(
    sweep_dir: Path,
    grid: Grid,
    runs: Mapping[str, RunRow],
    notes: list[str],
    unreadable: Mapping[str, str],
) -> Report:
    """Aggregate, tabulate and draw one grid, writing its files beside its manifest."""
    out_dir = grid.report_dir
    grid_runs = _grid_runs(grid, runs, notes, unreadable)
    swept = list(grid.axes)
    for r in grid_runs:
        if not r.finished:
            notes.append(f"{r.run_id}: status {r.status!r} - listed in results, left out of aggregates")
    cell_keys = [k for k in swept if k != SEED_KEY]
    cells = aggregate(grid_runs, cell_keys)

    rows = []
    for r in grid_runs:
        row: dict[str, Any] = {"run_id": r.run_id}
        row.update({k: r.keys.get(k) for k in swept})
        row["status"] = r.status
        for m in ROW_METRICS:
            v = r.summary.get(m)
            row[m] = v if v is None or (isinstance(v, (int, str)) and not isinstance(v, bool)) else to_float(v)
        rows.append(row)
    # Headline numbers of the "why" analyses (`resexp analyze`), where their cached results exist.
    precise = any((r.eval_bn or "").startswith("precise") for r in grid_runs)
    bn_cols = ["eval_bn", *RUNNING_BN_METRICS] if precise else []  # the running averages' numbers beside
    for row, r in zip(rows, grid_runs, strict=True):
        if precise:
            row["eval_bn"] = r.eval_bn
            row.update({m: to_float(r.summary.get(m)) for m in RUNNING_BN_METRICS})
    analysis = {r.run_id: headline_metrics(r.path) for r in grid_runs}
    analysis_cols = [c for c in HEADLINE if any(c in a for a in analysis.values())]
    for row in rows:
        row.update({c: analysis[row["run_id"]].get(c, math.nan) for c in analysis_cols})
    rows.sort(key=lambda row: (tuple(sort_key(row[k]) for k in swept), row["run_id"]))

    report = Report(sweep_dir, out_dir, grid.name, swept, rows, cells, grid_runs, notes)

    # Figures first (their notes go into results.json too).
    from resexp.reporting.figures import plot_loss_vs_depth, plot_residual_ratio_vs_wd, plot_response_std

    figures: dict[str, bytes] = {}
    if not cells:
        notes.append("no completed or diverged run yet - figures skipped")
    elif DEPTH_KEY not in cell_keys:
        notes.append(f"{DEPTH_KEY} is not swept - loss_vs_depth.png and the vs_depth scalars skipped")
    else:
        figures["loss_vs_depth.png"] = plot_loss_vs_depth(report, f"{grid.name}: training loss vs depth")
    if cells:
        png = plot_response_std(report, f"{grid.name}: layer response std")
        if png is not None:
            figures["response_std.png"] = png
        png = plot_residual_ratio_vs_wd(report, f"{grid.name}: residual ratio vs weight decay")
        if png is not None:
            figures["residual_ratio_vs_wd.png"] = png
    # The paper beside the numbers, when the sweep's config names one (report.reference).
    from resexp.reporting.references import compare

    comparison = compare(report) if cells else None
    if comparison is not None:
        from resexp.reporting.figures import plot_test_error_vs_paper

        figures["test_error_vs_paper.png"] = plot_test_error_vs_paper(
            report, comparison, f"{grid.name}: test error vs {comparison.reference.name}"
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    row_cols = ["run_id", *swept, "status", *ROW_METRICS, *bn_cols, *analysis_cols]
    _write_csv(out_dir / "results.csv", rows, row_cols)
    report.paths["results.csv"] = out_dir / "results.csv"
    agg_rows = [c.as_row() for c in cells]
    for c, row in zip(cells, agg_rows, strict=True):  # analysis columns: mean and std over completed seeds
        for m in RUNNING_BN_METRICS if precise else ():
            row[f"{m}_mean"], row[f"{m}_std"] = c.mean[m], c.std[m]
        for col in analysis_cols:
            row[f"{col}_mean"], row[f"{col}_std"] = mean_std(
                [analysis[r.run_id].get(col, math.nan) for r in c.completed]
            )
    agg_cols = [*cell_keys, "n_runs", "n_diverged"]
    agg_cols += [f"{m}_{s}" for m in (*AGGREGATE_METRICS, *bn_cols[1:], *analysis_cols) for s in ("mean", "std")]
    agg_cols += ["params", "wall_seconds_mean", "run_ids"]
    if comparison is not None:
        for row, extra in zip(agg_rows, comparison.csv_columns(), strict=True):
            row.update(extra)
        agg_cols += list(comparison.columns)
    _write_csv(out_dir / "aggregate.csv", agg_rows, agg_cols)
    report.paths["aggregate.csv"] = out_dir / "aggregate.csv"
    doc: dict[str, Any] = {
        "sweep": grid.name,
        "swept_keys": swept,
        "std": "sample standard deviation (ddof=1) over the completed runs of a cell; 0 when n=1",
        "eval_bn": eval_bn_note(grid_runs),
        "runs": rows,
        "aggregate": agg_rows,
        "notes": notes,
    }
    if comparison is not None:
        doc["reference"] = comparison.as_json()
    write_atomic(out_dir / "results.json", json.dumps(_json_clean(doc), indent=2) + "\n")
    report.paths["results.json"] = out_dir / "results.json"
    for fname in FIGURES:
        path = out_dir / fname
        if fname in figures:
            write_atomic(path, figures[fname])
            report.paths[fname] = path
        elif path.exists():  # a figure this grid no longer supports: don't leave a stale one
            path.unlink(missing_ok=True)
    report.figures = figures
    report.comparison = comparison
    return report


def build_reports(
    sweep_dir: Path | str, *, console: Console | None = None, write_tensorboard: bool = True, show: Path | None = None
) -> list[Report]:
    """Rebuild the report of every grid swept into `sweep_dir` (and its HParams dashboard).

    Idempotent: every output is replaced, the runs' own files are never touched (the only
    files written inside a run directory are the report's event files, deleted and
    rewritten). Prints each grid's table, notes and files, or only the grid whose report
    directory is `show`. Raises `UserError` for a path that is not a sweep directory (a
    run directory, a directory of sweeps) or holds no readable run summary.
    """
    sweep_dir = Path(sweep_dir)
    _check_sweep_dir(sweep_dir)
    console = console if console is not None else Console()
    load_notes: list[str] = []
    unreadable: dict[str, str] = {}
    runs = {r.run_id: r for r in load_runs(sweep_dir, load_notes, unreadable)}
    if not runs:
        raise UserError(f"{sweep_dir}: no run with a summary.json to report on")
    grids = read_grids(sweep_dir)
    if not grids:  # runs of `resexp train`, or an older resexp: the directory is one grid
        names = [(r.summary.get("sweep") or {}).get("name") for r in runs.values()]
        grids = [
            Grid(
                sweep_dir,
                next((n for n in names if n), sweep_dir.name),
                _inferred_axes(list(runs.values()), load_notes),
                None,
            )
        ]
    if write_tensorboard:
        _clear_report_events(sweep_dir)
    reports = []
    for grid in grids:
        notes = list(load_notes) if grid.run_ids is None else []
        reports.append(_build_grid(sweep_dir, grid, runs, notes, unreadable))
    if write_tensorboard:
        answer, shown = _write_answer(sweep_dir, list(runs.values()), grids, reports)
        axes = [k for g in grids for k in g.axes]
        every = [replace(r, keys={k: _swept_value(r, k) for k in dict.fromkeys(axes)}) for r in runs.values()]
        reports[0].event_files = _write_hparams(sweep_dir, every, shown) + answer
    for report in reports:
        if show is not None and report.report_dir.resolve() != Path(show).resolve():
            continue
        console.print(table_heading(report), highlight=False)
        console.print(render_table(report))
        console.print(f"{TABLE_NOTE}; {eval_bn_note(report.runs)}", highlight=False)
        if report.comparison is not None:
            report.comparison.print(console)
        for note in report.notes:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
        console.print(
            f"[dim]wrote {', '.join(p.name for p in report.paths.values())} in {report.report_dir}[/]", highlight=False
        )
    return reports


def build_report(
    sweep_dir: Path | str,
    *,
    console: Console | None = None,
    write_tensorboard: bool = True,
    grid_dir: Path | None = None,
) -> Report:
    """`build_reports`, printing and returning one grid's report: the one whose report directory
    is `grid_dir` (a sweep's own grid), by default the directory's first grid."""
    want = Path(grid_dir or sweep_dir).resolve()
    reports = build_reports(sweep_dir, console=console, write_tensorboard=write_tensorboard, show=want)
    return next((r for r in reports if r.report_dir.resolve() == want), reports[0])
