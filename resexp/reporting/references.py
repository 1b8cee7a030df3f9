"""Published numbers to set beside a sweep's own, and the comparison `resexp report` prints.

A sweep whose config says `report: {reference: he2016_table6}` gets, per cell, the paper's
test error, its own as mean ± std over seeds, the difference, and whether that difference
is within the paper's spread; plus a check of the paper's qualitative depth ordering.

The numbers are He, Zhang, Ren, Sun (2016), "Deep Residual Learning for Image Recognition",
CVPR, Table 6 (CIFAR-10 test error, %, all with augmentation). Only ResNet-110 was run
several times: "we run it 5 times and show best (mean±std)" = 6.43 (6.61±0.16). The plain
nets appear only as curves (Fig. 6), so for them only the ordering is checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from resexp.core.variants import ShortcutOption
from resexp.reporting.records import DEPTH_KEY, Report, mean_std, net_name

# Within = |yours - paper| <= SPREAD_MULTIPLE x the paper's run-to-run std. The paper reports a
# std for ResNet-110 only (0.16 pt over 5 runs); it is the best estimate of seed noise it gives,
# so it stands in for the other depths, whose numbers are single runs.
SPREAD_MULTIPLE = 2.0


@dataclass(frozen=True)
class PaperRow:
    net: str  # "ResNet" or "plain" (report.group_label's naming)
    depth: int
    error: float  # the number printed in the table (for ResNet-110: the best of 5 runs)
    params: str = ""
    mean: float | None = None  # over `runs` runs, where the paper gives it
    std: float | None = None
    runs: int = 1

    @property
    def compare_to(self) -> float:
        """What a mean over seeds should be compared with: the paper's mean where it has one."""
        return self.mean if self.mean is not None else self.error

    @property
    def shown(self) -> str:
        return (
            f"{self.error:.2f} (best; {self.mean:.2f}±{self.std:.2f})" if self.mean is not None else f"{self.error:.2f}"
        )


@dataclass(frozen=True)
class Claim:
    """One of the paper's qualitative orderings, checked on a sweep's cells."""

    text: str
    source: str
    net: str
    kind: str  # "rises" | "falls" (test error with depth), "worse_deeper", "res_beats_plain"
    depths: tuple[int, ...] = ()


@dataclass(frozen=True)
class Reference:
    name: str
    citation: str
    dataset: str
    rows: tuple[PaperRow, ...]
    claims: tuple[Claim, ...]
    default_std: float  # the paper's only measured run-to-run spread (points)
    projection: str = ShortcutOption.A.value

    def row(self, net: str, depth: Any) -> PaperRow | None:
        return next((r for r in self.rows if r.net == net and r.depth == depth), None)


HE2016_TABLE6 = Reference(
    name="he2016_table6",
    citation="He et al. 2016, Deep Residual Learning for Image Recognition, Table 6 (CIFAR-10 test error, %)",
    dataset="cifar10",
    rows=(
        PaperRow("ResNet", 20, 8.75, "0.27M"),
        PaperRow("ResNet", 32, 7.51, "0.46M"),
        PaperRow("ResNet", 44, 7.17, "0.66M"),
        PaperRow("ResNet", 56, 6.97, "0.85M"),
        PaperRow("ResNet", 110, 6.43, "1.7M", mean=6.61, std=0.16, runs=5),
        PaperRow("ResNet", 1202, 7.93, "19.4M"),
    ),
    claims=(
        Claim(
            "plain nets: test error rises with depth (20 < 32 < 44 < 56)",
            "Fig. 6 left",
            "plain",
            "rises",
            (20, 32, 44, 56),
        ),
        Claim(
            "ResNets: test error falls with depth up to 110 (20 > 32 > 44 > 56 > 110)",
            "Fig. 6 middle, Table 6",
            "ResNet",
            "falls",
            (20, 32, 44, 56, 110),
        ),
        Claim(
            "ResNet-1202 is worse than ResNet-110 (overfitting)",
            "Fig. 6 right, Table 6",
            "ResNet",
            "worse_deeper",
            (110, 1202),
        ),
        Claim("at equal depth, the ResNet beats the plain net", "Fig. 6", "ResNet", "res_beats_plain"),
    ),
    default_std=0.16,
)

REFERENCES: dict[str, Reference] = {HE2016_TABLE6.name: HE2016_TABLE6}


# ----------------------------------------------------------------------------- the comparison


COLUMNS = (
    "paper_test_error",
    "paper_test_error_mean",
    "paper_test_error_std",
    "test_error_mean",
    "test_error_std",
    "diff_vs_paper",
    "within_paper_spread",
)


@dataclass
class Comparison:
    """What `compare` found: one dict of extra columns per report cell, and the claims' verdicts."""

    reference: Reference
    columns: tuple[str, ...]
    per_cell: list[dict[str, Any]]  # aligned with report.cells
    labels: list[str]  # "ResNet-110", aligned with report.cells
    verdicts: list[tuple[Claim, str]]  # "holds" | "violated: ..." | "not testable: ..."

    def as_json(self) -> dict:
        return {
            "reference": self.reference.name,
            "citation": self.reference.citation,
            "within": f"|yours - paper| <= {SPREAD_MULTIPLE:g} x paper std (ResNet-110's "
            f"{self.reference.default_std} pt where the paper gives none)",
            "claims": [{"claim": c.text, "source": c.source, "verdict": v} for c, v in self.verdicts],
        }

    def table(self):
        """A rich table: net, paper, yours (mean ± std over seeds), difference, within."""
        from rich import box
        from rich.table import Table

        t = Table(
            title=f"vs {self.reference.citation}",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            caption=f"yours: mean±std (ddof=1) of test error over completed seeds; within: |diff| <= "
            f"{SPREAD_MULTIPLE:g}× the paper's std ({self.reference.default_std} pt where it gives none)",
            caption_justify="left",
        )
        for name, justify in (
            ("net", "left"),
            ("paper %", "right"),
            ("yours %", "right"),
            ("n", "right"),
            ("diff pt", "right"),
            ("within", "left"),
        ):
            t.add_column(name, justify=justify, no_wrap=True)
        for label, extra in zip(self.labels, self.per_cell, strict=True):
            shown = extra.get("_paper_shown", "-")
            mean, std, n = extra["test_error_mean"], extra["test_error_std"], extra.get("_n", 0)
            yours = "-" if not math.isfinite(mean) else f"{mean:.2f}±{std:.2f}" if n > 1 else f"{mean:.2f}"
            diff = extra["diff_vs_paper"]
            within = extra["within_paper_spread"]
            t.add_row(
                label,
                shown,
                yours,
                str(n),
                "-" if diff is None else f"{diff:+.2f}",
                "-" if within is None else "[green]yes[/]" if within else "[red]no[/]",
            )
        return t

    def print(self, console) -> None:
        console.print(self.table())
        for claim, verdict in self.verdicts:
            color = "green" if verdict == "holds" else "red" if verdict.startswith("violated") else "dim"
            console.print(f"  {claim.text} ({claim.source}): [{color}]{verdict}[/]", highlight=False)

    def csv_columns(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in extra.items() if not k.startswith("_")} for extra in self.per_cell]


def reference_name(runs) -> tuple[str | None, list[str]]:
    """The `report.reference` the runs' configs name (one, or None), and notes on disagreement."""
    names = {str(n) for r in runs if (n := ((r.summary.get("config") or {}).get("report") or {}).get("reference"))}
    if len(names) > 1:
        return None, [f"runs name different references ({', '.join(sorted(names))}) - none shown"]
    return (next(iter(names)) if names else None), []


def compare(report: Report) -> Comparison | None:
    """The reference comparison for a report's cells, or None if no run's config asks for one."""
    name, found = reference_name(report.runs)
    notes = report.notes  # the comparison's findings go with the report's other notes
    notes.extend(found)  # the comparison's findings go with the report's other notes
    if name is None:
        return None
    ref = REFERENCES.get(name)
    if ref is None:
        report.notes.append(f"report.reference {name!r} is not one resexp knows ({', '.join(REFERENCES)}) - skipped")
        return None
    datasets = {r.config("data.name") for r in report.runs}
    if datasets != {ref.dataset}:
        notes.append(f"{ref.name} is on {ref.dataset}; these runs use {', '.join(sorted(map(str, datasets)))}")
    per_cell, labels, by_net_depth = [], [], {}
    for c in report.cells:
        net = net_name(c.runs, c.key)
        depth = c.key.get(DEPTH_KEY, c.runs[0].config(DEPTH_KEY) if c.runs else None)
        labels.append(f"{net}-{depth}")
        errors = [100 * (1 - r.metric("eval_accuracy")) for r in c.completed]
        mean, std = mean_std(errors)
        n = sum(math.isfinite(e) for e in errors)
        extra: dict[str, Any] = {
            "test_error_mean": mean,
            "test_error_std": std,
            "_n": n,
            "paper_test_error": None,
            "paper_test_error_mean": None,
            "paper_test_error_std": None,
            "diff_vs_paper": None,
            "within_paper_spread": None,
        }
        row = ref.row(net, depth)
        if row is not None:
            extra.update(
                paper_test_error=row.error,
                paper_test_error_mean=row.mean,
                paper_test_error_std=row.std,
                _paper_shown=row.shown,
                _row=row,
            )
            if math.isfinite(mean):
                diff = mean - row.compare_to
                spread = row.std if row.std is not None else ref.default_std
                extra.update(diff_vs_paper=round(diff, 4), within_paper_spread=abs(diff) <= SPREAD_MULTIPLE * spread)
            projections = {r.config("model.projection") for r in c.runs}
            if projections != {ref.projection}:
                notes.append(
                    f"{labels[-1]}: projection {', '.join(map(str, projections))}; the paper's "
                    f"CIFAR-10 nets use {ref.projection} (option {ShortcutOption(ref.projection).letter})"
                )
        if n and isinstance(depth, int):
            by_net_depth[(net, depth)] = mean
        per_cell.append(extra)
    verdicts = [(claim, _verdict(claim, by_net_depth)) for claim in ref.claims]
    return Comparison(ref, COLUMNS, per_cell, labels, verdicts)


def _verdict(claim: Claim, errors: dict[tuple[str, int], float]) -> str:
    """Check one ordering on the depths this sweep has (at least two of the claim's)."""
    if claim.kind == "res_beats_plain":
        depths = sorted(d for (net, d) in errors if net == "ResNet" and ("plain", d) in errors)
        if not depths:
            return "not testable: no depth with both a plain net and a ResNet"
        worse = [d for d in depths if errors[("ResNet", d)] >= errors[("plain", d)]]
        return "holds" if not worse else f"violated at depth {', '.join(map(str, worse))}"
    have = [d for d in claim.depths if (claim.net, d) in errors]
    if len(have) < 2:
        return f"not testable: needs {claim.net} at two of depths {', '.join(map(str, claim.depths))}"
    values = [errors[(claim.net, d)] for d in have]
    pairs = list(
        zip(zip(have, values, strict=True), zip(have[1:], values[1:], strict=True), strict=False)
    )  # consecutive pairs
    if claim.kind == "rises":
        bad = [(a, b) for a, b in pairs if not b[1] > a[1]]
    else:  # "falls", "worse_deeper": the deeper net has lower / higher error
        sign = -1 if claim.kind == "falls" else 1
        bad = [(a, b) for a, b in pairs if not sign * (b[1] - a[1]) > 0]
    if not bad:
        return "holds" + ("" if len(have) == len(claim.depths) else f" (on depths {', '.join(map(str, have))})")
    (d1, e1), (d2, e2) = bad[0]
    return f"violated: {claim.net}-{d1} {e1:.2f}% vs {claim.net}-{d2} {e2:.2f}%"
