"""Write tiny datasets in the real published formats, for tests.

* CIFAR: python pickles as in cifar-{10,100}-python.tar.gz. The originals were written by
  Python 2's cPickle (protocol 2): str keys and byte strings are SHORT_BINSTRING/BINSTRING
  opcodes and the numpy array refers to numpy.core.multiarray._reconstruct. `Py2Pickler`
  reproduces exactly that, so the loader is tested against the real opcode stream, which
  only loads with encoding="bytes".
* MNIST / Fashion-MNIST: big-endian IDX files (magic 0x0803 images, 0x0801 labels), written
  with struct, gzipped or not.

Pixel values are a deterministic function of (index, channel, row, col) so tests can check
where each value lands after CHW -> HWC conversion: see `cifar_pixel`, `mnist_pixel`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
CIFAR100_FILES = ("train", "test")
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class Py2Pickler(pickle._Pickler):  # the pure-python pickler lets us swap opcode writers
    """Pickle like Python 2 cPickle: bytes and str as (SHORT_)BINSTRING, numpy.core globals."""

    # The pure-python pickler's internals (dispatch, write, memoize) are not in typeshed's stubs.
    dispatch: ClassVar[dict[type, Any]] = pickle._Pickler.dispatch.copy()

    def _save_py2_string(self, obj: bytes | str) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        me: Any = self
        if len(data) < 256:
            me.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            me.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        me.memoize(obj)

    dispatch[bytes] = _save_py2_string
    dispatch[str] = _save_py2_string

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None)
        if module == "numpy._core.multiarray":
            me: Any = self
            me.write(pickle.GLOBAL + b"numpy.core.multiarray\n" + obj.__name__.encode() + b"\n")
            me.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch[type(np.zeros(1).__reduce__()[0])] = save_global  # builtin functions


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def cifar_pixel(i: int, c: int, h: int, w: int, offset: int = 0) -> int:
    """The value stored at image i, channel c, row h, col w (all distinct-ish, < 256)."""
    return (offset + 7 * i + 50 * c + 3 * h + 5 * w) % 256


def cifar_images(n: int, offset: int = 0) -> np.ndarray:
    """(n, 3072) uint8 rows in the CIFAR layout: 1024 red, 1024 green, 1024 blue, row-major."""
    i, c, h, w = np.meshgrid(np.arange(n), np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    chw = (offset + 7 * i + 50 * c + 3 * h + 5 * w) % 256
    return chw.reshape(n, 3072).astype(np.uint8)


def cifar_batch_bytes(
    n: int,
    labels: list[int],
    offset: int = 0,
    *,
    label_key: str = "labels",
    py2: bool = True,
    extra: dict | None = None,
) -> bytes:
    entry = {
        b"batch_label": b"fake batch",
        label_key.encode(): list(labels),
        b"data": cifar_images(n, offset),
        b"filenames": [f"img_{k}.png".encode() for k in range(n)],
    }
    entry.update(extra or {})
    return py2_pickle(entry) if py2 else pickle.dumps(entry, protocol=4)


def cifar10_members(n: int = 10) -> dict[str, bytes]:
    out = {}
    for k, f in enumerate(CIFAR10_FILES):
        labels = [(k + j) % 10 for j in range(n)]
        out[f] = cifar_batch_bytes(n, labels, offset=k * n * 7)
    out["batches.meta"] = py2_pickle({b"label_names": [b"airplane"] * 10, b"num_vis": 3072})
    return out


def cifar100_members(n: int = 10) -> dict[str, bytes]:
    out = {}
    for k, f in enumerate(CIFAR100_FILES):
        fine = [(37 * k + 11 * j) % 100 for j in range(n)]
        coarse = [v // 5 for v in fine]
        out[f] = cifar_batch_bytes(
            n,
            fine,
            offset=k * n * 7,
            label_key="fine_labels",
            extra={b"coarse_labels": coarse},
        )
    out["meta"] = py2_pickle({b"fine_label_names": [b"x"] * 100, b"coarse_label_names": [b"y"] * 20})
    return out


def write_members(directory: Path, members: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for f, data in members.items():
        (directory / f).write_bytes(data)
    return directory


def write_tar_gz(archive: Path, folder: str, members: dict[str, bytes]) -> Path:
    """A real .tar.gz with everything under `folder/`, like the published CIFAR archives."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(folder)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
        for f, data in members.items():
            info = tarfile.TarInfo(f"{folder}/{f}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return archive


def write_cifar10_tar(directory: Path, n: int = 10) -> Path:
    return write_tar_gz(directory / "cifar-10-python.tar.gz", "cifar-10-batches-py", cifar10_members(n))


def write_cifar100_tar(directory: Path, n: int = 10) -> Path:
    return write_tar_gz(directory / "cifar-100-python.tar.gz", "cifar-100-python", cifar100_members(n))


def mnist_pixel(i: int, h: int, w: int, offset: int = 0) -> int:
    return (offset + 11 * i + 3 * h + 2 * w) % 256


def idx_images(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", 0x00000803, n, rows, cols) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + np.asarray(labels, np.uint8).tobytes()


def mnist_members(n_train: int = 12, n_test: int = 5, size: int = 28, offset: int = 0) -> dict[str, bytes]:
    def images(n: int, off: int) -> np.ndarray:
        i, h, w = np.meshgrid(np.arange(n), np.arange(size), np.arange(size), indexing="ij")
        return ((off + 11 * i + 3 * h + 2 * w) % 256).astype(np.uint8)

    return {
        "train-images-idx3-ubyte": idx_images(images(n_train, offset)),
        "train-labels-idx1-ubyte": idx_labels(np.arange(n_train) % 10),
        "t10k-images-idx3-ubyte": idx_images(images(n_test, offset + 1)),
        "t10k-labels-idx1-ubyte": idx_labels((np.arange(n_test) * 3) % 10),
    }


def write_idx(directory: Path, members: dict[str, bytes], gz: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for f, data in members.items():
        if gz:
            (directory / f"{f}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (directory / f).write_bytes(data)
    return directory


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
