"""resexp: measure why residual networks can be made deep.

One path, top to bottom: config -> data -> model -> train loop -> run directory
-> sweep aggregation -> dashboards. The public Python API (`resexp.sweep("demo")`, ...) is
`resexp.api`, re-exported here; importing it loads no JAX until a function runs.
"""

import sys
import types
from importlib import metadata

from resexp.api import (
    AnalysisResult,
    IdentityResult,
    RunResult,
    SweepResult,
    analyze,
    identity,
    load_sweep,
    report,
    sweep,
    train,
)
from resexp.errors import ConfigError, DataError, RunError, UserError


def package_version() -> str:
    """The installed distribution's version: pyproject.toml's `version` is its only source."""
    try:
        return metadata.version("resexp")
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        return "unknown"


__version__ = package_version()

__all__ = [
    "AnalysisResult",
    "ConfigError",
    "DataError",
    "IdentityResult",
    "RunError",
    "RunResult",
    "SweepResult",
    "UserError",
    "__version__",
    "analyze",
    "identity",
    "load_sweep",
    "report",
    "sweep",
    "train",
]


class _Package(types.ModuleType):
    """Keeps `resexp.sweep`, `resexp.train` and `resexp.report` the API's functions: importing the
    submodules of the same names (resexp/sweep.py, ...) would otherwise set them as attributes of
    this package and shadow the functions. Code imports the submodules by their full names, through
    sys.modules, which this does not touch."""

    def __setattr__(self, name: str, value: object) -> None:
        current = self.__dict__.get(name)
        if isinstance(value, types.ModuleType) and callable(current) and not isinstance(current, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
