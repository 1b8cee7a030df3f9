"""Run a REAL TensorBoard server on a logdir and query its HTTP API (test helper).

    with TensorBoardServer(logdir) as tb:
        tb.wait_for(lambda: "vs_depth/shortcut=false" in tb.runs())
        tb.scalar_tags()              # {run: {tag: {...}}}
        tb.scalars(run, tag)          # [(step, value), ...]
        tb.hparams_experiment()       # GetExperiment (POST, JSON body)
        tb.session_groups()           # ListSessionGroups (POST, JSON body)

No mocks: this is `python -m tensorboard.main` in a subprocess, bound to
127.0.0.1 on a free port picked here, polled until it answers. The HTTP API
(TensorBoard 2.21):

* ``GET  /data/runs``                                   -> ["run", ...]
* ``GET  /data/plugin/scalars/tags``                    -> {run: {tag: {displayName, description}}}
* ``GET  /data/plugin/scalars/scalars?run=R&tag=T``     -> [[wall_time, step, value], ...]
* ``GET  /data/plugin/images/tags``                     -> {run: {tag: {...}}}
* ``GET  /data/plugin/images/images?run=R&tag=T``       -> [{wall_time, step, query}, ...]
* ``GET  /data/plugin/images/individualImage?<query>``  -> the PNG bytes
* ``POST /data/plugin/hparams/experiment``      body ``GetExperimentRequest`` JSON
* ``POST /data/plugin/hparams/session_groups``  body ``ListSessionGroupsRequest`` JSON
  (the frontend POSTs; a GET needs ``?request=<json>``). Sessions are only
  returned if their status is listed in ``allowedStatuses``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

# one port picker and one process stop, shared with the screenshot script
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from dashboard_screenshots import free_port, stop_process

ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


class TensorBoardError(RuntimeError):
    pass


class TensorBoardServer:
    """A TensorBoard subprocess serving `logdir`; a context manager.

    `load_fast=False` uses the pure-Python loader (deterministic, no Rust data
    server); `"auto"`/`True` test what a user gets by default.
    """

    def __init__(
        self,
        logdir: str | Path,
        *,
        load_fast: bool | str = False,
        reload_interval: float = 1.0,
        start_timeout: float = 60.0,
        extra_args: list[str] | None = None,
    ):
        self.logdir = Path(logdir)
        self.load_fast = {True: "true", False: "false"}.get(load_fast, load_fast)  # type: ignore[arg-type]
        self.reload_interval = reload_interval
        self.start_timeout = start_timeout
        self.extra_args = extra_args or []
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        # open for the server's whole life (its stdout/stderr); closed and removed by stop()
        self._log = tempfile.NamedTemporaryFile(prefix="tensorboard-", suffix=".log", delete=False)  # noqa: SIM115

    # -- lifecycle ------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TensorBoardServer:
        last_error = ""
        for _attempt in range(3):  # the port may be taken between picking and binding
            self.port = free_port()
            cmd = [
                sys.executable, "-m", "tensorboard.main",
                "--logdir", str(self.logdir),
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--load_fast", str(self.load_fast),
                "--reload_interval", str(self.reload_interval),
                *self.extra_args,
            ]  # fmt: skip
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    last_error = f"tensorboard exited with {self.proc.returncode}:\n{self.log()}"
                    break
                try:
                    self.get_json("/data/runs", timeout=2)
                    return self
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                    time.sleep(0.2)
            else:
                self.stop()
                raise TensorBoardError(f"tensorboard did not answer in {self.start_timeout}s:\n{self.log()}")
        raise TensorBoardError(last_error)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def log(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")[-5000:]

    def __enter__(self) -> TensorBoardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    # -- raw HTTP -------------------------------------------------------------
    def get(self, path: str, params: dict[str, Any] | None = None, timeout: float = 30) -> bytes:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read()

    def get_json(self, path: str, params: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        return json.loads(self.get(path, params, timeout))

    def post_json(self, path: str, body: dict[str, Any], timeout: float = 30) -> Any:
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    # -- the API ----------------------------------------------------------------
    def runs(self) -> list[str]:
        return self.get_json("/data/runs")

    def scalar_tags(self) -> dict[str, dict[str, Any]]:
        return self.get_json("/data/plugin/scalars/tags")

    def scalars(self, run: str, tag: str) -> list[tuple[int, float]]:
        rows = self.get_json("/data/plugin/scalars/scalars", {"run": run, "tag": tag})
        return [(int(step), float(value)) for _wall, step, value in rows]

    def image_tags(self) -> dict[str, dict[str, Any]]:
        return self.get_json("/data/plugin/images/tags")

    def images(self, run: str, tag: str) -> list[bytes]:
        """The PNG bytes of every image event of (run, tag)."""
        entries = self.get_json("/data/plugin/images/images", {"run": run, "tag": tag})
        return [self.get("/data/plugin/images/individualImage?" + e["query"]) for e in entries]

    def hparams_experiment(self) -> dict[str, Any]:
        return self.post_json("/data/plugin/hparams/experiment", {"experimentName": "", "includeMetrics": True})

    def session_groups(self, **request: Any) -> dict[str, Any]:
        body = {
            "experimentName": "",
            "allowedStatuses": ALL_STATUSES,
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 10_000,
            "includeMetrics": True,
            **request,
        }
        return self.post_json("/data/plugin/hparams/session_groups", body)

    def sessions(self) -> dict[str, dict[str, Any]]:
        """Every session (run name -> session dict with `hparams` of its group)."""
        out = {}
        for group in self.session_groups().get("sessionGroups", []):
            for session in group.get("sessions", []):
                out[session["name"]] = {**session, "hparams": group.get("hparams", {})}
        return out

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.5) -> Any:
        """Poll `predicate` until it returns something truthy (TensorBoard loads
        event files in the background after it starts answering)."""
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            try:
                result = predicate()
                if result:
                    return result
            except (urllib.error.URLError, KeyError, ValueError, OSError) as exc:
                last_exc = exc
            if self.proc is None or self.proc.poll() is not None:
                raise TensorBoardError(f"tensorboard died:\n{self.log()}")
            time.sleep(interval)
        raise TensorBoardError(f"condition not met within {timeout}s (last error: {last_exc!r})\n{self.log()}")
