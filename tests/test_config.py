"""The schema, YAML typing, --set overrides, sweep axes and run ids."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT, TINY, tiny_dict, write_config

from resexp.core.config import (
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
from resexp.sweeps.plan import expand_grid


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
    from resexp.core.config import dump_yaml

    cfg = load_config(write_config(tmp_path / "c.yaml", TINY), ["optim.schedule=cosine"])
    again = Config.model_validate(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg


# --------------------------------------------------------------------------- base:


@pytest.mark.parametrize(
    "name, first, last",
    [
        ("cifar10_table6", "cifar10-resnet20-a-wd0.0001-s0-83836707", "cifar10-resnet110-a-wd0.0001-s4-a2a478fe"),
        ("weight_decay_identity", "mlp-res10-wd0-s0-c4b11270", "mlp-res10-wd0.05-s0-f52f0c41"),
    ],
)
def test_a_config_on_a_base_resolves_to_its_flat_form(name, first, last):
    """The shipped configs that say `base:` are exactly the flat files they replaced (tests/data/configs_flat):
    the same resolved config, the same cells, the same run ids."""
    from resexp.core.config import dump_yaml

    based, flat = (
        load_config(ROOT / "configs" / f"{name}.yaml"),
        load_config(ROOT / "tests/data/configs_flat" / f"{name}.yaml"),
    )
    assert "base:" in (ROOT / "configs" / f"{name}.yaml").read_text() and based == flat
    cells, flat_cells = expand_grid(based), expand_grid(flat)
    assert [(c.run_id, dump_yaml(c.cfg)) for c in cells] == [(c.run_id, dump_yaml(c.cfg)) for c in flat_cells]
    assert (cells[0].run_id, cells[-1].run_id) == (first, last)


def test_a_base_merges_mappings_key_by_key_and_replaces_the_rest(tmp_path):
    write_config(tmp_path / "root.yaml", tiny_dict(sweep={"model.depth": [8, 14], "model.shortcut": [False, True]}))
    (tmp_path / "sub").mkdir()
    write_config(tmp_path / "sub" / "mid.yaml", {"base": "../root.yaml", "model": {"widths": [4, 8, 16]}})
    path = write_config(
        tmp_path / "sub" / "leaf.yaml",
        {"base": "mid.yaml", "optim": {"lr": 0.2}, "train": {"steps": 20}, "sweep": {"train.seed": [0, 1]}},
    )
    cfg = load_config(path, ["model.depth=14"])
    flat = tiny_dict(
        name="leaf",  # a name is never inherited: each config's runs get their own directory
        model={"widths": [4, 8, 16], "depth": 14},  # a list replaces; the rest of `model` stays
        optim={"lr": 0.2},
        train={"steps": 20},
        sweep={"train.seed": [0, 1]},  # a sweep replaces as a whole: the base's axes are not added
    )
    assert cfg == Config.model_validate(flat)
    assert load_config(tmp_path / "sub" / "mid.yaml").name == "mid"


def test_a_base_is_beside_the_file_or_a_bundled_config(tmp_path):
    path = write_config(tmp_path / "mine.yaml", {"base": "demo", "train": {"steps": 100}})
    demo = load_config("demo")
    assert load_config(path) == with_updates(demo, {"name": "mine", "train.steps": 100})
    write_config(tmp_path / "demo.yaml", tiny_dict())  # a file beside it wins over the bundled name
    assert load_config(path).model == Config.model_validate(TINY).model


@pytest.mark.parametrize(
    "files, message",
    [
        ({"a.yaml": {"base": "nowhere.yaml"}}, "a.yaml: base: no such file 'nowhere.yaml' beside this config"),
        ({"a.yaml": {"base": ["b.yaml"]}}, "a.yaml: base: expected another config's file name or path"),
        ({"a.yaml": {"base": "a.yaml"}}, "a.yaml: base: a cycle of bases"),
        ({"a.yaml": {"base": "b.yaml"}, "b.yaml": {"base": "a.yaml"}}, "b.yaml: base: a cycle of bases"),
    ],
)
def test_a_bad_base_names_the_file_and_the_field(tmp_path, files, message):
    for name, raw in files.items():
        write_config(tmp_path / name, raw)
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "a.yaml")
    assert message in str(exc.value)


def test_the_shortcut_options_are_the_schemas_projections():
    from typing import get_args

    from resexp.core.config import ModelConfig
    from resexp.core.variants import ShortcutOption

    assert get_args(ModelConfig.model_fields["projection"].annotation) == tuple(o.value for o in ShortcutOption)
    assert [(o.value, o.letter, o.tag) for o in ShortcutOption] == [
        ("zero_pad", "A", "a"),
        ("learned", "B", "b"),
        ("learned_all", "C", "c"),
    ]
    assert ShortcutOption.parse("Learned") is ShortcutOption.B and ShortcutOption.parse("c") is ShortcutOption.C
    assert ShortcutOption.parse("none") is None
    assert [o.learned(changes) for o in ShortcutOption for changes in (False, True)] == [False] * 3 + [True] * 3


def test_blocks_per_stage_is_the_family_arithmetic():
    from resexp.core.config import ModelConfig, blocks_per_stage

    assert (blocks_per_stage(20), blocks_per_stage(110), blocks_per_stage(10, 2)) == (3, 18, 2)
    assert ModelConfig(depth=56).blocks_per_stage == blocks_per_stage(56) == 9
    for depth, stages in ((21, 3), (2, 3), (8, 2)):
        with pytest.raises(ValueError, match="n\\+2"):
            blocks_per_stage(depth, stages)
