"""Shared test plumbing: the real CLI in subprocesses, tiny configs, one compile cache.

Every test that trains uses tiny nets (depth 8, widths 4/8/8) on the embedded digits,
and all processes of a test run share one persistent XLA compile cache, so the same
tiny program is compiled once for the whole suite, not once per subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("RESEXP_COMPILE_CACHE", str(ROOT / ".pytest_cache" / "jax-compile"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from resexp.core.runtime import configure_jax, expected_backend  # noqa: E402

# float32 means float32 in every program the suite compares at ulp-scale tolerances: on a GPU,
# XLA's default precision rounds conv and matmul inputs to TF32 (10 mantissa bits), as cuDNN's
# convs do in PyTorch, which no measured float32 noise covers (on an H100 that failed 3 such
# tests). The CPU computes float32 in float32 anyway: there the suite keeps the programs users run.
if expected_backend() != "cpu":
    os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

configure_jax()

# `make test` hands whole files to its 2 workers (--dist loadfile), one at a time, in collection
# order. The longest files go first, so that the short ones fill in at the end instead of one worker
# idling while the other runs a long file it started last. Within a file the order is unchanged.
LONGEST_FILES_FIRST = (
    "test_docs.py",
    "test_slurm.py",
    "test_study.py",
    "test_bench_scripts.py",
    "test_perf.py",
    "test_reliability.py",
    "test_diagnostics.py",
    "test_analysis.py",
    "test_real_data.py",
    "test_sweep.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort


TINY = {
    "name": "tiny",
    "data": {"name": "digits", "batch_size": 32, "eval_batch_size": 300},
    "model": {"kind": "cnn", "depth": 8, "widths": [4, 8, 8], "shortcut": True},
    "optim": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
    "train": {"steps": 40, "log_every": 10, "eval_every": 0, "checkpoint_every": 20, "seed": 0},
}


def tiny_dict(**sections) -> dict:
    """TINY with some sections updated: tiny_dict(model={"depth": 14}, train={"steps": 20})."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY.items()}
    for key, value in sections.items():
        if isinstance(value, dict):
            out.setdefault(key, {}).update(value)
        else:
            out[key] = value
    return out


def write_config(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "tiny.yaml", TINY)


def run_cli(
    *args: str | Path, cwd: Path | None = None, timeout: float = 300, env: dict | None = None, **popen
) -> subprocess.CompletedProcess:
    """`resexp ARGS` as a user runs it: a real subprocess, captured output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "resexp", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        **popen,
    )


def all_eqns(jaxpr):
    """Every equation of a jaxpr, recursing into scans, maps, custom VJPs, ..."""
    for e in jaxpr.eqns:
        yield e
        for p in e.params.values():
            for j in p if isinstance(p, (list, tuple)) else [p]:
                inner = getattr(j, "jaxpr", j)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns"):
                    yield from all_eqns(inner)
