"""Every TensorBoard write resexp makes, in one place, without TensorFlow.

Only TensorBoard's own TF-free pieces are used: the event-file writer, the
`Summary`/`Event` protos and the HParams plugin protos. Importing this module does
not import TensorFlow (``'tensorflow' not in sys.modules`` afterwards).

Layout the HParams dashboard expects (and the pitfalls it hides):

* exactly ONE experiment config (`EventWriter.hparams_experiment`) per logdir,
  written in the logdir root (TensorBoard run ``.``); TensorBoard picks an
  arbitrary one if several runs carry one;
* one *session* per run directory: `hparams_session_start` (the hparam values)
  and `hparams_session_end` (the status), written in that run's directory;
* the session's metrics are ordinary scalars in that same directory, under tags
  that do not collide with the training curves (`metric_tag`: ``hparams/<name>``);
* hparam values are bools, floats or strings only (`hparam_domains` and
  `coerce_hparams` turn ints, ``None`` and mixed types into one of those), and
  every hparam gets a discrete domain of the values the sweep actually used.

Training-curve pitfall: write `EventWriter.session_start` at EVERY start of
training in a run directory, the first one included; TensorBoard ignores a run's
first ``SessionLog.START`` and only treats later ones as restarts.

Custom Scalars (`sweep_layout`, `EventWriter.custom_scalars_layout`): the layout's
regexes select TAGS, and a multiline chart draws every selected run's matching
tags. So a chart can only overlay plain-56 and ResNet-56 if both runs carry a tag
that names depth 56: the report writes `by_depth_tag` series for that reason.
TensorBoard merges the layouts of every run that has one; write ONE per sweep,
in the sweep root (run ``.``).

Colours: a chart colours each RUN by the run's position in TensorBoard's run list
(ordered by the time of the run's first event, then by name); the series of one run
share its colour and differ by marker. The report therefore writes one run per
family (plain / residual), the other swept keys in the tags (`vs_depth_tag(...,
group=...)`), and pins those runs' event times (`EventWriter(wall_time=...)`,
`answer_wall_time`) before any real run, so each family keeps its hue
(`resexp.reporting.colors`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import socket
import struct
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as cs_metadata
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams import summary_v2 as hp
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.summary.writer.record_writer import RecordWriter

__all__ = [
    "ANALYSIS_PREFIX",
    "BY_LAYER_PREFIX",
    "COUNTS_PREFIX",
    "DIAG_SERIES",
    "LAYOUT_CATEGORIES",
    "METRIC_PREFIX",
    "VS_DEPTH_METRICS",
    "EventWriter",
    "HParamScalar",
    "answer_wall_time",
    "by_depth_tag",
    "by_layer_tag",
    "coerce_hparams",
    "counts_tag",
    "event_files",
    "hparam_domains",
    "metric_tag",
    "png_size",
    "session_status",
    "sweep_layout",
    "vs_depth_tag",
]

HParamScalar = bool | float | str
"""The value types TensorBoard's HParams plugin understands."""

METRIC_PREFIX = "hparams/"
"""Tag prefix of HParams metrics, so they never collide with training scalars."""

# resexp run status -> HParams session status. TensorBoard has no "aborted":
# an interrupted run is neither a success nor a failure of the model.
_STATUS = {
    "completed": api_pb2.STATUS_SUCCESS,
    "success": api_pb2.STATUS_SUCCESS,
    "diverged": api_pb2.STATUS_FAILURE,
    "failed": api_pb2.STATUS_FAILURE,
    "failure": api_pb2.STATUS_FAILURE,
    "running": api_pb2.STATUS_RUNNING,
    "interrupted": api_pb2.STATUS_UNKNOWN,
    "unknown": api_pb2.STATUS_UNKNOWN,
}


def metric_tag(name: str) -> str:
    """The scalar tag of HParams metric `name`: ``hparams/<name>``."""
    return name if name.startswith(METRIC_PREFIX) else METRIC_PREFIX + name


def session_status(status: str) -> int:
    """`api_pb2.Status` value for a resexp run status (unknown strings -> UNKNOWN)."""
    return _STATUS.get(status.lower(), api_pb2.STATUS_UNKNOWN)


def event_files(logdir: str | Path, suffix: str = "", *, recursive: bool = False) -> list[Path]:
    """Event files in `logdir` whose name ends with `suffix`, sorted by name."""
    logdir = Path(logdir)
    if not logdir.is_dir():
        return []
    pattern = f"events.out.tfevents.*{suffix}"
    found = logdir.rglob(pattern) if recursive else logdir.glob(pattern)
    return sorted(p for p in found if p.is_file())


# ----------------------------------------------------------------------------- PNG


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> number of channels ("colorspace" in Summary.Image).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def png_size(png_bytes: bytes) -> tuple[int, int, int]:
    """``(width, height, channels)`` read from a PNG's IHDR chunk."""
    if len(png_bytes) < 26 or png_bytes[:8] != _PNG_SIGNATURE or png_bytes[12:16] != b"IHDR":
        raise ValueError("not a PNG image (bad signature or missing IHDR chunk)")
    width, height = struct.unpack(">II", png_bytes[16:24])
    color_type = png_bytes[25]
    return width, height, _PNG_CHANNELS.get(color_type, 3)


# ----------------------------------------------------------------------------- hparams values


def _as_hparam_scalar(value: object) -> HParamScalar:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy / jax scalars
        with contextlib.suppress(TypeError, ValueError):
            value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(str(_as_hparam_scalar(v)) for v in value)
    return str(value)


def _format_scalar(value: HParamScalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return value


def hparam_domains(runs: Iterable[Mapping[str, object]]) -> dict[str, list[HParamScalar]]:
    """The discrete domain of every hparam, from the values each run used.

    One type per hparam: all bools -> bools; all numbers -> floats; anything else
    (strings, ``None``, a mix) -> strings. Values are sorted and deduplicated.
    Pass the same domains to `coerce_hparams` so sessions match the experiment.
    """
    seen: dict[str, list[HParamScalar]] = {}
    for run in runs:
        for name, value in run.items():
            seen.setdefault(name, []).append(_as_hparam_scalar(value))
    domains: dict[str, list[HParamScalar]] = {}
    for name, values in seen.items():
        if all(isinstance(v, bool) for v in values):
            domains[name] = sorted(set(values))
        elif all(isinstance(v, float) and not isinstance(v, bool) for v in values):
            finite = {v for v in values if not math.isnan(v)}  # type: ignore[arg-type]
            domains[name] = sorted(finite)
        else:
            domains[name] = sorted({_format_scalar(v) for v in values})
    return domains


def coerce_hparams(
    values: Mapping[str, object], domains: Mapping[str, Sequence[HParamScalar]] | None = None
) -> dict[str, HParamScalar]:
    """Hparam values as bool/float/str, converted to the type of their domain."""
    out: dict[str, HParamScalar] = {}
    for name, raw in values.items():
        value = _as_hparam_scalar(raw)
        domain = domains.get(name) if domains else None
        if domain and isinstance(domain[0], str) and not isinstance(value, str):
            value = _format_scalar(value)
        out[name] = value
    return out


def _hparams_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary:
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=tag,
        metadata=hp_metadata.create_summary_metadata(data),
        tensor=hp_metadata.NULL_TENSOR,
    )
    return summary


# ----------------------------------------------------------------------------- Custom Scalars layout

COUNTS_PREFIX = "vs_depth_counts/"
"""Runs / diverged runs per depth: sorts after the answer in the Scalars tab."""

BY_LAYER_PREFIX = "by_layer/"
"""Per-run series whose step is a layer (or block) index: ``by_layer/response_std``."""

ANALYSIS_PREFIX = "analysis/"
"""Tags a run's "why" analyses write (``analysis/<name>/...``, in the run itself: the Scalars tab)."""

LAYOUT_CATEGORIES = ("Loss vs depth", "Training curves by depth", "Identity diagnostics", "Why: analyses")
"""Custom Scalars categories, in the order the dashboard shows them (empty ones are left out)."""

VS_DEPTH_METRICS = ("final_train_loss", "eval_loss", "eval_accuracy", "final_train_accuracy")
"""The vs-depth charts of the "Loss vs depth" category, in the order it shows them."""

# Diagnostics charted in the "Identity diagnostics" category: name -> chart title. `residual_ratio_mean`
# is a vs-depth series (mean over blocks at the end of training), the others are layer profiles.
DIAG_SERIES = {
    "residual_ratio_mean": "residual ratio ||F(x)|| / ||shortcut(x)|| at the end, mean over blocks, vs depth",
    "residual_ratio": "residual ratio per block at the end (x = block index; smoothing 0)",
    "response_std": "layer response std at the end (x = layer index; He et al. Fig. 7; smoothing 0)",
}

ANSWER_EPOCH = 1_000_000_000.0
"""Event time of the family runs (2001-09-09): earlier than any real run, see `answer_wall_time`."""


def answer_wall_time(position: int) -> float:
    """The pinned event time of the run that must be `position`-th in TensorBoard's run list
    (which is ordered by each run's first event time): the family runs sort first, in order."""
    return ANSWER_EPOCH + position


def _with_group(prefix: str, group: str, last: str) -> str:
    return f"{prefix}/{group}/{last}" if group else f"{prefix}/{last}"


def by_layer_tag(name: str, depth: int, group: str = "") -> str:
    """Tag of a diagnostic profile over layers (step = layer or block index) at one depth."""
    return f"{BY_LAYER_PREFIX}{name}/depth_{int(depth):03d}" + (f"/{group}" if group else "")


def vs_depth_tag(metric: str, stat: str = "mean", group: str = "") -> str:
    """Tag of a metric's per-depth aggregate (step = depth): ``<metric>_vs_depth/[<group>/]<stat>``,
    `group` naming the other swept keys (``weight_decay=0.001``) within a family run."""
    return _with_group(f"{metric}_vs_depth", group, stat)


def by_depth_tag(depth: int, series: str = "train_loss", group: str = "") -> str:
    """Tag of a curve that names its depth, so one chart can overlay every net of that depth."""
    return _with_group(f"by_depth/depth_{int(depth):03d}", group, series)


def counts_tag(name: str, group: str = "") -> str:
    """Tag of a run count per depth (``runs``, ``diverged_runs``)."""
    return COUNTS_PREFIX + (f"{group}/{name}" if group else name)


def _multiline(title: str, *regexes: str) -> layout_pb2.Chart:
    return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=list(regexes)))


def _vs_depth_regex(metric: str) -> str:
    return f"^{re.escape(metric)}_vs_depth/(.+/)?mean$"


def sweep_layout(
    *,
    vs_depth: Collection[str] = (),
    depths: Iterable[int] = (),
    diagnostics: Collection[str] = (),
    analyses: Iterable[str] = (),
) -> layout_pb2.Layout:
    """The Custom Scalars layout of one sweep, from what its report wrote.

    `vs_depth`: metrics with `vs_depth_tag` mean series (charted in `VS_DEPTH_METRICS`
    order); `depths`: depths with `by_depth_tag` train-loss curves; `diagnostics`: keys of
    `DIAG_SERIES` that exist; `analyses`: headline columns of the "why" analyses with
    vs-depth series (``lesion_median_accuracy``: one chart each). Each regex matches every
    group's series of its metric, in both family runs; charts whose tags do not exist are
    left out, so every regex of the layout matches something.
    """
    categories: list[layout_pb2.Category] = []
    charts = [_multiline(f"{m.replace('_', ' ')} vs depth (x = depth; colour = family, marker = other keys)",
                         _vs_depth_regex(m)) for m in VS_DEPTH_METRICS if m in vs_depth]  # fmt: skip
    if charts:
        categories.append(layout_pb2.Category(title=LAYOUT_CATEGORIES[0], chart=charts))
    charts = [
        _multiline(
            f"train loss at depth {d}: one line per net (mean over seeds)",
            f"^by_depth/depth_{int(d):03d}/(.+/)?train_loss$",
        )
        for d in sorted(set(depths))
    ]
    if charts:
        categories.append(layout_pb2.Category(title=LAYOUT_CATEGORIES[1], chart=charts))
    charts = []
    for name, title in DIAG_SERIES.items():
        if name in diagnostics:
            regex = _vs_depth_regex(name) if name == "residual_ratio_mean" else f"^{BY_LAYER_PREFIX}{name}/"
            charts.append(_multiline(title, regex))
    if charts:
        categories.append(layout_pb2.Category(title=LAYOUT_CATEGORIES[2], chart=charts))
    charts = [_multiline(f"{col.replace('_', ' ')} vs depth", _vs_depth_regex(col)) for col in analyses]
    if charts:
        categories.append(layout_pb2.Category(title=LAYOUT_CATEGORIES[3], chart=charts))
    return layout_pb2.Layout(category=categories)


# ----------------------------------------------------------------------------- writer


_file_counter = itertools.count()


class _PinnedEventFile:
    """An event file whose every event, the file-version header included, carries `wall_time`:
    TensorBoard orders runs by their first event's time (see `answer_wall_time`)."""

    def __init__(self, logdir: Path, suffix: str, wall_time: float):
        name = f"events.out.tfevents.{int(wall_time):010d}.{socket.gethostname()}.{os.getpid()}.{next(_file_counter)}"
        self._file_name = str(logdir / (name + suffix))
        self._records = RecordWriter(open(self._file_name, "wb"))  # noqa: SIM115 (closed by close())
        self.add_event(event_pb2.Event(wall_time=wall_time, file_version="brain.Event:2"))

    def add_event(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        self._records.close()


class EventWriter:
    """One TensorBoard event file in `logdir` (created if missing).

    `filename_suffix` is appended to the file name (e.g. ``".resexp-report"``),
    which lets a tool find and replace exactly the files it wrote. `wall_time` pins the
    time of every event (written synchronously), else events carry the current time.
    A context manager: closes (and flushes) on exit.
    """

    def __init__(self, logdir: str | Path, filename_suffix: str = "", *, wall_time: float | None = None):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.wall_time = wall_time
        self._writer: EventFileWriter | _PinnedEventFile
        if wall_time is None:
            self._writer = EventFileWriter(
                str(self.logdir), max_queue_size=100, flush_secs=10, filename_suffix=filename_suffix
            )
        else:
            self._writer = _PinnedEventFile(self.logdir, filename_suffix, wall_time)
        self._closed = False

    @property
    def path(self) -> Path:
        """The event file being written."""
        return Path(self._writer._file_name)  # no public accessor

    def _now(self) -> float:
        return time.time() if self.wall_time is None else self.wall_time

    # -- low level ------------------------------------------------------------
    def add_summary(self, summary: summary_pb2.Summary, step: int, wall_time: float | None = None) -> None:
        event = event_pb2.Event(wall_time=self._now() if wall_time is None else wall_time, step=int(step),
                                summary=summary)  # fmt: skip
        self._writer.add_event(event)

    # -- training-time writes -------------------------------------------------
    def scalars(self, step: int, values: Mapping[str, float | None]) -> None:
        """One event holding every non-``None`` value (NaN/inf are written as is)."""
        summary = summary_pb2.Summary()
        for tag, value in values.items():
            if value is None:
                continue
            summary.value.add(tag=tag, simple_value=float(value))
        if summary.value:
            self.add_summary(summary, step)

    def image(self, tag: str, png_bytes: bytes, step: int = 0) -> None:
        """A PNG image; width, height and channels come from the PNG header."""
        width, height, channels = png_size(png_bytes)
        image = summary_pb2.Summary.Image(
            height=height, width=width, colorspace=channels, encoded_image_string=png_bytes
        )
        summary = summary_pb2.Summary()
        summary.value.add(tag=tag, image=image)
        self.add_summary(summary, step)

    def session_start(self, step: int) -> None:
        """``SessionLog(START)`` at `step`. Write it at EVERY start of training in a
        run directory, the first one included (step 0): TensorBoard ignores a run's
        first START and treats each later one as a restart, dropping the events
        with ``step >= step`` it read before (the orphans of an attempt that a
        resume from an earlier checkpoint rewrites). Both loaders (Python and
        ``--load_fast``) do this, for a live server as well as a fresh one."""
        event = event_pb2.Event(
            wall_time=self._now(),
            step=int(step),
            session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
        )
        self._writer.add_event(event)

    # -- HParams --------------------------------------------------------------
    def hparams_experiment(
        self,
        domains: Mapping[str, Sequence[HParamScalar]],
        metrics: Sequence[str] | Mapping[str, str],
        *,
        descriptions: Mapping[str, str] | None = None,
        time_created_secs: float | None = None,
    ) -> None:
        """The experiment config: every hparam with its discrete domain, and the
        metrics (tag -> display name, or tags). Write it ONCE, in the logdir root.

        Metric tags are used as given (see `metric_tag`); their scalars must live in
        each session's own directory.
        """
        descriptions = descriptions or {}
        infos = []
        for name, values in domains.items():
            info = api_pb2.HParamInfo(name=name, description=descriptions.get(name, ""))
            values = list(values)
            if values:
                dtype = bool if isinstance(values[0], bool) else type(values[0])
                hp.Discrete(values, dtype=dtype).update_hparam_info(info)
            # `differs` tells the UI which columns are worth showing by default.
            info.differs = len(values) > 1
            infos.append(info)
        items = metrics.items() if isinstance(metrics, Mapping) else ((m, None) for m in metrics)
        metric_infos = [
            hp.Metric(tag, display_name=display, description=descriptions.get(tag)).as_proto() for tag, display in items
        ]
        experiment = api_pb2.Experiment(
            hparam_infos=infos,
            metric_infos=metric_infos,
            time_created_secs=time.time() if time_created_secs is None else time_created_secs,
        )
        data = plugin_data_pb2.HParamsPluginData(experiment=experiment)
        summary = _hparams_summary(hp_metadata.EXPERIMENT_TAG, data)
        self.add_summary(summary, 0)

    def hparams_session_start(
        self,
        hparams: Mapping[str, object],
        *,
        group_name: str = "",
        start_time_secs: float | None = None,
        domains: Mapping[str, Sequence[HParamScalar]] | None = None,
    ) -> None:
        """This run's hparam values (a session = the directory of this file).

        `group_name` "" makes the session its own group (TensorBoard then uses the
        run name); runs sharing a group name are averaged into one table row.
        Pass the experiment's `domains` so values get the experiment's types.
        """
        info = plugin_data_pb2.SessionStartInfo(
            group_name=group_name, start_time_secs=time.time() if start_time_secs is None else start_time_secs
        )
        for name, value in sorted(coerce_hparams(hparams, domains).items()):
            if isinstance(value, bool):
                info.hparams[name].bool_value = value
            elif isinstance(value, float):
                info.hparams[name].number_value = value
            else:
                info.hparams[name].string_value = value
        data = plugin_data_pb2.HParamsPluginData(session_start_info=info)
        self.add_summary(_hparams_summary(hp_metadata.SESSION_START_INFO_TAG, data), 0)

    def hparams_session_end(self, status: str, *, end_time_secs: float | None = None) -> None:
        """The session's final status (a resexp run status or a TensorBoard one)."""
        info = plugin_data_pb2.SessionEndInfo(
            status=session_status(status), end_time_secs=time.time() if end_time_secs is None else end_time_secs
        )
        data = plugin_data_pb2.HParamsPluginData(session_end_info=info)
        self.add_summary(_hparams_summary(hp_metadata.SESSION_END_INFO_TAG, data), 0)

    def hparams_metrics(self, step: int, values: Mapping[str, float | None]) -> None:
        """HParams metric scalars (tags get the ``hparams/`` prefix); ``None`` and
        NaN are skipped (a diverged run simply has no value)."""
        clean = {metric_tag(k): float(v) for k, v in values.items() if v is not None and not math.isnan(float(v))}
        self.scalars(step, clean)

    def custom_scalars_layout(self, layout: layout_pb2.Layout, step: int = 0) -> None:
        """The Custom Scalars dashboard's layout (a string tensor under the plugin's
        config tag), built here without TensorFlow. Write it once per sweep, at the root."""
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(),
            string_val=[layout.SerializeToString()],
        )
        summary = summary_pb2.Summary()
        summary.value.add(
            tag=cs_metadata.CONFIG_SUMMARY_TAG, metadata=cs_metadata.create_summary_metadata(), tensor=tensor
        )
        self.add_summary(summary, step)

    # -- lifecycle ------------------------------------------------------------
    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        if not self._closed:
            self._writer.close()
            self._closed = True

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
