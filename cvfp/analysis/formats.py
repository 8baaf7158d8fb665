"""One formatter per kind of number, shared by the run and comparison reports and the Prefect
artifacts (no training stage imports it: the metrics hold numbers). `None` prints as "n/a"
(not measured)."""

from __future__ import annotations

import math
from typing import Any

NA = "n/a"


def fmt_count(converged: int, total: int) -> str:
    """Convergence as percent and count, e.g. `27.2% (1741/6400)` (metrics/phase1.json's
    `converged` and `total`). The percent is 100 * rate, rate = converged / total."""
    pct = 100 * (converged / total) if total else 0.0
    return f"{pct:.1f}% ({converged}/{total})"


def fmt_er(er: float, dim: int) -> str:
    """Effective rank as `627.29/768 = 81.7%`."""
    return f"{er:.2f}/{dim} = {100 * er / dim:.1f}%" if dim else f"{er:.2f}/0"


def fmt_loss(x: Any) -> str:
    """Losses as raw numbers (no normalisation), 6 significant digits."""
    return NA if x is None else f"{float(x):.6g}"


def fmt_num(x: Any, digits: int = 4) -> str:
    if x is None:
        return NA
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    return f"{float(x):.{digits}g}"


def fmt_ppl(x: Any) -> str:
    if x is None:
        return NA
    x = float(x)
    return f"{x:.2f}" if math.isfinite(x) else str(x)


def fmt_acc(x: Any) -> str:
    """Accuracy (a fraction in the metrics) as a percent."""
    return NA if x is None else f"{100 * float(x):.2f}%"


def fmt_pct(x: Any) -> str:
    """A ratio (e.g. phase1.min_converged_ratio) as a percent with one decimal."""
    return NA if x is None else f"{100 * float(x):.1f}%"


def fmt_int(x: Any) -> str:
    return NA if x is None else f"{int(x):,}"


def fmt_seconds(x: Any) -> str:
    if x is None:
        return NA
    x = float(x)
    if x < 1:  # e.g. the bigram fit (milliseconds): keep 3 digits
        return f"{x:.3g} s"
    return f"{x:.2f} s" if x < 10 else f"{x:.1f} s"


def fmt_bool(x: Any) -> str:
    return NA if x is None else ("yes" if x else "no")


def fmt_limit(x: float) -> str:
    """A threshold as written in params.yaml: 0.95, 0.001, 1e-6."""
    return f"{x:g}".replace("e-0", "e-").replace("e+0", "e+")


def fmt_text(x: Any) -> str:
    return NA if x is None else str(x)


def interval_words(ci: tuple[float, float] | None, digits: int = 2) -> str:
    """A perplexity-difference interval (row minus reference; < 0 is better) in words, e.g.
    "between 0.62 better and 0.96 worse"."""
    if ci is None:
        return "no interval (fewer than 2 seeds)"
    lo, hi = ci
    f = f"{{:.{digits}f}}"
    if lo < 0 < hi:
        return f"between {f.format(-lo)} better and {f.format(hi)} worse"
    if hi <= 0:
        return f"between {f.format(-hi)} and {f.format(-lo)} better"
    return f"between {f.format(lo)} and {f.format(hi)} worse"
