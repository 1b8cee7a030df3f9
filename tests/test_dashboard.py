"""The dashboard a user opens: the Custom Scalars layout `resexp report` writes, read back
through a real TensorBoard's HTTP API, and (when Chromium is installed) the rendered page."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import pytest
from conftest import ROOT, tiny_dict
from tb_server import TensorBoardServer
from tensorboard.plugins.custom_scalar import layout_pb2

from resexp.core.config import Config
from resexp.reporting.colors import PLAIN_COLOR, RESNET_COLOR
from resexp.reporting.dashboard import FRAGMENT
from resexp.reporting.report import build_report
from resexp.runs.tblog import LAYOUT_CATEGORIES, answer_wall_time, by_depth_tag, sweep_layout, vs_depth_tag
from resexp.sweeps.plan import expand_grid, run_sweep

DEPTHS = (8, 14)
# The same tiny grid as test_sweep (one seed), so the compile cache is shared.
SWEEP = tiny_dict(
    name="dash",
    sweep={"model.depth": list(DEPTHS), "model.shortcut": [False, True]},
    train={"steps": 20, "log_every": 10, "checkpoint_every": 10},
)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """A real tiny sweep (training writes its own event files), reported twice."""
    out = tmp_path_factory.mktemp("dash") / "dash"
    results = run_sweep([[c] for c in expand_grid(Config.model_validate(SWEEP))], out, progress=False)
    assert [r["status"] for r in results] == ["completed"] * 4
    build_report(out, console=None)  # the sweep's own report ...
    build_report(out, console=None)  # ... rewritten: still one layout, no duplicate points
    return out


@pytest.fixture(scope="module")
def tb(sweep_dir):
    with TensorBoardServer(sweep_dir) as server:
        server.wait_for(lambda: server.get_json("/data/plugin/custom_scalars/layout").get("category"))
        server.wait_for(lambda: {"vs_depth/plain", "vs_depth/ResNet"} <= set(server.runs()))
        yield server


def test_layout_through_the_http_api(tb):
    layout = tb.get_json("/data/plugin/custom_scalars/layout")
    titles = [c["title"] for c in layout["category"]]
    assert titles == ["Loss vs depth", "Training curves by depth", "Identity diagnostics"]  # no analyses yet
    regexes = {c["title"]: [r for chart in c["chart"] for r in chart["multiline"]["tag"]] for c in layout["category"]}
    assert regexes["Loss vs depth"][:3] == [
        "^final_train_loss_vs_depth/(.+/)?mean$",
        "^eval_loss_vs_depth/(.+/)?mean$",
        "^eval_accuracy_vs_depth/(.+/)?mean$",
    ]
    assert regexes["Training curves by depth"] == [f"^by_depth/depth_{d:03d}/(.+/)?train_loss$" for d in DEPTHS]
    assert "^residual_ratio_mean_vs_depth/(.+/)?mean$" in regexes["Identity diagnostics"]

    # Every regex selects tags that exist, all in the two family runs; each chart of the answer
    # overlays the plain and the ResNet series (the residual ratio exists for ResNets only).
    tags = tb.scalar_tags()
    for title, patterns in regexes.items():
        for pattern in patterns:
            runs = {run for run, run_tags in tags.items() if any(re.match(pattern, t) for t in run_tags)}
            assert runs, f"{title}: {pattern} matches no tag"
            assert runs <= {"vs_depth/plain", "vs_depth/ResNet"}, (pattern, runs)
            if title != "Identity diagnostics":
                assert runs == {"vs_depth/plain", "vs_depth/ResNet"}, (pattern, runs)
    # the family runs come first in the run list, ResNet then plain: TensorBoard's orange and blue
    assert tb.runs()[:2] == ["vs_depth/ResNet", "vs_depth/plain"]


def test_curves_by_depth_are_the_runs_training_curves(tb, sweep_dir):
    """The depth-8 chart's plain line is the plain-8 run's train/loss (one seed: the mean is the run)."""
    (plain8,) = [p.name for p in sweep_dir.iterdir() if p.name.startswith("plain8-")]
    own = tb.scalars(plain8, "train/loss")
    assert len(own) == 2  # steps 10 and 20; the rewritten report added no duplicates below
    assert tb.scalars("vs_depth/plain", by_depth_tag(8)) == own  # the same float32, written twice
    points = tb.scalars("vs_depth/ResNet", vs_depth_tag("final_train_loss"))
    assert [step for step, _ in points] == list(DEPTHS)  # step = depth
    # the run counts sort after the answer, in a section of their own
    assert "vs_depth_counts/diverged_runs" in tb.scalar_tags()["vs_depth/plain"]


def test_analysis_hook():
    """Analysis headline columns get one chart each in a last category, matching every group's series."""
    layout = sweep_layout(vs_depth={"final_train_loss"}, depths=[20], analyses=["lesion_median_accuracy"])
    assert [c.title for c in layout.category] == ["Loss vs depth", "Training curves by depth", LAYOUT_CATEGORIES[3]]
    (chart,) = layout.category[-1].chart
    (pattern,) = chart.multiline.tag
    for tag in ("lesion_median_accuracy_vs_depth/mean", "lesion_median_accuracy_vs_depth/weight_decay=0/mean"):
        assert re.match(pattern, tag)
    assert not re.match(pattern, "lesion_median_accuracy_vs_depth/std")


def test_report_charts_the_analyses_its_runs_have(tmp_path):
    """Runs with cached analysis results (RUN/analysis/<name>.json) get the headline numbers per depth
    in the family runs and a chart each (layout read back from the report's event file in the root)."""
    import io
    import json

    from rich.console import Console
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.custom_scalar import layout_pb2

    from resexp.reporting.records import REPORT_SUFFIX
    from resexp.runs.tblog import event_files

    for depth in DEPTHS:
        run = tmp_path / f"plain{depth}"
        (run / "analysis").mkdir(parents=True)
        summary = {"status": "completed", "steps": 10, "final_train_loss": 0.5, "sweep": {"name": "a",
                   "keys": {"model.depth": depth}}, "history": {"step": [10], "train_loss": [0.5]},
                   "config": {"model": {"depth": depth, "shortcut": False}}}  # fmt: skip
        (run / "summary.json").write_text(json.dumps(summary))
        (run / "analysis" / "hessian.json").write_text(json.dumps({"lambda_max": 10.0 * depth}))
    build_report(tmp_path, console=Console(file=io.StringIO()))
    (root_file,) = event_files(tmp_path, REPORT_SUFFIX)
    (content,) = [v.tensor.string_val[0] for e in EventFileLoader(str(root_file)).Load() for v in e.summary.value
                  if v.tag == "custom_scalars__config__"]  # fmt: skip
    layout = layout_pb2.Layout.FromString(content)
    assert [c.title for c in layout.category] == ["Loss vs depth", "Training curves by depth", "Why: analyses"]
    assert [ch.multiline.tag[0] for ch in layout.category[-1].chart] == [r"^hessian_lambda_max_vs_depth/(.+/)?mean$"]
    (plain_file,) = event_files(tmp_path / "vs_depth" / "plain", REPORT_SUFFIX)
    points = [(e.step, v.tensor.float_val[0]) for e in EventFileLoader(str(plain_file)).Load()
              for v in e.summary.value if v.tag == "hessian_lambda_max_vs_depth/mean"]  # fmt: skip
    assert points == [(d, 10.0 * d) for d in DEPTHS]


def test_tensorboard_palette_is_the_installed_ones():
    """resexp.reporting.colors names TensorBoard's run palette: the one its web page really uses (an upgrade
    that changes it fails here, not silently in the dashboard's colours)."""
    import zipfile

    from tensorboard import assets

    from resexp.reporting.colors import PLAIN_COLOR, RESNET_COLOR, TENSORBOARD_PALETTE

    with assets.get_default_assets_zip_provider()() as fp, zipfile.ZipFile(fp) as z:
        script = z.read("index.js").decode()
    found = re.search(r"tensorboardColorBlindAssist:\[([^\]]*)\]", script)
    assert found, "TensorBoard's run palette not found in its index.js"
    assert tuple(re.findall(r'"(#[0-9a-fA-F]{6})"', found.group(1))) == TENSORBOARD_PALETTE
    assert TENSORBOARD_PALETTE[:2] == (RESNET_COLOR, PLAIN_COLOR)  # orange, blue: the first two runs


# ----------------------------------------------------------------------------- provenance and the lock


def test_summaries_record_software_and_machine(sweep_dir):
    """Every run's summary.json names resexp's and the JAX stack's versions, the CPU it ran on and its XLA flags
    (the runs are subprocesses of this one: they inherit its XLA_FLAGS, which configure_jax set)."""
    import json
    from importlib import metadata

    from resexp.core.parallel import cpu_conv_path

    for summary_path in sweep_dir.glob("*/summary.json"):
        summary = json.loads(summary_path.read_text())
        assert summary["software"] == {
            **{p: metadata.version(p) for p in ("resexp", "jax", "jaxlib", "flax", "optax")},
            "python": platform.python_version(),
        }
        machine = summary["machine"]
        assert machine["cpu"] and machine["cores"] == os.cpu_count()
        assert summary["xla_flags"] == os.environ.get("XLA_FLAGS", "")
        assert summary["cpu_conv"] == cpu_conv_path()  # the runs load the same oneDNN extension, or none


def test_lock_pins_every_dependency_within_pyproject_ranges():
    """requirements/ci.lock (what `make install` uses) has one sha256 per pin, and each pinned
    version satisfies the range pyproject.toml declares, so `pip install .` can pick it too."""
    import tomllib

    from packaging.requirements import Requirement

    text = (ROOT / "requirements" / "ci.lock").read_text()
    entries = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\\n    --hash=sha256:([0-9a-f]{64})$", text, re.M)
    pins = {name.lower().replace("_", "-"): version for name, version, _ in entries}
    assert len(entries) == text.count("=="), "every pin carries a hash"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in the lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {req.specifier}"


def test_a_directory_of_sweeps_is_served_as_one_view(tmp_path):
    """`resexp tensorboard runs` with two reported sweeps and a run of `resexp train` beside them: a
    view with one run per family holding both sweeps' answers (tags and categories prefixed by the
    sweep), and every run directory linked one level down."""
    import io
    import json

    from rich.console import Console
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from resexp.reporting.dashboard import view_logdir
    from resexp.reporting.records import REPORT_SUFFIX
    from resexp.runs.tblog import event_files

    runs = tmp_path / "runs"
    for sweep in ("a", "b"):
        for net, depth in (("plain", 8), ("resnet", 8), ("plain", 20), ("resnet", 20)):
            run = runs / sweep / f"{net}{depth}"
            run.mkdir(parents=True)
            model = {"depth": depth, "shortcut": net == "resnet"}
            summary = {"status": "completed", "steps": 10, "final_train_loss": depth / 100, "config": {"model": model},
                       "sweep": {"name": sweep, "keys": {f"model.{k}": v for k, v in model.items()}}}  # fmt: skip
            (run / "summary.json").write_text(json.dumps(summary))
        build_report(runs / sweep, console=Console(file=io.StringIO()))
    (runs / "plain8-alone").mkdir()
    (runs / "plain8-alone" / "summary.json").write_text(json.dumps({"status": "completed"}))
    with view_logdir(runs) as view:
        assert view != runs
        links = sorted(p.relative_to(view).as_posix() for p in view.rglob("*") if p.is_symlink())
        assert links == ["a/plain20", "a/plain8", "a/resnet20", "a/resnet8", "b/plain20", "b/plain8", "b/resnet20",
                         "b/resnet8", "plain8-alone"]  # fmt: skip
        (plain,) = event_files(view / "vs_depth" / "plain", REPORT_SUFFIX)
        first, *events = list(EventFileLoader(str(plain)).Load())
        assert first.wall_time == answer_wall_time(1)  # second in the run list: blue
        tags = {v.tag for e in events for v in e.summary.value}
        assert {"a/final_train_loss_vs_depth/mean", "b/final_train_loss_vs_depth/mean"} <= tags
        (root,) = event_files(view, REPORT_SUFFIX)
        (content,) = [v.tensor.string_val[0] for e in EventFileLoader(str(root)).Load() for v in e.summary.value
                      if v.tag == "custom_scalars__config__"]  # fmt: skip
        layout = layout_pb2.Layout.FromString(content)
        assert [c.title for c in layout.category] == ["a: Loss vs depth", "b: Loss vs depth"]
        assert layout.category[0].chart[0].multiline.tag[0] == "^a/final_train_loss_vs_depth/(.+/)?mean$"
    assert not view.exists()


def test_the_chart_check_sees_what_a_plain_tensorboard_hides(tmp_path):
    """The browser check is not vacuous: on a report whose deep plain net is the largest value, a
    plain `tensorboard` (its default "ignore outliers") draws that point outside the chart, and
    `chart_problems` says so. (`resexp tensorboard` shows it: tests/test_study.py.)"""
    import io
    import sys

    from rich.console import Console
    from test_report import make_sweep

    sys.path.insert(0, str(ROOT / "scripts"))
    import dashboard_screenshots as dash

    if dash.find_chromium() is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); .ci/run installs it when it can")
    sweep = make_sweep(tmp_path / "sweep")  # plain-20's loss is the largest
    build_report(sweep, console=Console(file=io.StringIO()))
    with TensorBoardServer(sweep) as tb, dash.Chromium(dash.find_chromium(), 1200, 900) as browser:
        browser.open(f"{tb.url}/{FRAGMENT}", expect="Loss vs depth")
        charts = dash.drawn_charts(browser)
    problems = dash.chart_problems(charts, {"plain": PLAIN_COLOR, "ResNet": RESNET_COLOR})
    assert any(p.startswith("final train loss vs depth") and "[20, 0.25] not in" in p for p in problems), problems
    assert not any("drawn in" in p or "empty" in p for p in problems), problems  # colours and runs are right
