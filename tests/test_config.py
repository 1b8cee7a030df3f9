"""The schema, YAML typing, --set overrides, sweep axes and run ids."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT, TINY, tiny_dict, write_config

from resexp.config import (
    Config,
    ConfigError,
    config_hash,
    legacy_run_id,
    load_config,
    parse_value,
    run_id,
    valid_keys,
    with_updates,
)
from resexp.sweep import expand_grid


def test_defaults_are_the_paper_recipe():
    cfg = Config()
    assert (cfg.model.depth, cfg.model.widths, cfg.model.projection) == (20, [16, 32, 64], "zero_pad")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.1, 0.9, 1e-4)


def test_yaml_scientific_notation_is_a_float(tmp_path):
    # PyYAML's YAML 1.1 resolver reads `1e-4` as a *string*; ours must not.
    path = write_config(tmp_path / "c.yaml", "optim:\n  weight_decay: 1e-4\n  lr: 5e-2\n")
    cfg = load_config(path)
    assert cfg.optim.weight_decay == 1e-4 and cfg.optim.lr == 0.05


def test_set_overrides_are_yaml_typed_and_saved(tmp_path):
    path = write_config(tmp_path / "c.yaml", TINY)
    cfg = load_config(
        path,
        [
            "model.depth=14",
            "model.shortcut=false",
            "model.widths=[2, 4, 6]",
            "optim.weight_decay=1e-3",
            "data.augment=true",
        ],
    )
    assert cfg.model.depth == 14 and cfg.model.shortcut is False and cfg.model.widths == [2, 4, 6]
    assert cfg.optim.weight_decay == 1e-3 and cfg.data.augment is True
    assert parse_value("0.1") == 0.1 and parse_value("abc") == "abc"


def test_name_defaults_to_file_stem(tmp_path):
    cfg = load_config(write_config(tmp_path / "my-exp.yaml", {"model": {"depth": 8}}))
    assert cfg.name == "my-exp"


@pytest.mark.parametrize(
    "raw, key, fragment",
    [
        ({"model": {"depth": 21}}, "model.depth", "6n+2"),
        ({"model": {"depht": 20}}, "model.depht", "did you mean model.depth"),
        ({"model": {"projection": "option_d"}}, "model.projection", "zero_pad"),
        ({"optim": {"lr": -0.1}}, "optim.lr", "greater than 0"),
        ({"optim": {"weight_decay": -1e-4}}, "optim.weight_decay", "greater than or equal to 0"),
        ({"train": {"steps": 0}}, "train.steps", "greater than 0"),
        ({"data": {"batch_size": "big"}}, "data.batch_size", "integer"),
        ({"model": {"shortcut": "yes please"}}, "model.shortcut", "boolean"),
        ({"train": {"log_every": 10, "checkpoint_every": 15}}, "train.checkpoint_every", "multiple of log_every"),
        ({"data": {"name": "imagenet"}}, "data.name", "digits"),
    ],
)
def test_errors_name_file_and_key(tmp_path, raw, key, fragment):
    path = write_config(tmp_path / "bad.yaml", raw)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and key in message and fragment in message, message


def test_bad_set_names_the_override(tmp_path):
    path = write_config(tmp_path / "c.yaml", TINY)
    with pytest.raises(ConfigError, match=r"--set model.depth=9.*model.depth"):
        load_config(path, ["model.depth=9"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["model.depth"])
    with pytest.raises(ConfigError, match=r"unknown key.*model\.depth"):
        load_config(path, ["model.dept=8"])


def test_sweep_axes_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"sweep\.model\.depht: unknown key"):
        load_config(write_config(tmp_path / "a.yaml", tiny_dict(sweep={"model.depht": [8]})))
    with pytest.raises(ConfigError, match=r"sweep\.model\.depth: empty sweep axis"):
        load_config(write_config(tmp_path / "b.yaml", tiny_dict(sweep={"model.depth": []})))


def test_run_id_is_readable_stable_and_ignores_bookkeeping(tmp_path):
    a = Config.model_validate(tiny_dict())
    assert run_id(a).startswith("resnet8-a-wd0.0001-s0-")
    assert run_id(a) == run_id(Config.model_validate(tiny_dict()))
    # The name, the sweep section and how seeds were batched do not change what a run computes.
    b = with_updates(a, {"name": "other", "train.vmap_seeds": 4})
    assert config_hash(a) == config_hash(b)
    # Anything that changes the numbers changes the id.
    for key, value in [("optim.lr", 0.01), ("train.seed", 1), ("model.widths", [4, 8, 16]), ("train.steps", 41)]:
        assert run_id(with_updates(a, {key: value})) != run_id(a), key
    plain = with_updates(a, {"model.shortcut": False})
    assert run_id(plain).startswith("plain8-")


def test_digits_run_ids_never_change():
    """The demo's eight run ids, as every earlier version gave them (evaluated with the running
    averages, as the demo was before it chose precise BN): digits runs on disk stay found."""
    cells = expand_grid(load_config(ROOT / "configs" / "demo.yaml", ["train.precise_bn_batches=0"]))
    assert [c.run_id for c in cells] == [
        "plain8-wd0.0001-s0-9bafe534",
        "resnet8-a-wd0.0001-s0-2c4d0519",
        "plain20-wd0.0001-s0-928f63e8",
        "resnet20-a-wd0.0001-s0-a9b739ea",
        "plain32-wd0.0001-s0-222284bf",
        "resnet32-a-wd0.0001-s0-e9b91e7c",
        "plain56-wd0.0001-s0-fb546819",
        "resnet56-a-wd0.0001-s0-30441d6d",
    ]
    assert all(legacy_run_id(c.cfg) == c.run_id for c in cells)


def test_run_id_names_the_dataset_and_ignores_where_it_lies():
    fm = Config.model_validate(tiny_dict(data={"name": "fashion_mnist"}))
    assert run_id(fm).startswith("fmnist-resnet8-a-wd0.0001-s0-")
    for where in ("/usr/share/datasets", "/usr/share/datasets/fashion-mnist", "~/data", "/mnt/other"):
        assert run_id(with_updates(fm, {"data.dir": where})) == run_id(fm), where
    # The synthetic-only keys do not describe Fashion-MNIST: they cannot change its run.
    assert run_id(with_updates(fm, {"data.image_size": 64, "data.channels": 1})) == run_id(fm)
    # The data still counts: another dataset, or anything that changes the numbers, is another run.
    assert run_id(with_updates(fm, {"data.name": "mnist"})).startswith("mnist-resnet8-")
    assert run_id(with_updates(fm, {"data.batch_size": 64})) != run_id(fm)
    synth = with_updates(fm, {"data.name": "synthetic"})
    assert run_id(synth).startswith("synth-") and run_id(with_updates(synth, {"data.image_size": 16})) != run_id(synth)
    # What an earlier version called these runs: data.dir in the hash, no dataset in front.
    assert legacy_run_id(fm).startswith("resnet8-a-wd0.0001-s0-")
    assert legacy_run_id(with_updates(fm, {"data.dir": "/usr/share/datasets"})) != legacy_run_id(fm)


def test_every_documented_core_key_exists():
    contract = [
        "model.kind",
        "model.depth",
        "model.widths",
        "model.shortcut",
        "model.projection",
        "model.norm",
        "optim.lr",
        "optim.momentum",
        "optim.weight_decay",
        "data.name",
        "data.dir",
        "data.batch_size",
        "train.steps",
        "train.seed",
        "train.checkpoint_every",
    ]
    assert set(contract) <= set(valid_keys())


def test_resolved_config_round_trips(tmp_path):
    from resexp.config import dump_yaml

    cfg = load_config(write_config(tmp_path / "c.yaml", TINY), ["optim.schedule=cosine"])
    again = Config.model_validate(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg
