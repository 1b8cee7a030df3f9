"""`resexp analyze SWEEP_DIR`: every analysis on every run of a sweep, then the figures against
depth (plain vs ResNet), TensorBoard `vs_depth` series and images, and the report's columns.

Runs are independent, so `--jobs K` analyses K runs at once in worker processes (each compiles
its own architecture's programs; the persistent compile cache is shared). A diverged run is
skipped and counted; an analysis that does not apply to a run (paths on a plain net) is noted.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resexp.analysis import HEADLINE, analysis_module, headline_metrics, run_analyses
from resexp.analysis.common import EVENT_SUFFIX, AnalysisError, inspect_run, result_path

FIGURES = ("lesion_vs_depth.png", "gradients_vs_depth.png", "landscapes.png", "hessian_vs_depth.png")
# Its own TensorBoard runs, apart from the report's vs_depth/: both open their files with a session
# START, which in one run would make a live TensorBoard drop the other's points.
VS_DEPTH_DIR = "vs_depth_analysis"


def default_requests(names: list[str]) -> dict[str, dict]:
    """What `analyze` asks of each run: the commands' defaults; gradients at initialisation,
    where the shattering contrast lives (after training every net's gradients are smooth)."""
    return {name: ({"at_init": True} if name == "gradients" else {}) for name in names}


@dataclass
class SweepAnalysis:
    sweep_dir: Path
    analysed: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    computed: int = 0
    cached: int = 0
    figures: dict[str, Path] = field(default_factory=dict)


def _applicable(run_dir: Path, names: list[str]) -> tuple[dict[str, dict], list[str]]:
    info = inspect_run(run_dir)
    requests, notes = {}, []
    for name, opts in default_requests(names).items():
        try:
            analysis_module(name).prepare(info, **opts)
        except AnalysisError as exc:
            notes.append(f"{name}: not applicable ({str(exc).split(': ', 1)[-1]})")
            continue
        requests[name] = opts
    return requests, notes


def _analyze_one(run_dir: str, requests: dict[str, dict]) -> dict[str, bool]:
    """In a worker (or in-process): name -> answered from the cache."""
    return {name: cached for name, (_, cached) in run_analyses(Path(run_dir), requests).items()}


def analyze_sweep(sweep_dir: Path, names: list[str], *, jobs: int = 1, console=None) -> SweepAnalysis:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise AnalysisError(f"{sweep_dir}: not a sweep directory")
    out = SweepAnalysis(sweep_dir)
    work: list[tuple[Path, dict]] = []
    for child in sorted(p for p in sweep_dir.iterdir() if (p / "summary.json").is_file()):
        try:
            requests, notes = _applicable(child, names)
        except AnalysisError as exc:
            status = json.loads((child / "summary.json").read_text()).get("status")
            (out.diverged if status == "diverged" else out.notes).append(
                child.name if status == "diverged" else f"{child.name}: skipped ({str(exc).split(': ', 1)[-1]})"
            )
            continue
        out.notes += [f"{child.name}: {n}" for n in notes]
        if requests:
            work.append((child, requests))
    if not work:
        raise AnalysisError(
            f"{sweep_dir}: no completed run to analyse" + (f" ({len(out.diverged)} diverged)" if out.diverged else "")
        )
    # Deepest first: the costliest runs start at once, so K workers finish together.
    work.sort(key=lambda w: -inspect_run(w[0]).summary["config"]["model"]["depth"])
    results: list[dict[str, bool]] = []
    if jobs > 1 and len(work) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(jobs, len(work)), mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_analyze_one, str(d), r) for d, r in work]
            for (d, _), fut in zip(work, futures, strict=True):
                results.append(fut.result())
                if console is not None:
                    console.print(f"[dim]analysed {d.name}[/]", highlight=False)
    else:
        for d, r in work:
            results.append(_analyze_one(str(d), r))
            if console is not None:
                console.print(f"[dim]analysed {d.name}[/]", highlight=False)
    for (d, _), res in zip(work, results, strict=True):
        out.analysed.append(d.name)
        out.cached += sum(res.values())
        out.computed += sum(not c for c in res.values())
    out.figures = write_sweep_outputs(sweep_dir, [d for d, _ in work])
    return out


def _net_label(summary: dict) -> tuple[str, dict]:
    """("plain" / "ResNet" + other swept keys, group) for a run, from its summary."""
    model = summary["config"]["model"]
    name = ("ResNet" if model["shortcut"] else "plain") + ("-MLP" if model["kind"] == "mlp" else "")
    keys = {
        k: v
        for k, v in ((summary.get("sweep") or {}).get("keys") or {}).items()
        if k not in ("model.depth", "train.seed")
    }
    quals = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in keys.items() if k != "model.shortcut"]
    return name + (f" ({', '.join(quals)})" if quals else ""), keys


def _points(run_dirs: list[Path]) -> tuple[list[dict], list[dict]]:
    points, panels = [], []
    for d in run_dirs:
        summary = json.loads((d / "summary.json").read_text())
        net, group = _net_label(summary)
        p: dict[str, Any] = {
            "net": net,
            "group": group,
            "depth": summary["config"]["model"]["depth"],
            **headline_metrics(d),
        }
        for name, keys in (
            ("lesion", ("base_accuracy",)),
            ("gradients", ("jacobian_log_condition",)),
            ("hessian", ("sgd_stability_limit",)),
        ):
            try:
                doc = json.loads(result_path(d, name).read_text())
            except (OSError, ValueError):
                continue
            p.update({k: doc.get(k) for k in keys})
        points.append(p)
        with contextlib.suppress(OSError, ValueError):  # no landscape for this run: no panel
            panels.append(
                {"net": net, "depth": p["depth"], "result": json.loads(result_path(d, "landscape").read_text())}
            )
    return points, panels


def write_sweep_outputs(sweep_dir: Path, run_dirs: list[Path]) -> dict[str, Path]:
    """The four figures, TensorBoard vs_depth series and images, and the report with its new columns."""
    from resexp.analysis import figures as F
    from resexp.report import build_report, group_dirname
    from resexp.tblog import EventWriter, event_files

    points, panels = _points(run_dirs)
    name = sweep_dir.name
    pngs: dict[str, bytes | None] = {
        "lesion_vs_depth.png": F.plot_lesion_vs_depth(points, f"{name}: lesion")
        if any("lesion_median_accuracy" in p for p in points)
        else None,
        "gradients_vs_depth.png": F.plot_gradients_vs_depth(points, f"{name}: gradients at initialisation")
        if any("grad_corr_lag1" in p for p in points)
        else None,
        "landscapes.png": F.plot_landscapes(panels, f"{name}: loss landscapes"),
        "hessian_vs_depth.png": F.plot_hessian_vs_depth(points, f"{name}: sharpness")
        if any("hessian_lambda_max" in p for p in points)
        else None,
    }
    written = {}
    for fname, png in pngs.items():
        if png is not None:
            tmp = sweep_dir / f".{fname}.tmp"
            tmp.write_bytes(png)
            tmp.replace(sweep_dir / fname)
            written[fname] = sweep_dir / fname
    vs = sweep_dir / VS_DEPTH_DIR
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
    from rich.console import Console

    build_report(sweep_dir, console=Console(quiet=True))
    return written
