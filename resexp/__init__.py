"""resexp: measure why residual networks can be made deep.

One path, top to bottom: config -> data -> model -> train loop -> run directory
-> sweep aggregation -> dashboards. The public Python API (`resexp.sweep("demo")`, ...) is
`resexp.api`, re-exported here; importing it loads no JAX until a function runs.
"""

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
from resexp.core.errors import ConfigError, DataError, RunError, UserError


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
