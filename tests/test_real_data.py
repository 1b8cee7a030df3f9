"""Real data, end to end: Fashion-MNIST as Debian's dataset-fashion-mnist installs it.

The reader on the real files, a short training that only real images with their real labels can
pass, resume after SIGKILL bit-exact, one run whatever `data.dir` spelling finds the files, and a
sweep directory an earlier resexp wrote (tests/data/legacy_sweep) still found under its old ids.

Without the files (`apt-get install dataset-fashion-mnist`, or `resexp data download
fashion_mnist`) these tests skip, saying why; under CI=true (.ci/run installs the package) a skip
is a failure. Every training here is a tiny net (an MLP, or the depth-8 CNN of widths 4/8/8) for at most 60
steps: seconds each.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli, write_config
from test_reliability import committed_steps, start_cli, wait_for

from resexp.core.config import Config, run_id
from resexp.core.datasets import CONTENT_SHA256, DATASET_INFO, find_dataset, load_files, verify_content
from resexp.core.errors import DataError

NAME = "fashion_mnist"
LEGACY = ROOT / "tests" / "data" / "legacy_sweep"

# A residual MLP (784 -> 32 -> 64 -> 10 with BN) for 60 steps of batch 64 with a cosine schedule (so
# the BN running averages settle on the final weights), tested on the first 2,000 test images. The
# bar is measured on a 2-core AMD EPYC Zen 4: seeds 0/1/2 reached 0.751/0.751/0.749 with the real
# labels; with the training labels shuffled 0.076/0.081/0.105, with every training image zeroed
# 0.098/0.100/0.095 (chance: 0.1). An MLP, not a CNN, because it is cheap: 2.1 s of CPU a run
# against 7 s for 100 steps of a depth-8 CNN (widths 4/8/8, 0.58-0.67); the CNN's resume on real
# data is the last test's.
LEARNS = {
    "name": "fmnist-tiny",
    "data": {"name": NAME, "batch_size": 64},
    "model": {"kind": "mlp", "depth": 6, "widths": [32, 64]},
    "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "cosine"},
    "train": {"steps": 60, "log_every": 10, "checkpoint_every": 20, "diagnostics": False, "eval_examples": 2000},
}
ACCURACY_BAR = 0.4


@pytest.fixture(scope="module")
def real_dir() -> Path:
    """The folder holding the real Fashion-MNIST files, found as resexp finds them."""
    try:
        return find_dataset(NAME)
    except DataError as e:
        problem = f"no Fashion-MNIST files ({e}); `sudo apt-get install dataset-fashion-mnist`"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the real-data tests cannot run: {problem}")
        pytest.skip(problem)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def run_dirs(out: Path) -> list[Path]:
    """The run directories (each has its config.yaml; the report's vs_depth/ is not a run)."""
    return sorted(p for p in out.iterdir() if (p / "config.yaml").is_file()) if out.exists() else []


@pytest.fixture(scope="module")
def trained(real_dir, tmp_path_factory) -> tuple[Path, Path, dict]:
    """One uninterrupted short run, data.dir unset (the search path finds the files): (config, run dir, summary)."""
    d = tmp_path_factory.mktemp("learns")
    config = write_config(d / "learns.yaml", LEARNS)
    proc = run_cli("train", config, "--out", d / "runs")
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = run_dirs(d / "runs")
    return config, run_dir, summary(run_dir)


# --------------------------------------------------------------------------- the reader


def test_reader_on_the_real_files(real_dir):
    s = load_files(NAME, real_dir)
    assert s.x_train.shape == (60000, 28, 28, 1) and s.x_train.dtype == np.uint8
    assert s.x_test.shape == (10000, 28, 28, 1) and s.x_test.dtype == np.uint8
    assert s.y_train.dtype == np.int32 and s.y_test.dtype == np.int32
    assert np.bincount(s.y_train).tolist() == [6000] * 10
    assert np.bincount(s.y_test).tolist() == [1000] * 10
    assert s.x_train.max() == 255 and s.x_train.min() == 0  # full-range grey images, not all black
    assert s.content is not None and s.content.files == CONTENT_SHA256[NAME]  # the decompressed bytes
    assert Path(s.content.source) == real_dir
    assert verify_content(s.content, NAME).verified


def copy_with(real_dir: Path, dest: Path, name: str, change) -> Path:
    """The real files copied to `dest`, `name`'s decompressed bytes passed through `change`."""
    dest.mkdir()
    for f in DATASET_INFO[NAME].files:
        src = next(p for p in (real_dir / f, real_dir / f"{f}.gz") if p.exists())
        if f == name:
            raw = gzip.decompress(src.read_bytes()) if src.suffix == ".gz" else src.read_bytes()
            (dest / f"{f}.gz").write_bytes(gzip.compress(change(raw), compresslevel=1))
        else:
            shutil.copy(src, dest / src.name)
    return dest


def test_a_wrong_file_is_one_line_exit_2(real_dir, tmp_path, tiny_config):
    """The real files with the test labels reversed: valid IDX, right counts, not Fashion-MNIST."""
    name = "t10k-labels-idx1-ubyte"
    folder = copy_with(real_dir, tmp_path / "copy", name, lambda raw: raw[:8] + bytes(reversed(raw[8:])))
    proc = run_cli("data", "info", tiny_config, "--set", f"data.name={NAME}", "--set", f"data.dir={folder}")
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert f"{name} in {folder} is not the published one" in line and CONTENT_SHA256[NAME][name] in line, line


def test_a_truncated_real_file_is_refused(real_dir, tmp_path):
    folder = copy_with(real_dir, tmp_path / "copy", "t10k-images-idx3-ubyte", lambda raw: raw[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz is corrupt \(truncated: 7839916 bytes"):
        load_files(NAME, folder)


def test_data_info_and_download_find_the_installed_copy(real_dir, tiny_config):
    info = run_cli("data", "info", tiny_config, "--set", f"data.name={NAME}")
    assert info.returncode == 0, info.stderr
    assert "60000 train / 10000 test, images (28, 28, 1)" in info.stdout
    assert f"read from: {real_dir}" in info.stdout and "verified" in info.stdout and "not verified" not in info.stdout
    download = run_cli("data", "download", NAME)  # no --dir: nothing to fetch, offline or not
    assert download.returncode == 0, download.stderr
    assert f"already present in {real_dir}, content verified; nothing to download" in download.stdout


# --------------------------------------------------------------------------- training


def test_a_short_training_learns_the_real_images(trained, real_dir):
    _, run_dir, s = trained
    assert s["status"] == "completed"
    assert s["eval_accuracy"] >= ACCURACY_BAR, s["eval_accuracy"]  # broken images or labels stay near 0.1
    assert run_dir.name.startswith("fmnist-mlp-res6-")
    data = s["data"]  # what the run really saw
    assert data["name"] == NAME and (data["num_train"], data["num_test"]) == (60000, 10000)
    assert data["image_shape"] == [28, 28, 1] and data["num_classes"] == 10
    assert Path(data["source"]) == real_dir and data["verified"] is True
    assert data["files_sha256"] == CONTENT_SHA256[NAME]
    assert not {"image_size", "channels", "num_train", "num_test"} & set(s["config"]["data"])  # synthetic-only


def test_resume_after_sigkill_is_bit_exact_on_real_data(trained, tmp_path):
    config, _, ref = trained
    out, log = tmp_path / "runs", tmp_path / "log.txt"
    proc = start_cli("train", config, "--out", out, log=log)
    run_dir = wait_for(lambda: next((p for p in run_dirs(out) if committed_steps(p)), None), proc, log)
    proc.kill()
    proc.wait(timeout=60)
    assert summary(run_dir)["status"] == "running" and committed_steps(run_dir)[-1] < LEARNS["train"]["steps"]

    again = run_cli("train", config, "--out", out)
    assert again.returncode == 0, again.stderr
    assert "resuming from step" in again.stderr
    s = summary(run_dir)
    assert s["status"] == "completed"
    assert s["history"] == ref["history"]  # every logged loss and accuracy, bit for bit
    assert (s["final_train_loss"], s["eval_loss"], s["eval_accuracy"]) == (
        ref["final_train_loss"],
        ref["eval_loss"],
        ref["eval_accuracy"],
    )


def test_two_spellings_of_data_dir_are_one_run(trained, real_dir, tmp_path):
    """The folder, its parent, and a symlink elsewhere (a moved dataset): one run id, trained once."""
    config, run_dir, _ = trained
    out = run_dir.parent
    (tmp_path / "mount").mkdir()
    (tmp_path / "mount" / "fmnist").symlink_to(real_dir)
    before = {p: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    for spelling in (real_dir, real_dir.parent, tmp_path / "mount" / "fmnist"):
        proc = run_cli("train", config, "--out", out, "--set", f"data.dir={spelling}")
        assert proc.returncode == 0, proc.stderr
        assert "already completed" in proc.stderr, proc.stderr
        cfg = Config.model_validate({**LEARNS, "data": {**LEARNS["data"], "dir": str(spelling)}})
        assert run_id(cfg) == run_dir.name
    assert run_dirs(out) == [run_dir]  # no second directory
    assert {p: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before  # nothing rewritten


# --------------------------------------------------------------------------- an earlier version's sweep


def test_a_sweep_made_under_the_old_run_ids_is_found_and_finished(real_dir, tmp_path):
    """plain-8 finished and ResNet-8 interrupted at step 10, written by an earlier resexp with
    data.dir=/usr/share/datasets; re-run here with another spelling of data.dir. That resexp ran XLA's
    convolutions (before oneDNN's), so every run here does too: the same kernels, the same numbers."""
    xla = {"RESEXP_CPU_CONV": "xla"}
    out = tmp_path / "out"
    shutil.copytree(LEGACY / "legacy", out / "legacy")
    old = {p.name: summary(p) for p in run_dirs(out / "legacy")}
    assert sorted(s["status"] for s in old.values()) == ["completed", "interrupted"]
    finished = next(name for name, s in old.items() if s["status"] == "completed")
    before = (out / "legacy" / finished / "summary.json").read_bytes()

    proc = run_cli(
        "sweep", LEGACY / "legacy.yaml", "--out", out, "--set", f"data.dir={real_dir}", "--no-progress", env=xla
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{finished}: completed (already done)" in proc.stderr
    assert "resuming from step 10" in proc.stderr
    assert sorted(p.name for p in run_dirs(out / "legacy")) == sorted(old)  # no directory under a new id
    assert (out / "legacy" / finished / "summary.json").read_bytes() == before  # not trained again
    resumed_name = next(name for name in old if name != finished)
    resumed = summary(out / "legacy" / resumed_name)
    assert resumed["status"] == "completed" and resumed["steps"] == 60
    rows = (out / "legacy" / "results.csv").read_text()
    assert all(name in rows for name in old)

    # The resumed run reaches exactly the numbers of a run trained from scratch today.
    fresh = run_cli(
        "train",
        *(LEGACY / "legacy.yaml", "--out", tmp_path / "fresh", "--no-progress"),
        *("--set", "model.shortcut=true", "--set", f"data.dir={real_dir}"),
        env=xla,
    )
    assert fresh.returncode == 0, fresh.stderr
    (fresh_dir,) = run_dirs(tmp_path / "fresh")
    assert fresh_dir.name.startswith("fmnist-resnet8-a-")
    assert summary(fresh_dir)["history"] == resumed["history"]
    assert summary(fresh_dir)["eval_accuracy"] == resumed["eval_accuracy"]
