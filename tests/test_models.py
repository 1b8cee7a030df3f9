"""The He et al. CIFAR family and the lecture's MLP: parameter counts, shapes, options A/B/C."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from tolerance import assert_within_noise, exact_in_float64, spread

from resexp.core.config import ModelConfig
from resexp.core.models import Net, build_model, count_params, iter_blocks, layer_table


def abstract_params(cfg: ModelConfig, shape=(32, 32, 3), classes=10) -> int:
    """Parameter count without running any init (eval_shape): fast even for ResNet-110."""
    model = nnx.eval_shape(lambda: Net(cfg, shape, classes, rngs=nnx.Rngs(params=0)))
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


@pytest.mark.parametrize(
    "depth, projection, shortcut, expected",
    [
        (20, "zero_pad", True, 269_722),  # ResNet-20, He et al. Table 6: 0.27M
        (20, "zero_pad", False, 269_722),  # plain-20: the same layers
        (56, "zero_pad", True, 853_018),  # ResNet-56: 0.85M
        (110, "zero_pad", True, 1_727_962),  # ResNet-110: 1.7M
        (20, "learned", True, 272_474),  # option B: 1x1 conv + BN at the two stage changes
    ],
)
def test_parameter_counts_match_the_paper(depth, projection, shortcut, expected):
    cfg = ModelConfig(depth=depth, projection=projection, shortcut=shortcut)
    assert abstract_params(cfg) == expected
    assert sum(r.params for r in layer_table(cfg, (32, 32, 3), 10)) == expected  # the `model` table agrees


def test_option_c_projects_every_block():
    b = abstract_params(ModelConfig(depth=20, projection="learned"))
    c = abstract_params(ModelConfig(depth=20, projection="learned_all"))
    # C adds a 1x1 conv + BN on each of the 7 identity shortcuts: 3 at 16 ch, 2 at 32, 2 at 64.
    assert c - b == 3 * (16 * 16 + 32) + 2 * (32 * 32 + 64) + 2 * (64 * 64 + 128)


def test_macs_resnet20():
    # ~41M multiply-accumulates per 32x32 image, the usual figure for ResNet-20.
    macs = sum(r.macs for r in layer_table(ModelConfig(depth=20), (32, 32, 3), 10))
    assert 40e6 < macs < 42e6


@pytest.mark.parametrize("projection", ["zero_pad", "learned", "learned_all"])
def test_option_shapes_and_shortcut_modes(projection):
    cfg = ModelConfig(depth=14, widths=[4, 8, 16], projection=projection)
    model = build_model(cfg, (8, 8, 3), 5, seed=0)
    logits, stats = model.forward(jnp.ones((2, 8, 8, 3)), train=False, collect=True)
    assert logits.shape == (2, 5)
    assert stats["residual_ratio"].shape == (6,) and stats["response_std"].shape == (13,)
    modes = [b.shortcut.mode for _, b in iter_blocks(model)]
    expected = {
        "zero_pad": ["identity", "identity", "zero_pad", "identity", "zero_pad", "identity"],
        "learned": ["identity", "identity", "learned", "identity", "learned", "identity"],
        "learned_all": ["learned"] * 6,
    }[projection]
    assert modes == expected
    h = jnp.ones((2, 8, 8, 4))
    first_of_stage2 = dict(iter_blocks(model))["stage2/block0"]
    assert first_of_stage2.shortcut(h, False).shape == (2, 4, 4, 8)  # subsampled, 4 -> 8 channels


def test_option_a_subsamples_and_pads_with_zeros():
    model = build_model(ModelConfig(depth=8, widths=[2, 4, 4]), (4, 4, 1), 3, seed=0)
    block = dict(iter_blocks(model))["stage2/block0"]
    x = jnp.arange(2 * 4 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 4, 2)
    s = block.shortcut(x, False)
    assert jnp.array_equal(s[..., :2], x[:, ::2, ::2, :]) and jnp.all(s[..., 2:] == 0)


def test_plain_net_has_no_shortcut_and_same_forward_shapes():
    model = build_model(ModelConfig(depth=8, widths=[4, 8, 8], shortcut=False), (8, 8, 1), 10, seed=0)
    assert all(b.shortcut is None for _, b in iter_blocks(model))
    logits, stats = model.forward(jnp.ones((3, 8, 8, 1)), collect=True)
    assert logits.shape == (3, 10) and "residual_ratio" not in stats


def test_scanned_blocks_equal_unrolled_blocks():
    """The scan over stacked blocks computes exactly what running the blocks one by one does."""
    cfg = ModelConfig(depth=14, widths=[4, 8, 8])
    model = build_model(cfg, (8, 8, 1), 10, seed=3)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    by_scan = model(x)

    def by_hand(model, x):
        h = jax.nn.relu(model.stem_norm(model.stem(x), False))
        for _, block in iter_blocks(model):
            h, _ = block(h, False)
        return model.head(jnp.mean(h, axis=(1, 2)))

    graphdef, state = nnx.split(model)
    exact = exact_in_float64(lambda st, x: by_hand(nnx.merge(graphdef, st), x), state, x)
    # two programs, one computation: the scan within 8x the unrolled blocks' own rounding error
    assert_within_noise(by_scan, exact, spread(by_hand(model, x), exact), multiple=8, what="logits")


def test_he_init_and_seed_determinism():
    a = build_model(ModelConfig(depth=8, widths=[16, 16, 16]), (8, 8, 16), 10, seed=0)
    b = build_model(ModelConfig(depth=8, widths=[16, 16, 16]), (8, 8, 16), 10, seed=0)
    c = build_model(ModelConfig(depth=8, widths=[16, 16, 16]), (8, 8, 16), 10, seed=1)
    k = a.stages[0].first.layer1.kernel[...]
    assert jnp.array_equal(k, b.stages[0].first.layer1.kernel[...])
    assert not jnp.array_equal(k, c.stages[0].first.layer1.kernel[...])
    fan_in = 3 * 3 * 16
    assert abs(float(jnp.std(k)) - (2 / fan_in) ** 0.5) < 0.15 * (2 / fan_in) ** 0.5  # He: std = sqrt(2 / fan_in)


def test_lecture_mlp_blocks_and_width_change():
    cfg = ModelConfig(kind="mlp", depth=10, widths=[128, 256], norm="none", projection="learned")
    model = build_model(cfg, (8, 8, 1), 10, seed=0)
    modes = [(name, b.shortcut.mode) for name, b in iter_blocks(model)]
    assert modes == [
        ("stage1/block0", "identity"),
        ("stage1/block1", "identity"),
        ("stage2/block0", "learned"),
        ("stage2/block1", "identity"),
    ]
    ws = dict(iter_blocks(model))["stage2/block0"].shortcut.proj
    assert ws.kernel[...].shape == (128, 256)  # Ws: 128 -> 256
    assert model(jnp.ones((2, 8, 8, 1))).shape == (2, 10)
    assert count_params(model) == sum(r.params for r in layer_table(cfg, (8, 8, 1), 10))


def test_zero_init_residual_and_rezero_start_as_identity_branches():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    for flag in ("zero_init_residual", "rezero"):
        cfg = ModelConfig(depth=8, widths=[4, 8, 8], **{flag: True})
        _, stats = build_model(cfg, (8, 8, 1), 10, seed=0).forward(x, train=True, collect=True)
        assert jnp.allclose(stats["residual_ratio"], 0.0), flag
