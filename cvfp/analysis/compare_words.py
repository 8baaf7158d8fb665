"""The comparison in words: its number formats (differences, p-values, relative changes,
intervals) and one verdict sentence per compared arm or baseline, from
`cvfp.analysis.compare.summarise`'s numbers. Shared by the comparison report (cvfp/analysis/compare_report.py),
its forest plot and the flow's log; the run report's formats are cvfp/analysis/formats.py.
"""

from __future__ import annotations

from cvfp.analysis.compare_metrics import CompareMetrics, PairedStats
from cvfp.analysis.formats import NA, fmt_ppl, interval_words


def fmt_diff(x: float | None) -> str:
    """A difference in test loss, nats/token."""
    return NA if x is None else f"{x:+.4f}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return NA
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_rel(x: float | None) -> str:
    return NA if x is None else f"{100 * x:+.2f}%"


def fmt_with_ci(x: str, ci: tuple[str, str] | None) -> str:
    """A number and its interval: 'x [lo, hi]'."""
    return x if ci is None else f"{x} [{ci[0]}, {ci[1]}]"


def fmt_ci(pair: tuple[float, float] | None, fmt) -> tuple[str, str] | None:
    """An interval's two ends, each formatted with `fmt`; None stays None."""
    return None if pair is None else (fmt(pair[0]), fmt(pair[1]))


def fmt_level(alpha: float) -> str:
    """The confidence level of (1 - alpha) intervals, e.g. '95%'."""
    return f"{100 * (1 - alpha):g}%"


def verdict_sentence(name: str, e: PairedStats, c: CompareMetrics) -> str:
    """One line per compared row: the verdict word (confirmatory arms) or "interval only",
    then the interval in words."""
    n = e.n_seeds or 0
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    level = fmt_level(c.alpha)
    words = f"{interval_words(e.ppl_ci95)} test perplexity ({level} CI, {seeds})"
    if e.verdict is None:
        return f"{name} vs {e.reference}: interval only: {words}"
    if e.verdict == "not enough seeds":
        return (
            f"{name} vs {e.reference}: not enough seeds: {seeds} paired (a paired test needs "
            f"at least 2; difference so far {fmt_diff(e.diff_mean)} nats/token)"
        )
    head = f"{name} vs {e.reference}: {e.verdict}"
    if e.verdict in ("better", "worse"):
        return f"{head} (Holm p {fmt_p(e.p_holm)}): {words}"
    if e.verdict == "equivalent":
        return (
            f"{head} within ±{100 * c.delta_relative:g}% perplexity (equivalence p "
            f"{fmt_p(e.p_equiv)}): {words}"
        )
    need = "n/a" if e.seeds_needed is None else str(e.seeds_needed)
    return (
        f"{head}: {words}; about {need} seeds would detect ±{100 * c.delta_relative:g}% "
        f"with {100 * c.power:g}% power"
    )


def verdict_lines(c: CompareMetrics) -> list[str]:
    """The verdicts as sentences, arms then baselines (logged by the flow)."""
    lines = []
    for a, e in c.arms.items():
        if e.role == "control":
            lines.append(
                f"{a}: the control (test perplexity {fmt_ppl(e.test_ppl)} over "
                f"{len(e.seeds)} seed{'s' if len(e.seeds) != 1 else ''})"
            )
        else:
            lines.append(verdict_sentence(a, e, c))
    lines += [verdict_sentence(b, e, c) for b, e in c.baselines.items() if e.n_seeds]
    return lines
