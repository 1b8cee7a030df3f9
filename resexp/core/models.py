"""Plain and residual networks: the He et al. (2016) CIFAR family and the lecture's MLP.

Both families share one shape: a stem layer, `len(widths)` stages of `n` two-layer
blocks, a classifier head; depth = 2 * stages * n + 2 weight layers (6n+2 for the
CIFAR widths 16/32/64). `shortcut=False` gives the plain net with the very same layers.

A residual block computes  a[l+2] = relu(F(a[l]) + Ws a[l]),  F = the two-layer branch.
Ws is the identity when shapes agree; where they change it is a zero-pad ("option A"),
a learned 1x1 conv / dense + BN ("option B"), or learned on every block ("option C").

Speed: blocks 2..n of a stage are identical, so their parameters are stacked and run
under `nnx.scan`; compile time is then flat in depth (ResNet-110 compiles like ResNet-20).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import jax
import jax.numpy as jnp
from flax import nnx

from resexp.core.config import ModelConfig
from resexp.core.variants import ShortcutOption

HE_INIT = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")  # He et al. 2015
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _fro(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))


def _std(x: jax.Array) -> jax.Array:
    return jnp.std(x.astype(jnp.float32))


Layer = Callable[..., nnx.Module]  # (in, out, *, strides=1, rngs) -> a conv or dense layer, as nnx.Conv takes them
NormLayer = Callable[..., nnx.Module]  # (features, *, scale_init, rngs) -> a norm layer, as nnx.BatchNorm takes them


def dense(in_features: int, out_features: int, *, strides: int = 1, **kwargs: Any) -> nnx.Linear:
    """nnx.Linear called like nnx.Conv, so one block builds either family from its layer factory."""
    assert strides == 1, "a dense layer has no stride"
    return nnx.Linear(in_features, out_features, **kwargs)


class Norm(nnx.Module):
    """A norm layer from its factory, or nothing (`norm: none`): one place so blocks read the same either way."""

    def __init__(self, features: int, make: NormLayer | None, *, zero_scale: bool = False, rngs: nnx.Rngs):
        scale_init = nnx.initializers.zeros if zero_scale else nnx.initializers.ones
        self.bn = make(features, scale_init=scale_init, rngs=rngs) if make is not None else None

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return x if self.bn is None else self.bn(x, use_running_average=not train)


class Shortcut(nnx.Module):
    """Ws: identity, option A (subsample + zero-pad channels) or a learned projection + norm."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        *,
        option: ShortcutOption,
        proj: Layer,
        norm: NormLayer | None,
        rngs: nnx.Rngs,
    ):
        shape_changes = cin != cout or stride != 1
        learned = option.learned(shape_changes)
        self.mode = "learned" if learned else ("zero_pad" if shape_changes else "identity")
        self.stride, self.pad = stride, cout - cin
        self.proj: nnx.Module | None = nnx.data(None)
        self.proj_norm: Norm | None = nnx.data(None)
        if learned:
            self.proj = proj(cin, cout, strides=stride, rngs=rngs)
            self.proj_norm = Norm(cout, norm, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.mode == "learned":
            assert self.proj is not None and self.proj_norm is not None
            return self.proj_norm(self.proj(x), train)
        if self.mode == "zero_pad":
            if x.ndim == 4 and self.stride > 1:
                x = x[:, :: self.stride, :: self.stride, :]
            if self.pad:
                x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, self.pad)])
        return x


class Block(nnx.Module):
    """Two weight layers with a norm after each; relu(F(x) + Ws x), or relu(F(x)) when plain.

    Its layers come from factories (`layer`, `norm`, `shortcut`), as in flax's ImageNet ResNet:
    the net decides conv or dense, BN or none, once; a block only wires them.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        *,
        layer: Layer,
        norm: NormLayer | None,
        shortcut: Callable[..., Shortcut] | None,  # (cin, cout, stride, *, rngs); None: a plain block
        zero_init_residual: bool = False,
        rezero: bool = False,
        rngs: nnx.Rngs,
    ):
        residual = shortcut is not None
        self.layer1 = layer(cin, cout, strides=stride, rngs=rngs)
        self.norm1 = Norm(cout, norm, rngs=rngs)
        self.layer2 = layer(cout, cout, rngs=rngs)
        self.norm2 = Norm(cout, norm, zero_scale=zero_init_residual and residual, rngs=rngs)
        self.residual = residual
        self.shortcut = shortcut(cin, cout, stride, rngs=rngs) if shortcut is not None else None
        self.gate = nnx.Param(jnp.zeros((), jnp.float32)) if rezero and residual else None

    def branch(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        """F(x) and the first layer's normalised response (for the He et al. Fig. 7 stds)."""
        r1 = self.norm1(self.layer1(x), train)
        return self.norm2(self.layer2(jax.nn.relu(r1)), train), r1

    def __call__(self, x: jax.Array, train: bool, collect: bool = False):
        f, r1 = self.branch(x, train)
        stats = {"response_std": jnp.stack([_std(r1), _std(f)])} if collect else None
        if self.shortcut is None:
            return jax.nn.relu(f), stats
        gated = f * self.gate[...].astype(f.dtype) if self.gate is not None else f
        s = self.shortcut(x, train)
        if stats is not None:  # how far this block is from the identity: ||F(x)|| / ||Ws x||
            stats["residual_ratio"] = _fro(gated) / (_fro(s) + 1e-12)
        return jax.nn.relu(gated + s), stats


class Stage(nnx.Module):
    """One width: a first block (which may change shape), then n-1 identical blocks under scan."""

    def __init__(self, make_block: Callable[[bool, nnx.Rngs], Block], n: int, unroll: int | bool, rngs: nnx.Rngs):
        self.first = make_block(True, rngs)
        self.unroll = unroll

        @nnx.split_rngs(splits=max(n - 1, 1))
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_rest(r: nnx.Rngs) -> Block:
            return make_block(False, r)

        self.rest = nnx.data(make_rest(rngs) if n > 1 else None)

    def __call__(self, x: jax.Array, train: bool, collect: bool):
        x, first = self.first(x, train, collect)
        if self.rest is None:
            return x, _stack_stats([first])

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0), unroll=self.unroll)
        def run(h, block):
            return block(h, train, collect)

        x, rest = run(x, self.rest)
        return x, _stack_stats([first], rest)


def _stack_stats(first: list, rest: dict | None = None) -> dict | None:
    if first[0] is None:
        return None
    out = {}
    for k, v in first[0].items():
        parts = [v[None]] + ([rest[k]] if rest is not None else [])
        out[k] = jnp.concatenate(parts, axis=0)
    return out


class Net(nnx.Module):
    """A plain or residual network of either family, built from a `ModelConfig`."""

    def __init__(
        self,
        cfg: ModelConfig,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        dtype: str = "float32",
        platform: str | None = None,  # the backend the program is built for: how "auto" unrolls
        rngs: nnx.Rngs,
    ):
        dt = DTYPES[dtype]
        self.kind, self.dtype = cfg.kind, dt
        self.conv = cfg.kind == "cnn"
        w0 = cfg.widths[0]
        weights = {"use_bias": cfg.norm == "none", "kernel_init": HE_INIT, "dtype": dt}
        if self.conv:
            layer: Layer = partial(nnx.Conv, kernel_size=(3, 3), padding=((1, 1), (1, 1)), **weights)
            proj: Layer = partial(nnx.Conv, kernel_size=(1, 1), padding="VALID", **weights)
            cin = input_shape[-1]
        else:
            layer = proj = partial(dense, **weights)
            cin = 1
            for d in input_shape:
                cin *= d
        norm = partial(nnx.BatchNorm, momentum=0.9, epsilon=1e-5, dtype=dt) if cfg.norm == "batch" else None
        shortcut = (
            partial(Shortcut, option=ShortcutOption(cfg.projection), proj=proj, norm=norm) if cfg.shortcut else None
        )
        block = partial(
            Block,
            layer=layer,
            norm=norm,
            shortcut=shortcut,
            zero_init_residual=cfg.zero_init_residual,
            rezero=cfg.rezero,
        )
        self.stem = layer(cin, w0, rngs=rngs)
        self.stem_norm = Norm(w0, norm, rngs=rngs)
        stages = []
        prev = w0
        for i, width in enumerate(cfg.widths):
            stride = 2 if (self.conv and i > 0) else 1

            def make_block(first: bool, r: nnx.Rngs, prev=prev, width=width, stride=stride) -> Block:
                return block(prev if first else width, width, stride if first else 1, rngs=r)

            stages.append(Stage(make_block, cfg.blocks_per_stage, scan_unroll(cfg, platform), rngs))
            prev = width
        self.stages = nnx.List(stages)
        self.head = nnx.Linear(prev, num_classes, dtype=dt, rngs=rngs)

    def forward(self, x: jax.Array, train: bool = False, collect: bool = False):
        """Logits, plus per-block statistics when `collect` (residual ratios, response stds)."""
        x = x.astype(self.dtype)
        if not self.conv:
            x = x.reshape(x.shape[0], -1)
        stem = self.stem_norm(self.stem(x), train)
        x = jax.nn.relu(stem)
        per_stage = []
        for stage in self.stages:
            x, stats = stage(x, train, collect)
            per_stage.append(stats)
        if self.conv:
            x = jnp.mean(x, axis=(1, 2))
        logits = self.head(x).astype(jnp.float32)
        if not collect:
            return logits, None
        stats = {k: jnp.concatenate([s[k] for s in per_stage]) for k in per_stage[0]}
        stats["response_std"] = jnp.concatenate([_std(stem)[None], stats["response_std"].reshape(-1)])
        return logits, stats

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.forward(x, train)[0]


def scan_unroll(cfg: ModelConfig, platform: str | None = None) -> int | bool:
    """`model.scan_unroll` for the backend the program is built for ("auto" resolved)."""
    if cfg.scan_unroll != "auto":
        return cfg.scan_unroll
    return 1 if (platform or jax.default_backend()) == "cpu" else True


def net_builder(
    cfg: ModelConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    dtype: str = "float32",
    platform: str | None = None,
) -> Callable[[jax.Array], Net]:
    """seed -> Net, traceable: the engine jits and vmaps it, so init is one compiled program.

    The parameter RNG is XLA's RngBitGenerator ("rbg"): threefry's init code takes ~5x
    longer to compile for a ResNet's many parameter shapes. (Data order and augmentation
    keep threefry keys, which are stable under vmap.)
    """

    def build(seed: jax.Array) -> Net:
        rngs = nnx.Rngs(params=jax.random.key(seed, impl="rbg"))
        return Net(cfg, input_shape, num_classes, dtype=dtype, platform=platform, rngs=rngs)

    return build


def build_model(
    cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, *, seed: int, dtype: str = "float32"
) -> Net:
    """A concrete model with exactly the parameters a training run with this seed starts from."""
    build = net_builder(cfg, input_shape, num_classes, dtype=dtype)
    graphdef = nnx.split(nnx.eval_shape(lambda: build(jnp.int32(0))))[0]
    state = jax.jit(lambda s: nnx.split(build(s))[1])(jnp.int32(seed))
    return nnx.merge(graphdef, state)


def count_params(model: nnx.Module) -> int:
    """Trainable parameters (BN running statistics are not parameters, as in the paper)."""
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


# --------------------------------------------------------------------------- introspection


def iter_blocks(model: Net) -> Iterator[tuple[str, Block]]:
    """Every block in order, the scanned ones unstacked: `("stage2/block0", block)`.

    Lets diagnostics and the identity check walk the net block by block, independently
    of the scan used for speed.
    """
    for si, stage in enumerate(model.stages, start=1):
        yield f"stage{si}/block0", stage.first
        if stage.rest is None:
            continue
        graphdef, state = nnx.split(stage.rest)
        count = jax.tree.leaves(state)[0].shape[0]
        for i in range(count):
            yield f"stage{si}/block{i + 1}", nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))


@dataclass(frozen=True)
class LayerRow:
    name: str
    output_shape: tuple[int, ...]
    params: int
    macs: int  # multiply-accumulates per example


def layer_table(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> list[LayerRow]:
    """The architecture as rows, computed arithmetically (no tracing): shapes, params, MACs."""
    rows: list[LayerRow] = []
    bn = cfg.norm == "batch"
    conv = cfg.kind == "cnn"

    def norm_params(c: int) -> int:
        return 2 * c if bn else 0

    if conv:
        h, w, c = input_shape
        k = 9 * c * cfg.widths[0]
        rows.append(
            LayerRow(
                "stem conv3x3",
                (h, w, cfg.widths[0]),
                k + (0 if bn else cfg.widths[0]) + norm_params(cfg.widths[0]),
                h * w * k,
            )
        )
    else:
        size = 1
        for d in input_shape:
            size *= d
        k = size * cfg.widths[0]
        rows.append(
            LayerRow("stem dense", (cfg.widths[0],), k + (0 if bn else cfg.widths[0]) + norm_params(cfg.widths[0]), k)
        )
        h = w = 1
    prev = cfg.widths[0]
    n = cfg.blocks_per_stage
    for si, width in enumerate(cfg.widths, start=1):
        for b in range(n):
            cin = prev if b == 0 else width
            stride = 2 if (conv and si > 1 and b == 0) else 1
            if conv:
                h, w = -(-h // stride), -(-w // stride)
                shape: tuple[int, ...] = (h, w, width)
                k1, k2 = 9 * cin * width, 9 * width * width
                macs = h * w * (k1 + k2)
            else:
                shape = (width,)
                k1, k2 = cin * width, width * width
                macs = k1 + k2
            params = k1 + k2 + (0 if bn else 2 * width) + 2 * norm_params(width)
            changes = cin != width or stride != 1
            if cfg.shortcut and ShortcutOption(cfg.projection).learned(changes):
                params += cin * width + (0 if bn else width) + norm_params(width)
                macs += (h * w if conv else 1) * cin * width
            if cfg.shortcut and cfg.rezero:
                params += 1
            kind = (
                "plain"
                if not cfg.shortcut
                else (
                    "Ws learned"
                    if params > k1 + k2 + 2 * norm_params(width) + (0 if bn else 2 * width) + (1 if cfg.rezero else 0)
                    else ("Ws zero-pad" if changes else "identity")
                )
            )
            rows.append(LayerRow(f"stage{si}/block{b} ({kind})", shape, params, macs))
        prev = width
    rows.append(
        LayerRow(
            "pool + dense head" if conv else "dense head",
            (num_classes,),
            prev * num_classes + num_classes,
            prev * num_classes,
        )
    )
    return rows


def split_params(model: nnx.Module) -> tuple[Any, Any, Any]:
    """(graphdef, parameters, everything else: BN statistics, RNG state), the three parts the
    engine keeps apart (nnx.split's own signature is variadic)."""
    return cast(tuple[Any, Any, Any], nnx.split(model, nnx.Param, ...))


# --------------------------------------------------------------------------- BN statistics


def set_bn_momentum(model: nnx.Module, momentum: float) -> None:
    """Set every BatchNorm's running-average momentum (a static attribute: call before tracing
    the forward that should use it). Momentum 0 makes a train-mode forward *set* the running
    statistics to the batch's."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.BatchNorm):
            module.momentum = momentum


def has_batch_norm(model: nnx.Module) -> bool:
    return any(isinstance(m, nnx.BatchNorm) for _, m in nnx.iter_modules(model))


def precise_bn_statistics(graphdef, params, others, batch: Callable[[jax.Array], jax.Array], batches: int):
    """`others` with every BN's running mean and variance replaced by their average over
    `batches` train-mode forwards of the frozen weights ("precise BN", pycls/detectron2).

    `batch(i)` is the i-th normalised input batch (traceable). Each batch is normalised by its
    own statistics, as in training, and the per-batch means and (biased) variances are averaged
    with equal weight: what the running averages estimate, without their lag behind weights that
    moved during the last ~10 steps (momentum 0.9). Traceable; the weights are not changed.
    """
    model = nnx.merge(graphdef, params, others, copy=True)
    set_bn_momentum(model, 0.0)
    stats_def, frozen, stats, rest = cast(tuple[Any, Any, Any, Any], nnx.split(model, nnx.Param, nnx.BatchStat, ...))

    def add(total, i):
        net = nnx.merge(stats_def, frozen, stats, rest, copy=True)
        net(batch(i), train=True)
        return jax.tree.map(jnp.add, total, nnx.state(net, nnx.BatchStat)), None

    total, _ = jax.lax.scan(add, jax.tree.map(jnp.zeros_like, stats), jnp.arange(batches))
    target = nnx.merge(graphdef, params, others, copy=True)  # momentum as trained
    nnx.update(target, jax.tree.map(lambda t: t / batches, total))
    return split_params(target)[2]
