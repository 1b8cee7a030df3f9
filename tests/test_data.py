"""Datasets in memory and the jittable sampler/augmenter: determinism is what resume relies on."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resexp.core.config import ConfigError, DataConfig
from resexp.core.data import augment_batch, batch_indices, digits, load_data, synthetic


def test_digits_is_the_real_embedded_set():
    d = digits()
    assert d.x_train.shape == (1500, 8, 8, 1) and d.x_test.shape == (297, 8, 8, 1)
    assert d.x_train.dtype == np.uint8 and int(d.x_train.max()) == 16 and int(d.x_train.min()) == 0
    assert set(np.unique(d.y_train)) == set(range(10))
    again = digits()
    assert np.array_equal(d.x_train, again.x_train) and np.array_equal(d.y_test, again.y_test)


def test_synthetic_any_shape_and_deterministic():
    a = synthetic(64, 16, 12, 2, 4)
    assert a.x_train.shape == (64, 12, 12, 2) and a.x_test.shape == (16, 12, 12, 2) and a.num_classes == 4
    assert np.array_equal(a.x_train, synthetic(64, 16, 12, 2, 4).x_train)
    # Learnable: class means differ much more than the noise between two same-class means.
    means = np.stack([a.x_train[a.y_train == c].mean(0) for c in range(4) if (a.y_train == c).sum()])
    assert np.abs(means[0] - means[1]).mean() > 0.3


def test_load_data_normalises_with_train_statistics():
    d = load_data(DataConfig(name="digits", batch_size=32))
    x = np.asarray(d.normalize(d.x_train))
    assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-3
    assert d.augment is False  # crop+flip would break digits; on by default only for CIFAR


def test_batch_larger_than_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data\.batch_size"):
        load_data(DataConfig(name="synthetic", num_train=16, num_test=8, image_size=4, batch_size=32))


def test_batches_are_a_function_of_seed_and_step_and_cover_each_epoch():
    key = jax.random.key(7)
    n, b = 50, 10
    epoch = np.concatenate([np.asarray(batch_indices(key, jnp.int32(s), n, b)) for s in range(5)])
    assert sorted(epoch) == list(range(50))  # one epoch: every example exactly once
    again = np.asarray(batch_indices(key, jnp.int32(3), n, b))
    assert np.array_equal(again, epoch[30:40])  # step 3 is always the same batch
    next_epoch = np.concatenate([np.asarray(batch_indices(key, jnp.int32(s), n, b)) for s in range(5, 10)])
    assert sorted(next_epoch) == list(range(50)) and not np.array_equal(next_epoch, epoch)  # reshuffled
    other_seed = np.asarray(batch_indices(jax.random.key(8), jnp.int32(0), n, b))
    assert not np.array_equal(other_seed, epoch[:10])


def test_augmentation_is_a_pad4_crop_and_maybe_a_flip():
    x = jax.random.normal(jax.random.key(0), (6, 5, 5, 2))
    out = np.asarray(augment_batch(jax.random.key(1), x))
    padded = np.pad(np.asarray(x), ((0, 0), (4, 4), (4, 4), (0, 0)))
    flips = 0
    for i in range(6):
        matches = [
            (dy, dx, f)
            for dy in range(9)
            for dx in range(9)
            for f in (False, True)
            if np.array_equal(
                out[i], (padded[i, dy : dy + 5, dx : dx + 5][:, ::-1] if f else padded[i, dy : dy + 5, dx : dx + 5])
            )
        ]
        assert matches, f"example {i} is not a crop of the padded image"
        flips += matches[0][2]
    out2 = np.asarray(augment_batch(jax.random.key(1), x))
    assert np.array_equal(out, out2)  # same key, same augmentation
    assert not np.array_equal(out, np.asarray(augment_batch(jax.random.key(2), x)))
