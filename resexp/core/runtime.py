"""Process-wide JAX settings, applied once by every entry point (CLI, sweep workers, bench, tests).

* The persistent compilation cache matters more than any flag on CPU: XLA compiles a
  ResNet's training chunk in seconds, and a sweep, a resumed run, or the test suite
  compiles the same programs again and again. Set RESEXP_COMPILE_CACHE=off to disable,
  or to a directory to move it.
* Two XLA:CPU flags that won on this model (scripts/bench.py; docs/performance.md):
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
* On a GPU, `--xla_gpu_deterministic_ops=true`: XLA:GPU's default kernels (atomics in
  reductions, autotuned conv algorithms) make two runs of one config differ in the last bits,
  and training amplifies that, so a resumed run left the never-stopped one from its first
  step after the resume on an H100 (docs/reliability.md). With the flag a run is again a pure
  function of its config and seed, and a preempted-and-requeued SLURM job resumes exactly,
  for 0.76-0.79x the images/s (H100, ResNet-20/56/110, scripts/ab_xla.py). RESEXP_GPU_DETERMINISTIC=off
  trades that back for speed; a user's own XLA_FLAGS setting of it wins.
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
_TESTED_JAXLIB = "0.10."  # on 0.11.2 both flags exist but no longer win (0.988x, docs/performance.md)
GPU_XLA_FLAGS = {"xla_gpu_deterministic_ops": "true"}
_OFF = ("off", "0", "false", "no")


def compile_cache_dir() -> Path | None:
    setting = os.environ.get("RESEXP_COMPILE_CACHE", "")
    if setting.lower() in _OFF:
        return None
    return Path(setting) if setting else Path.home() / ".cache" / "resexp" / "jax"


def expected_backend() -> str:
    """The backend this process will run on, "cpu", "gpu" or "tpu", read before JAX starts one:
    JAX_PLATFORMS's first entry, else the accelerator plugin installed, else the CPU."""
    platforms = os.environ.get("JAX_PLATFORMS", "").lower()
    if platforms:
        first = platforms.split(",")[0].strip()
        return {"cuda": "gpu", "rocm": "gpu"}.get(first, first)
    plugins = {"gpu": ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin"), "tpu": ("libtpu",)}
    return next((kind for kind, names in plugins.items() if any(importlib.util.find_spec(n) for n in names)), "cpu")


def _missing(flags: dict[str, str]) -> list[str]:
    """`flags` as XLA_FLAGS entries, less those the user's XLA_FLAGS already sets."""
    current = {entry.split("=", 1)[0] for entry in os.environ.get("XLA_FLAGS", "").split()}
    return [f"--{name}={value}" for name, value in flags.items() if f"--{name}" not in current]


def cpu_xla_flags() -> list[str]:
    """The flags `configure_jax` adds to XLA_FLAGS in this process (empty if none apply)."""
    if os.environ.get("RESEXP_XLA_CPU_FLAGS", "").lower() in _OFF or expected_backend() != "cpu":
        return []
    try:
        from jaxlib import version as jaxlib_version

        if not jaxlib_version.__version__.startswith(_TESTED_JAXLIB):
            return []  # XLA aborts the process on an unknown flag: only pass ones known to exist
    except ImportError:
        return []
    return _missing(CPU_XLA_FLAGS)


def gpu_xla_flags() -> list[str]:
    """The determinism flag `configure_jax` adds on a GPU (empty elsewhere or when turned off)."""
    if os.environ.get("RESEXP_GPU_DETERMINISTIC", "").lower() in _OFF or expected_backend() != "gpu":
        return []
    return _missing(GPU_XLA_FLAGS)


def configure_jax() -> None:
    global _DONE
    if _DONE:
        return
    _DONE = True
    extra = cpu_xla_flags() + gpu_xla_flags()
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
