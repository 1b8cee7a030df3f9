"""How the "why" analyses are drawn: one figure per run and analysis, and the sweep figures
(each number against depth, plain vs ResNet). Numbers come in as the analyses' JSON results;
matplotlib is imported only here, only when a figure is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from resexp.figures import _new_figure, _png

PLAIN, RES = "#d62728", "#1f77b4"


def plot_analysis(name: str, result: dict, title: str) -> bytes | None:
    return {
        "lesion": plot_lesion,
        "gradients": plot_gradients,
        "paths": plot_paths,
        "landscape": plot_landscape,
        "hessian": plot_hessian,
    }[name](result, title)


# --------------------------------------------------------------------------- one run


def plot_lesion(result: dict, title: str) -> bytes:
    fig, (ax, ax2) = _new_figure(9.0, 3.2, ncols=2)
    rows = result["single"]
    xs = list(range(len(rows)))
    ys = [r["accuracy"] if r["accuracy"] is not None else math.nan for r in rows]
    ax.bar(xs, ys, color=["#999999" if r["block"] == 0 else RES for r in rows], width=0.8)
    ax.axhline(result["base_accuracy"], color="k", ls="--", lw=1, label=f"no deletion {result['base_accuracy']:.3f}")
    ax.set(
        xlabel="deleted block (grey: first of a stage)",
        ylabel="test accuracy",
        ylim=(0, 1.02),
        title="one block deleted" + (" (BN recalibrated)" if result["recalibrated"] else ""),
    )
    ax.legend(fontsize=7, loc="lower left")
    ks = [d["k"] for d in result["delete_k"] if d["mean"] is not None]
    means = [d["mean"] for d in result["delete_k"] if d["mean"] is not None]
    stds = [d["std"] for d in result["delete_k"] if d["mean"] is not None]
    ax2.errorbar(
        [0, *ks],
        [result["base_accuracy"], *means],
        yerr=[0, *stds],
        marker="o",
        capsize=3,
        label="k random blocks deleted",
    )
    sw = result["swap_k"]
    if sw["mean"] is not None:
        ax2.errorbar(
            [sw["k"]],
            [sw["mean"]],
            yerr=[sw["std"]],
            marker="s",
            color="#2ca02c",
            ls="none",
            capsize=3,
            label=f"{sw['k']} random swaps",
        )
    ax2.set(xlabel="k", ylabel="test accuracy", ylim=(0, 1.02), title="k deletions / swaps")
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def plot_gradients(result: dict, title: str) -> bytes:
    fig, (ax, ax2) = _new_figure(9.0, 3.2, ncols=2)
    for i, series in enumerate(result["gradient_line"][:2]):
        ts = [-1 + 2 * j / (len(series) - 1) for j in range(len(series))]
        ax.plot(ts, series, lw=0.8, label=f"line {i}")
    ax.set(
        xlabel="t (x = x0 + t u)",
        ylabel="d logit_y / dx . u",
        title=f"gradient along a line: lag-1 corr {result['grad_corr_lag1']:.2f}",
    )
    ax.legend(fontsize=7)
    sp = result["signal"]
    xs = list(range(len(sp["blocks"])))
    ax2.plot(xs, sp["channel_mean_sq"], marker=".", label="channel mean$^2$")
    ax2.plot(xs, sp["channel_var"], marker=".", label="channel variance")
    if any(v is not None for v in sp["branch_var"]):
        ax2.plot(xs, [math.nan if v is None else v for v in sp["branch_var"]], marker=".", label="branch variance")
    ax2.set_yscale("log")
    ax2.set(xlabel="block", title="signal propagation (Brock et al. 2021)")
    ax2.legend(fontsize=7)
    fig.suptitle(title + (" (at initialisation)" if result["at_init"] else " (trained)"), fontsize=9)
    return _png(fig)


def plot_paths(result: dict, title: str) -> bytes:
    fig, (ax, ax2) = _new_figure(9.0, 3.2, ncols=2)
    ks = result["k"]
    ax.semilogy(ks, result["mean_norm_per_path"], marker=".")
    ax.set(
        xlabel="path length k (branches on the path)",
        ylabel="gradient norm of one path",
        title=f"x{result['decay_per_branch']:.2f} per extra branch",
    )
    ax2.bar(ks, result["gradient_fraction_by_length"], color=RES)
    lo, hi = result["k90"]
    ax2.axvspan(lo - 0.5, hi + 0.5, color="#ff7f0e", alpha=0.2, label=f"90 % of the gradient: k = {lo}..{hi}")
    ax2.set(xlabel="path length k", ylabel="share of the total gradient", title=f"{result['n_blocks']} blocks")
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def _contour(ax, result: dict, title: str) -> None:
    import numpy as np

    s = np.asarray(result["surface"], dtype=float)
    span = result["span"]
    coords = np.linspace(-span, span, s.shape[0])
    lo = np.nanmin(s)
    levels = np.linspace(lo, max(min(np.nanmax(s), lo + 5.0), lo + 1e-6), 16)
    ax.contour(coords, coords, s.T, levels=levels, cmap="viridis", linewidths=0.8)
    ax.plot([0], [0], "k+")
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=8)
    ax.grid(False)


def plot_landscape(result: dict, title: str) -> bytes:
    if result["dims"] == 1:
        fig, (ax,) = _new_figure(4.5, 3.2)
        span, s = result["span"], result["surface"]
        ax.plot([-span + 2 * span * i / (len(s) - 1) for i in range(len(s))], s, marker=".")
        ax.set(
            xlabel="alpha (filter-normalised direction)",
            ylabel="test loss",
            title=f"{result['local_minima']} local minima",
        )
    else:
        fig, (ax,) = _new_figure(4.2, 3.8)
        _contour(
            ax,
            result,
            f"{result['local_minima']} local minima, "
            f"{100 * result['nonconvex_fraction']:.0f} % non-convex (r <= span/2)",
        )
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def plot_hessian(result: dict, title: str) -> bytes:
    fig, (ax,) = _new_figure(4.5, 3.2)
    ax.semilogy(
        range(1, len(result["lambda_trace"]) + 1),
        [abs(v) for v in result["lambda_trace"]],
        marker=".",
        label="power iteration",
    )
    if result.get("sgd_stability_limit"):
        ax.axhline(
            result["sgd_stability_limit"],
            color="k",
            ls="--",
            lw=1,
            label=f"2(1+beta)/eta = {result['sgd_stability_limit']:.3g}",
        )
    ax.set(xlabel="iteration", ylabel="|lambda|", title=f"lambda_max = {result['lambda_max']:.4g}")
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


# --------------------------------------------------------------------------- a sweep


def _by_net(points: Sequence[Mapping[str, Any]], key: str):
    """{net label: ([depths], [mean], [std])} over seeds, from rows {net, depth, key}."""
    import numpy as np

    out: dict[str, tuple[list, list, list]] = {}
    for net in sorted({p["net"] for p in points}, key=lambda n: (not n.startswith("plain"), n)):
        depths = sorted({p["depth"] for p in points if p["net"] == net})
        ds, ms, ss = [], [], []
        for d in depths:
            vals = [
                p[key]
                for p in points
                if p["net"] == net and p["depth"] == d and p.get(key) is not None and math.isfinite(p[key])
            ]
            if vals:
                ds.append(d)
                ms.append(float(np.mean(vals)))
                ss.append(float(np.std(vals)))
        out[net] = (ds, ms, ss)
    return out


def _vs_depth(ax, points, key: str, ylabel: str, log: bool = False) -> None:
    for net, (ds, ms, ss) in _by_net(points, key).items():
        if ds:
            ax.errorbar(
                ds, ms, yerr=ss, marker="o", capsize=3, label=net, color=PLAIN if net.startswith("plain") else RES
            )
    if log:
        ax.set_yscale("log")
    ax.set(xlabel="depth", ylabel=ylabel)
    ax.legend(fontsize=7)


def plot_lesion_vs_depth(points, title: str) -> bytes:
    fig, (ax, ax2) = _new_figure(9.0, 3.2, ncols=2)
    _vs_depth(ax, points, "lesion_median_accuracy", "median accuracy, one block deleted")
    ax.set_ylim(0, 1.02)
    _vs_depth(ax2, points, "base_accuracy", "test accuracy, nothing deleted")
    ax2.set_ylim(0, 1.02)
    fig.suptitle(title + " (Veit et al. 2016 §4)", fontsize=9)
    return _png(fig)


def plot_gradients_vs_depth(points, title: str) -> bytes:
    fig, (ax, ax2) = _new_figure(9.0, 3.2, ncols=2)
    _vs_depth(ax, points, "grad_corr_lag1", "lag-1 gradient autocorrelation")
    _vs_depth(ax2, points, "jacobian_log_condition", "log10 sigma_max / sigma_median")
    fig.suptitle(title + " (Balduzzi et al. 2017)", fontsize=9)
    return _png(fig)


def plot_hessian_vs_depth(points, title: str) -> bytes:
    fig, (ax,) = _new_figure(4.8, 3.4)
    _vs_depth(ax, points, "hessian_lambda_max", "lambda_max of the Hessian", log=True)
    limits = {p["sgd_stability_limit"] for p in points if p.get("sgd_stability_limit")}
    for lim in limits:
        ax.axhline(lim, color="k", ls="--", lw=1, label=f"2(1+beta)/eta = {lim:.3g}")
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def plot_landscapes(panels: Sequence[Mapping[str, Any]], title: str) -> bytes | None:
    """A grid of contour panels: one row per net (plain first), one column per depth."""
    panels = [p for p in panels if p["result"].get("dims") == 2]
    if not panels:
        return None
    nets = sorted({p["net"] for p in panels}, key=lambda n: (not n.startswith("plain"), n))
    depths = sorted({p["depth"] for p in panels})
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.3 * len(depths), 2.4 * len(nets)), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(nets), len(depths), squeeze=False)
    for r, net in enumerate(nets):
        for c, depth in enumerate(depths):
            ax = axes[r][c]
            hit = [p for p in panels if p["net"] == net and p["depth"] == depth]
            if not hit:
                ax.set_axis_off()
                continue
            res = hit[0]["result"]
            _contour(ax, res, f"{net}-{depth}: {res['local_minima']} min, {100 * res['nonconvex_fraction']:.0f} % nc")
            ax.tick_params(labelsize=6)
    fig.suptitle(title + " (Li et al. 2018)", fontsize=9)
    return _png(fig)
