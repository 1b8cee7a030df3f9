"""The study's two hues, defined once: plain nets blue, residual nets (ResNets) orange.

Every figure (`resexp.reporting.figures`, `resexp.analysis`) and every TensorBoard chart that compares
the two families draws plain in `PLAIN_COLOR` and residual in `RESNET_COLOR`; any other swept
key (weight decay, projection, depth within a family) is shown by line style, marker, panel or
the lightness of the family's hue, never by another hue.

TensorBoard picks a run's colour itself: the n-th run of its run list (ordered by the time of
the run's first event, then by name) gets ``TENSORBOARD_PALETTE[n % 7]``. The two hues are
taken from that palette, and the report writes one TensorBoard run per family whose first event
carries a fixed early time (`family_position`), so the residual run is always first (orange)
and the plain run second (blue) in a sweep's dashboard.
"""

from __future__ import annotations

__all__ = [
    "PLAIN_COLOR",
    "RESNET_COLOR",
    "TENSORBOARD_PALETTE",
    "family_color",
    "family_position",
    "family_shades",
]

TENSORBOARD_PALETTE = ("#ff7043", "#0077bb", "#cc3311", "#33bbee", "#ee3377", "#009988", "#bbbbbb")
"""Run colours of TensorBoard's Custom Scalars and Images dashboards, in run-list order (TensorBoard
2.21, `tensorboardColorBlindAssist`; tests/test_dashboard.py checks it against the installed one)."""

RESNET_COLOR = TENSORBOARD_PALETTE[0]  # orange
PLAIN_COLOR = TENSORBOARD_PALETTE[1]  # blue


def family_color(shortcut: bool) -> str:
    """The hue of a family: `RESNET_COLOR` for nets with shortcuts, `PLAIN_COLOR` without."""
    return RESNET_COLOR if shortcut else PLAIN_COLOR


def family_position(shortcut: bool) -> int:
    """Where a family's run must sit in TensorBoard's run list to be drawn in its hue."""
    return TENSORBOARD_PALETTE.index(family_color(shortcut))


def family_shades(shortcut: bool, n: int) -> list[tuple[float, float, float]]:
    """`n` shades of the family's hue, light to dark (e.g. shallow to deep): the hue says the
    family, the lightness the rank. One value gives the hue itself."""
    import matplotlib.colors as mcolors

    base = mcolors.to_rgb(family_color(shortcut))
    if n <= 1:
        return [base] * n
    shades = []
    for i in range(n):
        t = i / (n - 1)  # 0: lightest, 1: darkest
        mix = 0.55 * (1 - t) - 0.35 * t  # > 0 towards white, < 0 towards black
        target = 1.0 if mix > 0 else 0.0
        shades.append(tuple(c + abs(mix) * (target - c) for c in base))
    return shades  # type: ignore[return-value]
