"""What every "why" analysis needs: a trained run loaded back, a block-by-block forward, BN
recalibration, and the cache/JSON/TensorBoard plumbing around a result.

The block walker (`blocks_to_logits`) is the one piece of model code here. It runs the very
modules of `resexp.models.Net` (stem, blocks, head), but lets an analysis decide what each block
does with its input, given a per-block value scanned alongside the stacked blocks: a keep-mask
(lesion), a stop-gradient mask (paths), nothing (signal propagation). Because the per-block
value is data, not structure, one compiled program serves every mask of an architecture.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resexp.errors import UserError

ANALYSIS_DIR = "analysis"
VERSION = 1  # bump when a computation changes: cached results from older code are recomputed
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


def result_path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / ANALYSIS_DIR / f"{name}.json"


def cached_result(name: str, info: RunInfo, options: dict) -> dict | None:
    """The stored result when it was computed from this checkpoint with these options, else None."""
    try:
        doc = json.loads(result_path(info.dir, name).read_text())
    except (OSError, ValueError):
        return None
    return doc if doc.get("cache_key") == cache_key(name, info, options) else None


def write_result(
    name: str, info: RunInfo, options: dict, result: dict, png: bytes | None, scalars: dict[str, float]
) -> dict:
    """analysis/<name>.json (+ .png) and TensorBoard scalars + image in the run directory.

    The TensorBoard file of an earlier result of this analysis is replaced, never added to.
    """
    from resexp.runs import write_json
    from resexp.tblog import EventWriter, event_files

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
        tmp = out / f".{name}.png.tmp"
        tmp.write_bytes(png)
        tmp.replace(out / f"{name}.png")
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

    cfg: Any  # resexp.config.Config
    data: Any  # resexp.data.Data
    graphdef: Any
    params: Any
    others: Any
    info: RunInfo | None = None

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

    from resexp import parallel
    from resexp.models import net_builder

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
    from resexp.checkpoint import Checkpoints
    from resexp.config import Config
    from resexp.data import load_data
    from resexp.train import Engine

    cfg = Config.model_validate(info.summary["config"])
    data = load_data(cfg.data, source=str(info.dir / "config.yaml"))
    engine = Engine(cfg, data)
    ckpts = Checkpoints(info.dir / "checkpoints")
    try:
        state, _ = ckpts.restore(info.checkpoint_step, engine.abstract_state)
    finally:
        ckpts.close()
    return LoadedRun(cfg, data, graphdef_for(cfg, data), state["params"], state["others"], info)


def init_run(cfg, data=None) -> LoadedRun:
    """The exact initialisation `resexp train` starts this config from (seed `train.seed`)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from resexp import parallel
    from resexp.data import load_data
    from resexp.models import net_builder

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
    from resexp.models import split_params

    return split_params(net)[2]


# --------------------------------------------------------------------------- the block walker


@dataclass(frozen=True)
class BlockSpec:
    name: str  # stage2/block0
    residual: bool
    mode: str  # plain / identity / zero_pad / learned / learned_all
    shape_changes: bool


def block_specs(net) -> list[BlockSpec]:
    """Every block in forward order, read off the module tree."""
    from resexp.diagnostics import _block_modes

    specs = []
    for (name, mode), first in zip(_block_modes(net), _first_flags(net), strict=True):
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
        return 297  # resexp.data.DIGITS_TEST (that module imports JAX; a cached answer must not)
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


def timed(fn: Callable[[], dict]) -> dict:
    start = time.perf_counter()
    out = fn()
    out["seconds"] = round(time.perf_counter() - start, 3)
    return out
