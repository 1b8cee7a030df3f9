"""The Table 6 recipe: per-cell sweep overrides, the shipped config, and the augmentation border."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, run_cli, tiny_dict, write_config

from resexp.core.config import Config, apply_overrides, load_config, run_id
from resexp.core.data import augment_batch, augmented_batch
from resexp.core.errors import ConfigError
from resexp.sweeps.plan import expand_grid

WARMUP = {"kind": "constant", "lr": 0.01, "until_train_error": 0.8, "steps": 2000}


def _sweep(**extra) -> dict:
    return tiny_dict(sweep={"model.depth": [8, 14], "train.seed": [0, 1]}, **extra)


def test_an_override_changes_exactly_the_cells_it_matches(tmp_path):
    path = write_config(
        tmp_path / "s.yaml",
        _sweep(
            sweep_overrides=[
                {"when": {"model.depth": 14}, "set": {"optim.warmup": WARMUP}},
                {"when": {"model.depth": 14, "train.seed": 1}, "set": {"optim.momentum": 0.5}},
            ]
        ),
    )
    plain = {(c.keys["model.depth"], c.keys["train.seed"]): c for c in expand_grid(Config.model_validate(_sweep()))}
    cells = {(c.keys["model.depth"], c.keys["train.seed"]): c for c in expand_grid(load_config(path), source=str(path))}
    for (depth, seed), c in cells.items():
        assert (c.cfg.optim.warmup is not None) == (depth == 14)
        assert c.cfg.optim.momentum == (0.5 if (depth, seed) == (14, 1) else 0.9)
        assert c.cfg.sweep_overrides == [] and c.keys == {"model.depth": depth, "train.seed": seed}
        if depth == 8:  # untouched cells keep their run ids; touched ones get new ones
            assert c.run_id == plain[(8, seed)].run_id
        else:
            assert c.run_id != plain[(14, seed)].run_id
    assert cells[(14, 0)].cfg.optim.constant_warmup.lr == 0.01


@pytest.mark.parametrize(
    "overrides, key, message",
    [
        (
            [{"when": {"model.depth": 20}, "set": {"optim.lr": 0.01}}],
            "sweep_overrides[0].when.model.depth",
            "matches no sweep cell (model.depth is swept over [8, 14])",
        ),
        (
            [{"when": {"model.shortcut": False}, "set": {"optim.lr": 0.01}}],
            "sweep_overrides[0].when.model.shortcut",
            "matches no sweep cell (model.shortcut is not swept and is True in every cell)",
        ),
        (
            [{"when": {"model.dept": 14}, "set": {"optim.lr": 0.01}}],
            "sweep_overrides[0].when.model.dept",
            "unknown key (did you mean model.depth?)",
        ),
        (
            [{"when": {"model.depth": 14}, "set": {"optim.warmupp": WARMUP}}],
            "sweep_overrides[0].set.optim.warmupp",
            "unknown key (did you mean optim.warmup?)",
        ),
        (
            [{"when": {"model.depth": 14}, "set": {"train.seed": 3}}],
            "sweep_overrides[0].set.train.seed",
            "is a sweep axis",
        ),
        ([{"when": {"model.depth": 14}, "sett": {"optim.lr": 0.01}}], "sweep_overrides[0].sett", "unknown key"),
        ([{"when": {}, "set": {"optim.lr": 0.01}}], "sweep_overrides[0].when", "at least 1 item"),
    ],
)
def test_bad_overrides_are_caught_at_load_naming_file_and_key(tmp_path, overrides, key, message):
    path = write_config(tmp_path / "bad.yaml", _sweep(sweep_overrides=overrides))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.source.startswith(str(path)) and err.value.key == key and message in err.value.message, str(
        err.value
    )


def test_a_bad_value_in_an_override_fails_before_any_run(tmp_path):
    path = write_config(
        tmp_path / "bad.yaml",
        _sweep(
            sweep_overrides=[
                {"when": {"model.depth": 14}, "set": {"optim.warmup": {**WARMUP, "untill_train_error": 0.8}}}
            ]
        ),
    )
    proc = run_cli("sweep", path, "--out", tmp_path / "runs")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{path}: sweep_overrides[0].set.optim.warmup.untill_train_error: unknown key" in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()


def test_the_table6_config_is_the_papers_recipe():
    cfg = load_config(ROOT / "configs" / "cifar10_table6.yaml")
    cells = expand_grid(cfg)
    assert len(cells) == 25 and cfg.report.reference == "he2016_table6"
    assert sorted({c.cfg.model.depth for c in cells}) == [20, 32, 44, 56, 110]
    assert sorted({c.cfg.train.seed for c in cells}) == [0, 1, 2, 3, 4]
    for c in cells:
        o = c.cfg.optim
        assert (o.name, o.lr, o.momentum, o.weight_decay, o.boundaries, c.cfg.train.steps) == (
            "sgd",
            0.1,
            0.9,
            1e-4,
            [32000, 48000],
            64000,
        )
        assert (c.cfg.data.batch_size, c.cfg.model.projection, c.cfg.data.augment) == (128, "zero_pad", True)
        w = o.constant_warmup
        assert (w is not None) == (c.cfg.model.depth == 110)
        if w is not None:
            assert (w.lr, w.until_train_error) == (0.01, 0.8)
    # The same recipe as configs/cifar10.yaml: its ResNet cells are the same runs (shared results).
    fig6 = {c.run_id for c in expand_grid(load_config(ROOT / "configs" / "cifar10.yaml"))}
    assert {c.run_id for c in cells if c.cfg.train.seed == 0 and c.cfg.model.depth < 110} <= fig6


def test_train_applies_a_matching_override(tmp_path):
    """`resexp train CONFIG --set model.depth=14` resolves its config this way (cli.train)."""
    path = write_config(
        tmp_path / "s.yaml", _sweep(sweep_overrides=[{"when": {"model.depth": 14}, "set": {"optim.warmup": WARMUP}}])
    )
    for depth in (8, 14):
        cfg = load_config(path, [f"model.depth={depth}"])
        resolved = apply_overrides(cfg, cfg, str(path))
        assert (resolved.optim.constant_warmup is not None) == (depth == 14)
        assert resolved.sweep_overrides == [] or depth == 8


# ----------------------------------------------------------------------------- the crop's border


def test_pad_value_mean_and_zero_differ_only_at_the_border():
    rng = np.random.default_rng(0)
    raw = jnp.asarray(rng.integers(0, 256, size=(16, 8, 8, 3)), jnp.uint8)
    mean, std = np.float32([120.0, 110.0, 100.0]), np.float32([60.0, 62.0, 64.0])
    normalize = lambda x: (x.astype(jnp.float32) - mean) / std  # noqa: E731 (Data.normalize's formula)
    key = jax.random.key(3)
    as_mean = augmented_batch(key, raw, normalize, "mean")
    as_zero = augmented_batch(key, raw, normalize, "zero")
    inside = augment_batch(key, jnp.ones(raw.shape, jnp.float32)) == 1  # same crops and flips, 0 on the border
    assert 0 < int((~inside).sum()) < inside.size  # the crops did reach into the border
    np.testing.assert_array_equal(np.asarray(as_mean)[inside], np.asarray(as_zero)[inside])  # bit for bit
    border = ~np.asarray(inside)
    assert np.all(np.asarray(as_mean)[border] == 0)  # the mean colour, normalised
    black = np.broadcast_to(-mean / std, raw.shape)[border]
    np.testing.assert_allclose(np.asarray(as_zero)[border], black, rtol=1e-6)  # raw 0, normalised


def test_pad_value_is_strict_and_only_in_the_run_id_when_it_changes_something():
    base = tiny_dict(data={"name": "cifar10", "augment": True})
    assert run_id(Config.model_validate(base)) != run_id(
        Config.model_validate(tiny_dict(data={"name": "cifar10", "augment": True, "pad_value": "zero"}))
    )
    unaugmented = tiny_dict(data={"augment": False})
    assert run_id(Config.model_validate(unaugmented)) == run_id(
        Config.model_validate(tiny_dict(data={"augment": False, "pad_value": "zero"}))
    )  # no crop, no border
    with pytest.raises(Exception, match="pad_value"):
        Config.model_validate(tiny_dict(data={"pad_value": "black"}))
