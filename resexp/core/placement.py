"""Where a sweep's worker processes train: the GPU each is pinned to, and how they share its memory.

Several runs at once fill a GPU better than one small run (docs/slurm.md), but each JAX
process preallocates 75 % of a GPU's memory, so a second process on the same GPU fails to start.
A sweep with `--jobs K` (and a SLURM task with `--runs-per-task K`) therefore plans its workers
before any of them imports JAX:

* **Devices.** The GPUs this process may use are CUDA_VISIBLE_DEVICES's entries when it is set
  (a scheduler's or the user's choice is respected), else every GPU `nvidia-smi -L` lists (MIG
  instances by their UUIDs); none when JAX will not run on a GPU. Workers are dealt over them
  round-robin, each pinned to one (CUDA_VISIBLE_DEVICES=<its entry>); with fewer workers than
  GPUs each worker gets a contiguous share of them (data parallelism within the run).
* **Memory (`RESEXP_GPU_SHARING`).** n workers on one GPU each get an even share of 90 % of its
  memory, `floor(90 / n) / 100` (2: 0.45, 4: 0.22, 8: 0.11), in one of these forms:
  `fraction` (the default: XLA_CLIENT_MEM_FRACTION, the share preallocated), `grow`
  (XLA_PYTHON_CLIENT_PREALLOCATE=false plus the same cap: allocated on demand), `platform`
  (XLA_PYTHON_CLIENT_ALLOCATOR=platform: exact allocations, freed when done; slow) or `off`
  (JAX's defaults). A worker alone on its GPU keeps JAX's defaults, and a user's own
  XLA_CLIENT_MEM_FRACTION, XLA_PYTHON_CLIENT_MEM_FRACTION, XLA_PYTHON_CLIENT_PREALLOCATE or
  XLA_PYTHON_CLIENT_ALLOCATOR wins over every rule. The default is provisional: chosen from
  JAX's documentation (a fixed preallocated share cannot fragment, and one worker's growth cannot
  starve another), not yet measured against `grow` (scripts/gpu_packing.sh measures both).

Every run's summary.json records what it ran under (`placement`: see `record`).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resexp.core.errors import UserError

SHARING_ENV = "RESEXP_GPU_SHARING"
SHARING_RULES = ("fraction", "grow", "platform", "off")
SHARED_MEMORY = 0.9  # of a GPU, split evenly between the workers on it (the rest: CUDA contexts, cuDNN)
FRACTION_ENV = "XLA_CLIENT_MEM_FRACTION"  # jaxlib 0.10+; XLA_PYTHON_CLIENT_MEM_FRACTION is its old name
MEMORY_ENV = (
    FRACTION_ENV,
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_ALLOCATOR",
)


@dataclass(frozen=True)
class Placement:
    """One worker's share of the machine: its GPUs, how many workers share them, its memory setting."""

    gpus: tuple[str, ...] = ()  # CUDA_VISIBLE_DEVICES entries; () leaves the variable alone
    sharing: int = 1  # workers training at once on these devices (this one included)
    rule: str = "default"  # the memory rule applied: a SHARING_RULES entry, "user", or "default"
    memory: dict[str, str] = field(default_factory=dict)  # the allocator variables this placement sets

    def env(self) -> dict[str, str]:
        """The environment variables to set in the worker before JAX starts."""
        out = dict(self.memory)
        if self.gpus:
            out["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        return out


_current = Placement()


def apply(placement: Placement) -> None:
    """Make `placement` this process's (a worker, before it imports JAX): its environment and record."""
    global _current
    os.environ.update(placement.env())
    _current = placement


def record() -> dict[str, Any]:
    """What summary.json says about where a run trained (JAX has started by now)."""
    import jax

    return {
        "device": str(jax.devices()[0].device_kind),
        "device_count": jax.device_count(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "runs_sharing_device": _current.sharing,
        "gpu_memory_rule": _current.rule,
        "gpu_memory": {k: os.environ[k] for k in MEMORY_ENV if k in os.environ},
    }


# --------------------------------------------------------------------------- which GPUs


def parse_gpu_list(text: str) -> list[str]:
    """`nvidia-smi -L` -> CUDA_VISIBLE_DEVICES entries: a GPU's index, or its MIG instances' UUIDs."""
    entries: list[str] = []
    gpu: str | None = None
    migs: list[str] = []
    for line in text.splitlines():
        if m := re.match(r"GPU (\d+):", line.strip()):
            entries += migs or ([gpu] if gpu is not None else [])
            gpu, migs = m.group(1), []
        elif m := re.match(r"MIG .*\(UUID: (MIG-[^)\s]+)\)", line.strip()):
            migs.append(m.group(1))
    entries += migs or ([gpu] if gpu is not None else [])
    return entries


def _listed_gpus() -> list[str]:
    """The machine's GPUs, by the driver's own tools (JAX is not started for this)."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0:
                return parse_gpu_list(out.stdout)
        except (OSError, subprocess.TimeoutExpired):
            pass
    driver = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(driver.iterdir())))] if driver.is_dir() else []


def visible_gpus() -> list[str]:
    """The GPUs this process may hand to workers: CUDA_VISIBLE_DEVICES's entries when it is set,
    else every GPU of the machine; none when JAX will not run on a GPU here."""
    from resexp.core.runtime import expected_backend

    if expected_backend() != "gpu":
        return []
    setting = os.environ.get("CUDA_VISIBLE_DEVICES")
    if setting is not None:
        entries = [e.strip() for e in setting.split(",") if e.strip()]
        # CUDA stops at the first invalid entry ("-1" hides every GPU): so does this
        valid = []
        for e in entries:
            if e.startswith("-"):
                break
            valid.append(e)
        return valid
    return _listed_gpus()


# --------------------------------------------------------------------------- how they share


def sharing_rule(environ: Mapping[str, str] | None = None) -> str:
    """RESEXP_GPU_SHARING, checked (one line, exit 2, for a value it does not know)."""
    env = os.environ if environ is None else environ
    rule = env.get(SHARING_ENV, "").strip().lower() or "fraction"
    if rule not in SHARING_RULES:
        raise UserError(f"{SHARING_ENV}={env[SHARING_ENV]!r}: choose one of {', '.join(SHARING_RULES)}")
    return rule


def memory_share(sharing: int) -> float:
    """Each worker's fraction of a GPU's memory when `sharing` workers are on it (two decimals, down)."""
    return math.floor(SHARED_MEMORY * 100 / sharing) / 100


def memory_env(rule: str, sharing: int) -> dict[str, str]:
    """The allocator variables of one of `sharing` workers on a GPU under `rule`."""
    if sharing <= 1 or rule == "off":
        return {}
    share = f"{memory_share(sharing):.2f}"
    if rule == "fraction":
        return {FRACTION_ENV: share}
    if rule == "grow":
        return {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", FRACTION_ENV: share}
    return {"XLA_PYTHON_CLIENT_ALLOCATOR": "platform"}


def plan(workers: int, gpus: list[str], environ: Mapping[str, str] | None = None) -> list[Placement]:
    """One Placement per worker: `workers` dealt over `gpus` (see the module's docstring)."""
    env = os.environ if environ is None else environ
    rule = sharing_rule(env)
    user = any(k in env for k in MEMORY_ENV)
    if not gpus:  # the CPU (or an accelerator resexp does not place): they share the host
        return [Placement(sharing=workers, rule="user" if user else "default") for _ in range(workers)]
    if workers < len(gpus):  # a contiguous share of the GPUs each (the rest stay idle)
        per = len(gpus) // workers
        return [
            Placement(tuple(gpus[i * per : (i + 1) * per]), 1, "user" if user else "default") for i in range(workers)
        ]
    on_gpu = [len(range(g, workers, len(gpus))) for g in range(len(gpus))]
    placements = []
    for i in range(workers):
        g = i % len(gpus)
        n = on_gpu[g]
        applied = "user" if user else (rule if n > 1 else "default")
        placements.append(Placement((gpus[g],), n, applied, {} if user else memory_env(rule, n)))
    return placements
