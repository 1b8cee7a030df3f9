"""Datasets by name -> arrays in device memory, plus the jittable batch sampler and augmenter.

Batches are a pure function of (seed, step): step s of a run always sees the same
examples, so a resumed run replays exactly what an uninterrupted one would have seen.
Sampling and augmentation run inside the jitted training loop; Python never touches
a batch.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from resexp.core.config import DataConfig
from resexp.core.datasets import (
    FILE_DATASETS,
    ArraySplits,
    Content,
    default_data_dir,
    find_dataset,
    load_files,
    verify_content,
)
from resexp.core.errors import ConfigError, DataError

__all__ = ["Data", "default_data_dir", "load_data", "load_splits"]

DIGITS_TEST = 297  # the embedded set: 1,797 images -> 1,500 train / 297 test


@dataclass(frozen=True)
class Data:
    """A dataset resident on the device; images stay in their stored dtype (uint8 for files)."""

    name: str
    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    mean: np.ndarray  # per-channel, from the training split
    std: np.ndarray
    num_classes: int
    augment: bool
    content: Content | None = None  # where the data was read and its bytes' digests

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])

    def describe(self) -> dict:
        """The data a run really saw, for its summary.json: name, sizes, shape, source and digest."""
        c = self.content
        return {
            "name": self.name,
            "num_train": self.num_train,
            "num_test": self.num_test,
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "augment": self.augment,
            "source": c.source if c else None,
            "sha256": c.digest if c else None,
            "files_sha256": dict(c.files) if c else None,
            "verified": c.verified if c else False,
        }

    def normalize(self, x: jax.Array) -> jax.Array:
        return (x.astype(jnp.float32) - jnp.asarray(self.mean)) / jnp.asarray(self.std)


# --------------------------------------------------------------------------- sources


def digits() -> ArraySplits:
    """The real 8x8 handwritten digits shipped inside scikit-learn (UCI, 1,797 images).

    Read straight from the package's CSV: importing sklearn itself would cost seconds (and
    `importlib.resources.files("sklearn.datasets")` imports it), so find the file via the spec.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits dataset ships with scikit-learn, which is not installed: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    raw = gzip.decompress(path.read_bytes())
    table = np.loadtxt(raw.decode().splitlines(), delimiter=",", dtype=np.int64)
    images = table[:, :-1].reshape(-1, 8, 8, 1).astype(np.uint8)  # intensities 0..16
    labels = table[:, -1].astype(np.int32)
    order = np.random.default_rng(0).permutation(len(labels))  # fixed split, independent of any run
    test, train = order[:DIGITS_TEST], order[DIGITS_TEST:]
    content = Content(str(path), {"digits.csv": hashlib.sha256(raw).hexdigest()})
    return ArraySplits(images[train], labels[train], images[test], labels[test], 10, "digits", content)


def synthetic(num_train: int, num_test: int, image_size: int, channels: int, num_classes: int) -> ArraySplits:
    """A deterministic procedural task: each class is a smooth random pattern, seen through noise.

    Learnable but not trivial, of any size and shape: for tests and benchmarks.
    """
    rng = np.random.default_rng(1234)
    grid = np.linspace(0, 2 * np.pi, image_size, dtype=np.float32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    templates = np.zeros((num_classes, image_size, image_size, channels), np.float32)
    for c in range(num_classes):
        for ch in range(channels):
            for _ in range(3):
                fy, fx = rng.integers(1, 4, size=2)
                phase = rng.uniform(0, 2 * np.pi)
                templates[c, :, :, ch] += np.sin(fy * yy + fx * xx + phase)
    total = num_train + num_test
    labels = rng.integers(0, num_classes, size=total).astype(np.int32)
    gains = rng.uniform(0.5, 1.5, size=(total, 1, 1, 1)).astype(np.float32)
    noise = rng.normal(0, 1.0, size=(total, image_size, image_size, channels)).astype(np.float32)
    images = templates[labels] * gains + noise
    digest = hashlib.sha256()
    for part in (images, labels):
        digest.update(np.ascontiguousarray(part).tobytes())
    content = Content("generated (resexp.core.data.synthetic)", {"arrays": digest.hexdigest()})
    train, test = slice(None, num_train), slice(num_train, None)
    return ArraySplits(images[train], labels[train], images[test], labels[test], num_classes, "synthetic", content)


def load_splits(cfg: DataConfig) -> ArraySplits:
    """The arrays of the configured dataset. A file dataset is read from `data.dir`, or else found
    along the search path (resexp.core.datasets.data_search_path), and checked against its published digests."""
    if cfg.name == "digits":
        return digits()
    if cfg.name == "synthetic":
        return synthetic(cfg.num_train, cfg.num_test, cfg.image_size, cfg.channels, cfg.num_classes)
    assert cfg.name in FILE_DATASETS
    splits = load_files(cfg.name, _find(cfg))
    assert splits.content is not None  # every file reader records it
    return dataclasses.replace(splits, content=verify_content(splits.content, cfg.name))


def _find(cfg: DataConfig) -> Path:
    """The dataset's folder; when a `data.dir` misses it but the search path has it, the error says so."""
    try:
        return find_dataset(cfg.name, cfg.dir)
    except DataError as missed:
        if cfg.dir is None:
            raise
        try:
            elsewhere = find_dataset(cfg.name)
        except DataError:
            raise missed from None
        raise DataError(f"{missed}; a copy was found in {elsewhere}: leave data.dir unset to use it") from None


def load_data(cfg: DataConfig, source: str = "config") -> Data:
    """Load, check against the config, and move to the default device."""
    splits = load_splits(cfg)
    n = len(splits.y_train)
    if cfg.batch_size > n:
        raise ConfigError(
            source, "data.batch_size", f"{cfg.batch_size} exceeds the {n} training examples of {cfg.name}"
        )
    x = splits.x_train.astype(np.float32)
    axes = tuple(range(x.ndim - 1))
    mean, std = x.mean(axis=axes), x.std(axis=axes) + 1e-6
    augment = cfg.augment if cfg.augment is not None else cfg.name in ("cifar10", "cifar100")
    return Data(
        name=cfg.name,
        x_train=jax.device_put(splits.x_train),
        y_train=jax.device_put(splits.y_train),
        x_test=jax.device_put(splits.x_test),
        y_test=jax.device_put(splits.y_test),
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        num_classes=splits.num_classes,
        augment=augment,
        content=splits.content,
    )


# --------------------------------------------------------------------------- in the jitted loop


def batch_indices(key: jax.Array, step: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """Indices of batch `step`: epoch-wise shuffles without replacement, a function of (key, step)."""
    per_epoch = num_examples // batch_size
    epoch, within = step // per_epoch, step % per_epoch
    order = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    return jax.lax.dynamic_slice(order, (within * batch_size,), (batch_size,))


def precise_bn_indices(num_examples: int, batches: int, batch_size: int) -> np.ndarray:
    """[batches, batch_size] training indices for precise BN: fixed for a dataset size (not a
    function of the run's seed or step), so every evaluation of every run recomputes its BN
    statistics on the same images. Epoch-wise shuffles without replacement, as in training;
    beyond one epoch a new shuffle follows."""
    per_epoch = num_examples // batch_size
    rng = np.random.default_rng(0)
    orders = [rng.permutation(num_examples)[: per_epoch * batch_size] for _ in range(-(-batches // per_epoch))]
    return np.concatenate(orders)[: batches * batch_size].reshape(batches, batch_size).astype(np.int32)


def augment_batch(key: jax.Array, x: jax.Array, pad: int = 4) -> jax.Array:
    """He et al.'s augmentation: pad 4, random crop back to size, random horizontal flip."""
    crop_key, flip_key = jax.random.split(key)
    b, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * pad + 1)
    crops = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(padded, offsets)
    flip = jax.random.bernoulli(flip_key, 0.5, (b,))
    return jnp.where(flip[:, None, None, None], crops[:, :, ::-1, :], crops)


def augmented_batch(key: jax.Array, x_raw: jax.Array, normalize, pad_value: str = "mean") -> jax.Array:
    """Normalised, augmented training batch; `pad_value` decides what the crop's border holds.

    mean: normalise, then pad with zeros, so the border is the mean colour. This is what
          facebook/fb.resnet.torch's CIFAR-10 loader does (ColorNormalize, then RandomCrop(32, 4)
          zero-pads), and resexp's default.
    zero: pad the raw image with black pixels, then normalise (torchvision's
          RandomCrop(32, padding=4) before Normalize, as in akamaster/pytorch_resnet_cifar10).
    Normalisation is per element, so inside the crop both give bit-identical values; only the
    border differs (0 vs -mean/std). The effect on test error is expected to be <~0.1 pt.
    """
    if pad_value == "zero":
        return normalize(augment_batch(key, x_raw.astype(jnp.float32)))
    return augment_batch(key, normalize(x_raw))


def dataset_shape(cfg: DataConfig) -> tuple[tuple[int, int, int], int]:
    """(image shape, classes) without loading anything: for `resexp model`."""
    if cfg.name == "digits":
        return (8, 8, 1), 10
    if cfg.name == "synthetic":
        return (cfg.image_size, cfg.image_size, cfg.channels), cfg.num_classes
    from resexp.core.datasets import DATASET_INFO

    info = DATASET_INFO[cfg.name]
    return tuple(info.image_shape), info.num_classes  # type: ignore[return-value]
