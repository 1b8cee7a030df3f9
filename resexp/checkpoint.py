"""Orbax checkpoints of a run: the training state plus the host-side history.

Orbax writes each step into a temporary directory and renames it when complete, and
lists only committed steps, so a checkpoint half-written when the power went is never
loaded. We keep the latest two: a group of vmapped seeds killed between two saves can
then always resume all its runs from one common step.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from resexp.errors import RunError

logging.getLogger("absl").setLevel(logging.ERROR)  # orbax logs every save at INFO


class Checkpoints:
    def __init__(self, directory: Path):
        self.directory = directory.absolute()
        self._manager: ocp.CheckpointManager | None = None

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False)
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def all_steps(self) -> list[int]:
        if not self.directory.exists():
            return []
        return list(self.manager.all_steps())

    def save(self, step: int, state, meta: dict) -> None:
        try:
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            meta=ocp.args.JsonSave(meta)), force=True)
            self.manager.wait_until_finished()
        except OSError as exc:
            raise RunError(f"{self.directory}: cannot write checkpoint ({exc.strerror or exc})") from None

    def restore(self, step: int, abstract_state):
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                     meta=ocp.args.JsonRestore()))
        except Exception as exc:  # orbax raises many types for a tree/shape mismatch
            raise RunError(f"{self.directory / str(step)}: checkpoint does not match this run's config "
                           f"({type(exc).__name__}); move it away to retrain") from None
        return out["state"], out["meta"]
