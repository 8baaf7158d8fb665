"""The comparison's forest plot: per compared arm, the paired difference of test loss with
its interval over seeds and each seed's bootstrap interval over test conversations."""

from __future__ import annotations

import math

from cvfp.analysis.compare_metrics import CompareMetrics
from cvfp.analysis.compare_words import fmt_level
from cvfp.analysis.report.plots import figure_axes, png_bytes


def plot_forest(c: CompareMetrics) -> bytes | None:
    """Per compared arm: the paired difference in test loss with its t interval over seeds
    (black) and each seed's bootstrap interval over test conversations (colour); the
    ±delta band shaded, zero marked. None when no arm has a paired difference."""
    rows = [(a, e) for a, e in c.arms.items() if e.role != "control" and e.diff_mean is not None]
    if not rows:
        return None
    fig, (ax,) = figure_axes(1, width=10.0, height=1.6 + 0.75 * len(rows))
    ax.axvspan(-c.delta, c.delta, color="tab:green", alpha=0.15, lw=0, label="±delta")
    ax.axvline(0, color="grey", lw=1)
    seeds = c.seeds
    labelled: set[str] = set()
    for k, (_a, e) in enumerate(rows):
        y = len(rows) - 1 - k
        if e.ci95 is not None:
            ax.plot(e.ci95, [y, y], color="black", lw=2.5, solid_capstyle="butt")
        ax.plot([e.diff_mean], [y], "D", color="black", ms=7, label=None if k else "mean, t CI")
        boot = e.bootstrap or {}
        for j, (s, b) in enumerate(boot.items()):
            i = seeds.index(int(s)) if int(s) in seeds else j
            yy = y - 0.12 - 0.08 * i
            label = f"seed {s}" if s not in labelled else None
            labelled.add(s)
            if b.ci95 is not None:
                ax.plot(b.ci95, [yy, yy], color=f"C{i % 10}", lw=1)
            ax.plot([b.diff], [yy], "o", color=f"C{i % 10}", ms=3, label=label)
    ax.set_yticks(range(len(rows)), [a for a, _ in reversed(rows)])
    ax.set(
        title=f"Test loss difference vs {c.control} ({fmt_level(c.alpha)} intervals)",
        xlabel="arm - control, test loss (nats/token); left of 0 is better",
        ylim=(-0.5 - 0.08 * len(seeds), len(rows) - 0.5),
    )
    top = ax.secondary_xaxis("top", functions=(lambda x: 100 * (math.e**x - 1), _log1p_pct))
    top.set_xlabel("relative change of test perplexity (%)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, axis="x")
    return png_bytes(fig)


def _log1p_pct(y):
    import numpy as np

    return np.log1p(np.asarray(y) / 100)
