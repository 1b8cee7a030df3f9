"""What every "why" analysis needs: a trained run loaded back, a block-by-block forward, BN
recalibration, and the cache/JSON/TensorBoard plumbing around a result.

The block walker (`blocks_to_logits`) is the one piece of model code here. It runs the very
modules of `resexp.core.models.Net` (stem, blocks, head), but lets an analysis decide what each block
does with its input, given a per-block value scanned alongside the stacked blocks: a keep-mask
(lesion), a stop-gradient mask (paths), nothing (signal propagation). Because the per-block
value is data, not structure, one compiled program serves every mask of an architecture.

`evaluate_variants` is that program for the eval-mode analyses: a net varied by a keep-mask, a
block order and a step along two weight directions, evaluated on a fixed-size batch of examples.
The lesion study (masks and orders) and the loss landscape (grid points) feed it their variants,
so one compiled forward per architecture serves both, every mask and every grid point.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resexp.core.errors import UserError
from resexp.reporting.analysis_results import ANALYSIS_DIR, read_result, result_path

VERSION = 2  # bump when a computation changes: cached results from older code are recomputed
EVENT_SUFFIX = ".resexp-analysis"


class AnalysisError(UserError):
    """An analysis that cannot run on this input (printed as one line, exit 2, nothing written)."""


# --------------------------------------------------------------------------- the run, without JAX


@dataclass(frozen=True)
class RunInfo:
    """What a run directory says about itself, read without importing JAX (so a cached answer is instant)."""

    dir: Path
    summary: dict
    checkpoint_step: int

    @property
    def model(self) -> dict:
        return self.summary["config"]["model"]

    @property
    def is_residual(self) -> bool:
        return bool(self.model.get("shortcut"))

    @property
    def n_blocks(self) -> int:
        m = self.model
        return (m["depth"] - 2) // 2


def _checkpoint_steps(run_dir: Path) -> list[int]:
    ckpt = run_dir / "checkpoints"
    if not ckpt.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit())


def inspect_run(run_dir: Path) -> RunInfo:
    """Refuse anything but a completed run with its final checkpoint (one line saying which problem)."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not run_dir.is_dir():
        raise AnalysisError(f"{run_dir}: not a run directory")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        raise AnalysisError(f"{run_dir}: no readable summary.json (not a run directory, or never started)") from None
    status = summary.get("status")
    if status == "diverged":
        raise AnalysisError(
            f"{run_dir}: diverged run (non-finite loss at step {summary.get('diverged_at_step')}); nothing to analyse"
        )
    if status != "completed":
        raise AnalysisError(
            f"{run_dir}: incomplete run (status {status!r}, step {summary.get('steps')}/"
            f"{summary.get('total_steps')}); finish it with `resexp train` first"
        )
    steps = _checkpoint_steps(run_dir)
    if not steps:
        raise AnalysisError(f"{run_dir}: no checkpoint (checkpoints/ is missing or empty); retrain the run")
    if steps[-1] != summary.get("total_steps"):
        raise AnalysisError(
            f"{run_dir}: no final checkpoint (latest is step {steps[-1]} of "
            f"{summary.get('total_steps')}); retrain the run"
        )
    return RunInfo(run_dir, summary, steps[-1])


# --------------------------------------------------------------------------- cache and outputs


def cache_key(name: str, info: RunInfo, options: dict) -> str:
    blob = json.dumps(
        {
            "analysis": name,
            "version": VERSION,
            "run": info.dir.name,
            "step": info.checkpoint_step,
            "config": info.summary.get("config"),
            "options": options,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_result(name: str, info: RunInfo, options: dict) -> dict | None:
    """The stored result when it was computed from this checkpoint with these options, else None."""
    doc = read_result(info.dir, name)
    return doc if doc is not None and doc.get("cache_key") == cache_key(name, info, options) else None


def write_result(
    name: str, info: RunInfo, options: dict, result: dict, png: bytes | None, scalars: dict[str, float]
) -> dict:
    """analysis/<name>.json (+ .png) and TensorBoard scalars + image in the run directory.

    The TensorBoard file of an earlier result of this analysis is replaced, never added to.
    """
    from resexp.runs.store import write_atomic, write_json
    from resexp.runs.tblog import EventWriter, event_files

    doc = {
        "analysis": name,
        "run_id": info.dir.name,
        "checkpoint_step": info.checkpoint_step,
        "options": options,
        "cache_key": cache_key(name, info, options),
        **result,
    }
    out = info.dir / ANALYSIS_DIR
    out.mkdir(exist_ok=True)
    if png is not None:
        write_atomic(out / f"{name}.png", png)
        doc["figure"] = f"{ANALYSIS_DIR}/{name}.png"
    suffix = f"{EVENT_SUFFIX}-{name}"
    for old in event_files(info.dir, suffix):
        old.unlink(missing_ok=True)
    with EventWriter(info.dir, suffix) as w:
        w.scalars(info.checkpoint_step, {f"analysis/{name}/{k}": v for k, v in scalars.items()})
        if png is not None:
            w.image(f"analysis/{name}", png, step=info.checkpoint_step)
    write_json(result_path(info.dir, name), doc)
    return doc


# --------------------------------------------------------------------------- the run, loaded into JAX


@dataclass
class LoadedRun:
    """A trained (or freshly initialised) net with its data, split for jitted analyses."""

    cfg: Any  # resexp.core.config.Config
    data: Any  # resexp.core.data.Data
    graphdef: Any
    params: Any
    others: Any
    info: RunInfo | None = None
    # Called as progress(done, total) by a long computation; `run_analyses` points it at the display.
    progress: Callable[[int, int], None] = field(default=lambda done, total: None, repr=False)
    precise_bn_cache: dict[int, Any] = field(default_factory=dict, repr=False)

    def eval_others(self, batches: int):
        """The BN statistics of an eval-mode analysis: the checkpoint's running averages
        (`batches` 0) or precise BN over `batches` training batches, computed once per run."""
        if batches == 0:
            return self.others
        if batches not in self.precise_bn_cache:
            self.precise_bn_cache[batches] = precise_bn(self, batches)
        return self.precise_bn_cache[batches]

    def net(self, params=None, others=None):
        from flax import nnx

        return nnx.merge(
            self.graphdef,
            self.params if params is None else params,
            self.others if others is None else others,
            copy=True,
        )


def graphdef_for(cfg, data, *, fast_conv: bool = True, bn_momentum: float | None = None):
    """The module structure of a run's net. `bn_momentum=0.0` makes a train-mode forward *set* the
    running statistics to the batch's (BN recalibration in one pass); `fast_conv` uses the
    CPU-friendly conv VJP the training program used (forward-mode autodiff needs it off)."""
    import jax.numpy as jnp
    from flax import nnx

    from resexp.core import parallel
    from resexp.core.models import net_builder

    build = net_builder(cfg.model, data.image_shape, data.num_classes, dtype=cfg.train.dtype)
    if fast_conv:
        build = parallel.fast_conv_builder(build)
    abstract = nnx.eval_shape(lambda: build(jnp.int32(0)))
    if bn_momentum is not None:
        for _, module in nnx.iter_modules(abstract):
            if isinstance(module, nnx.BatchNorm):
                module.momentum = bn_momentum
    return nnx.split(abstract, nnx.Param, ...)[0]


def load_run(info: RunInfo) -> LoadedRun:
    """The run's final checkpoint, restored into its own architecture."""
    from resexp.core.checkpoint import Checkpoints
    from resexp.core.config import Config
    from resexp.core.data import load_data
    from resexp.core.engine import abstract_train_state, restore_state

    cfg = Config.model_validate(info.summary["config"])
    data = load_data(cfg.data, source=str(info.dir / "config.yaml"))
    ckpts = Checkpoints(info.dir / "checkpoints")
    try:
        abstract = abstract_train_state(cfg, data.image_shape, data.num_classes)
        state, _ = restore_state(ckpts, info.checkpoint_step, abstract)
    finally:
        ckpts.close()
    return LoadedRun(cfg, data, graphdef_for(cfg, data), state.params, state.others, info)


def init_run(cfg, data=None) -> LoadedRun:
    """The exact initialisation `resexp train` starts this config from (seed `train.seed`)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from resexp.core import parallel
    from resexp.core.data import load_data
    from resexp.core.models import net_builder

    data = data if data is not None else load_data(cfg.data)
    build = parallel.fast_conv_builder(
        net_builder(cfg.model, data.image_shape, data.num_classes, dtype=cfg.train.dtype)
    )
    _, params, others = jax.jit(lambda s: nnx.split(build(s), nnx.Param, ...))(jnp.int32(cfg.train.seed))
    return LoadedRun(cfg, data, graphdef_for(cfg, data), params, others)


def recalibrate_bn(run: LoadedRun, images):
    """`others` with every BN's running statistics set to the batch statistics of `images`
    (normalised), by one train-mode forward of a copy whose BN momentum is 0. Traceable."""
    from flax import nnx

    net = nnx.merge(graphdef_for(run.cfg, run.data, bn_momentum=0.0), run.params, run.others, copy=True)
    net(images, train=True)
    from resexp.core.models import split_params

    return split_params(net)[2]


# --------------------------------------------------------------------------- BN statistics


def precise_bn_setting(info: RunInfo, override: int | None) -> int:
    """Training batches BN statistics are recomputed over before an eval-mode analysis: `override`,
    else the run's own `train.precise_bn_batches` (0, running averages, in configs without it)."""
    if override is None:
        return int(info.summary["config"].get("train", {}).get("precise_bn_batches") or 0)
    if override < 0:
        raise AnalysisError(f"--precise-bn-batches {override}: must be >= 0 (0: the running averages)")
    return override


def bn_statistics(batches: int, batch_size: int) -> str:
    """What the BN layers of an eval-mode analysis normalise with, in words (JSON and titles)."""
    if batches == 0:
        return "running averages"
    return f"precise: recomputed on {batches} x {batch_size} training images"


def bn_batch_size(info: RunInfo) -> int:
    return int(info.summary["config"]["data"]["batch_size"])


def eval_sample_options(
    info: RunInfo, examples: int | None, precise_bn_batches: int | None, default: int
) -> tuple[dict[str, int], dict[str, int]]:
    """The options every eval-mode, example-based analysis shares, validated, so its `prepare`
    places them among its own: ({"examples"}, {"precise_bn_batches", "bn_batch_size"})."""
    sample = {"examples": check_examples(examples, test_set_size(info.summary["config"]), default)}
    return sample, {
        "precise_bn_batches": precise_bn_setting(info, precise_bn_batches),
        "bn_batch_size": bn_batch_size(info),
    }


def precise_bn_indices(num_examples: int, batches: int, batch_size: int):
    """[batches, batch_size] training indices precise BN uses: fixed for a dataset size (not a run's
    seed), epoch-wise shuffles without replacement from NumPy seed 0, as the training option
    `train.precise_bn_batches` draws them, so an analysis sees the statistics the run was evaluated with."""
    import numpy as np

    per_epoch = num_examples // batch_size
    rng = np.random.default_rng(0)
    orders = [rng.permutation(num_examples)[: per_epoch * batch_size] for _ in range(-(-batches // per_epoch))]
    return np.concatenate(orders)[: batches * batch_size].reshape(batches, batch_size).astype(np.int32)


def precise_bn(run: LoadedRun, batches: int):
    """`others` with every BN's running mean and variance replaced by their equal-weight average
    over `batches` train-mode forwards of the frozen weights on fixed, un-augmented training
    batches ("precise BN", pycls/detectron2): `recalibrate_bn` per batch, under one scan."""
    import jax
    import jax.numpy as jnp

    bs = run.cfg.data.batch_size
    if run.data.x_train.shape[0] < bs:
        raise AnalysisError(f"precise BN: fewer than one batch of {bs} training images")
    idx = precise_bn_indices(int(run.data.x_train.shape[0]), batches, bs)
    x = run.data.normalize(jnp.asarray(run.data.x_train[idx.reshape(-1)])).reshape(batches, bs, *run.data.image_shape)

    def average(params, others, x):
        def add(total, xb):
            o = recalibrate_bn(LoadedRun(run.cfg, run.data, run.graphdef, params, others), xb)
            return jax.tree.map(jnp.add, total, o), None

        total, _ = jax.lax.scan(add, jax.tree.map(jnp.zeros_like, others), x)
        return jax.tree.map(lambda t: t / batches, total)

    return jax.jit(average)(run.params, run.others, x)


# --------------------------------------------------------------------------- the block walker


@dataclass(frozen=True)
class BlockSpec:
    name: str  # stage2/block0
    residual: bool
    mode: str  # plain / identity / zero_pad / learned / learned_all
    shape_changes: bool


def block_specs(net) -> list[BlockSpec]:
    """Every block in forward order, read off the module tree."""
    from resexp.core.diagnostics import block_modes

    specs = []
    for (name, mode), first in zip(block_modes(net), _first_flags(net), strict=True):
        stage = net.stages[int(name.split("/")[0][5:]) - 1]
        k = stage.first.layer1.kernel
        changes = first and (
            k.shape[-2] != k.shape[-1] or (net.conv and name.startswith("stage") and not name.startswith("stage1/"))
        )
        specs.append(BlockSpec(name, mode != "plain", mode, bool(changes)))
    return specs


def _first_flags(net) -> list[bool]:
    flags = []
    for stage in net.stages:
        flags.append(True)
        if stage.rest is not None:
            flags += [False] * int(stage.rest.layer1.kernel.shape[0])
    return flags


def stem(net, x, train: bool = False):
    """The stem's output (relu(BN(conv(x)))): the input of the first block."""
    import jax

    x = x.astype(net.dtype)
    if not net.conv:
        x = x.reshape(x.shape[0], -1)
    return jax.nn.relu(net.stem_norm(net.stem(x), train))


def blocks_to_logits(net, h, step: Callable, per_block, *, train: bool = False, head: bool = True):
    """Run every block as `h, out = step(block, h, value_i, train)`, then pool and the head
    (`head=False`: the pooled features the head sees).

    `per_block` is a pytree whose leaves have a leading axis of one entry per block (in forward
    order); the scanned blocks of a stage get their slice as a scanned input, next to their
    stacked parameters. Returns (logits, outs stacked over blocks).
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    outs, i = [], 0
    for stage in net.stages:
        h, out = step(stage.first, h, jax.tree.map(lambda a, i=i: a[i], per_block), train)
        outs.append(jax.tree.map(lambda a: a[None], out))
        i += 1
        if stage.rest is None:
            continue
        n = int(stage.rest.layer1.kernel.shape[0])

        @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))
        def run(h, block, value):
            return step(block, h, value, train)

        h, out = run(h, stage.rest, jax.tree.map(lambda a, i=i, n=n: a[i : i + n], per_block))
        outs.append(out)
        i += n
    if net.conv:
        h = jnp.mean(h, axis=(1, 2))
    out = net.head(h).astype(jnp.float32) if head else h
    return out, jax.tree.map(lambda *a: jnp.concatenate(a), *outs)


def branch_and_shortcut(block, h, train: bool):
    """(F(h) with its rezero gate, Ws h) of a residual block."""
    f, _ = block.branch(h, train)
    if block.gate is not None:
        f = f * block.gate[...].astype(f.dtype)
    return f, block.shortcut(h, train)


def normalized_test(data, n: int | None = None):
    import jax.numpy as jnp

    x = data.x_test if n is None else data.x_test[:n]
    y = data.y_test if n is None else data.y_test[:n]
    return data.normalize(jnp.asarray(x)), jnp.asarray(y)


def test_set_size(config: dict) -> int:
    """Test examples of a run's dataset, from its config alone (no data loaded)."""
    data = config["data"]
    if data["name"] == "digits":
        return 297  # resexp.core.data.DIGITS_TEST (that module imports JAX; a cached answer must not)
    if data["name"] == "synthetic":
        return int(data["num_test"])
    return 10_000  # CIFAR-10/100, MNIST, Fashion-MNIST


def check_examples(examples: int | None, n_test: int, default: int, flag: str = "--examples") -> int:
    """`examples` test images, at most the test set; None means `default` capped at the test set."""
    if examples is None:
        return min(default, n_test)
    if examples < 1:
        raise AnalysisError(f"{flag} {examples}: must be at least 1")
    if examples > n_test:
        raise AnalysisError(f"{flag} {examples}: more than the {n_test} test examples")
    return examples


def fmt(value: float | None, spec: str = ".3f") -> str:
    """A number of a result for the terminal ("-" for None)."""
    return "-" if value is None else format(value, spec)


def fmt_ci(interval: list[float] | None, spec: str = ".3f") -> str:
    """ " [lo, hi]" of a result's interval for the terminal ("" for none)."""
    return "" if not interval else f" [{fmt(interval[0], spec)}, {fmt(interval[1], spec)}]"


def bn_note(result: dict) -> str:
    """ "; BN: ..." (which BN statistics an analysis used) for its terminal line."""
    return f"; BN: {result['bn_statistics']}" if result.get("bn_statistics") else ""


def timed(fn: Callable[[], dict]) -> dict:
    start = time.perf_counter()
    out = fn()
    out["seconds"] = round(time.perf_counter() - start, 3)
    return out


# --------------------------------------------------------------------------- the shared eval-mode forward

ACCEL_CHUNK = 16  # variants per step on a GPU/TPU (vmapped); on a CPU one (vmapped weights = grouped convs)
BATCH_CAP = 256  # examples per call of the shared program when the test set is larger than SMALL_TEST
SMALL_TEST = 512


def example_batch(n_test: int, examples: int) -> int:
    """Examples per call of `evaluate_variants`: a small test set in one batch (the digits' 297,
    as training's eval), else 256, never more than the analysis uses."""
    return min(n_test if n_test <= SMALL_TEST else BATCH_CAP, examples)


def pipelined(dispatches, total: int, progress: Callable[[int, int], None]) -> list:
    """Host copies of the results of `dispatches` (an iterator of jitted calls, dispatched as it is
    consumed), one call kept in flight: the device never waits for the host, and `progress` still
    counts finished calls."""
    import jax

    out, pending = [], None
    for done, result in enumerate(dispatches):
        if pending is not None:
            out.append(jax.device_get(pending))
            progress(done, total)
        pending = result
    if pending is not None:
        out.append(jax.device_get(pending))
        progress(total, total)
    return out


def committed_like(tree, like):
    """`tree` (NumPy) on the device of `like`'s arrays, committed as they are: a jitted program fed
    both a host-made input and, later, its own output, would otherwise compile twice."""
    import jax

    return jax.device_put(tree, jax.tree.leaves(like)[0].sharding)


def lesion_step(block, h, keep, train: bool):
    """The block, or what is left of it when deleted: relu(Ws h) (residual), h (plain)."""
    import jax
    import jax.numpy as jnp

    y, _ = block(h, train)
    # a shape-changing plain block is never deleted
    skip = jax.nn.relu(block.shortcut(h, train)) if block.residual else (h if h.shape == y.shape else y)
    return jnp.where(keep, y, skip), {}


def reorder_blocks(tree, order, n_per_stage: int):
    """Stacked block parameters gathered by `order` (global block indices, within-stage swaps only)."""
    import jax

    def gather(path, leaf):
        keys = [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]
        if "stages" not in keys or "rest" not in keys:
            return leaf
        stage = int(keys[keys.index("stages") + 1])
        local = order[stage * n_per_stage + 1 : (stage + 1) * n_per_stage] - (stage * n_per_stage + 1)
        return leaf[local]

    return jax.tree_util.tree_map_with_path(gather, tree)


@functools.lru_cache(maxsize=16)
def variant_program(graphdef, cal_graphdef, n_per_stage: int, chunk: int):
    """Jitted `(params, others, d1, d2, coords[C, 2], keeps[C, n], orders[C, n], x, y, x_cal)
    -> (loss[C, B], correct[C, B])`: per example, for each of C variants of the net, the weights
    params + a d1 + b d2, blocks reordered by `order` and deleted where `keep` is False.

    With `cal_graphdef` (a BN-momentum-0 graphdef) each variant first gets the BN statistics of its
    own activations on `x_cal` (a lesioned net recalibrated). Cached per architecture: the lesion
    study and the landscape of a run, and runs of one architecture, share the compiled program.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    def one(params, others, d1, d2, ab, keep, order, x, y, x_cal):
        a, b = ab[0], ab[1]
        p = jax.tree.map(lambda w, u, v: w + a.astype(w.dtype) * u + b.astype(w.dtype) * v, params, d1, d2)
        p, o = reorder_blocks(p, order, n_per_stage), reorder_blocks(others, order, n_per_stage)
        if cal_graphdef is not None:
            net = nnx.merge(cal_graphdef, p, o, copy=True)
            blocks_to_logits(net, stem(net, x_cal, True), lesion_step, keep, train=True)
            o = nnx.split(net, nnx.Param, ...)[2]
        net = nnx.merge(graphdef, p, o, copy=True)
        logits, _ = blocks_to_logits(net, stem(net, x), lesion_step, keep)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return loss, jnp.argmax(logits, -1) == y

    def program(params, others, d1, d2, coords, keeps, orders, x, y, x_cal):
        def variant(v):
            return one(params, others, d1, d2, *v, x, y, x_cal)

        if chunk == 1:
            loss, correct = variant(jax.tree.map(lambda a: a[0], (coords, keeps, orders)))
            return loss[None], correct[None]
        return jax.lax.map(variant, (coords, keeps, orders), batch_size=chunk)

    return jax.jit(program)


def evaluate_variants(
    run: LoadedRun,
    others,
    x,
    y,
    *,
    coords=None,
    keeps=None,
    orders=None,
    directions=None,
    x_cal=None,
):
    """(loss[M, N], correct[M, N]) of M variants of the net (see `variant_program`) on the N
    examples `x`, `y`: one compiled program, called on one variant chunk and one example batch at
    a time (reporting `run.progress`). Unset variant arrays default to the unmodified net."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    n_blocks = (run.cfg.model.depth - 2) // 2
    m = next(len(a) for a in (coords, keeps, orders) if a is not None)
    coords = np.zeros((m, 2), np.float32) if coords is None else np.asarray(coords, np.float32)
    keeps = np.ones((m, n_blocks), bool) if keeps is None else np.asarray(keeps, bool)
    orders = np.tile(np.arange(n_blocks), (m, 1)) if orders is None else np.asarray(orders)
    if directions is None:
        # Device arrays like the landscape's directions (NumPy inputs would compile the program again)
        zeros = committed_like(jax.tree.map(lambda w: np.zeros(w.shape, w.dtype), run.params), run.params)
        directions = (zeros, zeros)
    chunk = 1 if jax.default_backend() == "cpu" else ACCEL_CHUNK
    pad_m = -m % chunk
    coords, keeps, orders = (np.concatenate([a, np.repeat(a[-1:], pad_m, 0)]) for a in (coords, keeps, orders))
    n = int(x.shape[0])
    batch = example_batch(int(run.data.y_test.shape[0]), n)
    pad_n = -n % batch
    x = jnp.concatenate([x, jnp.repeat(x[-1:], pad_n, 0)]) if pad_n else x
    y = jnp.concatenate([y, jnp.repeat(y[-1:], pad_n, 0)]) if pad_n else y
    n_per_stage = (run.cfg.model.depth - 2) // (2 * len(run.cfg.model.widths))
    cal = graphdef_for(run.cfg, run.data, bn_momentum=0.0) if x_cal is not None else None
    program = variant_program(run.graphdef, cal, n_per_stage, chunk)
    x_cal = x_cal if x_cal is not None else x[:1]
    batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, n + pad_n, batch)]
    calls = [
        (i, xb, yb)
        for i in range(0, len(coords), chunk)
        for xb, yb in batches  # variant chunk i on every example batch, in order
    ]
    outs = pipelined(
        (
            program(
                run.params,
                others,
                *directions,
                coords[i : i + chunk],
                keeps[i : i + chunk],
                orders[i : i + chunk],
                xb,
                yb,
                x_cal,
            )
            for i, xb, yb in calls
        ),
        len(calls),
        run.progress,
    )
    per_batch = len(batches)
    losses = [np.concatenate([o[0] for o in outs[j : j + per_batch]], 1) for j in range(0, len(outs), per_batch)]
    correct = [np.concatenate([o[1] for o in outs[j : j + per_batch]], 1) for j in range(0, len(outs), per_batch)]
    return np.concatenate(losses)[:m, :n], np.concatenate(correct)[:m, :n]
