"""The constant warm-up (He et al.'s ResNet-110 rule) through the training engine.

lr 0.005 is held until a logging window's training error falls below 0.75, then the base
lr 0.05 takes over. On the tiny digits net the window errors at the held lr are about
0.92, 0.79, 0.72, ... (measured on this machine: 11 examples of margin on each side of
0.75), so the switch lands at step 30, between the checkpoints at 20 and 40.
"""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_dict

from resexp.core import optim
from resexp.core.config import Config, run_id
from resexp.core.errors import ConfigError
from resexp.runs.train import train_runs

WARM, BASE, THRESHOLD = 0.005, 0.05, 0.75


def _cfg(**warmup) -> Config:
    spec = {"kind": "constant", "steps": 1000, "lr": WARM, "until_train_error": THRESHOLD, **warmup}
    return Config.model_validate(
        tiny_dict(optim={"lr": BASE, "warmup": spec}, train={"steps": 40, "log_every": 10, "checkpoint_every": 20})
    )


def _scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


@pytest.fixture(scope="module")
def switched(tmp_path_factory):
    out = tmp_path_factory.mktemp("warmup")
    cfg = _cfg()
    (outcome,) = train_runs([cfg], out, progress=False)
    return cfg, out, outcome


def test_the_switch_happens_at_the_first_window_below_the_threshold(switched):
    cfg, out, outcome = switched
    s = outcome.summary
    errors = [1 - a for a in s["history"]["train_accuracy"]]
    first_below = next(step for step, e in zip(s["history"]["step"], errors, strict=True) if e < THRESHOLD)
    assert s["warmup"]["end_step"] == first_below == 30, errors
    assert s["warmup"]["ended_by"] == "train_error"
    # TensorBoard: the switch step, and the lr of each window's last step (held, held, held, base).
    assert _scalars(out / run_id(cfg), "train/warmup_end_step") == [(30, 30.0)]
    lrs = _scalars(out / run_id(cfg), "train/learning_rate")
    assert [step for step, _ in lrs] == [10, 20, 30, 40]
    np.testing.assert_array_equal([v for _, v in lrs], np.float32([WARM, WARM, WARM, BASE]))


def test_resume_across_the_switch_is_exact(switched, tmp_path):
    """Killed after step 20 (before the switch): the resumed run decides it at 30 again, bit for bit."""
    cfg, out, outcome = switched
    run = tmp_path / run_id(cfg)
    shutil.copytree(out / run_id(cfg), run)
    shutil.rmtree(run / "checkpoints" / "40")
    summary = json.loads((run / "summary.json").read_text())
    summary.update(status="interrupted", warmup=None)
    (run / "summary.json").write_text(json.dumps(summary))
    (resumed,) = train_runs([cfg], tmp_path, progress=False)
    assert resumed.summary["status"] == "completed"
    assert resumed.summary["history"] == outcome.summary["history"]  # same program, same machine: exact
    assert resumed.summary["warmup"] == outcome.summary["warmup"]
    assert _scalars(run, "train/warmup_end_step") == [(30, 30.0)]  # logged once, by the resumed run


def test_the_step_cap_ends_the_warmup_when_the_error_has_not_dropped_yet(tmp_path):
    cfg = _cfg(steps=20)  # the error rule would end it at 30; same chunk program as above, only E starts lower
    (outcome,) = train_runs([cfg], tmp_path, progress=False)
    assert outcome.summary["warmup"]["end_step"] == 20 and outcome.summary["warmup"]["ended_by"] == "steps"
    assert _scalars(tmp_path / run_id(cfg), "train/warmup_end_step") == [(20, 20.0)]
    lrs = [v for _, v in _scalars(tmp_path / run_id(cfg), "train/learning_rate")]
    np.testing.assert_array_equal(lrs, np.float32([WARM, WARM, BASE, BASE]))


def test_the_update_uses_the_held_lr_before_the_switch_and_is_untouched_after():
    """SGD with momentum and weight decay: the held update is the base one scaled by WARM/BASE."""
    o = _cfg().optim
    tx, schedule = optim.make_optimizer(o, 40), optim.lr_schedule(o, 40)
    params = {"w": jnp.arange(1.0, 7.0).reshape(2, 3)}
    grads = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)}
    updates, _ = tx.update(grads, tx.init(params), params)
    held = optim.hold_warmup_lr(updates, o, schedule, jnp.int32(5), jnp.int32(10))
    after = optim.hold_warmup_lr(updates, o, schedule, jnp.int32(10), jnp.int32(10))
    # One float32 division and product apart from -WARM * m: a few ulps.
    np.testing.assert_allclose(held["w"], updates["w"] * (WARM / BASE), rtol=4 * np.finfo(np.float32).eps)
    assert jax.numpy.array_equal(after["w"], updates["w"])  # factor exactly 1
    assert optim.learning_rate(o, schedule, 9, 10) == np.float32(WARM)
    assert optim.learning_rate(o, schedule, 10, 10) == np.float32(BASE)
    # The window rule: a window ending before E with error below the threshold moves E to its end.
    accs = jnp.float32([0.3, 0.3])  # error 0.7 < 0.75
    assert int(optim.next_warmup_end(o, jnp.int32(1000), jnp.int32(20), accs)) == 20
    assert int(optim.next_warmup_end(o, jnp.int32(1000), jnp.int32(20), accs * 0)) == 1000  # error 1.0
    assert int(optim.next_warmup_end(o, jnp.int32(10), jnp.int32(20), accs)) == 10  # already ended
    steps_only = _cfg(until_train_error=None).optim
    assert int(optim.next_warmup_end(steps_only, jnp.int32(1000), jnp.int32(20), accs)) == 1000


@pytest.mark.parametrize(
    "optim_section, message",
    [
        ({"warmup": {"kind": "constant", "steps": 400}}, "lr is required"),
        ({"warmup": {"kind": "linear", "steps": 400, "lr": 0.01}}, "kind: constant only"),
        (
            {"warmup": {"kind": "constant", "steps": 400, "lr": 0.01, "until_train_error": 1.5}},
            "less than or equal to 1",
        ),
        ({"warmup": {"kind": "constant", "steps": 400, "lr": 0.01, "until": 0.8}}, "unknown key"),
        ({"warmup": {"kind": "step", "steps": 400}}, "is not one of"),
        ({"warmup": {"kind": "linear", "steps": 10}, "warmup_steps": 10}, "give one"),
    ],
)
def test_bad_warmup_settings_name_the_key(tmp_path, optim_section, message):
    from conftest import write_config

    from resexp.core.config import load_config

    path = write_config(tmp_path / "bad.yaml", tiny_dict(optim=optim_section))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "optim" in str(err.value) and message in str(err.value), str(err.value)


def test_linear_warmup_spellings_are_one_schedule():
    a = Config.model_validate(tiny_dict(optim={"warmup_steps": 8})).optim
    b = Config.model_validate(tiny_dict(optim={"warmup": {"steps": 8}})).optim
    sa, sb = optim.lr_schedule(a, 40), optim.lr_schedule(b, 40)
    assert [float(sa(t)) for t in range(12)] == [float(sb(t)) for t in range(12)]
    assert float(sa(0)) < float(sa(7)) < float(sa(8)) == pytest.approx(a.lr)
