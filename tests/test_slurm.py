"""`resexp sweep --launcher slurm|local` against a real SLURM: the project's single-node cluster
(`make slurm-up`, scripts/slurm_local.sh: partitions debug, gpu, urgent; two fake GPUs).

Without `sinfo` (or on another cluster) the cluster tests skip, saying why; under CI=true a skip
is a failure. The flag checks that need no cluster run everywhere. Every sweep here is named
`slurmtest-*`; the module cancels whatever of those is left and leaves no process behind.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import run_cli, tiny_dict, write_config

from resexp.core.config import Config
from resexp.reporting.report import build_report
from resexp.runs.store import read_summary
from resexp.sweeps.launch import LaunchError, SlurmOptions, time_limit_minutes
from resexp.sweeps.plan import expand_grid, group_seeds, run_sweep

GRID = tiny_dict(
    name="slurmtest-grid",
    sweep={"model.depth": [8, 14], "model.shortcut": [False, True]},
    train={"steps": 40, "log_every": 10, "checkpoint_every": 40},
)
# Long enough for a signal to land mid-run even on a fast, idle CPU (about 13 s of training on an
# idle AMD EPYC Zen 4; 2000 steps took 4.5 s there and finished before test 4's first time-limit
# check, ~6 s into the job); checkpoints every 500 steps show the test when training is under way.
LONG = tiny_dict(name="slurmtest-long", train={"steps": 6000, "log_every": 20, "checkpoint_every": 500})
ONE = tiny_dict(name="slurmtest-one", train={"steps": 20, "log_every": 10, "checkpoint_every": 20})
# The documented grid command (docs/slurm.md): one fake GPU per cell on the `gpu` partition, 10 minutes each.
GPU_FLAGS = ("--launcher", "slurm", "--partition", "gpu", "--gpus-per-run", "1", "--time", "0:10:00")
COMPARED = ("run_id", "status", "final_train_loss", "final_train_accuracy", "eval_loss", "eval_accuracy")


# --------------------------------------------------------------------------- the cluster


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "no `sinfo` on PATH: start the project's local SLURM with `make slurm-up` (root, Debian)"
    conf = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True)
    if conf.returncode != 0:
        return f"SLURM does not answer ({conf.stderr.strip() or conf.stdout.strip()}): `make slurm-up`"
    if not re.search(r"ClusterName\s*=\s*resexp\b", conf.stdout):
        return "not the project's local cluster (ClusterName=resexp from scripts/slurm_local.sh): refusing to submit"
    parts = subprocess.run(["sinfo", "-h", "-o", "%R %T"], capture_output=True, text=True).stdout.split("\n")
    states = dict(line.split() for line in parts if line.strip())
    missing = [p for p in ("debug", "gpu", "urgent") if p not in states]
    if missing:
        return f"partition(s) {', '.join(missing)} missing: `make slurm-down slurm-up`"
    if any(s.endswith("*") or s.startswith(("down", "drain", "fail", "inval", "unk")) for s in states.values()):
        return f"node not usable: {states}"
    return None


def _test_jobs() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%A %j"], capture_output=True, text=True).stdout
    return sorted({line.split()[0] for line in out.splitlines() if "slurmtest" in line})


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the SLURM tests cannot run: {problem}")
        pytest.skip(problem)
    yield
    jobs = _test_jobs()
    if jobs:
        subprocess.run(["scancel", *jobs])
    deadline = time.time() + 30
    while _test_jobs() and time.time() < deadline:
        time.sleep(0.5)
    assert not _test_jobs(), "test jobs left in the queue"


def _procs_mentioning(text: str) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if text in (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    stat = (p / "stat").read_text()
                    if stat.split(") ", 1)[1][0] != "Z":
                        pids.append(int(p.name))
            except OSError:
                pass
    return pids


def _wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _start_cli(log: Path, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    fh = open(log, "w")  # noqa: SIM115 - the child's stdout for its whole life; a pipe could fill and block it
    return subprocess.Popen(
        [sys.executable, "-m", "resexp", *map(str, args)], stdout=fh, stderr=subprocess.STDOUT, env=env, text=True
    )


def _rows(path: Path) -> dict[str, dict]:
    with open(path) as fh:
        return {r["run_id"]: {k: r[k] for k in COMPARED} for r in csv.DictReader(fh)}


def _sacct(array: str, duplicates: bool = False) -> list[tuple[str, ...]]:
    cmd = ["sacct", "-n", "-X", "-P", "-o", "JobID,State,AllocTRES", "-j", array] + (
        ["--duplicates"] if duplicates else []
    )
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]


def _grid_jobs() -> list[str]:
    """Every job id sacct knows for the GRID sweep's name (submitted by any test run)."""
    cmd = ["sacct", "-n", "-X", "-o", "JobID", "--name", f"resexp-{GRID['name']}"]
    return subprocess.run(cmd, capture_output=True, text=True).stdout.split()


def _array_id(output: str) -> str:
    m = re.search(r"submitted array (\d+)", output)
    assert m is not None, output
    return m.group(1)


def _first_checkpoint(run_dir: Path) -> bool:
    ckpts = run_dir / "checkpoints"
    return ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())


def _single_run_dir(sweep_dir: Path) -> Path | None:
    dirs = [p for p in sweep_dir.iterdir() if (p / "config.yaml").exists()] if sweep_dir.exists() else []
    return dirs[0] if len(dirs) == 1 else None


# --------------------------------------------------------------------------- references, trained here


@pytest.fixture(scope="module")
def grid_reference(tmp_path_factory):
    """The grid swept locally, in this process: what every launcher must reproduce exactly."""
    out = tmp_path_factory.mktemp("local-reference")
    cfg = Config.model_validate(GRID)
    run_sweep(group_seeds(expand_grid(cfg), 1), out, progress=False)
    build_report(out, write_tensorboard=False)
    return _rows(out / "results.csv")


class LongReference:
    """The long cell, seeds 0 and 1, trained uninterrupted by a local `resexp sweep` in a subprocess,
    started early (beside the grid test) and read by the preemption and time-limit tests."""

    def __init__(self, root: Path):
        self.root = root
        path = write_config(root / "long.yaml", {**LONG, "sweep": {"train.seed": [0, 1]}})
        self.proc = _start_cli(root / "sweep.log", "sweep", path, "--out", root / "runs", "--no-progress")

    def summary(self, seed: int = 0) -> dict:
        rc = self.proc.wait(timeout=300)
        log = (self.root / "sweep.log").read_text()
        assert rc == 0, log
        summaries = [read_summary(p) for p in (self.root / "runs" / LONG["name"]).iterdir() if p.is_dir()]
        mine = [s for s in summaries if s and s["config"]["train"]["seed"] == seed]
        assert len(mine) == 1, log
        return mine[0]


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory):
    ref = LongReference(tmp_path_factory.mktemp("long-reference"))
    yield ref
    if ref.proc.poll() is None:
        ref.proc.kill()


# --------------------------------------------------------------------------- the time-limit run, in the background


class TimeLimitRun(threading.Thread):
    """Test 4, started first and run beside the others (it mostly waits for SLURM's clock).

    slurmctld checks time limits (and sends `--signal`) every 30 s. A probe job learns when,
    then the sweep is submitted so that its first check falls ~6 s into the job: about when
    the cell has started training (`--time 0:01:00` puts the USR1 at the first check; on a
    slow machine it may land before the first step, and the run then resumes from step 0).
    The requeued task starts ~9 s later, so it has ~21 s before the next check.
    """

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.root, self.result, self.error = root, None, None

    def run(self):
        try:
            self.result = self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _run(self):
        tick_file = self.root / "tick"
        probe = subprocess.run(
            [
                "sbatch",
                "--parsable",
                "-p",
                "debug",
                "--time=1",
                "--signal=B:USR1@59",
                "--job-name=slurmtest-probe",
                "-o",
                "/dev/null",
                "--wrap",
                f"trap 'date +%s.%N > {tick_file}; exit 0' USR1; while :; do sleep 0.1; done",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        _wait_until(tick_file.exists, 45, "the time-limit check's signal to the probe job")
        subprocess.run(["scancel", probe.stdout.strip()])
        tick = float(tick_file.read_text())
        start = tick + 30
        lead = 8.5  # ~2.5 s from here to the job's start, then ~6 s into the job
        while start - lead < time.time():
            start += 30
        time.sleep(start - lead - time.time())
        path = write_config(self.root / "long.yaml", {**LONG, "name": "slurmtest-timelimit"})
        t0 = time.time()
        proc = _start_cli(
            self.root / "sweep.log",
            "sweep",
            path,
            "--out",
            self.root / "runs",
            "--launcher",
            "slurm",
            "--partition",
            "debug",
            "--time",
            "0:01:00",
        )
        rc = proc.wait(timeout=200)
        return rc, time.time() - t0, (self.root / "sweep.log").read_text()


@pytest.fixture(scope="module")
def time_limit_run(cluster, tmp_path_factory):
    run = TimeLimitRun(tmp_path_factory.mktemp("timelimit"))
    run.start()
    yield run
    run.join(timeout=240)


# --------------------------------------------------------------------------- 1, 2: the grid, twice


@pytest.fixture(scope="module")
def slurm_grid(cluster, time_limit_run, long_reference, no_wait_run, grid_reference, tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm-grid")
    path = write_config(root / "grid.yaml", GRID)
    r = run_cli(
        "sweep",
        path,
        "--out",
        root / "runs",
        *GPU_FLAGS,
        timeout=240,
    )
    return root, path, r


def test_1_slurm_grid_matches_the_local_sweep_one_completed_task_per_cell(slurm_grid, grid_reference):
    root, _, r = slurm_grid
    assert r.returncode == 0, r.stdout + r.stderr
    sweep_dir = root / "runs" / GRID["name"]
    rows = _rows(sweep_dir / "results.csv")
    assert len(rows) == 4 and all(row["status"] == "completed" for row in rows.values())
    assert rows == grid_reference  # same program, same machine: bit for bit
    tasks = _sacct(_array_id(r.stderr), duplicates=True)
    assert len(tasks) == 4, tasks
    assert all(state == "COMPLETED" and "gres/gpu=1" in tres for _, state, tres in tasks), tasks
    for run_id in rows:
        s = read_summary(sweep_dir / run_id)
        assert s["slurm_job_id"].startswith(_array_id(r.stderr) + "_") and s["restarts"] == 0
    status = run_cli("status", sweep_dir)
    assert status.returncode == 0, status.stderr
    lines = [ln for ln in status.stdout.splitlines() if re.match(r"\s*(plain|resnet)\d+-", ln)]
    assert len(lines) == 4 and all(  # run, status, step, train loss, wall s, job (state), restarts
        re.search(r"completed\s+40/40\s+\S+\s+\S+\s+\d+_\d+ \(COMPLETED\)\s+0\s*$", ln) for ln in lines
    ), status.stdout


def test_2_rerun_submits_nothing(slurm_grid):
    root, path, first = slurm_grid
    assert first.returncode == 0
    sweep_dir = root / "runs" / GRID["name"]
    before = sorted(p.name for p in (sweep_dir / ".submitit").iterdir())
    jobs_before = _grid_jobs()
    r = run_cli(
        "sweep",
        path,
        "--out",
        root / "runs",
        *GPU_FLAGS,
    )
    assert r.returncode == 0, r.stderr
    assert "nothing to submit" in r.stderr
    assert sorted(p.name for p in (sweep_dir / ".submitit").iterdir()) == before
    jobs_after = _grid_jobs()
    assert jobs_after == jobs_before
    assert (sweep_dir / "results.csv").exists()


# --------------------------------------------------------------------------- 3: preemption of a packed task


def test_3_preempted_packed_task_is_requeued_and_each_run_resumes_exactly(cluster, long_reference, tmp_path):
    """Two cells packed into one array task (`--runs-per-task 2`) on one (fake) GPU, preempted
    mid-training: the task is requeued as one and each run resumes from its own checkpoint."""
    path = write_config(tmp_path / "long.yaml", {**LONG, "name": "slurmtest-preempt", "sweep": {"train.seed": [0, 1]}})
    proc = _start_cli(
        tmp_path / "sweep.log", "sweep", path, "--out", tmp_path / "runs", *GPU_FLAGS, "--runs-per-task", "2"
    )
    sweep_dir = tmp_path / "runs" / "slurmtest-preempt"

    def run_dirs() -> list[Path]:
        dirs = [p for p in sweep_dir.iterdir() if (p / "config.yaml").exists()] if sweep_dir.exists() else []
        return dirs if len(dirs) == 2 else []

    try:
        dirs = _wait_until(run_dirs, 60, "both run directories")
        _wait_until(lambda: all(_first_checkpoint(d) for d in dirs), 90, "both runs under way (first checkpoints)")
        subprocess.run(
            [
                "sbatch",
                "--parsable",
                "-p",
                "urgent",
                "--gres=gpu:2",
                "--job-name=slurmtest-urgent",
                "-o",
                "/dev/null",
                "--wrap",
                "sleep 2",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "sweep.log").read_text()
    assert rc == 0, log
    assert re.search(r"submitted array \d+ \(1 tasks, 2 runs each", log), log
    summaries = [read_summary(d) for d in dirs]
    job = summaries[0]["slurm_job_id"]
    job_log = (sweep_dir / ".submitit" / f"{job}_0_log.out").read_text()
    # SLURM sends the job's --signal (USR1) at preemption (SlurmctldParameters=preempt_send_user_signal)
    assert re.search(r"SIGUSR1: checkpointed; scontrol requeue \S+: ok", job_log), job_log
    for s in summaries:
        assert s["status"] == "completed" and s["restarts"] >= 1 and s["slurm_job_id"] == job, s
        # both trained at once on the task's GPU (CUDA_VISIBLE_DEVICES from SLURM's --gres)
        assert s["placement"]["runs_sharing_device"] == 2, s["placement"]
        assert s["placement"]["cuda_visible_devices"] in ("0", "1"), s["placement"]
        resumed = [int(m) for m in re.findall(rf"\(restart [1-9]\d*\): {s['run_id']} from step (\d+)", job_log)]
        assert resumed and resumed[0] > 0, job_log
        ref = long_reference.summary(seed=s["config"]["train"]["seed"])
        assert s["final_train_loss"] == ref["final_train_loss"]  # bit for bit: same program, same machine
        assert s["eval_loss"] == ref["eval_loss"]
    assert len(_sacct(job.split("_")[0])) == 1  # one array task for both runs
    states = [state for _, state, _ in _sacct(job.split("_")[0], duplicates=True)]
    assert "COMPLETED" in states and any(st in ("REQUEUED", "PREEMPTED") for st in states), states


# --------------------------------------------------------------------------- 5: scancel


def test_5_scancel_of_the_array_ends_a_waiting_sweep_with_130(cluster, tmp_path):
    path = write_config(tmp_path / "long.yaml", {**LONG, "name": "slurmtest-cancel"})
    proc = _start_cli(
        tmp_path / "sweep.log", "sweep", path, "--out", tmp_path / "runs", "--launcher", "slurm", "--partition", "debug"
    )
    sweep_dir = tmp_path / "runs" / "slurmtest-cancel"
    try:
        run_dir = _wait_until(lambda: _single_run_dir(sweep_dir), 60, "the run directory")
        _wait_until(lambda: _first_checkpoint(run_dir), 60, "training under way")
        array = _array_id((tmp_path / "sweep.log").read_text())
        t0 = time.time()
        subprocess.run(["scancel", array], check=True)
        rc = proc.wait(timeout=30)
        elapsed = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "sweep.log").read_text()
    assert rc == 130, log
    assert elapsed < 30
    assert "cancelled" in log
    assert read_summary(run_dir)["status"] == "interrupted"  # it checkpointed its chunk on the way out
    _wait_until(lambda: not _procs_mentioning(str(sweep_dir)), 15, "no process left working on the sweep")
    assert not subprocess.run(["squeue", "-h", "-j", array], capture_output=True, text=True).stdout.strip()
    assert all(state.startswith("CANCELLED") for _, state, _ in _sacct(array))


# --------------------------------------------------------------------------- 6: --no-wait


@pytest.fixture(scope="module")
def no_wait_run(cluster, tmp_path_factory):
    """Submitted early (it returns at once); test 6 looks at what its jobs did."""
    root = tmp_path_factory.mktemp("no-wait")
    path = write_config(root / "one.yaml", ONE)
    t0 = time.time()
    r = run_cli("sweep", path, "--out", root / "runs", "--launcher", "slurm", "--partition", "debug", "--no-wait")
    return root, r, time.time() - t0


def test_6_no_wait_submits_the_array_and_a_report_job(no_wait_run):
    root, r, seconds = no_wait_run
    assert r.returncode == 0, r.stderr
    assert seconds < 30  # submitted, not waited for
    ids = re.search(r"submitted: cells (\d+), report (\d+)", r.stdout)
    assert ids, r.stdout
    results = root / "runs" / ONE["name"] / "results.csv"
    _wait_until(results.exists, 90, "the report job's results.csv", interval=0.5)
    assert [row["status"] for row in _rows(results).values()] == ["completed"]
    _wait_until(
        lambda: _sacct(ids.group(2)) and all(st == "COMPLETED" for _, st, _ in _sacct(ids.group(2))),
        30,
        "the report job to be COMPLETED",
    )
    assert [st for _, st, _ in _sacct(ids.group(1))] == ["COMPLETED"]


# --------------------------------------------------------------------------- 7: the same through LocalExecutor


def test_7_local_launcher_grid_rerun_and_no_wait(grid_reference, tmp_path):
    # --no-wait first: its cell and report job run while the grid below is swept
    one = write_config(tmp_path / "one.yaml", ONE)
    t0 = time.time()
    r = run_cli("sweep", one, "--out", tmp_path / "runs", "--launcher", "local", "--no-wait")
    assert r.returncode == 0, r.stderr
    assert re.search(r"submitted: cells [\d ]+, report \d+", r.stdout), r.stdout
    assert time.time() - t0 < 30  # it did not wait for the cell

    # packed: 2 tasks of 2 cells, both at once, so 4 runs share the machine (and would share its GPUs)
    path = write_config(tmp_path / "grid.yaml", GRID)
    r = run_cli(
        "sweep",
        path,
        "--out",
        tmp_path / "runs",
        "--launcher",
        "local",
        "--max-parallel",
        "2",
        "--runs-per-task",
        "2",
        timeout=240,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "submitted 2 local jobs, 2 runs each" in r.stderr, r.stderr
    sweep_dir = tmp_path / "runs" / GRID["name"]
    assert _rows(sweep_dir / "results.csv") == grid_reference
    assert {read_summary(sweep_dir / rid)["placement"]["runs_sharing_device"] for rid in grid_reference} == {4}
    before = sorted(p.name for p in (sweep_dir / ".submitit").iterdir())
    again = run_cli("sweep", path, "--out", tmp_path / "runs", "--launcher", "local")
    assert again.returncode == 0 and "nothing to submit" in again.stderr, again.stderr
    assert sorted(p.name for p in (sweep_dir / ".submitit").iterdir()) == before

    results = tmp_path / "runs" / ONE["name"] / "results.csv"
    _wait_until(results.exists, 90, "the local report job's results.csv", interval=0.5)
    assert [row["status"] for row in _rows(results).values()] == ["completed"]
    _wait_until(lambda: not _procs_mentioning(str(tmp_path / "runs")), 20, "the local jobs to end")


# ------------------------------------------------------------- 4: time limit (started first, checked last)


def test_4_time_limit_requeues_resumes_and_completes(time_limit_run, long_reference):
    time_limit_run.join(timeout=240)
    assert not time_limit_run.is_alive(), "the time-limit sweep did not end"
    if time_limit_run.error:
        raise time_limit_run.error
    rc, _, log = time_limit_run.result
    assert rc == 0, log
    sweep_dir = time_limit_run.root / "runs" / "slurmtest-timelimit"
    run_dir = _single_run_dir(sweep_dir)
    s = read_summary(run_dir)
    assert s["status"] == "completed" and s["restarts"] >= 1, s
    job_log = (sweep_dir / ".submitit" / f"{s['slurm_job_id']}_0_log.out").read_text()
    assert "SIGUSR1: checkpointed; scontrol requeue" in job_log, job_log
    assert s["final_train_loss"] == long_reference.summary()["final_train_loss"]  # resumed: still bit for bit


# ------------------------------------------------------------- bad input: one line, exit 2, nothing submitted


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--partition", "nosuch"], r"--partition nosuch: no such partition \(this cluster has: debug, gpu, urgent\)"),
        (
            ["--partition", "gpu", "--gpus-per-run", "3"],
            r"SLURM refuses these resources: Requested node configuration is not available",
        ),
        (
            ["--partition", "gpu", "--time", "5:00:00"],
            r"SLURM refuses these resources: Requested time limit is invalid",
        ),
    ],
)
def test_flags_slurm_refuses_fail_before_submitting(cluster, tmp_path, flags, message):
    path = write_config(tmp_path / "grid.yaml", GRID)
    r = run_cli("sweep", path, "--out", tmp_path / "runs", "--launcher", "slurm", *flags)
    assert r.returncode == 2, r.stdout + r.stderr
    assert re.search(message, r.stderr) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--launcher", "slurm"], r"`sbatch` not found on PATH"),
        (["--launcher", "slurm", "--shard", "0/2"], r"--launcher cannot be combined with --shard"),
        (["--launcher", "local", "--jobs", "2"], r"--launcher cannot be combined with --jobs"),
        (["--launcher", "pbs"], r"--launcher 'pbs': choose one of slurm, local"),
        (["--partition", "gpu"], r"--partition needs --launcher slurm"),
        (["--launcher", "slurm", "--time", "ten"], r"--time 'ten': expected HH:MM:SS"),
        (["--runs-per-task", "2"], r"--runs-per-task needs --launcher slurm \(or --launcher local\)"),
        (["--launcher", "slurm", "--runs-per-task", "2", "--mem", "4GB"], r"--mem '4GB': expected a whole number"),
    ],
)
def test_flags_checked_without_a_cluster(tmp_path, flags, message):
    path = write_config(tmp_path / "grid.yaml", GRID)
    # PATH: the venv only, so no SLURM command is found (the other checks come before any is needed)
    r = run_cli("sweep", path, "--out", tmp_path / "runs", *flags, env={"PATH": str(Path(sys.executable).parent)})
    assert r.returncode == 2, r.stdout + r.stderr
    assert re.search(message, r.stderr) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "runs").exists()


def test_dry_run_prints_the_sbatch_line_without_slurm(tmp_path):
    path = write_config(tmp_path / "grid.yaml", GRID)
    r = run_cli(
        "sweep",
        path,
        "--out",
        tmp_path / "runs",
        *GPU_FLAGS,
        "--max-parallel",
        "2",
        "--qos",
        "high",
        "--slurm-arg",
        "constraint=a100",
        "--dry-run",
        env={"PATH": str(Path(sys.executable).parent)},
    )
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("sbatch "))
    for flag in (
        "--job-name=resexp-slurmtest-grid",
        "--array=0-3%2",
        "--partition=gpu",
        "--gres=gpu:1",
        "--time=0:10:00",
        "--qos=high",
        "--signal=B:USR1@120",
        "--requeue",
        "--constraint=a100",
    ):
        assert flag in line.split(), (flag, line)
    assert len(re.findall(r"task \d: ", r.stdout)) == 4
    assert not (tmp_path / "runs").exists()


def test_dry_run_packs_cells_into_tasks_with_cpus_and_memory_per_run(tmp_path):
    path = write_config(tmp_path / "grid.yaml", GRID)
    r = run_cli(
        "sweep",
        path,
        "--out",
        tmp_path / "runs",
        *GPU_FLAGS,
        "--runs-per-task",
        "3",
        "--cpus-per-run",
        "2",
        "--mem",
        "4G",
        "--dry-run",
        env={"PATH": str(Path(sys.executable).parent)},
    )
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("sbatch ")).split()
    # 4 cells, 3 to a task: 2 tasks; a task's runs share its GPU, each has its own CPUs and memory
    for flag in ("--array=0-1%2", "--gres=gpu:1", "--cpus-per-task=6", "--mem=12G"):
        assert flag in line, (flag, line)
    tasks = re.findall(r"task (\d): (.*)", r.stdout)
    assert [(i, len(ids.split(", "))) for i, ids in tasks] == [("0", 3), ("1", 1)], r.stdout
    assert "4 cell(s) to submit (4 runs) in 2 task(s)" in r.stdout
    assert not (tmp_path / "runs").exists()


def test_time_limits_and_the_signal_lead_time():
    assert [time_limit_minutes(t) for t in ("90", "1:30", "0:10:00", "2-0", "1-2:30", "0:00:01")] == [
        90,
        2,
        10,
        2880,
        1590,
        1,
    ]
    with pytest.raises(LaunchError, match="--time '1:2:3:4'"):
        time_limit_minutes("1:2:3:4")
    with pytest.raises(LaunchError, match="more than zero"):
        time_limit_minutes("0:00:00")
    # 2 minutes of warning, or half the limit when that is shorter (never under 10 s)
    assert [SlurmOptions(time=t).grace_seconds() for t in (None, "8:00:00", "0:03:00", "0:01:00")] == [120, 120, 90, 30]
    opts = SlurmOptions.from_flags(slurm_args=["--constraint=a100", "exclusive"], partition="gpu", max_parallel=9)
    assert opts.sbatch_options(3, "x")["array"] == "0-2%3"  # the throttle never exceeds the tasks
    assert opts.sbatch_options(3, "x")["constraint"] == "a100" and opts.sbatch_options(3, "x")["exclusive"] is True


# ------------------------------------------------------------- the local cluster's own script


def test_slurm_local_up_again_restores_the_accounting_password(cluster):
    """`scripts/slurm_local.sh up` on a cluster whose MariaDB `slurm` user has another password
    (CREATE USER IF NOT EXISTS keeps an old one) resets it, so slurmdbd connects again. Last in
    the file: slurmdbd is restarted, and SLURM holds accounting records for it meanwhile."""
    if shutil.which("mariadb") is None or not Path("/run/slurmdbd.pid").exists():
        pytest.skip("the local cluster runs without accounting (ACCOUNTING=0)")

    def as_slurm(password: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["mariadb", "-u", "slurm", f"-p{password}", "-h", "localhost", "-e", "select 1", "slurm_acct_db"],
            capture_output=True,
            text=True,
        )

    def set_password(password: str) -> None:
        subprocess.run(
            ["mariadb", "-e", f"ALTER USER 'slurm'@'localhost' IDENTIFIED BY '{password}'"], check=True, timeout=30
        )

    pid = int(Path("/run/slurmdbd.pid").read_text())
    try:
        set_password("not-the-scripts-one")
        assert as_slurm("resexp").returncode != 0
        os.kill(pid, signal.SIGTERM)  # so that `up` starts slurmdbd again, with the password it writes
        _wait_until(lambda: not _slurmdbd_running(), 20, "slurmdbd to stop")
        up = subprocess.run(
            ["bash", str(Path(__file__).parent.parent / "scripts" / "slurm_local.sh"), "up"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        assert as_slurm("resexp").returncode == 0
        clusters = subprocess.run(
            ["sacctmgr", "-n", "show", "cluster", "format=cluster"], capture_output=True, text=True
        )
        assert clusters.stdout.split() == ["resexp"], clusters.stderr
    finally:  # leave the cluster as it was, whatever happened
        set_password("resexp")
        if not _slurmdbd_running():
            subprocess.run(["/usr/sbin/slurmdbd"], check=False)


def _slurmdbd_running() -> bool:
    pidfile = Path("/run/slurmdbd.pid")
    return pidfile.exists() and Path(f"/proc/{pidfile.read_text().strip()}").exists()
