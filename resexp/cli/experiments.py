"""The experiment commands: train, sweep, status, tensorboard, report, model, identity."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from resexp.cli.app import (
    ConfigArg,
    GridOpt,
    OutOpt,
    SetOpt,
    app,
    env_overrides,
    err_console,
    out_console,
    resolve_config,
    user_errors,
)
from resexp.core.variants import ShortcutOption


@app.command()
@user_errors
def train(
    config: ConfigArg,
    set_: SetOpt = None,
    out: OutOpt = Path("runs"),
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    distributed: Annotated[
        bool | None,
        typer.Option(
            "--distributed/--no-distributed",
            help="One run over several processes (jax.distributed); default: on under srun with several tasks.",
            rich_help_panel="Multi-host",
        ),
    ] = None,
    coordinator: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT", help="Process 0's address (not needed under srun).", rich_help_panel="Multi-host"
        ),
    ] = None,
    num_processes: Annotated[
        int | None,
        typer.Option(help="Processes in the run (not needed under srun).", min=1, rich_help_panel="Multi-host"),
    ] = None,
    process_id: Annotated[
        int | None,
        typer.Option(help="This process's index (not needed under srun).", min=0, rich_help_panel="Multi-host"),
    ] = None,
) -> None:
    """Train one model (or `train.vmap_seeds` seeds of it). Re-running resumes; a finished run is not retrained.

    Example: resexp train configs/demo.yaml --set model.depth=8 --set train.steps=60
    """
    from resexp.api import train as train_fn
    from resexp.runs.store import exit_code

    runs = train_fn(
        config,
        [*(set_ or []), *env_overrides()],
        out=out,
        progress=progress and sys.stderr.isatty(),
        console=err_console,
        distributed=distributed,
        coordinator=coordinator,
        num_processes=num_processes,
        process_id=process_id,
    )
    for r in runs:
        if r.skipped:
            verb = "in progress elsewhere" if r.status == "running" else f"already {r.summary.get('status')}"
            err_console.print(f"{r.run_dir.name}: {verb}; results in {r.run_dir}")
        _print_run(r.run_dir, r.summary)
    raise typer.Exit(max((exit_code(r.summary.get("status")) for r in runs), default=0))


def _fmt(v, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def _precise_bn_note(s: dict) -> str:
    """With precise BN, the running averages' accuracy beside the reported one (the gap is the point)."""
    bn = s.get("eval_bn") or {}
    if bn.get("statistics") != "precise":
        return ""
    running = _fmt(s.get("eval_running_accuracy"), ".3f")
    return f" (precise BN, {bn.get('batches')} batches; running averages: {running})"


def _print_run(run_dir: Path, s: dict) -> None:
    status = s.get("status")
    if status == "diverged":
        out_console.print(
            f"[bold red]diverged[/] at step {s.get('diverged_at_step')}: "
            f"{s.get('diverged_reason') or 'non-finite loss'}. Lower optim.lr or add warmup. Run: {run_dir}",
            highlight=False,
        )
        return
    if status == "interrupted":
        out_console.print(
            f"[yellow]interrupted[/] at step {s.get('steps')}/{s.get('total_steps')}; "
            f"re-run the same command to resume. Run: {run_dir}"
        )
        return
    out_console.print(
        f"[bold]{s.get('run_id')}[/] {status}: train loss {_fmt(s.get('final_train_loss'))}, "
        f"train acc {_fmt(s.get('final_train_accuracy'), '.3f')}, eval loss {_fmt(s.get('eval_loss'))}, "
        f"eval acc {_fmt(s.get('eval_accuracy'), '.3f')}{_precise_bn_note(s)} | {s.get('params'):,} params, "
        f"compile {_fmt(s.get('compile_seconds'), '.1f')} s, wall {_fmt(s.get('wall_seconds'), '.1f')} s, "
        f"{_fmt(s.get('images_per_second'), ',.0f')} img/s\n  {run_dir}",
        highlight=False,
    )


@app.command()
@user_errors
def sweep(
    config: ConfigArg,
    set_: SetOpt = None,
    out: OutOpt = Path("runs"),
    grid: GridOpt = None,
    name: Annotated[
        str | None,
        typer.Option("--name", metavar="NAME", help="The sweep directory, <out>/NAME (default: the config's name)."),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            help=r"Runs trained at once on this machine. \[default: 1]",  # over its GPUs: docs/slurm.md
            min=1,
            show_default=False,
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(metavar="I/N", help="Train only every N-th run from I (share one directory across N machines)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the runs; train nothing.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    launcher: Annotated[
        str | None,
        typer.Option(
            metavar="slurm|local",
            help="Run the cells as jobs through submitit: slurm (one sbatch array) or local.",
            rich_help_panel="Cluster",
        ),
    ] = None,
    partition: Annotated[
        str | None, typer.Option(metavar="P", help="SLURM partition.", rich_help_panel="Cluster")
    ] = None,
    gpus_per_run: Annotated[
        int,
        typer.Option(
            metavar="G",
            help="GPUs per task (--gres=gpu:G), shared by its --runs-per-task runs.",
            min=0,
            rich_help_panel="Cluster",
        ),
    ] = 0,
    cpus_per_run: Annotated[
        int | None, typer.Option(metavar="C", help="CPUs per cell.", min=1, rich_help_panel="Cluster")
    ] = None,
    mem: Annotated[
        str | None,
        typer.Option(metavar="M", help="Memory per cell, as sbatch --mem (e.g. 16G).", rich_help_panel="Cluster"),
    ] = None,
    time_limit: Annotated[
        str | None,
        typer.Option(
            "--time",
            metavar="HH:MM:SS",
            help="Time limit per task (a task past it checkpoints and requeues).",
            rich_help_panel="Cluster",
        ),
    ] = None,
    max_parallel: Annotated[
        int | None,
        typer.Option(
            metavar="K",
            help="Tasks running at once (the array's %K; local: default 1).",
            min=1,
            rich_help_panel="Cluster",
        ),
    ] = None,
    runs_per_task: Annotated[
        int | None,
        typer.Option(
            metavar="K",
            help="Cells per array task, trained at once on the task's GPUs (CPUs and --mem are per run: "
            "the task asks for K times them); default 1.",
            min=1,
            rich_help_panel="Cluster",
        ),
    ] = None,
    account: Annotated[str | None, typer.Option(metavar="A", help="SLURM account.", rich_help_panel="Cluster")] = None,
    qos: Annotated[str | None, typer.Option(metavar="Q", help="SLURM QOS.", rich_help_panel="Cluster")] = None,
    slurm_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--slurm-arg",
            metavar="KEY=VALUE",
            help="Any other sbatch option: --slurm-arg constraint=a100 (repeatable).",
            rich_help_panel="Cluster",
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="Wait and report; or submit the cells plus a report job and exit.",
            rich_help_panel="Cluster",
        ),
    ] = True,
) -> None:
    """Train a grid (depth x shortcut x projection x weight decay x seed); write loss-vs-depth results.

    Example: resexp sweep configs/demo.yaml --grid optim.weight_decay=0,1e-4 --jobs 2
    """
    from resexp.api import execute_sweep, plan_sweep, sweep_executor

    executor = sweep_executor(
        launcher,
        jobs=jobs,
        shard=shard,
        wait=wait,
        progress=progress and sys.stderr.isatty(),
        console=out_console,
        err_console=err_console,
        launcher_options={
            "partition": partition,
            "gpus_per_run": gpus_per_run,
            "cpus_per_run": cpus_per_run,
            "mem": mem,
            "time": time_limit,
            "max_parallel": max_parallel,
            "runs_per_task": runs_per_task,
            "account": account,
            "qos": qos,
            "slurm_args": slurm_arg,
        },
    )
    plan = plan_sweep(config, [*(set_ or []), *env_overrides()], grid=grid, out=out, name=name, shard=shard)
    if dry_run:
        executor.dry_run(plan, out_console)
        return
    raise typer.Exit(_print_sweep_end(execute_sweep(plan, executor, report_console=out_console)))


def _print_sweep_end(outcome) -> int:
    """The runs that did not finish, where the results are, how to look; the sweep's exit code."""
    for note in outcome.notes:
        err_console.print(note, highlight=False, soft_wrap=True)
    result = outcome.result
    if result is not None:
        figure = result.figures.get("loss_vs_depth.png") or next(iter(result.figures.values()), None)
        out_console.print(
            f"\nResults: {result.report_dir / 'results.csv'}"
            + (f", figure: {figure}" if figure else "")
            + f"\n{_tensorboard_hint(result.sweep_dir)}",
            highlight=False,
        )
    return outcome.code


def _tensorboard_hint(path: Path) -> str:
    from resexp.reporting.dashboard import tensorboard_hint

    return tensorboard_hint(path)


@app.command()
@user_errors
def status(sweep_dir: Annotated[Path, typer.Argument(help="A sweep directory (runs/<name>).")]) -> None:
    """Every run of a sweep, by depth: status, step reached, train loss, wall time; the job and its
    restarts for runs a launcher submitted; the counts per status on top."""
    from resexp.sweeps.launch import print_status

    print_status(sweep_dir, out_console)


@app.command("tensorboard")
@user_errors
def tensorboard_(
    path: Annotated[
        Path,
        typer.Argument(metavar="PATH", help="A sweep directory (runs/<name>) or a directory of sweeps (runs)."),
    ] = Path("runs"),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 6006,
) -> None:
    """TensorBoard opened at the answer: loss vs depth, smoothing 0, every depth in view, one colour per family.

    Example: resexp tensorboard runs/demo
    """
    from resexp.reporting.dashboard import serve

    serve(path, host=host, port=port, console=out_console)


@app.command()
@user_errors
def report(
    sweep_dir: Annotated[
        Path, typer.Argument(metavar="SWEEP_DIR", help="A sweep directory (runs/<name>).", show_default=False)
    ],
) -> None:
    """Rebuild results.csv/json, figures and TensorBoard aggregates of every grid swept into SWEEP_DIR.

    Example: resexp report runs/demo
    """
    from resexp.reporting.report import build_reports

    build_reports(sweep_dir, console=out_console)
    out_console.print(_tensorboard_hint(sweep_dir), highlight=False)


@app.command()
@user_errors
def model(
    config: ConfigArg,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of a table.")] = False,
) -> None:
    """The architecture as a table: layers, output shapes, parameters, multiply-accumulates per example.

    Example: resexp model configs/cifar10.yaml --set model.depth=110
    """
    cfg = resolve_config(config, set_)  # before importing JAX: a bad config fails in a second
    from resexp.core.data import dataset_shape
    from resexp.core.models import layer_table

    shape, classes = dataset_shape(cfg.data)
    rows = layer_table(cfg.model, shape, classes)
    m = cfg.model
    title = (
        f"{'ResNet' if m.shortcut else 'plain'}-{m.depth}"
        + (f" option {ShortcutOption(m.projection).letter}" if m.shortcut else "")
        if m.kind == "cnn"
        else f"{'residual' if m.shortcut else 'plain'} MLP, depth {m.depth}"
    )
    params, macs = sum(r.params for r in rows), sum(r.macs for r in rows)
    if as_json:
        print(
            json.dumps(
                {
                    "name": title,
                    "kind": m.kind,
                    "depth": m.depth,
                    "params": params,
                    "macs_per_example": macs,
                    "input_shape": list(shape),
                    "num_classes": classes,
                    "layers": [
                        {"name": r.name, "output_shape": list(r.output_shape), "params": r.params, "macs": r.macs}
                        for r in rows
                    ],
                }
            )
        )
        return
    table = Table(title=f"{title} on {cfg.data.name} {shape}")
    for col in ("layer", "output", "params", "MACs"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for r in rows:
        table.add_row(r.name, "x".join(map(str, r.output_shape)), f"{r.params:,}", f"{r.macs:,}")
    table.add_row("[bold]total", "", f"[bold]{params:,}", f"[bold]{macs:,}")
    out_console.print(table)


@app.command()
@user_errors
def identity(
    config: ConfigArg,
    set_: SetOpt = None,
    seed: Annotated[int | None, typer.Option(help="Initialisation seed (default: train.seed).")] = None,
    examples: Annotated[int, typer.Option(help="Test images pushed through the net.", min=1)] = 64,
) -> None:
    r"""Zero every residual branch's last layer and check each block becomes the identity.

    A residual block computes a\[l+2] = relu(W a\[l+1] + b + a\[l]). With W = 0 and b = 0
    (with BN: its scale and shift) this is relu(a\[l]) = a\[l], because a\[l] is itself the
    output of a relu, so non-negative: the block is exactly the identity, and weight
    decay, pulling W and b toward 0, pulls it there. Where the shape changes the block is
    relu(Ws a\[l]): option A subsamples and pads with zero channels (no parameters: still
    a\[l], reshaped); option B's Ws is a learned projection (1x1 conv + BN) that is not the
    identity unless it learns to be; option C puts a learned Ws on every block, so no block
    is the identity. A plain block zeroed the same way outputs relu(0) = 0: the signal is
    lost. Exit 0 when every residual block is the identity (relu(Ws a) where the shape
    changes), 1 otherwise (plain nets, option C).

    Example: resexp identity configs/demo.yaml --set model.depth=20
    """
    from resexp.api import identity as identity_fn

    res = identity_fn(config, [*(set_ or []), *env_overrides()], seed=seed, examples=examples)
    out_console.print(_identity_table(res))
    if res.shortcut:
        out_console.print(
            f"Every block input a is a relu output, so non-negative (min over all blocks: {res.min_block_input:g}); "
            "hence relu(0 + a) = a.",
            highlight=False,
        )
    out_console.print(_identity_verdict(res))
    raise typer.Exit(0 if res.holds else 1)


def _identity_table(res) -> Table:
    """`resexp identity`: per block, how far its output is from its input and from relu(Ws a)."""
    table = Table(
        title=f"identity check: {res.architecture} ({res.dtype}), every branch's last layer zeroed, "
        f"{res.images} {res.dataset} images"
    )
    for col in ("block", "Ws", "max|out-a|", "vs relu(Ws a)", "verdict"):
        table.add_column(col, justify="right" if col.startswith(("max", "vs")) else "left", no_wrap=col == "block")
    for r in res.rows:
        table.add_row(
            r["block"],
            r["shortcut"],
            _fmt(r["max_abs_diff_input"], ".1e"),
            _fmt(r["max_abs_diff_shortcut"], ".1e"),
            ("[green]" if r["holds"] else "[red]") + r["verdict"],
        )
    return table


def _identity_verdict(res) -> str:
    """`resexp identity`'s last line: the signal lost (plain), kept (every block), or the blocks that fail."""
    from resexp.core.diagnostics import TOLERANCE

    if not res.shortcut:
        return (
            "[red]plain net[/]: with its last layer zeroed each block outputs relu(0) = 0, "
            "not its input: the signal is lost"
        )
    if all(r["holds"] for r in res.rows):
        return (
            f"[green]holds[/]: every residual block's output equals its input (max |diff| <= "
            f"{TOLERANCE:g}; relu(Ws a) where the shape changes)"
        )
    bad = [r["block"] for r in res.rows if not r["holds"]]
    option = ShortcutOption(res.projection)
    why = f" (option {option.letter}: Ws is learned on every block)" if option is ShortcutOption.C else ""
    return (
        f"[red]does not hold[/] for {len(bad)} of {len(res.rows)} blocks{why}: {', '.join(bad[:4])}"
        f"{', ...' if len(bad) > 4 else ''}"
    )
