"""The "why" lab (resexp.analysis): exact invariants on tiny trained nets, bad input, the sweep.

One module-scoped pair of tiny trained runs (plain and ResNet, depth 8 = 3 blocks) serves every
test; analyses are called in-process where a subprocess would only add JAX's import time, and the
CLI's one-line errors run through the real typer app.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_dict
from typer.testing import CliRunner

from resexp.analysis import run_analyses
from resexp.analysis.common import inspect_run, load_run, normalized_test
from resexp.cli import app
from resexp.core.config import Config
from resexp.reporting.analysis_results import headline_metrics
from resexp.runs.train import train_runs


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict[str, Path]:
    """runs/<sweep>/{plain8, resnet8} trained like `resexp sweep` would (sweep keys in the summaries)."""
    out = tmp_path_factory.mktemp("why")
    runs = {}
    for shortcut in (False, True):
        cfg = Config.model_validate(tiny_dict(name="why", model={"shortcut": shortcut}))
        [outcome] = train_runs(
            [cfg], out / "why", progress=False, sweep_keys=[{"model.depth": 8, "model.shortcut": shortcut}]
        )
        runs["res" if shortcut else "plain"] = outcome.run_dir
    return runs


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


# --------------------------------------------------------------------------- lesion


def test_lesion_invariants(sweep):
    """Empty mask == summary eval_accuracy; an option-A deleted block == its branch zeroed (bit-equal,
    one program); the identity order == the base accuracy."""
    from flax import nnx

    from resexp.analysis.common import blocks_to_logits, evaluate_variants, lesion_step, stem
    from resexp.core.diagnostics import _zero_last_layers

    run = load_run(inspect_run(sweep["res"]))
    n = 3
    x, y = normalized_test(run.data)
    _, correct = evaluate_variants(run, run.others, x, y, keeps=np.ones((2, n), bool))
    hits = round(run.info.summary["eval_accuracy"] * len(y))  # training's eval, over the same test set
    assert correct[0].sum() == correct[1].sum() == hits

    @jax.jit
    def logits(params, keep):
        net = nnx.merge(run.graphdef, params, run.others, copy=True)
        return blocks_to_logits(net, stem(net, x), lesion_step, keep)[0]

    all_zeroed = _zero_last_layers(run.params)  # the identity check's own zeroing (every branch)
    for stage in range(3):  # each block is its stage's first; stage 2 and 3 change shape (option A)

        def pick(path, leaf, zeroed_leaf, stage=stage):  # that zeroing, on this one block only
            keys = [str(getattr(p, "key", p)) for p in path]
            return zeroed_leaf if keys[:3] == ["stages", str(stage), "first"] else leaf

        zeroed = jax.tree_util.tree_map_with_path(pick, run.params, all_zeroed)
        keep = jnp.ones(n, bool).at[stage].set(False)
        a = np.asarray(logits(zeroed, jnp.ones(n, bool)))
        b = np.asarray(logits(run.params, keep))
        assert np.array_equal(a, b), stage
        assert not np.array_equal(b, np.asarray(logits(run.params, jnp.ones(n, bool))))


def test_lesion_cli_cached_and_plain_contrast(sweep):
    start = time.perf_counter()
    res = cli("lesion", sweep["res"], "--examples", 297, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    n = doc["examples"]  # the whole digits test set
    assert n == doc["test_examples"] and round(doc["base_accuracy"] * n) == round(doc["eval_accuracy"] * n)
    assert (sweep["res"] / "analysis" / "lesion.png").stat().st_size > 1000
    first = time.perf_counter() - start
    mtime = (sweep["res"] / "analysis" / "lesion.json").stat().st_mtime_ns
    start = time.perf_counter()
    again = cli("lesion", sweep["res"], "--examples", 297, "--json")
    assert json.loads(again.output) == doc
    assert (sweep["res"] / "analysis" / "lesion.json").stat().st_mtime_ns == mtime  # answered from the cache
    assert time.perf_counter() - start < first / 3
    # The plain net: only stage1/block0 keeps its shape, so only it is deletable, and deleting it hurts.
    plain = run_analyses(sweep["plain"], {"lesion": {}})["lesion"][0]
    assert [r["deletable"] for r in plain["single"]] == [True, False, False]
    assert plain["median_single_accuracy"] < plain["base_accuracy"] - 0.3


# --------------------------------------------------------------------------- paths


def test_paths_sum_to_the_gradient(sweep):
    """3 blocks, 8 paths: the path terms of dL/dh0 add up to jax.grad of the unmodified net."""
    from resexp.analysis.paths import full_gradient_fn, path_gradient_fn, sample_masks

    run = load_run(inspect_run(sweep["res"]))
    x, y = normalized_test(run.data, 64)
    masks, lengths = sample_masks(3, samples=8, seed=0)
    assert len(masks) == 8 and sorted(lengths.tolist()) == [0, 1, 1, 1, 2, 2, 2, 3]
    terms = np.asarray(path_gradient_fn(run.graphdef)(run.params, run.others, x, y, jnp.asarray(masks)))
    full_fn = full_gradient_fn(run.graphdef)
    full = np.asarray(full_fn(run.params, run.others, x, y))
    # Noise scale: the same gradient with the examples reversed (another summation order, same math).
    rev = np.asarray(full_fn(run.params, run.others, x[::-1], y[::-1]))[::-1]
    noise = np.abs(rev - full).max()
    err = np.abs(terms.sum(0) - full).max()
    assert err <= 50 * noise + 1e-6 * np.abs(full).max(), (err, noise)
    assert np.abs(terms[0]).max() > 1e-3 * np.abs(full).max()  # each term is a real share, not ~0


def test_paths_with_a_zero_gradient_length_fit_the_rest(sweep):
    """A branch whose last BN scale is 0 passes exactly no gradient: the one path through all 3
    branches carries 0.0. The decay is fitted on the other lengths, the zero length is named, and
    nothing divides by zero (the log of 0 used to warn and leave the decay null)."""
    import warnings

    from resexp.analysis.paths import compute, prepare

    run = load_run(inspect_run(sweep["res"]))

    def dead_first_branch(path, leaf):
        keys = [str(getattr(p, "key", p)) for p in path]
        return jnp.zeros_like(leaf) if keys[:4] == ["stages", "0", "first", "norm2"] and "scale" in keys else leaf

    run.params = jax.tree_util.tree_map_with_path(dead_first_branch, run.params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        doc = compute(run, prepare(run.info, examples=32))
    assert doc["mean_norm_per_path"][3] == 0.0 and min(doc["mean_norm_per_path"][:3]) > 0
    assert doc["zero_gradient_lengths"] == [3] and "length 3" in doc["decay_note"]
    assert doc["decay_per_branch"] is not None and np.isfinite(doc["decay_per_branch"])
    assert doc["gradient_fraction_by_length"][3] == 0.0


# --------------------------------------------------------------------------- sampling


def test_sampled_analyses_agree_with_the_full_test_set(sweep):
    """Each example-sampled analysis on the first 100 of the 297 test images against the same
    analysis on all of them: the full answer lies within the interval the sample reports."""
    from resexp.analysis import hessian, landscape, lesion

    info = inspect_run(sweep["res"])
    run = load_run(info)

    def both(mod, small: dict, full: dict):
        return mod.compute(run, mod.prepare(info, **small)), mod.compute(run, mod.prepare(info, **full))

    def inside(value, interval, slack=1e-9):
        return interval[0] - slack <= value <= interval[1] + slack

    s, f = both(lesion, {"examples": 100}, {"examples": 297})
    assert s["examples"] == 100 and f["examples"] == 297
    assert inside(f["base_accuracy"], s["base_accuracy_ci95"])
    for small_row, full_row in zip(s["single"], f["single"], strict=True):
        assert inside(full_row["accuracy"], small_row["accuracy_ci95"]), (small_row, full_row)
    assert inside(f["median_single_accuracy"], s["median_single_accuracy_ci95"])
    assert s["median_single_accuracy_ci95"][1] - s["median_single_accuracy_ci95"][0] > 0  # a real interval

    s, f = both(landscape, {"examples": 100, "grid": 5}, {"examples": 297, "grid": 5})
    assert inside(f["center_loss"], s["center_loss_ci95"])
    assert inside(f["local_minima"], s["local_minima_ci95"])
    assert inside(f["nonconvex_fraction"], s["nonconvex_fraction_ci95"])

    s, f = both(hessian, {"examples": 100}, {"examples": 297})
    assert inside(f["lambda_max"], s["lambda_max_ci95"]), (s["lambda_max_ci95"], f["lambda_max"])


def test_precise_bn_follows_the_run_and_says_so(sweep, tmp_path):
    """The eval-mode analyses take the run's train.precise_bn_batches (0 for configs without the
    key), `--precise-bn-batches` overrides it, and the JSON names the statistics used."""
    from resexp.analysis import hessian, landscape, lesion, paths
    from resexp.analysis.common import precise_bn

    info = inspect_run(sweep["res"])
    assert info.summary["config"]["train"]["precise_bn_batches"] == 0  # the tiny config keeps running averages
    for mod in (lesion, landscape, hessian, paths):
        assert mod.prepare(info)["precise_bn_batches"] == 0
        assert mod.prepare(info, precise_bn_batches=3)["precise_bn_batches"] == 3

    def with_precise_bn(name: str, batches: int | None) -> Path:
        run_dir = _fake_run(tmp_path, sweep["res"], name=name)
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["config"]["train"].pop("precise_bn_batches")  # None: a summary from before the option
        if batches is not None:
            summary["config"]["train"]["precise_bn_batches"] = batches
        (run_dir / "summary.json").write_text(json.dumps(summary))
        (run_dir / "checkpoints" / str(summary["total_steps"])).mkdir(parents=True)  # inspect_run looks no further
        return run_dir

    assert lesion.prepare(inspect_run(with_precise_bn("old", None)))["precise_bn_batches"] == 0
    precise = inspect_run(with_precise_bn("precise", 2))
    assert lesion.prepare(precise)["precise_bn_batches"] == 2
    assert lesion.prepare(precise, precise_bn_batches=0)["precise_bn_batches"] == 0

    run = load_run(info)
    recomputed = precise_bn(run, 2)
    pairs = zip(jax.tree.leaves(recomputed), jax.tree.leaves(run.others), strict=True)
    assert all(not np.allclose(a, b) for a, b in pairs)  # every BN mean and variance recomputed
    doc = lesion.compute(run, lesion.prepare(info, precise_bn_batches=2))
    assert doc["bn_statistics"] == "precise: recomputed on 2 x 32 training images"
    assert lesion.compute(run, lesion.prepare(info))["bn_statistics"] == "running averages"
    res = cli("lesion", sweep["res"], "--precise-bn-batches", -1)
    assert res.exit_code == 2 and "--precise-bn-batches -1" in res.output


# --------------------------------------------------------------------------- landscape


def test_landscape_directions_and_centre(sweep):
    from resexp.analysis.landscape import filter_axes, filter_normalized_direction

    run = load_run(inspect_run(sweep["res"]))
    d = filter_normalized_direction(run.params, np.random.default_rng(0))
    kernels = 0
    for (path, w), (_, u) in zip(
        jax.tree_util.tree_flatten_with_path(run.params)[0], jax.tree_util.tree_flatten_with_path(d)[0], strict=True
    ):
        keys = [str(getattr(p, "key", p)) for p in path]
        if "kernel" in keys:
            kernels += 1
            axes = filter_axes(path, w)
            wn, un = (np.sqrt(np.sum(np.square(np.asarray(a)), axis=axes)) for a in (w, u))
            np.testing.assert_allclose(un, wn, rtol=1e-5)  # float32 rounding of a <= 600-term norm
        else:  # BN scale/shift, biases: no direction
            assert not np.any(np.asarray(u)), keys
    assert kernels >= 8
    res = cli("landscape", sweep["res"], "--grid", 3, "--examples", 297, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    # The eval program batches and pads differently: allow a few float32 ulps of the mean loss.
    assert doc["center_loss"] == pytest.approx(doc["eval_loss"], rel=1e-5)
    assert np.asarray(doc["surface"]).shape == (3, 3) and doc["local_minima"] >= 1


# --------------------------------------------------------------------------- hessian


def test_power_iteration_matches_eigvalsh():
    from flax import nnx
    from jax.flatten_util import ravel_pytree

    from resexp.analysis.common import LoadedRun
    from resexp.analysis.hessian import power_iteration
    from resexp.core.models import build_model

    cfg = Config.model_validate(tiny_dict(model={"kind": "mlp", "depth": 4, "widths": [3], "norm": "none"}))
    net = build_model(cfg.model, (2, 3, 1), 3, seed=0)
    graphdef, params, others = nnx.split(net, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(1), (80, 2, 3, 1))  # 3 groups of the power step: 32, 32, 16
    y = jnp.arange(80) % 3
    flat, unravel = ravel_pytree(params)

    def loss(v):
        import optax

        logits = nnx.merge(graphdef, unravel(v), others, copy=True)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    eig = np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(flat), np.float64))
    top = eig[np.argmax(np.abs(eig))]
    run = LoadedRun(cfg, None, graphdef, params, others)
    lams, per_group, sizes = power_iteration(run, others, x, y, 400, 0, tolerance=1e-7)
    # What up to 100 more iterations still change: the convergence error (0 once it stops changing)
    noise = abs(lams[-1] - lams[-min(100, len(lams))])
    assert lams[-1] == pytest.approx(top, abs=10 * noise + 1e-4 * abs(top))
    # the groups' quotients at the last vector average (weighted by size) to lambda
    assert sizes.tolist() == [32, 32, 16] and len(set(per_group.tolist())) == 3
    assert np.sum(per_group * sizes) / 80 == pytest.approx(lams[-1], rel=1e-4)


# --------------------------------------------------------------------------- bad input


def _fake_run(root: Path, source: Path, **summary) -> Path:
    run = root / summary.pop("name")
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("checkpoints", "analysis", "events*"))
    s = json.loads((run / "summary.json").read_text())
    s.update(summary)
    (run / "summary.json").write_text(json.dumps(s))
    return run


def test_bad_input_one_line_exit_2_nothing_written(sweep, tmp_path):
    res_dir = sweep["res"]
    mlp_cfg = Config.model_validate(tiny_dict(model={"kind": "mlp", "depth": 4, "widths": [8]})).model_dump(mode="json")
    no_ckpt = _fake_run(tmp_path, res_dir, name="nockpt")
    incomplete = _fake_run(tmp_path, res_dir, name="incomplete", status="interrupted", steps=20)
    diverged = _fake_run(tmp_path, res_dir, name="diverged", status="diverged", diverged_at_step=7)
    mlp = _fake_run(tmp_path, res_dir, name="mlp", config=mlp_cfg)
    (mlp / "checkpoints" / "40").mkdir(parents=True)
    cases = [
        (("lesion", no_ckpt), "no checkpoint"),
        (("hessian", incomplete), "incomplete run"),
        (("paths", diverged), "diverged"),
        (("lesion", mlp), "single block"),
        (("paths", sweep["plain"]), "plain net"),
        (("landscape", res_dir, "--grid", 4), "--grid 4"),
        (("landscape", res_dir, "--grid", 1), "--grid 1"),
        (("landscape", res_dir, "--span", 0), "--span 0"),
        (("landscape", res_dir, "--examples", 10000), "more than the 297 test examples"),
        (("hessian", res_dir, "--examples", 298), "more than the 297 test examples"),
        (("analyze", res_dir.parent, "--only", "lesion,shattering"), "unknown analysis shattering"),
    ]
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    plain_files = sorted(sweep["plain"].rglob("*.json"))
    for args, message in cases:
        res = cli(*args)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output and "Traceback" not in res.output, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1 or len(" ".join(res.output.split())) < 400, res.output
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    assert sorted(sweep["plain"].rglob("*.json")) == plain_files
    assert not (no_ckpt / "analysis").exists() and not (res_dir / "analysis" / "hessian.json").exists()


# --------------------------------------------------------------------------- a sweep


def _manifest(path: Path, axes: dict, run_ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": "why", "axes": axes, "run_ids": run_ids}))


def test_analyze_sweep_columns_figures_and_diverged(sweep, tmp_path):
    """`analyze` on a sweep with a diverged run: skipped and counted; report columns; figures; TB;
    one note for the analyses that do not apply. By default only the directory's first grid,
    `--grid NAME` (a prefix will do) another, with its figures beside its manifest.
    (Cached lesion results of the tests above are reused: the cache is part of what is tested.)"""
    from resexp.analysis.sweep import analyze_sweep

    root = tmp_path / "why"
    shutil.copytree(sweep["res"].parent, root)
    _fake_run(root, sweep["res"], name="resnet8-diverged", status="diverged", diverged_at_step=3)
    first = [sweep["plain"].name, sweep["res"].name, "resnet8-diverged"]
    _manifest(root / "sweep.json", {"model.depth": [8], "model.shortcut": [False, True]}, first)
    second = root / "grids" / "weight_decay=0.0001-abc123" / "sweep.json"
    _manifest(second, {"optim.weight_decay": [1e-4]}, [sweep["res"].name])
    out = analyze_sweep(root, ["lesion", "paths"], jobs=1, examples=297)  # the lesion test's options: cached
    assert out.diverged == ["resnet8-diverged"] and len(out.analysed) == 2
    assert [g.name for g in out.grids] == ["first"]
    assert out.notes == [
        f"paths: not applicable to 1 run (paths need a residual net (a plain net has a single path)): {first[0]}"
    ]
    assert "lesion_vs_depth.png" in out.figures and (root / "lesion_vs_depth.png").stat().st_size > 1000
    assert not (second.parent / "lesion_vs_depth.png").exists()
    rows = {r["run_id"]: r for r in csv.DictReader((root / "results.csv").open())}
    res_row = rows[sweep["res"].name]
    assert (
        float(res_row["lesion_median_accuracy"]) == headline_metrics(root / sweep["res"].name)["lesion_median_accuracy"]
    )
    assert res_row["paths_k90_max"] != "" and rows[sweep["plain"].name]["paths_k90_max"] == ""
    agg = list(csv.DictReader((root / "aggregate.csv").open()))
    assert "lesion_median_accuracy_mean" in agg[0] and "paths_k90_max_std" in agg[0]
    assert list((root / "vs_depth_analysis").rglob("*.resexp-analysis"))
    # The report keeps the columns when it rebuilds on its own.
    assert cli("report", root).exit_code == 0
    assert "paths_k90_max" in (root / "results.csv").read_text().splitlines()[0]
    # Another grid by a prefix of its name: only its run, its figures beside its manifest.
    res = cli("analyze", root, "--only", "lesion", "--grid", "weight_decay", "--examples", 297)
    assert res.exit_code == 0, res.output
    assert "1 runs analysed (0 computed, 1 cached)" in res.output and "grid: weight_decay=0.0001-abc123" in res.output
    assert (second.parent / "lesion_vs_depth.png").stat().st_size > 1000
    res = cli("analyze", root, "--grid", "nope")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "--grid nope: no such grid" in res.output and "first, weight_decay=0.0001-abc123, or all" in res.output


def test_sweep_figure_lines_say_what_differs():
    """Within a grid, colour is the family only; every other swept key makes its own line, named in
    the legend and drawn with its own marker and line style."""
    from resexp.analysis.figures import PLAIN, RES, _styles
    from resexp.analysis.sweep import line_group, net_label

    axes = ["model.depth", "model.shortcut", "optim.weight_decay"]
    points = []
    for shortcut in (False, True):
        for wd in (0.0, 1e-4):
            summary = {
                "config": {"model": {"shortcut": shortcut, "kind": "cnn", "depth": 20}, "optim": {"weight_decay": wd}}
            }
            group = line_group(summary, axes)
            assert group == {"optim.weight_decay": wd}
            points.append({"net": net_label(summary, group), "plain": not shortcut, "depth": 20})
    labels = [p["net"] for p in points]
    assert labels == ["plain (wd=0)", "plain (wd=1e-4)", "ResNet (wd=0)", "ResNet (wd=1e-4)"], labels
    styles = _styles(points)
    assert {styles[n]["color"] for n in labels[:2]} == {PLAIN} and {styles[n]["color"] for n in labels[2:]} == {RES}
    looks = [(styles[n]["color"], styles[n]["marker"], styles[n]["ls"]) for n in labels]
    assert len(set(looks)) == 4 and styles[labels[0]]["marker"] != styles[labels[1]]["marker"]


# --------------------------------------------------------------------------- gradients at init


def test_gradients_shatter_in_plain_nets_not_resnets():
    """Balduzzi et al.: at depth 32 (15 blocks) a plain net's input gradient is nearly white noise
    along a line, a ResNet's stays correlated; the plain Jacobian is worse conditioned."""
    from resexp.analysis.common import init_run
    from resexp.analysis.gradients import compute, prepare

    out = {}
    for shortcut in (False, True):
        cfg = Config.model_validate(tiny_dict(model={"depth": 32, "shortcut": shortcut}))
        out[shortcut] = compute(init_run(cfg), prepare(None, at_init=True))
    assert out[False]["grad_corr_lag1"] < 0.5 < out[True]["grad_corr_lag1"], out
    assert out[False]["jacobian_log_condition"] > out[True]["jacobian_log_condition"]
    assert len(out[True]["signal"]["channel_var"]) == 15 and out[False]["signal"]["branch_var"][0] is None


# --------------------------------------------------------------------------- progress


def test_progress_time_left_and_lines_for_a_log():
    """The time left excludes the first unit (it compiles); without a terminal the board prints a
    line per analysis and per finished run, with the sweep's time left once a run has finished."""
    import io

    from rich.console import Console

    from resexp.analysis.progress import AnalysisClock, ProgressBoard

    clock = AnalysisClock(started=0.0)
    clock.update(1, 10, now=5.0)  # compiling took 5 s
    assert clock.left(5.0) is None
    clock.update(3, 10, now=7.0)  # then 1 s per unit
    assert clock.left(7.0) == pytest.approx(7.0)

    text = io.StringIO()
    console = Console(file=text, force_terminal=False, width=60)
    runs = [("plain56", 27, ["lesion", "hessian"]), ("plain20", 9, ["lesion"])]
    with ProgressBoard(console, runs, jobs=1) as board:
        board({"event": "analysis", "run": "plain56", "analysis": "lesion"})
        board({"event": "progress", "run": "plain56", "done": 1, "total": 4})
        board({"event": "analysis_done", "run": "plain56", "analysis": "lesion", "seconds": 1.5})
        board({"event": "analysis", "run": "plain56", "analysis": "hessian"})
        board({"event": "analysis_done", "run": "plain56", "analysis": "hessian", "seconds": 2.0})
        board({"event": "run_done", "run": "plain56"})
        assert board.sweep_left(time.monotonic()) is not None
    lines = text.getvalue().splitlines()
    assert lines[0] == "plain56: lesion (1/2)" and lines[1] == "plain56: hessian (2/2)"
    # one line although wider than the console: a log is never hard-wrapped
    assert lines[2].startswith("analysed plain56 (lesion 1.5 s, hessian 2.0 s), sweep: ~") and lines[2].endswith("left")


def test_bench_analyze_script_measures_from_an_empty_cache(sweep, tmp_path):
    """scripts/bench_analyze.py: analyze on a copy of the sweep (the original untouched), one JSON
    object with the wall time against the budget and each run's seconds per analysis."""
    import subprocess
    import sys

    from conftest import ROOT

    root = tmp_path / "one"
    shutil.copytree(sweep["res"], root / sweep["res"].name)  # one run: one architecture to compile
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_analyze.py"), str(root), "--only", "lesion"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["compile_cache"] == "empty" and doc["median_wall_seconds"] > 0 and doc["target_seconds"] == 300
    assert doc["meets_target"] == (doc["median_wall_seconds"] <= 300)
    assert list(doc["runs"]) == [sweep["res"].name] and doc["runs"][sweep["res"].name]["lesion"]["seconds"] > 0
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_hessian_differentiates_through_scanned_stages():
    """At depth 14 each stage's blocks run under a scan; the Hessian's jvp of grad works there too (it
    traces XLA's convolutions, whose VJP can be differentiated forward; oneDNN's custom calls cannot)."""
    from resexp.analysis import hessian
    from resexp.analysis.common import init_run

    run = init_run(Config.model_validate(tiny_dict(model={"depth": 14})))
    assert run.cfg.model.depth == 14
    options = {"examples": 64, "precise_bn_batches": 0, "bn_batch_size": 32, "iters": 3, "seed": 0}
    doc = hessian.compute(run, options)
    assert math.isfinite(doc["lambda_max"]) and doc["lambda_max"] > 0
