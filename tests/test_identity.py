"""`resexp identity`: zero each branch's last layer; residual blocks become the identity, plain ones die.

Through the real CLI for the configs a user runs (exit codes and the table), in-process
for the variants (option C, bf16, rezero, zero-init) and for a negative control that
shows the check can fail.
"""

from __future__ import annotations

import re

import jax.numpy as jnp
import pytest
from conftest import ROOT, run_cli, tiny_dict, write_config

from resexp.core import diagnostics
from resexp.core.config import Config
from resexp.core.data import load_data
from resexp.core.models import build_model


def _rows(stdout: str) -> dict[str, str]:
    """Table rows by block name: {"stage1/block0": "│ stage1/block0 │ identity │ ..."}."""
    return {m.group(1): line for line in stdout.splitlines() if (m := re.search(r"(stage\d+/block\d+)", line))}


def test_demo_resnet20_option_a_is_the_identity():
    res = run_cli("identity", ROOT / "configs/demo.yaml", "--set", "model.depth=20")
    assert res.returncode == 0, res.stdout + res.stderr
    rows = _rows(res.stdout)
    assert len(rows) == 9  # 3 stages x 3 blocks, the scanned ones included
    for name, line in rows.items():
        assert "0.0e+00" in line, line  # exactly: relu(0 + a) == a bit for bit
        if name in ("stage2/block0", "stage3/block0"):
            assert "zero-pad" in line and "identity (padded)" in line
        else:
            assert re.search(r"│ identity\s+│ +0\.0e\+00 │ +0\.0e\+00 │ identity", line), line
    assert "holds" in res.stdout and "min over all blocks: 0" in res.stdout


def test_option_b_projection_blocks_are_relu_ws_a(tmp_path):
    config = write_config(tmp_path / "b.yaml", tiny_dict(model={"depth": 14, "projection": "learned"}))
    res = run_cli("identity", config)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = _rows(res.stdout)
    assert len(rows) == 6
    for name in ("stage2/block0", "stage3/block0"):  # the shape changes: relu(Ws a), Ws a learned 1x1 conv + BN
        assert "projection" in rows[name] and "relu(Ws a)" in rows[name] and "0.0e+00" in rows[name]
    assert sum("│ identity" in line for line in rows.values()) == 4


def test_lecture_mlp_blocks_are_the_identity():
    res = run_cli("identity", ROOT / "configs/lecture_mlp.yaml")
    assert res.returncode == 0, res.stdout + res.stderr
    rows = _rows(res.stdout)
    assert list(rows) == ["stage1/block0", "stage1/block1", "stage2/block0", "stage2/block1"]
    assert "projection" in rows["stage2/block0"]  # 128 -> 256: a learned Ws
    assert all("0.0e+00" in line for line in rows.values())
    assert "MLP" in res.stdout and "holds" in res.stdout


def test_plain_net_output_collapses_to_zero(tmp_path):
    config = write_config(tmp_path / "plain.yaml", tiny_dict())
    res = run_cli("identity", config, "--set", "model.shortcut=false")
    assert res.returncode == 1, res.stdout + res.stderr
    rows = _rows(res.stdout)
    assert len(rows) == 3 and all("signal lost" in line for line in rows.values())
    assert not any("0.0e+00" in line for line in rows.values())  # each block gets a real input, returns 0
    assert "plain net" in res.stdout and "holds" not in res.stdout


def test_help_explains_why():
    res = run_cli("identity", "--help")
    text = " ".join(res.stdout.split())
    assert res.returncode == 0
    assert "non-negative" in text and "a[l+2] = relu(" in text  # why relu(0 + a) = a (brackets not eaten as markup)
    assert "option A" in text and "zero" in text and "option B" in text and "projection" in text


# --------------------------------------------------------------------------- in-process variants


@pytest.fixture(scope="module")
def digits():
    return load_data(Config.model_validate(tiny_dict()).data, source="test")


def _check(digits, zero_branches=True, **model):
    train = {"dtype": model.pop("dtype")} if "dtype" in model else {}
    cfg = Config.model_validate(tiny_dict(model=model, train=train))
    net = build_model(cfg.model, digits.image_shape, digits.num_classes, seed=0, dtype=cfg.train.dtype)
    return diagnostics.identity_check(
        net, jnp.asarray(digits.normalize(digits.x_test[:32])), zero_branches=zero_branches
    )


def test_variants_hold_exactly(digits):
    """bfloat16 compute, a rezero gate and Goyal et al.'s zero-init change nothing: 0 stays 0."""
    rows = _check(digits, depth=14, dtype="bfloat16", rezero=True, zero_init_residual=True)
    assert len(rows) == 6 and all(r["holds"] for r in rows)
    assert all(r["max_abs_diff_shortcut"] == 0.0 and r["input_min"] >= 0 for r in rows)
    assert [r["max_abs_diff_input"] for r in rows if r["mode"] == "identity"] == [0.0] * 4


def test_option_c_is_not_the_identity(digits):
    rows = _check(digits, projection="learned_all")
    assert [r["mode"] for r in rows] == ["learned_all", "learned", "learned"]
    first = rows[0]  # 4 -> 4 channels, yet a learned Ws: relu(Ws a) != a
    assert not first["holds"] and first["max_abs_diff_input"] > 0.1 and first["max_abs_diff_shortcut"] == 0.0


def test_negative_control_unzeroed_branch_fails(digits):
    """With the zeroing switched off the very same check reports every block as not the identity."""
    rows = _check(digits, zero_branches=False)
    assert not any(r["holds"] for r in rows)
    assert all(r["max_abs_diff_shortcut"] > 1e-3 for r in rows)
