"""Eval accuracy of trained runs with BN running averages vs precise BN over N batches, and its cost.

For each completed run directory: restore the final checkpoint and evaluate it (the run's own
test set, `train.eval_examples` and diagnostics as configured) with `train.precise_bn_batches`
set to each N of `--batches` (0 = the running averages). Prints one row per run and N: train
accuracy (the last logging window's), eval accuracy/loss, the gap to train accuracy, and the
eval program's seconds (median of `--repeats` calls after one warm-up call) and compile seconds.
With N > 0 the eval program also evaluates the running averages, so its time is what training
with that N pays per evaluation.

    .venv/bin/python scripts/precise_bn_eval.py runs/fmnist/* --batches 0,8,32,64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def evaluate(run_dir: Path, batches: list[int], repeats: int) -> list[dict]:
    import jax

    from resexp.core.checkpoint import Checkpoints
    from resexp.core.config import Config
    from resexp.core.data import load_data
    from resexp.core.engine import Engine, restore_state

    summary = json.loads((run_dir / "summary.json").read_text())
    base = Config.model_validate(summary["config"])
    data = load_data(base.data)
    rows = []
    for n in batches:
        cfg = base.model_copy(update={"train": base.train.model_copy(update={"precise_bn_batches": n})})
        engine = Engine(cfg, data)
        ckpts = Checkpoints(run_dir / "checkpoints")
        try:
            state, _ = restore_state(ckpts, max(ckpts.all_steps()), engine.abstract_state)
        finally:
            ckpts.close()
        before = engine.compile_seconds
        fn = engine.evaluate_fn()
        compile_s = engine.compile_seconds - before
        out = jax.device_get(fn(state, data.x_train, data.x_test, data.y_test))  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(state, data.x_train, data.x_test, data.y_test))
            times.append(time.perf_counter() - t0)
        rows.append(
            {
                "run": run_dir.name,
                "batches": n,
                "train_accuracy": summary["final_train_accuracy"],
                "eval_accuracy": float(out["eval_accuracy"]),
                "eval_loss": float(out["eval_loss"]),
                "eval_seconds": statistics.median(times) if times else None,
                "compile_seconds": compile_s,
            }
        )
    return rows


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="completed run directories")
    parser.add_argument("--batches", default="0,8,32,64", help="values of train.precise_bn_batches (0: running)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per N (0: accuracies only)")
    parser.add_argument("--json", action="store_true", help="one JSON object per row instead of a table")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    runs = [r for r in args.runs if (r / "summary.json").is_file()]
    if not args.json:
        print(f"{'run':<36} {'N':>3} {'train%':>7} {'eval%':>6} {'gap':>6} {'loss':>6} {'eval s':>7} {'compile s':>9}")
    for run in runs:
        for row in evaluate(run, batches, args.repeats):
            if args.json:
                print(json.dumps(row), flush=True)
                continue
            gap = 100 * (row["train_accuracy"] - row["eval_accuracy"])
            print(
                f"{row['run']:<36} {row['batches']:>3} {100 * row['train_accuracy']:>7.1f} "
                f"{100 * row['eval_accuracy']:>6.1f} {gap:>6.1f} {row['eval_loss']:>6.3f} "
                f"{_seconds(row['eval_seconds']):>7} {row['compile_seconds']:>9.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
