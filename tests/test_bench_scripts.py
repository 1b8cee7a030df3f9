"""The measurement scripts run for real, tiny, on CPU (their numbers are not asserted: speed
is measured by running them, not by tests).

scripts/gpu_bench.sh, the one command a GPU machine runs, ran on an H100 (docs/performance.md); here
--smoke runs its pipeline: each bench.py part, the CPU-backend cost analysis, the merge into
one row per (depth, dtype), the split over calls (--parts) and the rebuild from parts alone
(--merge-only). scripts/ab_xla.py: its per-variant workers and interleaved rounds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, tiny_dict, write_config

SCRIPT = ROOT / "scripts" / "gpu_bench.sh"


def gpu_bench(*args: str) -> subprocess.CompletedProcess:
    # TORCH_PY points nowhere: resexp alone (torch is not a test dependency)
    # and JAX on the CPU: the refusal "no GPU" must hold on a GPU machine too
    env = {**os.environ, "PY": sys.executable, "TORCH_PY": "/nonexistent/python", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)


def test_smoke_pipeline_writes_one_row_per_depth_and_dtype_and_merges_from_parts(tmp_path: Path):
    parts, out = tmp_path / "parts", tmp_path / "gpu_bench.json"
    run = gpu_bench(
        "--smoke", "--dtypes", "float32", "--torch-compile", "none", "--parts", str(parts), "--out", str(out)
    )
    assert run.returncode == 0, run.stderr
    assert "no torch" in run.stderr
    assert {p.name for p in parts.iterdir()} == {"eager_float32.json", "seeds_float32.json", "cost.json"}
    result = json.loads(out.read_text())
    assert result["machine"]["backend"] == "cpu" and result["seeds"] == 2
    [row] = result["rows"]
    assert (row["depth"], row["dtype"], row["batch_size"]) == (8, "float32", 32)
    assert row["images_per_s"] > 0 and row["epoch_s"] == round(50_000 / row["images_per_s"], 2)
    # 2 seeds cost 2 * (one seed's images/s) / (both seeds' images/s) times one seed's step
    seeds = json.loads((parts / "seeds_float32.json").read_text())["results"][0]
    assert seeds["seeds"] == 2 and seeds["seed_loop"] == "map"
    assert row["seeds_2_time_vs_one_seed"] == round(2 * row["images_per_s"] / seeds["images_per_s"], 2)
    assert set(row["estimate_epoch_s"]) == {"H100-SXM5", "A100-SXM4-80GB"}
    assert row["torch_eager_images_per_s"] is None  # no peer, and the row says so

    # a second call with the same parts adds the other dtype and keeps the first's parts and cost
    cost_before = (parts / "cost.json").read_text()
    run = gpu_bench(
        "--smoke", "--dtypes", "bfloat16", "--torch-compile", "none", "--parts", str(parts), "--out", str(out)
    )
    assert run.returncode == 0, run.stderr
    assert (parts / "cost.json").read_text() == cost_before  # the cost analysis runs once per DIR
    both = json.loads(out.read_text())["rows"]
    assert [(r["depth"], r["dtype"]) for r in both] == [(8, "float32"), (8, "bfloat16")]
    assert both[0] == row

    # --merge-only rebuilds the same table from the parts, measuring nothing
    rebuilt = tmp_path / "rebuilt.json"
    run = gpu_bench("--merge-only", "--parts", str(parts), "--out", str(rebuilt))
    assert run.returncode == 0, run.stderr
    assert "scripts/bench.py" not in run.stderr
    assert json.loads(rebuilt.read_text())["rows"] == both


def test_without_a_gpu_it_refuses_in_one_line_and_merge_only_needs_parts(tmp_path: Path):
    run = gpu_bench("--out", str(tmp_path / "x.json"))
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "gpu_bench.sh: JAX sees no GPU (install resexp with the [cuda] extra; --smoke to check the script anywhere)"
    ]
    assert not (tmp_path / "x.json").exists()
    run = gpu_bench("--merge-only")
    assert run.returncode == 2 and "--merge-only needs --parts DIR" in run.stderr


def test_ab_xla_workers_take_turns_with_their_own_flags():
    """scripts/ab_xla.py: one worker per variant, each with its XLA_FLAGS, interleaved rounds."""
    # a flag every jaxlib line parses (XLA aborts on an unknown one), harmless on the CPU
    legacy_variant = "legacy=XLA_FLAGS=--xla_gpu_autotune_level=1"
    args = ["--depth", "8", "--batch-size", "16", "--steps", "1", "--rounds", "2", "--json"]
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ab_xla.py"), *args, "--variant", "base=", "--variant", legacy_variant],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    base, legacy = out["variants"]["base"], out["variants"]["legacy"]
    assert "--xla_gpu_autotune_level=1" in legacy["xla_flags"]
    assert "--xla_gpu_autotune_level" not in base["xla_flags"]
    for v in (base, legacy):
        assert len(v["repeats"]) == 2 and all(x > 0 for x in v["repeats"]) and v["compile_s"] > 0
    assert base["ratio_vs_base"] == 1.0


# --------------------------------------------------------------------------- scripts/gpu_packing.sh

PACKING = ROOT / "scripts" / "gpu_packing.sh"


def gpu_packing(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PY": sys.executable, "JAX_PLATFORMS": "cpu"}  # the suite's compile cache is inherited
    return subprocess.run(["bash", str(PACKING), *args], env=env, capture_output=True, text=True, timeout=600)


def test_gpu_packing_smoke_measures_each_packing_and_the_study_at_the_best_one_over_two_calls(tmp_path: Path):
    """The GPU script's pipeline, tiny, on the CPU: the K=1 sweep and its K=2 twin (their numbers
    compared run by run), bench.py's part, then in a second call the study at the best K read
    back from the first call's parts."""
    out = tmp_path / "out"
    run = gpu_packing("--smoke", "--parts", "packing,table6", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert {p.name for p in (out / "parts").iterdir()} == {"jobs1.json", "jobs2_fraction.json", "table6_bench.json"}
    result = json.loads((out / "gpu_packing.json").read_text())
    one, two = result["packing"]["rows"]
    assert (one["jobs"], two["jobs"], two["rule"]) == (1, 2, "fraction")
    for row in (one, two):  # 2 runs x 6 steps x batch 32, all completed, numbers identical to K=1's
        assert row["rc"] == 0 and row["runs_completed"] == 2 and row["images"] == 2 * 6 * 32
        assert row["images_per_s"] == round(row["images"] / row["wall_s"], 1)
        assert row["identical_to_jobs_1"] and row["mismatched_runs"] == []
    ips = [row["images"] / row["wall_s"] for row in (one, two)]
    assert two["speedup_vs_jobs_1"] == round(ips[1] / ips[0], 3)
    assert (one["runs_sharing_device"], two["runs_sharing_device"]) == ([1], [2])  # from each run's summary.json
    assert result["packing"]["best"]["jobs"] == 2 and result["packing"]["target_speedup"] == 1.6
    assert set(result["table6"]["images_per_s_by_depth"]) == {"8"} and result["table6"]["depths_missing"] == [
        20,
        32,
        44,
        56,
        110,
    ]
    assert result["study"] is None

    study = write_config(
        tmp_path / "study.yaml",
        tiny_dict(name="smokestudy", sweep={"model.shortcut": [False, True]}),
    )
    # a second call into an empty folder (as a lent GPU machine's $OUT is), given the first's parts
    second = tmp_path / "second"
    run = gpu_packing(
        "--smoke", "--parts", "study", "--study-config", str(study), "--previous", str(out), "--out", str(second)
    )
    assert run.returncode == 0, run.stderr
    result = json.loads((second / "gpu_packing.json").read_text())
    s = result["study"]
    assert (s["jobs"], s["rc"], s["statuses"]) == (2, 0, {"completed": 2})  # the best K of the first call
    assert s["wall_s"] > 0 and result["packing"]["rows"] == [one, two]  # the first call's results, merged
    assert {p.name for p in (second / "study").iterdir()} >= {"results.csv", "aggregate.csv", "results.json"}
    assert [r["steps"] for r in json.loads((second / "parts" / "study.json").read_text())["runs"]] == [4, 4]


def test_gpu_packing_refuses_without_a_gpu_and_skips_a_missing_study_config(tmp_path: Path):
    run = gpu_packing("--out", str(tmp_path / "x"))
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "gpu_packing.sh: JAX sees no GPU (install resexp with the [cuda] extra; --smoke to check the script anywhere)"
    ]
    assert not (tmp_path / "x").exists()
    run = gpu_packing(
        "--smoke", "--parts", "study", "--study-config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "y")
    )
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "y" / "gpu_packing.json").read_text())["study"] == {
        "label": "study",
        "skipped": f"{tmp_path / 'nope.yaml'} not found",
    }


def test_table6_gpu_hours_from_measured_images_per_s():
    sys.path.insert(0, str(ROOT / "scripts"))
    from packing_report import table6

    ips = {20: 40_000.0, 32: 25_000.0, 44: 20_000.0, 56: 15_000.0, 110: 8_000.0}
    bench = {"table6_bench": {"device": "GPU", "results": [{"depth": d, "images_per_s": v} for d, v in ips.items()]}}
    hours = sum(5 * 64_000 * 128 / v for v in ips.values()) / 3600
    out = table6(bench, {"jobs": 4, "speedup_vs_jobs_1": 2.0})
    assert out is not None
    assert out["gpu_hours_one_after_another"] == round(hours, 2) and out["depths_missing"] == []
    assert out["gpu_hours_packed_estimate"] == round(hours / 2.0, 2) and "estimate" in out["packed_how"]
    assert "gpu_hours_packed_estimate" not in (table6(bench, None) or {})
