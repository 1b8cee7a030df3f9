"""Lesion study (Veit, Wilber & Belongie, NIPS 2016, §4): delete or reorder blocks of a trained
net at test time, no retraining.

A deleted residual block relu(F(x) + Ws x) becomes relu(Ws x) (= x for an identity shortcut,
x subsampled and zero-padded for option A): the branch is gone, the shortcut stays. A deleted
plain block becomes the identity (zeroing it would be trivially fatal); a plain block that
changes the shape has no identity and is reported as not deletable. Residual nets behave like
ensembles of paths and barely notice; plain nets collapse.

One program per architecture: the keep-mask is a per-block input scanned with the stacked
blocks, and a swap is a gather of the stacked parameters (`common.evaluate_variants`, the program
the landscape shares). Every mask is evaluated on the same `examples` test images, so each
accuracy carries a Wilson interval, and the median over deleted blocks a paired bootstrap one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from resexp.analysis import stats
from resexp.analysis.common import AnalysisError, RunInfo, bn_note, bn_statistics, eval_sample_options, fmt, fmt_ci

NAME = "lesion"
EXAMPLES = 256  # default sample: the first N test images (docs/why-lab.md "Time")
SWEEP_OPTIONS: dict[str, Any] = {}
VS_DEPTH = "lesion_vs_depth.png"
POINT_KEYS = ("base_accuracy", "median_single_accuracy_ci95", "base_accuracy_ci95", "bn_statistics")
DRAWS = 10  # random draws per k (deletions) and for the swaps
RECAL_IMAGES = 512


def deletable_flags(model: dict) -> list[bool]:
    """Per block, from the config alone: every residual block; plain blocks that keep the shape."""
    n = (model["depth"] - 2) // (2 * len(model["widths"]))
    flags = []
    for si, width in enumerate(model["widths"]):
        prev = model["widths"][si - 1] if si else model["widths"][0]
        changes = si > 0 and (model.get("kind", "cnn") == "cnn" or prev != width)
        flags += [bool(model.get("shortcut")) or not changes] + [True] * (n - 1)
    return flags


def prepare(
    info: RunInfo,
    delete: list[int] | None = None,
    swaps: int = 6,
    recalibrate_bn: bool = False,
    examples: int | None = None,
    precise_bn_batches: int | None = None,
) -> dict:
    flags = deletable_flags(info.model)
    if len(flags) < 2:
        raise AnalysisError(
            f"{info.dir}: lesion needs at least 2 blocks; this net has {len(flags)} (deleting the "
            "MLP's single block leaves no network to test)"
        )
    delete = [1, 4, 10] if delete is None else delete
    if any(k < 1 for k in delete):
        raise AnalysisError(f"--delete {','.join(map(str, delete))}: every k must be at least 1")
    if swaps < 0:
        raise AnalysisError(f"--swaps {swaps}: must be >= 0")
    sample, bn = eval_sample_options(info, examples, precise_bn_batches, EXAMPLES)
    return {
        "delete": sorted(set(delete)),
        "swaps": swaps,
        "recalibrate_bn": recalibrate_bn,
        **sample,
        **bn,
        "draws": DRAWS,
        "seed": 0,
    }


def _swap_groups(model: dict) -> list[list[int]]:
    """Block indices that may be swapped with each other: the stacked (same-shape) blocks of a stage."""
    n = (model["depth"] - 2) // (2 * len(model["widths"]))
    return [list(range(s * n + 1, (s + 1) * n)) for s in range(len(model["widths"])) if n > 2]


def masks(model: dict, options: dict) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """(keep[M, blocks], order[M, blocks], labels): base, single deletions, `draws` random deletions of
    k blocks for each k > 1 (k = 1 is the mean over every single deletion, exactly), swaps."""
    flags = np.asarray(deletable_flags(model))
    n = len(flags)
    rng = np.random.default_rng(options["seed"])
    ident = np.arange(n)
    keeps, orders, labels = [np.ones(n, bool)], [ident], [("base", 0)]
    for i in np.flatnonzero(flags):
        keep = np.ones(n, bool)
        keep[i] = False
        keeps.append(keep)
        orders.append(ident)
        labels.append(("single", int(i)))
    for k in options["delete"]:
        if k > flags.sum() or k == 1:  # k = 1 is every single deletion, above: nothing to draw
            continue
        for _ in range(options["draws"]):
            keep = np.ones(n, bool)
            keep[rng.choice(np.flatnonzero(flags), size=k, replace=False)] = False
            keeps.append(keep)
            orders.append(ident)
            labels.append(("delete", k))
    groups = _swap_groups(model)
    if options["swaps"] and groups:
        for _ in range(options["draws"]):
            order = ident.copy()
            for _ in range(options["swaps"]):
                g = groups[rng.integers(len(groups))]
                a, b = rng.choice(g, size=2, replace=False)
                order[[a, b]] = order[[b, a]]
            keeps.append(np.ones(n, bool))
            orders.append(order)
            labels.append(("swap", options["swaps"]))
    return np.stack(keeps), np.stack(orders), labels


def bn_description(options: dict) -> str:
    if options["recalibrate_bn"]:
        return f"recomputed for each lesioned net on {RECAL_IMAGES} training images"
    return bn_statistics(options["precise_bn_batches"], options["bn_batch_size"])


def compute(run, options: dict) -> dict:
    import jax.numpy as jnp

    from resexp.analysis.common import block_specs, evaluate_variants, normalized_test

    model = run.cfg.model.model_dump(mode="json")
    keeps, orders, labels = masks(model, options)
    x, y = normalized_test(run.data, options["examples"])
    x_cal = run.data.normalize(jnp.asarray(run.data.x_train[:RECAL_IMAGES])) if options["recalibrate_bn"] else None
    others = run.eval_others(options["precise_bn_batches"])
    _, correct = evaluate_variants(run, others, x, y, keeps=keeps, orders=orders, x_cal=x_cal)
    n = correct.shape[1]
    acc = correct.mean(1)
    boot = stats.weighted_means(correct, stats.bootstrap_weights(n, options["seed"]))  # (R, masks)
    kinds = np.array([kind for kind, _ in labels])
    values = np.array([v for _, v in labels])
    specs = block_specs(run.net())
    single = {int(i): m for m, (kind, i) in enumerate(labels) if kind == "single"}
    rows: list[dict[str, Any]] = []
    for i, spec in enumerate(specs):
        stage, block = spec.name.split("/")
        m = single.get(i)
        rows.append(
            {
                "name": spec.name,
                "stage": int(stage[5:]),
                "block": int(block[5:]),
                "deletable": m is not None,
                "accuracy": None if m is None else float(acc[m]),
                "accuracy_ci95": None if m is None else stats.wilson_interval(correct[m].sum(), n),
            }
        )
    cols = np.flatnonzero(kinds == "single")
    rest = np.array([single[i] for i in single if specs[i].name != "stage1/block0"], int)

    def summary(fn, idx) -> tuple[float | None, list[float] | None]:
        if len(idx) == 0:
            return None, None
        return float(fn(acc[idx])), stats.percentile_interval(fn(boot[:, idx], axis=1))

    median, median_ci = summary(np.median, cols)
    median_rest, median_rest_ci = summary(np.median, rest)
    worst, worst_ci = summary(np.min, cols)
    delete_k = []
    for k in options["delete"]:
        idx = cols if k == 1 else np.flatnonzero((kinds == "delete") & (values == k))
        a = acc[idx]
        mean, mean_ci = summary(np.mean, idx)
        delete_k.append(
            {"k": k, "mean": mean, "mean_ci95": mean_ci, "std": float(np.std(a)) if len(a) else None, "draws": len(a)}
            | ({} if len(a) else {"note": "more than the deletable blocks"})
        )
    swap_idx = np.flatnonzero(kinds == "swap")
    swap_mean, swap_ci = summary(np.mean, swap_idx)
    return {
        "base_accuracy": float(acc[0]),
        "base_accuracy_ci95": stats.wilson_interval(correct[0].sum(), n),
        "eval_accuracy": run.info.summary.get("eval_accuracy") if run.info else None,
        "single": rows,
        "median_single_accuracy": median,
        "median_single_accuracy_ci95": median_ci,
        "median_single_accuracy_excluding_first": median_rest,
        "median_single_accuracy_excluding_first_ci95": median_rest_ci,
        "min_single_accuracy": worst,
        "min_single_accuracy_ci95": worst_ci,
        "delete_k": delete_k,
        "swap_k": {
            "k": options["swaps"],
            "mean": swap_mean,
            "mean_ci95": swap_ci,
            "std": float(np.std(acc[swap_idx])) if len(swap_idx) else None,
            "draws": len(swap_idx),
        },
        "recalibrated": options["recalibrate_bn"],
        "bn_statistics": bn_description(options),
        "examples": n,
        "test_examples": int(run.data.y_test.shape[0]),
        "uncertainty": "95 % intervals over the test sample: Wilson per accuracy, paired bootstrap "
        f"({stats.BOOTSTRAP_REPLICATES} replicates) for medians, minima and means over masks",
    }


def scalars(result: dict) -> dict[str, float]:
    out = {
        "base_accuracy": result["base_accuracy"],
        "median_single_accuracy": result["median_single_accuracy"],
        "min_single_accuracy": result["min_single_accuracy"],
    }
    for d in result["delete_k"]:
        out[f"delete_{d['k']}"] = d["mean"]
    out["swap"] = result["swap_k"]["mean"]
    return out


def describe(result: dict) -> str:
    ks = ", ".join(f"k={d['k']}: {fmt(d['mean'])}" for d in result["delete_k"] if d["mean"] is not None)
    return (
        f"lesion ({result['examples']} test images, 95 % intervals): accuracy {fmt(result['base_accuracy'])}"
        f"{fmt_ci(result['base_accuracy_ci95'])} intact; one block deleted: median "
        f"{fmt(result['median_single_accuracy'])}{fmt_ci(result['median_single_accuracy_ci95'])} (worst "
        f"{fmt(result['min_single_accuracy'])}); k random deleted: {ks or '-'}; {result['swap_k']['k']} swaps: "
        f"{fmt(result['swap_k']['mean'])}{bn_note(result)}"
    )


def plot(result: dict, title: str) -> bytes | None:
    from resexp.analysis.figures import plot_lesion

    return plot_lesion(result, title)


def plot_vs_depth(points: list[dict], title: str) -> bytes | None:
    if not any("lesion_median_accuracy" in p for p in points):
        return None
    from resexp.analysis.figures import plot_lesion_vs_depth

    return plot_lesion_vs_depth(points, f"{title}: lesion")
