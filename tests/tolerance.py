"""Float tolerances measured on the machine the test runs on, never tuned on another one.

Two *different* programs (sharded vs one device, seeds looped vs alone, a custom conv vs
XLA's) sum in different orders, and each CPU picks its own kernels, blocking and order, so
their last bits differ by an amount no flag reproduces elsewhere; training then amplifies
that difference step by step (BN at a high learning rate most of all). A fixed rtol chosen
on one machine is a guess about every other one. Instead a test measures the noise scale:

* trajectories: run the reference program again from parameters moved by one ulp in
  random directions (`nudge_ulp`); how far the two drift apart, step by step, is how far
  rounding alone carries this program on this machine (`drift`);
* single computations: compute the exact answer in higher precision; the reference's own
  distance from it is its rounding error on this machine (`spread`).

The compared program must then stay within a stated multiple of that scale plus a small
floor (`assert_within_noise`), which still catches a real bug: per-device BN statistics,
for one, move the first loss ~1000x further than rounding does (tests/test_perf.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# One ulp in float32 is ~6e-8 relative; a few of them is the least two summation orders differ by.
FLOOR = 1e-6


def nudge_ulp(tree, seed: int = 1234):
    """Every floating leaf moved by one ulp, up or down at random: a harmless perturbation."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    out = []
    for leaf, key in zip(leaves, keys, strict=False):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating):
            up = jax.random.bernoulli(key, 0.5, leaf.shape)
            leaf = jnp.nextafter(leaf, jnp.where(up, jnp.inf, -jnp.inf).astype(leaf.dtype))
        out.append(leaf)
    return jax.tree.unflatten(treedef, out)


def drift(reference, nudged) -> np.ndarray:
    """|reference - nudged| per step (last axis), as a running maximum: the noise scale by step t."""
    diff = np.abs(np.asarray(reference, np.float64) - np.asarray(nudged, np.float64))
    return np.maximum.accumulate(diff, axis=-1) if diff.ndim else diff


def spread(reference, other) -> float:
    """The largest |reference - other|: the noise scale between the reference and a nudged rerun of
    it (one number for a set of values that is not a trajectory), or its rounding error when
    `other` is a higher-precision computation of the same thing."""
    return float(np.max(np.abs(np.asarray(reference, np.float64) - np.asarray(other, np.float64))))


def within_noise(got, want, noise, *, multiple: float, floor: float = FLOOR) -> np.ndarray:
    """Elementwise: |got - want| <= multiple * noise + floor * |want|."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.abs(got - want) <= multiple * np.asarray(noise, np.float64) + floor * np.abs(want)


def assert_within_noise(got, want, noise, *, multiple: float, floor: float = FLOOR, what: str = "") -> None:
    ok = within_noise(got, want, noise, multiple=multiple, floor=floor)
    if not np.all(ok):
        got, want = np.broadcast_to(np.asarray(got, np.float64), ok.shape), np.asarray(want, np.float64)
        i = np.unravel_index(np.argmin(ok), ok.shape)
        raise AssertionError(
            f"{what or 'values'} differ beyond {multiple:g} x the noise measured on this machine + {floor:g} "
            f"relative: at {i}: {got[i]!r} vs {np.broadcast_to(want, ok.shape)[i]!r} "
            f"(|diff| {abs(got[i] - np.broadcast_to(want, ok.shape)[i]):.3g}, noise "
            f"{np.broadcast_to(np.asarray(noise, np.float64), ok.shape)[i]:.3g})"
        )


def exact_in_float64(fn, *args):
    """`fn(*args)` with every floating input widened to float64 (64-bit JAX inside): the
    higher-precision answer a float32 computation is measured against. Returns numpy float64."""

    def wide(a):
        return np.asarray(a, np.float64) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a

    with jax.enable_x64(True):
        out = fn(*jax.tree.map(wide, args))
        return jax.tree.map(lambda a: np.asarray(a, np.float64), out)
