"""Every kind of bad input, through the real CLI: one clear line on stderr, exit 2, nothing written.

Each case builds its files in a fresh directory, runs `resexp ...` in a subprocess and checks:
exit code 2, exactly one non-empty line on stderr (no traceback), the fragments that make the
message useful (the file, the dotted key, the gist, the fix), and that no run directory exists.
Config cases stop before JAX is imported (~1 s each); the data and environment cases load JAX.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import fake_datasets as fd
import pytest
from conftest import TINY, run_cli, tiny_dict, write_config

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489") + b"\x00" * 16


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Path], list[str]]  # writes what it needs under the dir, returns argv (without --out)
    fragments: tuple[str, ...]


def cfg(name: str, raw: dict | str | bytes | None = None, /, **sections) -> Callable[[Path], Path]:
    """A config file `name` in the test dir: raw text/bytes, a dict, or TINY with sections updated."""

    def make(d: Path) -> Path:
        path = d / name
        if isinstance(raw, bytes):
            path.write_bytes(raw)
        elif raw is not None:
            write_config(path, raw)
        else:
            write_config(path, tiny_dict(**sections))
        return path

    return make


def cmd(command: str, config: Callable[[Path], Path] | str, *extra: str) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        path = config(d) if callable(config) else d / config
        return [*command.split(), str(path), *extra]

    return setup


def mnist_dir(broken: str, *extra: str) -> Callable[[Path], list[str]]:
    """A file-backed dataset that is missing, incomplete or truncated, as `--set data.*` args."""

    def setup(d: Path) -> list[str]:
        data = d / "mnist-data"
        if broken != "missing":
            fd.write_idx(data, fd.mnist_members(40, 10), gz=False)
        if broken == "incomplete":
            (data / "t10k-labels-idx1-ubyte").unlink()
        if broken == "truncated":
            f = data / "train-images-idx3-ubyte"
            f.write_bytes(f.read_bytes()[:3000])
        path = write_config(d / "mnist.yaml", tiny_dict(data={"name": "mnist", "dir": str(data), "batch_size": 8}))
        command = "sweep" if extra else {"missing": "train", "incomplete": "sweep", "truncated": "data info"}[broken]
        return [*command.split(), str(path), *extra]

    return setup


def under_a_file(d: Path) -> list[str]:
    # An output dir that cannot be created: works as root too (chmod does not stop root; this does).
    (d / "plain-file").write_text("not a directory\n")
    return ["train", str(write_config(d / "tiny.yaml", TINY)), "--out", str(d / "plain-file" / "runs")]


T = cfg("tiny.yaml")


def configs(files: dict[str, dict]) -> Callable[[Path], Path]:
    """Config files written side by side (name -> mapping); the first is the one given to the command."""

    def make(d: Path) -> Path:
        for name, raw in files.items():
            write_config(d / name, raw)
        return d / next(iter(files))

    return make


CASES = [
    # ---- the file itself
    Case("missing-file", cmd("train", "nosuch.yaml"), ("nosuch.yaml", "no such file")),
    Case("empty-yaml", cmd("train", cfg("empty.yaml", "")), ("empty.yaml", "empty config")),
    Case(
        "malformed-yaml",
        cmd("train", cfg("broken.yaml", "model: {depth: 8\ntrain: [1, 2\n")),
        ("broken.yaml", "not valid YAML", "line "),
    ),
    Case("png-not-yaml", cmd("train", cfg("plot.png", PNG)), ("plot.png", "not a YAML config", "binary")),
    Case(
        "binary-with-nul",
        cmd("sweep", cfg("blob.yaml", b"name: x\n\x00\x01\x02\xff")),
        ("blob.yaml", "not a YAML config"),
    ),
    Case("a-directory", lambda d: ["train", str(d)], ("is a directory",)),
    Case(
        "top-level-list",
        cmd("train", cfg("list.yaml", "- model\n- train\n")),
        ("list.yaml", "mapping at the top level", "list"),
    ),
    # ---- unknown keys, with the nearest valid one
    Case(
        "unknown-section",
        cmd("train", cfg("bad.yaml", {"modell": {"depth": 8}})),
        ("bad.yaml", "modell", "unknown key", "did you mean model?"),
    ),
    Case(
        "unknown-key",
        cmd("train", cfg("bad.yaml", model={"depht": 8})),
        ("bad.yaml", "model.depht", "unknown key", "did you mean model.depth?"),
    ),
    # ---- wrong types (strict: no "8" -> 8, no "yes" -> True)
    Case(
        "depth-string",
        cmd("train", cfg("bad.yaml", model={"depth": "eight"})),
        ("bad.yaml", "model.depth", "valid integer", "'eight'"),
    ),
    Case("widths-scalar", cmd("model", cfg("bad.yaml", model={"widths": 4})), ("bad.yaml", "model.widths", "list")),
    Case(
        "shortcut-yes",
        cmd("train", cfg("bad.yaml", model={"shortcut": "yes please"})),
        ("bad.yaml", "model.shortcut", "boolean"),
    ),
    Case("section-not-mapping", cmd("train", cfg("bad.yaml", {"data": [1, 2]})), ("bad.yaml", "data", "dictionary")),
    # ---- out of range
    Case(
        "depth-not-6n+2",
        cmd("train", cfg("bad.yaml", model={"depth": 9})),
        ("bad.yaml", "model.depth", "6n+2", "CNN", "nearest valid: 8 or 14"),
    ),
    Case(
        "steps-zero", cmd("train", cfg("bad.yaml", train={"steps": 0})), ("bad.yaml", "train.steps", "greater than 0")
    ),
    Case(
        "batch-negative",
        cmd("train", cfg("bad.yaml", data={"batch_size": -32})),
        ("bad.yaml", "data.batch_size", "greater than 0"),
    ),
    Case("lr-negative", cmd("train", cfg("bad.yaml", optim={"lr": -0.1})), ("bad.yaml", "optim.lr", "greater than 0")),
    Case(
        "wd-negative",
        cmd("train", cfg("bad.yaml", optim={"weight_decay": -1e-4})),
        ("bad.yaml", "optim.weight_decay", "greater than or equal to 0"),
    ),
    Case(
        "unknown-projection",
        cmd("train", cfg("bad.yaml", model={"projection": "option_d"})),
        ("bad.yaml", "model.projection", "'option_d' is not one of", "zero_pad"),
    ),
    Case(
        "unknown-dataset",
        cmd("train", cfg("bad.yaml", data={"name": "imagenet"})),
        ("bad.yaml", "data.name", "'imagenet'", "cifar10"),
    ),
    Case(
        "checkpoint-off-chunk",
        cmd("train", cfg("bad.yaml", train={"log_every": 10, "checkpoint_every": 15})),
        ("bad.yaml", "train.checkpoint_every", "multiple of log_every"),
    ),
    # ---- base:
    Case(
        "base-missing",
        cmd("train", configs({"a.yaml": {"base": "tiny_typo.yaml"}, "tiny.yaml": TINY})),
        ("a.yaml: base: no such file 'tiny_typo.yaml'", "bundled configs: "),
    ),
    Case(
        "base-not-a-name",
        cmd("sweep", configs({"a.yaml": {"base": 3}})),
        ("a.yaml: base: expected another config's file name or path", "got 3"),
    ),
    Case(
        "base-cycle",
        cmd("train", configs({"a.yaml": {"base": "b.yaml"}, "b.yaml": {**TINY, "base": "a.yaml"}})),
        ("b.yaml: base: a cycle of bases", "a.yaml -> ", "b.yaml -> "),
    ),
    # ---- --set
    Case(
        "set-without-equals",
        cmd("train", T, "--set", "model.depth"),
        ("tiny.yaml", "--set model.depth", "expected key=value"),
    ),
    Case(
        "set-unknown-key",
        cmd("train", T, "--set", "model.dept=8"),
        ("tiny.yaml", "--set model.dept=8", "model.dept", "unknown key", "did you mean model.depth?"),
    ),
    Case("set-bare-field", cmd("identity", T, "--set", "lr=1"), ("tiny.yaml", "unknown key", "did you mean optim.lr?")),
    Case(
        "set-bad-value",
        cmd("train", T, "--set", "model.depth=9"),
        ("tiny.yaml", "--set model.depth=9", "model.depth", "6n+2"),
    ),
    Case("set-markup-chars", cmd("train", T, "--set", "model.x[/a]=1"), ("model.x[/a]", "unknown key")),
    Case(
        "set-value-slip",
        cmd("train", T, "--set", "data.name=fashion-mnist"),
        ("tiny.yaml", "data.name", "'fashion-mnist' is not one of", "did you mean fashion_mnist?"),
    ),
    Case("set-value-case", cmd("train", T, "--set", "optim.name=SGD"), ("optim.name", "did you mean sgd?")),
    # ---- the command line itself (Typer's own errors: one line too)
    Case("jobs-zero", cmd("sweep", T, "--jobs", "0"), ("--jobs", "greater than or equal to 1", "resexp sweep --help")),
    Case("unknown-option", cmd("train", T, "--stepz", "3"), ("No such option: --stepz", "resexp train --help")),
    Case("missing-argument", lambda d: ["train"], ("Missing argument 'CONFIG'", "resexp train --help")),
    Case("report-nonexistent", lambda d: ["report", str(d / "nonexistent")], ("nonexistent", "does not exist")),
    Case("status-nonexistent", lambda d: ["status", str(d / "nonexistent")], ("nonexistent", "does not exist")),
    Case(
        "tensorboard-nonexistent", lambda d: ["tensorboard", str(d / "nonexistent")], ("nonexistent", "does not exist")
    ),
    # ---- sweep axes and shards
    Case(
        "sweep-empty-axis",
        cmd("sweep", cfg("sw.yaml", sweep={"model.depth": []})),
        ("sw.yaml", "sweep.model.depth", "empty sweep axis"),
    ),
    Case(
        "sweep-unknown-axis",
        cmd("sweep", cfg("sw.yaml", sweep={"model.dept": [8, 14]})),
        ("sw.yaml", "sweep.model.dept", "unknown key", "did you mean model.depth?"),
    ),
    Case(
        "sweep-bad-cell",
        cmd("sweep", cfg("sw.yaml", sweep={"model.depth": [8, 9]})),
        ("sw.yaml", "model.depth", "6n+2", "sweep cell"),
    ),
    Case(
        "grid-empty-axis",
        cmd("sweep", T, "--grid", "model.depth="),
        ("tiny.yaml", "--grid", "model.depth", "empty sweep axis"),
    ),
    Case(
        "grid-without-equals", cmd("sweep", T, "--grid", "model.depth"), ("tiny.yaml", "--grid", "expected key=v1,v2")
    ),
    Case(
        "grid-unknown-key",
        cmd("sweep", T, "--grid", "optim.wd=0,1e-4"),
        ("tiny.yaml", "--grid", "optim.wd", "unknown key"),
    ),
    Case("shard-out-of-range", cmd("sweep", T, "--shard", "3/2"), ("--shard", "'3/2'", "0 <= I < N")),
    Case("shard-not-a-fraction", cmd("sweep", T, "--shard", "half"), ("--shard", "'half'", "I/N")),
    # ---- data (these load JAX: a few seconds each)
    Case(
        "batch-larger-than-data",
        cmd("train", T, "--set", "data.batch_size=5000"),
        ("tiny.yaml", "data.batch_size", "exceeds the 1500 training examples"),
    ),
    Case("dataset-missing", mnist_dir("missing"), ("MNIST", "does not exist", "resexp data download mnist --dir")),
    Case(
        "dataset-missing-parallel-sweep", mnist_dir("missing", "--jobs", "2"), ("MNIST", "resexp data download mnist")
    ),
    Case(
        "dataset-incomplete", mnist_dir("incomplete"), ("MNIST", "t10k-labels-idx1-ubyte", "resexp data download mnist")
    ),
    Case("dataset-truncated", mnist_dir("truncated"), ("train-images-idx3-ubyte", "corrupt")),
    # ---- environment
    Case("out-under-a-file", under_a_file, ("plain-file", "cannot create the run directory", "Not a directory")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, case):
    out = tmp_path / "runs"
    argv = case.setup(tmp_path)
    if argv[0] in ("train", "sweep") and "--out" not in argv:
        argv += ["--out", str(out)]
    proc = run_cli(*argv, cwd=tmp_path, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for fragment in case.fragments:
        assert fragment in line, (fragment, line)
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))


def test_checksum_mismatch_on_download_removes_the_partial_file(tmp_path):
    """A mirror serving different bytes: exit 2, a last line naming file, checksums and the fix, no file left."""
    mirror = tmp_path / "mirror"
    fd.write_idx(mirror, fd.mnist_members(6, 3), gz=True)  # right names, not the published bytes
    target = tmp_path / "data"
    proc = run_cli("data", "download", "mnist", "--dir", target, "--base-url", mirror.as_uri(), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: checksum mismatch for train-images-idx3-ubyte.gz"), last
    assert "expected md5" in last and "got " in last and "the file was removed" in last and "--manifest" in last, last
    assert sorted(p.name for p in (target / "mnist").iterdir()) == []  # neither the .part nor the bad file


def test_tiny_images_are_not_an_error():
    """Decided: no image shape is invalid. The MLP flattens any shape; every CNN conv pads by 1 and
    a stride-2 stage maps H to ceil(H/2), so even a 1x1 image passes 5 stages (as 1x1). What is
    invalid is caught by the schema (image_size, channels > 0) or the data loader (corrupt files)."""
    import jax.numpy as jnp

    from resexp.core.config import ModelConfig
    from resexp.core.models import build_model, layer_table

    for kind in ("cnn", "mlp"):
        m = ModelConfig(kind=kind, depth=12, widths=[2, 2, 2, 2, 2])
        assert layer_table(m, (1, 1, 3), 10)[-1].output_shape == (10,)
        net = build_model(m, (1, 1, 3), 10, seed=0)
        assert net(jnp.ones((2, 1, 1, 3))).shape == (2, 10)


def test_help_starts_fast():
    """`resexp --help` and config errors must not pay for JAX: it is imported only to train or load data."""
    code = (
        "import sys, resexp.cli, resexp.core.config, resexp.runs.store; "
        "print(sorted(m for m in ('jax', 'flax', 'orbax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
