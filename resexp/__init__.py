"""resexp: measure why residual networks can be made deep.

One path, top to bottom: config -> data -> model -> train loop -> run directory
-> sweep aggregation -> dashboards.
"""

from importlib import metadata


def package_version() -> str:
    """The installed distribution's version: pyproject.toml's `version` is its only source."""
    try:
        return metadata.version("resexp")
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        return "unknown"


__version__ = package_version()
