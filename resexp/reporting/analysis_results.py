"""The why lab's results as reporting reads them: where `RUN_DIR/analysis/<name>.json` lives and
which of its numbers become results.csv columns and vs-depth series.

Pure (json and pathlib only): the report, its charts and the dashboard read analysis results
without importing `resexp.analysis`, its NumPy, or JAX.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

ANALYSIS_DIR = "analysis"
# results.csv column -> (analysis, key of its JSON result); None there reads as NaN
HEADLINE = {
    "lesion_median_accuracy": ("lesion", "median_single_accuracy"),
    "grad_corr_lag1": ("gradients", "grad_corr_lag1"),
    "paths_k90_max": ("paths", "k90_max"),
    "landscape_local_minima": ("landscape", "local_minima"),
    "landscape_nonconvex_fraction": ("landscape", "nonconvex_fraction"),
    "hessian_lambda_max": ("hessian", "lambda_max"),
}


def result_path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / ANALYSIS_DIR / f"{name}.json"


def read_result(run_dir: Path, name: str) -> dict | None:
    """The stored result of analysis `name` on a run, None when there is none (or it is unreadable)."""
    try:
        return json.loads(result_path(run_dir, name).read_text())
    except (OSError, ValueError):
        return None


def headline_metrics(run_dir: Path) -> dict[str, float]:
    """The headline numbers of whatever analyses `run_dir/analysis/` holds (stored JSONs only)."""
    docs: dict[str, dict | None] = {}
    out: dict[str, float] = {}
    for col, (name, key) in HEADLINE.items():
        if name not in docs:
            docs[name] = read_result(run_dir, name)
        doc = docs[name]
        if doc is not None:
            value = doc.get(key)
            out[col] = math.nan if value is None else float(value)
    return out
