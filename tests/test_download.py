"""The checksum-verified downloader, against a real HTTP server on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
from functools import partial
from pathlib import Path

import fake_datasets as fd
import pytest

import resexp.core.download as dl
from resexp.core.datasets import FILE_DATASETS, load_files
from resexp.core.download import DOWNLOADS, RemoteFile, download, file_checksum, load_manifest
from resexp.core.errors import DataError


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files, plus /truncated/... (sends half the promised bytes) and /slow/... (stalls)."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path.startswith("/truncated/"):
            body = b"x" * 4096
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) * 2))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path.startswith("/slow/"):
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.flush()
            time.sleep(1.0)
            return
        super().do_GET()

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A served folder with tiny real-format files under /<dataset>/<published filename>."""
    root = tmp_path_factory.mktemp("mirror")
    fd.write_cifar10_tar(root / "cifar10", n=4)
    fd.write_cifar100_tar(root / "cifar100", n=4)
    fd.write_idx(root / "mnist", fd.mnist_members(6, 3), gz=True)
    fd.write_idx(root / "fashion_mnist", fd.mnist_members(6, 3, offset=9), gz=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", server.requests
    finally:
        server.shutdown()
        server.server_close()


def manifest_for(root: Path, name: str) -> dict[str, str]:
    return {f.filename: fd.sha256(root / name / f.filename) for f in DOWNLOADS[name][1]}


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_download_verifies_and_is_loadable(tmp_path, mirror, name):
    root, url, requests = mirror
    before = len(requests)
    messages: list[str] = []
    out = download(
        name, tmp_path, base_url=f"{url}/{name}", manifest=manifest_for(root, name), progress=False, log=messages.append
    )
    assert out == tmp_path / name
    files = [f.filename for f in DOWNLOADS[name][1]]
    assert leftovers(out) == sorted(files)  # no .part left behind
    for f in files:
        assert (out / f).read_bytes() == (root / name / f).read_bytes()
    assert sorted(requests[before:]) == sorted(f"/{name}/{f}" for f in files)
    assert any("verified" in m for m in messages)
    splits = load_files(name, out)
    assert splits.name == name and splits.x_train.dtype.name == "uint8"
    assert load_files(name, tmp_path).x_train.shape == splits.x_train.shape  # --dir layout


def test_second_download_does_not_refetch(tmp_path, mirror):
    root, url, requests = mirror
    manifest = manifest_for(root, "mnist")
    download("mnist", tmp_path, base_url=f"{url}/mnist/", manifest=manifest, progress=False, log=lambda m: None)
    before = list(requests)
    messages: list[str] = []
    download("mnist", tmp_path, base_url=f"{url}/mnist/", manifest=manifest, progress=False, log=messages.append)
    assert requests == before
    assert len(messages) == 4 and all("already present" in m and "not downloading" in m for m in messages)


def test_wrong_checksum_leaves_nothing(tmp_path, mirror):
    root, url, _ = mirror
    manifest = {"cifar-10-python.tar.gz": "0" * 64}
    with pytest.raises(DataError) as e:
        download("cifar10", tmp_path, base_url=f"{url}/cifar10", manifest=manifest, progress=False, log=lambda m: None)
    msg = str(e.value)
    actual = fd.sha256(root / "cifar10" / "cifar-10-python.tar.gz")
    assert "cifar-10-python.tar.gz" in msg and "0" * 64 in msg and actual in msg
    assert "manifest" in msg and "\n" not in msg
    assert leftovers(tmp_path / "cifar10") == []


def test_published_checksum_is_the_default(tmp_path, mirror):
    # The fake files are not the real ones: without a manifest the published md5 must reject them.
    root, url, _ = mirror
    with pytest.raises(DataError) as e:
        download("cifar100", tmp_path, base_url=f"{url}/cifar100", progress=False, log=lambda m: None)
    msg = str(e.value)
    published = DOWNLOADS["cifar100"][1][0].md5
    actual = hashlib.md5((root / "cifar100" / "cifar-100-python.tar.gz").read_bytes()).hexdigest()
    assert f"expected md5 {published} (published)" in msg and actual in msg and "--manifest" in msg
    assert leftovers(tmp_path / "cifar100") == []


def test_md5_in_manifest_and_partial_manifest(tmp_path, mirror):
    root, url, _ = mirror
    manifest = {
        f: hashlib.md5((root / "fashion_mnist" / f).read_bytes()).hexdigest().upper()
        for f in (
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        )
    }
    manifest["unrelated-file.bin"] = "a" * 64  # a manifest may cover several datasets
    out = download(
        "fashion_mnist",
        tmp_path,
        base_url=f"{url}/fashion_mnist",
        manifest=manifest,
        progress=False,
        log=lambda m: None,
    )
    assert load_files("fashion_mnist", out).x_test.shape == (3, 28, 28, 1)


def test_present_but_corrupt_file_is_replaced(tmp_path, mirror):
    root, url, requests = mirror
    target = tmp_path / "cifar10"
    target.mkdir()
    (target / "cifar-10-python.tar.gz").write_bytes(b"half a download")
    messages: list[str] = []
    download(
        "cifar10",
        tmp_path,
        base_url=f"{url}/cifar10",
        manifest=manifest_for(root, "cifar10"),
        progress=False,
        log=messages.append,
    )
    assert (target / "cifar-10-python.tar.gz").read_bytes() == (
        root / "cifar10" / "cifar-10-python.tar.gz"
    ).read_bytes()
    assert "downloading again" in messages[0]
    assert requests[-1] == "/cifar10/cifar-10-python.tar.gz"


def test_http_404_names_file_and_url(tmp_path, mirror):
    _, url, _ = mirror
    with pytest.raises(DataError) as e:
        download("mnist", tmp_path, base_url=f"{url}/no-such-mirror", manifest=None, progress=False, log=lambda m: None)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and "HTTP 404" in msg and f"{url}/no-such-mirror/" in msg
    assert "--base-url" in msg and f"resexp data download mnist --dir {tmp_path}" in msg
    assert leftovers(tmp_path / "mnist") == []


def test_truncated_transfer_removes_part(tmp_path, mirror):
    _, url, _ = mirror
    with pytest.raises(DataError) as e:
        download("cifar10", tmp_path, base_url=f"{url}/truncated", progress=False, log=lambda m: None)
    msg = str(e.value)
    assert "cifar-10-python.tar.gz" in msg and "failed" in msg and "partial file was removed" in msg
    assert leftovers(tmp_path / "cifar10") == []


def test_stalled_server_times_out(tmp_path, mirror, monkeypatch):
    _, url, _ = mirror
    monkeypatch.setattr(dl, "TIMEOUT_S", 0.2)
    t0 = time.monotonic()
    with pytest.raises(DataError) as e:
        download("cifar100", tmp_path, base_url=f"{url}/slow", progress=False, log=lambda m: None)
    assert time.monotonic() - t0 < 0.9
    assert "timed out" in str(e.value) and "cifar-100-python.tar.gz" in str(e.value)
    assert leftovers(tmp_path / "cifar100") == []


def test_unreachable_host(tmp_path):
    """Offline: says nothing was downloaded (no 'partial file') and leaves no empty folder behind."""
    dest = tmp_path / "data"
    with pytest.raises(DataError) as e:
        download("mnist", dest, base_url="http://127.0.0.1:9", progress=False, log=lambda m: None)
    assert "train-images-idx3-ubyte.gz" in str(e.value) and "failed" in str(e.value)
    assert "nothing was downloaded" in str(e.value) and "partial" not in str(e.value)
    assert not dest.exists()


def test_offline_fashion_mnist_names_the_debian_package(tmp_path):
    with pytest.raises(DataError) as e:
        download("fashion_mnist", tmp_path / "data", base_url="http://127.0.0.1:9", progress=False, log=lambda m: None)
    msg = str(e.value)
    assert "\n" not in msg and "nothing was downloaded" in msg
    assert "`sudo apt-get install dataset-fashion-mnist`" in msg and "/usr/share/datasets" in msg


def test_progress_bar_and_default_log(tmp_path, mirror, capsys):
    root, url, _ = mirror
    download("mnist", tmp_path, base_url=f"{url}/mnist", manifest=manifest_for(root, "mnist"), progress=True)
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz" in err and "verified" in err


def test_unknown_dataset_and_unwritable_dest(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'svhn'"):
        download("svhn", tmp_path, progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cannot create"):
        download("mnist", blocker, progress=False, log=lambda m: None)


def test_bad_manifest_value(tmp_path, mirror):
    _, url, _ = mirror
    with pytest.raises(DataError, match="not a checksum"):
        download("cifar10", tmp_path, base_url=url, manifest={"cifar-10-python.tar.gz": "abc"}, progress=False)


def test_load_manifest(tmp_path):
    good = tmp_path / "m.json"
    good.write_text(json.dumps({"cifar-10-python.tar.gz": "AB" * 32, "x.gz": "cd" * 16}))
    assert load_manifest(good) == {"cifar-10-python.tar.gz": "ab" * 32, "x.gz": "cd" * 16}
    bad = tmp_path / "bad.json"
    for text, needle in [("{", "not valid JSON"), ("[1]", "JSON object"), ('{"f": "xyz"}', "not a checksum")]:
        bad.write_text(text)
        with pytest.raises(DataError, match=needle):
            load_manifest(bad)
    with pytest.raises(DataError, match="does not exist"):
        load_manifest(tmp_path / "missing.json")


def test_file_checksum(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    assert file_checksum(f, "md5") == "900150983cd24fb0d6963f7d28e17f72"
    assert file_checksum(f, "sha256") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_download_table_is_complete_and_well_formed():
    assert set(DOWNLOADS) == set(FILE_DATASETS)
    for base, files in DOWNLOADS.values():
        assert base.startswith(("https://", "http://")) and base.endswith("/")
        assert files and all(isinstance(f, RemoteFile) for f in files)
        for f in files:
            assert f.sha256 or f.md5
            if f.md5:
                assert len(f.md5) == 32 and int(f.md5, 16) >= 0
            if f.sha256:
                assert len(f.sha256) == 64 and int(f.sha256, 16) >= 0
    assert DOWNLOADS["cifar10"][0] == "https://www.cs.toronto.edu/~kriz/"
    assert DOWNLOADS["cifar10"][1][0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert DOWNLOADS["mnist"][0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
