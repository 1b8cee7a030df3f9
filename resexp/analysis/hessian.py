"""Sharpness: the largest eigenvalue of the loss Hessian, by power iteration on Hessian-vector
products (forward-over-reverse: `jvp` of `grad`), next to the SGD + momentum stability limit
2(1 + beta) / eta: curvature above it makes gradient descent with that step size unstable along
the top eigenvector.

Caveat (PyHessian, Yao et al. 2020): with BN the loss is invariant to a kernel's scale, so
lambda_max scales as 1/||W||^2 and compares nets only at comparable weight norms.

The examples are cut into groups of `GROUP_SIZE` (the last one padded with weight 0). One
compiled program per architecture, whatever the number of examples, adds one group's share of
Hv to a running sum; the host loops over groups and iterations (progress and time left). In
eval mode the loss is a mean over independent examples, so v.Hv is the size-weighted mean of the
groups' v.H_g v, and their standard error at the last v is what the sample of examples leaves
uncertain, at no extra cost.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from resexp.analysis import stats
from resexp.analysis.common import (
    AnalysisError,
    RunInfo,
    bn_note,
    bn_statistics,
    committed_like,
    eval_sample_options,
    fmt,
)

NAME = "hessian"
EXAMPLES = 256  # default sample: the first N test images (docs/why-lab.md "Time")
SWEEP_OPTIONS: dict[str, Any] = {}
VS_DEPTH = "hessian_vs_depth.png"
POINT_KEYS = ("sgd_stability_limit", "lambda_max_standard_error", "bn_statistics")
GROUP_SIZE = 32  # examples per call of the compiled step; 256 examples make 8 groups
# Stop once two successive steps change lambda by less than this (relative). Power iteration
# rises to lambda from below: on the Fashion-MNIST depth-56 nets it then stood within 0.5 % of
# its 20-step value, against a sampling standard error of 6-9 % (256 examples).
TOLERANCE = 5e-3


def prepare(info: RunInfo, iters: int = 20, examples: int | None = None, precise_bn_batches: int | None = None) -> dict:
    if iters < 1:
        raise AnalysisError(f"--iters {iters}: must be at least 1")
    sample, bn = eval_sample_options(info, examples, precise_bn_batches, EXAMPLES)
    examples = sample["examples"]
    if examples <= GROUP_SIZE:
        raise AnalysisError(
            f"--examples {examples}: the Hessian needs more than {GROUP_SIZE} (two groups of examples, for "
            "the standard error)"
        )
    return {"iters": iters, **sample, **bn, "seed": 0}


def _vdot(a, b):
    import jax
    import jax.numpy as jnp

    return sum(
        jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def random_direction(params, seed: int):
    """The power iteration's start: a Gaussian vector shaped like `params` (NumPy: no compile)."""
    import jax

    rng = np.random.default_rng(seed)
    return committed_like(jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(p.dtype), params), params)


def split_groups(x, y, size: int = GROUP_SIZE):
    """x, y (NumPy) cut into groups of `size`, (groups, size, ...), with weights 1 for examples
    and 0 for the padding of the last group."""
    n = x.shape[0]
    groups = -(-n // size)
    pad = size * groups - n
    weights = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]).reshape(groups, size)
    xs = np.concatenate([x, np.repeat(x[-1:], pad, 0)]).reshape(groups, size, *x.shape[1:])
    ys = np.concatenate([y, np.repeat(y[-1:], pad, 0)]).reshape(groups, size)
    return xs, ys, weights


@functools.lru_cache(maxsize=16)  # one compiled program per architecture, whichever run asks
def group_step_fn(graphdef):
    """Jitted `(params, others, x, y, w, total, v, hv) -> (hv + H_g v, v.H_g v)`: one group's share of
    the Hessian-vector product of the mean loss over `total` examples (eval-mode BN), v normalised
    first, and the group's own Rayleigh quotient (its mean loss's)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    def step(params, others, x, y, w, total, v, hv):
        norm = jnp.sqrt(_vdot(v, v))
        v = jax.tree.map(lambda t: t / norm, v)

        def loss(p):  # the group's share of the mean loss over all examples
            logits = nnx.merge(graphdef, p, others, copy=True)(x, train=False)
            return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y) * w) / total

        hv_g = jax.jvp(jax.grad(loss), (params,), (v,))[1]
        share = jnp.sum(w) / total
        return jax.tree.map(jnp.add, hv, hv_g), _vdot(v, hv_g) / share

    return jax.jit(step)


def grouped_standard_error(quotients: np.ndarray, sizes: np.ndarray) -> float | None:
    """Standard error of the size-weighted mean of group quotients (the ratio estimator's; for
    equal sizes the plain std/sqrt(G))."""
    g = len(quotients)
    if g < 2:
        return None
    share = sizes / sizes.sum()
    mean = float(np.sum(share * quotients))
    return float(np.sqrt(g / (g - 1) * np.sum(share**2 * (quotients - mean) ** 2)))


def power_iteration(run, others, x, y, iters: int, seed: int, progress=None, tolerance: float = 0.0):
    """(lambda per iteration, v.H_g v per group at the last iteration, group sizes): power
    iteration v <- Hv on the Hessian of the mean loss over x, y, started from `random_direction`,
    for `iters` steps or until two successive steps change lambda by less than `tolerance`
    (relative). Converges to the eigenvalue of largest magnitude."""
    import jax

    step = group_step_fn(run.graphdef)
    xs, ys, weights = split_groups(np.asarray(x), np.asarray(y))
    sizes = weights.sum(1)
    total = np.float32(sizes.sum())
    zeros = committed_like(jax.tree.map(lambda p: np.zeros(p.shape, p.dtype), run.params), run.params)
    v = random_direction(run.params, seed)  # committed, as the step's outputs fed back are: one compile
    lams: list[float] = []
    quotients = np.zeros(len(sizes))
    for i in range(iters):
        hv, parts = zeros, []
        for g in range(len(sizes)):  # dispatched without waiting; one sync per iteration
            hv, q = step(run.params, others, xs[g], ys[g], weights[g], total, v, hv)
            parts.append(q)
        quotients = np.asarray(jax.device_get(parts), np.float64)
        lams.append(float(np.sum(quotients * sizes) / sizes.sum()))
        v = hv
        if progress is not None:
            progress(i + 1, iters)
        if len(lams) >= 3 and all(abs(lams[-j] - lams[-j - 1]) <= tolerance * abs(lams[-j]) for j in (1, 2)):
            break
    return np.asarray(lams), quotients, sizes


def compute(run, options: dict) -> dict:

    from resexp.analysis.common import normalized_test

    x, y = normalized_test(run.data, options["examples"])
    others = run.eval_others(options["precise_bn_batches"])
    # resexp's canonical conv VJP on XLA's kernels (parallel.py): its backward convs are differentiated
    # forward here, ~5x faster than XLA's own VJP under scan (same lambda to 1e-6, measured on ResNet-20);
    # oneDNN's custom calls cannot be, inside a scanned stage.
    from resexp.core.parallel import xla_convs

    with xla_convs():
        lams, per_group, sizes = power_iteration(
            run, others, x, y, options["iters"], options["seed"], progress=run.progress, tolerance=TOLERANCE
        )
    o = run.cfg.optim
    limit = 2 * (1 + o.momentum) / o.lr if o.name == "sgd" else None
    lam = float(lams[-1])
    se = grouped_standard_error(per_group, sizes)
    return {
        "lambda_max": lam,
        "lambda_max_standard_error": se,
        "lambda_max_ci95": None if se is None else [lam - stats.Z95 * se, lam + stats.Z95 * se],
        "lambda_by_group": per_group.tolist(),
        "lambda_trace": [float(v) for v in lams],
        "iterations": len(lams),
        "converged_relative_change": float(abs(lams[-1] - lams[-2]) / abs(lams[-1])) if len(lams) > 1 else None,
        "sgd_stability_limit": limit,
        "lr": o.lr,
        "momentum": o.momentum,
        "ratio_to_limit": lam / limit if limit else None,
        "examples": options["examples"],
        "bn_statistics": bn_statistics(options["precise_bn_batches"], options["bn_batch_size"]),
        "groups": len(sizes),
        "uncertainty": f"standard error of v.Hv over {len(sizes)} disjoint groups of up to {GROUP_SIZE} examples "
        "at the last power-iteration vector v; the 95 % interval is lambda_max +- 1.96 standard errors",
    }


def scalars(result: dict) -> dict[str, float]:
    return {"lambda_max": result["lambda_max"], "sgd_stability_limit": result["sgd_stability_limit"]}


def describe(result: dict) -> str:
    lim = result.get("sgd_stability_limit")
    se = result.get("lambda_max_standard_error")
    return (
        f"hessian ({result['examples']} test images): lambda_max {fmt(result['lambda_max'], '.4g')}"
        + ("" if se is None else f" +- {se:.2g}")
        + (f" vs SGD stability limit 2(1+beta)/eta = {lim:.3g} (x{result['ratio_to_limit']:.2g})" if lim else "")
        + bn_note(result)
    )


def plot(result: dict, title: str) -> bytes | None:
    from resexp.analysis.figures import plot_hessian

    return plot_hessian(result, title)


def plot_vs_depth(points: list[dict], title: str) -> bytes | None:
    if not any("hessian_lambda_max" in p for p in points):
        return None
    from resexp.analysis.figures import plot_hessian_vs_depth

    return plot_hessian_vs_depth(points, f"{title}: sharpness")
