"""How the "why" analyses are drawn: one figure per run and analysis, and the sweep figures
(each number against depth, plain vs ResNet), called by each analysis's `plot` and
`plot_vs_depth`. Numbers come in as the analyses' JSON results; matplotlib is imported only
here, only when a figure is drawn.

Colour has one meaning in every figure: plain vs ResNet. Any other key a grid sweeps (weight
decay, projection, ...) is a marker and line style, and every line's legend entry names it. Every
figure of an eval-mode analysis says which BN statistics it used, and every interval drawn is
the one the JSON reports (95 %, over the analysis's sample).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from resexp.reporting.figures import new_figure, png_bytes

PLAIN, RES = "#d62728", "#1f77b4"  # the hues resexp.reporting.figures draws plain and ResNet in
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")


def family_color(plain: bool) -> str:
    return PLAIN if plain else RES


def _bn_note(result: dict) -> str:
    bn = result.get("bn_statistics")
    return f"\nBN statistics: {bn}" if bn else ""


def _ci_err(values: Sequence[float], intervals: Sequence[Sequence[float] | None]) -> list[list[float]]:
    """matplotlib's asymmetric yerr [[below], [above]] from [lo, hi] intervals (0 where none)."""
    below = [v - ci[0] if ci and math.isfinite(v) else 0.0 for v, ci in zip(values, intervals, strict=True)]
    above = [ci[1] - v if ci and math.isfinite(v) else 0.0 for v, ci in zip(values, intervals, strict=True)]
    return [[max(0.0, b) for b in below], [max(0.0, a) for a in above]]


# --------------------------------------------------------------------------- one run


def plot_lesion(result: dict, title: str) -> bytes:
    fig, (ax, ax2) = new_figure(9.0, 3.4, ncols=2)
    rows = result["single"]
    xs = list(range(len(rows)))
    ys = [r["accuracy"] if r["accuracy"] is not None else math.nan for r in rows]
    ax.bar(xs, ys, color=["#999999" if r["block"] == 0 else RES for r in rows], width=0.8)
    ax.errorbar(
        xs, ys, yerr=_ci_err(ys, [r.get("accuracy_ci95") for r in rows]), fmt="none", ecolor="k", lw=0.6, capsize=1.5
    )
    ax.axhline(result["base_accuracy"], color="k", ls="--", lw=1, label=f"no deletion {result['base_accuracy']:.3f}")
    ax.set(
        xlabel="deleted block (grey: first of a stage)",
        ylabel=f"test accuracy ({result.get('examples', '?')} images)",
        ylim=(0, 1.02),
        title="one block deleted (bars: 95 % Wilson interval)",
    )
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7, loc="lower left")
    dk = [d for d in result["delete_k"] if d["mean"] is not None]
    ks = [d["k"] for d in dk]
    means = [d["mean"] for d in dk]
    stds = [d["std"] for d in dk]
    ax2.errorbar([0, *ks], [result["base_accuracy"], *means], yerr=[0, *stds], marker="o", capsize=3, color=RES)
    ax2.plot([], [], marker="o", color=RES, label="k random blocks deleted (mean +- std over draws)")
    sw = result["swap_k"]
    if sw["mean"] is not None:
        ax2.errorbar(
            [sw["k"]],
            [sw["mean"]],
            yerr=[sw["std"]],
            marker="s",
            color="0.3",
            ls="none",
            capsize=3,
            label=f"{sw['k']} random swaps",
        )
    ax2.set(xlabel="k", ylabel="test accuracy", ylim=(0, 1.02), title="k deletions / swaps")
    ax2.title.set_fontsize(8)
    ax2.legend(fontsize=7)
    fig.suptitle(title + _bn_note(result), fontsize=9)
    return png_bytes(fig)


def plot_gradients(result: dict, title: str) -> bytes:
    fig, (ax, ax2) = new_figure(9.0, 3.2, ncols=2)
    for i, series in enumerate(result["gradient_line"][:2]):
        ts = [-1 + 2 * j / (len(series) - 1) for j in range(len(series))]
        ax.plot(ts, series, lw=0.8, ls=LINESTYLES[i], color="0.2" if i else RES, label=f"line {i}")
    se = result.get("grad_corr_lag1_standard_error")
    ax.set(
        xlabel="t (x = x0 + t u)",
        ylabel=r"$\partial\,\mathrm{logit}_y / \partial x \cdot u$",
        title=f"gradient along a line: lag-1 corr {result['grad_corr_lag1']:.2f}"
        + ("" if se is None else f" ± {se:.2f} (s.e., {result.get('lines', '?')} lines)"),
    )
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7)
    sp = result["signal"]
    xs = list(range(len(sp["blocks"])))
    ax2.plot(xs, sp["channel_mean_sq"], marker=".", color=RES, label="channel mean$^2$")
    ax2.plot(xs, sp["channel_var"], marker="s", ms=3, color="0.2", ls="--", label="channel variance")
    if any(v is not None for v in sp["branch_var"]):
        ax2.plot(
            xs,
            [math.nan if v is None else v for v in sp["branch_var"]],
            marker="^",
            ms=3,
            color="0.5",
            ls=":",
            label="branch variance",
        )
    ax2.set_yscale("log")
    ax2.set(xlabel="block", title="signal propagation (Brock et al. 2021)")
    ax2.title.set_fontsize(8)
    ax2.legend(fontsize=7)
    fig.suptitle(title + (" (at initialisation)" if result["at_init"] else " (trained)") + _bn_note(result), fontsize=9)
    return png_bytes(fig)


def plot_paths(result: dict, title: str) -> bytes:
    fig, (ax, ax2) = new_figure(9.0, 3.4, ncols=2)
    ks = result["k"]
    norms = result["mean_norm_per_path"]
    ax.semilogy(
        [k for k, v in zip(ks, norms, strict=True) if v > 0], [v for v in norms if v > 0], marker=".", color=RES
    )
    zero = result.get("zero_gradient_lengths") or []
    for k in zero:
        ax.axvline(k, color="0.6", lw=0.8, ls=":")
    decay = result["decay_per_branch"]
    ax.set(
        xlabel="path length k (branches on the path)",
        ylabel="gradient norm of one path",
        title=("no decay fitted" if decay is None else f"×{decay:.2f} per extra branch")
        + (f" (dotted: k with exactly zero gradient, {len(zero)})" if zero else ""),
    )
    ax.title.set_fontsize(8)
    ax2.bar(ks, result["gradient_fraction_by_length"], color=RES)
    lo, hi = result["k90"]
    ax2.axvspan(lo - 0.5, hi + 0.5, color="0.5", alpha=0.2, label=f"90 % of the gradient: k = {lo}..{hi}")
    ax2.set(
        xlabel="path length k",
        ylabel="share of the total gradient",
        title=f"{result['n_blocks']} blocks, {result.get('examples', '?')} test images",
    )
    ax2.title.set_fontsize(8)
    ax2.legend(fontsize=7)
    fig.suptitle(title + _bn_note(result), fontsize=9)
    return png_bytes(fig)


def _log_levels(lo: float, hi: float, n: int = 15):
    import numpy as np

    lo = max(lo, 1e-6)
    hi = max(hi, lo * 1.0001)
    return np.geomspace(lo, hi, n)


def _loss_colorbar(fig, filled, ax, label: str) -> None:
    """A colour bar for log-scaled losses, ticked at the decades it spans (plain numbers)."""
    import math as m

    lo, hi = filled.levels[0], filled.levels[-1]
    ticks = [10.0**k for k in range(m.floor(m.log10(lo)), m.ceil(m.log10(hi)) + 1) if lo <= 10.0**k <= hi]
    bar = fig.colorbar(filled, ax=ax, label=label, shrink=0.8, ticks=ticks or None)
    if ticks:
        bar.ax.set_yticklabels([f"{t:g}" for t in ticks])
    bar.ax.minorticks_off()


def _contour(ax, result: dict, norm=None, levels=None):
    """Filled contours of the loss on a log colour scale (`norm` shared across panels), with the
    trained weights at the centre (+). Returns the mappable for a colour bar."""
    import numpy as np
    from matplotlib.colors import LogNorm

    s = np.asarray([[math.nan if v is None else v for v in row] for row in result["surface"]], dtype=float)
    span = result["span"]
    coords = np.linspace(-span, span, s.shape[0])
    if levels is None:
        levels = _log_levels(np.nanmin(s), np.nanmax(s))
    norm = norm or LogNorm(vmin=levels[0], vmax=levels[-1])
    s = np.clip(np.nan_to_num(s, nan=levels[-1]), levels[0], levels[-1])
    filled = ax.contourf(coords, coords, s.T, levels=levels, norm=norm, cmap="viridis")
    ax.contour(coords, coords, s.T, levels=levels, colors="k", linewidths=0.3, alpha=0.5)
    ax.plot([0], [0], "w+", ms=8, mew=1.5)
    ax.set_aspect("equal")
    ax.grid(False)
    return filled


def _landscape_stats(result: dict) -> str:
    def ci(key, fmt):
        v = result.get(f"{key}_ci95")
        return "" if not v else f" [{format(v[0], fmt)}, {format(v[1], fmt)}]"

    return (
        f"{result['local_minima']}{ci('local_minima', 'g')} local minima, "
        f"{100 * result['nonconvex_fraction']:.0f} %"
        + (
            f" [{100 * result['nonconvex_fraction_ci95'][0]:.0f}, {100 * result['nonconvex_fraction_ci95'][1]:.0f}]"
            if result.get("nonconvex_fraction_ci95")
            else ""
        )
        + " non-convex"
    )


def plot_landscape(result: dict, title: str) -> bytes:
    if result["dims"] == 1:
        fig, (ax,) = new_figure(4.8, 3.4)
        span, s = result["span"], result["surface"]
        ax.plot([-span + 2 * span * i / (len(s) - 1) for i in range(len(s))], s, marker=".", color=RES)
        ax.set_yscale("log")
        ax.set(
            xlabel="alpha (filter-normalised direction)",
            ylabel=f"test loss ({result['examples']} images)",
            title=f"{result['local_minima']} local minima",
        )
    else:
        fig, (ax,) = new_figure(4.8, 4.4)
        filled = _contour(ax, result)
        _loss_colorbar(fig, filled, ax, f"test loss ({result['examples']} images, log scale)")
        ax.set(xlabel="alpha (direction 1)", ylabel="beta (direction 2)")
        note = "\n(95 % intervals; non-convex: of the points within r <= span/2)"
        ax.set_title(_landscape_stats(result) + note, fontsize=7)
    fig.suptitle(title + _bn_note(result), fontsize=9)
    return png_bytes(fig)


def plot_hessian(result: dict, title: str) -> bytes:
    fig, (ax,) = new_figure(4.8, 3.4)
    ax.semilogy(
        range(1, len(result["lambda_trace"]) + 1),
        [abs(v) for v in result["lambda_trace"]],
        marker=".",
        color=RES,
        label="power iteration",
    )
    ci = result.get("lambda_max_ci95")
    if ci:
        ax.axhspan(max(ci[0], 1e-12), ci[1], color=RES, alpha=0.15, lw=0, label="95 % interval over the examples")
    if result.get("sgd_stability_limit"):
        ax.axhline(
            result["sgd_stability_limit"],
            color="k",
            ls="--",
            lw=1,
            label=rf"SGD limit $2(1+\beta)/\eta$ = {result['sgd_stability_limit']:.3g}",
        )
    ax.set(
        xlabel="iteration",
        ylabel=r"$|\lambda|$",
        title=rf"$\lambda_{{\max}}$ = {result['lambda_max']:.4g} ({result.get('examples', '?')} test images)",
    )
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7)
    fig.suptitle(title + _bn_note(result), fontsize=9)
    return png_bytes(fig)


# --------------------------------------------------------------------------- a sweep


def _lines(points: Sequence[Mapping[str, Any]]) -> list[str]:
    """The line labels in drawing order: plain first, then by label."""
    return sorted({p["net"] for p in points}, key=lambda n: (not _is_plain(points, n), n))


def _is_plain(points: Sequence[Mapping[str, Any]], net: str) -> bool:
    return any(p["plain"] for p in points if p["net"] == net)


def _styles(points: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per line: colour = family; marker and line style = the line's rank within its family
    (the other swept keys), so two lines never share a look."""
    out, rank = {}, {True: 0, False: 0}
    for net in _lines(points):
        plain = _is_plain(points, net)
        i = rank[plain]
        rank[plain] += 1
        out[net] = {
            "color": family_color(plain),
            "marker": MARKERS[i % len(MARKERS)],
            "ls": LINESTYLES[i % len(LINESTYLES)],
        }
    return out


def _by_net(points: Sequence[Mapping[str, Any]], key: str, ci_key: str | None = None):
    """{net label: ([depths], [mean], [err below], [err above])}: the mean over seeds, with the std
    over seeds, or, for a single run, the interval its analysis reports."""
    import numpy as np

    out: dict[str, tuple[list, list, list, list]] = {}
    for net in _lines(points):
        ds, ms, lo, hi = [], [], [], []
        for d in sorted({p["depth"] for p in points if p["net"] == net}):
            at = [p for p in points if p["net"] == net and p["depth"] == d]
            vals = [p[key] for p in at if p.get(key) is not None and math.isfinite(p[key])]
            if not vals:
                continue
            m = float(np.mean(vals))
            ci = at[0].get(ci_key) if ci_key and len(at) == 1 else None
            if ci:
                below, above = max(0.0, m - ci[0]), max(0.0, ci[1] - m)
            else:
                below = above = float(np.std(vals))
            ds.append(d)
            ms.append(m)
            lo.append(below)
            hi.append(above)
        out[net] = (ds, ms, lo, hi)
    return out


def _vs_depth(ax, points, key: str, ylabel: str, log: bool = False, ci_key: str | None = None) -> None:
    styles = _styles(points)
    for net, (ds, ms, lo, hi) in _by_net(points, key, ci_key).items():
        if ds:
            ax.errorbar(ds, ms, yerr=[lo, hi], capsize=3, label=net, **styles[net])
    if log:
        ax.set_yscale("log")
    ax.set(xlabel="depth", ylabel=ylabel)
    ax.legend(fontsize=7)


def _bn_of(points, key: str) -> str:
    kinds = sorted({p[key] for p in points if p.get(key)})
    return f"BN statistics: {'; '.join(kinds)}" if kinds else ""


def _errorbar_note(points) -> str:
    one_run = all(sum(1 for q in points if q["net"] == p["net"] and q["depth"] == p["depth"]) == 1 for p in points)
    return "error bars: 95 % interval over the sample" if one_run else "error bars: std over seeds"


def plot_lesion_vs_depth(points, title: str) -> bytes:
    fig, (ax, ax2) = new_figure(9.0, 3.4, ncols=2)
    _vs_depth(
        ax,
        points,
        "lesion_median_accuracy",
        "median accuracy, one block deleted",
        ci_key="median_single_accuracy_ci95",
    )
    ax.set_ylim(0, 1.02)
    _vs_depth(ax2, points, "base_accuracy", "test accuracy, nothing deleted", ci_key="base_accuracy_ci95")
    ax2.set_ylim(0, 1.02)
    notes = "; ".join(n for n in (_errorbar_note(points), _bn_of(points, "lesion_bn_statistics")) if n)
    fig.suptitle(f"{title} (Veit et al. 2016 §4)\n{notes}", fontsize=9)
    return png_bytes(fig)


def plot_gradients_vs_depth(points, title: str) -> bytes:
    fig, (ax, ax2) = new_figure(9.0, 3.4, ncols=2)
    _vs_depth(ax, points, "grad_corr_lag1", "lag-1 gradient autocorrelation")
    _vs_depth(ax2, points, "jacobian_log_condition", r"$\log_{10}\,\sigma_{\max} / \sigma_{\mathrm{median}}$")
    fig.suptitle(f"{title} (Balduzzi et al. 2017)\nBN statistics recomputed on training images", fontsize=9)
    return png_bytes(fig)


def plot_hessian_vs_depth(points, title: str) -> bytes:
    fig, (ax,) = new_figure(5.2, 3.8)
    ci_points = [
        {
            **p,
            "hessian_ci": [p["hessian_lambda_max"] - 1.96 * se, p["hessian_lambda_max"] + 1.96 * se]
            if (se := p.get("lambda_max_standard_error")) is not None and p.get("hessian_lambda_max") is not None
            else None,
        }
        for p in points
    ]
    _vs_depth(ax, ci_points, "hessian_lambda_max", r"$\lambda_{\max}$ of the Hessian", log=True, ci_key="hessian_ci")
    limits = sorted({p["sgd_stability_limit"] for p in points if p.get("sgd_stability_limit")})
    for i, lim in enumerate(limits):
        ax.axhline(lim, color="k", ls=LINESTYLES[i % len(LINESTYLES)], lw=1, label=rf"$2(1+\beta)/\eta$ = {lim:.3g}")
    ax.legend(fontsize=7)
    notes = "; ".join(n for n in (_errorbar_note(points), _bn_of(points, "hessian_bn_statistics")) if n)
    fig.suptitle(f"{title}\n{notes}", fontsize=9)
    return png_bytes(fig)


def plot_landscapes(panels: Sequence[Mapping[str, Any]], title: str) -> bytes | None:
    """A grid of filled-contour panels, one row per net (plain first), one column per depth, on one
    log colour scale (one colour bar), so a deep plain net's steep surface stays readable."""
    panels = [p for p in panels if p["result"].get("dims") == 2]
    if not panels:
        return None
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    nets = sorted({p["net"] for p in panels}, key=lambda n: (not any(q["plain"] for q in panels if q["net"] == n), n))
    depths = sorted({p["depth"] for p in panels})
    surfaces = [np.asarray([[math.nan if v is None else v for v in r] for r in p["result"]["surface"]]) for p in panels]
    levels = _log_levels(min(np.nanmin(s) for s in surfaces), max(np.nanmax(s) for s in surfaces), 17)
    norm = LogNorm(vmin=levels[0], vmax=levels[-1])
    fig = Figure(figsize=(2.6 * len(depths) + 1.0, 2.7 * len(nets) + 0.9), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(nets), len(depths), squeeze=False)
    filled = None
    for r, net in enumerate(nets):
        for c, depth in enumerate(depths):
            ax = axes[r][c]
            hit = [p for p in panels if p["net"] == net and p["depth"] == depth]
            if not hit:
                ax.set_axis_off()
                continue
            res = hit[0]["result"]
            filled = _contour(ax, res, norm=norm, levels=levels)
            color = family_color(hit[0]["plain"])
            ax.set_title(
                f"{net}-{depth}\n{res['local_minima']} min, {100 * res['nonconvex_fraction']:.0f} % nc",
                fontsize=7,
                color=color,
            )
            ax.tick_params(labelsize=6)
    if filled is not None:
        _loss_colorbar(fig, filled, axes, "test loss (log scale, one scale for every panel)")
    bn = sorted({p["result"].get("bn_statistics") for p in panels if p["result"].get("bn_statistics")})
    fig.suptitle(
        f"{title} (Li et al. 2018)\nmin: local minima, grid points below all 8 neighbours\n"
        "nc: non-convex share, points within r <= span/2 with a negative curvature"
        + (f"\nBN statistics: {'; '.join(bn)}" if bn else ""),
        fontsize=8,
    )
    return png_bytes(fig)
