"""The headline numbers of `resexp analyze`'s cached results, read without importing the analyses
(those load JAX): the report tabulates and charts them beside the training numbers.

Each analysis stores its result in ``RUN_DIR/analysis/<name>.json``; its headline numbers are fields
of that result, named here once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["ANALYSIS_DIR", "HEADLINE", "headline_metrics", "result_path"]

ANALYSIS_DIR = "analysis"
HEADLINE = {  # results.csv column -> (the analysis it comes from, the field of that analysis's result)
    "lesion_median_accuracy": ("lesion", "median_single_accuracy"),
    "grad_corr_lag1": ("gradients", "grad_corr_lag1"),
    "paths_k90_max": ("paths", "k90_max"),
    "landscape_local_minima": ("landscape", "local_minima"),
    "landscape_nonconvex_fraction": ("landscape", "nonconvex_fraction"),
    "hessian_lambda_max": ("hessian", "lambda_max"),
}


def result_path(run_dir: Path, name: str) -> Path:
    """Where analysis `name` caches its result for a run."""
    return Path(run_dir) / ANALYSIS_DIR / f"{name}.json"


def headline_metrics(run_dir: Path) -> dict[str, float]:
    """The headline numbers of whatever analyses `run_dir/analysis/` holds (NaN where a result has none)."""
    docs: dict[str, dict | None] = {}
    out: dict[str, float] = {}
    for column, (name, field) in HEADLINE.items():
        if name not in docs:
            try:
                docs[name] = json.loads(result_path(run_dir, name).read_text())
            except (OSError, ValueError):
                docs[name] = None
        doc = docs[name]
        if doc is not None:
            value = doc.get(field)
            out[column] = math.nan if value is None else float(value)
    return out
