"""Screenshots of a sweep's TensorBoard dashboards, taken in a real (headless) Chromium, and a
check that every Custom Scalars chart shows its data: not empty, not clipped, one colour per family.

    python scripts/dashboard_screenshots.py runs/demo docs/screenshots
    -> custom_scalars.png, images.png, hparams.png, custom_scalars.txt (the page's text) and
       custom_scalars.json (every chart: its y range and its series' values and colours);
       exit 1 if a chart is empty, clipped or coloured against its family

Serves the directory the way a user does, with `resexp tensorboard` (a sweep, or a directory of
sweeps) on 127.0.0.1 (a free port), drives Debian's `chromium` over the DevTools protocol on a
pipe (`--remote-debugging-pipe`: no port, no websocket library), opens the bare address in a fresh
browser profile (what a new user gets: no setting changed by hand) and waits until each page
shows what it should before taking its PNG.

Why DevTools instead of `chromium --screenshot/--dump-dom`: TensorBoard's dashboards are Polymer
elements whose content lives in shadow roots, which `--dump-dom` leaves out, and the charts'
data and y ranges are only in the live page (`CHARTS_JS`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",  # canvas charts render in software
    "--hide-scrollbars", "--remote-debugging-pipe",
]  # fmt: skip

# page name -> (address after the host, text that must be on the page before the screenshot). The bare
# address is what `resexp tensorboard` prints and opens at the answer (Custom Scalars).
PAGES = {
    "custom_scalars": ("", "Loss vs depth"),
    "images": ("#images&regexInput=%5Evs_depth", "figures/loss_vs_depth"),
    "hparams": ("#hparams", "model.depth"),
}

# Every text node of the page, shadow roots included (what `--dump-dom` cannot show).
PAGE_TEXT_JS = """(() => {
  const out = [];
  const visit = (root) => {
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_ELEMENT | NodeFilter.SHOW_TEXT);
    for (let n = walker.currentNode; n; n = walker.nextNode()) {
      if (n.nodeType === Node.TEXT_NODE) {
        const tag = n.parentNode && n.parentNode.nodeName;
        if (tag !== "STYLE" && tag !== "SCRIPT" && n.data.trim()) out.push(n.data.trim());
      }
      else if (n.shadowRoot) visit(n.shadowRoot);
    }
  };
  visit(document);
  return out.join("\\n");
})()"""

# Every Custom Scalars chart as drawn: its title, its x and y ranges, and per series (tag and run) the
# colour it is drawn in and its points. Reads TensorBoard 2.21's chart objects (vz-line-chart2's _chart).
CHARTS_JS = """(() => {
  const all = (root, name, out) => {
    for (const el of root.querySelectorAll("*")) {
      if (el.localName === name) out.push(el);
      if (el.shadowRoot) all(el.shadowRoot, name, out);
    }
    return out;
  };
  return all(document, "tf-custom-scalar-multi-line-chart-card", []).map((card) => {
    const charts = all(card.shadowRoot, "vz-line-chart2", []);
    const chart = charts.length ? charts[0]._chart : null;
    if (!chart) return {title: card.title, series: [], x: null, y: null};
    return {
      title: card.title, x: chart.xScale.domain(), y: chart.yScale.domain(),
      series: chart.datasets.map((d) => ({
        name: d.metadata().name, color: card._colorScale.scale(d.metadata().name),
        points: d.data().map((p) => [p.step, p.scalar]),
      })),
    };
  });
})()"""


def find_chromium() -> str | None:
    """The Chromium (or Chrome) binary on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (tests/tb_server.py's too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen, *, terminate: bool = True) -> None:
    """SIGTERM (unless it was already asked to quit another way), 10 s of grace, then SIGKILL."""
    if proc.poll() is not None:
        return
    if terminate:
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class TensorBoard:
    """`resexp tensorboard LOGDIR` bound to 127.0.0.1 on a free port; a context manager."""

    def __init__(self, logdir: Path, timeout: float = 90.0):
        self.logdir, self.timeout = logdir, timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return json.loads(resp.read())

    def __enter__(self) -> TensorBoard:
        cmd = [sys.executable, "-m", "resexp", "tensorboard", str(self.logdir), "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:  # up, and the report's layout loaded
            if self.proc.poll() is not None:
                raise RuntimeError(f"resexp tensorboard exited with {self.proc.returncode}")
            try:
                if self.get_json("/data/plugin/custom_scalars/layout").get("category"):
                    return self
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.3)
        self.__exit__()
        raise RuntimeError(
            f"{self.logdir}: no Custom Scalars layout within {self.timeout}s (run `resexp report` first)"
        )

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None


class Chromium:
    """Headless Chromium driven over the DevTools protocol on fds 3/4; a context manager.

    One tab; `open(url)`, `text()`, `screenshot()`. Messages are JSON terminated by NUL.
    """

    def __init__(self, binary: str, width: int = 1400, height: int = 1000):
        self.width, self.height = width, height
        self.profile = tempfile.mkdtemp(prefix="resexp-chromium-")  # a fresh --user-data-dir
        # Chromium reads commands on fd 3 and writes replies on fd 4. The pipe ends go to fds >= 10
        # first, so bash's `3<&R 4>&W` never overwrites one with the other (dash cannot redirect
        # fds above 9). A shell, not preexec_fn: no fork-with-threads hazard when JAX is loaded.
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        r, w = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        args = [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}"]
        wire = f'exec "$0" "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-'
        self.proc = subprocess.Popen(["bash", "-c", wire, binary, *args], pass_fds=(r, w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        os.close(r)
        os.close(w)
        self._buffer = b""
        self._next_id = 0
        self.session = ""

    # -- protocol -------------------------------------------------------------
    def call(self, method: str, timeout: float = 60.0, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buffer:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"chromium: no reply to {method} within {timeout}s")
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited (code {self.proc.poll()}) during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:  # anything else is an event: not needed here
                if "error" in reply:
                    raise RuntimeError(f"chromium: {method}: {reply['error']}")
                return dict(reply.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    # -- one tab --------------------------------------------------------------
    def __enter__(self) -> Chromium:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.call("Browser.close", timeout=5)
        stop_process(self.proc, terminate=False)  # Browser.close asked it to quit
        for fd in (self._to_chrome, self._from_chrome):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)

    def open(self, url: str, expect: str = "", timeout: float = 60.0, settle: float = 2.0) -> str:
        """Load `url`; wait until its text contains `expect`, then `settle` s for charts
        to draw. Returns the page text (shadow roots included)."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if expect in text:
                time.sleep(settle)
                return self.text()
            time.sleep(0.3)
        raise TimeoutError(f"{url}: {expect!r} not on the page within {timeout}s")

    def text(self) -> str:
        return str(self.evaluate(PAGE_TEXT_JS) or "")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))


def drawn_charts(browser: Chromium, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The Custom Scalars charts of the open page (`CHARTS_JS`), once every chart has drawn its
    data (or `timeout` has passed: then as they are)."""
    deadline = time.monotonic() + timeout
    while True:
        charts = list(browser.evaluate(CHARTS_JS) or [])
        if (charts and all(any(s["points"] for s in c["series"]) for c in charts)) or time.monotonic() > deadline:
            return charts
        time.sleep(0.5)


def chart_problems(charts: list[dict[str, Any]], family_colors: dict[str, str]) -> list[str]:
    """What is wrong with the drawn charts: none at all, a chart without data, a point outside
    the drawn x or y range (clipped), a family run in another colour than its family's.
    `family_colors`: family run name ("plain", "ResNet") -> colour."""
    problems = [] if charts else ["no Custom Scalars chart on the page"]
    for chart in charts:
        title = chart["title"]
        points = [p for s in chart["series"] for p in s["points"] if p[1] is not None]
        if not points:
            problems.append(f"{title}: empty")
            continue
        (x0, x1), (y0, y1) = chart["x"], chart["y"]
        for series in chart["series"]:
            outside = [p for p in series["points"] if p[1] is not None and not (x0 <= p[0] <= x1 and y0 <= p[1] <= y1)]
            if outside:
                problems.append(f"{title}: {series['name']}: {len(outside)} point(s) outside the drawn range, "
                                f"e.g. {outside[0]} not in x {chart['x']}, y {chart['y']}")  # fmt: skip
            run = series["name"].rsplit(" (", 1)[-1].rstrip(")")
            family = run.rsplit("/", 1)[-1]
            want = family_colors.get(family)
            if want is not None and series["color"].lower() != want.lower():
                problems.append(f"{title}: {series['name']} drawn in {series['color']}, not its family's {want}")
    return problems


def screenshot_pages(url: str, out_dir: Path, *, width: int = 1400, height: int = 1000,
                     chromium: str | None = None) -> tuple[list[Path], list[str]]:  # fmt: skip
    """PNG of each page in `PAGES` of the TensorBoard at `url` in `out_dir`, plus the Custom Scalars
    page's text and charts; returns the files and `chart_problems` (family colours: resexp.reporting.colors)."""
    from resexp.reporting.colors import PLAIN_COLOR, RESNET_COLOR

    binary = chromium or find_chromium()
    if binary is None:
        raise RuntimeError("no chromium on PATH (Debian: apt-get install chromium)")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    problems: list[str] = []
    families = {"plain": PLAIN_COLOR, "plain-MLP": PLAIN_COLOR, "ResNet": RESNET_COLOR, "ResMLP": RESNET_COLOR}
    with Chromium(binary, width, height) as browser:
        for name, (fragment, expect) in PAGES.items():
            text = browser.open(f"{url}/{fragment}", expect=expect)
            if name == "custom_scalars":
                charts = drawn_charts(browser)
                problems = chart_problems(charts, families)
                (out_dir / f"{name}.txt").write_text(text + "\n")
                (out_dir / f"{name}.json").write_text(json.dumps(charts, indent=1) + "\n")
            path = out_dir / f"{name}.png"
            browser.screenshot(path)
            written.append(path)
    return written, problems


def take_screenshots(logdir: Path, out_dir: Path, **options: Any) -> tuple[list[Path], list[str]]:
    """`screenshot_pages` of `resexp tensorboard logdir`."""
    with TensorBoard(logdir) as tb:
        return screenshot_pages(tb.url, out_dir, **options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir", type=Path, help="a sweep directory with a report (runs/<name>), or runs/")
    parser.add_argument("out_dir", type=Path, help="where the PNGs go")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--chromium", help="the browser binary (default: chromium on PATH)")
    args = parser.parse_args(argv)
    if not args.logdir.is_dir():
        print(f"error: {args.logdir}: not a directory", file=sys.stderr)
        return 2
    if not any(args.logdir.glob("events.out.tfevents.*.resexp-report")) and not any(
        args.logdir.glob("*/events.out.tfevents.*.resexp-report")
    ):
        print(f"error: {args.logdir}: no report yet (run `resexp report {args.logdir}` first)", file=sys.stderr)
        return 2
    try:
        paths, problems = take_screenshots(args.logdir, args.out_dir, width=args.width, height=args.height,
                                           chromium=args.chromium)  # fmt: skip
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
