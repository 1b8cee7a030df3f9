"""No module of resexp reaches into another's underscore names: what two modules share is public in the
lower one (import-linter, `make lint`, checks which module may import which; this checks what they take)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "resexp"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The module an ``from X import ...`` names, relative imports resolved against `module`."""
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def crossings(module: str, tree: ast.AST) -> list[str]:
    """Every underscore name `module` takes from another resexp module: ``from resexp.x import _y``,
    and ``alias._y`` where `alias` is an imported resexp module."""
    found = []
    aliases: dict[str, str] = {}  # local name -> the resexp module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "resexp" or a.name.startswith("resexp."):
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:
                        aliases["resexp"] = "resexp"
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            if source != "resexp" and not source.startswith("resexp."):
                continue
            for a in node.names:
                if f"{source}.{a.name}" in MODULES:  # a submodule, not a name
                    aliases[a.asname or a.name] = f"{source}.{a.name}"
                elif _private(a.name) and source != module:
                    found.append(f"{module}:{node.lineno}: from {source} import {a.name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, value = [node.attr], node.value
        while isinstance(value, ast.Attribute):
            chain.insert(0, value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id not in aliases:
            continue
        target = aliases[value.id]
        for i, attr in enumerate(chain):
            if f"{target}.{attr}" in MODULES and i < len(chain) - 1:
                target = f"{target}.{attr}"
                continue
            if _private(attr) and target != module:
                found.append(f"{module}:{node.lineno}: {target}.{attr}")
            break
    return found


def test_no_module_takes_another_modules_underscore_names() -> None:
    found = [c for module, path in MODULES.items() for c in crossings(module, ast.parse(path.read_text()))]
    assert not found, "underscore names used across modules (make them public in the lower one):\n" + "\n".join(found)


def test_the_check_sees_each_form_of_crossing() -> None:
    source = """
import resexp.reporting.report
import resexp.reporting.figures as F
from resexp.core import diagnostics
from resexp.analysis import figures
from resexp.reporting.records import _hidden, public
from . import _relative
def f():
    from resexp.core.diagnostics import _block_modes
    return resexp.reporting.report._check(), F._png(), diagnostics._modes, figures._x, _hidden, public, resexp.__name__
"""
    found = crossings("resexp.analysis.sweep", ast.parse(source))
    assert sorted(line.split(": ", 1)[1] for line in found) == sorted(
        [
            "from resexp.reporting.records import _hidden",
            "from resexp.analysis import _relative",
            "from resexp.core.diagnostics import _block_modes",
            "resexp.reporting.report._check",
            "resexp.reporting.figures._png",
            "resexp.core.diagnostics._modes",
            "resexp.analysis.figures._x",
        ]
    )
    assert not crossings("resexp.reporting.records", ast.parse("from resexp.reporting.records import _own\n"))
