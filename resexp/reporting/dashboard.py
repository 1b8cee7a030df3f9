"""`resexp tensorboard PATH`: TensorBoard opened at the answer, for one sweep or a directory of them.

Why a launcher rather than `tensorboard --logdir`: at study scale three of TensorBoard's
defaults hide the answer, and the event files a report writes cannot change them.

1. With more than 40 runs the Custom Scalars and Images dashboards tick none: every chart reads
   "Matches (0)". Their run filter (the address's ``regexInput``) counts only the runs it
   matches, so the address opens filtered to the answer's runs (`ANSWER_RUNS`: the report's
   ``vs_depth/`` runs, a handful per directory); clearing the filter shows every run.
2. "Ignore outliers in chart scaling", on by default and kept in the browser (localStorage, not
   the address), leaves the largest value of a chart out of its y range: the deep plain net.
3. A run's colour is its position in the run list. The report pins its two family runs first
   (`resexp.reporting.colors`), which holds within one sweep directory; over a directory of several sweeps
   each sweep's family runs would take the next palette colours instead.

So the launcher serves TensorBoard's own app (`tensorboard.program`, as `tensorboard` itself does)
with one addition to its page: a bare address opens Custom Scalars with smoothing 0 and the
answer's runs, and the outlier setting starts off unless the user already chose it (1, 2). A
directory of sweeps is served as a view built in a temporary directory (3): one run per family
holding every sweep's answer (tags prefixed ``<sweep>/``), each sweep's layout and figures
likewise, and every run directory linked one level down (``<sweep>/<run-id>``) for its own
curves and HParams session. A sweep directory (or anything else) is served as it is.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import quote

from resexp.core.errors import UserError

__all__ = ["ANSWER_RUNS", "FRAGMENT", "answer_url", "is_sweep_dir", "serve", "tensorboard_hint", "view_logdir"]

ANSWER_RUNS = "^vs_depth"
"""Run filter of the address: the report's answer runs (``vs_depth/<family>``, ``vs_depth``)."""

FRAGMENT = f"#custom_scalars&_smoothingWeight=0&regexInput={quote(ANSWER_RUNS, safe='')}"
"""The address's part after the host: Custom Scalars, smoothing off, the answer's runs ticked."""

# Runs before TensorBoard's own scripts on its page (TensorBoard keeps both settings in the browser). A file
# of its own: TensorBoard's Content-Security-Policy allows scripts from the server, not inline ones.
_DEFAULTS_JS = "resexp-defaults.js"
_DEFAULTS_SCRIPT = (
    "try { if (localStorage.getItem('_ignoreYOutliers') === null)"
    " localStorage.setItem('_ignoreYOutliers', 'false'); } catch (e) {}\n"
    f"if (location.hash.length <= 1) history.replaceState(null, '', '{FRAGMENT}');\n"
)


def answer_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/{FRAGMENT}"


def _resexp_command() -> str:
    """How to call this resexp again from the current directory, with or without an activated venv:
    `resexp` when PATH finds this one, else the script beside this Python (`.venv/bin/resexp`)."""
    script = Path(sys.executable).parent / "resexp"
    if not script.exists():
        return f"{sys.executable} -m resexp"
    found = shutil.which("resexp")
    if found and Path(found).resolve() == script.resolve():
        return "resexp"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def tensorboard_hint(path: Path) -> str:
    """The dashboard of `path`: the command that serves it and the address that opens at the answer."""
    return f"TensorBoard: {_resexp_command()} tensorboard {path}, then open {answer_url('127.0.0.1', 6006)}"


def is_sweep_dir(path: Path) -> bool:
    """A sweep directory: a grid's manifest or a report at its top."""
    from resexp.reporting.records import REPORT_SUFFIX
    from resexp.runs.store import MANIFEST

    return (path / MANIFEST).is_file() or any(path.glob(f"events.out.tfevents.*{REPORT_SUFFIX}"))


def _sweeps_in(path: Path) -> list[Path]:
    return sorted(c for c in path.iterdir() if c.is_dir() and not c.name.startswith(".") and is_sweep_dir(c))


@contextmanager
def view_logdir(path: Path) -> Iterator[Path]:
    """The directory TensorBoard should read for `path`: `path` itself, or for a directory holding
    sweep directories (and maybe runs of `resexp train`) a combined view in a temporary directory
    (removed on exit)."""
    if not path.exists():
        raise UserError(f"{path}: does not exist")
    if not path.is_dir():
        raise UserError(f"{path}: not a directory")
    sweeps = [] if is_sweep_dir(path) else _sweeps_in(path)
    if not sweeps:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="resexp-tensorboard-") as tmp:
        _build_view(path, sweeps, Path(tmp))
        yield Path(tmp)


def _build_view(root: Path, sweeps: list[Path], view: Path) -> None:
    """One family run per family for all `sweeps` (pinned first, as in a sweep), their layouts and
    figures under per-sweep names, and links to every run directory under `root`."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.compat.proto import summary_pb2

    from resexp.reporting.records import REPORT_SUFFIX, VS_DEPTH_DIR
    from resexp.runs.tblog import EventWriter, event_files

    layout = []
    runs: dict[tuple[float | None, str], list] = {}  # (pinned time or None, run) -> [(step, value), ...]
    for sweep in sweeps:
        for f in event_files(sweep, REPORT_SUFFIX):
            for event in LegacyEventFileLoader(str(f)).Load():
                for v in event.summary.value:
                    if v.tag == "custom_scalars__config__":
                        layout += _prefixed_layout(v.tensor.string_val[0], sweep.name)
        for f in event_files(sweep / VS_DEPTH_DIR, REPORT_SUFFIX, recursive=True):
            run = f.parent.relative_to(sweep).as_posix()
            events = [e for e in LegacyEventFileLoader(str(f)).Load() if e.HasField("summary")]
            pinned = events[0].wall_time if run != VS_DEPTH_DIR and events else None  # the family runs
            values = runs.setdefault((pinned, run), [])
            for event in events:
                for v in event.summary.value:
                    copy = summary_pb2.Summary.Value()
                    copy.CopyFrom(v)
                    copy.tag = f"{sweep.name}/{v.tag}"
                    values.append((event.step, copy))
        for run_dir in sorted(p for p in sweep.iterdir() if (p / "summary.json").is_file()):
            _link(run_dir, view / sweep.name / run_dir.name)
    for run_dir in sorted(p for p in root.iterdir() if (p / "summary.json").is_file()):  # runs outside sweeps
        _link(run_dir, view / run_dir.name)
    for (pinned, run), values in runs.items():
        with EventWriter(view / run, REPORT_SUFFIX, wall_time=pinned) as w:
            for step, value in values:
                w.add_summary(summary_pb2.Summary(value=[value]), step)
    if layout:
        from tensorboard.plugins.custom_scalar import layout_pb2

        with EventWriter(view, REPORT_SUFFIX) as w:
            w.custom_scalars_layout(layout_pb2.Layout(category=layout))


def _prefixed_layout(content: bytes, sweep: str) -> list:
    """A sweep's layout categories for the combined view: titles and tag regexes prefixed by the sweep."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout.FromString(content)
    for category in layout.category:
        category.title = f"{sweep}: {category.title}"
        for chart in category.chart:
            regexes = [re.sub(r"^\^", "^" + re.escape(sweep + "/"), r) for r in chart.multiline.tag]
            del chart.multiline.tag[:]
            chart.multiline.tag.extend(regexes)
    return list(layout.category)


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target.resolve(), link, target_is_directory=True)


def _assets_with_page_defaults() -> Iterator:
    """TensorBoard's own web assets, its page loading `_DEFAULTS_SCRIPT` first."""
    from tensorboard import assets

    provider = assets.get_default_assets_zip_provider()
    if provider is None:
        raise UserError("TensorBoard's web assets (webfiles.zip) are missing: reinstall tensorboard")
    out = io.BytesIO()
    with provider() as fp, zipfile.ZipFile(fp) as original, zipfile.ZipFile(out, "w") as patched:
        for item in original.infolist():
            data = original.read(item)
            if item.filename == "index.html":
                data = f'<script src="{_DEFAULTS_JS}"></script>\n'.encode() + data
            patched.writestr(item, data)
        patched.writestr(_DEFAULTS_JS, _DEFAULTS_SCRIPT)
    out.seek(0)
    return out


def serve(path: Path, *, host: str, port: int, console) -> None:
    """Serve `path` until Ctrl-C, printing the address that opens at the answer."""
    import threading

    from tensorboard import default, program

    with view_logdir(path) as logdir:
        tb = program.TensorBoard(plugins=default.get_plugins(), assets_zip_provider=_assets_with_page_defaults)
        tb.configure(argv=[None, "--logdir", str(logdir), "--host", host, "--port", str(port)])
        try:
            tb.launch()
        except program.TensorBoardServerException as exc:
            raise UserError(f"tensorboard: {exc.msg}") from None
        console.print(f"TensorBoard on {path}: open {answer_url(host, port)}", highlight=False, soft_wrap=True)
        if logdir != path:
            console.print(
                f"(every sweep of {path}; one sweep with its HParams: resexp tensorboard {path}/<sweep>)",
                highlight=False,
                soft_wrap=True,
            )
        with suppress(KeyboardInterrupt):  # Ctrl-C: stop serving
            threading.Event().wait()
