"""Every figure of a sweep report: how a number is *drawn*, apart from how it is computed.

`records` holds the numbers (runs, cells, groups; `report` builds them); each `plot_*`
here takes a `Report` and returns PNG bytes (or None when the sweep has nothing to show),
so a figure can be rebuilt, written to disk or sent to TensorBoard alike. matplotlib is
imported only here, and only when a figure is drawn.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from resexp.reporting.colors import family_color, family_shades
from resexp.reporting.records import (
    DEPTH_KEY,
    SHORTCUT_KEY,
    WD_KEY,
    GridCell,
    Report,
    RunRow,
    cell_runs,
    eval_bn_note,
    finite,
    format_number,
    format_value,
    group_cells,
    group_label,
    mean_std,
    net_name,
    qualifiers,
    sort_key,
    to_float,
)

# Other swept keys (weight decay, projection, ...) get a line style and a marker each; colour is the family's.
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_UNKNOWN_FAMILY = "0.35"  # a group mixing plain and residual nets (shortcut not swept, runs disagree)


def _family(runs: Sequence[RunRow], group: Mapping[str, Any]) -> bool | None:
    """True: residual, False: plain, None: a mix."""
    name = net_name(runs, group)
    return None if name == "net" else not name.startswith("plain")


def _hue(family: bool | None) -> str:
    return _UNKNOWN_FAMILY if family is None else family_color(family)


def _group_styles(groups: Mapping[tuple, list[GridCell]], group_keys: Sequence[str]) -> dict[tuple, dict[str, Any]]:
    """Colour by family (`resexp.reporting.colors`: plain blue, ResNet orange); the other swept keys (one
    combination per group, e.g. a weight decay) by line style and marker. With nothing else
    swept, plain is dashed and ResNet solid, as in He et al."""
    others = [k for k in group_keys if k != SHORTCUT_KEY]
    combos = sorted(
        {tuple(dict(zip(group_keys, g, strict=True))[k] for k in others) for g in groups},
        key=lambda t: tuple(sort_key(v) for v in t),
    )
    styles: dict[tuple, dict[str, Any]] = {}
    for gkey, cells in groups.items():
        group = dict(zip(group_keys, gkey, strict=True))
        family = _family(cell_runs(cells), group)
        if others:
            i = combos.index(tuple(group[k] for k in others))
            linestyle, marker = _LINESTYLES[i % len(_LINESTYLES)], _MARKERS[i % len(_MARKERS)]
        else:
            linestyle, marker = ("--" if family is False else "-"), "o"
        styles[gkey] = {"color": _hue(family), "linestyle": linestyle, "marker": marker}
    return styles


def _legend_below(ax, handles=None, labels=None, **kwargs):
    """A legend under the axes, outside them, so it never covers a line."""
    handles, labels = (handles, labels) if handles is not None else ax.get_legend_handles_labels()
    ncols = min(len(handles), 3) or 1
    return ax.legend(handles, labels, frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.13),
                     ncols=ncols, **kwargs)  # fmt: skip


def _slice(cells: Sequence[GridCell], report: Report) -> tuple[list[GridCell], str]:
    """The cells for per-depth line plots: when keys other than depth/shortcut/seed
    are swept (weight decay, projection...), one slice of them (the middle value
    combination), so the plot stays readable; returns a description of the slice."""
    others = [k for k in report.group_keys if k != SHORTCUT_KEY]
    if not others:
        return list(cells), ""
    combos = sorted({tuple(c.key.get(k) for k in others) for c in cells}, key=lambda t: tuple(sort_key(v) for v in t))
    pick = combos[len(combos) // 2]
    chosen = [c for c in cells if tuple(c.key.get(k) for k in others) == pick]
    return chosen, ", ".join(qualifiers(dict(zip(others, pick, strict=True))))


def new_figure(width: float, height: float, ncols: int = 1):
    """A figure and its axes, drawn off-screen: every report and analysis figure shares the look."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes without a timestamp or version, so a redrawn figure is the same file."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _maybe_log(ax, values: Iterable[float]) -> bool:
    """Log y when the positive values span more than a decade; plain-number tick
    labels (0.03, 0.2, 1) instead of 3x10^-2."""
    pos = [v for v in finite(values) if v > 0]
    if not (pos and max(pos) / min(pos) > 10):
        return False
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    few_decades = max(pos) / min(pos) < 300

    def minor(y: float, _: int) -> str:
        mant = y / 10 ** math.floor(math.log10(y) + 1e-9)
        return f"{y:g}" if few_decades and round(mant) in (2, 3, 5) and abs(mant - round(mant)) < 1e-6 else ""

    ax.yaxis.set_minor_formatter(FuncFormatter(minor))
    return True


def _mean_curve(runs: Sequence[RunRow], key: str = "train_loss") -> tuple[list[float], list[float]]:
    """Mean over runs of a history series, aligned on step (completed runs if any)."""
    use = [r for r in runs if r.status == "completed"] or list(runs)
    by_step: dict[float, list[float]] = {}
    for r in use:
        hist = r.summary.get("history") or {}
        steps, values = hist.get("step") or [], hist.get(key) or []
        for s, v in zip(steps, values, strict=False):
            v = to_float(v)
            if math.isfinite(v):
                by_step.setdefault(float(s), []).append(v)
    steps = sorted(by_step)
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def _depth_shades(lines: Sequence[tuple[bool | None, Any]]) -> dict[tuple[bool | None, Any], Any]:
    """(family, depth) -> colour: the family's hue, lighter for shallower nets."""
    out: dict[tuple[bool | None, Any], Any] = {}
    for family in {f for f, _ in lines}:
        depths = sorted({d for f, d in lines if f == family}, key=sort_key)
        shades = family_shades(family, len(depths)) if family is not None else [_UNKNOWN_FAMILY] * len(depths)
        out.update({(family, d): shade for d, shade in zip(depths, shades, strict=True)})
    return out


def _several_seeds(report: Report) -> bool:
    """Whether any point of the figures pools several runs (else "± std over seeds" would be a lie)."""
    return max((c.n for c in report.cells), default=1) > 1


def plot_loss_vs_depth(report: Report, title: str) -> bytes:
    """`draw_loss_vs_depth` as PNG bytes."""
    return png_bytes(draw_loss_vs_depth(report, title))


def draw_loss_vs_depth(report: Report, title: str):
    """Panel 1: final training loss vs depth per group (mean ± std over seeds, diverged cells
    as x at the top): colour = family, line style and marker = the other swept keys. Panel 2:
    training-loss curves per depth: colour = family, lighter for shallower. Legends sit under
    the panels. Returns the matplotlib Figure."""
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    gkeys = report.group_keys
    groups = group_cells(report.cells, gkeys)
    styles = _group_styles(groups, gkeys)
    fig, (ax, ax2) = new_figure(13.0, 5.2, ncols=2)

    all_values: list[float] = []
    depths_seen: set = set()
    any_diverged = False
    top = blended_transform_factory(ax.transData, ax.transAxes)
    for gkey, cells in groups.items():
        group = dict(zip(gkeys, gkey, strict=True))
        st = styles[gkey]
        label = group_label(group, cell_runs(cells))
        xs = [float(c.key[DEPTH_KEY]) for c in cells]
        depths_seen.update(xs)
        means = [c.mean["final_train_loss"] for c in cells]
        stds = [c.std["final_train_loss"] for c in cells]
        ok = [i for i, m in enumerate(means) if math.isfinite(m)]
        x_ok = [xs[i] for i in ok]
        m_ok = [means[i] for i in ok]
        lo = [max(means[i] - stds[i], means[i] * 0.05) if means[i] > 0 else means[i] - stds[i] for i in ok]
        hi = [means[i] + stds[i] for i in ok]
        all_values += m_ok + lo + hi
        ax.plot(x_ok, m_ok, ms=5, lw=2, label=label, **st)
        if len(x_ok) > 1:
            ax.fill_between(x_ok, lo, hi, color=st["color"], alpha=0.18, lw=0)
        else:
            below = [m - lo_ for m, lo_ in zip(m_ok, lo, strict=True)]
            above = [h - m for m, h in zip(m_ok, hi, strict=True)]
            ax.errorbar(x_ok, m_ok, yerr=[below, above], color=st["color"], capsize=3, lw=1)
        for c, x in zip(cells, xs, strict=True):
            if c.n_diverged:
                any_diverged = True
                ax.plot([x], [0.96], marker="x", ms=9, mew=2.5, color=st["color"], transform=top, clip_on=False)
                ax.annotate(f"{c.n_diverged}/{c.n}", (x, 0.96), xycoords=top, xytext=(6, -3),
                            textcoords="offset points", fontsize=8, color=st["color"])  # fmt: skip
    is_log = _maybe_log(ax, all_values)
    if any_diverged:  # headroom so the diverged marks sit above every data point
        lo_, hi_ = ax.get_ylim()
        ax.set_ylim(lo_, hi_ * (hi_ / lo_) ** 0.12 if is_log and lo_ > 0 else hi_ + 0.12 * (hi_ - lo_))
    depths = sorted(depths_seen)
    ax.set_xticks(depths)
    ax.set_xticklabels([format_number(d) for d in depths])
    if depths:
        pad = (depths[-1] - depths[0]) * 0.06 or 1.0
        ax.set_xlim(depths[0] - pad, depths[-1] + pad)
    ax.set_xlabel("depth (weighted layers)")
    ax.set_ylabel("final training loss")
    spread = "mean ± std over seeds" if _several_seeds(report) else "one run per point"
    ax.set_title(f"Final training loss vs depth ({spread})", fontsize=11)
    handles, labels = ax.get_legend_handles_labels()
    if any_diverged:
        handles.append(Line2D([], [], ls="", marker="x", mew=2.5, ms=8, color="0.3"))
        labels.append("diverged (k/n seeds)")
    _legend_below(ax, handles, labels)

    # Panel 2: He et al. Fig. 6 view.
    colors = _depth_shades([(_family(c.runs, c.key), c.key[DEPTH_KEY]) for c in report.cells])
    curve_values: list[float] = []
    lines = []
    shown_cells, slice_desc = _slice(report.cells, report)
    shown = {id(c) for c in shown_cells}
    for gkey, cells in groups.items():
        group = dict(zip(gkeys, gkey, strict=True))
        for c in cells:
            if id(c) not in shown:
                continue
            steps, loss = _mean_curve(c.runs)
            if not steps:
                continue
            curve_values += loss
            net = {k: v for k, v in group.items() if k == SHORTCUT_KEY}  # the rest is the slice (title)
            label = group_label(net, c.runs, depth=c.key[DEPTH_KEY])
            if c.all_diverged:
                label += " (diverged)"
            color = colors[(_family(c.runs, c.key), c.key[DEPTH_KEY])]
            lines.append((label, steps, loss, color, "--" if _family(c.runs, c.key) is False else "-"))
    for label, steps, loss, color, ls in lines:
        ax2.plot(steps, loss, color=color, ls=ls, lw=1.6, label=label)
    _maybe_log(ax2, curve_values)
    ax2.set_xlabel("step")
    ax2.set_ylabel("training loss")
    where = f" ({slice_desc})" if slice_desc else ""
    ax2.set_title(
        f"Training loss during training{where}" + (", mean over seeds" if _several_seeds(report) else ""), fontsize=11
    )
    if lines:
        if len(lines) <= 15:
            _legend_below(ax2)
        else:  # too many to list: the shades stand for depth, light to dark
            depth_list = sorted({d for _, d in colors}, key=sort_key)
            handles = [Line2D([], [], color=_hue(f), ls="--" if f is False else "-", lw=2) for f in sorted(
                {f for f, _ in colors}, key=lambda f: (f is None, f))]  # fmt: skip
            labels = [group_label({SHORTCUT_KEY: f} if f is not None else {}, report.runs) for f in sorted(
                {f for f, _ in colors}, key=lambda f: (f is None, f))]  # fmt: skip
            labels = [f"{lab}, depth {format_value(depth_list[0])} (light) to {format_value(depth_list[-1])} (dark)"
                      for lab in labels]  # fmt: skip
            _legend_below(ax2, handles, labels)
    else:
        ax2.text(0.5, 0.5, "no training history in the summaries", ha="center", va="center", transform=ax2.transAxes)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    return fig


def _diag(run: RunRow) -> dict[str, Any]:
    d = run.summary.get("diagnostics")
    return d if isinstance(d, dict) else {}


def _mean_vector(runs: Sequence[RunRow], name: str) -> list[float]:
    """Elementwise mean of a per-layer diagnostic over runs (shortest length)."""
    vectors = [[to_float(v) for v in _diag(r).get(name) or []] for r in runs]
    vectors = [v for v in vectors if v]
    if not vectors:
        return []
    n = min(len(v) for v in vectors)
    out = []
    for i in range(n):
        vals = finite(v[i] for v in vectors)
        out.append(sum(vals) / len(vals) if vals else math.nan)
    return out


def plot_response_std(report: Report, title: str) -> bytes | None:
    """He et al. Fig. 7: std of 3x3-layer responses (after BN, before add/ReLU)
    by layer index (top) and sorted in descending order (bottom); colour = family,
    lighter for shallower nets, plain dashed."""
    lines = []
    cells, slice_desc = _slice(report.cells, report)
    for c in cells:
        runs = c.completed or c.runs
        vec = _mean_vector(runs, "response_std")
        if not vec:
            continue
        group = {k: v for k, v in c.key.items() if k == SHORTCUT_KEY}
        depth = c.key.get(DEPTH_KEY, runs[0].config(DEPTH_KEY))
        lines.append((group_label(group, runs, depth=depth), depth, _family(runs, group), vec))
    if not lines:
        return None
    lines.sort(key=lambda line: (line[2] is not False, sort_key(line[1])))  # plain first, then by depth
    colors = _depth_shades([(family, d) for _, d, family, _ in lines])
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 8.0), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1)
    for label, depth, family, vec in lines:
        ls = "--" if family is False else "-"
        xs = list(range(1, len(vec) + 1))
        ax1.plot(xs, vec, ls=ls, color=colors[(family, depth)], lw=1.5, label=label)
        ax2.plot(xs, sorted(finite(vec), reverse=True), ls=ls, color=colors[(family, depth)], lw=1.5, label=label)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_ylabel("std of response")
    ax1.set_xlabel("layer index (original order, stem first)")
    ax2.set_xlabel("layer index (sorted by magnitude)")
    where = f" [{slice_desc}]" if slice_desc else ""
    ax1.set_title(f"Std of 3×3 layer responses (after BN, before add/ReLU){where}; plain dashed, ResNet solid",
                  fontsize=10)  # fmt: skip
    ax1.legend(frameon=False, fontsize=8, ncols=min(len(lines), 4), loc="lower left", bbox_to_anchor=(0.0, 1.08))
    fig.suptitle(title, fontsize=13, fontweight="bold")
    return png_bytes(fig)


def plot_residual_ratio_vs_wd(report: Report, title: str) -> bytes | None:
    """Mean residual ratio (over blocks, then over seeds) vs weight decay."""
    if WD_KEY not in report.cell_keys:
        return None
    other = [k for k in report.cell_keys if k != WD_KEY]
    series: dict[tuple, list[tuple[float, float, float]]] = {}
    labels: dict[tuple, str] = {}
    families: dict[tuple, bool | None] = {}
    for c in report.cells:
        runs = c.completed or c.runs
        per_run = []
        for r in runs:
            vals = finite(to_float(v) for v in _diag(r).get("residual_ratio") or [])
            if vals:
                per_run.append(sum(vals) / len(vals))
        if not per_run:
            continue
        mean, std = mean_std(per_run)
        okey = tuple(c.key.get(k) for k in other)
        group = dict(zip(other, okey, strict=True))
        depth = group.pop(DEPTH_KEY, None)
        labels[okey] = group_label(group, runs, depth=depth)
        families[okey] = _family(runs, group)
        series.setdefault(okey, []).append((float(c.key[WD_KEY]), mean, std))
    if not series:
        return None
    fig, (ax,) = new_figure(7.5, 5.6)
    depth_pos = other.index(DEPTH_KEY) if DEPTH_KEY in other else None
    colors = _depth_shades([(families[k], k[depth_pos] if depth_pos is not None else None) for k in series])
    rest = [i for i, k in enumerate(other) if k not in (DEPTH_KEY, SHORTCUT_KEY)]  # by line style and marker
    combos = sorted({tuple(k[i] for i in rest) for k in series}, key=lambda t: tuple(sort_key(v) for v in t))
    wds = sorted({p[0] for pts in series.values() for p in pts})
    for okey, pts in sorted(series.items(), key=lambda kv: tuple(sort_key(v) for v in kv[0])):
        pts.sort()
        xs, ms, ss = zip(*pts, strict=True)
        color = colors[(families[okey], okey[depth_pos] if depth_pos is not None else None)]
        j = combos.index(tuple(okey[i] for i in rest))
        ax.errorbar(xs, ms, yerr=ss, marker=_MARKERS[j % len(_MARKERS)], ls=_LINESTYLES[j % len(_LINESTYLES)],
                    ms=5, lw=1.8, capsize=3, color=color, label=labels[okey])  # fmt: skip
    positive = [w for w in wds if w > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1e-5)
    ax.set_xticks(wds)
    ax.set_xticklabels([format_number(w) for w in wds])
    ax.set_xlabel("weight decay (symlog)")
    ax.set_ylabel("mean residual ratio ‖F(x)‖ / ‖x‖")
    ax.set_title(
        "Residual ratio vs weight decay (mean over blocks" + ("; ± std over seeds)" if _several_seeds(report) else ")"),
        fontsize=10,
    )
    _legend_below(ax)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    return png_bytes(fig)


def plot_test_error_vs_paper(report: Report, comparison, title: str) -> bytes:
    """Test error (%) vs depth per group (mean ± std over seeds), the paper's points on top:
    black stars for its published numbers, a black bar for its mean ± std where it has one."""
    gkeys = report.group_keys
    groups = group_cells(report.cells, gkeys)
    styles = _group_styles(groups, gkeys)
    extra = {id(c): e for c, e in zip(report.cells, comparison.per_cell, strict=True)}
    fig, (ax,) = new_figure(7.5, 5.6)
    depths: set[float] = set()
    for gkey, cells in groups.items():
        pts = [
            (float(c.key[DEPTH_KEY]), extra[id(c)]["test_error_mean"], extra[id(c)]["test_error_std"])
            for c in cells
            if DEPTH_KEY in c.key and math.isfinite(extra[id(c)]["test_error_mean"])
        ]
        if not pts:
            continue
        xs, ms, ss = zip(*pts, strict=True)
        depths.update(xs)
        label = group_label(dict(zip(gkeys, gkey, strict=True)), cell_runs(cells)) + " (yours)"
        ax.errorbar(xs, ms, yerr=ss, ms=5, lw=1.8, capsize=3, label=label, **styles[gkey])
    rows = [r for r in comparison.reference.rows if r.depth in depths]
    if rows:
        ax.plot(
            [r.depth for r in rows],
            [r.error for r in rows],
            ls="",
            marker="*",
            ms=13,
            color="black",
            label="He et al. 2016, Table 6" + (" (110: best of 5)" if any(r.mean is not None for r in rows) else ""),
        )
        for r in rows:
            if r.mean is not None:
                ax.errorbar(
                    [r.depth * 1.03],
                    [r.mean],
                    yerr=[r.std],
                    marker="_",
                    ms=12,
                    color="black",
                    capsize=4,
                    lw=1.2,
                    label=f"paper mean ± std ({r.runs} runs)",
                )
    ticks = sorted(depths)
    if ticks and ticks[-1] / max(ticks[0], 1) > 20:
        ax.set_xscale("log")
    ax.set_xticks(ticks)
    ax.set_xticklabels([format_number(d) for d in ticks])
    ax.set_xlabel("depth (weighted layers)")
    ax.set_ylabel("test error (%)")
    ax.set_title(
        f"Test error vs depth: yours (mean ± std over seeds; {eval_bn_note(report.runs)}) and the paper's",
        fontsize=10,
    )
    _legend_below(ax)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    return png_bytes(fig)
