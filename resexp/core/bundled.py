"""The configs that ship inside the package, and how a config argument becomes a file.

Every command and `load_config` take a path or a bundled config's name, so `resexp sweep demo`
works from any directory after a plain `pip install`. In a clone, `resexp/configs` is a link to
the repository's `configs/`: one copy of each file, and any file added there ships in the wheel.

Resolution, first match wins:
1. an existing path, as given (`configs/demo.yaml`, `~/my.yaml`, `./demo`), except a directory
   of a bundled config's name (`resexp sweep demo --out .` makes one);
2. for a bare name (`demo` or `demo.yaml`), `demo.yaml` in the current directory: a user's
   edited copy beats the bundled one;
3. the bundled config of that name; `configs/NAME.yaml` counts as the name NAME, so the
   README's commands work outside a clone too.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from resexp.core.errors import ConfigError

__all__ = [
    "SUFFIX",
    "bundled_configs",
    "bundled_dir",
    "bundled_name",
    "config_purpose",
    "find_bundled",
    "is_bundled",
    "resolve_config",
    "unknown_name",
]

SUFFIX = ".yaml"


def bundled_dir() -> Path:
    """Where the bundled configs live: `resexp/configs` in the installed package."""
    return Path(str(resources.files("resexp") / "configs"))


def bundled_configs() -> dict[str, Path]:
    """Bundled config name -> file, sorted by name (empty if this installation has none)."""
    directory = bundled_dir()
    if not directory.is_dir():
        return {}
    return {p.stem: p for p in sorted(directory.glob(f"*{SUFFIX}")) if p.is_file()}


def config_purpose(path: Path) -> str:
    """A config's one-line purpose: the first comment line of its file (`# ...`), or ''."""
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text:
            continue
        return text.lstrip("#").strip() if text.startswith("#") else ""
    return ""


def unknown_name(name: str, what: str) -> ConfigError:
    """One line: what was not found, the nearest bundled name and every bundled name."""
    names = list(bundled_configs())
    if not names:
        return ConfigError(name, None, f"{what}, and this installation has no bundled configs")
    stem = Path(name).name.removesuffix(SUFFIX)
    close = difflib.get_close_matches(stem, names, n=1, cutoff=0.5) or [n for n in names if stem and stem in n][:1]
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(name, None, f"{what}{hint}; bundled configs: {', '.join(names)}")


def find_bundled(name: str) -> Path:
    """The bundled config `name` (`demo` or `demo.yaml`); a ConfigError naming the choices if none."""
    stem = name.removesuffix(SUFFIX)
    path = bundled_configs().get(stem)
    if path is None:
        raise unknown_name(name, "no bundled config of that name")
    return path


def bundled_name(text: str) -> str | None:
    """The bundled name an argument can stand for: `demo`, `demo.yaml` or `configs/demo.yaml`."""
    path = Path(text)
    if len(path.parts) == 1 or (len(path.parts) == 2 and path.parts[0] == "configs"):
        stem = path.name.removesuffix(SUFFIX)
        if stem and path.name in (stem, stem + SUFFIX):
            return stem
    return None


def resolve_config(config: str | Path) -> Path:
    """The file a config argument means (see the module docstring for the order)."""
    path = Path(config)
    name = bundled_name(str(config))
    if path.exists() and not (path.is_dir() and name in bundled_configs()):  # a directory never hides a name
        return path
    if name is None:
        raise ConfigError(str(config), None, "no such file")
    if len(path.parts) == 1 and path.suffix != SUFFIX and Path(name + SUFFIX).is_file():
        return Path(name + SUFFIX)
    bundled = bundled_configs().get(name)
    if bundled is None:
        raise unknown_name(str(config), "no such file, and no bundled config of that name")
    return bundled


def is_bundled(path: Path) -> bool:
    """Whether `path` is one of the bundled files (not a copy of one)."""
    return path.parent == bundled_dir()
