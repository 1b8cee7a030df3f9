"""The README's commands, run in the README's order, as a reader would type them.

Every `resexp ...` and `make ...` line of the README's code blocks runs, in order, in one
temporary directory, so state carries over the way it does for a reader (the demo sweep,
then a second grid into the same directory, then reports over it). Training is shrunk with
`RESEXP_SET` (extra `--set`s that change the run ids, so nothing here can pass for a real
result). Each command must exit with the code the README states for it (`(exit N)` in its
comment, else 0) and print no traceback. Only the commands in `SKIPPED` are left out, each
with its reason: a README example can no longer crash unnoticed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
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
    ("--launcher slurm", "needs a SLURM cluster; tests/test_slurm.py runs these against a real one"),
    ("resexp data download", "needs the network"),
    ("resexp sweep configs/cifar10", "needs the CIFAR-10 files (and a GPU for the full recipe)"),
    ("resexp train configs/cifar10", "needs the CIFAR-10 files (and a GPU for the full recipe)"),
    ("--distributed", "needs several processes; tests/test_distributed.py runs two"),
    ("runs/cifar10_table6", "reports the Table 6 sweep, whose runs need CIFAR-10"),
    ("/shared/", "a cluster's shared filesystem; tests/test_slurm.py runs `resexp status` on a real one"),
]
SYNOPSIS = re.compile(r"\[--|\b(CONFIG|SWEEP_DIR|RUN_DIR|NAME|DIR|FILE|URL|KEY|CONFIG_OR_RUN)\b|<\w")


def readme_commands() -> list[tuple[int, str, int]]:
    """(line number, command, expected exit code) of every resexp/make line in a code block."""
    out, fenced, pending = [], False, ""
    lines = README.read_text().splitlines()
    for n, line in enumerate(lines, start=1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        indented = (
            line.startswith("    ")
            and not fenced
            and (n < 2 or not lines[n - 2].strip() or lines[n - 2].startswith("    "))
        )
        if not (fenced or indented):
            continue
        if line.rstrip().endswith("\\"):  # a command continued on the next line
            pending += line.rstrip()[:-1].strip() + " "
            continue
        line, pending = pending + line.strip(), ""
        code, _, comment = line.strip().partition(" #")
        code = code.strip()
        if not re.match(r"(resexp|make)\b", code) or SYNOPSIS.search(code):
            continue
        expected = re.search(r"\(exit (\d+)\)", comment)
        out.append((n, code, int(expected.group(1)) if expected else 0))
    return out


def skip_reason(command: str) -> str | None:
    return next((why for part, why in SKIPPED if part in command), None)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A reader's working directory: the repo's configs, scripts and docs, and nothing trained yet
    (`make` runs with the repo's Makefile and venv, writing its runs here)."""
    d = tmp_path_factory.mktemp("reader")
    for name in ("configs", "scripts", "docs"):
        (d / name).symlink_to(ROOT / name)
    return d


def test_readme_has_the_commands_this_test_expects():
    commands = [c for _, c, _ in readme_commands()]
    assert commands[:2] == ["make demo", "make test"]  # the two commands, first
    assert any(c.startswith("resexp sweep configs/demo.yaml --grid optim.weight_decay") for c in commands)
    assert any(code == 1 for _, _, code in readme_commands())  # a stated non-zero exit is checked too
    assert "make tensorboard" in commands  # Usage ends by opening the dashboard: checked in Chromium below
    run = [c for c in commands if not skip_reason(c)]
    assert len(run) >= 8, run


@pytest.mark.slow
def test_readme_commands_run_in_order(workdir):
    env = {
        **os.environ,
        "RESEXP_SET": SHRINK,
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "200",
        "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    ran = []
    for line, command, expected in readme_commands():
        if skip_reason(command):
            continue
        argv = shlex.split(command)
        if argv[0] == "resexp":
            argv = [sys.executable, "-m", "resexp", *argv[1:]]
        else:  # make: the repo's Makefile and venv, the reader's runs/ (make never reinstalls from a copy)
            argv = ["make", "-C", str(ROOT), *argv[1:], f"OUT={workdir / 'runs'}"]
        proc = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
        output = proc.stdout + proc.stderr
        where = f"README.md:{line}: `{command}`"
        assert "Traceback" not in output, f"{where} printed a traceback:\n{output[-3000:]}"
        assert proc.returncode == expected, (
            f"{where} exited {proc.returncode}, README says {expected}:\n{output[-3000:]}"
        )
        ran.append(command)
    # the sequence that once broke the demo directory: the demo, a weight-decay grid into it, the demo again
    assert (workdir / "runs" / "demo" / "loss_vs_depth.png").is_file()
    assert list((workdir / "runs" / "demo" / "grids").glob("*/residual_ratio_vs_wd.png")), ran
    again = subprocess.run(
        ["make", "-C", str(ROOT), "demo", f"OUT={workdir / 'runs'}"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0 and "Traceback" not in again.stdout + again.stderr, again.stderr[-3000:]
    assert "already done" in again.stderr
    answer_in_the_browser(workdir, env)


def answer_in_the_browser(workdir: Path, env: dict) -> None:
    """Then `make tensorboard`, as the README's Usage ends: the bare address it serves, in a fresh
    Chromium, shows every sweep's loss vs depth, every chart drawn, none clipped, plain blue and
    ResNet orange."""
    import signal
    import urllib.request

    sys.path.insert(0, str(ROOT / "scripts"))
    import dashboard_screenshots as dash

    if dash.find_chromium() is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); .ci/run installs it when it can")
    port = dash.free_port()
    argv = ["make", "-C", str(ROOT), "tensorboard", f"OUT={workdir / 'runs'}", f"PORT={port}"]
    server = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(url + "/data/plugin/custom_scalars/layout", timeout=2) as resp:
                    if json.loads(resp.read()).get("category"):
                        break
            except OSError:
                time.sleep(0.5)
        assert server.poll() is None, server.communicate()[0]
        _, problems = dash.screenshot_pages(url, workdir / "dashboard")
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # make and the resexp it started
        server.wait(timeout=30)
    assert not problems, problems
    text = (workdir / "dashboard" / "custom_scalars.txt").read_text()
    assert "demo: Loss vs depth" in text and "demo_seeds: Loss vs depth" in text, text[:2000]
