"""Wall time of `resexp analyze` on a sweep, every program compiled from scratch: the why lab's
time budget (docs/why-lab.md "Time": at most 5 minutes on 2 CPU cores for the CPU Fashion-MNIST
study, plain and ResNet at depth 20 and 56).

The sweep's runs are copied (summaries, configs and final checkpoints; no cached analyses) into
a scratch directory, and `resexp analyze` runs there, in a subprocess exactly as a user types
it, with RESEXP_COMPILE_CACHE pointing at an empty directory. Prints one JSON object: the wall
seconds (and whether they meet `--target`), the CPU, the load average before and after, and
each run's seconds per analysis as its JSON records them, with the headline numbers and their
intervals (the contrasts the budget must not cost).

    .venv/bin/python scripts/bench_analyze.py runs/fmnist_cpu_study --jobs 2
    flock /tmp/resexp-measure.lock .venv/bin/python scripts/bench_analyze.py SWEEP --jobs 2 --repeats 2

`--resexp PATH` measures another checkout's resexp (e.g. an older commit unpacked with
`git archive`), for a before/after table; its analyses run with that checkout's defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from resexp.reporting.analysis_results import ANALYSIS_DIR, read_result

ROOT = Path(__file__).resolve().parent.parent

HEADLINES = {
    "lesion": ("base_accuracy", "median_single_accuracy", "median_single_accuracy_ci95"),
    "gradients": ("grad_corr_lag1", "grad_corr_lag1_standard_error"),
    "paths": ("k90", "k90_max_ci95"),
    "landscape": ("local_minima", "local_minima_ci95", "nonconvex_fraction", "nonconvex_fraction_ci95"),
    "hessian": ("lambda_max", "lambda_max_ci95", "iterations"),
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def copy_sweep(src: Path, dst: Path) -> None:
    """The sweep's manifests and runs without their analyses, reports or event files."""
    ignore = shutil.ignore_patterns("analysis", "events.out.tfevents.*", "vs_depth*", "*.png", "*.csv", "results.json")
    shutil.copytree(src, dst, ignore=ignore)


def analyze(sweep: Path, jobs: int, resexp_root: Path, cache: Path, extra: list[str]) -> tuple[float, str]:
    env = {
        **os.environ,
        "RESEXP_COMPILE_CACHE": str(cache),
        "PYTHONPATH": str(resexp_root),
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [sys.executable, "-m", "resexp", "analyze", str(sweep), "--jobs", str(jobs), *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=resexp_root)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"resexp analyze failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return wall, done.stdout


def per_run(sweep: Path) -> dict[str, dict]:
    out = {}
    for run in sorted(p for p in sweep.iterdir() if (p / ANALYSIS_DIR).is_dir()):
        row = {}
        for name, keys in HEADLINES.items():
            doc = read_result(run, name)
            if doc is None:
                continue
            row[name] = {"seconds": doc.get("seconds"), **{k: doc.get(k) for k in keys if k in doc}}
        out[run.name] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a trained sweep directory (it is copied, never written)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs of the whole measurement (median reported)")
    parser.add_argument("--target", type=float, default=300.0, help="the budget in seconds (default 5 minutes)")
    parser.add_argument("--resexp", type=Path, default=ROOT, help="the checkout whose resexp to measure")
    parser.add_argument("--only", default=None, help="passed to analyze --only")
    parser.add_argument("--grid", default=None, help="passed to analyze --grid")
    args = parser.parse_args()
    if not (args.sweep / "sweep.json").is_file() and not any(args.sweep.glob("*/summary.json")):
        sys.exit(f"{args.sweep}: not a sweep directory")
    extra = [*(["--only", args.only] if args.only else []), *(["--grid", args.grid] if args.grid else [])]
    walls, runs, load_before, load_after = [], {}, os.getloadavg(), None
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench_analyze-") as tmp:
            sweep = Path(tmp) / args.sweep.name
            copy_sweep(args.sweep, sweep)
            wall, _ = analyze(sweep, args.jobs, args.resexp.resolve(), Path(tmp) / "compile-cache", extra)
            walls.append(round(wall, 1))
            runs = per_run(sweep)
    load_after = os.getloadavg()
    wall = statistics.median(walls)
    print(
        json.dumps(
            {
                "sweep": str(args.sweep),
                "resexp": str(args.resexp.resolve()),
                "command": f"resexp analyze {args.sweep} --jobs {args.jobs}" + (" " + " ".join(extra) if extra else ""),
                "compile_cache": "empty",
                "cpu": cpu_model(),
                "cpus": os.cpu_count(),
                "load_before": [round(v, 2) for v in load_before],
                "load_after": [round(v, 2) for v in load_after],
                "wall_seconds": walls,
                "median_wall_seconds": wall,
                "target_seconds": args.target,
                "meets_target": wall <= args.target,
                "runs": runs,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
