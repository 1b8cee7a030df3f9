"""Lesion study (Veit, Wilber & Belongie, NIPS 2016, §4): delete or reorder blocks of a trained
net at test time, no retraining.

A deleted residual block relu(F(x) + Ws x) becomes relu(Ws x) (= x for an identity shortcut,
x subsampled and zero-padded for option A): the branch is gone, the shortcut stays. A deleted
plain block becomes the identity (zeroing it would be trivially fatal); a plain block that
changes the shape has no identity and is reported as not deletable. Residual nets behave like
ensembles of paths and barely notice; plain nets collapse.

One program per architecture: the keep-mask is a per-block input scanned with the stacked
blocks, and a swap is a gather of the stacked parameters; `lax.map` runs every mask.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from resexp.analysis.common import AnalysisError, RunInfo

NAME = "lesion"
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


def prepare(info: RunInfo, delete: list[int] | None = None, swaps: int = 6, recalibrate_bn: bool = False) -> dict:
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
    return {"delete": sorted(set(delete)), "swaps": swaps, "recalibrate_bn": recalibrate_bn, "draws": DRAWS, "seed": 0}


def _swap_groups(model: dict) -> list[list[int]]:
    """Block indices that may be swapped with each other: the stacked (same-shape) blocks of a stage."""
    n = (model["depth"] - 2) // (2 * len(model["widths"]))
    return [list(range(s * n + 1, (s + 1) * n)) for s in range(len(model["widths"])) if n > 2]


def masks(model: dict, options: dict) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """(keep[M, blocks], order[M, blocks], labels): base, single deletions, k deletions, swaps."""
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
        if k > flags.sum():
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


def lesion_step(block, h, keep, train: bool):
    """The block, or what is left of it when deleted: relu(Ws h) (residual), h (plain)."""
    import jax
    import jax.numpy as jnp

    y, _ = block(h, train)
    # a shape-changing plain block is never deleted
    skip = jax.nn.relu(block.shortcut(h, train)) if block.residual else (h if h.shape == y.shape else y)
    return jnp.where(keep, y, skip), {}


def _reorder(tree, order, n_per_stage: int):
    """Stacked block parameters gathered by `order` (global block indices, within-stage swaps only)."""
    import jax

    def gather(path, leaf):
        keys = [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]
        if "stages" not in keys or "rest" not in keys:
            return leaf
        stage = int(keys[keys.index("stages") + 1])
        local = order[stage * n_per_stage + 1 : (stage + 1) * n_per_stage] - (stage * n_per_stage + 1)
        return leaf[local]

    return jax.tree_util.tree_map_with_path(gather, tree)


def accuracy_program(run, recalibrate: bool):
    """A jitted `(keep[M, n], order[M, n]) -> accuracy[M]` on the run's test set."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from resexp.analysis.common import blocks_to_logits, graphdef_for, normalized_test, stem

    x, y = normalized_test(run.data)
    x_cal = run.data.normalize(jnp.asarray(run.data.x_train[:RECAL_IMAGES]))
    n_per_stage = (run.cfg.model.depth - 2) // (2 * len(run.cfg.model.widths))
    cal_graphdef = graphdef_for(run.cfg, run.data, bn_momentum=0.0)

    def one(mask):
        keep, order = mask
        params = _reorder(run.params, order, n_per_stage)
        others = _reorder(run.others, order, n_per_stage)
        if recalibrate:  # each lesioned net gets the BN statistics of its own activations
            net = nnx.merge(cal_graphdef, params, others, copy=True)
            blocks_to_logits(net, stem(net, x_cal, True), lesion_step, keep, train=True)
            others = nnx.split(net, nnx.Param, ...)[2]
        net = nnx.merge(run.graphdef, params, others, copy=True)
        logits, _ = blocks_to_logits(net, stem(net, x), lesion_step, keep)
        return jnp.mean(jnp.argmax(logits, -1) == y)

    return jax.jit(lambda keeps, orders: jax.lax.map(one, (keeps, orders)))


def compute(run, options: dict) -> dict:
    import jax.numpy as jnp

    from resexp.analysis.common import block_specs

    model = run.cfg.model.model_dump(mode="json")
    keeps, orders, labels = masks(model, options)
    acc = np.asarray(accuracy_program(run, options["recalibrate_bn"])(jnp.asarray(keeps), jnp.asarray(orders)))
    specs = block_specs(run.net())
    single = {i: float(a) for (kind, i), a in zip(labels, acc, strict=True) if kind == "single"}
    rows: list[dict[str, Any]] = []
    for i, spec in enumerate(specs):
        stage, block = spec.name.split("/")
        rows.append(
            {
                "name": spec.name,
                "stage": int(stage[5:]),
                "block": int(block[5:]),
                "deletable": i in single,
                "accuracy": single.get(i),
            }
        )
    values = [r["accuracy"] for r in rows if r["deletable"]]
    rest = [r["accuracy"] for r in rows if r["deletable"] and r["name"] != "stage1/block0"]
    delete_k = []
    for k in options["delete"]:
        a = [float(v) for (kind, kk), v in zip(labels, acc, strict=True) if kind == "delete" and kk == k]
        delete_k.append(
            {"k": k, "mean": float(np.mean(a)) if a else None, "std": float(np.std(a)) if a else None, "draws": len(a)}
            | ({} if a else {"note": "more than the deletable blocks"})
        )
    swaps = [float(v) for (kind, _), v in zip(labels, acc, strict=True) if kind == "swap"]
    return {
        "base_accuracy": float(acc[0]),
        "eval_accuracy": run.info.summary.get("eval_accuracy") if run.info else None,
        "single": rows,
        "median_single_accuracy": float(np.median(values)) if values else None,
        "median_single_accuracy_excluding_first": float(np.median(rest)) if rest else None,
        "min_single_accuracy": float(np.min(values)) if values else None,
        "delete_k": delete_k,
        "swap_k": {
            "k": options["swaps"],
            "mean": float(np.mean(swaps)) if swaps else None,
            "std": float(np.std(swaps)) if swaps else None,
            "draws": len(swaps),
        },
        "recalibrated": options["recalibrate_bn"],
        "test_examples": int(run.data.y_test.shape[0]),
    }


def headline(result: dict) -> dict[str, float]:
    v = result.get("median_single_accuracy")
    return {"lesion_median_accuracy": math.nan if v is None else v}


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
