"""Precise BN (`train.precise_bn_batches`): eval on BN statistics recomputed with the weights frozen.

One tiny run, trained to convergence (cosine decay to 0) with precise BN on, serves every test:
the running averages of such a net are fresh, so precise BN must leave its accuracy unchanged
within the noise of estimating BN statistics from a few batches (measured here, by redrawing
the batches); paired with stale running averages, precise BN must give the very same numbers
while the running averages fall far behind.
"""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_dict
from tolerance import assert_within_noise, exact_in_float64, spread

from resexp.core.checkpoint import Checkpoints
from resexp.core.config import Config, run_id
from resexp.core.data import load_data, precise_bn_indices
from resexp.core.engine import Engine, precise_bn_others, restore_state
from resexp.runs.train import train_runs

BATCHES = 8
STEPS = 200


@pytest.fixture(scope="module")
def converged(tmp_path_factory):
    """(config, output dir, outcome, data, engine, final training state)."""
    out = tmp_path_factory.mktemp("runs")
    cfg = Config.model_validate(
        tiny_dict(
            optim={"schedule": "cosine"},  # the weights stop moving: the running averages catch up
            train={
                "steps": STEPS,
                "log_every": 20,
                "eval_every": STEPS // 2,
                "checkpoint_every": STEPS // 2,
                "precise_bn_batches": BATCHES,
            },
        )
    )
    (outcome,) = train_runs([cfg], out, progress=False)
    data = load_data(cfg.data)
    engine = Engine(cfg, data)
    ckpts = Checkpoints(outcome.run_dir / "checkpoints")
    try:
        state, _ = restore_state(ckpts, STEPS, engine.abstract_state)
    finally:
        ckpts.close()
    return cfg, out, outcome, data, engine, state


def evaluate(engine: Engine, state, data, x_train=None) -> dict:
    x_train = data.x_train if x_train is None else x_train
    out = jax.device_get(engine.evaluate_fn()(state, x_train, data.x_test, data.y_test))
    return {k: float(v) for k, v in out.items() if k.startswith("eval_")}


def test_summary_and_tensorboard_record_both_statistics(converged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, _, outcome, *_ = converged
    s = json.loads((outcome.run_dir / "summary.json").read_text())
    assert s["status"] == "completed"
    assert s["config"]["train"]["precise_bn_batches"] == BATCHES
    assert s["eval_bn"] == {"statistics": "precise", "batches": BATCHES, "images": BATCHES * cfg.data.batch_size}
    for key in ("eval_loss", "eval_accuracy", "eval_running_loss", "eval_running_accuracy"):
        assert isinstance(s[key], float), key
        assert s["history"][key][-1] == s[key] and len(s["history"][key]) == 2, key  # both evals
    assert s["eval_accuracy"] != s["eval_running_accuracy"] or s["eval_loss"] != s["eval_running_loss"]
    events = EventAccumulator(str(outcome.run_dir))
    events.Reload()
    for tag, key in [
        ("eval/accuracy", "eval_accuracy"),
        ("eval/loss", "eval_loss"),
        ("eval/accuracy_running_bn", "eval_running_accuracy"),
        ("eval/loss_running_bn", "eval_running_loss"),
    ]:
        points = events.Scalars(tag)
        assert [p.step for p in points] == [STEPS // 2, STEPS], tag
        assert points[-1].value == pytest.approx(s[key], rel=1e-6), tag  # TensorBoard stores float32


def test_precise_bn_closes_a_stale_statistics_gap(converged):
    """The trained weights with the running averages of the untrained net (statistics that lag
    far behind the weights, as an unstable net's do): precise BN recomputes them from the
    weights alone, so it gives exactly the converged run's numbers, close to its training
    accuracy, while the stale running averages fall far below."""
    _, _, outcome, data, engine, state = converged
    untrained = jax.tree_util.tree_map_with_path(  # BN's initial running mean 0 and variance 1
        lambda path, a: jnp.ones_like(a) if "['var']" in jax.tree_util.keystr(path) else jnp.zeros_like(a),
        state.others,
    )
    stale = state._replace(others=untrained)
    got = evaluate(engine, stale, data)
    s = outcome.summary
    assert got["eval_accuracy"] == s["eval_accuracy"] and got["eval_loss"] == s["eval_loss"]  # bit for bit
    assert got["eval_running_accuracy"] < s["eval_accuracy"] - 0.3, got  # stale: far below
    assert got["eval_accuracy"] > s["final_train_accuracy"] - 0.03, (got, s["final_train_accuracy"])


def test_precise_bn_leaves_a_converged_nets_accuracy_unchanged_within_noise(converged):
    """Running vs precise statistics of a converged net differ by no more than precise BN's own
    estimates differ when its batches are redrawn (the noise, measured here)."""
    _, _, outcome, data, engine, state = converged
    s = outcome.summary
    rng = np.random.default_rng(1)
    redrawn = [evaluate(engine, state, data, data.x_train[rng.permutation(data.num_train)]) for _ in range(6)]
    n_test = int(data.y_test.shape[0])
    for metric, floor in (("accuracy", 1 / n_test), ("loss", 0.0)):  # one test example is the finest step
        estimates = np.array([r[f"eval_{metric}"] for r in redrawn])
        noise = float(np.std(estimates, ddof=1))
        assert noise > 0, estimates  # the redraws did change the statistics
        gap = abs(s[f"eval_running_{metric}"] - s[f"eval_{metric}"])
        assert gap <= 3 * noise + floor, (metric, gap, noise, estimates)
    # and the run did learn (chance is 0.1)
    assert s["eval_accuracy"] > 0.8


def test_stem_statistics_are_the_average_over_the_fixed_unaugmented_batches(converged):
    """The first BN's recomputed mean and variance against a by-hand computation: the equal-weight
    average over `precise_bn_indices`' batches of each batch's mean and biased variance."""
    cfg, _, _, data, engine, state = converged
    idx = precise_bn_indices(data.num_train, BATCHES, cfg.data.batch_size)
    assert idx.shape == (BATCHES, cfg.data.batch_size) and len(np.unique(idx)) == idx.size  # within one epoch
    others = jax.jit(
        lambda p, o, x: precise_bn_others(engine.graphdef, p, o, x, data.normalize, BATCHES, cfg.data.batch_size)
    )(state.params, state.others, data.x_train)
    got = [np.asarray(others["stem_norm"]["bn"][k][...]) for k in ("mean", "var")]
    kernel = state.params["stem"]["kernel"][...]
    x = np.stack([np.asarray(data.normalize(data.x_train[i])) for i in idx])

    def by_hand(x, kernel):
        flat = x.reshape(-1, *x.shape[2:])
        h = jax.lax.conv_general_dilated(flat, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = h.reshape(*x.shape[:2], *h.shape[1:])  # [batches, batch, H, W, C]
        return jnp.mean(jnp.mean(h, axis=(1, 2, 3)), 0), jnp.mean(jnp.var(h, axis=(1, 2, 3)), 0)

    want = by_hand(jnp.asarray(x), kernel)
    exact = exact_in_float64(by_hand, x, kernel)
    for name, g, w, e in zip(("mean", "var"), got, want, exact, strict=True):
        assert_within_noise(g, e, spread(w, e), multiple=8, what=f"stem BN {name}")


def test_resume_with_precise_bn_is_bit_exact(converged, tmp_path):
    """The checkpoint keeps the running averages; the precise ones live only inside the eval."""
    cfg, out, outcome, *_ = converged
    run = tmp_path / run_id(cfg)
    shutil.copytree(out / run_id(cfg), run)
    shutil.rmtree(run / "checkpoints" / str(STEPS))
    summary = json.loads((run / "summary.json").read_text())
    summary["status"] = "interrupted"
    (run / "summary.json").write_text(json.dumps(summary))
    (resumed,) = train_runs([cfg], tmp_path, progress=False)
    assert not resumed.skipped and resumed.summary["status"] == "completed"
    assert resumed.summary["history"] == outcome.summary["history"]  # exactly, evals of both statistics included
    for key in ("eval_accuracy", "eval_loss", "eval_running_accuracy", "eval_running_loss", "eval_bn"):
        assert resumed.summary[key] == outcome.summary[key], key


def test_the_option_is_validated_and_off_by_default_keeps_run_ids():
    from resexp.core.config import ConfigError, with_updates

    base = Config.model_validate(tiny_dict())
    assert base.train.precise_bn_batches == 0
    # run ids of configs written before the option existed (computed by the code before it)
    assert run_id(base) == "resnet8-a-wd0.0001-s0-359f07ac"
    assert run_id(with_updates(base, {"train.precise_bn_batches": 0})) == run_id(base)
    assert run_id(with_updates(base, {"train.precise_bn_batches": 8})) != run_id(base)  # other eval numbers
    no_bn = with_updates(base, {"model.norm": "none"})
    assert run_id(no_bn) == "resnet8-a-wd0.0001-s0-97f54a56"
    assert run_id(with_updates(no_bn, {"train.precise_bn_batches": 8})) == run_id(no_bn)  # nothing to recompute
    for bad, fragment in [(-1, "greater than or equal to 0"), (True, "integer"), ("8", "integer")]:
        with pytest.raises(ConfigError, match=rf"train\.precise_bn_batches.*{fragment}"):
            with_updates(base, {"train.precise_bn_batches": bad})
