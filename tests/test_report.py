"""resexp.reporting.report on a hand-written sweep: tables, statistics, figures, idempotence,
and what a real TensorBoard server shows for it."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import sys
from pathlib import Path

import pytest
from rich.console import Console
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from resexp.core.errors import UserError
from resexp.reporting.records import REPORT_SUFFIX
from resexp.reporting.report import build_report, build_reports
from resexp.runs.tblog import EventWriter, event_files, png_size

sys.path.insert(0, str(Path(__file__).parent))
from tb_server import TensorBoardServer

DEPTHS = (8, 14, 20)
SEEDS = (0, 1)
DIVERGED = ("plain", 20, 1)  # (net, depth, seed)


def train_loss(net: str, depth: int, seed: int) -> float:
    """Plain nets get worse with depth, residual nets do not (the paper's headline)."""
    base = 0.1 * depth / 8 if net == "plain" else 0.05
    return base * (1 + 0.07 * seed)


def write_summary(run_dir: Path, summary: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))


def make_summary(net: str, depth: int, seed: int, *, keys: dict | None = None, wd: float = 1e-4) -> dict:
    shortcut = net == "resnet"
    diverged = (net, depth, seed) == DIVERGED
    loss = math.nan if diverged else train_loss(net, depth, seed)
    steps = list(range(10, 101, 10))
    curve = [2.3 * math.exp(-s / 30) + (0 if diverged else loss) for s in steps]
    if diverged:
        curve = [v if s < 50 else math.nan for s, v in zip(steps, curve, strict=True)]
    n_blocks = (depth - 2) // 2
    return {
        "run_id": f"{net}{depth}-s{seed}",
        "status": "diverged" if diverged else "completed",
        "steps": 50 if diverged else 100,
        "total_steps": 100,
        "diverged_at_step": 50 if diverged else None,
        "final_train_loss": None if diverged else loss,
        "final_train_accuracy": None if diverged else 1 - loss,
        "eval_loss": None if diverged else 2 * loss,
        "eval_accuracy": None if diverged else 0.9 - loss,
        "params": 1000 * depth,
        "compile_seconds": 1.0,
        "wall_seconds": 2.0 + depth / 10,
        "images_per_second": 1000.0,
        "config": {
            "model": {"kind": "cnn", "depth": depth, "shortcut": shortcut, "projection": "zero_pad"},
            "optim": {"weight_decay": wd},
            "train": {"seed": seed},
            "data": {"name": "synthetic"},
        },
        "sweep": {
            "name": "unit",
            "keys": keys or {"model.depth": depth, "model.shortcut": shortcut, "train.seed": seed},
        },
        "history": {"step": steps, "train_loss": curve, "train_accuracy": [0.5] * len(steps)},
        "diagnostics": {
            "residual_ratio": [0.5 / (1 + 1000 * wd)] * n_blocks if shortcut else [],
            "response_std": [1.0 - 0.5 * i / depth if not shortcut else 0.5 for i in range(depth - 1)],
            "weight_norm": {},
            "grad_norm": {},
        },
    }


def make_sweep(root: Path) -> Path:
    for net in ("plain", "resnet"):
        for depth in DEPTHS:
            for seed in SEEDS:
                write_summary(root / f"{net}{depth}-s{seed}", make_summary(net, depth, seed))
    # an unfinished run and one that never wrote a summary
    running = make_summary("resnet", 8, 5)
    running.update(status="running", steps=40, run_id="resnet8-s5")
    running["sweep"]["keys"]["train.seed"] = 5
    write_summary(root / "resnet8-s5", running)
    (root / "plain8-s9").mkdir()
    return root


def report_events(sweep: Path) -> list[tuple]:
    """Everything in the report's event files except wall times, sorted."""
    out = []
    for path in event_files(sweep, REPORT_SUFFIX, recursive=True):
        run = str(path.parent.relative_to(sweep))
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("session_log"):
                out.append((run, event.step, "session_log", event.session_log.status))
            for v in event.summary.value:
                payload = v.simple_value if v.HasField("simple_value") else None
                if v.HasField("image"):
                    payload = (v.image.width, v.image.height, v.image.encoded_image_string)
                elif v.metadata.plugin_data.plugin_name == "hparams":
                    payload = v.metadata.plugin_data.content
                out.append((run, event.step, v.tag, payload))
    return sorted(out, key=repr)


def snapshot(sweep: Path) -> dict:
    skip = {"summary.json"}
    return {
        "report_files": len(event_files(sweep, REPORT_SUFFIX, recursive=True)),
        "events": report_events(sweep),
        "files": {
            str(p.relative_to(sweep)): p.read_bytes()
            for p in sweep.rglob("*")
            if p.is_file() and REPORT_SUFFIX not in p.name and p.name not in skip
        },
        "summaries": {str(p.relative_to(sweep)): p.read_bytes() for p in sweep.rglob("summary.json")},
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    sweep = make_sweep(tmp_path_factory.mktemp("sweep"))
    with EventWriter(sweep / "resnet8-s0", filename_suffix=".train") as w:  # a run's own TB file
        w.session_start(0)
        w.scalars(100, {"train/loss": 0.05, "diag/residual_ratio/block_00": 0.5, "diag/grad_norm/stem": 1.0})
    console = Console(record=True, width=130)
    first = build_report(sweep, console=console)
    snap1 = snapshot(sweep)
    second = build_report(sweep, console=Console(file=io.StringIO()))
    snap2 = snapshot(sweep)
    return {"sweep": sweep, "report": first, "again": second, "snap1": snap1, "snap2": snap2,
            "console": console.export_text()}  # fmt: skip


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open() as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def expected_cells() -> dict[tuple, dict]:
    """Mean and sample std over completed seeds, computed here independently."""
    cells = {}
    for net in ("plain", "resnet"):
        for depth in DEPTHS:
            done = [s for s in SEEDS if (net, depth, s) != DIVERGED]
            losses = [train_loss(net, depth, s) for s in done]
            cells[(depth, net == "resnet")] = {
                "n": len(SEEDS),
                "n_diverged": len(SEEDS) - len(done),
                "loss_mean": statistics.mean(losses),
                "loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                "eval_mean": statistics.mean(2 * v for v in losses),
                "acc_std": statistics.stdev([1 - v for v in losses]) if len(losses) > 1 else 0.0,
            }
    return cells


# ----------------------------------------------------------------------------- tables


def test_results_csv(built):
    sweep = built["sweep"]
    columns, rows = read_csv(sweep / "results.csv")
    assert columns == [
        "run_id", "model.depth", "model.shortcut", "train.seed", "status",
        "final_train_loss", "final_train_accuracy", "eval_loss", "eval_accuracy",
        "params", "wall_seconds", "diverged_at_step",
    ]  # fmt: skip
    by_id = {r["run_id"]: r for r in rows}
    expected_ids = {f"{n}{d}-s{s}" for n in ("plain", "resnet") for d in DEPTHS for s in SEEDS} | {"resnet8-s5"}
    assert set(by_id) == expected_ids and len(rows) == len(expected_ids)
    row = by_id["plain14-s1"]
    assert (row["model.depth"], row["model.shortcut"], row["train.seed"], row["status"]) == (
        "14",
        "false",
        "1",
        "completed",
    )
    assert float(row["final_train_loss"]) == pytest.approx(train_loss("plain", 14, 1))
    assert float(row["eval_loss"]) == pytest.approx(2 * train_loss("plain", 14, 1))
    assert row["params"] == "14000"
    div = by_id["plain20-s1"]
    assert div["status"] == "diverged" and div["final_train_loss"] == "" and div["diverged_at_step"] == "50"
    assert by_id["resnet8-s5"]["status"] == "running"
    notes = " ".join(built["report"].notes)
    assert "plain8-s9" in notes and "resnet8-s5" in notes


def test_aggregate_mean_std(built):
    columns, rows = read_csv(built["sweep"] / "aggregate.csv")
    assert columns[:4] == ["model.depth", "model.shortcut", "n_runs", "n_diverged"]
    for m in ("final_train_loss", "final_train_accuracy", "eval_loss", "eval_accuracy"):
        assert f"{m}_mean" in columns and f"{m}_std" in columns
    expected = expected_cells()
    assert len(rows) == len(expected) == len(built["report"].cells)
    for row in rows:
        exp = expected[(int(row["model.depth"]), row["model.shortcut"] == "true")]
        assert int(row["n_runs"]) == exp["n"]
        assert int(row["n_diverged"]) == exp["n_diverged"]
        assert float(row["final_train_loss_mean"]) == pytest.approx(exp["loss_mean"], rel=1e-12)
        assert float(row["final_train_loss_std"]) == pytest.approx(exp["loss_std"], rel=1e-9, abs=1e-15)
        assert float(row["eval_loss_mean"]) == pytest.approx(exp["eval_mean"], rel=1e-12)
        assert float(row["final_train_accuracy_std"]) == pytest.approx(exp["acc_std"], rel=1e-9, abs=1e-15)
    # the running run (seed 5) is not pooled into its cell
    resnet8 = next(r for r in rows if r["model.depth"] == "8" and r["model.shortcut"] == "true")
    assert resnet8["run_ids"].split(";") == ["resnet8-s0", "resnet8-s1"]


def test_results_json(built):
    doc = json.loads((built["sweep"] / "results.json").read_text())
    assert doc["swept_keys"] == ["model.depth", "model.shortcut", "train.seed"]
    assert "ddof=1" in doc["std"]
    div = next(r for r in doc["runs"] if r["run_id"] == "plain20-s1")
    assert div["final_train_loss"] is None  # NaN never reaches JSON
    assert len(doc["aggregate"]) == 6


def test_terminal_table(built):
    text = built["console"]
    for name in ("plain-8", "plain-20", "ResNet-8", "ResNet-20"):
        assert name in text
    assert "1/2" in text  # plain-20: one of two seeds diverged
    assert f"{train_loss('plain', 14, 0) * 1.035:.3g}" in text  # mean of 1.00x and 1.07x


# ----------------------------------------------------------------------------- figures


def check_png(path: Path, min_w: int, min_h: int) -> None:
    import matplotlib.image

    data = path.read_bytes()
    width, height, _ = png_size(data)
    assert min_w <= width <= 4000 and min_h <= height <= 3000, (width, height)
    assert 20_000 < len(data) < 3_000_000
    pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.05  # something was drawn


def test_figures(built):
    sweep, report = built["sweep"], built["report"]
    check_png(sweep / "loss_vs_depth.png", 1000, 400)
    check_png(sweep / "response_std.png", 600, 500)
    assert not (sweep / "residual_ratio_vs_wd.png").exists()  # weight decay is not swept
    assert report.paths["loss_vs_depth.png"] == sweep / "loss_vs_depth.png"
    assert "residual_ratio_vs_wd.png" not in report.paths


# ----------------------------------------------------------------------------- idempotence


def test_rebuild_is_idempotent(built):
    s1, s2 = built["snap1"], built["snap2"]
    assert s1["report_files"] == s2["report_files"] == 1 + 13 + 1 + 2  # root, runs, vs_depth (images), 2 groups
    assert s1["events"] == s2["events"]  # same TensorBoard content, nothing duplicated
    assert s1["files"].keys() == s2["files"].keys()
    for name in ("results.csv", "aggregate.csv", "results.json", "loss_vs_depth.png"):
        assert s1["files"][name] == s2["files"][name], name
    # the runs' own files are untouched
    assert s1["summaries"] == s2["summaries"]
    train_files = [k for k in s2["files"] if k.startswith("resnet8-s0/") and k.endswith(".train")]
    assert len(train_files) == 1
    assert len(built["again"].rows) == len(built["report"].rows)


# ----------------------------------------------------------------------------- live TensorBoard


@pytest.fixture(scope="module")
def tb(built):
    with TensorBoardServer(built["sweep"]) as server:
        server.wait_for(lambda: {"vs_depth/plain", "vs_depth/ResNet", "vs_depth", "."} <= set(server.runs()))
        server.wait_for(lambda: len(server.sessions()) == 13)
        yield server


def test_tensorboard_vs_depth_scalars(tb):
    """One run per family, the first two of the run list (TensorBoard colours runs by position)."""
    assert tb.runs()[:2] == ["vs_depth/ResNet", "vs_depth/plain"]
    tags = tb.scalar_tags()
    for group in ("vs_depth/plain", "vs_depth/ResNet"):
        assert tags[group], group
        assert all("depth" in t for t in tags[group])
        assert "final_train_loss_vs_depth/mean" in tags[group]
        assert "final_train_loss_vs_depth/std" in tags[group]
        assert "eval_accuracy_vs_depth/mean" in tags[group]
    expected = expected_cells()
    for shortcut in (False, True):
        run = "vs_depth/ResNet" if shortcut else "vs_depth/plain"
        points = tb.scalars(run, "final_train_loss_vs_depth/mean")
        assert [s for s, _ in points] == list(DEPTHS)  # step = depth, no duplicates after the rebuild
        for depth, value in points:
            assert value == pytest.approx(expected[(depth, shortcut)]["loss_mean"], rel=1e-6)
    diverged = tb.scalars("vs_depth/plain", "vs_depth_counts/diverged_runs")
    assert diverged == [(8, 0.0), (14, 0.0), (20, 1.0)]


def test_tensorboard_figure_image(tb, built):
    tags = tb.image_tags()
    assert "figures/loss_vs_depth" in tags["vs_depth"]
    (png,) = tb.images("vs_depth", "figures/loss_vs_depth")
    assert png == (built["sweep"] / "loss_vs_depth.png").read_bytes()


def test_tensorboard_hparams(tb, built):
    exp = tb.hparams_experiment()
    infos = {h["name"]: h for h in exp["hparamInfos"]}
    assert set(infos) == {"model.depth", "model.shortcut", "train.seed"}
    assert infos["model.depth"]["domainDiscrete"] == [float(d) for d in DEPTHS]
    assert infos["model.shortcut"]["domainDiscrete"] == [False, True]
    metric_tags = {m["name"]["tag"] for m in exp["metricInfos"]}
    # only the report's own metrics: not every train/ and diag/ scalar of the runs (288 on a ResNet-56)
    assert metric_tags == {
        "hparams/final_train_loss",
        "hparams/final_train_accuracy",
        "hparams/eval_loss",
        "hparams/eval_accuracy",
        "hparams/diverged",
    }

    sessions = tb.sessions()
    assert set(sessions) == {r["run_id"] for r in built["report"].rows}  # one session per run dir
    assert sessions["plain20-s1"]["status"] == "STATUS_FAILURE"
    assert sessions["resnet8-s5"]["status"] == "STATUS_RUNNING"
    assert sessions["plain14-s0"]["status"] == "STATUS_SUCCESS"
    assert sessions["plain14-s0"]["hparams"] == {"model.depth": 14.0, "model.shortcut": False, "train.seed": 0.0}
    values = {m["name"]["tag"]: m["value"] for m in sessions["plain14-s0"]["metricValues"]}
    assert values["hparams/final_train_loss"] == pytest.approx(train_loss("plain", 14, 0), rel=1e-6)
    assert values["hparams/diverged"] == 0.0
    assert {m["name"]["tag"]: m["value"] for m in sessions["plain20-s1"]["metricValues"]} == {"hparams/diverged": 1.0}
    # the run's own training scalars are still there, next to the report's
    assert "train/loss" in tb.scalar_tags()["resnet8-s0"]


# ----------------------------------------------------------------------------- other sweeps


def test_sweep_without_depth(tmp_path):
    sweep = tmp_path / "wd"
    for wd in (0.0, 1e-4, 1e-3):
        for seed in SEEDS:
            keys = {"optim.weight_decay": wd, "train.seed": seed}
            write_summary(sweep / f"resnet20-wd{wd:g}-s{seed}", make_summary("resnet", 20, seed, keys=keys, wd=wd))
    # leftovers of an earlier report of this directory that no longer apply
    (sweep / "loss_vs_depth.png").write_bytes(b"stale")
    with EventWriter(sweep / "vs_depth" / "shortcut=false", REPORT_SUFFIX) as w:
        w.scalars(20, {"final_train_loss_vs_depth/mean": 1.0})
    report = build_report(sweep, console=Console(file=io.StringIO()))

    assert any("model.depth is not swept" in n for n in report.notes)
    assert not (sweep / "loss_vs_depth.png").exists()
    assert not (sweep / "vs_depth" / "shortcut=false").exists()
    check_png(sweep / "residual_ratio_vs_wd.png", 500, 300)
    _, rows = read_csv(sweep / "aggregate.csv")
    assert [float(r["optim.weight_decay"]) for r in rows] == [0.0, 1e-4, 1e-3]
    assert all(int(r["n_runs"]) == 2 for r in rows)


def test_all_seeds_diverged_and_single_seed(tmp_path):
    sweep = tmp_path / "one-seed"
    for net in ("plain", "resnet"):
        for depth in DEPTHS:
            keys = {"model.depth": depth, "model.shortcut": net == "resnet"}
            summary = make_summary(net, depth, 1, keys=keys)  # seed 1: plain-20 diverges
            write_summary(sweep / f"{net}{depth}", summary)
    out = io.StringIO()
    report = build_report(sweep, console=Console(file=out, width=130), write_tensorboard=False)
    cell = next(c for c in report.cells if c.key == {"model.depth": 20, "model.shortcut": False})
    assert cell.all_diverged and math.isnan(cell.mean["final_train_loss"])
    assert all(c.std["final_train_loss"] == 0.0 for c in report.cells if not c.all_diverged)  # n=1 -> std 0
    assert "DIVERGED" in out.getvalue()
    assert not event_files(sweep, REPORT_SUFFIX, recursive=True)
    check_png(sweep / "loss_vs_depth.png", 1000, 400)


def test_reports_say_which_bn_statistics_the_eval_used(tmp_path):
    """Running averages (summaries from before precise BN too) are named in the caption and
    results.json; a grid with precise-BN runs also gets their eval_bn and the running numbers."""
    sweep = tmp_path / "bn"
    for net in ("plain", "resnet"):
        summary = make_summary(net, 8, 0, keys={"model.shortcut": net == "resnet"})
        summary["diagnostics"] = None  # no figures: this test is about the tables
        write_summary(sweep / net, summary)
    out = io.StringIO()
    build_report(sweep, console=Console(file=out, width=200), write_tensorboard=False)
    assert "eval: BN running averages" in " ".join(out.getvalue().split())  # the caption wraps
    assert json.loads((sweep / "results.json").read_text())["eval_bn"] == "eval: BN running averages"
    assert "eval_bn" not in read_csv(sweep / "results.csv")[0]

    for net in ("plain", "resnet"):
        summary = json.loads((sweep / net / "summary.json").read_text())
        summary.update(eval_bn={"statistics": "precise", "batches": 32, "images": 4096},
                       eval_running_loss=3 * summary["eval_loss"], eval_running_accuracy=0.5)  # fmt: skip
        write_summary(sweep / net, summary)
    out = io.StringIO()
    build_report(sweep, console=Console(file=out, width=200), write_tensorboard=False)
    assert "precise BN (statistics recomputed over 32 training batches)" in " ".join(out.getvalue().split())
    columns, rows = read_csv(sweep / "results.csv")
    assert columns[-3:] == ["eval_bn", "eval_running_loss", "eval_running_accuracy"]
    assert {r["eval_bn"] for r in rows} == {"precise-32"} and {r["eval_running_accuracy"] for r in rows} == {"0.5"}
    columns, rows = read_csv(sweep / "aggregate.csv")
    assert {"eval_running_accuracy_mean", "eval_running_loss_std"} <= set(columns)
    assert float(rows[0]["eval_running_loss_mean"]) == pytest.approx(3 * 2 * train_loss("plain", 8, 0))  # plain first


def test_bad_sweep_dirs(tmp_path):
    with pytest.raises(UserError):
        build_report(tmp_path / "missing", console=Console(file=io.StringIO()))
    (tmp_path / "empty" / "run-without-summary").mkdir(parents=True)
    with pytest.raises(UserError):
        build_report(tmp_path / "empty", console=Console(file=io.StringIO()))


def test_runs_without_sweep_keys_get_an_inferred_grid(tmp_path):
    sweep = tmp_path / "loose"
    for net in ("plain", "resnet"):
        for depth in (8, 20):
            summary = make_summary(net, depth, 0)
            del summary["sweep"]  # runs started one by one, not by a sweep
            write_summary(sweep / f"{net}{depth}", summary)
    report = build_report(sweep, console=Console(file=io.StringIO()), write_tensorboard=False)
    assert report.swept_keys == ["model.depth", "model.shortcut"]  # the config keys that differ
    assert len(report.cells) == 4 and all(c.n == 1 for c in report.cells)
    assert (sweep / "loss_vs_depth.png").is_file()


# --------------------------------------------------------------------------- grids sharing a directory

AXIS_VALUES = {
    "model.depth": [8, 14, 20],
    "model.shortcut": [False, True],
    "optim.weight_decay": [0.0, 1e-4, 1e-3],
    "train.seed": [0, 1, 2],
}


def fabricated_run(sweep: Path, cfg) -> None:
    """A finished run of `cfg` (a real Config, so a real run id) with numbers that are a function of it."""
    from resexp.core.config import run_id

    m, wd, seed = cfg.model, cfg.optim.weight_decay, cfg.train.seed
    diverged = (m.depth, m.shortcut, seed) == (20, False, 2)
    loss = (0.1 * m.depth / 8 if not m.shortcut else 0.05) * (1 + 0.07 * seed) + 10 * wd
    rid = run_id(cfg)
    summary = {
        "run_id": rid,
        "status": "diverged" if diverged else "completed",
        "steps": 100,
        "diverged_at_step": 50 if diverged else None,
        "final_train_loss": None if diverged else loss,
        "final_train_accuracy": None if diverged else 1 - loss,
        "eval_loss": None if diverged else 2 * loss,
        "eval_accuracy": None if diverged else 0.9 - loss,
        "params": 1000 * m.depth,
        "wall_seconds": 1.0,
        "config": cfg.model_dump(mode="json"),
        # what the launching sweep happened to sweep: deliberately partial, the report must not use it
        "sweep": {"name": cfg.name, "keys": {"model.depth": m.depth}},
        "history": {"step": [50, 100], "train_loss": [1.0, loss], "train_accuracy": [0.5, 0.6]},
        "diagnostics": {
            "residual_ratio": [0.5] if m.shortcut else [],
            "response_std": [1.0, 0.5],
            "weight_norm": {},
            "grad_norm": {},
        },
    }
    write_summary(sweep / rid, summary)


@pytest.mark.parametrize("trial", range(8))
def test_reports_over_random_mixtures_of_grids(tmp_path, trial):
    """Property: however grids overlap in one directory, each report shows exactly its own grid,
    every swept value comes from the run's resolved config (never None), and each cell's
    statistics are those of the runs that match it."""
    import random

    from conftest import tiny_dict

    from resexp.core.config import Config
    from resexp.reporting.report import build_reports
    from resexp.sweeps.plan import expand_grid, grid_axes, record_grid

    rng = random.Random(trial)
    sweep = tmp_path / "mixed"
    base = Config.model_validate(tiny_dict(name="mixed"))
    asked = []
    for _ in range(rng.randint(1, 4)):
        keys = rng.sample(sorted(AXIS_VALUES), rng.randint(1, len(AXIS_VALUES)))
        axes = {k: sorted(rng.sample(AXIS_VALUES[k], rng.randint(1, len(AXIS_VALUES[k])))) for k in keys}
        cells = expand_grid(base, axes)
        for c in cells:
            fabricated_run(sweep, c.cfg)
        manifest = record_grid(sweep, "mixed", grid_axes(base, axes), axes, cells)
        asked.append((manifest.report_dir, axes, {c.run_id: c.cfg for c in cells}))

    reports = {
        r.report_dir: r for r in build_reports(sweep, console=Console(file=io.StringIO()), write_tensorboard=False)
    }
    distinct = {d for d, _, _ in asked}
    assert set(reports) == distinct
    for report_dir, axes, cfgs in asked:
        report = reports[report_dir]
        _, rows = read_csv(report_dir / "results.csv")
        assert sorted(row["run_id"] for row in rows) == sorted(cfgs)  # exactly its own runs, reused ones included
        for row in rows:
            for key in axes:
                assert row[key] != "", (key, row)  # never None
                want = cfgs[row["run_id"]].model_dump(mode="json")
                for part in key.split("."):
                    want = want[part]
                assert str(row[key]).lower() == str(want).lower() or float(row[key]) == float(want), (key, row)
        for cell in report.cells:
            members = [
                c
                for rid, c in cfgs.items()
                if all(c.model_dump(mode="json")[k.split(".")[0]][k.split(".")[1]] == v for k, v in cell.key.items())
            ]
            assert cell.n == len(members)
            losses = [
                (0.1 * c.model.depth / 8 if not c.model.shortcut else 0.05) * (1 + 0.07 * c.train.seed)
                + 10 * c.optim.weight_decay
                for c in members
                if (c.model.depth, c.model.shortcut, c.train.seed) != (20, False, 2)
            ]
            if losses:
                assert cell.mean["final_train_loss"] == pytest.approx(statistics.mean(losses), rel=1e-12)


# --------------------------------------------------------------------------- what each grid's figure and table say


def weight_decay_grid(sweep: Path) -> None:
    """The README's second grid: weight decay 0 / 1e-4 / 1e-3 x depth x plain/ResNet, two seeds."""
    for net in ("plain", "resnet"):
        for depth in DEPTHS:
            for wd in (0.0, 1e-4, 1e-3):
                for seed in SEEDS:
                    keys = {"model.depth": depth, "model.shortcut": net == "resnet", "optim.weight_decay": wd,
                            "train.seed": seed}  # fmt: skip
                    summary = make_summary(net, depth, seed, keys=keys, wd=wd)
                    write_summary(sweep / f"{net}{depth}-wd{wd:g}-s{seed}", summary)


def test_weight_decay_figure_colours_by_family_and_keeps_its_legend_off_the_lines(tmp_path):
    """In loss_vs_depth.png of a weight-decay grid, colour means plain (blue) vs ResNet (orange) in
    both panels; each weight decay has its own line style and marker within a family; the legends
    list every line and sit outside the axes, covering no point."""
    import matplotlib.colors as mcolors

    from resexp.reporting.colors import PLAIN_COLOR, RESNET_COLOR
    from resexp.reporting.figures import draw_loss_vs_depth

    weight_decay_grid(tmp_path / "wd")
    report = build_report(tmp_path / "wd", console=Console(file=io.StringIO()), write_tensorboard=False)
    fig = draw_loss_vs_depth(report, "wd")
    fig.canvas.draw()
    ax, ax2 = fig.axes[:2]
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1]
    assert len(lines) == 6  # 2 families x 3 weight decays
    styles = {}
    for ln in lines:
        label = ln.get_label()
        family = PLAIN_COLOR if label.startswith("plain") else RESNET_COLOR
        assert mcolors.to_hex(ln.get_color()) == family, (label, ln.get_color())
        styles.setdefault(family, set()).add((ln.get_linestyle(), ln.get_marker()))
    assert all(len(s) == 3 for s in styles.values()), styles  # weight decay by style and marker
    for line in ax2.get_lines():  # the curves: the family's hue, lighter for shallower nets
        family = PLAIN_COLOR if line.get_label().startswith("plain") else RESNET_COLOR
        hue = mcolors.rgb_to_hsv(mcolors.to_rgb(line.get_color()))[0]
        assert abs(hue - mcolors.rgb_to_hsv(mcolors.to_rgb(family))[0]) < 0.02, line.get_label()
    for axes in (ax, ax2):
        legend = axes.get_legend()
        assert legend is not None
        box = legend.get_window_extent()
        assert not box.overlaps(axes.get_window_extent()), "the legend sits on the axes"
        for line in axes.get_lines():
            xy = line.get_transform().transform(line.get_xydata())
            assert not any(box.contains(x, y) for x, y in xy), line.get_label()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(set(labels)) == len(labels) and {"plain (wd=0)", "ResNet (wd=0.001)"} <= set(labels), labels


def test_each_grid_table_is_titled_with_its_grid(tmp_path):
    """Two grids in one directory (the README's demo, then a weight-decay grid swept into it):
    each table says which grid it is, not twice "sweep demo"."""
    sweep = tmp_path / "demo"
    weight_decay_grid(sweep)
    grids = {  # manifest -> (axes, run ids): the demo grid (weight decay 1e-4), then all of them
        sweep / "sweep.json": (["model.depth", "model.shortcut", "train.seed"],
                               [p.name for p in sweep.iterdir() if "-wd0.0001-" in p.name]),
        sweep / "grids" / "weight_decay=0,0.0001,0.001-abc123" / "sweep.json": (
            ["model.depth", "model.shortcut", "optim.weight_decay", "train.seed"], [p.name for p in sweep.iterdir()]),
    }  # fmt: skip
    for path, (axes, ids) in grids.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"name": "demo", "axes": {a: [] for a in axes}, "run_ids": ids}))
    out = io.StringIO()
    build_reports(sweep, console=Console(file=out, width=200), write_tensorboard=False)  # prints every grid
    titles = [line.strip() for line in out.getvalue().splitlines() if line.startswith("grid ")]
    assert titles == [
        "grid demo (depth x shortcut): 6 cells from 12 runs",
        "grid demo/grids/weight_decay=0,0.0001,0.001-abc123 (depth x shortcut x weight_decay): 18 cells from 36 runs",
    ], out.getvalue()


def test_an_unreadable_summary_is_reported_as_unreadable(tmp_path):
    """A run of a grid whose summary.json is corrupt is named as unreadable, not as "not started"."""
    sweep = make_sweep(tmp_path / "sweep")
    (sweep / "sweep.json").write_text(json.dumps({"name": "unit", "axes": {"model.depth": [], "model.shortcut": [],
                                                  "train.seed": []}, "run_ids": sorted(
        p.name for p in sweep.iterdir() if p.is_dir())}))  # fmt: skip
    (sweep / "plain14-s0" / "summary.json").write_text('{"status": "compl')  # cut off mid-write
    out = io.StringIO()
    report = build_report(sweep, console=Console(file=out, width=300), write_tensorboard=False)
    notes = " | ".join(report.notes)
    assert "plain14-s0: unreadable summary.json" in notes, notes
    not_started = [n for n in report.notes if "no summary yet" in n]
    assert not_started and all("plain14-s0" not in n for n in not_started), not_started  # plain8-s9 has none
    assert "plain14-s0" not in [r["run_id"] for r in report.rows]
