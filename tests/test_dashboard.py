"""The dashboard a user opens: the Custom Scalars layout `resexp report` writes, read back
through a real TensorBoard's HTTP API, and (when Chromium is installed) the rendered page."""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path

import pytest
from conftest import ROOT, tiny_dict
from tb_server import TensorBoardServer

from resexp.config import Config
from resexp.report import build_report
from resexp.sweep import expand_grid, run_sweep
from resexp.tblog import LAYOUT_CATEGORIES, by_depth_tag, sweep_layout, vs_depth_tag

sys.path.insert(0, str(ROOT / "scripts"))
import dashboard_screenshots

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
        server.wait_for(lambda: "vs_depth/shortcut=true" in server.runs())
        yield server


def test_layout_through_the_http_api(tb):
    layout = tb.get_json("/data/plugin/custom_scalars/layout")
    titles = [c["title"] for c in layout["category"]]
    assert titles == ["Loss vs depth", "Training curves by depth", "Identity diagnostics"]  # no analyses yet
    regexes = {c["title"]: [r for chart in c["chart"] for r in chart["multiline"]["tag"]] for c in layout["category"]}
    assert regexes["Loss vs depth"][:3] == [
        "^final_train_loss_vs_depth/mean$",
        "^eval_loss_vs_depth/mean$",
        "^eval_accuracy_vs_depth/mean$",
    ]
    assert regexes["Training curves by depth"] == [f"^{re.escape(by_depth_tag(d))}$" for d in DEPTHS]
    assert "^diag/residual_ratio_mean$" in regexes["Identity diagnostics"]

    # Every regex selects tags that exist; each depth chart overlays the plain and the ResNet curve.
    tags = tb.scalar_tags()
    for title, patterns in regexes.items():
        for pattern in patterns:
            runs = {run for run, run_tags in tags.items() if any(re.match(pattern, t) for t in run_tags)}
            assert runs, f"{title}: {pattern} matches no tag"
            if title != "Identity diagnostics":
                assert runs == {"vs_depth/shortcut=false", "vs_depth/shortcut=true"}, (pattern, runs)
    assert "^diag/residual_ratio_mean$" not in tags["vs_depth/shortcut=true"]  # it is the runs' own tag


def test_curves_by_depth_are_the_runs_training_curves(tb, sweep_dir):
    """The depth-8 chart's plain line is the plain-8 run's train/loss (one seed: the mean is the run)."""
    (plain8,) = [p.name for p in sweep_dir.iterdir() if p.name.startswith("plain8-")]
    own = tb.scalars(plain8, "train/loss")
    assert len(own) == 2  # steps 10 and 20; the rewritten report added no duplicates below
    assert tb.scalars("vs_depth/shortcut=false", by_depth_tag(8)) == own  # the same float32, written twice
    points = tb.scalars("vs_depth/shortcut=true", vs_depth_tag("final_train_loss"))
    assert [step for step, _ in points] == list(DEPTHS)  # step = depth
    # the run counts sort after the answer, in a section of their own
    assert "vs_depth_counts/diverged_runs" in tb.scalar_tags()["vs_depth/shortcut=false"]


def test_analysis_hook():
    """Analyses named by the report get one chart each in a last category, matching analysis/<name>/..."""
    layout = sweep_layout(vs_depth={"final_train_loss"}, depths=[20], analyses=["gradient_flow"])
    assert [c.title for c in layout.category] == ["Loss vs depth", "Training curves by depth", LAYOUT_CATEGORIES[3]]
    (chart,) = layout.category[-1].chart
    (pattern,) = chart.multiline.tag
    assert re.match(pattern, "analysis/gradient_flow/block_03") and not re.match(pattern, "analysis/gradient_flows")


def test_report_charts_the_analyses_its_runs_name(tmp_path):
    """A run whose summary.json has an `analysis` block gets that analysis charted (layout read
    back from the report's event file in the sweep root)."""
    import io
    import json

    from rich.console import Console
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.custom_scalar import layout_pb2

    from resexp.report import REPORT_SUFFIX
    from resexp.tblog import event_files

    for depth in DEPTHS:
        run = tmp_path / f"plain{depth}"
        run.mkdir()
        summary = {"status": "completed", "steps": 10, "final_train_loss": 0.5, "sweep": {"name": "a",
                   "keys": {"model.depth": depth}}, "history": {"step": [10], "train_loss": [0.5]},
                   "analysis": {"gradient_flow": {"note": "tags under analysis/gradient_flow/"}}}  # fmt: skip
        (run / "summary.json").write_text(json.dumps(summary))
    build_report(tmp_path, console=Console(file=io.StringIO()))
    (root_file,) = event_files(tmp_path, REPORT_SUFFIX)
    (content,) = [v.tensor.string_val[0] for e in EventFileLoader(str(root_file)).Load() for v in e.summary.value
                  if v.tag == "custom_scalars__config__"]  # fmt: skip
    layout = layout_pb2.Layout.FromString(content)
    assert [c.title for c in layout.category] == ["Loss vs depth", "Training curves by depth", "Why: analyses"]
    assert [ch.multiline.tag[0] for ch in layout.category[-1].chart] == [r"^analysis/gradient_flow(/|$)"]


def test_custom_scalars_page_in_chromium(tb):
    """The page a user opens shows the categories (read from the live DOM, shadow roots included)."""
    binary = dashboard_screenshots.find_chromium()
    if binary is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); .ci/run installs it when it can")
    with dashboard_screenshots.Chromium(binary, 1200, 900) as browser:
        text = browser.open(tb.url + "/#custom_scalars&_smoothingWeight=0", expect="Loss vs depth")
    for title in ("Loss vs depth", "Training curves by depth", "Identity diagnostics"):
        assert title in text
    assert "train loss at depth 14: one line per net (mean over seeds)" in text


# ----------------------------------------------------------------------------- provenance and the lock


def test_summaries_record_software_and_machine(sweep_dir):
    """Every run's summary.json names the JAX stack's versions, the CPU it ran on and its XLA flags
    (the runs are subprocesses of this one: they inherit its XLA_FLAGS, which configure_jax set)."""
    import json
    from importlib import metadata

    from resexp.parallel import cpu_conv_path

    for summary_path in sweep_dir.glob("*/summary.json"):
        summary = json.loads(summary_path.read_text())
        assert summary["software"] == {
            **{p: metadata.version(p) for p in ("jax", "jaxlib", "flax", "optax")},
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
