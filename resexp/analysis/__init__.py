"""The "why" lab: five explanations of why residual nets can be deep, each measured on a run.

    lesion     Veit et al. 2016 §4   delete / reorder blocks at test time
    gradients  Balduzzi et al. 2017  shattered gradients, Jacobian conditioning, signal propagation
    paths      Veit et al. 2016 §5   gradient carried by paths of each length
    landscape  Li et al. 2018        filter-normalised loss surface
    hessian    (PyHessian-style)     largest Hessian eigenvalue vs the SGD stability limit

Every analysis is a module with the same three functions, which `run_analyses` walks:
`prepare(info, **options) -> options` (validates, no JAX), `compute(run, options) -> result`,
`scalars(result)`, and a figure in `resexp.analysis.figures`. Results are cached in
`RUN_DIR/analysis/<name>.json` by checkpoint and options; their headline numbers, which the
report shows, are named in `resexp.headlines` (read without JAX).

Each analysis measures a bounded sample (its one sample-size option: `examples` test images,
or `lines` for the gradients), batched into one compiled program per architecture, and
reports the uncertainty that sample implies (`resexp.analysis.stats`) and its `seconds`.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from types import ModuleType

from resexp.analysis.common import AnalysisError, RunInfo, cached_result, inspect_run
from resexp.analysis.progress import Sink

ANALYSES = ("lesion", "gradients", "paths", "landscape", "hessian")

__all__ = [
    "ANALYSES",
    "AnalysisError",
    "analysis_module",
    "parse_only",
    "prepare_requests",
    "run_analyses",
    "uncached",
]


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


def prepare_requests(info: RunInfo, requests: dict[str, dict]) -> dict[str, dict]:
    """Every request validated and completed with its defaults (no JAX): name -> options."""
    return {name: analysis_module(name).prepare(info, **opts) for name, opts in requests.items()}


def uncached(info: RunInfo, prepared: dict[str, dict]) -> list[str]:
    """The analyses among `prepared` whose result is not cached for this checkpoint and options."""
    return [name for name, opts in prepared.items() if cached_result(name, info, opts) is None]


def run_analyses(
    run_dir: Path, requests: dict[str, dict], progress: Sink | None = None
) -> dict[str, tuple[dict, bool]]:
    """Run (or answer from the cache) each `name -> options` on one run: name -> (result, cached).

    Every request is validated before anything runs or is written; the run is loaded into JAX
    once, and only when some result is not cached. `progress` receives the events of
    `resexp.analysis.progress` (which analysis runs, its units done, its time).
    """
    info = inspect_run(run_dir)
    prepared = prepare_requests(info, requests)
    out: dict[str, tuple[dict, bool]] = {}
    todo = []
    for name, opts in prepared.items():
        hit = cached_result(name, info, opts)
        if hit is not None:
            out[name] = (hit, True)
        else:
            todo.append(name)
    emit = progress or (lambda event: None)
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
            emit({"event": "analysis", "run": info.dir.name, "analysis": name})
            run.progress = functools.partial(_progress_event, emit, info.dir.name)
            result = timed(functools.partial(mod.compute, run, opts))
            png = plot_analysis(name, result, title=f"{info.dir.name}: {name}")
            out[name] = (write_result(name, info, opts, result, png, mod.scalars(result)), False)
            emit({"event": "analysis_done", "run": info.dir.name, "analysis": name, "seconds": result["seconds"]})
    emit({"event": "run_done", "run": info.dir.name})
    return {name: out[name] for name in requests}


def _progress_event(emit: Sink, run: str, done: int, total: int) -> None:
    emit({"event": "progress", "run": run, "done": done, "total": total})


def _config(info: RunInfo):
    from resexp.config import Config

    return Config.model_validate(info.summary["config"])


def describe(name: str, doc: dict) -> str:
    """One or two human lines about a result, for the terminal."""

    def f(v, spec=".3f"):
        return "-" if v is None else format(v, spec)

    def ci(interval, spec=".3f"):
        return "" if not interval else f" [{f(interval[0], spec)}, {f(interval[1], spec)}]"

    bn = f"; BN: {doc['bn_statistics']}" if doc.get("bn_statistics") else ""
    if name == "lesion":
        ks = ", ".join(f"k={d['k']}: {f(d['mean'])}" for d in doc["delete_k"] if d["mean"] is not None)
        return (
            f"lesion ({doc['examples']} test images, 95 % intervals): accuracy {f(doc['base_accuracy'])}"
            f"{ci(doc['base_accuracy_ci95'])} intact; one block deleted: median "
            f"{f(doc['median_single_accuracy'])}{ci(doc['median_single_accuracy_ci95'])} (worst "
            f"{f(doc['min_single_accuracy'])}); k random deleted: {ks or '-'}; {doc['swap_k']['k']} swaps: "
            f"{f(doc['swap_k']['mean'])}{bn}"
        )
    if name == "gradients":
        se = doc.get("grad_corr_lag1_standard_error")
        return (
            f"gradients ({'at init' if doc['at_init'] else 'trained'}, {doc['lines']} lines): lag-1 correlation "
            f"{f(doc['grad_corr_lag1'])}{'' if se is None else f' +- {se:.3f}'}, neighbour cosine "
            f"{f(doc['grad_cos_neighbors'])}, Jacobian log10 cond {f(doc['jacobian_log_condition'], '.2f')}{bn}"
        )
    if name == "paths":
        decay = f(doc["decay_per_branch"], ".2f")
        zero = doc.get("zero_gradient_lengths") or []
        return (
            f"paths ({doc['examples']} test images): {doc['n_blocks']} blocks; 90 % of the gradient from paths "
            f"through {doc['k90'][0]}..{doc['k90'][1]} branches (upper end 95 % interval "
            f"{doc['k90_max_ci95'][0]:g}..{doc['k90_max_ci95'][1]:g}; mean {f(doc['mean_path_length'], '.1f')}, "
            f"typical path {f(doc['typical_path_length'], '.1f')}); x{decay} per extra branch"
            + (f" (lengths {', '.join(map(str, zero))}: exactly zero gradient, left out of the fit)" if zero else "")
            + bn
        )
    if name == "landscape":
        return (
            f"landscape ({doc['dims']}-D, {doc['grid']} points per axis, span {doc['span']:g}, "
            f"{doc['examples']} test images): centre loss {f(doc['center_loss'], '.4f')}, "
            f"{doc['local_minima']}{ci(doc['local_minima_ci95'], 'g')} local minima, non-convex fraction "
            f"{f(doc['nonconvex_fraction'], '.2f')}{ci(doc['nonconvex_fraction_ci95'], '.2f')}{bn}"
        )
    lim = doc.get("sgd_stability_limit")
    se = doc.get("lambda_max_standard_error")
    return (
        f"hessian ({doc['examples']} test images): lambda_max {f(doc['lambda_max'], '.4g')}"
        + ("" if se is None else f" +- {se:.2g}")
        + (f" vs SGD stability limit 2(1+beta)/eta = {lim:.3g} (x{doc['ratio_to_limit']:.2g})" if lim else "")
        + bn
    )
