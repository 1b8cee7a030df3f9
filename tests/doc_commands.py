"""The shell commands of the README and the docs pages, found and run as a reader would type them.

A command is a line of a fenced code block (or, in the README, an indented one); a line ending in
`\\` continues on the next. `resexp ...` lines run as `python -m resexp`, `make ...` lines with the
repo's Makefile and venv (writing their runs into the reader's directory), `python scripts/...`
lines with this interpreter. Training is shrunk with `RESEXP_SET` (extra `--set`s that change the
run ids, so nothing here can pass for a real result). Each command must exit with the code its
comment states (`(exit N)`, else 0) and print no traceback. Only the commands in `SKIPPED` are left
out, each with its reason.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from conftest import ROOT

README = ROOT / "README.md"

# Few steps, chunks that divide them, one checkpoint at the end, evaluation on a few images.
SHRINK = (
    "train.steps=10 train.log_every=5 train.checkpoint_every=10 train.eval_every=0 "
    "optim.warmup_steps=0 train.eval_examples=64"
)

# (substring of the command, why it is not run here). Anything else in a code block runs.
SKIPPED = [
    ("make test", "this test is part of `make test`"),
    ("make tensorboard", "a server that runs until stopped: started last, checked in Chromium, then stopped"),
    ("make bench", "benchmarks measure, they do not test; tests/test_perf.py runs the script briefly"),
    ("make slurm", "starts a SLURM cluster; tests/test_slurm.py does"),
    ("make lint", "checks the code, not the docs; .ci/run runs it before the tests"),
    ("make docs", "builds the site into the repo's site/; .ci/run runs it before the tests"),
    ("make check-wheel", "builds and installs the package; .ci/run runs it after the tests"),
    ("make tutorial", "runs the notebook in a Jupyter kernel, minutes; .ci/run runs it after the tests"),
    ("resexp sweep fashion_mnist", "needs the Fashion-MNIST files (`resexp data download fashion_mnist`: the network)"),
    ("resexp sweep demo", "the demo by name: scripts/check_wheel.sh runs it from the installed wheel"),
    ("--launcher slurm", "needs a SLURM cluster; tests/test_slurm.py runs these against a real one"),
    ("srun ", "needs a SLURM cluster with GPUs; tests/test_distributed.py runs one run over two processes"),
    ("resexp analyze runs/demo", "five analyses of every demo run, minutes; tests/test_analysis.py runs `analyze`"),
    ("resexp data download", "needs the network"),
    ("resexp sweep configs/cifar10", "needs the CIFAR-10 files (and a GPU for the full recipe)"),
    ("resexp train configs/cifar10", "needs the CIFAR-10 files (and a GPU for the full recipe)"),
    ("--distributed", "needs several processes; tests/test_distributed.py runs two"),
    ("runs/cifar10_table6", "reports the Table 6 sweep, whose runs need CIFAR-10"),
    ("/shared/", "a cluster's shared filesystem; tests/test_slurm.py runs `resexp status` on a real one"),
    ("source .venv/bin/activate", "changes the reader's shell; the commands here run with .venv/bin first on PATH"),
    ("pip install", "installs packages from the network"),
    ("python3.12 -m venv", "needs Python 3.12 and the network"),
    ("JAX_PLATFORMS=cuda", "needs a GPU"),
    ("-m pytest", "the test suite itself"),
    ("scripts/bench.py", "benchmarks measure, they do not test; tests/test_perf.py runs the script briefly"),
    ("scripts/ab_xla.py", "an A/B benchmark of minutes; tests/test_bench_scripts.py runs it briefly"),
    ("scripts/gpu_bench.sh", "needs a GPU; tests/test_bench_scripts.py runs its --smoke pipeline on CPU"),
    ("scripts/dashboard_screenshots.py", "needs Chromium and TensorBoard; tests/test_dashboard.py drives both"),
]
SYNOPSIS = re.compile(r"\[--|\b(CONFIG|SWEEP_DIR|RUN_DIR|NAME|DIR|FILE|URL|KEY|CONFIG_OR_RUN)\b|<\w")
RUNNABLE = re.compile(r"(resexp|make|python3?|\.venv/bin/python)\b")
ENV_ASSIGNMENT = re.compile(r"[A-Z_][A-Z0-9_]*=")
SHELL_FENCES = ("", "bash", "sh", "shell", "console")


@dataclass(frozen=True)
class Command:
    """One documented shell command: where it is, what it says, the exit code its comment states."""

    path: Path
    line: int
    code: str
    expected: int

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: `{self.code}`"

    @property
    def program(self) -> str:
        """The command's program, after any leading VAR=value assignments."""
        words = [w for w in self.code.split() if not ENV_ASSIGNMENT.match(w)]
        return words[0] if words else ""

    @property
    def runnable(self) -> bool:
        return bool(RUNNABLE.fullmatch(self.program))

    @property
    def synopsis(self) -> bool:
        """A usage line with placeholders (`resexp train CONFIG [--set ...]`), not a command to run."""
        return bool(SYNOPSIS.search(self.code))


def code_lines(path: Path, *, indented: bool) -> list[tuple[int, str]]:
    """(line number, text) of every line in a shell code block, `\\` continuations joined."""
    out: list[tuple[int, str]] = []
    fence: str | None = None  # the open block's language ("" for none), None outside a block
    pending = ""
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip().lower()
            continue
        in_indented_block = (
            indented
            and fence is None
            and line.startswith("    ")
            and (n < 2 or not lines[n - 2].strip() or lines[n - 2].startswith("    "))
        )
        if not (fence in SHELL_FENCES or in_indented_block):
            continue
        if stripped.endswith("\\"):  # a command continued on the next line
            pending += stripped[:-1].strip() + " "
            continue
        out.append((n, pending + stripped))
        pending = ""
    return out


def commands(path: Path, *, indented: bool = False) -> list[Command]:
    """Every command of a file's shell code blocks (comment lines and blank lines are not commands)."""
    out = []
    for n, text in code_lines(path, indented=indented):
        code, _, comment = text.partition(" #")
        code = code.strip()
        if not code or code.startswith("#"):
            continue
        expected = re.search(r"\(exit (\d+)\)", comment)
        out.append(Command(path, n, code, int(expected.group(1)) if expected else 0))
    return out


def readme_commands() -> list[Command]:
    """Every resexp/make line of the README's code blocks (fenced or indented), synopsis lines left out."""
    found = commands(README, indented=True)
    return [c for c in found if re.match(r"(resexp|make)\b", c.code) and not c.synopsis]


def skip_reason(command: str) -> str | None:
    return next((why for part, why in SKIPPED if part in command), None)


def reader_workdir(directory: Path) -> Path:
    """A reader's working directory: the repo's configs, scripts and docs, and nothing trained yet."""
    for name in ("configs", "scripts", "docs"):
        (directory / name).symlink_to(ROOT / name)
    return directory


def reader_env() -> dict[str, str]:
    return {
        **os.environ,
        "RESEXP_SET": SHRINK,
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "200",
        "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def argv_of(code: str, workdir: Path) -> tuple[list[str], dict[str, str]]:
    """The argv and extra environment that run `code` here as the reader's shell would."""
    words = shlex.split(code)
    env: dict[str, str] = {}
    while words and ENV_ASSIGNMENT.match(words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    program, args = words[0], words[1:]
    if program == "resexp":
        return [sys.executable, "-m", "resexp", *args], env
    if program == "make":  # the repo's Makefile and venv, the reader's runs/ (make never reinstalls from a copy)
        return ["make", "-C", str(ROOT), *args, f"OUT={workdir / 'runs'}"], env
    return [sys.executable, *args], env  # python / python3 / .venv/bin/python


def run_as_reader(code: str, workdir: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    argv, extra = argv_of(code, workdir)
    return subprocess.run(argv, cwd=workdir, env={**env, **extra}, capture_output=True, text=True, timeout=timeout)


def check_ran_as_documented(command: Command, proc: subprocess.CompletedProcess) -> None:
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, f"{command.where} printed a traceback:\n{output[-3000:]}"
    assert proc.returncode == command.expected, (
        f"{command.where} exited {proc.returncode}, the docs say {command.expected}:\n{output[-3000:]}"
    )
