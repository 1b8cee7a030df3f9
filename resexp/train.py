"""The training engine: one jitted program runs `log_every` steps per dispatch.

    state --chunk(K steps: sample, augment, forward, backward, update)--> state, losses[K]

Everything inside a chunk happens on the device (batches are drawn and augmented there),
so Python only wakes up once per chunk, and fetches the previous chunk's losses while
the next one runs. `train.vmap_seeds: S` trains S seeds as one program (`vmap` on
accelerators, an in-program loop on CPU: see `Engine.seed_loop`).

A group of runs (S seeds of one config) goes through `train_runs`; each run still gets
its own directory, summary, events and checkpoints, exactly as if trained alone.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from resexp import diagnostics, optim, parallel, placement
from resexp.checkpoint import Checkpoints
from resexp.config import Config, config_hash, resolved_dict
from resexp.data import Data, augmented_batch, batch_indices, load_data, precise_bn_indices
from resexp.errors import RunError
from resexp.models import Net, has_batch_norm, layer_table, net_builder, precise_bn_statistics, split_params
from resexp.optim import lr_schedule, make_optimizer
from resexp.provenance import provenance
from resexp.runs import (
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
from resexp.signals import SignalRecorder
from resexp.tblog import EventWriter

EXIT_DIVERGED = 3
# what an evaluation returns -> its TensorBoard tag; eval_running_* only with precise BN
EVAL_METRICS = {
    "eval_loss": "eval/loss",
    "eval_accuracy": "eval/accuracy",
    "eval_running_loss": "eval/loss_running_bn",
    "eval_running_accuracy": "eval/accuracy_running_bn",
}
EXIT_INTERRUPTED = 130


# --------------------------------------------------------------------------- the compiled pieces


def precise_bn_others(
    graphdef,
    params,
    others,
    x_train: jax.Array,
    normalize: Callable[[jax.Array], jax.Array],
    batches: int,
    batch_size: int,
    shard: Callable[[jax.Array], jax.Array] | None = None,
):
    """`others` with BN statistics recomputed over `batches` fixed, un-augmented training batches
    (`data.precise_bn_indices`), weights frozen: what `train.precise_bn_batches` evaluates with.
    Traceable; `shard` lays a batch out over devices (data parallelism)."""
    idx = jnp.asarray(precise_bn_indices(x_train.shape[0], batches, batch_size))

    def batch(i: jax.Array) -> jax.Array:
        x = normalize(x_train[idx[i]])
        return shard(x) if shard is not None else x

    return precise_bn_statistics(graphdef, params, others, batch, batches)


def _init_state(
    graphdef_fn: Callable[[jax.Array], Net],
    tx: optax.GradientTransformation,
    seed: jax.Array,
    grad_norms: bool = False,
    warmup_end: int | None = None,
):
    """params/others/opt/step, plus (with diagnostics on) the last step's per-layer gradient norms
    and (with a constant warm-up) the step it ends at, decided during training (see optim.py)."""
    model = graphdef_fn(seed)
    _, params, others = split_params(model)
    state = {"params": params, "others": others, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    if warmup_end is not None:
        state["warmup_end"] = jnp.int32(warmup_end)
    if grad_norms:
        state["grad_norm"] = jax.tree.map(jnp.zeros_like, diagnostics.layer_norms(params))
    return state


@dataclass
class Engine:
    """The jitted functions for one architecture + data + optimizer (seed is an argument)."""

    cfg: Config
    data: Data
    seeds: int = 1
    data_parallel: bool | None = None  # None: shard the batch over all devices when there are several
    # How S seeds share one program: "vmap" batches them, "map" loops over them inside the program.
    # vmap turns every conv into a grouped conv, which XLA:CPU runs ~2x slower per image than S
    # separate ones, and an H100's cuDNN 1.27x slower (8 seeds of ResNet-20: 25.5 vs 20.1 ms a
    # step, docs/performance.md). None: "map" on CPU and GPU, "vmap" on TPU (not measured there).
    seed_loop: str | None = None
    # The backend the programs are built for ("cpu", "gpu", "cuda", "rocm", "tpu"); None: this process's.
    # Another one only makes sense for lowering/exporting (tests/test_export.py).
    platform: str | None = None
    compile_seconds: float = 0.0
    _compiled: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        cfg = self.cfg
        if self.platform is None:
            self.platform = jax.default_backend()
        if self.seed_loop is None:
            self.seed_loop = "vmap" if self.platform == "tpu" else "map"
        self.tx = make_optimizer(cfg.optim, cfg.train.steps)
        self.schedule = lr_schedule(cfg.optim, cfg.train.steps)

        build = net_builder(
            cfg.model, self.data.image_shape, self.data.num_classes, dtype=cfg.train.dtype, platform=self.platform
        )
        if self.platform == "cpu":  # convs with a backward pass XLA:CPU runs fast inside scans (parallel.py)
            build = parallel.fast_conv_builder(build)
        abstract_net = nnx.eval_shape(lambda: build(jnp.int32(0)))
        self.graphdef = nnx.split(abstract_net, nnx.Param, ...)[0]
        # batches of precise BN before each evaluation (0: the running averages; a net without BN has none)
        self.has_bn = has_batch_norm(abstract_net)
        self.precise_bn = cfg.train.precise_bn_batches if self.has_bn else 0
        warmup_end = optim.warmup_end_init(cfg.optim) if cfg.optim.constant_warmup else None

        def init(seed):
            return _init_state(build, self.tx, seed, grad_norms=cfg.train.diagnostics, warmup_end=warmup_end)

        self.dp = parallel.data_parallel(cfg.data.batch_size, seeds=self.seeds, enabled=self.data_parallel)
        # One seed's init program, called once per seed even for vmapped seeds: the parameter RNG
        # ("rbg") is not vmap-invariant, so a vmapped init would start seed s elsewhere than a lone run.
        self._init = self.dp.jit(init) if self.dp else jax.jit(init)
        self.abstract_state = jax.eval_shape(init, jnp.int32(0))

    # ---- the training chunk

    def _step(self, state: dict, step: jax.Array, seed: jax.Array, x_train: jax.Array, y_train: jax.Array):
        cfg, data = self.cfg, self.data
        key = jax.random.key(seed)
        idx = batch_indices(jax.random.fold_in(key, 0), step, x_train.shape[0], cfg.data.batch_size)
        y = y_train[idx]
        if data.augment:
            x = augmented_batch(
                jax.random.fold_in(jax.random.fold_in(key, 1), step), x_train[idx], data.normalize, cfg.data.pad_value
            )
        else:
            x = data.normalize(x_train[idx])
        if self.dp is not None:  # BN's batch statistics stay global: XLA all-reduces the sums
            x, y = self.dp.shard_batch(x, y)

        (loss, (acc, others)), grads = jax.value_and_grad(self._loss, has_aux=True)(
            state["params"], state["others"], x, y
        )
        updates, opt = self.tx.update(grads, state["opt"], state["params"])
        if "warmup_end" in state:
            updates = optim.hold_warmup_lr(updates, cfg.optim, self.schedule, step, state["warmup_end"])
        params = optax.apply_updates(state["params"], updates)
        new = {"params": params, "others": others, "opt": opt, "step": state["step"] + 1}
        if "warmup_end" in state:
            new["warmup_end"] = state["warmup_end"]
        if "grad_norm" in state:
            # Measured here, on the gradients the update used, so the eval program need not
            # differentiate: a second backward pass there doubled its compile time.
            new["grad_norm"] = diagnostics.layer_norms(grads)
        return new, (loss, acc)

    def _loss(self, params, others, x: jax.Array, y: jax.Array):
        """Mean cross-entropy of one training batch, its accuracy, and the updated BN statistics."""
        model = nnx.merge(self.graphdef, params, others, copy=True)
        logits, _ = model.forward(x, train=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        acc = jnp.mean(jnp.argmax(logits, -1) == y)
        return loss, (acc, split_params(model)[2])

    def _chunk(self, state: dict, seed: jax.Array, x_train: jax.Array, y_train: jax.Array, *, length: int):
        def body(s, _):
            return self._step(s, s["step"], seed, x_train, y_train)

        state, (losses, accs) = jax.lax.scan(body, state, None, length=length)
        if "warmup_end" not in state:
            return state, (losses, accs)
        state["warmup_end"] = optim.next_warmup_end(self.cfg.optim, state["warmup_end"], state["step"], accs)
        return state, (losses, accs, state["warmup_end"])

    def chunk_program(self, length: int):
        """(jitted chunk of `length` steps, example arguments): what `chunk_fn` compiles."""
        fn = lambda st, seed, x, y: self._chunk(st, seed, x, y, length=length)  # noqa: E731
        if self.seeds > 1:
            fn = self._over_seeds(fn, 2)
        jitted = self.dp.jit(fn, donate_argnums=(0,)) if self.dp else jax.jit(fn, donate_argnums=(0,))
        seeds = jnp.zeros((self.seeds,), jnp.int32) if self.seeds > 1 else jnp.int32(0)
        return jitted, (self._state_spec(), seeds, self.data.x_train, self.data.y_train)

    def chunk_fn(self, length: int):
        """AOT-compiled chunk of `length` steps; compile time is measured, not guessed."""
        key = ("chunk", length)
        if key not in self._compiled:
            jitted, args = self.chunk_program(length)
            self._compiled[key] = self._aot(jitted, *args)
        return self._compiled[key]

    # ---- evaluation and diagnostics

    def _eval(self, params, others, x_test: jax.Array, y_test: jax.Array):
        cfg = self.cfg
        n = x_test.shape[0] if cfg.train.eval_examples is None else min(cfg.train.eval_examples, x_test.shape[0])
        bs = min(cfg.data.eval_batch_size, n)
        nb = -(-n // bs)
        pad = nb * bs - n
        x = jnp.pad(x_test[:n], [(0, pad)] + [(0, 0)] * (x_test.ndim - 1)).reshape(nb, bs, *x_test.shape[1:])
        y = jnp.pad(y_test[:n], (0, pad)).reshape(nb, bs)
        mask = (jnp.arange(nb * bs) < n).reshape(nb, bs)

        def one(batch):
            xb, yb, mb = batch
            if self.dp is not None and self.dp.divides(bs):
                xb, yb, mb = self.dp.shard_batch(xb, yb, mb)
            model = nnx.merge(self.graphdef, params, others, copy=True)
            logits = model(self.data.normalize(xb), train=False)
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
            return jnp.sum(losses * mb), jnp.sum((jnp.argmax(logits, -1) == yb) * mb)

        loss_sum, correct = jax.lax.map(one, (x, y, mask))
        return {"eval_loss": jnp.sum(loss_sum) / n, "eval_accuracy": jnp.sum(correct) / n}

    def _evaluate(self, state, x_train, x_test, y_test):
        """Eval loss/accuracy and diagnostics; with precise BN, on recomputed BN statistics, and
        the running averages' loss/accuracy beside them (`eval_running_*`)."""
        params, others = state["params"], state["others"]
        running = None
        if self.precise_bn:
            running = self._eval(params, others, x_test, y_test)
            shard = self.dp.shard_batch if self.dp is not None and self.dp.divides(self.cfg.data.batch_size) else None
            others = precise_bn_others(
                self.graphdef,
                params,
                others,
                x_train,
                self.data.normalize,
                self.precise_bn,
                self.cfg.data.batch_size,
                shard,
            )
        out = self._eval(params, others, x_test, y_test)
        if running is not None:
            out["eval_running_loss"], out["eval_running_accuracy"] = running["eval_loss"], running["eval_accuracy"]
        if self.cfg.train.diagnostics:  # eval-mode forwards: the same BN statistics as the eval
            xe = self.data.normalize(x_test[: min(256, x_test.shape[0])])
            out["diagnostics"] = diagnostics.measure(self.graphdef, params, others, xe, state["grad_norm"])
        return out

    def eval_program(self):
        """(jitted eval + diagnostics, example arguments): what `evaluate_fn` compiles.

        Called as (state, x_train, x_test, y_test); x_train feeds precise BN (unused without it).
        """
        fn = self._over_seeds(self._evaluate, 1) if self.seeds > 1 else self._evaluate
        jitted = self.dp.jit(fn) if self.dp else jax.jit(fn)
        return jitted, (self._state_spec(), self.data.x_train, self.data.x_test, self.data.y_test)

    def evaluate_fn(self):
        if "eval" not in self._compiled:
            jitted, args = self.eval_program()
            self._compiled["eval"] = self._aot(jitted, *args)
        return self._compiled["eval"]

    # ---- helpers

    def _over_seeds(self, fn: Callable, batched: int) -> Callable:
        """`fn` over a leading seed axis of its first `batched` arguments (the rest shared)."""

        def looped(*args):
            if self.seed_loop == "vmap":
                return jax.vmap(fn, in_axes=(0,) * batched + (None,) * (len(args) - batched))(*args)
            return jax.lax.map(lambda per_seed: fn(*per_seed, *args[batched:]), args[:batched])

        return looped

    def _state_spec(self):
        if self.seeds == 1:
            return self.abstract_state
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct((self.seeds, *a.shape), a.dtype), self.abstract_state)

    def _aot(self, jitted, *args):
        start = time.perf_counter()
        if self.dp is not None:  # lower for replicated inputs; the returned callable places arguments
            compiled = self.dp.wrap(jitted.lower(*self.dp.abstract(args)).compile())
        else:
            compiled = jitted.lower(*args).compile()
        self.compile_seconds += time.perf_counter() - start
        return compiled

    def init(self, seeds: list[int]):
        start = time.perf_counter()
        if self.seeds > 1:
            state = _stack([self._init(jnp.int32(s)) for s in seeds])
        else:
            arg = jnp.int32(seeds[0])
            state = self._init(self.dp.place(arg) if self.dp else arg)
        jax.block_until_ready(state)
        self.compile_seconds += time.perf_counter() - start  # dominated by compiling the init
        return state


# --------------------------------------------------------------------------- one group of runs


@dataclass
class RunRecord:
    """Host-side bookkeeping for one run of a group."""

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


def _stack(trees: list):
    return trees[0] if len(trees) == 1 else jax.tree.map(lambda *a: jnp.stack(a), *trees)


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
                RunRecord(
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


def _train_group(records: list[RunRecord], *, progress: bool, console, data: Data | None) -> list[dict]:
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
        restored = []
        for r, c in zip(records, ckpts, strict=True):
            single, meta = c.restore(resume_step, engine.abstract_state)
            if meta.get("config_hash", config_hash(r.cfg)) not in checkpoint_hashes(r.dir, r.cfg):
                raise RunError(  # same shapes, other config
                    f"{c.directory / str(resume_step)}: checkpoint was written by another config "
                    f"({meta['config_hash']}, this run is {config_hash(r.cfg)}); move it away to retrain"
                )
            seen = meta.get("data_sha256")
            if seen is not None and data.content is not None and seen != data.content.digest:
                raise RunError(
                    f"{c.directory / str(resume_step)}: checkpoint was trained on other {data.name} data "
                    f"(sha256 {seen}, the files in {data.content.source} are {data.content.digest}); "
                    "point data.dir at the data it was trained on, or move the run away to retrain"
                )
            restored.append(single)
            r.history, r.wall_before = meta["history"], meta.get("wall_seconds", 0.0)
            r.last_eval, r.diagnostics = meta.get("last_eval", {}), meta.get("diagnostics")
            r.initial_loss = meta.get("initial_loss")
            _say(
                console, f"{r.dir.name}: resuming from step {resume_step} (checkpoint {c.directory / str(resume_step)})"
            )
        state = _stack(restored)
    start_step = resume_step or 0
    if "warmup_end" in state:
        ends = np.asarray(state["warmup_end"]).reshape(-1)
        for r, end in zip(records, ends, strict=True):
            r.warmup_end = int(end)
    for r in records:
        r.events = EventWriter(r.dir) if jax.process_index() == 0 else _NoEvents()
        r.events.session_start(start_step)  # TensorBoard purges events a resume rewrites
    model_info = _model_info(cfg, data)
    seeds_arg = (
        jnp.asarray([r.cfg.train.seed for r in records], jnp.int32)
        if group > 1
        else jnp.int32(records[0].cfg.train.seed)
    )
    for r in records:
        _write_summary(r, engine, model_info, start_step, wall=r.wall_before, data=data)

    t = cfg.train
    total, k = t.steps, t.log_every
    interrupt = Interrupt()
    compile_before = engine.compile_seconds
    steady_time, steady_images = 0.0, 0
    saved: set[int] = set()  # steps checkpointed by this process

    def checkpoint(end: int, save: bool) -> None:
        """Checkpoint the state at `end` (if `save`), mark an interrupted run, write the summaries."""
        ips = steady_images / steady_time if steady_time else None
        for i, (r, c) in enumerate(zip(records, ckpts, strict=True)):
            if r.status == "diverged":
                continue
            if save and end not in saved:
                c.save(
                    end,
                    _slice(state, i if group > 1 else None),
                    {
                        "config_hash": config_hash(r.cfg),
                        "data_sha256": data.content.digest if data.content is not None else None,
                        "history": r.history,
                        "wall_seconds": r.wall_before + time.perf_counter() - wall_start,
                        "last_eval": r.last_eval,
                        "diagnostics": r.diagnostics,
                        "initial_loss": r.initial_loss,
                    },
                )
            if interrupt.requested is not None and end < total:
                r.status = "interrupted"
            _write_summary(
                r,
                engine,
                model_info,
                end,
                wall=r.wall_before + time.perf_counter() - wall_start,
                data=data,
                ips=ips,
                compile_s=engine.compile_seconds - compile_before,
            )
        if save:
            saved.add(end)

    last_settled = 0.0

    def settle(chunk) -> None:
        """Wait for a launched chunk's losses, record them, and account its device time.

        Chunks are pipelined (chunk N+1 is dispatched before chunk N's losses are read), so
        a chunk's device time runs from the later of its dispatch and the previous settle.
        """
        nonlocal steady_time, steady_images, last_settled
        end, length, losses, accs, t0, extra = chunk
        losses, accs = np.asarray(losses), np.asarray(accs)
        warmup_ends = np.asarray(extra[0]).reshape(-1) if extra else None
        now = time.perf_counter()
        elapsed = now - max(t0, last_settled)
        last_settled = now
        images = length * cfg.data.batch_size * group
        if end - length > start_step:  # the first chunk after (re)start includes warm-up
            steady_time += elapsed
            steady_images += images
        _record_chunk(records, engine, end, length, losses, accs, elapsed, warmup_ends)
        if bar is not None:
            bar(end, float(np.nanmean(losses[..., -1])), images / max(elapsed, 1e-9))

    with interrupt.installed(), _progress(progress, console, records, total, start_step) as bar:
        step = start_step
        pending = None  # (end_step, length, losses, accs, t_dispatch): fetched while the next chunk runs
        while step < total or pending is not None:
            launched = None
            if step < total and not all(r.status == "diverged" for r in records) and interrupt.requested is None:
                length = min(k, total - step)
                fn = engine.chunk_fn(length)
                t0 = time.perf_counter()
                state, (losses, accs, *extra) = fn(state, seeds_arg, data.x_train, data.y_train)
                step += length
                launched = (step, length, losses, accs, t0, extra)
            stalled = False
            if pending is not None and launched is None:
                # Nothing new in flight (diverged, or a signal landed between chunks): settle the
                # last chunk below, with its checkpoint, instead of spinning on `step < total`.
                launched, stalled = pending, True
            elif pending is not None:
                settle(pending)
            pending = launched
            if pending is None:  # nothing in flight and nothing to launch: done, diverged or interrupted
                if interrupt.requested is not None and step < total:
                    # The signal landed just after a chunk was settled: checkpoint that state, then stop.
                    checkpoint(step, save=step > start_step)
                break
            end = pending[0]
            at_eval = (t.eval_every and end % t.eval_every == 0) or end == total
            at_ckpt = (t.checkpoint_every and end % t.checkpoint_every == 0) or end == total
            if at_eval or at_ckpt or stalled or interrupt.requested is not None:
                settle(pending)  # the chunk just launched, before saving or evaluating its state
                pending = None
                if at_eval and not all(r.status == "diverged" for r in records):
                    _record_eval(records, engine, state, data, end)
                checkpoint(end, save=bool(at_ckpt) or interrupt.requested is not None)
                if interrupt.requested is not None:
                    break
        for r in records:
            if r.status == "running" and step >= total:
                r.status = "completed"
            elif r.status == "running" and interrupt.requested is not None:
                r.status = "interrupted"  # the signal landed after the last check in the loop

    ips = steady_images / steady_time if steady_time else None
    summaries = []
    for r in records:
        s = _write_summary(
            r,
            engine,
            model_info,
            min(step, total) if r.status != "diverged" else r.diverged_at_step,
            wall=r.wall_before + time.perf_counter() - wall_start,
            data=data,
            ips=ips,
            compile_s=engine.compile_seconds - compile_before,
        )
        r.events.close()
        summaries.append(s)
    return summaries


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


def _mark_diverged(r: RunRecord, step: int, reason: str) -> None:
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
    r: RunRecord,
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


def _warmup_summary(r: RunRecord, steps: int | None) -> dict | None:
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
def _progress(enabled: bool, console, records: list[RunRecord], total: int, start: int):
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
