"""Effective paths (Veit, Wilber & Belongie, NIPS 2016, §5, Fig. 6): how much of the gradient
travels along paths through k residual branches.

Unrolled, a net of n residual blocks is a sum of 2^n paths; path S goes through the branches of
the blocks in S and the shortcuts of the others. The forward pass is left unchanged; in the
backward pass block i passes the gradient only through its branch (i in S) or only through its
shortcut:  relu(where(m, F, sg(F)) + where(m, sg(Ws x), Ws x)).  dL/dh0 is then exactly the
path-S term (the relu derivatives are those of the real forward pass), and the 2^n terms sum to
`jax.grad`. Sampling S with |S| = k and scaling by C(n, k) gives the gradient carried by length k.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from resexp.analysis.common import AnalysisError, RunInfo

NAME = "paths"
EXAMPLES = 64
SAMPLES = 6  # random paths per length k (lengths with fewer paths are enumerated)


def prepare(info: RunInfo) -> dict:
    if not info.is_residual:
        raise AnalysisError(
            f"{info.dir}: paths need a residual net; a plain net has a single path "
            "(no shortcut for the gradient to take)"
        )
    return {"examples": EXAMPLES, "samples": SAMPLES, "seed": 0}


def path_step(block, h, on_branch, train: bool):
    """The block's forward value; its backward goes through the branch or the shortcut only."""
    import jax
    import jax.numpy as jnp

    from resexp.analysis.common import branch_and_shortcut

    sg = jax.lax.stop_gradient
    f, s = branch_and_shortcut(block, h, train)
    return jax.nn.relu(jnp.where(on_branch, f, sg(f)) + jnp.where(on_branch, sg(s), s)), {}


def path_gradient_fn(graphdef):
    """Jitted `(params, others, x, y, masks[M, n]) -> dL/dh0 per mask` (L summed over examples)."""
    import jax
    import optax
    from flax import nnx

    from resexp.analysis.common import blocks_to_logits, stem

    def grads(params, others, x, y, masks):
        h0 = stem(nnx.merge(graphdef, params, others, copy=True), x)

        def one(mask):
            def loss(h):
                logits, _ = blocks_to_logits(nnx.merge(graphdef, params, others, copy=True), h, path_step, mask)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

            return jax.grad(loss)(h0)

        return jax.lax.map(one, masks)

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


def compute(run, options: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from resexp.analysis.common import normalized_test

    n = n_blocks(run.net())
    masks, lengths = sample_masks(n, options["samples"], options["seed"])
    x, y = normalized_test(run.data, options["examples"])
    g = path_gradient_fn(run.graphdef)(run.params, run.others, x, y, jnp.asarray(masks))
    norms = np.asarray(jax.device_get(jnp.sqrt(jnp.sum(jnp.square(g.reshape(*g.shape[:2], -1)), -1))))  # (M, B)
    per_path = np.array([norms[lengths == k].mean() for k in range(n + 1)])  # mean over paths and examples
    total = per_path * np.array([math.comb(n, k) for k in range(n + 1)], dtype=float)
    fractions = total / total.sum()
    lo, hi = k90(fractions)
    ks = np.arange(n + 1)
    slope = np.polyfit(ks, np.log(per_path), 1)[0]
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
        "decay_per_branch": float(np.exp(slope)),
        "paths_sampled": len(masks),
        "examples": options["examples"],
    }


def headline(result: dict) -> dict[str, float]:
    return {"paths_k90_max": result["k90_max"]}


def scalars(result: dict) -> dict[str, float]:
    return {
        "k90_min": result["k90"][0],
        "k90_max": result["k90_max"],
        "mean_path_length": result["mean_path_length"],
        "decay_per_branch": result["decay_per_branch"],
    }
