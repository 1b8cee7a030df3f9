"""Where a sweep's cells run when this process does not train them: submitit, on SLURM or locally.

`resexp sweep CONFIG --launcher slurm` submits every cell that is not final yet (a seed group
under `train.vmap_seeds` is one cell) as one task of one `sbatch --array=0-N%K`; `--launcher
local` runs the same jobs through submitit's LocalExecutor. Either way:

    <sweep>/.submitit/            submitit's pickles and logs (<array>_<task>_0_log.out)
    <sweep>/.submitit/cells.json  run id -> job id of its latest submission (for re-runs, `resexp status`)
    <sweep>/<run-id>/             the runs themselves, as always the only truth about them

The jobs own their signals; submitit's handlers are not used (they ignore SIGTERM, count every
signal as a timeout, and checkpoint mid-step). A job asks for `--signal=B:USR1@<grace>`; on
SIGUSR1, SIGUSR2 or SIGTERM the training loop (`train.Interrupt`) finishes the chunk in flight
and checkpoints, then the job runs `scontrol requeue <array>_<task>` and exits without a result.
The requeued task resumes from that checkpoint: the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resexp.core.errors import UserError
from resexp.core.signals import SignalRecorder
from resexp.runs.store import FINAL, read_summary, write_json
from resexp.sweeps.plan import Executed

LAUNCHERS = ("slurm", "local")
FOLDER = ".submitit"
RECORD = "cells.json"
MAX_GRACE_S = 120  # --signal=B:USR1@this: enough for a chunk of a big net plus a checkpoint
POLL_S = 1.0


class LaunchError(UserError):
    """A launcher flag SLURM (or this machine) cannot honour; nothing was submitted."""


# --------------------------------------------------------------------------- what to ask SLURM for


@dataclass
class SlurmOptions:
    """The `resexp sweep --launcher` flags, checked and turned into sbatch options."""

    partition: str | None = None
    gpus_per_run: int = 0
    cpus_per_run: int | None = None
    mem: str | None = None
    time: str | None = None
    max_parallel: int | None = None
    account: str | None = None
    qos: str | None = None
    runs_per_task: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_flags(cls, *, slurm_args: list[str] | None = None, **flags) -> SlurmOptions:
        extra: dict[str, Any] = {}
        for text in slurm_args or []:
            key, eq, value = text.partition("=")
            key = key.strip().lstrip("-")
            if not key:
                raise LaunchError(f"--slurm-arg {text!r}: expected KEY=VALUE (e.g. --slurm-arg constraint=a100)")
            extra[key.replace("_", "-")] = value if eq else True
        if flags.get("runs_per_task") is None:  # not given: one run per task
            flags.pop("runs_per_task", None)
        opts = cls(extra=extra, **flags)
        if opts.time is not None:
            time_limit_minutes(opts.time)  # a malformed time fails here, with the flag's name
        if opts.mem is not None:
            scale_memory(opts.mem, opts.runs_per_task)  # likewise a memory size the packing cannot scale
        return opts

    def grace_seconds(self) -> int:
        """Lead time of the USR1 before the time limit: at most 2 minutes, at most half the limit."""
        if self.time is None:
            return MAX_GRACE_S
        return max(10, min(MAX_GRACE_S, time_limit_minutes(self.time) * 60 // 2))

    def sbatch_options(self, tasks: int, name: str) -> dict[str, Any]:
        """Every option resexp puts on the array's sbatch line, in sbatch's own names."""
        k = min(self.max_parallel or tasks, tasks) if tasks else 1
        opts: dict[str, Any] = {"job-name": f"resexp-{name}", "array": f"0-{max(tasks, 1) - 1}%{k}"}
        k_runs = self.runs_per_task  # a packed task's runs share its GPUs; each needs its own CPUs and memory
        for key, value in (
            ("partition", self.partition),
            ("gres", f"gpu:{self.gpus_per_run}" if self.gpus_per_run else None),
            ("cpus-per-task", self.cpus_per_run * k_runs if self.cpus_per_run else None),
            ("mem", scale_memory(self.mem, k_runs) if self.mem else None),
            ("time", self.time),
            ("account", self.account),
            ("qos", self.qos),
        ):
            if value is not None:
                opts[key] = value
        opts["signal"] = f"B:USR1@{self.grace_seconds()}"
        opts["requeue"] = True
        opts["open-mode"] = "append"  # a requeue must not truncate the task's log
        opts.update(self.extra)
        return opts


def scale_memory(text: str, factor: int) -> str:
    """sbatch's `--mem` (a number, optionally K/M/G/T) times `factor`: a packed task's memory."""
    m = re.fullmatch(r"(\d+)([KMGTkmgt]?)", text.strip())
    if not m:
        raise LaunchError(f"--mem {text!r}: expected a whole number with an optional unit K, M, G or T (e.g. 16G)")
    return f"{int(m.group(1)) * factor}{m.group(2).upper()}"


def pack_tasks(groups: list, runs_per_task: int) -> list[list]:
    """Consecutive cells, `runs_per_task` to a task (the last one may hold fewer)."""
    k = max(1, runs_per_task)
    return [groups[i : i + k] for i in range(0, len(groups), k)]


def time_limit_minutes(text: str) -> int:
    """SLURM's time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) -> whole minutes, rounded up."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise LaunchError(f"--time {text!r}: expected HH:MM:SS (or D-HH:MM:SS, or minutes)")
    days, b, c = (int(g) if g else None for g in m.group(1, 3, 4))
    a = int(m.group(2))  # hours, or minutes: the one group the pattern requires
    if days is not None:  # D-H[:M[:S]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif b is not None and c is not None:  # (c only ever matches after b)
        seconds = a * 3600 + b * 60 + c
    elif b is not None:
        seconds = a * 60 + b
    else:
        seconds = a * 60
    if seconds <= 0:
        raise LaunchError(f"--time {text!r}: must be more than zero")
    return math.ceil(seconds / 60)


def _flag(key: str, value: Any) -> str:
    return f"--{key}" if value is True else f"--{key}={value}"


def sbatch_command_line(options: dict[str, Any]) -> str:
    return " ".join(["sbatch", *(shlex.quote(_flag(k, v)) for k, v in options.items())])


# --------------------------------------------------------------------------- checks before submitting


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def check_slurm(opts: SlurmOptions, tasks: int, name: str) -> None:
    """Refuse, with SLURM's own reason, what SLURM would refuse; nothing is submitted."""
    for tool in ("sbatch", "srun", "scontrol"):
        if shutil.which(tool) is None:
            raise LaunchError(
                f"--launcher slurm: `{tool}` not found on PATH (run on a SLURM login node, or use --launcher local)"
            )
    if opts.partition is not None:
        shown = _run(["scontrol", "show", "partition", opts.partition])
        if shown.returncode != 0:
            known = _run(["sinfo", "-h", "-o", "%R"]).stdout.split()
            raise LaunchError(
                f"--partition {opts.partition}: no such partition"
                + (f" (this cluster has: {', '.join(sorted(set(known)))})" if known else "")
            )
    options = opts.sbatch_options(tasks, name)
    test = [
        "sbatch",
        "--test-only",
        *(_flag(k, v) for k, v in options.items() if k not in ("signal", "open-mode")),
        "--wrap",
        "true",
    ]
    result = _run(test)
    if result.returncode != 0:
        lines = [ln.strip() for ln in (result.stderr or result.stdout).splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit code {result.returncode}"
        reason = re.sub(r"^(sbatch: error: |allocation failure: )", "", reason)
        raise LaunchError(
            f"--launcher slurm: SLURM refuses these resources: {reason} "
            f"(sbatch --test-only {' '.join(shlex.quote(a) for a in test[2:-2])})"
        )


# --------------------------------------------------------------------------- inside the job


class _Signals(SignalRecorder):
    """The job's own signal handlers, installed before JAX is imported: `train.Interrupt` picks
    up what they recorded when training starts (it looks for a `requested` attribute on the
    handler it replaces)."""

    def install(self) -> _Signals:
        for s in self.SIGNALS:
            signal.signal(s, self._handler)
        signal.signal(signal.SIGCONT, signal.SIG_DFL)  # submitit logs each SIGCONT SLURM sends with a signal
        return self


def _job_ids() -> tuple[str | None, int]:
    """(the SLURM job id in array form `A_i`, how often SLURM restarted it)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
    return job, int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def _log(message: str) -> None:
    print(f"[resexp {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def _slot(folder: Path, slots: int, signals: _Signals) -> Iterator[int | None]:
    """One of `slots` file locks, by index: the local launcher's `--max-parallel` (SLURM has `%K`).
    None when a stop signal came first."""
    import fcntl

    while True:
        for i in range(slots):
            fh = open(folder / f".slot{i}", "a")  # noqa: SIM115 - held open: the flock is the slot for the job's life
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            try:
                yield i
            finally:
                fh.close()
            return
        if signals.requested is not None:
            yield None
            return
        time.sleep(0.2)


@dataclass
class CellJob:
    """The cells of one array task as a submitit job: picklable, imports JAX lazily.

    A cell is one run or one seed group (`train.vmap_seeds`). A task of one cell trains it in
    this process; a task of several (`--runs-per-task K`) trains them at once, each in its own
    worker process placed by `resexp.core.placement` (the task's GPUs shared, a share of memory each),
    and stops, checkpoints and is requeued as one: every run resumes from its own checkpoint.
    """

    cells: list[list[dict]]  # each cell's run configs
    keys: list[list[dict]]  # and their sweep keys
    sweep_dir: str
    launcher: str
    slots: int = 0  # local launcher: at most this many tasks train at once (0: no limit)
    cuda_visible_devices: str | None = None  # local launcher: the submitter's GPUs, not submitit's ""
    runs_per_task: int = 1  # the sweep's packing (a task may hold fewer cells: the last one)

    def __call__(self) -> dict[str, str | None]:
        signals = _Signals().install()
        job_id, restarts = _job_ids()
        sweep_dir = Path(self.sweep_dir)
        gate = _slot(sweep_dir / FOLDER, self.slots, signals) if self.slots else nullcontext(0)
        with gate as slot:
            if slot is None or signals.requested is not None:
                return self._stop(signals.requested, job_id)
            if self.launcher == "local":
                if self.cuda_visible_devices is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = self.cuda_visible_devices
            placements = self._placements(slot)
            if len(self.cells) == 1:
                from resexp.core.placement import apply

                apply(placements[0])  # before JAX starts in this process
                statuses, stopped = self._train(sweep_dir, job_id, restarts), None
            else:
                statuses, stopped = self._train_packed(sweep_dir, job_id, restarts, placements, signals)
        stopped = stopped or signals.requested
        if any(s == "interrupted" for s in statuses.values()) or (
            stopped is not None and any(s not in FINAL for s in statuses.values())
        ):
            return self._stop(stopped or signal.SIGTERM, job_id)
        failed = [r for r, s in statuses.items() if s == "failed"]
        if failed:
            raise RuntimeError(f"{len(failed)} run(s) of this task failed: {', '.join(failed)} (see each summary.json)")
        return statuses

    def _placements(self, slot: int):
        """Where this task's cells train: the task's GPUs (SLURM's, or for the local launcher the
        submitter's, dealt over every slot's workers so that concurrent tasks share them evenly)."""
        from resexp.core.placement import plan, visible_gpus

        gpus = visible_gpus()
        if self.launcher == "local" and self.slots > 1:
            first = slot * self.runs_per_task
            return plan(self.slots * self.runs_per_task, gpus)[first : first + len(self.cells)]
        return plan(len(self.cells), gpus)

    def _cells(self, sweep_dir: Path) -> list:
        """Each cell's runs as sweep cells, named by their directories there (an earlier version's id counts)."""
        from resexp.core.config import Config
        from resexp.sweeps.plan import Cell, in_sweep_dir

        return [
            in_sweep_dir([Cell(Config.model_validate(d), k) for d, k in zip(cfgs, keys, strict=True)], sweep_dir)
            for cfgs, keys in zip(self.cells, self.keys, strict=True)
        ]

    def _log_start(self, sweep_dir: Path, job_id: str | None, restarts: int, ids: list[str]) -> None:
        from resexp.core.checkpoint import Checkpoints

        steps = [
            max(Checkpoints(sweep_dir / r / "checkpoints").all_steps() or [0]) if (sweep_dir / r).exists() else 0
            for r in ids
        ]
        _log(f"job {job_id or os.getpid()} (restart {restarts}): {', '.join(ids)} from step {min(steps)}")

    def _train(self, sweep_dir: Path, job_id: str | None, restarts: int) -> dict[str, str | None]:
        from resexp.core.runtime import configure_jax

        configure_jax()
        from resexp.runs.train import train_runs
        from resexp.sweeps.plan import record_failure

        cells = self._cells(sweep_dir)[0]
        self._log_start(sweep_dir, job_id, restarts, [c.run_id for c in cells])
        extra = {"slurm_job_id": job_id, "restarts": restarts}
        try:
            outcomes = train_runs(
                [c.cfg for c in cells],
                sweep_dir,
                progress=False,
                sweep_keys=self.keys[0],
                extra_summary=extra,
                source=str(sweep_dir / FOLDER),
            )
        except Exception as exc:
            record_failure(cells, sweep_dir, exc)
            raise
        return {o.run_dir.name: o.summary.get("status") for o in outcomes}

    def _train_packed(
        self, sweep_dir: Path, job_id: str | None, restarts: int, placements: list, signals: _Signals
    ) -> tuple[dict[str, str | None], int | None]:
        """Every cell at once, one worker process each; (run id -> status, the signal that stopped it)."""
        from resexp.sweeps.plan import Stopped, record_failure, run_sweep

        groups = self._cells(sweep_dir)
        ids = [c.run_id for g in groups for c in g]
        for g in groups:
            self._log_start(sweep_dir, job_id, restarts, [c.run_id for c in g])
        stopped: int | None = None
        try:
            run_sweep(
                groups,
                sweep_dir,
                jobs=len(groups),
                progress=False,
                placements=placements,
                extra_summary={"slurm_job_id": job_id, "restarts": restarts},
                # SLURM sends SIGTERM to every process of the job itself (scancel, the time limit's end)
                forward_sigterm=self.launcher != "slurm",
            )
        except Stopped as exc:
            stopped = exc.signum
        except KeyboardInterrupt:  # a worker was interrupted (Ctrl-C reaches them all)
            stopped = signals.requested or signal.SIGINT
        except Exception as exc:  # a worker died (out of memory, killed): its runs are failed, not lost
            record_failure([c for g in groups for c in g], sweep_dir, exc)
            raise
        return {r: (read_summary(sweep_dir / r) or {}).get("status") for r in ids}, stopped

    def _stop(self, signum: int | None, job_id: str | None) -> dict:
        """Interrupted: the checkpoint is written; put the task back in the queue, exit without a result."""
        name = signal.Signals(signum).name if signum else "a signal"
        if self.launcher == "slurm" and job_id:
            state = _job_state(job_id)
            if signum in (signal.SIGUSR1, signal.SIGUSR2) or state == "RUNNING":
                result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
                said = (result.stderr or result.stdout).strip()
                # "pending execution": SLURM had requeued it already (preempted at the end of GraceTime).
                _log(f"{name}: checkpointed; scontrol requeue {job_id}: " + ("ok" if result.returncode == 0 else said))
            else:
                # SIGTERM of a job SLURM is already ending (scancel, or preempted and requeued by SLURM):
                # `scontrol requeue` would bring a cancelled job back, so leave it to SLURM.
                _log(f"{name}: checkpointed; job {job_id} is {state or 'ending'}, not requeued by resexp")
        else:
            _log(f"{name}: checkpointed; re-run the sweep to resume")
        raise SystemExit(130)  # not an Exception: submitit writes no result, so nothing looks finished


def _job_state(job_id: str) -> str | None:
    """SLURM's view of a job (RUNNING, COMPLETING, ...), from inside it; None if it cannot say."""
    try:
        out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"\bJobState=(\S+)", out)
    return m.group(1) if m else None


@dataclass
class ReportJob:
    """`resexp report` as a job: after the array (SLURM dependency), or after these local pids end."""

    sweep_dir: str
    wait_for_pids: list[int] = field(default_factory=list)

    def __call__(self) -> str:
        while any(_alive(p) for p in self.wait_for_pids):
            time.sleep(0.5)
        from resexp.reporting.report import build_report

        build_report(Path(self.sweep_dir))
        return str(Path(self.sweep_dir) / "results.csv")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


# --------------------------------------------------------------------------- submitting


def _executor(launcher: str, folder: Path, opts: SlurmOptions, options: dict[str, Any]):
    import submitit

    if launcher == "local":
        local = submitit.LocalExecutor(folder=folder)
        local.update_parameters(timeout_min=60 * 24 * 365, stderr_to_stdout=True)  # no local time limit
        return local
    # `exec`: python replaces the batch shell, so `--signal=B:...` (batch shell only) reaches it;
    # no srun (a step would not get B: signals).
    ex = submitit.SlurmExecutor(folder=folder, python="exec " + shlex.quote(sys.executable))
    extra = {k: v for k, v in options.items() if k not in ("job-name", "array")}
    ex.update_parameters(
        job_name=options["job-name"],
        use_srun=False,
        stderr_to_stdout=True,
        array_parallelism=int(options["array"].rsplit("%", 1)[1]),
        time=None,
        additional_parameters=extra,
    )
    return ex


@contextmanager
def _detached_stdio(log: Path) -> Iterator[None]:
    """Local jobs: start them with SIGINT ignored (Ctrl-C reaches the cells, which checkpoint;
    not submitit's controllers, which would kill them) and stdio on a log file (a pipe held
    open by a background job would keep `resexp sweep --no-wait | tee` from ending)."""
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    with open(log, "a") as fh, open(os.devnull) as null:
        os.dup2(null.fileno(), 0)
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            for fd, copy in zip((0, 1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
            signal.signal(signal.SIGINT, old_int)


def _load_record(sweep_dir: Path) -> dict[str, dict]:
    try:
        return json.loads((sweep_dir / FOLDER / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def _squeue(job_ids: list[str]) -> dict[str, str] | None:
    """Job id (`A_i`, or `J` for a lone job) -> state, for jobs still queued or running; None without squeue."""
    if shutil.which("squeue") is None:
        return None
    if not job_ids:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        result = _run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays)], timeout=30)
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0:
        # "Invalid job id specified": ended long ago; anything else (a busy controller): ask sacct instead
        return {} if "Invalid job id" in result.stderr else None
    states = {}
    for line in result.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        states[jid] = state
    return states


def _sacct(job_ids: list[str]) -> dict[str, str]:
    """Job id -> final state (COMPLETED, CANCELLED, FAILED, ...) from accounting, when it is on."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    result = _run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(arrays)], timeout=30)
    states = {}
    for line in result.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        states[jid] = state.split()[0] if state else ""
    return states


def _is_final(run_dir: Path) -> bool:
    return (read_summary(run_dir) or {}).get("status") in FINAL


def _cell_ids(group) -> list[str]:
    return [c.run_id for c in group]


def _task_ids(task) -> list[str]:
    return [r for g in task for r in _cell_ids(g)]


LAUNCH_FLAGS = (
    "partition",
    "gpus_per_run",
    "cpus_per_run",
    "mem",
    "time",
    "max_parallel",
    "runs_per_task",
    "account",
    "qos",
    "slurm_args",
)


def launch_options(
    launcher: str | None, shard: str | None, jobs: int | None, *, wait: bool = True, **flags
) -> SlurmOptions | None:
    """The cluster flags (`LAUNCH_FLAGS`), checked before anything else: a bad combination raises
    `LaunchError`; None without a launcher."""
    unknown = [k for k in flags if k not in LAUNCH_FLAGS]
    if unknown:
        raise LaunchError(f"unknown launcher option {unknown[0]!r}: choose from {', '.join(LAUNCH_FLAGS)}")
    given = [
        ("--slurm-arg" if k == "slurm_args" else f"--{k.replace('_', '-')}")
        for k, v in flags.items()
        if v not in (None, 0, [])
    ]
    if launcher is None:
        given += [] if wait else ["--no-wait"]
        if given:
            either = given[0] in ("--max-parallel", "--no-wait", "--runs-per-task")
            raise LaunchError(f"{given[0]} needs --launcher slurm" + (" (or --launcher local)" if either else ""))
        return None
    if launcher not in LAUNCHERS:
        raise LaunchError(f"--launcher {launcher!r}: choose one of {', '.join(LAUNCHERS)}")
    slurm_only = [g for g in given if g not in ("--max-parallel", "--runs-per-task")]
    if launcher == "local" and slurm_only:
        raise LaunchError(f"{slurm_only[0]} is a SLURM option: it needs --launcher slurm")
    for flag, value in (("--shard", shard), ("--jobs", jobs)):
        if value is not None:
            raise LaunchError(
                f"--launcher cannot be combined with {flag} (the launcher runs every cell as its own job)"
            )
    return SlurmOptions.from_flags(**flags)


class SubmititExecutor:
    """A sweep's cells that are not final yet, submitted as submitit jobs: one SLURM array
    (`slurm`) or local processes (`local`); then waited for, or left with a report job."""

    loads_data = False  # the jobs load it; here only its files are looked for

    def __init__(self, launcher: str, opts: SlurmOptions, *, wait: bool = True, console, err_console):
        self.launcher, self.opts, self.wait = launcher, opts, wait
        self.console, self.err_console = console, err_console
        if opts.runs_per_task > 1:
            from resexp.core.placement import sharing_rule

            sharing_rule()  # an unknown RESEXP_GPU_SHARING fails here, before anything is written

    def _survey(self, plan) -> None:
        """Which cells to submit (`todo`), which an earlier submission still holds (`busy`), in which tasks."""
        self.sweep_dir, self.name = plan.sweep_dir.resolve(), plan.cfg.name
        self.groups, self.record = plan.groups, _load_record(self.sweep_dir)
        record = self.record
        slurm_ids = [
            record[r]["job_id"]
            for g in self.groups
            for r in _cell_ids(g)
            if record.get(r, {}).get("launcher") == "slurm"
        ]
        queued = _squeue(slurm_ids) if self.launcher == "slurm" else {}
        self.todo, self.busy = [], []
        for g in self.groups:
            ids = _cell_ids(g)
            if all(_is_final(self.sweep_dir / r) for r in ids):
                continue
            mine = [record.get(r, {}) for r in ids]
            if any(
                (m.get("launcher") == "slurm" and queued and m.get("job_id") in queued)
                or (m.get("launcher") == "local" and m.get("pid") and _alive(m["pid"]))
                for m in mine
            ):
                self.busy.append(g)  # still queued or running from an earlier submission: do not submit it twice
            else:
                self.todo.append(g)
        self.tasks = pack_tasks(self.todo, self.opts.runs_per_task)
        self.options = self.opts.sbatch_options(len(self.tasks), self.name)

    def dry_run(self, plan, console) -> None:
        self._survey(plan)
        todo, tasks, name = self.todo, self.tasks, self.name
        console.print(
            f"{name}: {len(todo)} cell(s) to submit ({sum(len(g) for g in todo)} runs)"
            + (f" in {len(tasks)} task(s)" if self.opts.runs_per_task > 1 else "")
            + f", {len(self.busy)} still queued, {len(self.groups) - len(todo) - len(self.busy)} final",
            highlight=False,
            soft_wrap=True,
        )
        if self.launcher == "slurm":
            console.print(
                sbatch_command_line(self.options) + f"  # output: {self.sweep_dir / FOLDER}/%A_%a_0_log.out",
                highlight=False,
                soft_wrap=True,
            )
        for i, task in enumerate(tasks):
            console.print(f"  task {i}: {', '.join(_task_ids(task))}", highlight=False, soft_wrap=True)

    def prepare(self, plan):
        """SLURM's own verdict on the resources (nothing submitted); the plan in absolute paths."""
        import dataclasses

        self._survey(plan)
        if self.launcher == "slurm":
            check_slurm(self.opts, len(self.tasks), self.name)
        return dataclasses.replace(plan, sweep_dir=self.sweep_dir), [c for g in self.todo for c in g]

    def execute(self, plan, manifest) -> Executed:
        """Submit; then wait (the runs as they end) or submit a report job after the cells and return."""
        launcher, sweep_dir, name, tasks = self.launcher, self.sweep_dir, self.name, self.tasks
        if not self.todo:
            self.err_console.print(
                f"{name}: nothing to submit: {len(self.groups) - len(self.busy)} cell(s) final"
                + (f", {len(self.busy)} still queued or running" if self.busy else ""),
                highlight=False,
                soft_wrap=True,
            )
            if self.busy and self.wait:
                entries = [self.record[_cell_ids(g)[0]] for g in self.busy]
                return _wait(launcher, entries, self.busy, sweep_dir, self.err_console)
            return Executed(0, report=not self.busy, missing_report_ok=True)
        folder = sweep_dir / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        jobs = _submit(launcher, folder, self.opts, self.options, tasks, sweep_dir)
        entries = []
        for task, job in zip(tasks, jobs, strict=True):
            entry: dict[str, Any] = {"launcher": launcher, "job_id": str(job.job_id), "submitted": time.time()}
            if launcher == "local":
                entry["pid"] = int(job.job_id)
            for r in _task_ids(task):
                self.record[r] = entry
            entries.append(entry)
        write_json(folder / RECORD, self.record)
        array = str(jobs[0].job_id).split("_")[0]
        packed = f", {self.opts.runs_per_task} runs each" if self.opts.runs_per_task > 1 else ""
        what = (
            f"array {array} ({len(tasks)} tasks{packed}, {self.options['array'].rsplit('%', 1)[1]} at a time)"
            if launcher == "slurm"
            else f"{len(tasks)} local jobs{packed} (pids {', '.join(str(j.job_id) for j in jobs)})"
        )
        self.err_console.print(f"[bold]{name}[/]: submitted {what}; logs in {folder}", highlight=False, soft_wrap=True)
        if not self.wait:
            pids = [e.get("pid") for e in entries]
            report_id = _submit_report(launcher, folder, self.opts, sweep_dir, array, pids)
            self.console.print(
                f"submitted: cells {array if launcher == 'slurm' else ' '.join(str(j.job_id) for j in jobs)}, "
                f"report {report_id} (after the cells); watch: resexp status {sweep_dir}",
                highlight=False,
                soft_wrap=True,
            )
            return Executed(0, report=False)
        flat = [[c for g in task for c in g] for task in tasks]  # _wait follows runs, task by task
        return _wait(launcher, entries, flat, sweep_dir, self.err_console, jobs=jobs)


def _submit(launcher: str, folder: Path, opts: SlurmOptions, options: dict, tasks: list, sweep_dir: Path) -> list:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    slots = (opts.max_parallel or 1) if launcher == "local" else 0
    ex = _executor(launcher, folder, opts, options)
    payloads = [
        CellJob(
            [[c.cfg.model_dump(mode="json") for c in g] for g in task],
            [[c.keys for c in g] for g in task],
            str(sweep_dir),
            launcher,
            slots=slots,
            cuda_visible_devices=visible,
            runs_per_task=opts.runs_per_task,
        )
        for task in tasks
    ]
    guard = _detached_stdio(folder / "local-controllers.log") if launcher == "local" else nullcontext()
    try:
        with guard, ex.batch():
            jobs = [ex.submit(p) for p in payloads]
    except Exception as exc:  # sbatch refused after all (a race with the checks): one line, exit 2
        text = str(exc).strip().splitlines()
        raise LaunchError(
            f"--launcher {launcher}: submission failed: {text[-1] if text else type(exc).__name__}"
        ) from None
    return jobs


def _submit_report(
    launcher: str, folder: Path, opts: SlurmOptions, sweep_dir: Path, array: str, pids: list[int | None]
) -> str:
    import submitit

    if launcher == "local":
        local = submitit.LocalExecutor(folder=folder)
        local.update_parameters(timeout_min=60 * 24 * 365, stderr_to_stdout=True)
        with _detached_stdio(folder / "local-controllers.log"):
            job = local.submit(ReportJob(str(sweep_dir), [p for p in pids if p]))
        return str(job.job_id)
    ex = submitit.SlurmExecutor(folder=folder, python="exec " + shlex.quote(sys.executable))
    extra: dict[str, Any] = {"dependency": f"afterany:{array}", "kill-on-invalid-dep": "yes"}
    for key, value in (
        ("partition", opts.partition),
        ("account", opts.account),
        ("qos", opts.qos),
        ("time", opts.time),
    ):
        if value is not None:
            extra[key] = value
    ex.update_parameters(
        job_name=f"resexp-report-{sweep_dir.name}",
        use_srun=False,
        stderr_to_stdout=True,
        time=None,
        additional_parameters=extra,
    )
    try:
        return str(ex.submit(ReportJob(str(sweep_dir))).job_id)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise LaunchError(f"report job: submission failed: {text[-1] if text else type(exc).__name__}") from None


# --------------------------------------------------------------------------- waiting


class _Stop(Exception):
    pass


def _wait(
    launcher: str, entries: list[dict], groups: list, sweep_dir: Path, err_console, jobs: list | None = None
) -> Executed:
    """Show each run as it becomes final; then the runs that did not, and the exit code as for a local sweep."""
    run_ids = [r for g in groups for r in _cell_ids(g)]
    job_ids = [e["job_id"] for e in entries]
    total, shown = len(run_ids), set()
    stopped: list[int] = []

    def on_signal(signum, _frame):
        stopped.append(signum)
        raise _Stop

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            for r in run_ids:
                s = read_summary(sweep_dir / r) or {}
                if r not in shown and s.get("status") in FINAL:
                    shown.add(r)
                    err_console.print(f"[{len(shown)}/{total}] {r}: {s['status']}", highlight=False, soft_wrap=True)
            if not _any_active(launcher, job_ids, jobs):
                break
            time.sleep(POLL_S)
    except _Stop:
        return Executed(_stop_waiting(launcher, stopped[0], job_ids, jobs, err_console, sweep_dir), report=False)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    final_states = _sacct(job_ids) if launcher == "slurm" else {}
    statuses = {r: (read_summary(sweep_dir / r) or {}).get("status") for r in run_ids}
    for r in run_ids:
        if r not in shown and statuses[r] in FINAL:
            shown.add(r)
            err_console.print(f"[{len(shown)}/{total}] {r}: {statuses[r]}", highlight=False, soft_wrap=True)
    unfinished = [r for r in run_ids if statuses[r] not in FINAL]
    cancelled = any(s.startswith("CANCELLED") for s in final_states.values()) or (
        not final_states and any(statuses[r] == "interrupted" for r in unfinished)
    )
    by_run = {r: e["job_id"] for e, g in zip(entries, groups, strict=True) for r in _cell_ids(g)}
    notes = [
        f"{statuses[r] or 'not started'}{f' ({state})' if state else ''}: {r}; "
        f"log: {_log_path(sweep_dir, launcher, by_run[r])}"
        for r in unfinished
        for state in [final_states.get(by_run[r], "")]
    ]
    if unfinished and cancelled:
        notes.append(f"cancelled: re-run the same command to resume {len(unfinished)} run(s)")
    return Executed(130 if unfinished and cancelled else 1 if unfinished else 0, notes, missing_report_ok=True)


def _any_active(launcher: str, job_ids: list[str], jobs: list | None) -> bool:
    if launcher == "local":
        return any(not j.done() for j in jobs) if jobs else any(_alive(int(j)) for j in job_ids)
    queued = _squeue(job_ids)
    if queued is None:  # no squeue on PATH: ask submitit (sacct)
        return any(not j.done(force_check=True) for j in jobs or [])
    return any(j in queued for j in job_ids)


def _stop_waiting(
    launcher: str, signum: int, job_ids: list[str], jobs: list | None, err_console, sweep_dir: Path
) -> int:
    if launcher == "slurm":
        arrays = " ".join(sorted({j.split("_")[0] for j in job_ids}))
        err_console.print(
            f"stopped waiting; the jobs keep running (scancel {arrays} stops them). "
            f"Watch: resexp status {sweep_dir}; report: resexp report {sweep_dir}",
            highlight=False,
            soft_wrap=True,
        )
        return 130
    # Local jobs are this machine's processes: stop them (each checkpoints its chunk), leave no orphans.
    # A terminal's Ctrl-C reached them already: give them a moment; otherwise (or `kill PID`) forward SIGTERM.
    pids = [int(j) for j in job_ids]

    def wait_for(seconds: float) -> None:
        deadline = time.time() + seconds
        while any(_alive(p) for p in pids) and time.time() < deadline:
            time.sleep(0.2)

    if signum == signal.SIGINT:
        wait_for(5)
    for sig, grace in ((signal.SIGTERM, 60), (signal.SIGKILL, 5)):
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        wait_for(grace)
    err_console.print("interrupted: the runs saved a checkpoint; re-run the same command to resume")
    return 130


def _log_path(sweep_dir: Path, launcher: str, job_id: str) -> Path:
    folder = sweep_dir / FOLDER
    return folder / f"{job_id}_0_log.out"


# --------------------------------------------------------------------------- resexp status


def sweep_status(sweep_dir: Path) -> list[dict]:
    """One row per run: the run directory's status and step, its net (depth, shortcut, seed),
    plus its job's id, state and restarts. A summary.json that cannot be read is `unreadable`."""
    if not sweep_dir.exists():
        raise UserError(f"{sweep_dir}: does not exist")
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir}: not a sweep directory")
    record = _load_record(sweep_dir)
    run_ids = sorted(
        {
            p.name
            for p in sweep_dir.iterdir()
            if p.is_dir()
            and not p.name.startswith(".")
            and ((p / "summary.json").exists() or (p / "config.yaml").exists())
        }
        | set(record)
    )
    slurm_ids = [e["job_id"] for e in record.values() if e.get("launcher") == "slurm"]
    queued = _squeue(slurm_ids) or {}
    finished = _sacct([j for j in slurm_ids if j not in queued]) if slurm_ids else {}
    rows = []
    for r in run_ids:
        s, unreadable = _summary_or_problem(sweep_dir / r)
        e = record.get(r, {})
        job = s.get("slurm_job_id") or e.get("job_id")
        state = None
        if e.get("launcher") == "slurm" and e.get("job_id"):
            jid = e["job_id"]
            state = queued.get(jid) or finished.get(jid)
        elif e.get("launcher") == "local" and e.get("pid"):
            state = "RUNNING" if _alive(e["pid"]) else "ENDED"
        status = s.get("status") or ("queued" if state in ("PENDING", "RUNNING") else "not started")
        net = s.get("config") or _config_of(sweep_dir / r)
        rows.append(
            {
                "run_id": r,
                "status": "unreadable" if unreadable else status,
                "problem": unreadable,
                "steps": s.get("steps"),
                "total_steps": s.get("total_steps"),
                "final_train_loss": s.get("final_train_loss"),
                "wall_seconds": s.get("wall_seconds"),
                "depth": (net.get("model") or {}).get("depth"),
                "shortcut": (net.get("model") or {}).get("shortcut"),
                "seed": (net.get("train") or {}).get("seed"),
                "job_id": job,
                "job_state": state,
                "restarts": s.get("restarts"),
            }
        )
    return rows


def _summary_or_problem(run_dir: Path) -> tuple[dict, str | None]:
    """(summary, None); ({}, None) when there is none yet; ({}, why) when it cannot be read."""
    path = run_dir / "summary.json"
    if not path.exists():
        return {}, None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {}, f"{type(exc).__name__}: {exc}"
    return (summary, None) if isinstance(summary, dict) else ({}, "not a JSON object")


def _config_of(run_dir: Path) -> dict:
    """A run's resolved config from its config.yaml (a run without a readable summary yet)."""
    import yaml

    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def _status_order(row: dict) -> tuple:
    """By depth (as a number: 8 before 20), then plain before ResNet, then seed, then run id."""
    depth, seed = row["depth"], row["seed"]
    return (
        (0, depth) if isinstance(depth, (int, float)) else (1, 0),
        row["shortcut"] is not False,
        (0, seed) if isinstance(seed, (int, float)) else (1, 0),
        row["run_id"],
    )


def print_status(sweep_dir: Path, console) -> None:
    """A table of the sweep's runs sorted by depth, with a header and the counts per status; job
    columns only for runs a launcher submitted (SLURM or local jobs)."""
    from collections import Counter

    from rich import box
    from rich.table import Table

    rows = sorted(sweep_status(sweep_dir), key=_status_order)
    if not rows:
        raise UserError(f"{sweep_dir}: no runs and no submitted cells")
    jobs = any(r["job_id"] or r["job_state"] for r in rows)
    counts = Counter(r["status"] for r in rows)
    table = Table(
        title=f"{sweep_dir}: {len(rows)} runs, "
        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("run", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("step", justify="right", no_wrap=True)
    table.add_column("train loss", justify="right", no_wrap=True)
    table.add_column("wall s", justify="right", no_wrap=True)
    if jobs:
        table.add_column("job", no_wrap=True)
        table.add_column("restarts", justify="right", no_wrap=True)
    for r in rows:
        done, total = (r[k] if r[k] is not None else "-" for k in ("steps", "total_steps"))
        loss, wall = r["final_train_loss"], r["wall_seconds"]
        cells = [
            r["run_id"],
            r["status"],
            f"{done}/{total}" if r["steps"] is not None else "-",
            f"{loss:.4g}" if isinstance(loss, (int, float)) and math.isfinite(loss) else "-",
            f"{wall:.1f}" if isinstance(wall, (int, float)) else "-",
        ]
        if jobs:
            job = str(r["job_id"] or "-") + (f" ({r['job_state']})" if r["job_state"] else "")
            cells += [job, str(r["restarts"]) if r["restarts"] is not None else "-"]
        table.add_row(*cells, style="red" if r["status"] in ("failed", "unreadable", "diverged") else None)
    console.print(table)
    for r in rows:
        if r["problem"] is not None:
            console.print(f"note: {r['run_id']}: unreadable summary.json ({r['problem']})", highlight=False)
