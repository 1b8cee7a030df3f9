"""resexp.runs.tblog: what it writes is what TensorBoard reads (EventAccumulator and a live server)."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from resexp.runs.tblog import EventWriter, coerce_hparams, event_files, hparam_domains, metric_tag, png_size

sys.path.insert(0, str(Path(__file__).parent))
from tb_server import TensorBoardServer


def _png(width_in: float = 3.0, height_in: float = 2.0, dpi: int = 50) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.add_subplot().plot([0, 1, 2], [2, 0, 1], color="red")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _accumulator(logdir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_import_does_not_pull_in_tensorflow():
    code = (
        "import sys, resexp.runs.tblog, resexp.reporting.report; assert 'tensorflow' not in sys.modules, 'TF imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scalars_round_trip(tmp_path):
    with EventWriter(tmp_path, filename_suffix=".train") as w:
        for step in (0, 10, 20):
            w.scalars(step, {"train/loss": 1.0 / (step + 1), "train/accuracy": step / 20, "skipped": None})
        w.scalars(30, {"train/loss": float("nan")})
        path = w.path
    assert path.parent == tmp_path and path.name.endswith(".train") and path.is_file()
    assert event_files(tmp_path, ".train") == [path]

    acc = _accumulator(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == ["train/accuracy", "train/loss"]  # None values are skipped
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [0, 10, 20, 30]
    assert [e.value for e in loss[:3]] == pytest.approx([1.0, 1 / 11, 1 / 21])
    assert math.isnan(loss[3].value)  # divergence stays visible
    assert [e.value for e in acc.Scalars("train/accuracy")] == pytest.approx([0.0, 0.5, 1.0])


def test_image_round_trip(tmp_path):
    import matplotlib.image

    png = _png()
    assert png_size(png)[:2] == (150, 100)
    with EventWriter(tmp_path) as w:
        w.image("figures/curve", png, step=7)
    acc = _accumulator(tmp_path)
    (img,) = acc.Images("figures/curve")
    assert (img.step, img.width, img.height) == (7, 150, 100)
    assert img.encoded_image_string == png
    pixels = matplotlib.image.imread(io.BytesIO(img.encoded_image_string), format="png")
    assert pixels.shape[:2] == (100, 150)
    assert pixels[..., 0].std() > 0.01  # not a blank image


def test_png_size_rejects_non_png():
    with pytest.raises(ValueError):
        png_size(b"GIF89a" + b"\0" * 40)


def test_session_start_purges_orphaned_steps(tmp_path):
    # First attempt got to step 40, then crashed; the resume restarts from the step-20 checkpoint.
    with EventWriter(tmp_path) as w:
        w.session_start(0)
        for step in (0, 10, 20, 30, 40):
            w.scalars(step, {"loss": 1.0})
    time.sleep(1.1)  # event files are ordered by the timestamp in their name
    with EventWriter(tmp_path) as w:
        w.session_start(20)
        for step in (20, 30):
            w.scalars(step, {"loss": 2.0})
    loss = _accumulator(tmp_path).Scalars("loss")
    assert [(e.step, e.value) for e in loss] == [(0, 1.0), (10, 1.0), (20, 2.0), (30, 2.0)]


def test_hparam_domains_and_coercion():
    runs = [
        {"model.depth": 20, "model.shortcut": True, "optim.weight_decay": 1e-4, "model.projection": None},
        {"model.depth": 56, "model.shortcut": False, "optim.weight_decay": 0, "model.projection": "zero_pad"},
        {"model.depth": 20, "model.shortcut": True, "optim.weight_decay": 1e-4, "model.projection": "learned"},
    ]
    domains = hparam_domains(runs)
    assert domains == {
        "model.depth": [20.0, 56.0],
        "model.shortcut": [False, True],
        "optim.weight_decay": [0.0, 1e-4],
        "model.projection": ["learned", "none", "zero_pad"],
    }
    # a mix of numbers and strings becomes strings everywhere, consistently
    mixed = hparam_domains([{"k": 1}, {"k": "auto"}])
    assert mixed == {"k": ["1", "auto"]}
    assert coerce_hparams({"k": 1}, mixed) == {"k": "1"}
    assert coerce_hparams(runs[0], domains) == {
        "model.depth": 20.0,
        "model.shortcut": True,
        "optim.weight_decay": 1e-4,
        "model.projection": "none",
    }


# ----------------------------------------------------------------------------- live server

SESSIONS = {
    "run-a": ({"model.depth": 20, "model.shortcut": True, "model.projection": "zero_pad"}, "completed", 0.25),
    "run-b": ({"model.depth": 56, "model.shortcut": False, "model.projection": "zero_pad"}, "diverged", None),
    "run-c": ({"model.depth": 56, "model.shortcut": True, "model.projection": "learned"}, "running", 0.5),
}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("tblog-live")
    domains = hparam_domains(keys for keys, _, _ in SESSIONS.values())
    with EventWriter(root, ".report") as w:
        w.hparams_experiment(domains, {metric_tag("final_train_loss"): "final train loss"})
    for name, (keys, status, loss) in SESSIONS.items():
        with EventWriter(root / name, ".train") as w:  # training curves, as train.py writes them
            w.session_start(0)
            for step in (0, 50, 100):
                w.scalars(step, {"train/loss": 2.0 - step / 100})
        with EventWriter(root / name, ".report") as w:
            w.hparams_session_start(keys, domains=domains)
            w.hparams_session_end(status)
            w.hparams_metrics(100, {"final_train_loss": loss})
    with EventWriter(root / "resumed", ".a") as w:
        w.session_start(0)  # the first START of a run is not a restart; it must be there
        w.scalars(0, {"loss": 1.0})
        w.scalars(10, {"loss": 1.0})
    with TensorBoardServer(root) as tb:
        tb.wait_for(lambda: {".", "run-a", "run-b", "run-c", "resumed"} <= set(tb.runs()))
        yield root, tb


def test_live_scalars(live):
    _root, tb = live
    tags = tb.scalar_tags()
    assert set(tags["run-a"]) == {"train/loss", "hparams/final_train_loss"}
    assert "hparams/final_train_loss" not in tags["run-b"]  # a diverged run has no value
    assert tb.scalars("run-a", "train/loss") == [(0, 2.0), (50, 1.5), (100, 1.0)]
    assert tb.scalars("run-a", "hparams/final_train_loss") == [(100, 0.25)]


def test_live_hparams_experiment(live):
    _root, tb = live
    exp = tb.hparams_experiment()
    infos = {h["name"]: h for h in exp["hparamInfos"]}
    assert set(infos) == {"model.depth", "model.shortcut", "model.projection"}
    assert infos["model.depth"]["type"] == "DATA_TYPE_FLOAT64"
    assert infos["model.depth"]["domainDiscrete"] == [20.0, 56.0]
    assert infos["model.shortcut"]["type"] == "DATA_TYPE_BOOL"
    assert infos["model.projection"]["domainDiscrete"] == ["learned", "zero_pad"]
    assert all(h["differs"] for h in infos.values())
    assert [m["name"]["tag"] for m in exp["metricInfos"]] == ["hparams/final_train_loss"]


def test_live_hparams_sessions(live):
    _root, tb = live
    sessions = tb.sessions()
    assert set(sessions) == set(SESSIONS)  # one session per run, named by its directory
    status = {name: s["status"] for name, s in sessions.items()}
    assert status == {"run-a": "STATUS_SUCCESS", "run-b": "STATUS_FAILURE", "run-c": "STATUS_RUNNING"}
    assert sessions["run-a"]["hparams"] == {"model.depth": 20.0, "model.shortcut": True, "model.projection": "zero_pad"}
    values = {m["name"]["tag"]: m["value"] for m in sessions["run-a"]["metricValues"]}
    assert values == {"hparams/final_train_loss": 0.25}
    assert sessions["run-b"]["metricValues"] == []


def test_live_session_start_replaces_rewritten_steps(live):
    """A live TensorBoard that already showed a run drops the steps a resume rewrites."""
    root, tb = live
    tb.wait_for(lambda: tb.scalars("resumed", "loss") == [(0, 1.0), (10, 1.0)])
    time.sleep(1.1)
    with EventWriter(root / "resumed", ".b") as w:
        w.session_start(10)
        w.scalars(10, {"loss": 3.0})
        w.scalars(20, {"loss": 3.0})
    assert tb.wait_for(lambda: tb.scalars("resumed", "loss") == [(0, 1.0), (10, 3.0), (20, 3.0)], timeout=30)
