"""Effective paths (Veit, Wilber & Belongie, NIPS 2016, §5, Fig. 6): how much of the gradient
travels along paths through k residual branches.

Unrolled, a net of n residual blocks is a sum of 2^n paths; path S goes through the branches of
the blocks in S and the shortcuts of the others. The forward pass is left unchanged; in the
backward pass block i passes the gradient only through its branch (i in S) or only through its
shortcut:  relu(where(m, F, sg(F)) + where(m, sg(Ws x), Ws x)).  dL/dh0 is then exactly the
path-S term (the relu derivatives are those of the real forward pass), and the 2^n terms sum to
`jax.grad`. Sampling S with |S| = k and scaling by C(n, k) gives the gradient carried by length k.

The sample is `examples` test images and `SAMPLES` random paths per length; a bootstrap over
both (examples reweighted, each length's sampled paths redrawn) gives the intervals of the
90 % range and of the decay per branch. A length whose paths carry exactly zero gradient (in
float32 the product of many small branch Jacobians underflows, or a dead branch stops it)
has no logarithm: the decay is fitted on the other lengths, and the JSON lists which.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import numpy as np

from resexp.analysis import stats
from resexp.analysis.common import AnalysisError, RunInfo, bn_note, bn_statistics, eval_sample_options, fmt

NAME = "paths"
EXAMPLES = 32  # default sample: the first N test images (docs/why-lab.md "Time")
SWEEP_OPTIONS: dict[str, Any] = {}
VS_DEPTH = None  # a results.csv column, no figure against depth
POINT_KEYS: tuple[str, ...] = ()
SAMPLES = 6  # random paths per length k (lengths with fewer paths are enumerated)
CHUNK = 8  # masks per call of the compiled program (the progress display's unit)
NOT_RESIDUAL = "paths need a residual net (a plain net has a single path)"


def prepare(info: RunInfo, examples: int | None = None, precise_bn_batches: int | None = None) -> dict:
    if not info.is_residual:
        raise AnalysisError(f"{info.dir}: {NOT_RESIDUAL}")
    sample, bn = eval_sample_options(info, examples, precise_bn_batches, EXAMPLES)
    return {**sample, "samples": SAMPLES, **bn, "seed": 0}


def path_step(block, h, on_branch, train: bool):
    """The block's forward value; its backward goes through the branch or the shortcut only."""
    import jax
    import jax.numpy as jnp

    from resexp.analysis.common import branch_and_shortcut

    sg = jax.lax.stop_gradient
    f, s = branch_and_shortcut(block, h, train)
    return jax.nn.relu(jnp.where(on_branch, f, sg(f)) + jnp.where(on_branch, sg(s), s)), {}


@functools.lru_cache(maxsize=16)  # one compiled program per architecture, whichever run asks
def path_gradient_fn(graphdef, norms: bool = False):
    """Jitted `(params, others, x, y, masks[M, n]) -> dL/dh0 per mask` (L summed over examples);
    `norms=True`: each example's gradient norm instead, (M, examples).

    The masks are vmapped: the forward pass does not depend on them, so it runs once for all
    M, and only the backward passes are batched (one conv over M x examples, not M small ones).
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from resexp.analysis.common import blocks_to_logits, stem

    def grads(params, others, x, y, masks):
        h0 = stem(nnx.merge(graphdef, params, others, copy=True), x)

        def one(mask):
            def loss(h):
                logits, _ = blocks_to_logits(nnx.merge(graphdef, params, others, copy=True), h, path_step, mask)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

            g = jax.grad(loss)(h0)
            return jnp.sqrt(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), -1)) if norms else g

        return jax.vmap(one)(masks)

    return jax.jit(grads)


def full_gradient_fn(graphdef):
    """Jitted `(params, others, x, y) -> dL/dh0` of the unmodified net: what the paths must sum to."""
    import jax
    import optax
    from flax import nnx

    from resexp.analysis.common import stem

    def grad(params, others, x, y):
        def loss(h):
            net = nnx.merge(graphdef, params, others, copy=True)
            for stage in net.stages:
                h, _ = stage(h, False, False)
            if net.conv:
                h = h.mean(axis=(1, 2))
            return optax.softmax_cross_entropy_with_integer_labels(net.head(h).astype("float32"), y).sum()

        return jax.grad(loss)(stem(nnx.merge(graphdef, params, others, copy=True), x))

    return jax.jit(grad)


def n_blocks(net) -> int:
    from resexp.analysis.common import block_specs

    return len(block_specs(net))


def sample_masks(n: int, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(masks[M, n], lengths[M]): every path when C(n, k) <= samples, else `samples` random ones."""
    rng = np.random.default_rng(seed)
    masks, lengths = [], []
    for k in range(n + 1):
        chosen: list[list[int]] | list[np.ndarray]
        if math.comb(n, k) <= samples:
            chosen = [list(c) for c in itertools.combinations(range(n), k)]
        else:
            chosen = [rng.choice(n, size=k, replace=False) for _ in range(samples)]
        for c in chosen:
            m = np.zeros(n, bool)
            m[list(c)] = True
            masks.append(m)
            lengths.append(k)
    return np.stack(masks), np.asarray(lengths)


def k90(fractions: np.ndarray) -> tuple[int, int]:
    """The shortest range of lengths [lo, hi] carrying at least 90 % of the gradient."""
    n = len(fractions)
    best = (0, n - 1)
    cum = np.concatenate([[0.0], np.cumsum(fractions)])
    for lo in range(n):
        for hi in range(lo, n):
            if cum[hi + 1] - cum[lo] >= 0.9 - 1e-12:
                if hi - lo < best[1] - best[0]:
                    best = (lo, hi)
                break
    return best


def decay_fit(per_path: np.ndarray) -> tuple[float | None, list[int]]:
    """(gradient factor per extra branch, lengths left out): exp of the slope of log(norm) vs
    length over the lengths with a nonzero norm; None when fewer than two remain."""
    ks = np.arange(len(per_path))
    ok = per_path > 0
    if ok.sum() < 2:
        return None, ks[~ok].tolist()
    return float(np.exp(np.polyfit(ks[ok], np.log(per_path[ok]), 1)[0])), ks[~ok].tolist()


def length_shares(per_path: np.ndarray) -> np.ndarray:
    """Fraction of the total gradient carried by each length: per-path norm times C(n, k)."""
    n = len(per_path) - 1
    total = per_path * np.array([math.comb(n, k) for k in range(n + 1)], dtype=float)
    return total / total.sum()


def _bootstrap(norms: np.ndarray, lengths: np.ndarray, n: int, samples: int, seed: int) -> dict:
    """Replicates of the per-length mean norm: examples reweighted, sampled paths redrawn
    (enumerated lengths are every path, not a sample); their k90 ranges and decays."""
    rng = np.random.default_rng(seed + 1)
    per_mask = stats.weighted_means(norms, stats.bootstrap_weights(norms.shape[1], seed))  # (R, masks)
    reps = per_mask.shape[0]
    per_path = np.empty((reps, n + 1))
    for k in range(n + 1):
        idx = np.flatnonzero(lengths == k)
        if math.comb(n, k) > samples:
            idx = idx[rng.integers(len(idx), size=(reps, len(idx)))]
            per_path[:, k] = np.take_along_axis(per_mask, idx, 1).mean(1)
        else:
            per_path[:, k] = per_mask[:, idx].mean(1)
    k90s = np.array([k90(length_shares(p)) for p in per_path])
    decays = np.array([decay_fit(p)[0] for p in per_path], dtype=float)
    return {
        "k90_min_ci95": stats.percentile_interval(k90s[:, 0]),
        "k90_max_ci95": stats.percentile_interval(k90s[:, 1]),
        "decay_per_branch_ci95": stats.percentile_interval(decays) if np.isfinite(decays).any() else None,
    }


def compute(run, options: dict) -> dict:

    from resexp.analysis.common import normalized_test, pipelined

    n = n_blocks(run.net())
    masks, lengths = sample_masks(n, options["samples"], options["seed"])
    x, y = normalized_test(run.data, options["examples"])
    others = run.eval_others(options["precise_bn_batches"])
    fn = path_gradient_fn(run.graphdef, norms=True)
    padded = np.concatenate([masks, np.repeat(masks[-1:], -len(masks) % CHUNK, 0)])
    chunks = range(0, len(padded), CHUNK)  # one compiled program, a chunk of masks per call
    parts = pipelined((fn(run.params, others, x, y, padded[i : i + CHUNK]) for i in chunks), len(chunks), run.progress)
    norms = np.concatenate(parts)[: len(masks)].astype(np.float64)  # (masks, examples)
    per_path = np.array([norms[lengths == k].mean() for k in range(n + 1)])  # mean over paths and examples
    fractions = length_shares(per_path)
    lo, hi = k90(fractions)
    ks = np.arange(n + 1)
    decay, zero_lengths = decay_fit(per_path)
    mean_len = float(np.sum(ks * fractions))
    return {
        "n_blocks": n,
        "k": ks.tolist(),
        "mean_norm_per_path": per_path.tolist(),
        "gradient_fraction_by_length": fractions.tolist(),
        "k90": [int(lo), int(hi)],
        "k90_max": int(hi),
        "mean_path_length": mean_len,
        "path_length_std": float(np.sqrt(np.sum((ks - mean_len) ** 2 * fractions))),
        "typical_path_length": n / 2,
        "decay_per_branch": decay,
        "zero_gradient_lengths": zero_lengths,
        "decay_note": (
            f"fitted on the lengths with a nonzero gradient; the paths of length {_ranges(zero_lengths)} carry "
            "exactly zero gradient (float32 underflow or a dead branch): a share of 0, left out of the fit"
        )
        if zero_lengths
        else "fitted on every length",
        **_bootstrap(norms, lengths, n, options["samples"], options["seed"]),
        "paths_sampled": len(masks),
        "examples": options["examples"],
        "bn_statistics": bn_statistics(options["precise_bn_batches"], options["bn_batch_size"]),
        "uncertainty": f"95 % intervals: bootstrap ({stats.BOOTSTRAP_REPLICATES} replicates) over the "
        "test sample and over each length's sampled paths",
    }


def _ranges(ks: list[int]) -> str:
    """[25, 26, 27] -> "25-27"; [3] -> "3"; [1, 3] -> "1, 3"."""
    parts, start = [], None
    for i, k in enumerate(ks):
        start = k if start is None else start
        if i + 1 == len(ks) or ks[i + 1] != k + 1:
            parts.append(str(k) if k == start else f"{start}-{k}")
            start = None
    return ", ".join(parts)


def scalars(result: dict) -> dict[str, float]:
    return {
        "k90_min": result["k90"][0],
        "k90_max": result["k90_max"],
        "mean_path_length": result["mean_path_length"],
        "decay_per_branch": math.nan if result["decay_per_branch"] is None else result["decay_per_branch"],
    }


def describe(result: dict) -> str:
    decay = fmt(result["decay_per_branch"], ".2f")
    zero = result.get("zero_gradient_lengths") or []
    return (
        f"paths ({result['examples']} test images): {result['n_blocks']} blocks; 90 % of the gradient from paths "
        f"through {result['k90'][0]}..{result['k90'][1]} branches (upper end 95 % interval "
        f"{result['k90_max_ci95'][0]:g}..{result['k90_max_ci95'][1]:g}; mean {fmt(result['mean_path_length'], '.1f')}, "
        f"typical path {fmt(result['typical_path_length'], '.1f')}); x{decay} per extra branch"
        + (f" (lengths {', '.join(map(str, zero))}: exactly zero gradient, left out of the fit)" if zero else "")
        + bn_note(result)
    )


def plot(result: dict, title: str) -> bytes | None:
    from resexp.analysis.figures import plot_paths

    return plot_paths(result, title)


def plot_vs_depth(points: list[dict], title: str) -> bytes | None:
    return None
