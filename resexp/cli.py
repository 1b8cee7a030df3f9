"""The `resexp` command line: parse, call, print. No logic lives here that tests cannot reach.

Every user mistake (a `UserError`) is one line on stderr and exit code 2; a diverged
run exits 3, an interrupted one 130. Bugs keep their tracebacks.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from resexp.core.errors import UserError
from resexp.core.variants import ShortcutOption


def _console(*, stderr: bool = False) -> Console:
    """A terminal gets rich's wrapping at its width; a file, a pipe or a CI log gets every line whole
    (rich would otherwise wrap at 80 columns, splitting messages and table cells)."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=100_000, soft_wrap=True)


out_console = _console()
err_console = _console(stderr=True)


def _flags_without_type(params: list) -> list:
    """Flags (`--help`, `--dry-run`) take no value: show no `<bool>` type beside them in --help."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))


class _Group(TyperGroup):
    """The command line's entry point: Typer's own usage errors (`--jobs 0`, an unknown option) are
    one line on stderr and exit 2, like every other bad input, instead of a framed panel."""

    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # click's usage errors
            if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
                ctx = getattr(exc, "ctx", None)
                hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
                err_console.print(f"error: {exc.format_message()}{hint}", highlight=False, markup=False)
            sys.exit(exc.exit_code)
        except typer.Abort:
            err_console.print("aborted", highlight=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


class _Typer(typer.Typer):
    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Measure why residual networks can be made deep: train, sweep depth, look.",
)
data_app = _Typer(cls=_Group, no_args_is_help=True, help="Datasets: download and inspect.")
app.add_typer(data_app, name="data")
configs_app = typer.Typer()  # its help: configs_list's docstring
app.add_typer(configs_app, name="configs")

ConfigArg = Annotated[
    Path,
    typer.Argument(
        metavar="CONFIG",
        help="A YAML experiment config: a path, or a bundled config's name (resexp configs).",
        show_default=False,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE", help="Override a key: --set model.depth=56 (repeatable)."),
]
GridOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--grid", metavar="KEY=V1,V2,...", help="Add or replace an axis: --grid model.depth=8,20,56 (repeatable)."
    ),
]
OutOpt = Annotated[Path, typer.Option("--out", metavar="DIR", help="Where run directories go.")]


def _thread_excepthook(args, _default=threading.excepthook) -> None:
    # TensorBoard's event writer thread dies on a write error (a full disk) and the main thread
    # re-raises that error on its next write, where it becomes one line: don't print it twice.
    if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
        return
    _default(args)


threading.excepthook = _thread_excepthook


def user_errors(fn: Callable) -> Callable:
    """One line and an exit code for anything the user can fix; nothing half-written."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            from rich.markup import escape  # messages quote user text: `[/x]` must print, not parse

            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:  # Ctrl-C before training started (imports, compiling): nothing to save
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(130) from None

    return wrapper


def _load(config: Path, overrides: list[str] | None):
    """The config with its `--set` overrides, then those in $RESEXP_SET (smoke tests, CI)."""
    from resexp.core.config import load_config

    return load_config(config, [*(overrides or []), *_env_overrides()])


def _env_overrides() -> list[str]:
    """`RESEXP_SET="train.steps=20 train.log_every=10"`: extra `--set`s for every command, announced
    on stderr. They change the resolved config, hence the run ids: never a real run's results."""
    import os
    import shlex

    text = os.environ.get("RESEXP_SET", "").strip()
    if not text:
        return []
    err_console.print(f"RESEXP_SET: applying --set {' --set '.join(shlex.split(text))}", highlight=False)
    return shlex.split(text)


def _print_version(value: bool) -> None:
    if value:
        from resexp import package_version

        print(f"resexp {package_version()}")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print resexp's version and exit."),
    ] = False,
) -> None:
    """Measure why residual networks can be made deep: train, sweep depth, look."""


def _setup() -> None:
    from resexp.core.runtime import configure_jax

    configure_jax()


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
        [*(set_ or []), *_env_overrides()],
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
    plan = plan_sweep(config, [*(set_ or []), *_env_overrides()], grid=grid, out=out, name=name, shard=shard)
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
    cfg = _load(config, set_)  # before importing JAX: a bad config fails in a second
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

    res = identity_fn(config, [*(set_ or []), *_env_overrides()], seed=seed, examples=examples)
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


@data_app.command("download")
@user_errors
def data_download(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="cifar10, cifar100, mnist or fashion_mnist", show_default=False)
    ],
    dir: Annotated[
        Path | None, typer.Option("--dir", metavar="DIR", help="Target directory (default: the data cache).")
    ] = None,
    base_url: Annotated[str | None, typer.Option(metavar="URL", help="A mirror serving the same file names.")] = None,
    manifest: Annotated[
        Path | None, typer.Option(metavar="FILE", help="JSON {filename: sha256} for mirrors that repack files.")
    ] = None,
) -> None:
    """Download a dataset's official files, verifying each checksum (a bad file is deleted).

    Without --dir (and --base-url), a copy already found along the search path whose content
    verifies (e.g. Debian's dataset-fashion-mnist) is not downloaded again.

    Example: resexp data download cifar10 --dir ~/data
    """
    from resexp.core.datasets import CONTENT_SHA256, default_data_dir
    from resexp.core.download import DOWNLOADS, download, load_manifest
    from resexp.core.errors import DataError

    if name not in DOWNLOADS:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DOWNLOADS)}")
    if dir is None and base_url is None and manifest is None and name in CONTENT_SHA256:
        present = _verified_copy(name)
        if present is not None:
            out_console.print(
                f"{name}: already present in {present}, content verified; nothing to download "
                "(resexp finds it there: no data.dir needed)",
                highlight=False,
            )
            return
    target = download(
        name,
        dir or default_data_dir(),
        base_url=base_url,
        manifest=load_manifest(manifest) if manifest else None,
        progress=sys.stderr.isatty(),
    )
    where = "" if dir is None else f" --set data.dir={target.parent}"  # the default folder is searched
    out_console.print(f"{name}: ready in {target} (use --set data.name={name}{where})", highlight=False)


def _verified_copy(name: str) -> Path | None:
    """The folder of a copy of `name` along the search path whose content verifies, if any."""
    from resexp.core.datasets import find_dataset, load_files, verify_content

    try:
        where = find_dataset(name)
        splits = load_files(name, where)
        assert splits.content is not None
        verify_content(splits.content, name)
    except UserError:
        return None
    return where


@data_app.command("info")
@user_errors
def data_info(config: ConfigArg, set_: SetOpt = None) -> None:
    """Load the configured dataset; print its sizes and shapes, where it was read and whether it verified.

    Example: resexp data info configs/fashion_mnist.yaml
    """
    from resexp.core.data import load_data
    from resexp.core.datasets import FILE_DATASETS, data_search_path

    cfg = _load(config, set_)
    d = load_data(cfg.data, source=str(config))
    out_console.print(
        f"{d.name}: {d.num_train} train / {d.num_test} test, images {d.image_shape}, "
        f"{d.num_classes} classes, augment={d.augment}",
        highlight=False,
        soft_wrap=True,
    )
    if d.content is None:
        return
    how = (
        "data.dir"
        if cfg.data.dir
        else "searched " + ", ".join(str(p) for p in data_search_path())
        if cfg.data.name in FILE_DATASETS
        else "built in"
    )
    out_console.print(f"read from: {d.content.source} ({how})", highlight=False, soft_wrap=True)
    if d.content.verified:
        verdict = "verified: every file's decompressed content matches the published digest"
    elif cfg.data.name in FILE_DATASETS:
        verdict = "not verified: no published digest of this dataset's content (each run records this one)"
    else:
        verdict = "each run records it"
    out_console.print(f"sha256: {d.content.digest} ({verdict})", highlight=False, soft_wrap=True)


@configs_app.callback(invoke_without_command=True)
@user_errors
def configs_list(ctx: typer.Context) -> None:
    """The configs that ship with resexp and their purpose; `show NAME` prints one to copy and edit.

    Every command takes a bundled config's name where it takes a config: resexp sweep demo. A file in
    the current directory wins over a bundled name: `resexp configs show demo > demo.yaml`, edit it,
    and `resexp sweep demo` runs your copy.
    """
    if ctx.invoked_subcommand is not None:
        return
    from resexp.core.bundled import bundled_configs, bundled_dir, config_purpose

    configs = bundled_configs()
    if not configs:
        raise UserError(f"no bundled configs in {bundled_dir()}")
    table = Table(title=f"bundled configs ({bundled_dir()})", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("purpose")
    for name, path in configs.items():
        table.add_row(name, config_purpose(path) or "-")
    out_console.print(table)


@configs_app.command("show")
@user_errors
def configs_show(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A bundled config (resexp configs).", show_default=False)],
) -> None:
    """Print a bundled config, to copy and edit: resexp configs show demo > my.yaml"""
    from resexp.core.bundled import find_bundled

    sys.stdout.write(find_bundled(name).read_text(encoding="utf-8"))


def main() -> None:  # pragma: no cover
    app()


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
    cfg = _load(target, set_)
    _setup()
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
