"""Shattered gradients (Balduzzi et al., ICML 2017), Jacobian conditioning, and per-block signal
propagation (Brock et al., ICLR 2021), usually at initialisation.

* `grad_corr_lag1`: inputs on a line x(t) = x0 + t u (t in [-1, 1], ||u|| = ||x0||); the lag-1
  autocorrelation of g(t) . u, g = d logit_y / dx. Deep plain nets' gradients look like white
  noise (correlation ~0, "shattered"); ResNets' stay smooth (~1/sqrt(L) decay, not 2^-L).
* `jacobian_log_condition`: log10 sigma_max / sigma_median of the Jacobian of the pooled features
  with respect to the stem's output.
* signal propagation per block: channel mean^2, channel variance of the block's output, and the
  variance of the residual branch.

BN is recalibrated on training images first: at initialisation the running statistics are
0/1, eval-mode BN then does nothing, and the numbers describe a net that is never run.

The sample is `lines` lines through input space (one test image each): the lag-1 correlation
and the neighbour cosine are means over lines, reported with their standard error across
lines; the Jacobian's conditioning with its standard error across its examples.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from resexp.analysis import stats
from resexp.analysis.common import AnalysisError, RunInfo, bn_note, fmt, test_set_size

NAME = "gradients"
EXAMPLES = None  # its sample is `lines`, and BN is always recomputed: no `examples`, no `precise_bn_batches`
# `analyze` asks for the gradients at initialisation, where the shattering contrast lives (after
# training every net's gradients are smooth)
SWEEP_OPTIONS: dict[str, Any] = {"at_init": True}
VS_DEPTH = "gradients_vs_depth.png"
POINT_KEYS = ("jacobian_log_condition", "grad_corr_lag1_standard_error")
RECAL_IMAGES = 512
LINES, POINTS = 4, 256  # default sample: lines through input space, points per line
JACOBIAN_EXAMPLES = 4
SIGNAL_EXAMPLES = 256


def prepare(info: RunInfo | None, at_init: bool = False, lines: int | None = None) -> dict:
    lines = LINES if lines is None else lines
    if lines < 2:
        raise AnalysisError(f"--lines {lines}: must be at least 2 (the standard error needs two)")
    if info is not None and lines > test_set_size(info.summary["config"]):
        raise AnalysisError(f"--lines {lines}: more than the {test_set_size(info.summary['config'])} test examples")
    return {"at_init": at_init, "lines": lines, "points": POINTS, "recalibration_images": RECAL_IMAGES, "seed": 0}


def _lag1(series: np.ndarray) -> float:
    a, b = series[:-1] - series[:-1].mean(), series[1:] - series[1:].mean()
    return float(np.sum(a * b) / (np.sqrt(np.sum(a * a) * np.sum(b * b)) + 1e-30))


def signal_step(block, h, _, train: bool):
    """The block unchanged, reporting Brock et al.'s statistics of its output and branch."""
    import jax.numpy as jnp

    from resexp.analysis.common import branch_and_shortcut

    axes = tuple(range(h.ndim - 1))
    if block.residual:
        f, s = branch_and_shortcut(block, h, train)
        y = jnp.maximum(f + s, 0)
        branch_var = jnp.mean(jnp.var(f.astype(jnp.float32), axis=axes))
    else:
        y, _ = block(h, train)
        branch_var = jnp.full((), jnp.nan)
    y32 = y.astype(jnp.float32)
    stats = {
        "channel_mean_sq": jnp.mean(jnp.square(jnp.mean(y32, axis=axes))),
        "channel_var": jnp.mean(jnp.var(y32, axis=axes)),
        "branch_var": branch_var,
    }
    return y, stats


def _measure(graphdef, params, others, x_line, y_line, u_line, x_sig, n_blocks: int):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from resexp.analysis.common import blocks_to_logits, stem

    def net():  # merged inside each transform: nnx modules must not cross trace levels
        return nnx.merge(graphdef, params, others, copy=True)

    dummy = jnp.zeros((n_blocks,))

    def logit_sum(x):
        return jnp.sum(jnp.take_along_axis(net()(x, train=False), y_line[:, None], axis=1))

    g = jax.grad(logit_sum)(x_line)  # eval-mode BN: each example's gradient is its own
    gu = jnp.sum((g * u_line).reshape(g.shape[0], -1), axis=1)
    gf = g.reshape(g.shape[0], -1)

    h0 = stem(net(), x_sig[:JACOBIAN_EXAMPLES])

    def features(h):
        return blocks_to_logits(net(), h[None], lambda b, hh, v, t: (b(hh, t)[0], {}), dummy, head=False)[0][0]

    jac = jax.vmap(jax.jacrev(features))(h0)  # (examples, features, *stem shape)
    sv = jnp.linalg.svd(jac.reshape(jac.shape[0], jac.shape[1], -1), compute_uv=False)
    m = net()
    _, sig = blocks_to_logits(m, stem(m, x_sig), signal_step, dummy)
    return gu, gf, sv, sig


def compute(run, options: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from resexp.analysis.common import block_specs, normalized_test, recalibrate_bn

    data = run.data
    x_cal = data.normalize(jnp.asarray(data.x_train[:RECAL_IMAGES]))
    others = jax.jit(lambda p, o, x: recalibrate_bn(_with(run, p, o), x))(run.params, run.others, x_cal)
    x_test, y_test = normalized_test(data)
    lines, points = options["lines"], options["points"]
    x0, y0 = x_test[:lines], y_test[:lines]
    u = jax.random.normal(jax.random.key(options["seed"]), x0.shape)
    u = u * (jnp.linalg.norm(x0.reshape(lines, -1), axis=1) / jnp.linalg.norm(u.reshape(lines, -1), axis=1)).reshape(
        -1, *[1] * (x0.ndim - 1)
    )
    t = jnp.linspace(-1.0, 1.0, points)
    x_line = (x0[:, None] + t[None, :, None, None, None] * u[:, None]).reshape(lines * points, *x0.shape[1:])
    y_line = jnp.repeat(y0, points)
    u_line = jnp.repeat(u, points, axis=0)
    specs = block_specs(run.net())
    x_sig = x_test[:SIGNAL_EXAMPLES]
    gu, gf, sv, sig = jax.device_get(
        jax.jit(_measure, static_argnums=(0, 7))(
            run.graphdef, run.params, others, x_line, y_line, u_line, x_sig, len(specs)
        )
    )
    gu = np.asarray(gu).reshape(lines, points)
    gf = np.asarray(gf).reshape(lines, points, -1)
    cos = np.sum(gf[:, 1:] * gf[:, :-1], -1) / (
        np.linalg.norm(gf[:, 1:], axis=-1) * np.linalg.norm(gf[:, :-1], axis=-1) + 1e-30
    )
    sv = np.asarray(sv)
    log_cond = np.log10(sv[:, 0] / np.median(sv, axis=1))

    def floats(v):
        return [None if not math.isfinite(float(x)) else float(x) for x in np.asarray(v)]

    per_line = [_lag1(s) for s in gu]
    return {
        "at_init": options["at_init"],
        "bn_recalibrated_on": RECAL_IMAGES,
        "bn_statistics": f"recomputed on {RECAL_IMAGES} training images",
        "lines": lines,
        "grad_corr_lag1": float(np.mean(per_line)),
        "grad_corr_lag1_standard_error": stats.standard_error(per_line),
        "grad_corr_lag1_per_line": per_line,
        "grad_cos_neighbors": float(np.mean(cos)),
        "grad_cos_neighbors_standard_error": stats.standard_error(np.mean(cos, axis=1)),
        "jacobian_log_condition": float(np.mean(log_cond)),
        "jacobian_log_condition_standard_error": stats.standard_error(log_cond),
        "uncertainty": f"standard errors across the {lines} lines (the Jacobian's: across its "
        f"{JACOBIAN_EXAMPLES} examples)",
        "gradient_line": gu.tolist(),
        "signal": {
            "blocks": [s.name for s in specs],
            "channel_mean_sq": floats(sig["channel_mean_sq"]),
            "channel_var": floats(sig["channel_var"]),
            "branch_var": floats(sig["branch_var"]),
        },
    }


def _with(run, params, others):
    from resexp.analysis.common import LoadedRun

    return LoadedRun(run.cfg, run.data, run.graphdef, params, others)


def scalars(result: dict) -> dict[str, float]:
    return {
        "grad_corr_lag1": result["grad_corr_lag1"],
        "grad_cos_neighbors": result["grad_cos_neighbors"],
        "jacobian_log_condition": result["jacobian_log_condition"],
    }


def describe(result: dict) -> str:
    se = result.get("grad_corr_lag1_standard_error")
    return (
        f"gradients ({'at init' if result['at_init'] else 'trained'}, {result['lines']} lines): lag-1 correlation "
        f"{fmt(result['grad_corr_lag1'])}{'' if se is None else f' +- {se:.3f}'}, neighbour cosine "
        f"{fmt(result['grad_cos_neighbors'])}, Jacobian log10 cond {fmt(result['jacobian_log_condition'], '.2f')}"
        f"{bn_note(result)}"
    )


def plot(result: dict, title: str) -> bytes | None:
    from resexp.analysis.figures import plot_gradients

    return plot_gradients(result, title)


def plot_vs_depth(points: list[dict], title: str) -> bytes | None:
    if not any("grad_corr_lag1" in p for p in points):
        return None
    from resexp.analysis.figures import plot_gradients_vs_depth

    return plot_gradients_vs_depth(points, f"{title}: gradients at initialisation")
