"""The dataset and config commands: `resexp data download|info`, `resexp configs [show]`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from resexp.cli.app import (
    ConfigArg,
    SetOpt,
    configs_app,
    data_app,
    out_console,
    resolve_config,
    user_errors,
)
from resexp.core.errors import UserError


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

    cfg = resolve_config(config, set_)
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
