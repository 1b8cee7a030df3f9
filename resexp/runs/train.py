"""The host loop: trains a group of runs (S seeds of one config) chunk by chunk, each into its own
run directory, with its summary, events and checkpoints, exactly as if trained alone.

Python wakes up once per chunk of `log_every` steps (`resexp.core.engine`) and fetches the
previous chunk's losses while the next one runs (`ChunkPipeline`); `due_at` decides when to
evaluate and checkpoint; a signal finishes the chunk in flight, checkpoints and exits (`Interrupt`).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resexp.core import diagnostics, optim, placement
from resexp.core.checkpoint import Checkpoints
from resexp.core.config import Config, config_hash, resolved_dict
from resexp.core.data import Data, load_data
from resexp.core.engine import Engine, TrainState, restore_state, stack_seeds
from resexp.core.errors import RunError
from resexp.core.models import layer_table
from resexp.core.signals import SignalRecorder
from resexp.runs.provenance import provenance
from resexp.runs.store import (
    FINAL,
    RunLock,
    checkpoint_hashes,
    exit_code,
    prepare_run_dir,
    read_summary,
    run_dir_for,
    seed_configs,
    write_json,
)
from resexp.runs.tblog import EventWriter

# what an evaluation returns -> its TensorBoard tag; eval_running_* only with precise BN
EVAL_METRICS = {
    "eval_loss": "eval/loss",
    "eval_accuracy": "eval/accuracy",
    "eval_running_loss": "eval/loss_running_bn",
    "eval_running_accuracy": "eval/accuracy_running_bn",
}


# --------------------------------------------------------------------------- one group of runs


@dataclass
class RunProgress:
    """Host-side bookkeeping for one run of a group while it trains (`records.RunRow` is a run
    read back from its directory; `Outcome` is what `train_runs` returns)."""

    cfg: Config
    dir: Path
    events: Any = None  # EventWriter (or _NoEvents off process 0), opened when training starts
    history: dict = field(
        default_factory=lambda: {
            k: [] for k in ("step", "train_loss", "train_accuracy", "eval_step", "eval_loss", "eval_accuracy")
        }
    )
    status: str = "running"
    diverged_at_step: int | None = None
    diverged_reason: str | None = None
    initial_loss: float | None = None  # the first step's loss: the scale of "exploded" (train.max_loss_factor)
    last_eval: dict = field(default_factory=dict)
    diagnostics: dict | None = None
    wall_before: float = 0.0  # wall seconds spent before earlier interruptions
    sweep_keys: dict | None = None
    warmup_end: int | None = None  # constant warm-up: the step the base schedule takes over
    extra: dict | None = None  # launcher fields for summary.json (slurm_job_id, restarts)


class Interrupt(SignalRecorder):
    """SIGINT/SIGTERM (and SIGUSR1/SIGUSR2, a scheduler's "time is nearly up" or "preempted"):
    finish the chunk in flight, checkpoint, exit; a second signal exits at once.

    A signal that an outer `SignalRecorder` (anything with a `requested` attribute, e.g. a
    launcher's, installed before JAX was imported) caught before training started counts as
    requested here too, and one caught here is passed back to it.
    """

    @contextmanager
    def installed(self) -> Iterator[Interrupt]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        # an outer handler (the launcher's) that recorded a signal before training started
        outers: dict[int, Any] = {
            id(o): o for o in (getattr(h, "__self__", None) for h in old.values()) if hasattr(o, "requested")
        }
        for outer in outers.values():
            if outer.requested is not None and self.requested is None:
                self.requested = outer.requested
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            for outer in outers.values():  # and the outer handler learns what stopped training
                if outer.requested is None:
                    outer.requested = self.requested


@dataclass
class Outcome:
    run_dir: Path
    summary: dict
    skipped: bool = False  # already final before we started

    @property
    def exit_code(self) -> int:
        return exit_code(self.summary.get("status"))


def _slice(tree, i: int | None):
    return tree if i is None else jax.tree.map(lambda a: a[i], tree)


def train_runs(
    cfgs: list[Config],
    out: Path,
    *,
    progress: bool = True,
    sweep_keys: list[dict] | None = None,
    console=None,
    data: Data | None = None,
    source: str = "config",
    extra_summary: dict | None = None,
) -> list[Outcome]:
    """Train runs that differ only in `train.seed`, as one program when there are several.

    Completed or diverged runs are left alone; interrupted ones resume from their last
    complete checkpoint. `extra_summary` (a launcher's `slurm_job_id`, `restarts`) is merged
    into every summary.json written. Returns one Outcome per config, in order.
    """
    outcomes: dict[int, Outcome] = {}
    todo: list[int] = []
    dirs = [run_dir_for(out, cfg) for cfg in cfgs]  # an earlier version's directory of the same run counts
    for i, run_dir in enumerate(dirs):
        summary = read_summary(run_dir)
        if summary and summary.get("status") in FINAL:
            outcomes[i] = Outcome(run_dir, summary, skipped=True)
        else:
            todo.append(i)
    if todo and data is None:  # a missing or corrupt dataset fails here, before any run directory exists
        data = load_data(cfgs[todo[0]].data, source=source)
    locks: list[RunLock] = []
    try:
        claimed = []
        for i in todo:
            run_dir = dirs[i]
            prepare_run_dir(run_dir, cfgs[i])
            lock = RunLock(run_dir)
            if jax.process_index() > 0:  # one run over several processes: process 0 holds the lock
                claimed.append(i)
                continue
            if lock.acquire():
                locks.append(lock)
                summary = read_summary(run_dir)  # finished by another process since we looked?
                if summary and summary.get("status") in FINAL:
                    outcomes[i] = Outcome(run_dir, summary, skipped=True)
                    continue
                claimed.append(i)
            else:
                outcomes[i] = Outcome(
                    run_dir, read_summary(run_dir) or {"status": "running", "run_id": run_dir.name}, skipped=True
                )
        if claimed:
            records = [
                RunProgress(
                    cfgs[i],
                    dirs[i],
                    sweep_keys=(sweep_keys[i] if sweep_keys else None),
                    extra=extra_summary,
                )
                for i in claimed
            ]
            try:
                summaries = _train_group(records, progress=progress, console=console, data=data)
            except OSError as exc:  # events or summary on a full/read-only disk: the environment, not a bug
                where = exc.filename or records[0].dir
                raise RunError(
                    f"{where}: cannot write ({exc.strerror or exc}); free space or choose another --out, "
                    "then re-run to resume"
                ) from None
            for i, summary in zip(claimed, summaries, strict=True):
                outcomes[i] = Outcome(dirs[i], summary)
    finally:
        for lock in locks:
            lock.release()
    return [outcomes[i] for i in range(len(cfgs))]


def _common_resume_step(ckpts: list[Checkpoints]) -> int | None:
    steps = [set(c.all_steps()) for c in ckpts]
    common = set.intersection(*steps) if steps else set()
    return max(common) if common else None


def _train_group(records: list[RunProgress], *, progress: bool, console, data: Data | None) -> list[dict]:
    """Train a group from its common checkpoint (or from scratch); returns the summaries written."""
    cfg = records[0].cfg
    if data is None:
        data = load_data(cfg.data, source=str(records[0].dir / "config.yaml"))
    group = len(records)
    engine = Engine(cfg, data, seeds=group)
    ckpts = [Checkpoints(r.dir / "checkpoints") for r in records]
    resume_step = _common_resume_step(ckpts)
    if resume_step is None and any(c.all_steps() for c in ckpts) and group > 1:
        # Runs of this group stopped at different checkpoints: train them one by one.
        return [s for r in records for s in _train_group([r], progress=progress, console=console, data=data)]

    wall_start = time.perf_counter()
    state = engine.init([r.cfg.train.seed for r in records])
    if resume_step is not None:
        state = _restore_group(records, ckpts, engine, data, resume_step, console)
    start_step = resume_step or 0
    if state.warmup_end is not None:
        ends = np.asarray(state.warmup_end).reshape(-1)
        for r, end in zip(records, ends, strict=True):
            r.warmup_end = int(end)
    for r in records:
        r.events = EventWriter(r.dir) if jax.process_index() == 0 else _NoEvents()
        r.events.session_start(start_step)  # TensorBoard purges events a resume rewrites
    interrupt = Interrupt()
    writer = _GroupWriter(records, ckpts, engine, data, _model_info(cfg, data), wall_start, interrupt)
    for r in records:
        _write_summary(r, engine, writer.model_info, start_step, wall=r.wall_before, data=data)

    total = cfg.train.steps
    with interrupt.installed(), _progress(progress, console, records, total, start_step) as bar:
        pipe = ChunkPipeline(engine, data, records, start_step, bar)
        step = _train_chunks(state, pipe, writer, start_step)
        for r in records:
            if r.status == "running" and step >= total:
                r.status = "completed"
            elif r.status == "running" and interrupt.requested is not None:
                r.status = "interrupted"  # the signal landed after the last check in the loop

    summaries = []
    for r in records:
        steps = min(step, total) if r.status != "diverged" else r.diverged_at_step
        summaries.append(writer.summary(r, steps, pipe.images_per_second))
        r.events.close()
    return summaries


def _restore_group(
    records: list[RunProgress], ckpts: list[Checkpoints], engine: Engine, data: Data, step: int, console
) -> TrainState:
    """The group's state checkpointed at `step` (each run's checks that it is the same config and
    data), and each run's host-side history from its checkpoint's metadata."""
    restored = []
    for r, c in zip(records, ckpts, strict=True):
        single, meta = restore_state(c, step, engine.abstract_state)
        if meta.get("config_hash", config_hash(r.cfg)) not in checkpoint_hashes(r.dir, r.cfg):
            raise RunError(  # same shapes, other config
                f"{c.directory / str(step)}: checkpoint was written by another config "
                f"({meta['config_hash']}, this run is {config_hash(r.cfg)}); move it away to retrain"
            )
        seen = meta.get("data_sha256")
        if seen is not None and data.content is not None and seen != data.content.digest:
            raise RunError(
                f"{c.directory / str(step)}: checkpoint was trained on other {data.name} data "
                f"(sha256 {seen}, the files in {data.content.source} are {data.content.digest}); "
                "point data.dir at the data it was trained on, or move the run away to retrain"
            )
        restored.append(single)
        r.history, r.wall_before = meta["history"], meta.get("wall_seconds", 0.0)
        r.last_eval, r.diagnostics = meta.get("last_eval", {}), meta.get("diagnostics")
        r.initial_loss = meta.get("initial_loss")
        _say(console, f"{r.dir.name}: resuming from step {step} (checkpoint {c.directory / str(step)})")
    return stack_seeds(restored)


@dataclass(frozen=True)
class Due:
    """What follows the chunk that ends at a step, before the next one is dispatched."""

    evaluate: bool
    checkpoint: bool


def chunk_length(step: int, total: int, log_every: int) -> int:
    """Steps in the chunk dispatched at `step`: `log_every`, and what is left at the end."""
    return min(log_every, total - step)


def due_at(end: int, *, total: int, eval_every: int, checkpoint_every: int) -> Due:
    """Whether the state after step `end` is evaluated and checkpointed (`*_every` 0: only at `total`).

    Chunks end every `log_every` steps (`chunk_length`), so an `*_every` that is no multiple of it
    acts at the chunk ends that are multiples of both.
    """
    return Due(
        evaluate=bool(eval_every and end % eval_every == 0) or end == total,
        checkpoint=bool(checkpoint_every and end % checkpoint_every == 0) or end == total,
    )


@dataclass
class _Chunk:
    """A dispatched chunk whose outputs may still be computing."""

    end: int  # the step it ends at
    length: int
    losses: Any
    accs: Any
    warmup_end: Any  # constant warm-up: the step it ends at after this chunk; None: no such warm-up
    dispatched: float  # perf_counter at dispatch


class ChunkPipeline:
    """The training chunks in flight: chunk N+1 is dispatched before chunk N's losses are read, so
    the host's bookkeeping overlaps the device's work. It times the steady state (images/s).

    A chunk's device time runs from the later of its dispatch and the previous settle.
    """

    def __init__(self, engine: Engine, data: Data, records: list[RunProgress], start_step: int, bar) -> None:
        self.engine, self.data, self.records, self.start_step, self.bar = engine, data, records, start_step, bar
        group = len(records)
        seeds = [r.cfg.train.seed for r in records]
        self.seeds_arg = jnp.asarray(seeds, jnp.int32) if group > 1 else jnp.int32(seeds[0])
        self.pending: _Chunk | None = None  # dispatched, its losses not read yet
        self.steady_time, self.steady_images = 0.0, 0
        self._last_settled = 0.0

    def launch(self, state: TrainState, step: int, length: int) -> TrainState:
        """Dispatch `length` steps from `step`, then settle the chunk before it while they run."""
        fn = self.engine.chunk_fn(length)
        t0 = time.perf_counter()
        state, (losses, accs, *extra) = fn(state, self.seeds_arg, self.data.x_train, self.data.y_train)
        previous = self.pending
        self.pending = _Chunk(step + length, length, losses, accs, extra[0] if extra else None, t0)
        if previous is not None:
            self._settle(previous)
        return state

    def settle(self) -> None:
        """Wait for the chunk in flight and record it: before its state is evaluated or saved."""
        chunk, self.pending = self.pending, None
        if chunk is not None:
            self._settle(chunk)

    @property
    def images_per_second(self) -> float | None:
        """Training throughput after the first chunk (which includes compiling); None before."""
        return self.steady_images / self.steady_time if self.steady_time else None

    def _settle(self, chunk: _Chunk) -> None:
        losses, accs = np.asarray(chunk.losses), np.asarray(chunk.accs)
        warmup_ends = np.asarray(chunk.warmup_end).reshape(-1) if chunk.warmup_end is not None else None
        now = time.perf_counter()
        elapsed = now - max(chunk.dispatched, self._last_settled)
        self._last_settled = now
        images = chunk.length * self.engine.cfg.data.batch_size * len(self.records)
        if chunk.end - chunk.length > self.start_step:  # the first chunk after (re)start includes warm-up
            self.steady_time += elapsed
            self.steady_images += images
        _record_chunk(self.records, self.engine, chunk.end, chunk.length, losses, accs, elapsed, warmup_ends)
        if self.bar is not None:
            self.bar(chunk.end, float(np.nanmean(losses[..., -1])), images / max(elapsed, 1e-9))


@dataclass
class _GroupWriter:
    """Each run's checkpoints and summary.json, as if it were trained alone."""

    records: list[RunProgress]
    ckpts: list[Checkpoints]
    engine: Engine
    data: Data
    model_info: dict
    wall_start: float
    interrupt: Interrupt
    saved: set[int] = field(default_factory=set)  # steps checkpointed by this process

    def __post_init__(self) -> None:
        self.compile_before = self.engine.compile_seconds

    def wall(self, r: RunProgress) -> float:
        return r.wall_before + time.perf_counter() - self.wall_start

    def summary(self, r: RunProgress, steps: int | None, ips: float | None) -> dict:
        compile_s = self.engine.compile_seconds - self.compile_before
        return _write_summary(
            r, self.engine, self.model_info, steps, wall=self.wall(r), data=self.data, ips=ips, compile_s=compile_s
        )

    def checkpoint(self, state: TrainState, end: int, *, save: bool, ips: float | None) -> None:
        """Checkpoint the state at `end` (if `save`), mark an interrupted run, write the summaries."""
        group = len(self.records)
        data = self.data
        for i, (r, c) in enumerate(zip(self.records, self.ckpts, strict=True)):
            if r.status == "diverged":
                continue
            if save and end not in self.saved:
                meta = {
                    "config_hash": config_hash(r.cfg),
                    "data_sha256": data.content.digest if data.content is not None else None,
                    "history": r.history,
                    "wall_seconds": self.wall(r),
                    "last_eval": r.last_eval,
                    "diagnostics": r.diagnostics,
                    "initial_loss": r.initial_loss,
                }
                c.save(end, _slice(state, i if group > 1 else None).tree(), meta)
            if self.interrupt.requested is not None and end < self.engine.cfg.train.steps:
                r.status = "interrupted"
            self.summary(r, end, ips)
        if save:
            self.saved.add(end)


def _train_chunks(state: TrainState, pipe: ChunkPipeline, writer: _GroupWriter, start_step: int) -> int:
    """Train from `start_step` until the end, divergence of every run or a signal: the step reached."""
    records, engine, interrupt = pipe.records, pipe.engine, writer.interrupt
    t = engine.cfg.train
    total = t.steps

    def all_diverged() -> bool:
        return all(r.status == "diverged" for r in records)

    step = start_step
    while True:
        launched = False
        if step < total and not all_diverged() and interrupt.requested is None:
            length = chunk_length(step, total, t.log_every)
            state = pipe.launch(state, step, length)
            step += length
            launched = True
        if pipe.pending is None:  # nothing in flight and nothing to launch: done, diverged or interrupted
            if interrupt.requested is not None and step < total:
                # The signal landed just after a chunk was settled: checkpoint that state, then stop.
                writer.checkpoint(state, step, save=step > start_step, ips=pipe.images_per_second)
            return step
        end = pipe.pending.end
        due = due_at(end, total=total, eval_every=t.eval_every, checkpoint_every=t.checkpoint_every)
        # Nothing new in flight (diverged, or a signal landed between chunks): settle the last
        # chunk here, with its checkpoint, rather than spinning on `step < total`.
        stalled = not launched
        if due.evaluate or due.checkpoint or stalled or interrupt.requested is not None:
            pipe.settle()  # the chunk just launched, before saving or evaluating its state
            if due.evaluate and not all_diverged():
                _record_eval(records, engine, state, writer.data, end)
            save = due.checkpoint or interrupt.requested is not None
            writer.checkpoint(state, end, save=save, ips=pipe.images_per_second)
            if interrupt.requested is not None:
                return step


class _NoEvents:
    """The event writer of processes other than 0 in a multi-process run: process 0 writes them."""

    def __getattr__(self, _name):
        return lambda *args, **kwargs: None


def _say(console, text: str) -> None:
    """A one-line notice on stderr (the CLI's console when there is one: sweep workers have none)."""
    if console is not None:
        console.print(text, highlight=False, soft_wrap=True)
    else:
        print(text, file=sys.stderr, flush=True)


def _record_chunk(
    records, engine: Engine, end: int, length: int, losses, accs, elapsed: float, warmup_ends=None
) -> None:
    group = len(records)
    lr = float(engine.schedule(end - 1))
    ips = length * engine.cfg.data.batch_size * group / max(elapsed, 1e-9)
    for i, r in enumerate(records):
        if r.status == "diverged":
            continue
        li = losses[i] if group > 1 else losses
        ai = accs[i] if group > 1 else accs
        bad = np.flatnonzero(~np.isfinite(li))
        if bad.size:
            _mark_diverged(r, end - length + int(bad[0]) + 1, f"non-finite loss ({float(li[bad[0]])})")
            continue
        if r.initial_loss is None and end == length:  # this chunk holds step 1
            r.initial_loss = float(li[0])
        loss, acc = float(np.mean(li)), float(np.mean(ai))
        factor = r.cfg.train.max_loss_factor
        if factor is not None and r.initial_loss is not None and loss > factor * r.initial_loss:
            # Treated as a NaN is: the run stops at the first step over the line, which is not recorded.
            over = np.flatnonzero(li > factor * r.initial_loss)
            step = end - length + int(over[0]) + 1 if over.size else end
            _mark_diverged(
                r,
                step,
                f"loss exploded: window mean {loss:.4g} > {factor:g} x the first step's "
                f"{r.initial_loss:.4g} (train.max_loss_factor)",
            )
            continue
        r.history["step"].append(end)
        r.history["train_loss"].append(loss)
        r.history["train_accuracy"].append(acc)
        if warmup_ends is not None:  # constant warm-up: the lr of the window's last step
            before, r.warmup_end = r.warmup_end, int(warmup_ends[i])
            lr = optim.learning_rate(engine.cfg.optim, engine.schedule, end - 1, r.warmup_end)
            if r.warmup_end <= end and (before is None or before > end - length):  # switched in this window
                r.events.scalars(r.warmup_end, {"train/warmup_end_step": float(r.warmup_end)})
        r.events.scalars(
            end, {"train/loss": loss, "train/accuracy": acc, "train/learning_rate": lr, "perf/images_per_second": ips}
        )


def _mark_diverged(r: RunProgress, step: int, reason: str) -> None:
    r.status, r.diverged_at_step, r.diverged_reason = "diverged", step, reason
    r.events.scalars(step, {"train/diverged": 1.0})


def _record_eval(records, engine: Engine, state, data: Data, end: int) -> None:
    out = jax.device_get(engine.evaluate_fn()(state, data.x_train, data.x_test, data.y_test))
    group = len(records)
    for i, r in enumerate(records):
        if r.status == "diverged":
            continue
        res = _slice(out, i if group > 1 else None)
        r.last_eval = {k: float(v) for k, v in res.items() if k in EVAL_METRICS}
        r.history["eval_step"].append(end)
        for key, value in r.last_eval.items():
            r.history.setdefault(key, []).append(value)
        r.events.scalars(end, {tag: r.last_eval[key] for key, tag in EVAL_METRICS.items() if key in r.last_eval})
        if "diagnostics" in res:
            r.diagnostics = diagnostics.to_host(engine.graphdef, res["diagnostics"])
            r.events.scalars(end, diagnostics.scalar_tags(r.diagnostics))
        r.events.flush()


def _model_info(cfg: Config, data: Data) -> dict:
    rows = layer_table(cfg.model, data.image_shape, data.num_classes)
    return {"params": sum(r.params for r in rows), "macs": sum(r.macs for r in rows)}


def _write_summary(
    r: RunProgress,
    engine: Engine,
    info: dict,
    steps: int | None,
    *,
    wall: float,
    data: Data,
    ips: float | None = None,
    compile_s: float | None = None,
) -> dict:
    window = r.history["train_loss"]
    summary: dict[str, Any] = {
        "run_id": r.dir.name,
        "status": r.status,
        "steps": steps,
        "total_steps": r.cfg.train.steps,
        "diverged_at_step": r.diverged_at_step,
        "diverged_reason": r.diverged_reason,
        "initial_train_loss": r.initial_loss,
        "final_train_loss": window[-1] if window and r.status != "diverged" else None,
        "final_train_accuracy": r.history["train_accuracy"][-1] if window and r.status != "diverged" else None,
        "eval_loss": r.last_eval.get("eval_loss") if r.status != "diverged" else None,
        "eval_accuracy": r.last_eval.get("eval_accuracy") if r.status != "diverged" else None,
        "eval_bn": _eval_bn_summary(engine),
        "eval_running_loss": r.last_eval.get("eval_running_loss") if r.status != "diverged" else None,
        "eval_running_accuracy": r.last_eval.get("eval_running_accuracy") if r.status != "diverged" else None,
        "params": info["params"],
        "macs_per_example": info["macs"],
        "compile_seconds": round(compile_s, 3) if compile_s is not None else None,
        "wall_seconds": round(wall, 3),
        "images_per_second": round(ips, 1) if ips else None,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "placement": placement.record(),  # which GPU(s), shared with how many runs, under which memory rule
        "vmapped_seeds": engine.seeds,
        **provenance(),  # software (resexp, jax, jaxlib, flax, optax), machine (CPU model), XLA flags
        "data": data.describe(),  # what was really read: sizes, shape, source, digest
        "config": resolved_dict(r.cfg),
        "sweep": {"name": r.cfg.name, "keys": r.sweep_keys} if r.sweep_keys is not None else None,
        "warmup": _warmup_summary(r, steps),
        "history": r.history,
        "diagnostics": r.diagnostics,
        **(r.extra or {}),
    }
    if jax.process_index() == 0:  # several processes train one run: one writes its summary
        write_json(r.dir / "summary.json", summary)
    return summary


def _eval_bn_summary(engine: Engine) -> dict | None:
    """Which BN statistics `eval_loss`/`eval_accuracy` used (None: the net has no BN)."""
    if engine.precise_bn:
        n, bs = engine.precise_bn, engine.cfg.data.batch_size
        return {"statistics": "precise", "batches": n, "images": n * bs}
    return {"statistics": "running"} if engine.has_bn else None


def _warmup_summary(r: RunProgress, steps: int | None) -> dict | None:
    """Which warm-up ran and when the base schedule took over (`end_step` None: not yet)."""
    o = r.cfg.optim
    if o.constant_warmup is None:
        return (
            {"kind": "linear", "end_step": o.linear_warmup_steps, "ended_by": "steps"}
            if o.linear_warmup_steps
            else None
        )
    w = o.constant_warmup
    end = r.warmup_end if r.warmup_end is not None and steps is not None and r.warmup_end <= steps else None
    return {
        "kind": "constant",
        "lr": w.lr,
        "until_train_error": w.until_train_error,
        "max_steps": w.steps,
        "end_step": end,
        "ended_by": None if end is None else "train_error" if end < w.steps else "steps",
    }


@contextmanager
def _progress(enabled: bool, console, records: list[RunProgress], total: int, start: int):
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    label = records[0].dir.name if len(records) == 1 else f"{records[0].dir.name} (+{len(records) - 1} seeds)"
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[ips]} img/s"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as prog:
        task = prog.add_task(label, total=total, completed=start, loss="-", ips="-")

        def update(step: int, loss: float, ips: float) -> None:
            prog.update(task, completed=step, loss=f"{loss:.4f}", ips=f"{ips:,.0f}")

        yield update


def train(cfg: Config, out: Path, *, progress: bool = True, console=None, source: str = "config") -> list[Outcome]:
    """`resexp train`: one config; with `train.vmap_seeds: S`, seeds seed..seed+S-1 together."""
    return train_runs(seed_configs(cfg), out, progress=progress, console=console, source=source)
