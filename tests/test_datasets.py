"""File dataset readers against tiny files written in the real published formats."""

from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path

import fake_datasets as fd
import numpy as np
import pytest

from resexp.core.datasets import (
    CONTENT_SHA256,
    DATASET_INFO,
    FILE_DATASETS,
    SYSTEM_DATA_DIR,
    ArraySplits,
    data_search_path,
    default_data_dir,
    describe_missing,
    download_command,
    find_dataset,
    load_files,
    locate,
    verify_content,
)
from resexp.core.errors import DataError, UserError

N = 10  # images per CIFAR batch file


def check_cifar10(s: ArraySplits) -> None:
    assert s.name == "cifar10" and s.num_classes == 10
    assert s.x_train.shape == (5 * N, 32, 32, 3) and s.x_train.dtype == np.uint8
    assert s.x_test.shape == (N, 32, 32, 3) and s.x_test.dtype == np.uint8
    assert s.y_train.shape == (5 * N,) and s.y_train.dtype == np.int32
    assert s.y_test.shape == (N,) and s.y_test.dtype == np.int32
    assert s.x_train.flags.c_contiguous
    assert s.image_shape == (32, 32, 3)
    # Labels in file order: batch k holds (k + j) % 10.
    expected_train = [(k + j) % 10 for k in range(5) for j in range(N)]
    assert s.y_train.tolist() == expected_train
    assert s.y_test.tolist() == [(5 + j) % 10 for j in range(N)]
    # CHW rows -> NHWC: the byte for (image i, channel c, row h, col w) lands at [i, h, w, c].
    for k, i, c, h, w in [(0, 0, 0, 0, 1), (0, 3, 2, 5, 7), (2, 9, 1, 31, 0), (4, 4, 2, 17, 30)]:
        got = int(s.x_train[k * N + i, h, w, c])
        assert got == fd.cifar_pixel(i, c, h, w, offset=k * N * 7), (k, i, c, h, w)
    assert int(s.x_test[6, 12, 3, 1]) == fd.cifar_pixel(6, 1, 12, 3, offset=5 * N * 7)
    # ... and the raw row is the plain CHW flattening of the image.
    row = fd.cifar_images(N)[3]
    np.testing.assert_array_equal(s.x_train[3].transpose(2, 0, 1).reshape(-1), row)


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar10_extracted_folder(tmp_path):
    fd.write_members(tmp_path, fd.cifar10_members(N))
    check_cifar10(load_files("cifar10", tmp_path))


def test_cifar10_standard_subfolder_and_str_path(tmp_path):
    fd.write_members(tmp_path / "cifar-10-batches-py", fd.cifar10_members(N))
    check_cifar10(load_files("cifar10", str(tmp_path)))
    assert locate("cifar10", tmp_path) == tmp_path / "cifar-10-batches-py"


def test_cifar10_archive_read_without_extraction(tmp_path):
    archive = fd.write_cifar10_tar(tmp_path, N)
    check_cifar10(load_files("cifar10", tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz"]
    check_cifar10(load_files("cifar10", archive))  # the archive path itself also works


def test_cifar10_download_layout(tmp_path):
    # `resexp data download cifar10 --dir D` leaves D/cifar10/cifar-10-python.tar.gz.
    fd.write_cifar10_tar(tmp_path / "cifar10", N)
    check_cifar10(load_files("cifar10", tmp_path))
    check_cifar10(load_files("cifar10", tmp_path / "cifar10"))


def test_cifar_python3_pickles_also_load(tmp_path):
    members = {
        f: fd.cifar_batch_bytes(N, [(k + j) % 10 for j in range(N)], offset=k * N * 7, py2=False)
        for k, f in enumerate(fd.CIFAR10_FILES)
    }
    fd.write_members(tmp_path, members)
    check_cifar10(load_files("cifar10", tmp_path))


# --------------------------------------------------------------------------- CIFAR-100


@pytest.mark.parametrize("layout", ["folder", "archive"])
def test_cifar100_fine_labels(tmp_path, layout):
    if layout == "folder":
        fd.write_members(tmp_path / "cifar-100-python", fd.cifar100_members(N))
    else:
        fd.write_cifar100_tar(tmp_path, N)
    s = load_files("cifar100", tmp_path)
    assert s.num_classes == 100 and s.name == "cifar100"
    assert s.x_train.shape == (N, 32, 32, 3) and s.x_test.shape == (N, 32, 32, 3)
    assert s.y_train.tolist() == [(11 * j) % 100 for j in range(N)]  # fine, not coarse
    assert s.y_test.tolist() == [(37 + 11 * j) % 100 for j in range(N)]
    assert s.y_train.dtype == np.int32
    assert int(s.x_test[2, 4, 8, 2]) == fd.cifar_pixel(2, 2, 4, 8, offset=N * 7)


# --------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_datasets(tmp_path, name, gz):
    fd.write_idx(tmp_path / name, fd.mnist_members(12, 5), gz=gz)  # subfolder named like the dataset
    s = load_files(name, tmp_path)
    assert s.name == name and s.num_classes == 10
    assert s.x_train.shape == (12, 28, 28, 1) and s.x_train.dtype == np.uint8
    assert s.x_test.shape == (5, 28, 28, 1) and s.x_test.dtype == np.uint8
    assert s.y_train.dtype == np.int32 and s.y_train.tolist() == [i % 10 for i in range(12)]
    assert s.y_test.tolist() == [(3 * i) % 10 for i in range(5)]
    assert int(s.x_train[7, 20, 3, 0]) == fd.mnist_pixel(7, 20, 3)
    assert int(s.x_test[4, 0, 27, 0]) == fd.mnist_pixel(4, 0, 27, offset=1)
    assert s.x_train.flags.writeable  # a copy, not a view of a read-only buffer
    assert load_files(name, tmp_path / name).x_train.shape == (12, 28, 28, 1)


def test_mnist_mixed_gz_and_plain_in_directory(tmp_path):
    members = fd.mnist_members(6, 3)
    fd.write_idx(tmp_path, {k: v for k, v in members.items() if "train" in k}, gz=True)
    fd.write_idx(tmp_path, {k: v for k, v in members.items() if "t10k" in k}, gz=False)
    s = load_files("mnist", tmp_path)
    assert s.x_train.shape == (6, 28, 28, 1) and s.x_test.shape == (3, 28, 28, 1)


def test_gz_name_with_plain_content_is_accepted(tmp_path):
    # Browsers sometimes decompress on the fly but keep the ".gz" name.
    for f, data in fd.mnist_members(4, 2).items():
        (tmp_path / f"{f}.gz").write_bytes(data)
    assert load_files("mnist", tmp_path).x_train.shape == (4, 28, 28, 1)


# --------------------------------------------------------------------------- errors


def assert_data_error(excinfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, UserError)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_missing_directory_names_download_command(tmp_path, name):
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as e:
        load_files(name, missing)
    assert_data_error(e, str(missing), "does not exist", f"resexp data download {name} --dir {missing}")


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_empty_directory_says_what_is_expected(tmp_path, name):
    with pytest.raises(DataError) as e:
        load_files(name, tmp_path)
    msg = assert_data_error(e, "not found", download_command(name, tmp_path))
    assert DATASET_INFO[name].expected in msg


def test_cifar10_missing_one_batch(tmp_path):
    fd.write_members(tmp_path / "cifar-10-batches-py", fd.cifar10_members(N))
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError) as e:
        load_files("cifar10", tmp_path)
    msg = assert_data_error(e, "incomplete", "data_batch_3", f"--dir {tmp_path}`")
    assert "data_batch_2" not in msg


def test_incomplete_folder_is_fine_when_archive_present(tmp_path):
    fd.write_members(tmp_path, {"data_batch_1": fd.cifar10_members(N)["data_batch_1"]})
    fd.write_cifar10_tar(tmp_path / "cifar10", N)
    check_cifar10(load_files("cifar10", tmp_path))


def test_mnist_missing_one_file(tmp_path):
    fd.write_idx(tmp_path, fd.mnist_members(4, 2), gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as e:
        load_files("mnist", tmp_path)
    assert_data_error(e, "incomplete", "t10k-labels-idx1-ubyte", "resexp data download mnist")


def test_cifar_truncated_pickle(tmp_path):
    fd.write_members(tmp_path, fd.cifar10_members(N))
    path = tmp_path / "data_batch_4"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError) as e:
        load_files("cifar10", tmp_path)
    assert_data_error(e, str(path), "corrupt", "truncated")


def test_cifar_garbage_file(tmp_path):
    fd.write_members(tmp_path, fd.cifar10_members(N))
    (tmp_path / "test_batch").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(DataError) as e:
        load_files("cifar10", tmp_path)
    assert_data_error(e, str(tmp_path / "test_batch"), "corrupt")


def test_cifar_hostile_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    members = fd.cifar10_members(N)
    members["data_batch_1"] = pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2)
    fd.write_members(tmp_path, members)
    with pytest.raises(DataError) as e:
        load_files("cifar10", tmp_path)
    assert_data_error(e, "data_batch_1", "refusing to load")
    assert not marker.exists()


def test_cifar_wrong_row_size_and_label_count(tmp_path):
    members = fd.cifar10_members(N)
    members["data_batch_2"] = pickle.dumps({b"data": np.zeros((N, 1024), np.uint8), b"labels": [0] * N}, protocol=2)
    fd.write_members(tmp_path, members)
    with pytest.raises(DataError) as e:
        load_files("cifar10", tmp_path)
    assert_data_error(e, "data_batch_2", "(N, 3072)")

    members = fd.cifar10_members(N)
    members["test_batch"] = fd.cifar_batch_bytes(N, [1] * (N - 1))
    fd.write_members(tmp_path, members)
    with pytest.raises(DataError) as e:
        load_files("cifar10", tmp_path)
    assert_data_error(e, "test_batch", f"{N} images but {N - 1} labels")


def test_cifar10_label_out_of_range(tmp_path):
    members = fd.cifar10_members(N)
    members["data_batch_5"] = fd.cifar_batch_bytes(N, [10] * N)
    fd.write_members(tmp_path, members)
    with pytest.raises(DataError) as e:
        load_files("cifar10", tmp_path)
    assert_data_error(e, "data_batch_5", "labels outside 0..9")


def test_truncated_archive(tmp_path):
    archive = fd.write_cifar10_tar(tmp_path, N)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        load_files("cifar10", tmp_path)
    assert_data_error(e, "cifar-10-python.tar.gz", "corrupt", "resexp data download cifar10")


def test_archive_that_is_not_gzip(tmp_path):
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"not a tarball at all" * 10)
    with pytest.raises(DataError) as e:
        load_files("cifar100", tmp_path)
    assert_data_error(e, "cifar-100-python.tar.gz", "not a readable .tar.gz")


def test_archive_missing_member(tmp_path):
    members = fd.cifar100_members(N)
    del members["test"]
    fd.write_tar_gz(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python", members)
    with pytest.raises(DataError) as e:
        load_files("cifar100", tmp_path)
    assert_data_error(e, "cifar-100-python.tar.gz", "lacks test")


def test_corrupt_member_inside_archive_is_named(tmp_path):
    members = fd.cifar10_members(N)
    members["data_batch_2"] = members["data_batch_2"][:100]
    fd.write_tar_gz(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    with pytest.raises(DataError) as e:
        load_files("cifar10", tmp_path)
    assert_data_error(e, "cifar-10-python.tar.gz:cifar-10-batches-py/data_batch_2", "truncated")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_bad_magic(tmp_path, gz):
    members = fd.mnist_members(4, 2)
    members["train-images-idx3-ubyte"] = b"\x00\x00\x08\x01" + members["train-images-idx3-ubyte"][4:]
    fd.write_idx(tmp_path, members, gz=gz)
    with pytest.raises(DataError) as e:
        load_files("mnist", tmp_path)
    assert_data_error(e, "train-images-idx3-ubyte", "bad magic number 00000801", "00000803")


def test_idx_labels_file_swapped_for_images(tmp_path):
    members = fd.mnist_members(4, 2)
    members["t10k-labels-idx1-ubyte"] = members["t10k-images-idx3-ubyte"]
    fd.write_idx(tmp_path, members, gz=False)
    with pytest.raises(DataError) as e:
        load_files("fashion_mnist", tmp_path)
    assert_data_error(e, "Fashion-MNIST", "t10k-labels-idx1-ubyte", "00000801")


def test_idx_truncated(tmp_path):
    members = fd.mnist_members(4, 2)
    members["train-images-idx3-ubyte"] = members["train-images-idx3-ubyte"][:-7]
    fd.write_idx(tmp_path, members, gz=True)
    with pytest.raises(DataError) as e:
        load_files("mnist", tmp_path)
    assert_data_error(e, "train-images-idx3-ubyte.gz", "truncated", "expected 3152")


def test_idx_truncated_gzip_stream(tmp_path):
    fd.write_idx(tmp_path, fd.mnist_members(4, 2), gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError) as e:
        load_files("mnist", tmp_path)
    assert_data_error(e, str(path), "truncated gzip")


def test_idx_count_mismatch(tmp_path):
    members = fd.mnist_members(6, 3)
    members["train-labels-idx1-ubyte"] = fd.idx_labels(np.arange(5) % 10)
    fd.write_idx(tmp_path, members, gz=False)
    with pytest.raises(DataError) as e:
        load_files("mnist", tmp_path)
    assert_data_error(e, "6 images", "5 labels", "train-labels-idx1-ubyte")


def test_unknown_name_and_file_as_directory(tmp_path):
    with pytest.raises(DataError) as e:
        load_files("imagenet", tmp_path)
    assert_data_error(e, "imagenet", "cifar10")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DataError) as e:
        load_files("mnist", f)
    assert_data_error(e, "is a file")


def test_describe_missing_and_command(tmp_path):
    msg = describe_missing("cifar10", tmp_path / "data")
    assert msg.startswith("CIFAR-10 not found in ")
    assert f"`resexp data download cifar10 --dir {tmp_path / 'data'}`" in msg
    assert "data_batch_1..5" in msg and "data.dir" in msg
    # A folder already named like the dataset: download into its parent, which creates it.
    assert download_command("mnist", tmp_path / "mnist") == f"resexp data download mnist --dir {tmp_path}"
    assert download_command("mnist", "my data") == "resexp data download mnist --dir 'my data'"
    assert "missing test" in describe_missing("cifar100", tmp_path, ["test"])


def test_loaded_arrays_do_not_alias_files(tmp_path):
    fd.write_members(tmp_path, fd.cifar10_members(N))
    s = load_files("cifar10", tmp_path)
    shutil.rmtree(tmp_path)
    assert s.x_train.sum() > 0 and s.x_train.flags.writeable
    assert "cifar10" in repr(s) and "(50, 32, 32, 3)" in repr(s)


def test_fake_writer_matches_real_py2_opcodes():
    # Guard the fixture itself: the originals are Python 2 protocol-2 pickles.
    import pickletools

    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(fd.cifar10_members(2)["data_batch_1"])]
    names = {n for n, _ in ops}
    assert "SHORT_BINSTRING" in names and "BINUNICODE" not in names and "SHORT_BINBYTES" not in names
    assert ("GLOBAL", "numpy.core.multiarray _reconstruct") in ops
    with pytest.raises(UnicodeDecodeError):  # only encoding="bytes" (or latin1) can read them
        pickle.loads(fd.cifar10_members(2)["data_batch_1"])


# --------------------------------------------------------------------------- found where they are, known by content


@pytest.fixture
def homes(tmp_path, monkeypatch) -> dict[str, Path]:
    """A private $HOME and $RESEXP_DATA_DIR, and a stand-in for the system folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RESEXP_DATA_DIR", str(tmp_path / "env"))
    return {
        "env": tmp_path / "env",
        "cache": tmp_path / "home" / ".cache" / "resexp" / "data",
        "system": tmp_path / "system",
    }


def search(homes) -> list[Path]:
    return [homes["env"], homes["cache"], homes["system"]]


def test_data_search_path_order(homes, monkeypatch):
    assert data_search_path() == [homes["env"], homes["cache"], SYSTEM_DATA_DIR]
    assert default_data_dir() == homes["env"]  # where `resexp data download` writes
    monkeypatch.delenv("RESEXP_DATA_DIR")
    assert data_search_path() == [homes["cache"], SYSTEM_DATA_DIR]
    assert default_data_dir() == homes["cache"]


def test_find_dataset_takes_the_first_complete_copy(homes):
    # Debian's layout in the system folder, a download's layout (DIR/NAME) in the cache.
    fd.write_idx(homes["system"] / "fashion-mnist", fd.mnist_members(4, 2), gz=True)
    assert find_dataset("fashion_mnist", search=search(homes)) == homes["system"] / "fashion-mnist"
    fd.write_idx(homes["cache"] / "fashion_mnist", fd.mnist_members(4, 2), gz=True)
    assert find_dataset("fashion_mnist", search=search(homes)) == homes["cache"] / "fashion_mnist"
    fd.write_idx(homes["env"], fd.mnist_members(4, 2), gz=False)
    assert find_dataset("fashion_mnist", search=search(homes)) == homes["env"]
    # data.dir, when set, is the only place looked at.
    assert find_dataset("fashion_mnist", homes["system"], search=search(homes)) == homes["system"] / "fashion-mnist"


def test_find_dataset_skips_an_incomplete_copy_but_reports_it_when_nothing_else(homes):
    members = fd.mnist_members(4, 2)
    fd.write_idx(homes["cache"] / "mnist", {k: v for k, v in members.items() if "t10k" not in k}, gz=True)
    with pytest.raises(DataError) as e:
        find_dataset("mnist", search=search(homes))
    assert_data_error(e, "incomplete", "t10k-images-idx3-ubyte", str(homes["cache"] / "mnist"))
    fd.write_idx(homes["system"] / "mnist", members, gz=True)
    assert find_dataset("mnist", search=search(homes)) == homes["system"] / "mnist"


def test_find_dataset_not_found_names_every_place_and_the_fixes(homes):
    with pytest.raises(DataError) as e:
        find_dataset("fashion_mnist", search=search(homes))
    assert_data_error(
        e,
        *(str(p) for p in search(homes)),
        "`resexp data download fashion_mnist`",
        "`sudo apt-get install dataset-fashion-mnist`",
    )
    with pytest.raises(DataError) as e:
        find_dataset("cifar10", search=search(homes))
    assert "apt-get" not in assert_data_error(e, "`resexp data download cifar10`")


def test_content_is_the_decompressed_bytes(tmp_path):
    """gzipped or not, the same bytes are the same dataset; other bytes are another."""
    members = fd.mnist_members(6, 3)
    fd.write_idx(tmp_path / "gz", members, gz=True)
    fd.write_idx(tmp_path / "plain", members, gz=False)
    a, b = load_files("mnist", tmp_path / "gz").content, load_files("mnist", tmp_path / "plain").content
    assert a is not None and b is not None
    assert a.files == b.files == {f: hashlib.sha256(data).hexdigest() for f, data in members.items()}
    assert a.digest == b.digest and a.source == str(tmp_path / "gz")
    fd.write_idx(tmp_path / "other", fd.mnist_members(6, 3, offset=1), gz=True)
    assert load_files("mnist", tmp_path / "other").content.digest != a.digest


def test_a_file_that_is_not_the_published_one_is_refused(tmp_path):
    fd.write_idx(tmp_path, fd.mnist_members(6, 3), gz=True)
    content = load_files("fashion_mnist", tmp_path).content
    assert content is not None and not content.verified
    with pytest.raises(DataError) as e:
        verify_content(content, "fashion_mnist")
    assert_data_error(
        e,
        "Fashion-MNIST file train-images-idx3-ubyte",
        "is not the published one",
        CONTENT_SHA256["fashion_mnist"]["train-images-idx3-ubyte"],
        content.files["train-images-idx3-ubyte"],
        "apt-get install dataset-fashion-mnist",
    )


def test_cifar_has_no_published_content_digest_and_passes_unverified(tmp_path):
    fd.write_members(tmp_path, fd.cifar10_members(N))
    content = load_files("cifar10", tmp_path).content
    assert content is not None and sorted(content.files) == sorted(DATASET_INFO["cifar10"].files)
    assert verify_content(content, "cifar10") == content and not content.verified
    # the archive's members hash as the extracted files do
    fd.write_cifar10_tar(tmp_path / "tar", n=N)
    assert load_files("cifar10", tmp_path / "tar").content.files == content.files
