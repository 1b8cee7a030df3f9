"""Orbax checkpoints of a run: the training state plus the host-side history.

Orbax writes each step into a temporary directory and renames it when complete, and
lists only committed steps, so a checkpoint half-written when the power went is never
loaded. We keep the latest two: a group of vmapped seeds killed between two saves can
then always resume all its runs from one common step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from resexp.core.errors import RunError

# Orbax logs every save at INFO, and logs each failure (with a page of tensorstore spec) at
# ERROR before raising it; we raise every failure ourselves, as one line where a user can fix it.
logging.getLogger("absl").setLevel(logging.CRITICAL)
MIN_FREE_BYTES = 1 << 20  # a checkpoint also writes a dozen small metadata files


def _io_problem(exc: BaseException) -> str | None:
    """The OS error behind a failed write (full disk, read-only, permissions), or None for a bug."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    found = re.search(r"os_error_code='?(\d+)", str(exc))  # tensorstore wraps errno in a ValueError
    return os.strerror(int(found.group(1))) if found else None


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

    def _check_space(self, state) -> None:
        """Refuse up front when the disk cannot hold the checkpoint: orbax's writers, once started
        on a full disk, fail in many threads at once and cannot all be silenced."""
        need = 2 * sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state)) + MIN_FREE_BYTES
        where = self.directory
        while not where.exists() and where != where.parent:
            where = where.parent
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            return
        if free < need:
            raise RunError(
                f"{self.directory}: cannot write checkpoint (No space left on device: {free:,} bytes free, "
                f"about {need:,} needed); free space or choose another --out, then re-run to resume"
            )

    def save(self, step: int, state, meta: dict) -> None:
        self._check_space(state)
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            )
            self.manager.wait_until_finished()
        except Exception as exc:
            problem = _io_problem(exc)
            if problem is None:
                raise
            self.close()
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # its abandoned writers' "never retrieved"
            raise RunError(
                f"{self.directory}: cannot write checkpoint ({problem}); free space or choose another "
                "--out, then re-run to resume"
            ) from None

    def close(self) -> None:
        """Stop orbax's helper threads (after a failure they would complain at interpreter exit)."""
        if self._manager is not None:
            with contextlib.suppress(Exception):
                self._manager.close()
            self._manager = None

    def restore(self, step: int, abstract_state):
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        try:
            out = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
            )
        except Exception as exc:  # orbax raises many types for a tree/shape mismatch
            raise RunError(
                f"{self.directory / str(step)}: checkpoint does not match this run's config "
                f"({type(exc).__name__}); move it away to retrain"
            ) from None
        return out["state"], out["meta"]
