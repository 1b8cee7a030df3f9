"""The "why" lab: five explanations of why residual nets can be deep, each measured on a run.

    lesion     Veit et al. 2016 §4   delete / reorder blocks at test time
    gradients  Balduzzi et al. 2017  shattered gradients, Jacobian conditioning, signal propagation
    paths      Veit et al. 2016 §5   gradient carried by paths of each length
    landscape  Li et al. 2018        filter-normalised loss surface
    hessian    (PyHessian-style)     largest Hessian eigenvalue vs the SGD stability limit

Every analysis is a module with the same five functions, which `run_analyses` walks:
`prepare(info, **options) -> options` (validates, no JAX), `compute(run, options) -> result`,
`headline(result)`, `scalars(result)`, and a figure in `resexp.analysis.figures`. Results are
cached in `RUN_DIR/analysis/<name>.json` by checkpoint and options.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
from pathlib import Path
from types import ModuleType

from resexp.analysis.common import AnalysisError, RunInfo, cached_result, inspect_run, result_path

ANALYSES = ("lesion", "gradients", "paths", "landscape", "hessian")
HEADLINE = {  # results.csv column -> analysis it comes from
    "lesion_median_accuracy": "lesion",
    "grad_corr_lag1": "gradients",
    "paths_k90_max": "paths",
    "landscape_local_minima": "landscape",
    "landscape_nonconvex_fraction": "landscape",
    "hessian_lambda_max": "hessian",
}

__all__ = ["ANALYSES", "HEADLINE", "AnalysisError", "analysis_module", "headline_metrics", "parse_only", "run_analyses"]


def analysis_module(name: str) -> ModuleType:
    return importlib.import_module(f"resexp.analysis.{name}")


def parse_only(text: str | None) -> list[str]:
    """`--only lesion,paths` -> ["lesion", "paths"]; an unknown name is a one-line error."""
    if not text:
        return list(ANALYSES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in ANALYSES]
    if bad or not names:
        raise AnalysisError(
            f"--only {text}: unknown analysis {', '.join(bad) or '(none)'}; choose from {', '.join(ANALYSES)}"
        )
    return [n for n in ANALYSES if n in names]


def run_analyses(run_dir: Path, requests: dict[str, dict]) -> dict[str, tuple[dict, bool]]:
    """Run (or answer from the cache) each `name -> options` on one run: name -> (result, cached).

    Every request is validated before anything runs or is written; the run is loaded into JAX
    once, and only when some result is not cached.
    """
    info = inspect_run(run_dir)
    prepared = {name: analysis_module(name).prepare(info, **opts) for name, opts in requests.items()}
    out: dict[str, tuple[dict, bool]] = {}
    todo = []
    for name, opts in prepared.items():
        hit = cached_result(name, info, opts)
        if hit is not None:
            out[name] = (hit, True)
        else:
            todo.append(name)
    if todo:
        from resexp.runtime import configure_jax

        configure_jax()
        from resexp.analysis.common import init_run, load_run, timed, write_result
        from resexp.analysis.figures import plot_analysis

        trained = None
        for name in todo:
            mod, opts = analysis_module(name), prepared[name]
            if opts.get("at_init"):
                run = init_run(trained.cfg if trained else _config(info), trained.data if trained else None)
                run.info = info
            else:
                trained = trained or load_run(info)
                run = trained
            result = timed(functools.partial(mod.compute, run, opts))
            png = plot_analysis(name, result, title=f"{info.dir.name}: {name}")
            out[name] = (write_result(name, info, opts, result, png, mod.scalars(result)), False)
    return {name: out[name] for name in requests}


def _config(info: RunInfo):
    from resexp.config import Config

    return Config.model_validate(info.summary["config"])


def headline_metrics(run_dir: Path) -> dict[str, float]:
    """The headline numbers of whatever analyses `run_dir/analysis/` holds (cached JSONs only)."""
    out: dict[str, float] = {}
    for name in ANALYSES:
        try:
            doc = json.loads(result_path(run_dir, name).read_text())
        except (OSError, ValueError):
            continue
        for col, value in analysis_module(name).headline(doc).items():
            out[col] = math.nan if value is None else float(value)
    return out


def describe(name: str, doc: dict) -> str:
    """One or two human lines about a result, for the terminal."""

    def f(v, spec=".3f"):
        return "-" if v is None else format(v, spec)

    if name == "lesion":
        ks = ", ".join(f"k={d['k']}: {f(d['mean'])}" for d in doc["delete_k"] if d["mean"] is not None)
        return (
            f"lesion: accuracy {f(doc['base_accuracy'])} intact; one block deleted: median "
            f"{f(doc['median_single_accuracy'])} (worst {f(doc['min_single_accuracy'])}); k random deleted: "
            f"{ks or '-'}; {doc['swap_k']['k']} swaps: {f(doc['swap_k']['mean'])}"
            + (" [BN recalibrated]" if doc["recalibrated"] else "")
        )
    if name == "gradients":
        return (
            f"gradients ({'at init' if doc['at_init'] else 'trained'}, BN recalibrated): lag-1 correlation "
            f"{f(doc['grad_corr_lag1'])}, neighbour cosine {f(doc['grad_cos_neighbors'])}, "
            f"Jacobian log10 cond {f(doc['jacobian_log_condition'], '.2f')}"
        )
    if name == "paths":
        return (
            f"paths: {doc['n_blocks']} blocks; 90 % of the gradient from paths through {doc['k90'][0]}.."
            f"{doc['k90'][1]} branches (mean {f(doc['mean_path_length'], '.1f')}, typical path "
            f"{f(doc['typical_path_length'], '.1f')}); x{f(doc['decay_per_branch'], '.2f')} per extra branch"
        )
    if name == "landscape":
        return (
            f"landscape ({doc['dims']}-D, {doc['grid']} points per axis, span {doc['span']:g}, "
            f"{doc['examples']} examples): centre loss {f(doc['center_loss'], '.4f')}, "
            f"{doc['local_minima']} local minima, non-convex fraction {f(doc['nonconvex_fraction'], '.2f')}"
        )
    lim = doc.get("sgd_stability_limit")
    return f"hessian: lambda_max {f(doc['lambda_max'], '.4g')}" + (
        f" vs SGD stability limit 2(1+beta)/eta = {lim:.3g} (x{doc['ratio_to_limit']:.2g})" if lim else ""
    )
