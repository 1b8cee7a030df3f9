"""How a training program meets the hardware: data parallelism, and a CPU-friendly conv.

* `DataParallel`: with several devices (and one seed per program), the batch is sharded
  along a `data` mesh axis while parameters, optimizer state and the dataset are
  replicated. Under `jit` XLA's SPMD partitioner turns every reduction over the batch
  into a cross-device all-reduce, so BatchNorm's batch statistics and the loss are
  those of the *global* batch: training on N devices computes what one device would.
  Multi-host works the same way after `jax.distributed.initialize()`: `jax.devices()`
  is then every process's devices and the mesh spans them all.

* `conv_general_dilated`: `lax.conv_general_dilated` with a custom VJP whose two
  backward convolutions are written in XLA:CPU's canonical (NHWC x HWIO) form. XLA:CPU
  canonicalises convolutions only outside loops, so the backward convs of a ResNet
  stage run under `scan` (input-grad with a transposed kernel, kernel-grad with batch
  as the contracted feature) fall back to a naive loop nest: 10-30x slower on this
  model (jax-ml/jax#12868). Written canonically they hit the Eigen kernels again.
  `use_fast_conv` swaps it into every `nnx.Conv` of a model; the Engine does so only for
  programs built for CPU (`Engine.platform`), so GPU/TPU programs keep lax's own convs.
  Where resexp's oneDNN extension loads (`resexp.core.onednn_conv`), float32 2-D convs skip
  Eigen altogether: forward and both gradients are oneDNN primitives (1.35-1.58x a
  ResNet-20 step on an AVX-512 CPU; docs/performance.md "oneDNN convolutions on the CPU").
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
KERNEL_GRAD_GROUP = 8  # images per kernel-gradient conv on CPU (measured best for 8..32 px CIFAR stages)
# Where 2-D float32 convs go on the CPU, read when a program is traced: "auto" (oneDNN's kernels
# through resexp.core.onednn_conv where its extension loads, else XLA's), "onednn" or "xla".
CPU_CONV = os.environ.get("RESEXP_CPU_CONV", "auto")
_XLA_ONLY = threading.local()


@contextlib.contextmanager
def xla_convs():
    """Trace the programs made inside on XLA's convolutions (resexp's canonical VJP), not oneDNN's:
    forward-over-reverse (the Hessian's jvp of grad) cannot differentiate oneDNN's custom calls."""
    before = getattr(_XLA_ONLY, "on", False)
    _XLA_ONLY.on = True
    try:
        yield
    finally:
        _XLA_ONLY.on = before


# --------------------------------------------------------------------------- data parallelism


class DataParallel:
    """A 1-D `data` mesh over `devices`: batch sharded, everything else replicated."""

    def __init__(self, devices: Sequence[jax.Device]):
        self.devices = list(devices)
        self.mesh = Mesh(np.asarray(self.devices), (DATA_AXIS,))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch = NamedSharding(self.mesh, P(DATA_AXIS))
        self._placed: dict[int, tuple[Any, Any]] = {}  # id(source) -> (source, replicated copy)

    @property
    def size(self) -> int:
        return len(self.devices)

    def shard_batch(self, *xs: jax.Array):
        """Inside a jitted function: lay the leading (batch) axis along the `data` axis."""
        out = tuple(lax.with_sharding_constraint(x, self.batch) for x in xs)
        return out if len(out) > 1 else out[0]

    def divides(self, n: int) -> bool:
        return n % self.size == 0

    def replicate(self, x: jax.Array):
        """A copy of `x` on every device of the mesh (no-op if it already is)."""
        if isinstance(x, jax.Array) and x.sharding == self.replicated:
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, self.replicated)
        host = np.asarray(x)  # multi-host: every process holds the same full array
        return jax.make_array_from_callback(host.shape, self.replicated, lambda idx: host[idx])

    def place(self, tree):
        """Replicate a pytree of arguments, remembering big inputs (the dataset) across calls."""

        def one(x):
            if not isinstance(x, jax.Array) or x.sharding == self.replicated:
                return x
            if x.size >= 4096:
                hit = self._placed.get(id(x))
                if hit is not None and hit[0] is x:
                    return hit[1]
                placed = self.replicate(x)
                self._placed[id(x)] = (x, placed)  # holds `x`, so its id is not reused
                return placed
            return self.replicate(x)

        return jax.tree.map(one, tree)

    def jit(self, fn: Callable, **kwargs):
        """`jax.jit` with every input and output replicated (the batch is sharded inside)."""
        return jax.jit(fn, in_shardings=self.replicated, out_shardings=self.replicated, **kwargs)

    def abstract(self, tree):
        """ShapeDtypeStructs carrying the replicated sharding, for AOT lowering."""
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.replicated), tree)

    def wrap(self, compiled) -> Callable:
        """The compiled program, called with arguments placed where it expects them."""

        @functools.wraps(compiled)
        def call(*args):
            return compiled(*self.place(args))

        call.compiled = compiled  # type: ignore[attr-defined]
        return call


def data_parallel(
    batch_size: int, *, seeds: int = 1, devices: Sequence[jax.Device] | None = None, enabled: bool | None = None
) -> DataParallel | None:
    """A `DataParallel` over all devices when it applies, else None (one device does it all).

    Applies when there is more than one device, one seed per program (vmapped seeds are
    already a batch of programs), and the batch splits evenly. `enabled=False` forces it off,
    `True` raises if it cannot apply.
    """
    devices = list(devices if devices is not None else jax.devices())
    reasons = []
    if len(devices) < 2:
        reasons.append("only one device")
    if seeds > 1:
        reasons.append(f"{seeds} vmapped seeds")
    if devices and batch_size % len(devices):
        reasons.append(f"batch size {batch_size} is not a multiple of {len(devices)} devices")
    if enabled is False or (enabled is None and reasons):
        return None
    if reasons:
        raise ValueError("data parallelism does not apply: " + "; ".join(reasons))
    return DataParallel(devices)


# --------------------------------------------------------------------------- a conv XLA:CPU likes


def _channels_last(nd: int) -> lax.ConvDimensionNumbers:
    spatial = tuple(range(1, nd + 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, nd + 1, *spatial), rhs_spec=(nd + 1, nd, *range(nd)), out_spec=(0, nd + 1, *spatial)
    )


def _conv(x, w, strides, padding, rhs_dilation=None, lhs_dilation=None):
    nd = x.ndim - 2
    return lax.conv_general_dilated(
        x,
        w,
        strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=_channels_last(nd),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _canonical_conv(x, w, strides, padding):
    return _conv(x, w, strides, padding)


def _canonical_fwd(x, w, strides, padding):
    return _conv(x, w, strides, padding), (x, w)


def _canonical_bwd(strides, padding, res, dy):
    x, w = res
    nd = x.ndim - 2
    in_sp, k_sp, out_sp = x.shape[1:-1], w.shape[:nd], dy.shape[1:-1]
    # d/dx: correlate the stride-dilated dy with the flipped kernel, in/out features swapped.
    w_t = jnp.swapaxes(jnp.flip(w, tuple(range(nd))), -1, -2)
    pads = []
    for n, k, o, s, (lo, _) in zip(in_sp, k_sp, out_sp, strides, padding, strict=True):
        dilated = (o - 1) * s + 1
        pads.append((k - 1 - lo, n - dilated + lo))
    dx = _conv(dy, w_t, (1,) * nd, pads, lhs_dilation=strides)
    # d/dw[k, i, o] = sum_{b, p} x_pad[b, p*s + k, i] dy[b, p, o]: a conv whose "batch" is the
    # input feature i, whose features are the batch b, and whose kernel is dy (dilated by s).
    # Eigen runs that conv 5-15x faster on groups of KERNEL_GRAD_GROUP images than on all
    # of them at once (the whole batch as the reduction blows the caches), so scan the groups.
    pads = [
        (lo, k + (o - 1) * s - n - lo)
        for n, k, o, s, (lo, _) in zip(in_sp, k_sp, out_sp, strides, padding, strict=True)
    ]

    def kernel_grad(xg, dyg):
        x_t = jnp.moveaxis(xg, (0, -1), (-1, 0))  # (I, *spatial, b)
        dy_t = jnp.moveaxis(dyg, 0, -2)  # (*out_spatial, b, O)
        return _conv(x_t, dy_t, (1,) * nd, pads, rhs_dilation=strides).astype(jnp.float32)  # (I, *kernel, O)

    batch = x.shape[0]
    group = max(g for g in range(1, min(KERNEL_GRAD_GROUP, batch) + 1) if batch % g == 0)
    if group == batch:
        dw = kernel_grad(x, dy)
    else:
        split = lambda a: a.reshape(batch // group, group, *a.shape[1:])  # noqa: E731
        acc = jnp.zeros((x.shape[-1], *k_sp, dy.shape[-1]), jnp.float32)
        dw = lax.scan(lambda acc, xd: (acc + kernel_grad(*xd), None), acc, (split(x), split(dy)))[0]
    return dx.astype(x.dtype), jnp.moveaxis(dw, 0, -2).astype(w.dtype)


_canonical_conv.defvjp(_canonical_fwd, _canonical_bwd)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
    **kwargs,
):
    """Drop-in for `lax.conv_general_dilated` (as `nnx.Conv` calls it); canonical VJP on CPU.

    Takes the fast path for the plain case (channels-last, no dilation or groups, same
    dtypes) on the CPU backend; anything else is passed to `lax.conv_general_dilated`.
    """
    nd = lhs.ndim - 2
    plain = (
        jax.default_backend() == "cpu"
        and feature_group_count == 1
        and batch_group_count == 1
        and precision is None
        and preferred_element_type is None
        and kwargs.get("out_sharding") is None
        and all(d == 1 for d in (lhs_dilation or ()))
        and all(d == 1 for d in (rhs_dilation or ()))
        and lhs.dtype == rhs.dtype
        and dimension_numbers is not None
        and tuple(dimension_numbers) == tuple(_channels_last(nd))
    )
    if not plain:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
            **kwargs,
        )
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:nd], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if nd == 2 and lhs.dtype == jnp.float32 and not getattr(_XLA_ONLY, "on", False) and cpu_conv_path() == "onednn":
        from resexp.core import onednn_conv

        return onednn_conv.conv(lhs, rhs, strides, pads)
    return _canonical_conv(lhs, rhs, strides, pads)


def cpu_conv_path() -> str:
    """Whose kernels run this process's float32 2-D convs on the CPU: "onednn" or "xla"."""
    if CPU_CONV == "xla":
        return "xla"
    from resexp.core import onednn_conv

    return "onednn" if onednn_conv.available() else "xla"


def use_fast_conv(model) -> Any:
    """Point every `nnx.Conv` of `model` at `conv_general_dilated` (in place); returns the model."""
    from flax import nnx

    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Conv) and module.conv_general_dilated is lax.conv_general_dilated:
            module.conv_general_dilated = conv_general_dilated
    return model


def fast_conv_builder(build: Callable[[jax.Array], Any]) -> Callable[[jax.Array], Any]:
    """Wrap a `seed -> Net` builder so the nets it builds use `conv_general_dilated`."""

    @functools.wraps(build)
    def wrapped(seed):
        return use_fast_conv(build(seed))

    return wrapped
