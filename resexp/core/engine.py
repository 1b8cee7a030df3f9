"""The compiled programs of training: one jitted program runs `log_every` steps per dispatch.

    state --chunk(K steps: sample, augment, forward, backward, update)--> state, losses[K]

Everything inside a chunk happens on the device (batches are drawn and augmented there), so
the host loop (`resexp.runs.train`) only wakes up once per chunk. `train.vmap_seeds: S` trains
S seeds as one program (`vmap` on accelerators, an in-program loop on CPU: see
`Engine.seed_loop`). Nothing here writes a file: a `TrainState` is what a checkpoint holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from resexp.core import diagnostics, optim, parallel
from resexp.core.checkpoint import Checkpoints
from resexp.core.config import Config
from resexp.core.data import Data, augmented_batch, batch_indices, precise_bn_indices
from resexp.core.models import Net, has_batch_norm, net_builder, precise_bn_statistics, split_params
from resexp.core.optim import lr_schedule, make_optimizer

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


class TrainState(NamedTuple):
    """What a training chunk carries from step to step, and what a checkpoint holds.

    The fields are in alphabetical order: a checkpoint is the dict of the set fields
    (`tree`), and a dict flattens in sorted key order, so both give the same leaves.
    """

    grad_norm: Any  # per-layer gradient norms of the last update; None: train.diagnostics off
    opt: Any  # the optimizer's state
    others: Any  # the net's non-parameter state: BN running statistics
    params: Any
    step: jax.Array
    warmup_end: jax.Array | None  # constant warm-up: the step the base schedule takes over; None: no such warm-up

    def tree(self) -> dict[str, Any]:
        """The checkpoint's layout on disk: a dict without the unset (None) fields."""
        return {k: v for k, v in self._asdict().items() if v is not None}

    @classmethod
    def from_tree(cls, tree: dict[str, Any]) -> TrainState:
        """The state a checkpoint's dict holds (a missing key: an unset field)."""
        return cls(
            grad_norm=tree.get("grad_norm"),
            opt=tree["opt"],
            others=tree["others"],
            params=tree["params"],
            step=tree["step"],
            warmup_end=tree.get("warmup_end"),
        )


def restore_state(ckpts: Checkpoints, step: int, abstract: TrainState) -> tuple[TrainState, dict]:
    """(the state checkpointed at `step`, its metadata): the typed side of the checkpoint's dict."""
    tree, meta = ckpts.restore(step, abstract.tree())
    return TrainState.from_tree(tree), meta


def _net_builder(cfg: Config, image_shape: tuple[int, ...], num_classes: int, platform: str) -> Callable:
    build = net_builder(cfg.model, image_shape, num_classes, dtype=cfg.train.dtype, platform=platform)
    if platform == "cpu":  # convs with a backward pass XLA:CPU runs fast inside scans (parallel.py)
        build = parallel.fast_conv_builder(build)
    return build


def _state_init(
    cfg: Config, build: Callable[[jax.Array], Net], tx: optax.GradientTransformation
) -> Callable[[jax.Array], TrainState]:
    """seed -> the initial state: with diagnostics on, the last step's per-layer gradient norms, and
    with a constant warm-up, the step it ends at, decided during training (see optim.py)."""
    warmup_end = optim.warmup_end_init(cfg.optim) if cfg.optim.constant_warmup else None

    def init(seed: jax.Array) -> TrainState:
        _, params, others = split_params(build(seed))
        opt, step = tx.init(params), jnp.zeros((), jnp.int32)
        end = jnp.int32(warmup_end) if warmup_end is not None else None
        norms = jax.tree.map(jnp.zeros_like, diagnostics.layer_norms(params)) if cfg.train.diagnostics else None
        return TrainState(grad_norm=norms, opt=opt, others=others, params=params, step=step, warmup_end=end)

    return init


def abstract_train_state(
    cfg: Config, image_shape: tuple[int, ...], num_classes: int, *, platform: str | None = None
) -> TrainState:
    """The shapes and dtypes of one run's state (a checkpoint's restore target), without an `Engine`:
    nothing is compiled and no data is needed beyond its image shape and classes."""
    build = _net_builder(cfg, image_shape, num_classes, platform or jax.default_backend())
    return jax.eval_shape(_state_init(cfg, build, make_optimizer(cfg.optim, cfg.train.steps)), jnp.int32(0))


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

        build = _net_builder(cfg, self.data.image_shape, self.data.num_classes, self.platform)
        abstract_net = nnx.eval_shape(lambda: build(jnp.int32(0)))
        self.graphdef = nnx.split(abstract_net, nnx.Param, ...)[0]
        # batches of precise BN before each evaluation (0: the running averages; a net without BN has none)
        self.has_bn = has_batch_norm(abstract_net)
        self.precise_bn = cfg.train.precise_bn_batches if self.has_bn else 0
        init = _state_init(cfg, build, self.tx)

        self.dp = parallel.data_parallel(cfg.data.batch_size, seeds=self.seeds, enabled=self.data_parallel)
        # One seed's init program, called once per seed even for vmapped seeds: the parameter RNG
        # ("rbg") is not vmap-invariant, so a vmapped init would start seed s elsewhere than a lone run.
        self.init_seed = self.dp.jit(init) if self.dp else jax.jit(init)
        self.abstract_state: TrainState = jax.eval_shape(init, jnp.int32(0))

    # ---- the training chunk

    def train_step(
        self, state: TrainState, step: jax.Array, seed: jax.Array, x_train: jax.Array, y_train: jax.Array
    ) -> tuple[TrainState, tuple[jax.Array, jax.Array]]:
        """One SGD step of seed `seed` at `step` (its batch drawn and augmented here): (state, (loss, accuracy))."""
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

        (loss, (acc, others)), grads = jax.value_and_grad(self.batch_loss, has_aux=True)(
            state.params, state.others, x, y
        )
        updates, opt = self.tx.update(grads, state.opt, state.params)
        if state.warmup_end is not None:
            updates = optim.hold_warmup_lr(updates, cfg.optim, self.schedule, step, state.warmup_end)
        params = optax.apply_updates(state.params, updates)
        count = state.step + 1
        # Gradient norms measured here, on the gradients the update used, so the eval program need
        # not differentiate: a second backward pass there doubled its compile time.
        norms = diagnostics.layer_norms(grads) if state.grad_norm is not None else None
        new = state._replace(params=params, others=others, opt=opt, step=count, grad_norm=norms)
        return new, (loss, acc)

    def batch_loss(self, params, others, x: jax.Array, y: jax.Array):
        """Mean cross-entropy of one training batch, its accuracy, and the updated BN statistics."""
        model = nnx.merge(self.graphdef, params, others, copy=True)
        logits, _ = model.forward(x, train=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        acc = jnp.mean(jnp.argmax(logits, -1) == y)
        return loss, (acc, split_params(model)[2])

    def chunk(self, state: TrainState, seed: jax.Array, x_train: jax.Array, y_train: jax.Array, *, length: int):
        """`length` steps: (state, (losses, accuracies)), and the warm-up's end after them (a third
        output, read by the host while the state itself is already donated to the next chunk)."""

        def body(s: TrainState, _):
            return self.train_step(s, s.step, seed, x_train, y_train)

        state, (losses, accs) = jax.lax.scan(body, state, None, length=length)
        if state.warmup_end is None:
            return state, (losses, accs)
        state = state._replace(warmup_end=optim.next_warmup_end(self.cfg.optim, state.warmup_end, state.step, accs))
        return state, (losses, accs, state.warmup_end)

    def chunk_program(self, length: int):
        """(jitted chunk of `length` steps, example arguments): what `chunk_fn` compiles."""
        fn = lambda st, seed, x, y: self.chunk(st, seed, x, y, length=length)  # noqa: E731
        if self.seeds > 1:
            fn = self.over_seeds(fn, 2)
        jitted = self.dp.jit(fn, donate_argnums=(0,)) if self.dp else jax.jit(fn, donate_argnums=(0,))
        seeds = jnp.zeros((self.seeds,), jnp.int32) if self.seeds > 1 else jnp.int32(0)
        return jitted, (self.state_spec(), seeds, self.data.x_train, self.data.y_train)

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

    def evaluate(self, state: TrainState, x_train, x_test, y_test):
        """Eval loss/accuracy and diagnostics; with precise BN, on recomputed BN statistics, and
        the running averages' loss/accuracy beside them (`eval_running_*`)."""
        params, others = state.params, state.others
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
            out["diagnostics"] = diagnostics.measure(self.graphdef, params, others, xe, state.grad_norm)
        return out

    def eval_program(self):
        """(jitted eval + diagnostics, example arguments): what `evaluate_fn` compiles.

        Called as (state, x_train, x_test, y_test); x_train feeds precise BN (unused without it).
        """
        fn = self.over_seeds(self.evaluate, 1) if self.seeds > 1 else self.evaluate
        jitted = self.dp.jit(fn) if self.dp else jax.jit(fn)
        return jitted, (self.state_spec(), self.data.x_train, self.data.x_test, self.data.y_test)

    def evaluate_fn(self):
        if "eval" not in self._compiled:
            jitted, args = self.eval_program()
            self._compiled["eval"] = self._aot(jitted, *args)
        return self._compiled["eval"]

    # ---- helpers

    def over_seeds(self, fn: Callable, batched: int) -> Callable:
        """`fn` over a leading seed axis of its first `batched` arguments (the rest shared)."""

        def looped(*args):
            if self.seed_loop == "vmap":
                return jax.vmap(fn, in_axes=(0,) * batched + (None,) * (len(args) - batched))(*args)
            return jax.lax.map(lambda per_seed: fn(*per_seed, *args[batched:]), args[:batched])

        return looped

    def state_spec(self) -> TrainState:
        """The programs' state argument: `abstract_state`, with a leading seed axis for several seeds."""
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

    def init(self, seeds: list[int]) -> TrainState:
        start = time.perf_counter()
        if self.seeds > 1:
            state = stack_seeds([self.init_seed(jnp.int32(s)) for s in seeds])
        else:
            arg = jnp.int32(seeds[0])
            state = self.init_seed(self.dp.place(arg) if self.dp else arg)
        jax.block_until_ready(state)
        self.compile_seconds += time.perf_counter() - start  # dominated by compiling the init
        return state


def stack_seeds(trees: list):
    """One state per seed -> the states stacked on a leading seed axis (one seed: as is)."""
    return trees[0] if len(trees) == 1 else jax.tree.map(lambda *a: jnp.stack(a), *trees)
