"""The sampling uncertainty of an analysis: every analysis measures a sample (test examples,
random paths, lines through input space), and says what that sample leaves uncertain.

* A proportion (an accuracy) gets its Wilson score interval (scipy), which stays inside [0, 1]
  and is honest near 0 and 1, where a deleted plain block leaves a net.
* A statistic of many proportions or losses measured on the same examples (the median accuracy
  over deleted blocks, the local minima of a loss surface) gets a paired percentile bootstrap
  over those examples: every replicate reweights the same examples for every mask or grid point,
  as a new draw of the test sample would.
* A mean over a few independent draws (lines, groups of examples) gets its standard error.

Intervals are 95 %; the bootstrap is seeded, so a result is a pure function of the run.
"""

from __future__ import annotations

import math

import numpy as np

CONFIDENCE = 0.95
Z95 = 1.959963984540054  # the normal quantile of a central 95 % interval
BOOTSTRAP_REPLICATES = 1000


def wilson_interval(successes: int, n: int) -> list[float]:
    """[lo, hi] of the 95 % Wilson score interval of `successes` out of `n`."""
    from scipy.stats import binomtest  # type: ignore[import-untyped]  # scipy ships no type information

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return [float(ci.low), float(ci.high)]


def bootstrap_weights(n: int, seed: int, replicates: int = BOOTSTRAP_REPLICATES) -> np.ndarray:
    """(replicates, n) resampling weights: how often each of `n` examples is drawn (they sum to n)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(np.float64)


def weighted_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """values (..., n) reweighted by every replicate of weights (R, n): (R, ...) means."""
    return np.einsum("rn,...n->r...", weights, np.asarray(values, np.float64)) / weights.shape[1]


def percentile_interval(samples, axis: int = 0) -> list[float] | list:
    """The central 95 % of bootstrap samples (NaNs ignored): [lo, hi], or per entry along the rest."""
    tail = 100 * (1 - CONFIDENCE) / 2
    lo, hi = np.nanpercentile(np.asarray(samples, np.float64), [tail, 100 - tail], axis=axis)
    if np.ndim(lo) == 0:
        return [float(lo), float(hi)]
    return np.stack([lo, hi], -1).tolist()


def standard_error(values) -> float | None:
    """Standard error of the mean of independent draws (None for fewer than 2)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None
