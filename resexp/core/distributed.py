"""One run over several processes (hosts): `jax.distributed.initialize`, then the same command in each.

After initialisation `jax.devices()` lists every process's devices, so the data-parallel mesh
(`parallel.DataParallel`) spans them all and XLA all-reduces across processes (on CPU through
gloo). Every process trains the same config on the same data; only process 0 writes the run's
summary, TensorBoard events and lock, while checkpoints are written by all of them together
(orbax coordinates). Under `srun` with several tasks JAX finds the coordinator itself.
"""

from __future__ import annotations

import os


def under_srun() -> bool:
    """Inside a SLURM step with several tasks (`srun -n N resexp train ...`)."""
    return "SLURM_STEP_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> None:
    """Join the group; call before anything touches a JAX backend (after `runtime.configure_jax`)."""
    import jax

    from resexp.core.runtime import expected_backend

    if expected_backend() == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process all-reduce on CPU
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def is_primary() -> bool:
    """Process 0 (or the only process): the one that writes a run's files other than checkpoints."""
    import jax

    return jax.process_index() == 0
