"""Filter-normalised loss surface (Li, Xu, Taylor, Studer & Goldstein, NeurIPS 2018).

L(theta + a d1 + b d2) on a grid, d1 and d2 Gaussian directions in which every filter is rescaled
to the norm of the matching filter of theta (scale-invariance under BN would otherwise make the
picture depend on arbitrary weight scales). Only weight kernels get a direction: BN and bias
entries are 0 (`--xignore biasbn`), and BN runs in eval mode on the trained running statistics.
ResNets stay smooth and nearly convex with depth; deep plain nets turn chaotic.

Under `nnx.scan` a stacked kernel has a leading block axis, so "a filter" is one output channel
of one block: the norm runs over every axis but the stack axis and the last. Leaves are picked by
the name `kernel`, not by `ndim` (a stacked BN scale is 2-D).
"""

from __future__ import annotations

import math

import numpy as np

from resexp.analysis.common import AnalysisError, RunInfo, check_examples, test_set_size

NAME = "landscape"
CPU_CHUNK, ACCEL_CHUNK = 1, 16  # grid points per step of lax.map (vmapped within a chunk)


def prepare(info: RunInfo, grid: int = 15, span: float = 1.0, examples: int | None = None, dims: int = 2) -> dict:
    if grid < 3 or grid % 2 == 0:
        raise AnalysisError(f"--grid {grid}: must be odd and at least 3 (the centre must be a grid point)")
    if not span > 0 or not math.isfinite(span):
        raise AnalysisError(f"--span {span}: must be > 0")
    if dims not in (1, 2):
        raise AnalysisError(f"--dims {dims}: must be 1 or 2")
    examples = check_examples(examples, test_set_size(info.summary["config"]), 512)
    return {"grid": grid, "span": span, "examples": examples, "dims": dims, "seed": 0}


def _keys(path) -> list[str]:
    keys = [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]
    return [k for k in keys if k != ".value"]


def filter_axes(path, leaf) -> tuple[int, ...]:
    """Axes one filter spans: all but the output channel (last) and, when stacked, the block axis."""
    first = 1 if "rest" in _keys(path) else 0
    return tuple(range(first, leaf.ndim - 1))


def filter_normalized_direction(params, key):
    """A Gaussian direction shaped like `params`: kernels rescaled filter by filter to the weights'
    norms, every other entry (BN scale/shift, biases, gates) zero."""
    import jax
    import jax.numpy as jnp

    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key, len(flat))
    out = []
    for (path, w), k in zip(flat, keys, strict=True):
        if _keys(path)[-1] != "kernel":
            out.append(jnp.zeros_like(w))
            continue
        d = jax.random.normal(k, w.shape, jnp.float32)
        axes = filter_axes(path, w)
        wn = jnp.sqrt(jnp.sum(jnp.square(w.astype(jnp.float32)), axis=axes, keepdims=True))
        dn = jnp.sqrt(jnp.sum(jnp.square(d), axis=axes, keepdims=True))
        out.append((d * wn / (dn + 1e-10)).astype(w.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def surface_fn(graphdef, chunk: int):
    """Jitted `(params, others, d1, d2, coords[P, 2], x, y) -> loss[P]`: one program for every point."""
    import jax
    import optax
    from flax import nnx

    def surface(params, others, d1, d2, coords, x, y):
        def loss_at(ab):
            a, b = ab[0], ab[1]
            p = jax.tree.map(lambda w, u, v: w + a.astype(w.dtype) * u + b.astype(w.dtype) * v, params, d1, d2)
            logits = nnx.merge(graphdef, p, others, copy=True)(x, train=False)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        return jax.lax.map(loss_at, coords, batch_size=chunk if chunk > 1 else None)

    return jax.jit(surface)


def count_local_minima(s: np.ndarray) -> int:
    """Grid points strictly below all their (up to 8, or 2 in 1-D) neighbours."""
    s = np.asarray(s, float)
    padded = np.pad(s, 1, constant_values=np.inf)
    count = 0
    for idx in np.ndindex(s.shape):
        centre = s[idx]
        window = padded[tuple(slice(i, i + 3) for i in idx)].copy()
        window[(1,) * s.ndim] = np.inf
        count += bool(np.isfinite(centre) and centre < window.min())
    return count


def nonconvex_fraction(s: np.ndarray, span: float) -> float:
    """Share of interior points within radius span/2 whose finite-difference Hessian of the
    surface has a negative eigenvalue (1-D: negative second difference)."""
    s = np.asarray(s, float)
    g = s.shape[0]
    step = 2 * span / (g - 1)
    coords = np.linspace(-span, span, g)
    bad = total = 0
    for idx in np.ndindex(*(g - 2,) * s.ndim):
        i = tuple(j + 1 for j in idx)
        if math.sqrt(sum(coords[j] ** 2 for j in i)) > span / 2 + 1e-9:
            continue
        if s.ndim == 1:
            lam = (s[i[0] + 1] - 2 * s[i] + s[i[0] - 1]) / step**2
        else:
            a, b = i
            faa = (s[a + 1, b] - 2 * s[a, b] + s[a - 1, b]) / step**2
            fbb = (s[a, b + 1] - 2 * s[a, b] + s[a, b - 1]) / step**2
            fab = (s[a + 1, b + 1] - s[a + 1, b - 1] - s[a - 1, b + 1] + s[a - 1, b - 1]) / (4 * step**2)
            lam = np.linalg.eigvalsh(np.array([[faa, fab], [fab, fbb]]))[0]
        total += 1
        bad += bool(lam < 0)
    return bad / total if total else math.nan


def compute(run, options: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from resexp.analysis.common import normalized_test

    g, span = options["grid"], options["span"]
    x, y = normalized_test(run.data, options["examples"])
    k1, k2 = jax.random.split(jax.random.key(options["seed"]))
    d1 = filter_normalized_direction(run.params, k1)
    d2 = filter_normalized_direction(run.params, k2)
    axis = np.linspace(-span, span, g)
    if options["dims"] == 2:
        coords = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    else:
        coords = np.stack([axis, np.zeros_like(axis)], -1)
    chunk = CPU_CHUNK if jax.default_backend() == "cpu" else ACCEL_CHUNK  # CPU: vmapped weights = grouped convs
    losses = np.asarray(
        surface_fn(run.graphdef, chunk)(run.params, run.others, d1, d2, jnp.asarray(coords, jnp.float32), x, y)
    )
    surface = losses.reshape((g, g) if options["dims"] == 2 else (g,))
    centre = surface[(g // 2,) * options["dims"]]
    return {
        "dims": options["dims"],
        "grid": g,
        "span": span,
        "examples": options["examples"],
        "surface": [[None if not math.isfinite(v) else float(v) for v in row] for row in surface]
        if options["dims"] == 2
        else [None if not math.isfinite(v) else float(v) for v in surface],
        "center_loss": float(centre),
        "eval_loss": run.info.summary.get("eval_loss") if run.info else None,
        "local_minima": count_local_minima(np.nan_to_num(surface, nan=np.inf)),
        "nonconvex_fraction": nonconvex_fraction(surface, span),
        "max_loss": float(np.nanmax(surface)),
    }


def headline(result: dict) -> dict[str, float]:
    return {
        "landscape_local_minima": result["local_minima"],
        "landscape_nonconvex_fraction": result["nonconvex_fraction"],
    }


def scalars(result: dict) -> dict[str, float]:
    return {
        "local_minima": result["local_minima"],
        "nonconvex_fraction": result["nonconvex_fraction"],
        "center_loss": result["center_loss"],
    }
