"""resexp as an installed tool: configs by name from any directory, `resexp configs`, one version.

The built wheel itself is tested by scripts/check_wheel.sh (`make check-wheel`, run by .ci/run): it
installs the wheel outside the clone and runs a shrunk demo sweep by name. Here, cheaply, the same
rules in the clone's editable install.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

import resexp
from resexp.core.bundled import bundled_configs, bundled_dir, config_purpose, resolve_config
from resexp.core.config import load_config, run_id
from resexp.core.errors import ConfigError

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_one_version_from_the_package_metadata():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert metadata.version("resexp") == resexp.__version__ == version
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout == f"resexp {version}\n", r.stdout + r.stderr


def test_the_bundled_configs_are_the_repository_configs():
    """resexp/configs is the clone's configs/ (one copy): every file there ships, byte for byte."""
    assert bundled_dir().resolve() == (ROOT / "configs").resolve()
    assert {name: p.read_bytes() for name, p in bundled_configs().items()} == {p.stem: p.read_bytes() for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_states_its_purpose_on_its_first_line(path):
    """`resexp configs` shows a config's first comment line: a sentence of its own, not the start of one."""
    purpose = config_purpose(path)
    assert purpose and path.read_text().startswith("#"), f"{path.name}: start it with '# <one-line purpose>.'"
    assert purpose[-1] in ".!?)", f"{path.name}: the first comment line runs on (end it with a full stop): {purpose!r}"


def test_resexp_configs_lists_and_shows_them(tmp_path):
    r = run_cli("configs", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for path in CONFIGS:
        line = next((li for li in r.stdout.splitlines() if f" {path.stem} " in li), None)
        assert line is not None and config_purpose(path)[:20] in line, (path.stem, r.stdout)
    shown = run_cli("configs", "show", "demo.yaml", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout == (ROOT / "configs" / "demo.yaml").read_text()


def test_an_unknown_name_is_one_line_with_the_nearest_and_every_name(tmp_path):
    for args in (["configs", "show", "demoo"], ["sweep", "demoo", "--dry-run"]):
        r = run_cli(*args, cwd=tmp_path)
        assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
        (line,) = r.stderr.splitlines()
        assert line.startswith("error: demoo: ") and "did you mean demo?" in line, line
        assert all(p.stem in line for p in CONFIGS), line
    assert not list(tmp_path.iterdir())  # nothing written


def test_names_resolve_from_any_directory_and_a_local_file_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo = bundled_configs()["demo"]
    for arg in ("demo", "demo.yaml", "configs/demo.yaml"):
        assert resolve_config(arg) == demo, arg
    # the same config, hence the same run ids, whether named or given by its path in the clone
    assert run_id(load_config("demo")) == run_id(load_config(ROOT / "configs" / "demo.yaml"))
    (tmp_path / "demo").mkdir()  # e.g. a sweep directory (resexp sweep demo --out .): never a config
    assert resolve_config("demo") == demo
    (tmp_path / "demo.yaml").write_text(demo.read_text().replace("depth: 20", "depth: 14"))
    for arg in ("demo", "demo.yaml"):
        assert resolve_config(arg) == Path("demo.yaml"), arg
    assert load_config("demo").model.depth == 14
    assert resolve_config(ROOT / "configs" / "demo.yaml") == ROOT / "configs" / "demo.yaml"  # a path as given
    with pytest.raises(ConfigError, match=r"no such file$"):
        resolve_config(tmp_path / "nowhere" / "demo.yaml")


def test_sweep_by_name_from_an_empty_directory(tmp_path):
    r = run_cli("sweep", "demo", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "demo: 8 of 8 runs" in r.stdout and "resnet56" in r.stdout
    assert not list(tmp_path.iterdir())
