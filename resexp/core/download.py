"""Fetch the file datasets from their official hosts (or a mirror), verifying every checksum.

``download(name, dest)`` writes the published files, unchanged, into ``dest/<name>/`` and
returns that folder, which :func:`resexp.core.datasets.load_files` reads as is (the CIFAR
archives are read without extraction). Each file streams into ``<file>.part`` next to its
final place, is hashed on the way, and is renamed with ``os.replace`` only once its checksum
matches, so an interrupted or corrupt transfer never leaves a file the loader could trust.
A file already present with the right checksum is not fetched again.

Checksums are the MD5s published by the dataset authors (also the ones torchvision checks).
A mirror that repacks files can be used with ``manifest``: filename -> sha256 (or md5) hex.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shlex
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from resexp.core.errors import DataError

__all__ = ["DOWNLOADS", "TIMEOUT_S", "RemoteFile", "download", "file_checksum", "load_manifest"]

TIMEOUT_S = 60.0  # per socket operation (connect, each read), not for the whole file
_CHUNK = 1 << 20
_USER_AGENT = "resexp-dataset-downloader/0.1 (+python-urllib)"


@dataclass(frozen=True)
class RemoteFile:
    """One published file and its published checksum(s); at least one of sha256/md5 is set."""

    filename: str
    sha256: str | None
    md5: str | None


# name -> (default base URL, files). MD5s: as published by the authors (CIFAR:
# https://www.cs.toronto.edu/~kriz/cifar.html; Fashion-MNIST: its GitHub README) and as
# checked by torchvision.datasets.CIFAR10/CIFAR100/MNIST/FashionMNIST.
DOWNLOADS: dict[str, tuple[str, tuple[RemoteFile, ...]]] = {
    "cifar10": (
        "https://www.cs.toronto.edu/~kriz/",
        (RemoteFile("cifar-10-python.tar.gz", None, "c58f30108f718f92721af3b95e74349a"),),
    ),
    "cifar100": (
        "https://www.cs.toronto.edu/~kriz/",
        (RemoteFile("cifar-100-python.tar.gz", None, "eb9058c3a382ffc7106e4002c42a8d85"),),
    ),
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        (
            RemoteFile("train-images-idx3-ubyte.gz", None, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            RemoteFile("train-labels-idx1-ubyte.gz", None, "d53e105ee54ea40749a09fcbcd1e9432"),
            RemoteFile("t10k-images-idx3-ubyte.gz", None, "9fb629c4189551a2d022fa330f9573f3"),
            RemoteFile("t10k-labels-idx1-ubyte.gz", None, "ec29112dd5afa0611ce80d1b7f02629c"),
        ),
    ),
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        (
            RemoteFile("train-images-idx3-ubyte.gz", None, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            RemoteFile("train-labels-idx1-ubyte.gz", None, "25c81989df183df01b3e8a0aad5dffbe"),
            RemoteFile("t10k-images-idx3-ubyte.gz", None, "bef4ecab320f06d8554ea6380940ec79"),
            RemoteFile("t10k-labels-idx1-ubyte.gz", None, "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
    ),
}

_HEX_LEN = {64: "sha256", 32: "md5"}


def _command(name: str, dest: Path) -> str:
    return f"resexp data download {name} --dir {shlex.quote(str(dest))}"


def _offline_hint(name: str) -> str:
    """Where a system package ships the same data, the way to it without a network."""
    from resexp.core.datasets import SYSTEM_DATA_DIR, SYSTEM_PACKAGES

    package = SYSTEM_PACKAGES.get(name)
    if package is None:
        return ""
    return (
        f"; offline, `sudo apt-get install {package}` (Debian) installs the same files in "
        f"{SYSTEM_DATA_DIR}, where resexp finds them"
    )


def file_checksum(path: str | Path, algorithm: str) -> str:
    """Hex digest of a file ("sha256" or "md5"), read in chunks."""
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_hex(value: object, where: str) -> tuple[str, str]:
    """(algorithm, lowercase hex) for a manifest/table entry, or DataError."""
    if isinstance(value, str):
        v = value.strip().lower()
        if len(v) in _HEX_LEN and all(ch in "0123456789abcdef" for ch in v):
            return _HEX_LEN[len(v)], v
    raise DataError(f"{where}: {value!r} is not a checksum: give 64 hex digits (sha256) or 32 (md5)")


def load_manifest(path: str | Path) -> dict[str, str]:
    """Read a ``--manifest FILE.json``: a JSON object {filename: sha256 hex (or md5 hex)}."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"manifest {path} does not exist: check the --manifest path") from None
    except OSError as e:
        raise DataError(f"cannot read manifest {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(
            f"manifest {path} is not valid JSON ({e}): write an object like "
            '{"cifar-10-python.tar.gz": "<sha256 hex>"}'
        ) from None
    if not isinstance(data, dict):
        raise DataError(f"manifest {path} must be a JSON object of filename -> sha256, not a {type(data).__name__}")
    for key, value in data.items():
        _check_hex(value, f"manifest {path}, entry {key!r}")
    return {str(k): str(v).strip().lower() for k, v in data.items()}


def _expected(remote: RemoteFile, manifest: Mapping[str, str] | None) -> tuple[str, str, str]:
    """(algorithm, hex, source) to verify `remote` against."""
    if manifest and remote.filename in manifest:
        algo, hexd = _check_hex(manifest[remote.filename], f"manifest entry {remote.filename!r}")
        return algo, hexd, "manifest"
    if remote.sha256:
        return "sha256", remote.sha256.lower(), "published"
    if remote.md5:
        return "md5", remote.md5.lower(), "published"
    raise DataError(  # a table entry without any checksum is our bug, but say how to proceed
        f"no checksum known for {remote.filename}: pass --manifest FILE.json with its sha256"
    )


def _default_log(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False).print(message, markup=False)


def _fetch(url: str, part: Path, algorithm: str, progress: bool, label: str) -> tuple[str, int]:
    """Stream `url` into `part`, hashing on the way: (hex digest, bytes). Raises on any failure."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    h = hashlib.new(algorithm, usedforsecurity=False)
    received = 0
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        bar = _progress_bar(label, total) if progress else None
        try:
            with open(part, "wb") as out:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar[0].update(bar[1], completed=received)
        finally:
            if bar is not None:
                bar[0].stop()
    if total is not None and received != total:
        raise http.client.IncompleteRead(b"", total - received)
    return h.hexdigest(), received


def _progress_bar(label: str, total: int | None):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    bar.start()
    return bar, bar.add_task(label, total=total)


def _network_problem(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"{e.reason}"
    if isinstance(e, http.client.IncompleteRead):
        short = f" ({e.expected} bytes short)" if e.expected else ""
        return f"connection closed early{short}"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"timed out after {TIMEOUT_S:g} s without data"
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return f"{type(e).__name__}: {e}"


def download(
    name: str,
    dest: Path,
    base_url: str | None = None,
    manifest: dict[str, str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Download dataset `name` into ``dest/<name>/`` and return that folder.

    base_url: a mirror (or local server) serving the same filenames; default: the official host.
    manifest: filename -> sha256 hex (md5 hex also accepted), overriding the published checksums
        for the files it names (for mirrors that repack files).
    progress: show a rich progress bar on stderr per file.
    log: where one-line status messages go (default: stderr).

    Raises DataError (file, expected and actual checksum, what to do) on a checksum mismatch,
    network error or interruption; the partial file is removed first.
    """
    if name not in DOWNLOADS:
        raise DataError(f"unknown dataset {name!r} to download: choose one of {', '.join(DOWNLOADS)}")
    say = log or _default_log
    default_url, remotes = DOWNLOADS[name]
    base = (base_url or default_url).rstrip("/") + "/"
    dest = Path(dest).expanduser()
    target = dest / name
    created = [d for d in (dest, target) if not d.exists()]  # removed again if nothing lands in them
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {target}: {e.strerror or e}: choose a writable folder with --dir") from None

    for remote in remotes:
        algorithm, expected, source = _expected(remote, manifest)
        final = target / remote.filename
        part = target / f"{remote.filename}.part"
        if final.is_file():
            actual = file_checksum(final, algorithm)
            if actual == expected:
                say(f"{remote.filename}: already present in {target}, {algorithm} verified; not downloading")
                continue
            say(f"{remote.filename}: present but its {algorithm} is {actual}, expected {expected}; downloading again")
        url = base + remote.filename
        say(f"{remote.filename}: downloading {url}")
        try:
            actual, size = _fetch(url, part, algorithm, progress, remote.filename)
        except (OSError, http.client.HTTPException, ValueError, KeyboardInterrupt) as e:
            # OSError covers URLError/HTTPError, timeouts, resets and disk errors.
            partial = part.exists()
            part.unlink(missing_ok=True)
            for d in reversed(created):  # a folder this call made and nothing was saved in
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
            if isinstance(e, urllib.error.HTTPError):
                e.close()  # it holds the open response
            removed = "the partial file was removed" if partial else "nothing was downloaded"
            raise DataError(
                f"downloading {remote.filename} from {url} failed ({_network_problem(e)}); {removed}: "
                f"check the network or --base-url, then run `{_command(name, dest)}` again{_offline_hint(name)}"
            ) from None
        if actual != expected:
            part.unlink(missing_ok=True)
            hint = (
                "the manifest does not match what the mirror serves: fix the manifest"
                if source == "manifest"
                else "re-run to retry; for a mirror that repacks files pass --manifest FILE.json with their sha256"
            )
            raise DataError(
                f"checksum mismatch for {remote.filename} from {url}: expected {algorithm} "
                f"{expected} ({source}), got {actual} ({size} bytes); the file was removed: {hint}"
            )
        os.replace(part, final)
        say(f"{remote.filename}: {algorithm} verified, saved to {final}")
    return target
