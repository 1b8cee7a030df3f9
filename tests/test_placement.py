"""Where `--jobs K` workers and packed SLURM tasks train: GPUs dealt to workers, memory shares,
the user's settings respected, cells packed into tasks. The pool itself (real worker processes,
each pinned and recorded in its summary.json) runs in tests/test_sweep.py; a packed task's
preemption and requeue on the real local SLURM in tests/test_slurm.py."""

from __future__ import annotations

import pytest
from conftest import run_cli, tiny_dict, write_config

from resexp.core.errors import UserError
from resexp.core.placement import Placement, memory_share, parse_gpu_list, plan, sharing_rule, visible_gpus
from resexp.sweeps.launch import LaunchError, SlurmOptions, pack_tasks, scale_memory

# `nvidia-smi -L` on a machine with a whole GPU and a GPU split into two MIG instances
NVIDIA_SMI_L = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5b1f0e4e-8e1c-2d3a-9f0b-1a2b3c4d5e6f)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-0c9d8e7f-6a5b-4c3d-2e1f-0a9b8c7d6e5f)
  MIG 3g.20gb     Device  0: (UUID: MIG-11111111-2222-3333-4444-555555555555)
  MIG 3g.20gb     Device  1: (UUID: MIG-66666666-7777-8888-9999-000000000000)
"""


def test_workers_are_dealt_over_the_gpus_and_share_90_percent_of_each():
    four = plan(4, ["0", "1"], environ={})
    assert [p.gpus for p in four] == [("0",), ("1",), ("0",), ("1",)]
    assert all(p.sharing == 2 and p.rule == "fraction" for p in four)
    assert four[0].env() == {"CUDA_VISIBLE_DEVICES": "0", "XLA_CLIENT_MEM_FRACTION": "0.45"}
    # three over two: two share GPU 0, the third has GPU 1 to itself (JAX's defaults there)
    three = plan(3, ["0", "1"], environ={})
    assert [(p.gpus, p.sharing, p.rule) for p in three] == [
        (("0",), 2, "fraction"),
        (("1",), 1, "default"),
        (("0",), 2, "fraction"),
    ]
    assert three[1].env() == {"CUDA_VISIBLE_DEVICES": "1"}
    assert [memory_share(n) for n in (2, 3, 4, 8)] == [0.45, 0.3, 0.22, 0.11]
    assert sum(memory_share(8) for _ in range(8)) <= 0.9


def test_fewer_workers_than_gpus_get_a_share_of_the_gpus_each():
    assert [p.gpus for p in plan(1, ["0", "1"], environ={})] == [("0", "1")]  # one run: data parallel over both
    assert [p.gpus for p in plan(2, ["4", "5", "6", "7"], environ={})] == [("4", "5"), ("6", "7")]
    assert [p.gpus for p in plan(3, ["0", "1", "2", "3"], environ={})] == [("0",), ("1",), ("2",)]
    assert all(p.sharing == 1 and p.memory == {} for p in plan(2, ["0", "1", "2"], environ={}))


def test_the_sharing_rules_and_the_users_own_settings():
    def env(rule: str) -> dict[str, str]:
        return plan(2, ["3"], environ={"RESEXP_GPU_SHARING": rule})[0].env()

    assert env("fraction") == {"CUDA_VISIBLE_DEVICES": "3", "XLA_CLIENT_MEM_FRACTION": "0.45"}
    assert env("GROW") == {
        "CUDA_VISIBLE_DEVICES": "3",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        "XLA_CLIENT_MEM_FRACTION": "0.45",
    }
    assert env("platform") == {"CUDA_VISIBLE_DEVICES": "3", "XLA_PYTHON_CLIENT_ALLOCATOR": "platform"}
    assert env("off") == {"CUDA_VISIBLE_DEVICES": "3"}
    # a user's allocator setting wins (and jaxlib refuses both fraction names at once)
    for var in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE"):
        user = plan(2, ["3"], environ={var: ".3"})
        assert [(p.env(), p.rule) for p in user] == [({"CUDA_VISIBLE_DEVICES": "3"}, "user")] * 2
    with pytest.raises(UserError, match=r"RESEXP_GPU_SHARING='half': choose one of fraction, grow, platform, off"):
        sharing_rule({"RESEXP_GPU_SHARING": "half"})
    # no GPU: nothing pinned, nothing set; the workers share the host
    assert plan(2, [], environ={}) == [Placement(sharing=2)] * 2


def test_visible_gpus_respect_cuda_visible_devices_and_the_backend(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    for setting, gpus in (("2,3", ["2", "3"]), (" 1 , 0 ", ["1", "0"]), ("0,-1,1", ["0"]), ("", []), ("-1", [])):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", setting)
        assert visible_gpus() == gpus, setting
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5b1f0e4e,MIG-1111")
    assert visible_gpus() == ["GPU-5b1f0e4e", "MIG-1111"]
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # JAX will not use the GPUs: nothing to place
    assert visible_gpus() == []
    # without CUDA_VISIBLE_DEVICES: the driver's list, MIG instances by UUID
    assert parse_gpu_list(NVIDIA_SMI_L) == [
        "0",
        "MIG-11111111-2222-3333-4444-555555555555",
        "MIG-66666666-7777-8888-9999-000000000000",
    ]
    assert parse_gpu_list("") == []


def test_cells_are_packed_into_tasks_with_cpus_and_memory_per_run():
    assert pack_tasks(list("abcde"), 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert pack_tasks(list("abc"), 1) == [["a"], ["b"], ["c"]]
    assert [scale_memory(m, 3) for m in ("16G", "500m", "2048")] == ["48G", "1500M", "6144"]
    with pytest.raises(LaunchError, match=r"--mem '16GB'"):
        scale_memory("16GB", 2)
    opts = SlurmOptions.from_flags(gpus_per_run=1, cpus_per_run=4, mem="16G", runs_per_task=4)
    sbatch = opts.sbatch_options(2, "x")
    assert (sbatch["gres"], sbatch["cpus-per-task"], sbatch["mem"], sbatch["array"]) == ("gpu:1", 16, "64G", "0-1%2")
    assert SlurmOptions.from_flags(runs_per_task=None).runs_per_task == 1


def test_an_unknown_sharing_rule_fails_before_anything_is_written(tmp_path):
    path = write_config(tmp_path / "tiny.yaml", tiny_dict(sweep={"train.seed": [0, 1]}))
    r = run_cli("sweep", path, "--out", tmp_path / "runs", "--jobs", "2", env={"RESEXP_GPU_SHARING": "half"})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: RESEXP_GPU_SHARING='half': choose one of fraction, grow, platform, off"
    ]
    assert not (tmp_path / "runs").exists()
