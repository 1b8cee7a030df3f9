"""Process-wide JAX settings, applied once by the CLI (and by sweep workers).

The persistent compilation cache matters more than any flag on CPU: XLA compiles a
ResNet's training chunk in seconds, and a sweep, a resumed run, or the test suite
compiles the same programs again and again. Set RESEXP_COMPILE_CACHE=off to disable,
or to a directory to move it.
"""

from __future__ import annotations

import os
from pathlib import Path

_DONE = False


def compile_cache_dir() -> Path | None:
    setting = os.environ.get("RESEXP_COMPILE_CACHE", "")
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    return Path(setting) if setting else Path.home() / ".cache" / "resexp" / "jax"


def configure_jax() -> None:
    global _DONE
    if _DONE:
        return
    _DONE = True
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
