"""The why lab's commands: one per analysis on a run, and `analyze` over a sweep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from resexp.cli.app import (
    SetOpt,
    app,
    err_console,
    out_console,
    resolve_config,
    setup_jax,
    user_errors,
)
from resexp.core.errors import UserError

# --------------------------------------------------------------------------- the "why" lab (resexp.analysis)

RunArg = Annotated[Path, typer.Argument(help="A trained run directory (runs/<sweep>/<run-id>).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
PreciseBnOpt = Annotated[
    int | None,
    typer.Option(
        "--precise-bn-batches",
        help="BN statistics recomputed over this many training batches first; 0: the checkpoint's running "
        "averages. Default: the run's train.precise_bn_batches.",
        show_default=False,
    ),
]


def _examples_opt(analysis: str) -> Any:
    from resexp.analysis import REGISTRY

    return typer.Option(
        help=f"Sample size: the first N test images (default {REGISTRY[analysis].EXAMPLES}, at most the test set).",
        show_default=False,
    )


def _default_examples() -> str:
    from resexp.analysis import REGISTRY

    return ", ".join(f"{name} {mod.EXAMPLES}" for name, mod in REGISTRY.items() if mod.EXAMPLES is not None)


def _analysis_names() -> str:
    from resexp.analysis import REGISTRY

    return ",".join(REGISTRY)


def _analysis(name: str, run_dir: Path, as_json: bool, **options) -> None:
    """One analysis on one run, as its command prints it (the per-analysis commands only parse options)."""
    from resexp.analysis import REGISTRY, prepare_requests, run_analyses, uncached
    from resexp.analysis.common import inspect_run
    from resexp.analysis.progress import ProgressBoard

    info = inspect_run(run_dir)
    todo = uncached(info, prepare_requests(info, {name: options}))
    live = todo and err_console.is_terminal  # a bar with the time left; a log gets the one line below
    with ProgressBoard(err_console, [(info.dir.name, info.n_blocks, todo)] if live else []) as board:
        doc, cached = run_analyses(run_dir, {name: options}, board)[name]
    if as_json:
        print(json.dumps(doc))
        return
    out_console.print(REGISTRY[name].describe(doc), highlight=False, soft_wrap=True)
    out_console.print(
        f"[dim]{'cached' if cached else 'wrote'} {run_dir / 'analysis' / (name + '.json')}"
        + (f" and {run_dir / doc['figure']}" if doc.get("figure") else "")
        + (f" in {doc['seconds']:.1f} s" if not cached and doc.get("seconds") is not None else "")
        + "[/]",
        highlight=False,
        soft_wrap=True,
    )


def _int_list(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text}: expected comma-separated integers, e.g. 1,4,10") from None


@app.command()
@user_errors
def lesion(
    run_dir: RunArg,
    delete: Annotated[str | None, typer.Option(help="k values for k random deleted blocks.")] = "1,4,10",
    swaps: Annotated[int, typer.Option(help="Random swaps of same-shape blocks per draw.")] = 6,
    recalibrate_bn: Annotated[
        bool,
        typer.Option("--recalibrate-bn", help="Re-estimate BN statistics of each lesioned net on training images."),
    ] = False,
    examples: Annotated[int | None, _examples_opt("lesion")] = None,
    precise_bn_batches: PreciseBnOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete or reorder blocks of a trained net at test time (Veit et al. 2016, section 4)."""
    _analysis(
        "lesion",
        run_dir,
        as_json,
        delete=_int_list(delete, "--delete"),
        swaps=swaps,
        recalibrate_bn=recalibrate_bn,
        examples=examples,
        precise_bn_batches=precise_bn_batches,
    )


@app.command()
@user_errors
def gradients(
    target: Annotated[
        Path, typer.Argument(help="A YAML config (at initialisation) or a run directory.", show_default=False)
    ],
    set_: SetOpt = None,
    at_init: Annotated[
        bool, typer.Option("--at-init", help="For a run: its initialisation, not its trained weights.")
    ] = False,
    lines: Annotated[
        int | None, typer.Option(help="Sample size: lines through input space (default 4).", show_default=False)
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Shattered gradients, Jacobian conditioning and signal propagation (Balduzzi et al. 2017; Brock et al. 2021)."""
    if target.is_dir():
        _analysis("gradients", target, as_json, at_init=at_init, lines=lines)
        return
    cfg = resolve_config(target, set_)
    setup_jax()
    from resexp.analysis import REGISTRY, run_on_config

    doc = run_on_config("gradients", cfg, at_init=True, lines=lines)
    print(json.dumps(doc)) if as_json else out_console.print(REGISTRY["gradients"].describe(doc), highlight=False)


@app.command()
@user_errors
def paths(
    run_dir: RunArg,
    examples: Annotated[int | None, _examples_opt("paths")] = None,
    precise_bn_batches: PreciseBnOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Gradient carried by paths of each length through a ResNet (Veit et al. 2016, section 5)."""
    _analysis("paths", run_dir, as_json, examples=examples, precise_bn_batches=precise_bn_batches)


@app.command()
@user_errors
def landscape(
    run_dir: RunArg,
    grid: Annotated[int, typer.Option(help="Points per axis (odd, >= 3).")] = 15,
    span: Annotated[float, typer.Option(help="Grid half-width, in units of the filter-normalised direction.")] = 1.0,
    examples: Annotated[int | None, _examples_opt("landscape")] = None,
    dims: Annotated[int, typer.Option(help="1: a slice; 2: a contour plot.")] = 2,
    precise_bn_batches: PreciseBnOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Filter-normalised loss surface around the trained weights (Li et al. 2018)."""
    _analysis(
        "landscape",
        run_dir,
        as_json,
        grid=grid,
        span=span,
        examples=examples,
        dims=dims,
        precise_bn_batches=precise_bn_batches,
    )


@app.command()
@user_errors
def hessian(
    run_dir: RunArg,
    iters: Annotated[
        int, typer.Option(help="Power iterations, at most: it stops once two steps change lambda by < 0.5 %.")
    ] = 20,
    examples: Annotated[int | None, _examples_opt("hessian")] = None,
    precise_bn_batches: PreciseBnOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Largest Hessian eigenvalue (power iteration on Hessian-vector products) vs the SGD stability limit."""
    _analysis("hessian", run_dir, as_json, iters=iters, examples=examples, precise_bn_batches=precise_bn_batches)


@app.command()
@user_errors
def analyze(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep directory (runs/<name>).", show_default=False)],
    only: Annotated[str | None, typer.Option(help=f"Comma-separated subset of {_analysis_names()}.")] = None,
    grid: Annotated[
        str | None,
        typer.Option(
            help="Which grid of the directory: its name under grids/ (or a unique prefix), 'first', or 'all'. "
            "Default: the first.",
            show_default=False,
        ),
    ] = None,
    examples: Annotated[
        int | None,
        typer.Option(
            help="Sample size of every example-based analysis: the first N test images (default: each "
            f"analysis's own: {_default_examples()}).",
            show_default=False,
        ),
    ] = None,
    precise_bn_batches: PreciseBnOpt = None,
    jobs: Annotated[int, typer.Option(help="Runs analysed at once.", min=1)] = 1,
) -> None:
    """Every analysis on every run of a grid; figures vs depth, TensorBoard, and results.csv columns."""
    import time

    from resexp.analysis import parse_only
    from resexp.analysis.sweep import analyze_sweep

    names = parse_only(only)
    start = time.perf_counter()
    res = analyze_sweep(
        sweep_dir,
        names,
        jobs=jobs,
        grid=grid,
        examples=examples,
        precise_bn_batches=precise_bn_batches,
        console=err_console,
    )
    for note in res.notes:
        out_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    grids = ", ".join(g.name for g in res.grids)
    out_console.print(
        f"{len(res.analysed)} runs analysed ({res.computed} computed, {res.cached} cached), "
        f"{len(res.diverged)} diverged skipped, in {time.perf_counter() - start:.1f} s (grid: {grids})",
        highlight=False,
        soft_wrap=True,
    )
    for name, path in res.figures.items():
        out_console.print(f"{name}: {path}", highlight=False, soft_wrap=True)
