"""Progress of the "why" lab on stderr: per run and per analysis, with the time left.

Analyses report `(done, total)` units of their own (calls of a compiled program: one variant
on one example batch, one power-iteration step, a chunk of path masks). Events travel as small
dicts, in-process or through a queue from `analyze --jobs K`'s worker processes, to one
`ProgressBoard` in the parent, which draws live bars on a terminal and prints plain lines, at
most one per run every `LINE_EVERY` seconds, to a file, a pipe or a CI log.

Time left within an analysis: its remaining units at the rate of the units done after the first
(the first includes compiling). For the whole sweep: the remaining runs' blocks at the seconds
per block the finished runs took, divided among the workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LINE_EVERY = 30.0  # seconds between progress lines of a run when stderr is not a terminal

Sink = Callable[[dict[str, Any]], None]


class QueueSink:
    """A picklable sink that puts events on a multiprocessing queue (for worker processes)."""

    def __init__(self, queue) -> None:
        self.queue = queue

    def __call__(self, event: dict[str, Any]) -> None:
        self.queue.put(event)


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


@dataclass
class AnalysisClock:
    """Time left in one analysis, from the rate of its units after the first."""

    started: float
    first_unit_at: float | None = None
    first_done: int = 0
    done: int = 0
    total: int = 0

    def update(self, done: int, total: int, now: float) -> None:
        if self.first_unit_at is None and done > 0:
            self.first_unit_at, self.first_done = now, done
        self.done, self.total = done, total

    def left(self, now: float) -> float | None:
        if self.first_unit_at is None or self.done <= self.first_done:
            return None
        rate = (now - self.first_unit_at) / (self.done - self.first_done)
        return rate * (self.total - self.done)


@dataclass
class RunState:
    name: str
    blocks: int
    analyses: list[str]
    started: float | None = None
    finished: float | None = None
    current: str | None = None
    clock: AnalysisClock | None = None
    times: dict[str, float] = field(default_factory=dict)
    last_line: float = 0.0


class ProgressBoard:
    """Draws the progress of runs x analyses on `console` (rich, stderr)."""

    def __init__(self, console, runs: list[tuple[str, int, list[str]]], jobs: int = 1) -> None:
        """`runs`: (name, blocks, analyses to compute) in the order they will start."""
        self.console = console
        self.jobs = max(1, jobs)
        self.runs = {name: RunState(name, blocks, list(names)) for name, blocks, names in runs}
        self.live = bool(getattr(console, "is_terminal", False))
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}

    # ---- lifecycle

    def __enter__(self) -> ProgressBoard:
        if self.live and self.runs:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                TaskProgressColumn(),
                TextColumn("{task.fields[left]}"),
                console=self.console,
                transient=True,
            )
            self.progress.start()
            self.tasks["sweep"] = self.progress.add_task(self._sweep_text(), total=len(self.runs), left="")
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    # ---- events

    def __call__(self, event: dict[str, Any]) -> None:
        now = time.monotonic()
        run = self.runs.get(event["run"])
        if run is None:
            return
        kind = event["event"]
        if kind == "analysis":
            if run.started is None:
                run.started = now
            run.current, run.clock = event["analysis"], AnalysisClock(now)
        elif kind == "progress" and run.clock is not None:
            run.clock.update(event["done"], event["total"], now)
        elif kind == "analysis_done":
            run.times[event["analysis"]] = event["seconds"]
            run.current, run.clock = None, None
        elif kind == "run_done":
            run.finished = now
            self._print(f"[dim]analysed {run.name}[/] ({self._times(run)}){self._sweep_left(now)}")
            if run.name in self.tasks:
                self.progress.remove_task(self.tasks.pop(run.name))
            if self.progress is not None:
                self.progress.update(self.tasks["sweep"], completed=self._finished(), description=self._sweep_text())
        self._draw(run, now, force=kind == "analysis")

    # ---- drawing

    def _draw(self, run: RunState, now: float, force: bool) -> None:
        if run.finished is not None or run.current is None:
            return
        i = run.analyses.index(run.current) + 1 if run.current in run.analyses else 0
        head = f"{run.name}: {run.current} ({i}/{len(run.analyses)})"
        clock = run.clock
        left = clock.left(now) if clock is not None else None
        left_text = f"~{format_seconds(left)} left" if left is not None else ""
        if self.progress is not None:
            if run.name not in self.tasks:
                self.tasks[run.name] = self.progress.add_task(head, total=1, left="")
            total = clock.total if clock is not None and clock.total else 1
            done = clock.done if clock is not None else 0
            self.progress.update(
                self.tasks[run.name],
                description=head,
                completed=done,
                total=total,
                left=left_text + self._sweep_left(now, prefix=", sweep "),
            )
            return
        if force or now - run.last_line >= LINE_EVERY:
            run.last_line = now
            pct = f" {100 * clock.done / clock.total:.0f} %" if clock is not None and clock.total else ""
            self._print(f"[dim]{head}{pct}{', ' + left_text if left_text else ''}[/]")

    def _print(self, text: str) -> None:
        (self.progress.console if self.progress is not None else self.console).print(
            text, highlight=False, soft_wrap=True
        )

    def _times(self, run: RunState) -> str:
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in run.times.items()) or "cached"

    def _finished(self) -> int:
        return sum(r.finished is not None for r in self.runs.values())

    def _sweep_text(self) -> str:
        return f"{self._finished()}/{len(self.runs)} runs analysed"

    def sweep_left(self, now: float) -> float | None:
        """Seconds until every run is analysed: the unfinished runs' blocks at the seconds per block
        of the finished runs (None before the first finishes), shared among the workers."""
        spent = [
            (r.finished - r.started, r.blocks)
            for r in self.runs.values()
            if r.finished is not None and r.started is not None and r.blocks
        ]
        if not spent:
            return None
        per_block = sum(s for s, _ in spent) / sum(b for _, b in spent)
        left = 0.0
        for r in self.runs.values():
            if r.finished is None:
                elapsed = now - r.started if r.started is not None else 0.0
                left += max(0.0, r.blocks * per_block - elapsed)
        return left / self.jobs

    def _sweep_left(self, now: float, prefix: str = ", sweep: ") -> str:
        if len(self.runs) < 2 or self._finished() == len(self.runs):
            return ""
        left = self.sweep_left(now)
        return "" if left is None else f"{prefix}~{format_seconds(left)} left"
