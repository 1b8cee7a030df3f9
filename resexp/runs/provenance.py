"""What a run's numbers were measured with: the JAX stack's versions, the machine's CPU, XLA's flags.

Written into every ``summary.json`` (``software``, resexp's own version included, ``machine``,
``xla_flags``), so a row of a results table can be traced to its software and hardware. Virtual
machines often report only a family name ("AMD EPYC"), so the CPU's vendor, family and model
numbers are kept too.
"""

from __future__ import annotations

import functools
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["PACKAGES", "cpu_info", "provenance"]

PACKAGES = ("resexp", "jax", "jaxlib", "flax", "optax")  # resexp: its package metadata, as `resexp --version`


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def cpu_info() -> dict[str, Any]:
    """Model name, vendor, family/model numbers and AVX-512 support (Linux ``/proc/cpuinfo``;
    elsewhere what `platform` knows)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                if fields:
                    break  # the first processor is enough
                continue
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": fields.get("model name") or platform.processor() or platform.machine()}
    if "vendor_id" in fields:
        info["vendor"] = fields["vendor_id"]
    for key, name in (("cpu family", "family"), ("model", "model")):
        if fields.get(key, "").isdigit():
            info[name] = int(fields[key])
    if "flags" in fields:
        info["avx512"] = "avx512f" in fields["flags"].split()
    info["cores"] = os.cpu_count()
    return info


def provenance() -> dict[str, Any]:
    """``{"software": {resexp, jax, jaxlib, flax, optax, python}, "machine": cpu_info(), "xla_flags": ...,
    "cpu_conv": "onednn" | "xla" (on the CPU)}``: the XLA flags and conv kernels too, since they
    change a run's last bits (GPU determinism, CPU kernel choices)."""
    software = {name: _version(name) for name in PACKAGES}
    software["python"] = platform.python_version()
    out: dict[str, Any] = {"software": software, "machine": cpu_info(), "xla_flags": os.environ.get("XLA_FLAGS", "")}
    import jax

    if jax.default_backend() == "cpu":  # oneDNN's or XLA's conv kernels: a run's last bits depend on it
        from resexp.core.parallel import cpu_conv_path

        out["cpu_conv"] = cpu_conv_path()
    return out
