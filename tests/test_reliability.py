"""What happens when things go wrong: divergence, Ctrl-C, SIGKILL, re-runs, two sweeps at once, a full disk.

All through the real CLI in subprocesses, on the tiny ResNet-8 (widths 4/8/8) and the digits.
Every config here trains the same compiled programs (chunks of 5 steps), so the shared
compile cache makes each process cost its start-up plus a few seconds of training.
Signals are sent only after polling for a committed checkpoint: no blind sleeps.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli, tiny_dict, write_config

STEPS = 150
R = tiny_dict(train={"steps": STEPS, "log_every": 5, "checkpoint_every": 25, "eval_every": 0, "diagnostics": False})
# the same ResNet-8 at lr 1e4: a non-finite loss within a few steps (the exploded-loss rule off, to see it)
DIVERGE = ["--set", "optim.lr=10000", "--set", "train.max_loss_factor=null"]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def only_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def committed_steps(run_dir: Path) -> list[int]:
    d = run_dir / "checkpoints"
    try:
        return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())
    except OSError:
        return []


def events_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("events.out.tfevents.*") if not p.name.endswith(".resexp-report"))


def start_cli(*args, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    with open(log, "w") as fh:  # a file, not a pipe: nothing can block on a full pipe
        return subprocess.Popen(
            [sys.executable, "-m", "resexp", *map(str, args)], stdout=fh, stderr=subprocess.STDOUT, env=env
        )


def wait_for(predicate, proc: subprocess.Popen, log: Path, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"exited (rc {proc.returncode}) before the condition held:\n{log.read_text()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"timed out:\n{log.read_text()}")


def assert_same_result(a: dict, b: dict) -> None:
    """Bit-for-bit on CPU: a resumed run replays exactly the chunks an uninterrupted one ran."""
    assert a["status"] == b["status"] == "completed"
    assert a["steps"] == b["steps"] == STEPS
    assert a["final_train_loss"] == b["final_train_loss"]
    assert a["history"] == b["history"]
    assert a["eval_loss"] == b["eval_loss"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path, dict]:
    """One uninterrupted run of R: (config, out dir, summary)."""
    d = tmp_path_factory.mktemp("reference")
    config = write_config(d / "r.yaml", R)
    proc = run_cli("train", config, "--out", d / "runs")
    assert proc.returncode == 0, proc.stderr
    s = summary(only_run(d / "runs"))
    assert s["status"] == "completed" and committed_steps(only_run(d / "runs")) == [125, 150]
    return config, d / "runs", s


# --------------------------------------------------------------------------- divergence


def test_divergence_stops_the_run_with_exit_3(tmp_path, reference):
    config = reference[0]
    proc = run_cli("train", config, *DIVERGE, "--out", tmp_path, env={"COLUMNS": "80"})  # a log file's width
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    s = summary(only_run(tmp_path))
    (message,) = proc.stdout.splitlines()  # one line, not folded at 80 columns
    assert message.startswith("diverged at step") and message.endswith(f"Run: {only_run(tmp_path)}"), message
    assert s["status"] == "diverged"
    step = s["diverged_at_step"]
    assert isinstance(step, int) and 1 <= step < STEPS and s["steps"] == step
    assert s["final_train_loss"] is None
    assert "diverged at step" in proc.stdout and "Lower optim.lr" in proc.stdout
    # Stopped at once: nothing logged at or after the bad step, no checkpoint of a NaN state.
    assert all(x < step for x in s["history"]["step"])
    assert committed_steps(only_run(tmp_path)) == []
    # Final: re-running does not retrain it.
    again = run_cli("train", config, *DIVERGE, "--out", tmp_path)
    assert again.returncode == 3 and "already diverged" in again.stderr


def test_an_exploded_finite_loss_is_divergence_too(tmp_path):
    """The documented command: lr 1e4 on the demo's ResNet-8 stays finite but explodes (~1e16): diverged, exit 3.
    With the rule off (`train.max_loss_factor: null`) the same run 'completes' at chance accuracy."""
    demo = ROOT / "configs" / "demo.yaml"
    args = [
        "--set",
        "model.depth=8",
        "--set",
        "optim.lr=10000",
        "--set",
        "optim.warmup_steps=0",
        "--set",
        "train.steps=60",
        "--out",
        tmp_path,
    ]
    # the CPU's numerics: on an H100 (XLA's default TF32 convs, the one time it was run there) the
    # same run overflowed to NaN by step 5, which the NaN rule caught instead ("non-finite loss"),
    # so the finite-explosion rule needs the CPU
    cpu = {"JAX_PLATFORMS": "cpu"}
    proc = run_cli("train", demo, *args, env=cpu)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "loss exploded" in proc.stdout
    s = summary(only_run(tmp_path))
    assert s["status"] == "diverged" and s["final_train_loss"] is None
    assert 1 <= s["diverged_at_step"] <= 25 and s["history"]["step"] == []  # the first window already exploded
    assert s["initial_train_loss"] == pytest.approx(2.3, abs=0.5)  # ~ln(10): the untrained net
    off = run_cli("train", demo, *args, "--set", "train.max_loss_factor=null", env=cpu)
    assert off.returncode == 0, off.stdout + off.stderr
    s_off = summary(next(p for p in tmp_path.iterdir() if p.is_dir() and p.name != s["run_id"]))
    assert s_off["status"] == "completed" and s_off["final_train_loss"] > 100 * s["initial_train_loss"]
    assert s_off["final_train_accuracy"] < 0.3  # what the rule exists for: a 'completed' run at chance


def test_sweep_survives_divergence_and_an_incompatible_checkpoint(tmp_path, reference):
    """A grid where one cell diverges and one finds a checkpoint of another model: the others finish."""
    import numpy as np

    from resexp.core.checkpoint import Checkpoints
    from resexp.core.config import load_config
    from resexp.sweeps.plan import expand_grid

    config = write_config(
        tmp_path / "grid.yaml", {**R, "name": "grid", "sweep": {"optim.lr": [0.05, 10000.0], "train.seed": [0, 1]}}
    )
    cells = {(c.keys["optim.lr"], c.keys["train.seed"]): c.run_id for c in expand_grid(load_config(config))}
    bad = tmp_path / "runs" / "grid" / cells[(0.05, 1)]
    Checkpoints(bad / "checkpoints").save(25, {"w": np.zeros(3, np.float32)}, {"history": {}})

    proc = run_cli("sweep", config, "--out", tmp_path / "runs")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one cell failed; everything else ran
    assert "Traceback" not in proc.stderr
    assert f"failed: {cells[(0.05, 1)]}: " in proc.stderr and "does not match this run's config" in proc.stderr
    statuses = {key: summary(tmp_path / "runs" / "grid" / rid)["status"] for key, rid in cells.items()}
    assert statuses == {(0.05, 0): "completed", (0.05, 1): "failed", (10000.0, 0): "diverged", (10000.0, 1): "diverged"}
    with open(tmp_path / "runs" / "grid" / "results.csv") as fh:
        rows = {r["run_id"]: r for r in csv.DictReader(fh)}
    for seed in (0, 1):
        row = rows[cells[(10000.0, seed)]]
        assert row["status"] == "diverged" and int(row["diverged_at_step"]) >= 1, row
    assert rows[cells[(0.05, 0)]]["status"] == "completed"
    assert "diverged" in proc.stdout  # the terminal table marks the cell


# --------------------------------------------------------------------------- interruption


def test_sigint_checkpoints_exits_130_and_resumes_to_the_same_result(tmp_path, reference):
    config, _, ref = reference
    out, log = tmp_path / "runs", tmp_path / "log.txt"
    proc = start_cli("train", config, "--out", out, log=log)
    run_dir = wait_for(lambda: out.exists() and next((p for p in out.iterdir() if committed_steps(p)), None), proc, log)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()
    s = summary(run_dir)
    assert s["status"] == "interrupted", log.read_text()
    assert 25 <= s["steps"] < STEPS and s["steps"] in committed_steps(run_dir)  # the chunk in flight was saved
    assert "re-run the same command to resume" in log.read_text()
    assert not (run_dir / ".lock").exists()

    again = run_cli("train", config, "--out", out)
    assert again.returncode == 0, again.stderr
    assert_same_result(summary(run_dir), ref)
    assert len(events_files(run_dir)) == 2  # two training sessions


def test_second_signal_exits_at_once(monkeypatch):
    """The first SIGINT/SIGTERM asks for a checkpoint; the second one leaves immediately (os._exit)."""
    from resexp.runs.train import Interrupt

    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)  # SIG_IGN in a background job
    interrupt = Interrupt()
    with interrupt.installed():
        assert signal.getsignal(signal.SIGINT) not in before
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.requested == signal.SIGTERM and exits == []
        os.kill(os.getpid(), signal.SIGINT)
        assert exits == [128 + signal.SIGINT]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers restored


def test_sigkill_at_any_moment_then_rerun_gives_the_same_result(tmp_path, reference):
    config, _, ref = reference
    out, log = tmp_path / "runs", tmp_path / "log.txt"
    proc = start_cli("train", config, "--out", out, log=log)
    run_dir = wait_for(lambda: out.exists() and next((p for p in out.iterdir() if committed_steps(p)), None), proc, log)
    first = committed_steps(run_dir)[-1]
    # Kill during the next checkpoint if we catch it half-written, else just after it.
    wait_for(
        lambda: (
            any(p.name.endswith("tmp") for p in (run_dir / "checkpoints").iterdir())
            or committed_steps(run_dir)[-1] > first
        ),
        proc,
        log,
    )
    proc.kill()
    proc.wait(timeout=60)
    assert summary(run_dir)["status"] == "running"
    assert json.loads((run_dir / ".lock").read_text())["pid"] == proc.pid  # left behind by the dead process

    again = run_cli("train", config, "--out", out)
    assert again.returncode == 0, again.stderr  # the dead process's lock did not block it
    assert_same_result(summary(run_dir), ref)
    assert not (run_dir / ".lock").exists()


# --------------------------------------------------------------------------- re-runs


def test_completed_run_is_not_retrained_or_overwritten(reference):
    config, out, _ = reference
    run_dir = only_run(out)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.iterdir() if p.is_file()}
    start = time.monotonic()
    proc = run_cli("train", config, "--out", out)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert "already completed" in proc.stderr
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.iterdir() if p.is_file()}
    assert after == before  # summary, config, events: byte-for-byte and mtime unchanged, no new files
    assert committed_steps(run_dir) == [125, 150]
    assert elapsed < 30  # answered from summary.json without starting JAX (~1 s when the machine is idle)


def test_changed_config_gets_a_new_run_and_a_reused_dir_is_refused(tmp_path, reference):
    from resexp.core.config import load_config, run_id, with_updates
    from resexp.core.errors import RunError
    from resexp.runs.store import prepare_run_dir

    cfg = load_config(reference[0])
    changed = with_updates(cfg, {"optim.lr": 0.02})
    assert run_id(changed) != run_id(cfg)  # so the old results stay where they are
    prepare_run_dir(tmp_path / "r", cfg)
    with pytest.raises(RunError, match="belongs to a different config"):
        prepare_run_dir(tmp_path / "r", changed)


# --------------------------------------------------------------------------- concurrency


def test_two_sweeps_on_one_directory_train_every_run_exactly_once(tmp_path, reference):
    from resexp.core.config import load_config
    from resexp.sweeps.plan import expand_grid

    grid = {
        **R,
        "name": "shared",
        "train": {**R["train"], "steps": 30, "checkpoint_every": 10},
        "sweep": {"train.seed": [0, 1, 2, 3]},
    }
    config = write_config(tmp_path / "shared.yaml", grid)
    out = tmp_path / "runs"
    run_ids = [c.run_id for c in expand_grid(load_config(config))]
    # A sweep killed earlier left a lock behind in one cell: a dead pid on this host.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / "shared" / run_ids[2]).mkdir(parents=True)
    (out / "shared" / run_ids[2] / ".lock").write_text(
        json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "time": time.time()})
    )

    logs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    procs = [start_cli("sweep", config, "--out", out, log=log) for log in logs]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0, 0], [log.read_text() for log in logs]
    pids = {str(p.pid) for p in procs}
    for rid in run_ids:
        run_dir = out / "shared" / rid
        s = summary(run_dir)
        assert s["status"] == "completed" and s["steps"] == 30, rid
        # One TensorBoard events file per training session, named after the training pid:
        # exactly one means exactly one process trained this run, once.
        files = events_files(run_dir)
        assert len(files) == 1, (rid, files)
        assert files[0].name.split(".")[-2] in pids
        assert committed_steps(run_dir) == [20, 30]
        assert not (run_dir / ".lock").exists()
        json.loads((run_dir / "summary.json").read_text())  # complete JSON: never a half-written file
    assert not list((out / "shared").rglob("*.tmp"))


def _children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return {int(x) for x in out.split()}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_to_a_parallel_sweep_stops_its_workers_and_a_rerun_finishes(tmp_path, reference):
    """`kill PID` on a `--jobs 2` sweep: its workers checkpoint and stop too (no orphans left
    training), the sweep exits 130, and running it again completes every run."""
    grid = {**R, "name": "term", "sweep": {"train.seed": [0, 1, 2, 3]}}
    config = write_config(tmp_path / "term.yaml", grid)
    out, log = tmp_path / "runs", tmp_path / "log.txt"
    proc = start_cli("sweep", config, "--out", out, "--jobs", "2", log=log)
    sweep_dir = out / "term"
    wait_for(
        lambda: sweep_dir.exists() and any(committed_steps(p) for p in sweep_dir.iterdir() if p.is_dir()), proc, log
    )
    workers = _children(proc.pid)
    assert len(workers) >= 2, workers  # two pool workers (plus multiprocessing's helper)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130, log.read_text()
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "workers kept running after the sweep was stopped"
    statuses = [summary(p)["status"] for p in sweep_dir.iterdir() if (p / "summary.json").exists()]
    assert "interrupted" in statuses and "running" not in statuses, statuses
    assert not list(sweep_dir.glob("*/.lock"))

    again = run_cli("sweep", config, "--out", out, "--jobs", "2")
    assert again.returncode == 0, again.stderr
    for p in (p for p in sweep_dir.iterdir() if (p / "config.yaml").is_file()):  # the runs (not vs_depth/)
        s = summary(p)
        assert s["status"] == "completed" and s["steps"] == STEPS, p.name


def test_run_lock_takes_over_only_dead_owners(tmp_path):
    from resexp.runs.store import RunLock

    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_file = tmp_path / ".lock"

    lock_file.write_text(json.dumps({"pid": int(dead.stdout), "host": host, "time": time.time()}))
    with RunLock(tmp_path) as lock:
        assert lock.acquire()  # a dead process's lock is stale: taken over
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        assert not RunLock(tmp_path).acquire()  # and now held by a live process
    assert not lock_file.exists()  # released on exit

    lock_file.write_text(json.dumps({"pid": os.getppid(), "host": host, "time": time.time()}))  # alive
    assert not RunLock(tmp_path).acquire()
    lock_file.write_text("")  # being written right now by another process: not stale yet
    assert not RunLock(tmp_path).acquire()
    old = time.time() - 60
    os.utime(lock_file, (old, old))  # ...but empty for a minute: its writer died
    assert RunLock(tmp_path).acquire()


# --------------------------------------------------------------------------- environment


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs: a really full disk (root ignores permissions, not ENOSPC)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root / CAP_SYS_ADMIN) to fill a disk for real")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_is_one_clear_error_and_a_rerun_recovers(tiny_disk, reference):
    config, _, ref = reference
    proc = run_cli("train", config, "--out", tiny_disk / "runs")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "No space left on device" in lines[0] and "re-run to resume" in lines[0]
    run_dir = only_run(tiny_disk / "runs")
    assert not (run_dir / ".lock").exists()
    # Free space (grow the disk), run the same command: it trains to the very same result.
    subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_disk)], check=True)
    again = run_cli("train", config, "--out", tiny_disk / "runs")
    assert again.returncode == 0, again.stderr
    assert_same_result(summary(run_dir), ref)


def test_read_only_output_dir_is_one_clear_error(tmp_path):
    config = write_config(tmp_path / "r.yaml", R)
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
    elif subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True
    ).returncode:
        pytest.skip("running as root, where chmod does not stop writes, and cannot mount a read-only tmpfs")
    try:
        proc = run_cli("train", config, "--out", ro / "runs")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(ro)], capture_output=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot create the run directory" in lines[0], proc.stderr
    assert "Read-only file system" in lines[0] or "Permission denied" in lines[0], lines[0]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    from resexp.core.errors import RunError
    from resexp.runs.store import write_atomic

    target = tmp_path / "summary.json"
    target.write_text("old\n")

    def full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RunError, match=r"summary\.json: cannot write .No space left on device"):
        write_atomic(target, "new\n")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
