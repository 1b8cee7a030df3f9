"""Process-wide JAX settings, applied once by every entry point (CLI, sweep workers, bench, tests).

* The persistent compilation cache matters more than any flag on CPU: XLA compiles a
  ResNet's training chunk in seconds, and a sweep, a resumed run, or the test suite
  compiles the same programs again and again. Set RESEXP_COMPILE_CACHE=off to disable,
  or to a directory to move it.
* Two XLA:CPU flags that won on this model (scripts/bench.py, README "Performance"):
  - `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`: jaxlib 0.10 routes
    convolutions to YNNPACK, which ran the 16x16x32 and 8x8x64 CIFAR convs single-threaded
    and ~2x slower than Eigen's; ResNet-20 training +28% images/s without it.
  - `--xla_backend_optimization_level=2`: LLVM O2 instead of O3 for the generated
    elementwise/BN kernels, +13% (CIFAR ResNet-20) to +25% (demo ResNet-56) images/s at
    the same compile time.
  They are added to XLA_FLAGS only when the process will run on CPU (no GPU/TPU plugin
  installed, or JAX_PLATFORMS=cpu), only for flags XLA_FLAGS does not already set, and
  only for the jaxlib line they were measured on. RESEXP_XLA_CPU_FLAGS=off keeps XLA's own
  defaults. They must be in place before JAX initialises its backend.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

_DONE = False

CPU_XLA_FLAGS = {
    "xla_cpu_experimental_ynn_fusion_type": "-individual_convolution",
    "xla_backend_optimization_level": "2",
}
_TESTED_JAXLIB = "0.10."


def compile_cache_dir() -> Path | None:
    setting = os.environ.get("RESEXP_COMPILE_CACHE", "")
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    return Path(setting) if setting else Path.home() / ".cache" / "resexp" / "jax"


def _runs_on_cpu() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "").lower()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    accelerators = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "libtpu")
    return not any(importlib.util.find_spec(name) for name in accelerators)


def cpu_xla_flags() -> list[str]:
    """The flags `configure_jax` adds to XLA_FLAGS in this process (empty if none apply)."""
    if os.environ.get("RESEXP_XLA_CPU_FLAGS", "").lower() in ("off", "0", "false", "no") or not _runs_on_cpu():
        return []
    try:
        from jaxlib import version as jaxlib_version

        if not jaxlib_version.__version__.startswith(_TESTED_JAXLIB):
            return []  # XLA aborts the process on an unknown flag: only pass ones known to exist
    except ImportError:
        return []
    current = os.environ.get("XLA_FLAGS", "")
    return [f"--{name}={value}" for name, value in CPU_XLA_FLAGS.items() if f"--{name}" not in current]


def configure_jax() -> None:
    global _DONE
    if _DONE:
        return
    _DONE = True
    extra = cpu_xla_flags()
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *extra]).strip()
    import jax

    cache = compile_cache_dir()
    if cache is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", str(cache))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        except OSError:
            pass  # an unwritable cache only costs speed
