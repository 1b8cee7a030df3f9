"""A stop request by signal: the first one is recorded (the work in hand finishes and checkpoints),
a second one exits at once.

`train.Interrupt` uses it around a training loop, and `launch` installs one as a cluster job's
own handler before JAX is even imported (so a scheduler's early signal is not lost); the
training loop then picks up what the outer one recorded. Nothing here imports JAX.
"""

from __future__ import annotations

import os
import signal

# Ctrl-C, a polite kill, and a scheduler's "time is nearly up" / "preempted" (SLURM --signal).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class SignalRecorder:
    """Records the first stop signal in `requested`; a second one ends the process at once."""

    SIGNALS = STOP_SIGNALS

    def __init__(self) -> None:
        self.requested: int | None = None

    def _handler(self, signum, _frame) -> None:
        if self.requested is not None:
            os._exit(128 + signum)
        self.requested = signum
