"""The documentation site (docs/, mkdocs.yml): its commands run, and its config reference is complete.

The slow test is one reader's journey: the README's commands in order, then each page's in the
site's navigation order, in one temporary directory (see tests/doc_commands.py for how a command
runs, and the skip list with its reasons). A command the journey already ran verbatim is not run
again. The cheap tests keep the docs honest without running anything: every command of a page is
run or skipped with a reason, and every key of the config schema is on the Configs page with the
schema's default.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from doc_commands import (
    SKIPPED,
    Command,
    check_ran_as_documented,
    commands,
    reader_env,
    reader_workdir,
    readme_commands,
    run_as_reader,
    skip_reason,
)
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from resexp.core.config import Config, parse_value

DOCS = ROOT / "docs"
CONFIGS_PAGE = DOCS / "configs.md"


def nav_pages() -> list[Path]:
    """The site's pages in navigation order (mkdocs.yml)."""

    def walk(node) -> Iterator[str]:
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from walk(value)

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    return [DOCS / page for page in walk(nav)]


def docs_commands() -> list[Command]:
    return [c for page in nav_pages() if page.suffix == ".md" for c in commands(page)]


def test_every_page_is_in_the_navigation():
    assert sorted(p for p in nav_pages() if p.suffix == ".md") == sorted(DOCS.glob("*.md"))
    assert DOCS / "tutorial.ipynb" in nav_pages()  # the tutorial notebook is a page of the site too


def test_every_docs_command_is_run_or_skipped_with_a_reason():
    found = docs_commands()
    assert len(found) >= 30, [c.code for c in found]
    stray = [c.where for c in found if not (c.runnable or c.synopsis or skip_reason(c.code))]
    assert not stray, "neither run by the docs test nor in doc_commands.SKIPPED:\n" + "\n".join(stray)
    every = [c.code for c in found] + [c.code for c in readme_commands()]
    unused = [part for part, _ in SKIPPED if not any(part in code for code in every)]
    assert not unused, f"SKIPPED entries that match no documented command: {unused}"


# --------------------------------------------------------------------------- the config reference


def nested_model(annotation) -> tuple[type[BaseModel] | None, str]:
    """(the model, how its keys hang below) of an optional or list field (`X | None`, `list[X]`)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        return (models[0], ".") if models else (None, "")
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]."
    return None, ""


def schema_keys(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, default) of every setting: section fields, and the fields of optional or list
    models below them (`optim.warmup.kind`, `sweep_overrides[].when`). Required: PydanticUndefined."""
    for name, field in model.model_fields.items():
        key = prefix + name
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):  # a section: its keys
            yield from schema_keys(annotation, key + ".")
            continue
        yield key, field.get_default(call_default_factory=True)
        inner, joint = nested_model(annotation)
        if inner is not None:
            yield from schema_keys(inner, key + joint)


def documented_keys() -> dict[str, str]:
    """Configs page, section "Every key": key -> its default cell, from each row that starts with a `key`."""
    section = CONFIGS_PAGE.read_text().split("\n## Every key\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]*) \|", section, flags=re.M)
    return {key: cell.strip() for key, cell in rows}


def test_configs_page_documents_every_schema_key_with_its_default():
    documented, schema = documented_keys(), dict(schema_keys())
    assert "optim.warmup.until_train_error" in schema and "sweep_overrides[].set" in schema  # the walk goes deep
    missing = [key for key in schema if key not in documented]
    assert not missing, f"{CONFIGS_PAGE.relative_to(ROOT)} lacks these config keys: {missing}"
    stale = [key for key in documented if key not in schema]
    assert not stale, f"{CONFIGS_PAGE.relative_to(ROOT)} documents keys the schema does not have: {stale}"
    for key, cell in documented.items():
        literal = re.fullmatch(r"`([^`]*)`", cell)
        if key not in schema or not literal:
            continue  # prose ("the file's stem", "on for CIFAR", "none") is read, not parsed
        default = schema[key]
        assert default is not PydanticUndefined, f"{key} is required, the page gives it a default {cell}"
        assert parse_value(literal.group(1)) == default, f"{key}: the page says {cell}, the schema {default!r}"


# --------------------------------------------------------------------------- the journey


@pytest.mark.slow
def test_documented_commands_run_in_order(tmp_path):
    workdir, env = reader_workdir(tmp_path), reader_env()
    ran: list[str] = []
    journey = readme_commands() + [c for c in docs_commands() if c.runnable and not c.synopsis]
    for command in journey:
        if skip_reason(command.code) or command.code in ran:
            continue
        check_ran_as_documented(command, run_as_reader(command.code, workdir, env))
        ran.append(command.code)
    runs = workdir / "runs"
    # the sequence that once broke the demo directory: the demo, a weight-decay grid into it, the demo again
    assert (runs / "demo" / "loss_vs_depth.png").is_file()
    assert list((runs / "demo" / "grids").glob("*/residual_ratio_vs_wd.png")), ran
    again = run_as_reader("make demo", workdir, env)
    assert again.returncode == 0 and "Traceback" not in again.stdout + again.stderr, again.stderr[-3000:]
    assert "already done" in again.stderr
    answer_in_the_browser(workdir, env)


def answer_in_the_browser(workdir: Path, env: dict) -> None:
    """Then `make tensorboard`, as the README's Usage ends: the bare address it serves, in a fresh
    Chromium, shows every sweep's loss vs depth, every chart drawn, none clipped, plain blue and
    ResNet orange."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    sys.path.insert(0, str(ROOT / "scripts"))
    import dashboard_screenshots as dash

    if dash.find_chromium() is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); .ci/run installs it when it can")
    port = dash.free_port()
    argv = ["make", "-C", str(ROOT), "tensorboard", f"OUT={workdir / 'runs'}", f"PORT={port}"]
    server = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(url + "/data/plugin/custom_scalars/layout", timeout=2) as resp:
                    if json.loads(resp.read()).get("category"):
                        break
            except OSError:
                time.sleep(0.5)
        assert server.poll() is None, server.communicate()[0]
        _, problems = dash.screenshot_pages(url, workdir / "dashboard")
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # make and the resexp it started
        server.wait(timeout=30)
    assert not problems, problems
    text = (workdir / "dashboard" / "custom_scalars.txt").read_text()
    assert "demo: Loss vs depth" in text and "demo_seeds: Loss vs depth" in text, text[:2000]


def test_architecture_page_names_every_package_and_module():
    """docs/architecture.md follows the code: each package of resexp/ has its row, and each module is
    named in it (a module added, moved or renamed without the page fails here)."""
    page = (DOCS / "architecture.md").read_text()
    package = ROOT / "resexp"
    for sub in sorted(p for p in package.iterdir() if (p / "__init__.py").exists()):
        assert f"`{sub.name}/`" in page, f"package {sub.name}/ missing from docs/architecture.md"
    modules = [p for p in package.rglob("*.py") if p.name not in {"__init__.py", "__main__.py"}]
    modules = [p for p in modules if p.parent.name != "analysis"]  # the analyses: one row for the package
    missing = [str(p.relative_to(package)) for p in modules if f"`{p.name}`" not in page]
    assert not missing, f"modules missing from docs/architecture.md: {missing}"
