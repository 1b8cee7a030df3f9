"""`report.reference: he2016_table6`: the paper beside a sweep's numbers, on hand-written summaries."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest
from rich.console import Console

from resexp.reporting.references import HE2016_TABLE6, REFERENCES, Comparison, Reference
from resexp.reporting.report import build_report

# Test errors (%) per (net, depth), one per seed: made up so that each verdict is known.
ERRORS = {
    ("resnet", 20): [8.6, 8.8, 9.0],  # mean 8.8: +0.05 vs 8.75, within 2 x 0.16
    ("resnet", 56): [7.6, 7.7, 7.8],  # mean 7.7: +0.73 vs 6.97, outside
    ("resnet", 110): [6.5, 6.6, 6.7],  # mean 6.6: -0.01 vs the paper's mean 6.61, within 2 x 0.16
    ("plain", 20): [9.4, 9.5, 9.6],
    ("plain", 56): [12.0, 12.5, 13.0],
}


def _summary(net: str, depth: int, seed: int, error: float, reference: str | None) -> dict:
    shortcut = net == "resnet"
    return {
        "run_id": f"{net}{depth}-s{seed}",
        "status": "completed",
        "steps": 100,
        "total_steps": 100,
        "final_train_loss": 0.1,
        "final_train_accuracy": 0.99,
        "eval_loss": 0.3,
        "eval_accuracy": 1 - error / 100,
        "params": 1000 * depth,
        "wall_seconds": 1.0,
        "config": {
            "data": {"name": "cifar10"},
            "train": {"seed": seed},
            "model": {"kind": "cnn", "depth": depth, "shortcut": shortcut, "projection": "zero_pad"},
            "report": {"reference": reference},
        },
        "sweep": {"name": "t6", "keys": {"model.depth": depth, "model.shortcut": shortcut, "train.seed": seed}},
        "history": {"step": [50, 100], "train_loss": [1.0, 0.1], "train_accuracy": [0.6, 0.99]},
        "diagnostics": None,
    }


def _sweep(root: Path, reference: str | None = "he2016_table6") -> Path:
    for (net, depth), errors in ERRORS.items():
        for seed, error in enumerate(errors):
            run = root / f"{net}{depth}-s{seed}"
            run.mkdir(parents=True)
            (run / "summary.json").write_text(json.dumps(_summary(net, depth, seed, error, reference)))
    return root


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    sweep = _sweep(tmp_path_factory.mktemp("t6"))
    buf = io.StringIO()
    report = build_report(sweep, console=Console(file=buf, width=200), write_tensorboard=False)
    return sweep, report, buf.getvalue()


def _aggregate(sweep: Path) -> dict[tuple[str, str], dict]:
    with open(sweep / "aggregate.csv") as f:
        return {(r["model.shortcut"], r["model.depth"]): r for r in csv.DictReader(f)}


def test_the_published_numbers():
    t6 = REFERENCES["he2016_table6"]
    assert [(r.depth, r.error) for r in t6.rows] == [
        (20, 8.75),
        (32, 7.51),
        (44, 7.17),
        (56, 6.97),
        (110, 6.43),
        (1202, 7.93),
    ]
    r110 = t6.row("ResNet", 110)
    assert (r110.error, r110.mean, r110.std, r110.runs, r110.compare_to) == (6.43, 6.61, 0.16, 5, 6.61)
    assert t6.row("plain", 20) is None  # plain nets are only curves in the paper (Fig. 6)


def test_aggregate_gets_paper_yours_difference_and_within(reported):
    sweep, _, _ = reported
    rows = _aggregate(sweep)
    r20, r56, r110 = rows[("true", "20")], rows[("true", "56")], rows[("true", "110")]
    assert float(r20["paper_test_error"]) == 8.75 and r20["paper_test_error_std"] == ""
    assert float(r20["test_error_mean"]) == pytest.approx(statistics.mean(ERRORS[("resnet", 20)]))
    assert float(r20["test_error_std"]) == pytest.approx(statistics.stdev(ERRORS[("resnet", 20)]))
    assert float(r20["diff_vs_paper"]) == pytest.approx(8.8 - 8.75) and r20["within_paper_spread"] == "true"
    assert float(r56["diff_vs_paper"]) == pytest.approx(7.7 - 6.97) and r56["within_paper_spread"] == "false"
    assert (
        float(r110["paper_test_error"]),
        float(r110["paper_test_error_mean"]),
        float(r110["paper_test_error_std"]),
    ) == (6.43, 6.61, 0.16)
    assert float(r110["diff_vs_paper"]) == pytest.approx(6.6 - 6.61)  # against the paper's mean, not its best
    assert r110["within_paper_spread"] == "true"
    plain = rows[("false", "20")]
    assert plain["paper_test_error"] == "" and plain["within_paper_spread"] == ""
    assert float(plain["test_error_mean"]) == pytest.approx(9.5)


def test_terminal_and_json_say_it(reported):
    sweep, _, text = reported
    assert "6.43 (best; 6.61±0.16)" in text and "6.60±0.10" in text and "+0.73" in text
    assert "plain nets: test error rises with depth (20 < 32 < 44 < 56) (Fig. 6 left): holds (on depths 20, 56)" in text
    assert "(Fig. 6 middle, Table 6): holds (on depths 20, 56, 110)" in text
    assert "not testable" in text and "1202" in text
    doc = json.loads((sweep / "results.json").read_text())
    verdicts = {c["source"]: c["verdict"] for c in doc["reference"]["claims"]}
    assert verdicts["Fig. 6"] == "holds" and verdicts["Fig. 6 right, Table 6"].startswith("not testable")
    assert doc["reference"]["reference"] == "he2016_table6"


def test_a_broken_ordering_is_reported(tmp_path):
    sweep = _sweep(tmp_path)
    s = json.loads((sweep / "resnet110-s0/summary.json").read_text())
    for seed in range(3):  # ResNet-110 worse than ResNet-56: the paper's ordering fails
        path = sweep / f"resnet110-s{seed}/summary.json"
        s = json.loads(path.read_text())
        s["eval_accuracy"] = 0.90
        path.write_text(json.dumps(s))
    buf = io.StringIO()
    build_report(sweep, console=Console(file=buf, width=200), write_tensorboard=False)
    assert "violated: ResNet-56 7.70% vs ResNet-110 10.00%" in buf.getvalue()


def test_the_figure_marks_the_papers_points(reported):
    """The paper's stars and bars are black: the figure has more black than the same one without them."""
    import matplotlib.image

    from resexp.reporting.figures import plot_test_error_vs_paper

    sweep, report, _ = reported
    assert report.paths["test_error_vs_paper.png"] == sweep / "test_error_vs_paper.png"
    from resexp.reporting.references import compare

    comparison = compare(report)
    without = Comparison(
        Reference(**{**HE2016_TABLE6.__dict__, "rows": ()}),
        comparison.columns,
        comparison.per_cell,
        comparison.labels,
        comparison.verdicts,
    )

    def black(png: bytes) -> int:
        pixels = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
        return int((pixels.max(axis=-1) < 0.15).sum())

    with_paper = (sweep / "test_error_vs_paper.png").read_bytes()
    assert black(with_paper) > black(plot_test_error_vs_paper(report, without, "t6: test error vs he2016_table6")) + 200


def test_no_reference_no_columns_no_figure(tmp_path):
    sweep = _sweep(tmp_path, reference=None)
    report = build_report(sweep, console=Console(file=io.StringIO()), write_tensorboard=False)
    assert "paper_test_error" not in (sweep / "aggregate.csv").read_text().splitlines()[0]
    assert "test_error_vs_paper.png" not in report.paths and not (sweep / "test_error_vs_paper.png").exists()
    assert "reference" not in json.loads((sweep / "results.json").read_text())
