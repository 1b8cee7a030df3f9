"""File-backed datasets: read CIFAR-10/100 and (Fashion-)MNIST from their published formats.

Each loader returns plain numpy arrays (:class:`ArraySplits`): images uint8 NHWC, labels int32,
and the dataset's :class:`Content`: where it was read and the sha256 of each file's decompressed
bytes. Those digests, not the file names or the compression, are the dataset's identity: the
official ``.gz`` files and a recompressed copy (Debian's ``dataset-fashion-mnist``) hold the same
bytes. Where the published content is known (:data:`CONTENT_SHA256`), :func:`verify_content`
refuses anything else. Nothing here downloads; :mod:`resexp.core.download` fetches the files, and every
"not found" error names the exact command that fixes it.

With no folder given, :func:`find_dataset` looks in :func:`data_search_path`: ``$RESEXP_DATA_DIR``,
``~/.cache/resexp/data`` (where ``resexp data download`` puts files), then the system folder
``/usr/share/datasets`` (Debian's layout, e.g. ``fashion-mnist/``).

Accepted layouts, for ``load_files(name, directory)``:

* ``cifar10``: ``data_batch_1..5`` and ``test_batch`` (python pickles) in ``directory``, in
  ``directory/cifar-10-batches-py``, in ``directory/cifar10`` (or its ``cifar-10-batches-py``),
  or the unextracted ``cifar-10-python.tar.gz`` in ``directory`` or ``directory/cifar10``
  (read directly, nothing is extracted). ``directory`` may also be the archive itself.
* ``cifar100``: the same with ``train``, ``test``, ``cifar-100-python`` and
  ``cifar-100-python.tar.gz``; the 100 fine labels are used.
* ``mnist``, ``fashion_mnist``: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each gzipped (``.gz``) or not, in
  ``directory`` or in a subfolder named like the dataset (``directory/mnist``).

The CIFAR pickles are read with a restricted unpickler that only builds the few numpy and
builtin types those files contain, so a hostile pickle cannot run code.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shlex
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from resexp.core.errors import DataError

__all__ = [
    "CONTENT_SHA256",
    "DATASET_INFO",
    "FILE_DATASETS",
    "SYSTEM_DATA_DIR",
    "SYSTEM_PACKAGES",
    "ArraySplits",
    "Content",
    "DatasetInfo",
    "IncompleteDataset",
    "content_digest",
    "data_search_path",
    "default_data_dir",
    "describe_missing",
    "download_command",
    "find_dataset",
    "load_files",
    "locate",
    "verify_content",
]

FILE_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "mnist", "fashion_mnist")

SYSTEM_DATA_DIR = Path("/usr/share/datasets")  # Debian's dataset packages install here
SYSTEM_PACKAGES: dict[str, str] = {"fashion_mnist": "dataset-fashion-mnist"}  # Debian package per dataset

# The sha256 of each file's *decompressed* bytes (IDX files as published; a .gz's own MD5 changes
# whenever it is recompressed, these do not). Fashion-MNIST: measured on Debian's
# dataset-fashion-mnist, whose decompressed files match the digests other projects derived from
# the publisher's MD5-checked archives; MNIST: the digests those projects agree on. CIFAR has no
# published content digest: its runs record the digest they read, unverified.
CONTENT_SHA256: dict[str, dict[str, str]] = {
    "fashion_mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
}


def content_digest(files: dict[str, str]) -> str:
    """One digest for a dataset from its files' digests (by logical name, so .gz or not is the same)."""
    text = "".join(f"{name} {files[name]}\n" for name in sorted(files))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Content:
    """What a run's data really was: where it was read and the sha256 of every file's decompressed bytes."""

    source: str  # the folder or archive read
    files: dict[str, str]  # logical file name (no .gz) -> sha256 of its decompressed bytes
    verified: bool = False  # every digest matched CONTENT_SHA256 (set by verify_content)

    @property
    def digest(self) -> str:
        return content_digest(self.files)


@dataclass(frozen=True, eq=False)
class ArraySplits:
    """Train and test arrays of one dataset: images uint8 NHWC, labels int32 in [0, num_classes)."""

    x_train: np.ndarray  # uint8, NHWC (N, H, W, C)
    y_train: np.ndarray  # int32 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str
    content: Content | None = field(default=None, compare=False)  # file datasets: where from, which bytes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        h, w, c = self.x_train.shape[1:]
        return int(h), int(w), int(c)

    def __repr__(self) -> str:
        return (
            f"ArraySplits(name={self.name!r}, x_train={self.x_train.shape} {self.x_train.dtype}, "
            f"x_test={self.x_test.shape} {self.x_test.dtype}, num_classes={self.num_classes})"
        )


@dataclass(frozen=True)
class DatasetInfo:
    """What a file dataset looks like on disk and in memory."""

    name: str
    title: str  # human name for messages: "CIFAR-10"
    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, C)
    files: tuple[str, ...]  # the files the loader reads (CIFAR: inside the folder/archive)
    expected: str  # short human description of `files` for messages
    folder: str | None = None  # CIFAR: the standard extracted folder name
    archive: str | None = None  # CIFAR: the published archive name


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_EXPECTED = (
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte, each optionally .gz"
)

DATASET_INFO: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        title="CIFAR-10",
        num_classes=10,
        image_shape=(32, 32, 3),
        files=(*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
        expected="data_batch_1..5 and test_batch, or cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        title="CIFAR-100",
        num_classes=100,
        image_shape=(32, 32, 3),
        files=("train", "test"),
        expected="train and test, or cifar-100-python.tar.gz",
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
    ),
    "mnist": DatasetInfo(
        name="mnist",
        title="MNIST",
        num_classes=10,
        image_shape=(28, 28, 1),
        files=_IDX_FILES,
        expected=_IDX_EXPECTED,
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        title="Fashion-MNIST",
        num_classes=10,
        image_shape=(28, 28, 1),
        files=_IDX_FILES,
        expected=_IDX_EXPECTED,
    ),
}

# Extra subfolder names, besides the dataset's own name, that other tools commonly use.
_ALIASES: dict[str, tuple[str, ...]] = {
    "mnist": ("MNIST/raw",),
    "fashion_mnist": ("fashion-mnist", "FashionMNIST/raw"),
}


# --------------------------------------------------------------------------- messages


def _info(name: str) -> DatasetInfo:
    try:
        return DATASET_INFO[name]
    except KeyError:
        raise DataError(f"unknown file dataset {name!r}: choose one of {', '.join(FILE_DATASETS)}") from None


def download_command(name: str, directory: str | Path) -> str:
    """The exact shell command that puts dataset `name` where ``load_files(name, directory)`` finds it.

    ``resexp data download NAME --dir D`` writes into ``D/NAME``; the loader looks in
    ``directory`` and ``directory/NAME``, so a `directory` already called NAME gets its parent.
    """
    d = Path(directory)
    if d.name == name and d.parent != d:
        d = d.parent
    return f"resexp data download {name} --dir {shlex.quote(str(d))}"


def _system_hint(name: str) -> str:
    """`, or `sudo apt-get install dataset-fashion-mnist`` where a system package ships the dataset."""
    package = SYSTEM_PACKAGES.get(name)
    return f", or install it with `sudo apt-get install {package}`" if package else ""


def _official_sources(name: str) -> str:
    package = SYSTEM_PACKAGES.get(name)
    return f"`resexp data download {name}`" + (f" or `sudo apt-get install {package}`" if package else "")


def _fix(name: str, directory: str | Path) -> str:
    return f"run `{download_command(name, directory)}`{_system_hint(name)}, or set data.dir to the folder that holds it"


def describe_missing(name: str, directory: str | Path, missing: Sequence[str] = ()) -> str:
    """One line: what is missing where, and the command that fixes it."""
    info = _info(name)
    if missing:
        what = f"{info.title} in {directory} is incomplete (missing {', '.join(missing)})"
    else:
        what = f"{info.title} not found in {directory} (expected {info.expected})"
    return f"{what}: {_fix(name, directory)}"


def _corrupt(name: str, file: str | Path, problem: str, directory: str | Path) -> DataError:
    return DataError(
        f"{_info(name).title} file {file} is corrupt ({problem}): delete it and "
        f"run `{download_command(name, directory)}` again"
    )


# --------------------------------------------------------------------------- locating


class IncompleteDataset(DataError):
    """Some of a dataset's files are in a folder, not all."""


@dataclass(frozen=True)
class _Found:
    kind: str  # "dir" | "archive" | "idx"
    path: Path  # the folder or the archive
    files: dict[str, Path]  # idx: logical name -> actual file (maybe .gz)


def _subdirs(directory: Path, name: str, folder: str | None) -> list[Path]:
    out = [directory]
    if folder:
        out.append(directory / folder)
    out.append(directory / name)
    if folder:
        out.append(directory / name / folder)
    out.extend(directory / alias for alias in _ALIASES.get(name, ()))
    return out


def _locate(name: str, directory: Path) -> _Found:
    info = _info(name)
    if directory.is_file():
        if info.archive and directory.name == info.archive:
            return _Found("archive", directory, {})
        raise DataError(
            f"{info.title}: {directory} is a file, not a directory "
            f"(expected a folder with {info.expected}): set data.dir to its folder"
        )
    if not directory.exists():
        raise DataError(f"{info.title} directory {directory} does not exist: {_fix(name, directory)}")
    if not directory.is_dir():
        raise DataError(f"{info.title}: {directory} is not a directory: set data.dir to a folder")

    partial: tuple[Path, list[str]] | None = None  # most complete incomplete folder
    best = 0
    for d in _subdirs(directory, name, info.folder):
        if not d.is_dir():
            continue
        found: dict[str, Path] = {}
        for f in info.files:
            plain, gz = d / f, d / f"{f}.gz"
            if plain.is_file():
                found[f] = plain
            elif info.archive is None and gz.is_file():
                found[f] = gz
        if len(found) == len(info.files):
            return _Found("dir" if info.archive else "idx", d, found)
        if len(found) > best:
            best = len(found)
            partial = (d, [f for f in info.files if f not in found])
    if info.archive:
        for d in (directory, directory / name):
            if (d / info.archive).is_file():
                return _Found("archive", d / info.archive, {})
    if partial is not None:
        d, missing = partial
        raise IncompleteDataset(
            f"{info.title} in {d} is incomplete (missing {', '.join(missing)}): {_fix(name, directory)}"
        )
    raise DataError(describe_missing(name, directory))


def locate(name: str, directory: str | Path) -> Path:
    """The folder (or CIFAR archive) that ``load_files(name, directory)`` would read.

    Raises DataError, with the fixing command, when the dataset is missing or incomplete.
    Cheap: only checks that files exist, reads nothing.
    """
    return _locate(name, Path(directory).expanduser()).path


def default_data_dir() -> Path:
    """Where `resexp data download` puts datasets (in DIR/NAME/): $RESEXP_DATA_DIR, else ~/.cache/resexp/data."""
    return Path(os.environ.get("RESEXP_DATA_DIR") or Path.home() / ".cache" / "resexp" / "data").expanduser()


def data_search_path() -> list[Path]:
    """Where a dataset is looked for when `data.dir` is not set, in order, without duplicates:
    $RESEXP_DATA_DIR, ~/.cache/resexp/data, then the system folder /usr/share/datasets."""
    env = os.environ.get("RESEXP_DATA_DIR")
    dirs = [Path(env).expanduser()] if env else []
    dirs += [Path.home() / ".cache" / "resexp" / "data", SYSTEM_DATA_DIR]
    return list(dict.fromkeys(dirs))


def find_dataset(name: str, directory: str | Path | None = None, search: Sequence[Path] | None = None) -> Path:
    """The folder (or CIFAR archive) to read dataset `name` from: in `directory` when given, else the
    first complete copy along `search` (default: :func:`data_search_path`).

    Raises DataError, one line with the fixing commands, when no complete copy exists. Reads nothing.
    """
    if directory is not None:
        return locate(name, directory)
    info = _info(name)
    places = list(data_search_path() if search is None else search)
    incomplete: DataError | None = None
    for place in places:
        if not place.is_dir():
            continue
        try:
            return _locate(name, place).path
        except IncompleteDataset as e:  # look further; report it if no complete copy turns up
            incomplete = incomplete or e
        except DataError:
            continue
    if incomplete is not None:
        raise incomplete
    where = ", ".join(str(p) for p in places)
    raise DataError(
        f"{info.title} not found in {where} (expected {info.expected}): run `resexp data download {name}`"
        f"{_system_hint(name)}, or set data.dir to the folder that holds it"
    )


def verify_content(content: Content, name: str) -> Content:
    """`content`, marked verified when `name` has published digests and every file matches them.

    A file whose decompressed bytes differ from the published ones is not this dataset: DataError,
    one line naming the file and both digests. Datasets without published digests pass unverified.
    """
    pinned = CONTENT_SHA256.get(name)
    if pinned is None:
        return content
    info = _info(name)
    for file, expected in pinned.items():
        actual = content.files.get(file)
        if actual != expected:
            raise DataError(
                f"{info.title} file {file} in {content.source} is not the published one (sha256 of its "
                f"decompressed bytes {actual}, expected {expected}): replace it with the official file "
                f"({_official_sources(name)})"
            )
    return Content(content.source, dict(content.files), verified=True)


# --------------------------------------------------------------------------- CIFAR


# Resolve numpy's pickle helpers from the objects themselves, so the table holds for numpy 1
# (numpy.core) and numpy 2 (numpy._core) whichever module name a pickle spells.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1, np.uint8))[0]
_SCALAR = np.float64(0).__reduce__()[0]
_FROMBUFFER = np.zeros(1, np.uint8).__reduce_ex__(5)[0]

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED_GLOBALS[(_mod, "_reconstruct")] = _RECONSTRUCT
    _ALLOWED_GLOBALS[(_mod, "scalar")] = _SCALAR
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED_GLOBALS[(_mod, "_frombuffer")] = _FROMBUFFER
_ALLOWED_GLOBALS[("numpy", "ndarray")] = np.ndarray
_ALLOWED_GLOBALS[("numpy", "dtype")] = np.dtype
# Python 3 pickles bytes with protocol < 3 as _codecs.encode(str, "latin1"): harmless.
_ALLOWED_GLOBALS[("_codecs", "encode")] = __import__("codecs").encode
for _mod in ("builtins", "__builtin__"):
    for _name, _obj in (("set", set), ("frozenset", frozenset), ("bytearray", bytearray), ("complex", complex)):
        _ALLOWED_GLOBALS[(_mod, _name)] = _obj


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only plain containers, numpy arrays/dtypes/scalars: never imports or calls anything else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}, which a CIFAR batch never contains"
            ) from None


def _unpickle(stream: IO[bytes]) -> Any:
    # encoding="bytes": the batches were written by Python 2, their str keys come back as bytes.
    return _RestrictedUnpickler(stream, encoding="bytes").load()


def _cifar_batch(obj: Any, name: str, label_key: str, file: str, directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """Validate one unpickled batch dict and convert it: CHW rows -> NHWC uint8, labels int32."""
    info = DATASET_INFO[name]
    if not isinstance(obj, dict):
        raise _corrupt(name, file, f"holds a {type(obj).__name__}, not a batch dict", directory)
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    for key in ("data", label_key):
        if key not in batch:
            raise _corrupt(name, file, f"no {key!r} entry", directory)
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise _corrupt(name, file, "'data' is not a uint8 array", directory)
    h, w, c = info.image_shape
    row = h * w * c
    if data.ndim != 2 or data.shape[1] != row:
        raise _corrupt(name, file, f"'data' has shape {data.shape}, expected (N, {row})", directory)
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise _corrupt(name, file, f"{label_key!r} are not integers", directory) from None
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DataError(
            f"{info.title} file {file} has {data.shape[0]} images but {labels.size} labels: "
            f"delete it and run `{download_command(name, directory)}` again"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise _corrupt(
            name, file, f"labels outside 0..{info.num_classes - 1} (found {labels.min()}..{labels.max()})", directory
        )
    images = data.reshape(-1, c, h, w).transpose(0, 2, 3, 1)  # CHW rows -> NHWC
    return np.ascontiguousarray(images), labels.astype(np.int32)


def _load_pickle(stream: IO[bytes], name: str, label_key: str, file: str, directory: Path):
    try:
        obj = _unpickle(stream)
    except pickle.UnpicklingError as e:
        raise _corrupt(name, file, f"not a valid pickle: {e}", directory) from None
    except (
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        MemoryError,
        OverflowError,
        UnicodeDecodeError,
    ) as e:
        problem = "truncated" if isinstance(e, EOFError) else f"unreadable pickle: {e}"
        raise _corrupt(name, file, problem, directory) from None
    return _cifar_batch(obj, name, label_key, file, directory)


def _load_cifar(name: str, found: _Found, directory: Path) -> ArraySplits:
    info = DATASET_INFO[name]
    label_key = "labels" if name == "cifar10" else "fine_labels"
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    digests: dict[str, str] = {}
    if found.kind == "dir":
        for f in info.files:
            path = found.files[f]
            try:
                raw = path.read_bytes()
            except OSError as e:
                raise DataError(f"cannot read {path}: {e.strerror or e}: check its permissions") from None
            digests[f] = _sha256(raw)
            batches[f] = _load_pickle(io.BytesIO(raw), name, label_key, str(path), directory)
    else:
        batches, digests = _read_cifar_archive(name, found.path, label_key, directory)
    train = [batches[f] for f in info.files[:-1]]
    x_test, y_test = batches[info.files[-1]]
    return ArraySplits(
        x_train=np.concatenate([x for x, _ in train]),
        y_train=np.concatenate([y for _, y in train]),
        x_test=x_test,
        y_test=y_test,
        num_classes=info.num_classes,
        name=name,
        content=Content(str(found.path), digests),
    )


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _read_cifar_archive(name: str, archive: Path, label_key: str, directory: Path):
    """Stream the .tar.gz once, unpickling the wanted members as they pass (no extraction);
    returns the batches and each member's sha256."""
    info = DATASET_INFO[name]
    wanted = set(info.files)
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    digests: dict[str, str] = {}
    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            for member in tar:
                base = member.name.rstrip("/").rsplit("/", 1)[-1]
                if not member.isfile() or base not in wanted or base in batches:
                    continue
                stream = tar.extractfile(member)
                assert stream is not None  # regular file
                label = f"{archive}:{member.name}"
                raw = stream.read()
                digests[base] = _sha256(raw)
                batches[base] = _load_pickle(io.BytesIO(raw), name, label_key, label, directory)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise _corrupt(name, archive, f"not a readable .tar.gz, maybe truncated: {e}", directory) from None
    except OSError as e:
        raise DataError(f"cannot read {archive}: {e.strerror or e}: check its permissions") from None
    missing = [f for f in info.files if f not in batches]
    if missing:
        raise DataError(
            f"{info.title} archive {archive} lacks {', '.join(missing)}: it is not the published "
            f"{info.archive}; delete it and run `{download_command(name, directory)}` again"
        )
    return batches, digests


# --------------------------------------------------------------------------- IDX (MNIST)

_IDX_UBYTE = 0x08


def _read_maybe_gzip(path: Path, name: str, directory: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}: check its permissions") from None
    if raw[:2] != b"\x1f\x8b":
        # Not gzipped, whatever its name says (browsers sometimes unpack and keep ".gz").
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        problem = "truncated gzip data" if isinstance(e, EOFError) else f"bad gzip data: {e}"
        raise _corrupt(name, path, problem, directory) from None


def _parse_idx(raw: bytes, ndim: int, path: Path, name: str, directory: Path) -> np.ndarray:
    """Parse an IDX file of unsigned bytes with `ndim` dimensions (3 images, 1 labels)."""
    kind = "image" if ndim == 3 else "label"
    magic = 0x0800 | ndim
    header = 4 + 4 * ndim
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != _IDX_UBYTE or raw[3] != ndim:
        found = raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
        raise _corrupt(
            name,
            path,
            f"bad magic number {found}, expected {magic:08x} for an IDX {kind} file",
            directory,
        )
    if len(raw) < header:
        raise _corrupt(name, path, "truncated header", directory)
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        how = "truncated" if len(raw) < expected else "trailing data"
        raise _corrupt(
            name,
            path,
            f"{how}: {len(raw)} bytes, expected {expected} for shape {tuple(dims)}",
            directory,
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx(name: str, found: _Found, directory: Path) -> ArraySplits:
    info = DATASET_INFO[name]
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    digests: dict[str, str] = {}
    for split in ("train", "t10k"):
        img_path = found.files[f"{split}-images-idx3-ubyte"]
        lab_path = found.files[f"{split}-labels-idx1-ubyte"]
        raw_images = _read_maybe_gzip(img_path, name, directory)
        raw_labels = _read_maybe_gzip(lab_path, name, directory)
        digests[f"{split}-images-idx3-ubyte"] = _sha256(raw_images)
        digests[f"{split}-labels-idx1-ubyte"] = _sha256(raw_labels)
        images = _parse_idx(raw_images, 3, img_path, name, directory)
        labels = _parse_idx(raw_labels, 1, lab_path, name, directory)
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{info.title}: {img_path} has {images.shape[0]} images but {lab_path} has "
                f"{labels.shape[0]} labels (files from different downloads?): delete them and "
                f"run `{download_command(name, directory)}` again"
            )
        if labels.size and labels.max() >= info.num_classes:
            raise _corrupt(
                name,
                lab_path,
                f"labels outside 0..{info.num_classes - 1} (max {labels.max()})",
                directory,
            )
        splits[split] = (images[..., None].copy(), labels.astype(np.int32))
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["t10k"]
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{info.title}: train images are {x_train.shape[1:3]} but test images are "
            f"{x_test.shape[1:3]} in {found.path}: the files are from different datasets; "
            f"run `{download_command(name, directory)}`"
        )
    return ArraySplits(x_train, y_train, x_test, y_test, info.num_classes, name, Content(str(found.path), digests))


# --------------------------------------------------------------------------- entry point


def load_files(name: str, directory: str | Path) -> ArraySplits:
    """Load file dataset `name` (one of FILE_DATASETS) from `directory`.

    Returns uint8 NHWC images and int32 labels. Raises DataError, one line with the fix,
    when the folder or a file is missing, truncated or corrupt.
    """
    directory = Path(directory).expanduser()
    found = _locate(name, directory)
    if found.kind == "idx":
        return _load_idx(name, found, directory)
    return _load_cifar(name, found, directory)
