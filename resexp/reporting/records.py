"""What a sweep report is made of: runs read from their ``summary.json``, grid cells with their
seed statistics, groups of cells, and the names and numbers a table or figure shows.

Pure data and arithmetic (no JAX, no matplotlib, nothing written): `resexp.reporting.report` builds these
and writes the files, `resexp.reporting.figures` and `resexp.reporting.references` only read them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resexp.core.variants import ShortcutOption

__all__ = [
    "AGGREGATE_METRICS",
    "DEPTH_KEY",
    "REPORT_SUFFIX",
    "SHORTCUT_KEY",
    "WD_KEY",
    "GridCell",
    "Report",
    "RunRow",
    "aggregate",
    "eval_bn_note",
    "group_dirname",
    "group_label",
    "mean_std",
]

REPORT_SUFFIX = ".resexp-report"
"""Suffix of every event file the report writes (and deletes before rewriting)."""

VS_DEPTH_DIR = "vs_depth"  # the answer for TensorBoard: one run per family, and the figures
# `resexp analyze`'s own vs-depth series (resexp.analysis.sweep), apart from the report's: both open their
# files with a session START, which in one run would make a live TensorBoard drop the other's points.
ANALYSIS_VS_DEPTH_DIR = "vs_depth_analysis"
SEED_KEY = "train.seed"
DEPTH_KEY = "model.depth"
SHORTCUT_KEY = "model.shortcut"
PROJECTION_KEY = "model.projection"
WD_KEY = "optim.weight_decay"

AGGREGATE_METRICS = ("final_train_loss", "final_train_accuracy", "eval_loss", "eval_accuracy")
# With precise BN (train.precise_bn_batches), the eval numbers of the running averages beside them;
# reported only by grids that hold such a run.
RUNNING_BN_METRICS = ("eval_running_loss", "eval_running_accuracy")
FINISHED = ("completed", "diverged")


# ----------------------------------------------------------------------------- data


@dataclass
class RunRow:
    """One run with a readable ``summary.json``."""

    run_id: str  # the run directory's name (= TensorBoard run / HParams session)
    path: Path
    status: str
    keys: dict[str, Any]  # swept dotted key -> value
    summary: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    def metric(self, name: str) -> float:
        return to_float(self.summary.get(name))

    @property
    def eval_bn(self) -> str | None:
        """Which BN statistics eval_loss/eval_accuracy used: "running", "precise-N" (N training
        batches), None without BN. Runs from before precise BN existed used the running averages."""
        if "eval_bn" not in self.summary:
            return "running" if self.config("model.norm", "batch") == "batch" else None
        bn = self.summary["eval_bn"]
        if bn is None:
            return None
        return f"precise-{bn.get('batches')}" if bn.get("statistics") == "precise" else "running"

    def config(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.summary.get("config") or {}
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def times(self) -> tuple[float, float]:
        """(start, end) seconds since epoch: summary.json's mtime, minus the run's
        wall time. Derived from the run, so a rebuilt report is identical."""
        end = (self.path / "summary.json").stat().st_mtime
        wall = self.metric("wall_seconds")
        return (end - wall if math.isfinite(wall) and wall > 0 else end), end


@dataclass
class GridCell:
    """One point of the grid (all swept keys but the seed), seeds pooled.

    `mean`/`std` are over the cell's COMPLETED runs (sample std, ddof=1; 0 when
    n=1; NaN when no completed run has a finite value); diverged runs are counted
    in `n_diverged` and never averaged in.
    """

    key: dict[str, Any]
    runs: list[RunRow] = field(repr=False)
    mean: dict[str, float]
    std: dict[str, float]
    n_values: dict[str, int]

    @property
    def run_ids(self) -> list[str]:
        return [r.run_id for r in self.runs]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def n_diverged(self) -> int:
        return sum(r.diverged for r in self.runs)

    @property
    def all_diverged(self) -> bool:
        return self.n > 0 and self.n_diverged == self.n

    @property
    def completed(self) -> list[RunRow]:
        return [r for r in self.runs if r.status == "completed"]

    @property
    def params(self) -> int | None:
        values = [int(r.summary["params"]) for r in self.runs if r.summary.get("params") is not None]
        return values[0] if values else None

    def as_row(self) -> dict[str, Any]:
        row: dict[str, Any] = dict(self.key)
        row["n_runs"] = self.n
        row["n_diverged"] = self.n_diverged
        for m in AGGREGATE_METRICS:
            row[f"{m}_mean"] = self.mean[m]
            row[f"{m}_std"] = self.std[m]
        row["params"] = self.params
        row["wall_seconds_mean"] = self.mean.get("wall_seconds", math.nan)
        row["run_ids"] = ";".join(self.run_ids)
        return row


@dataclass
class Report:
    """What `build_report` found and wrote."""

    sweep_dir: Path
    report_dir: Path  # where this grid's files go: its manifest's directory (the sweep directory for the first)
    sweep_name: str
    swept_keys: list[str]  # every swept dotted key, in sweep order (seed included)
    rows: list[dict[str, Any]]  # results.csv rows
    cells: list[GridCell]  # aggregate.csv rows
    runs: list[RunRow] = field(repr=False)
    notes: list[str] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)  # name -> file written
    figures: dict[str, bytes] = field(default_factory=dict, repr=False)  # file name -> PNG drawn
    event_files: list[Path] = field(default_factory=list)  # TensorBoard files written
    comparison: Any = None  # resexp.reporting.references.Comparison when the config names a paper to compare with

    @property
    def cell_keys(self) -> list[str]:
        return [k for k in self.swept_keys if k != SEED_KEY]

    @property
    def group_keys(self) -> list[str]:
        return [k for k in self.cell_keys if k != DEPTH_KEY]


# ----------------------------------------------------------------------------- helpers


def to_float(value: Any) -> float:
    """A float, NaN for None / non-numbers."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def finite(values: Iterable[float]) -> list[float]:
    """The finite values: NaN marks a missing number (a diverged run, a key an older resexp lacked)."""
    return [v for v in values if v is not None and math.isfinite(v)]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and SAMPLE std (ddof=1) of the finite values; std 0 for one value,
    (NaN, NaN) for none."""
    vals = finite(values)
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var)


def sort_key(value: Any) -> tuple[int, Any]:
    """Order mixed swept values (None, bools, numbers, strings) the same way in every table and figure."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, value)
    if isinstance(value, (int, float)):
        return (2, value)
    return (3, str(value))


def format_number(v: float) -> str:
    """Compact number: 20, 0.5, 1e-4."""
    if v == 0:
        return "0"
    if float(v).is_integer() and abs(v) < 1e6:
        return str(int(v))
    if abs(v) < 1e-3 or abs(v) >= 1e6:
        mant, exp = f"{v:.2e}".split("e")
        return f"{float(mant):g}e{int(exp)}"
    return f"{v:.4g}"


def format_value(value: Any) -> str:
    """A swept value as tables, labels and run names print it: ``true``, ``none``, ``1e-4``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float)):
        return format_number(float(value))
    return str(value)


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Last dotted component, unless two keys share it (then the full key)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def group_dirname(group: Mapping[str, Any]) -> str:
    """TensorBoard run name of a group: ``shortcut=false``, ``projection=zero_pad,shortcut=true``;
    ``all`` when nothing but depth (and seed) is swept."""
    if not group:
        return "all"
    short = short_names(list(group))
    parts = []
    for k, v in group.items():
        text = f"{short[k]}={format_value(v)}"
        parts.append("".join(c if (c.isalnum() or c in "=._-+") else "_" for c in text))
    return ",".join(parts)


KIND_KEY = "model.kind"


def net_name(runs: Sequence[RunRow], group: Mapping[str, Any]) -> str:
    """ "plain" / "ResNet" (CNN) or "plain-MLP" / "ResMLP", from the shortcut and
    kind keys (swept, else the runs' config)."""

    def values(key: str) -> set:
        return {group[key]} if key in group else {r.config(key) for r in runs}

    shortcut, kind = values(SHORTCUT_KEY), values(KIND_KEY)
    mlp = kind == {"mlp"}
    if shortcut == {True}:
        return "ResMLP" if mlp else "ResNet"
    if shortcut == {False}:
        return "plain-MLP" if mlp else "plain"
    return "net"


def qualifiers(group: Mapping[str, Any]) -> list[str]:
    """What sets a group apart besides its net name: ``option A``, ``wd=1e-4``; legends and labels share it."""
    short = short_names(list(group))
    out = []
    for k, v in group.items():
        if k == SHORTCUT_KEY or (k == KIND_KEY and v in ("cnn", "mlp")):
            continue  # part of the name
        option = ShortcutOption.parse(v) if k == PROJECTION_KEY and group.get(SHORTCUT_KEY, True) else None
        if option is not None:
            out.append(f"option {option.letter}")
        elif k == WD_KEY:
            out.append(f"wd={format_value(v)}")
        else:
            out.append(f"{short[k]}={format_value(v)}")
    return out


def group_label(group: Mapping[str, Any], runs: Sequence[RunRow] = (), depth: Any = None) -> str:
    """He et al.'s naming: ``plain``, ``ResNet (option A)``; with a depth
    ``plain-20``, ``ResNet-56 (wd=1e-4)``."""
    name = net_name(runs, group)
    if depth is not None:
        name = f"{name}-{format_value(depth)}"
    quals = qualifiers(group)
    return f"{name} ({', '.join(quals)})" if quals else name


def aggregate(runs: Sequence[RunRow], cell_keys: Sequence[str]) -> list[GridCell]:
    """The finished runs pooled into one cell per value of `cell_keys`, in `sort_key` order."""
    by_key: dict[tuple, list[RunRow]] = {}
    for r in runs:
        if r.finished:
            by_key.setdefault(tuple(r.keys.get(k) for k in cell_keys), []).append(r)
    cells = []
    for key in sorted(by_key, key=lambda t: tuple(sort_key(v) for v in t)):
        members = by_key[key]
        completed = [r for r in members if r.status == "completed"]
        mean, std, n_values = {}, {}, {}
        for m in (*AGGREGATE_METRICS, *RUNNING_BN_METRICS, "wall_seconds"):
            values = finite(r.metric(m) for r in completed)
            mean[m], std[m] = mean_std(values)
            n_values[m] = len(values)
        cells.append(GridCell(dict(zip(cell_keys, key, strict=True)), members, mean, std, n_values))
    return cells


def group_cells(cells: Sequence[GridCell], group_keys: Sequence[str]) -> dict[tuple, list[GridCell]]:
    """Cells by the swept keys other than depth and seed, depth-sorted."""
    groups: dict[tuple, list[GridCell]] = {}
    for c in cells:
        groups.setdefault(tuple(c.key.get(k) for k in group_keys), []).append(c)
    for members in groups.values():
        members.sort(key=lambda c: sort_key(c.key.get(DEPTH_KEY)))
    return dict(sorted(groups.items(), key=lambda kv: tuple(sort_key(v) for v in kv[0])))


def cell_runs(cells: Sequence[GridCell]) -> list[RunRow]:
    """Every run of `cells`: a group's name and family come from its runs' configs."""
    return [r for c in cells for r in c.runs]


def eval_bn_note(runs: Sequence[RunRow]) -> str:
    """One line saying which BN statistics the runs' eval numbers used (reports and figures)."""
    labels = sorted({label for r in runs if r.finished and (label := r.eval_bn) is not None})
    if not labels:
        return "eval: no BN"
    if len(labels) > 1:
        return f"eval BN statistics differ between runs ({', '.join(labels)}): see the eval_bn column"
    if labels[0] == "running":
        return "eval: BN running averages"
    return f"eval: precise BN (statistics recomputed over {labels[0].split('-')[1]} training batches)"
