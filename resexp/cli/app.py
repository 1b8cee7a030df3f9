"""The Typer app and what every command shares: its options and arguments, one-line user errors
(exit 2; a diverged run 3, an interrupted one 130), the consoles, and the config with its `--set`s."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from resexp.core.errors import UserError


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


def resolve_config(config: Path, overrides: list[str] | None):
    """The config with its `--set` overrides, then those in $RESEXP_SET (smoke tests, CI)."""
    from resexp.core.config import load_config

    return load_config(config, [*(overrides or []), *env_overrides()])


def env_overrides() -> list[str]:
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


def setup_jax() -> None:
    from resexp.core.runtime import configure_jax

    configure_jax()


def main() -> None:  # pragma: no cover
    app()
