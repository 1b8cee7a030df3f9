"""The "why" lab: five explanations of why residual nets can be deep, each measured on a run.

    lesion     Veit et al. 2016 §4   delete / reorder blocks at test time
    gradients  Balduzzi et al. 2017  shattered gradients, Jacobian conditioning, signal propagation
    paths      Veit et al. 2016 §5   gradient carried by paths of each length
    landscape  Li et al. 2018        filter-normalised loss surface
    hessian    (PyHessian-style)     largest Hessian eigenvalue vs the SGD stability limit

Every analysis is a module that satisfies the `Analysis` protocol, and `REGISTRY` names it: adding
one is its module plus one registry line. `run_analyses`, `analyze` over a sweep and its figures
walk the registry: `prepare(info, **options) -> options` (validates, no JAX), `compute(run,
options) -> result`, `scalars`, `describe`, `plot`, and `plot_vs_depth` for the sweep. Results
are cached in `RUN_DIR/analysis/<name>.json` by checkpoint and options; reporting reads them
through `resexp.reporting.analysis_results` (its results.csv columns are that module's `HEADLINE`).

Each analysis measures a bounded sample (its one sample-size option: `examples` test images,
or `lines` for the gradients), batched into one compiled program per architecture, and
reports the uncertainty that sample implies (`resexp.analysis.stats`) and its `seconds`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from resexp.analysis import gradients, hessian, landscape, lesion, paths
from resexp.analysis.common import AnalysisError, LoadedRun, RunInfo, cached_result, inspect_run
from resexp.analysis.progress import Sink


class Analysis(Protocol):
    """What `run_analyses`, `analyze` and its figures need of an analysis module."""

    @property
    def NAME(self) -> str: ...

    @property
    def EXAMPLES(self) -> int | None:
        """Default sample of test images; None: the analysis takes no `examples`/`precise_bn_batches`."""

    @property
    def SWEEP_OPTIONS(self) -> dict[str, Any]:
        """What `analyze` asks of every run besides the shared sample and BN options."""

    @property
    def VS_DEPTH(self) -> str | None:
        """File name of its figure against depth in a sweep (None: none)."""

    @property
    def POINT_KEYS(self) -> tuple[str, ...]:
        """Keys of its result copied into each run's point for the sweep figures."""

    prepare: Callable[..., dict]  # (info, **options) -> options, validated and completed (no JAX)

    def compute(self, run: LoadedRun, options: dict) -> dict: ...

    def scalars(self, result: dict) -> dict[str, float]: ...

    def describe(self, result: dict) -> str: ...

    def plot(self, result: dict, title: str) -> bytes | None: ...

    def plot_vs_depth(self, points: list[dict], title: str) -> bytes | None: ...


REGISTRY: dict[str, Analysis] = {
    "lesion": lesion,
    "gradients": gradients,
    "paths": paths,
    "landscape": landscape,
    "hessian": hessian,
}

__all__ = [
    "REGISTRY",
    "Analysis",
    "AnalysisError",
    "parse_only",
    "prepare_requests",
    "run_analyses",
    "run_on_config",
    "uncached",
]


def parse_only(text: str | None) -> list[str]:
    """`--only lesion,paths` -> ["lesion", "paths"]; an unknown name is a one-line error."""
    if not text:
        return list(REGISTRY)
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in REGISTRY]
    if bad or not names:
        raise AnalysisError(
            f"--only {text}: unknown analysis {', '.join(bad) or '(none)'}; choose from {', '.join(REGISTRY)}"
        )
    return [n for n in REGISTRY if n in names]


def prepare_requests(info: RunInfo, requests: dict[str, dict]) -> dict[str, dict]:
    """Every request validated and completed with its defaults (no JAX): name -> options."""
    return {name: REGISTRY[name].prepare(info, **opts) for name, opts in requests.items()}


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
        from resexp.core.runtime import configure_jax

        configure_jax()
        from resexp.analysis.common import init_run, load_run, timed, write_result

        trained = None
        for name in todo:
            mod, opts = REGISTRY[name], prepared[name]
            if opts.get("at_init"):
                run = init_run(trained.cfg if trained else _config(info), trained.data if trained else None)
                run.info = info
            else:
                trained = trained or load_run(info)
                run = trained
            emit({"event": "analysis", "run": info.dir.name, "analysis": name})
            run.progress = functools.partial(_progress_event, emit, info.dir.name)
            result = timed(functools.partial(mod.compute, run, opts))
            png = mod.plot(result, title=f"{info.dir.name}: {name}")
            out[name] = (write_result(name, info, opts, result, png, mod.scalars(result)), False)
            emit({"event": "analysis_done", "run": info.dir.name, "analysis": name, "seconds": result["seconds"]})
    emit({"event": "run_done", "run": info.dir.name})
    return {name: out[name] for name in requests}


def run_on_config(name: str, cfg, **options: Any) -> dict:
    """An analysis of a config's initialisation (no run directory, nothing cached or written)."""
    from resexp.analysis.common import init_run, timed

    mod = REGISTRY[name]
    return timed(lambda: mod.compute(init_run(cfg), mod.prepare(None, **options)))


def _progress_event(emit: Sink, run: str, done: int, total: int) -> None:
    emit({"event": "progress", "run": run, "done": done, "total": total})


def _config(info: RunInfo):
    from resexp.core.config import Config

    return Config.model_validate(info.summary["config"])
