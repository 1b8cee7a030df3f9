"""Filter-normalised loss surface (Li, Xu, Taylor, Studer & Goldstein, NeurIPS 2018).

L(theta + a d1 + b d2) on a grid, d1 and d2 Gaussian directions in which every filter is rescaled
to the norm of the matching filter of theta (scale-invariance under BN would otherwise make the
picture depend on arbitrary weight scales). Only weight kernels get a direction: BN and bias
entries are 0 (`--xignore biasbn`), and BN runs in eval mode (on the running averages, or on
precise statistics when the run trains with them). ResNets stay smooth and nearly convex with
depth; deep plain nets turn chaotic.

Every grid point is a variant of the shared eval-mode program (`common.evaluate_variants`, the
lesion study's), evaluated per example on the same `examples` test images; a paired bootstrap
over those examples gives the intervals of the local-minimum count and the non-convex fraction.

Under `nnx.scan` a stacked kernel has a leading block axis, so "a filter" is one output channel
of one block: the norm runs over every axis but the stack axis and the last. Leaves are picked by
the name `kernel`, not by `ndim` (a stacked BN scale is 2-D).
"""

from __future__ import annotations

import math
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
    fmt_ci,
)

NAME = "landscape"
EXAMPLES = 64  # default sample: the first N test images (docs/why-lab.md "Time")
SWEEP_OPTIONS: dict[str, Any] = {}
VS_DEPTH = "landscapes.png"
POINT_KEYS: tuple[str, ...] = ()  # its sweep figure draws each run's whole surface (`plot_vs_depth`)


def prepare(
    info: RunInfo,
    grid: int = 15,
    span: float = 1.0,
    examples: int | None = None,
    dims: int = 2,
    precise_bn_batches: int | None = None,
) -> dict:
    if grid < 3 or grid % 2 == 0:
        raise AnalysisError(f"--grid {grid}: must be odd and at least 3 (the centre must be a grid point)")
    if not span > 0 or not math.isfinite(span):
        raise AnalysisError(f"--span {span}: must be > 0")
    if dims not in (1, 2):
        raise AnalysisError(f"--dims {dims}: must be 1 or 2")
    sample, bn = eval_sample_options(info, examples, precise_bn_batches, EXAMPLES)
    return {"grid": grid, "span": span, **sample, "dims": dims, **bn, "seed": 0}


def _keys(path) -> list[str]:
    keys = [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]
    return [k for k in keys if k != ".value"]


def filter_axes(path, leaf) -> tuple[int, ...]:
    """Axes one filter spans: all but the output channel (last) and, when stacked, the block axis."""
    first = 1 if "rest" in _keys(path) else 0
    return tuple(range(first, leaf.ndim - 1))


def filter_normalized_direction(params, rng: np.random.Generator):
    """A Gaussian direction shaped like `params`: kernels rescaled filter by filter to the weights'
    norms, every other entry (BN scale/shift, biases, gates) zero. Drawn on the host with NumPy
    (a one-off of ~1M numbers; JAX's threefry would compile for ~10 s per architecture)."""
    import jax

    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    out = []
    for path, w in flat:
        w = np.asarray(w)
        if _keys(path)[-1] != "kernel":
            out.append(np.zeros_like(w))
            continue
        d = rng.standard_normal(w.shape, dtype=np.float32)
        axes = filter_axes(path, w)
        wn = np.sqrt(np.sum(np.square(w.astype(np.float32)), axis=axes, keepdims=True))
        dn = np.sqrt(np.sum(np.square(d), axis=axes, keepdims=True))
        out.append((d * wn / (dn + 1e-10)).astype(w.dtype))
    return committed_like(jax.tree_util.tree_unflatten(treedef, out), params)


def _neighbours(s: np.ndarray, dims: int, fill: float) -> list[np.ndarray]:
    """Each grid neighbour of every point (8 in 2-D, 2 in 1-D) of surfaces s[..., g(, g)], the
    outside filled with `fill`."""
    pad = [(0, 0)] * (s.ndim - dims) + [(1, 1)] * dims
    p = np.pad(s, pad, constant_values=fill)
    g = s.shape[-1]
    out = []
    for off in np.ndindex(*(3,) * dims):
        if off == (1,) * dims:
            continue
        window: tuple = (Ellipsis, *(slice(o, o + g) for o in off))
        out.append(p[window])
    return out


def directions(params, seed: int):
    """The landscape's two filter-normalised directions, drawn from one seed."""
    rng = np.random.default_rng(seed)
    return filter_normalized_direction(params, rng), filter_normalized_direction(params, rng)


def count_local_minima(s: np.ndarray, dims: int | None = None) -> np.ndarray | int:
    """Grid points strictly below all their (up to 8, or 2 in 1-D) neighbours; NaN points never
    count. `s` may carry leading batch axes (bootstrap replicates): one count per surface."""
    s = np.asarray(s, float)
    dims = s.ndim if dims is None else dims
    s = np.where(np.isnan(s), np.inf, s)
    below = np.isfinite(s)
    for nb in _neighbours(s, dims, np.inf):
        below &= s < nb
    counts = below.reshape(*s.shape[: s.ndim - dims], -1).sum(-1)
    return int(counts) if np.ndim(counts) == 0 else counts


def nonconvex_fraction(s: np.ndarray, span: float, dims: int | None = None) -> np.ndarray | float:
    """Share of interior points within radius span/2 whose finite-difference Hessian of the
    surface has a negative eigenvalue (1-D: negative second difference). Leading axes batch."""
    s = np.asarray(s, float)
    dims = s.ndim if dims is None else dims
    g = s.shape[-1]
    step = 2 * span / (g - 1)
    coords = np.linspace(-span, span, g)
    inner = slice(1, g - 1)
    if dims == 1:
        lam = (s[..., 2:] - 2 * s[..., inner] + s[..., :-2]) / step**2
        radius = np.abs(coords[inner])
    else:
        c = s[..., inner, inner]
        faa = (s[..., 2:, inner] - 2 * c + s[..., :-2, inner]) / step**2
        fbb = (s[..., inner, 2:] - 2 * c + s[..., inner, :-2]) / step**2
        fab = (s[..., 2:, 2:] - s[..., 2:, :-2] - s[..., :-2, 2:] + s[..., :-2, :-2]) / (4 * step**2)
        lam = (faa + fbb) / 2 - np.sqrt(((faa - fbb) / 2) ** 2 + fab**2)  # smaller eigenvalue
        ca, cb = np.meshgrid(coords[inner], coords[inner], indexing="ij")
        radius = np.sqrt(ca**2 + cb**2)
    near = radius <= span / 2 + 1e-9
    total = int(near.sum())
    if total == 0:
        return math.nan
    frac = (lam[..., near] < 0).sum(-1) / total
    return float(frac) if np.ndim(frac) == 0 else frac


def compute(run, options: dict) -> dict:

    from resexp.analysis.common import evaluate_variants, normalized_test

    g, span, dims = options["grid"], options["span"], options["dims"]
    x, y = normalized_test(run.data, options["examples"])
    d1, d2 = directions(run.params, options["seed"])
    axis = np.linspace(-span, span, g)
    if dims == 2:
        coords = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    else:
        coords = np.stack([axis, np.zeros_like(axis)], -1)
    others = run.eval_others(options["precise_bn_batches"])
    losses, _ = evaluate_variants(run, others, x, y, coords=coords, directions=(d1, d2))  # (points, examples)
    shape = (g, g) if dims == 2 else (g,)
    surface = losses.mean(1).reshape(shape)
    boot = stats.weighted_means(losses, stats.bootstrap_weights(losses.shape[1], options["seed"]))
    boot = boot.reshape(-1, *shape)
    centre_idx = (g // 2,) * dims
    point_se = losses.std(1, ddof=1) / math.sqrt(losses.shape[1]) if losses.shape[1] > 1 else np.zeros(len(losses))

    def finite(v):
        return None if not math.isfinite(v) else float(v)

    return {
        "dims": dims,
        "grid": g,
        "span": span,
        "examples": options["examples"],
        "surface": [[finite(v) for v in row] for row in surface] if dims == 2 else [finite(v) for v in surface],
        "center_loss": float(surface[centre_idx]),
        "center_loss_ci95": stats.percentile_interval(boot[(slice(None), *centre_idx)]),
        "eval_loss": run.info.summary.get("eval_loss") if run.info else None,
        "local_minima": count_local_minima(surface),
        "local_minima_ci95": stats.percentile_interval(count_local_minima(boot, dims)),
        "nonconvex_fraction": nonconvex_fraction(surface, span),
        "nonconvex_fraction_ci95": stats.percentile_interval(nonconvex_fraction(boot, span, dims)),
        "max_point_standard_error": finite(np.nanmax(point_se)),
        "max_loss": float(np.nanmax(surface)),
        "bn_statistics": bn_statistics(options["precise_bn_batches"], options["bn_batch_size"]),
        "uncertainty": "95 % intervals: paired bootstrap over the test sample "
        f"({stats.BOOTSTRAP_REPLICATES} replicates reweight the same examples at every grid point)",
    }


def scalars(result: dict) -> dict[str, float]:
    return {
        "local_minima": result["local_minima"],
        "nonconvex_fraction": result["nonconvex_fraction"],
        "center_loss": result["center_loss"],
    }


def describe(result: dict) -> str:
    return (
        f"landscape ({result['dims']}-D, {result['grid']} points per axis, span {result['span']:g}, "
        f"{result['examples']} test images): centre loss {fmt(result['center_loss'], '.4f')}, "
        f"{result['local_minima']}{fmt_ci(result['local_minima_ci95'], 'g')} local minima, non-convex fraction "
        f"{fmt(result['nonconvex_fraction'], '.2f')}{fmt_ci(result['nonconvex_fraction_ci95'], '.2f')}"
        f"{bn_note(result)}"
    )


def plot(result: dict, title: str) -> bytes | None:
    from resexp.analysis.figures import plot_landscape

    return plot_landscape(result, title)


def plot_vs_depth(points: list[dict], title: str) -> bytes | None:
    """Every run's surface, one panel each (None when no run has a 2-D one)."""
    from resexp.analysis.figures import plot_landscapes

    panels = [
        {"net": p["net"], "plain": p["plain"], "depth": p["depth"], "result": p["results"][NAME]}
        for p in points
        if NAME in p["results"]
    ]
    return plot_landscapes(panels, f"{title}: loss landscapes")
