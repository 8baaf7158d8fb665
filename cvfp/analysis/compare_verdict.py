"""The verdict word of a confirmatory arm (SPEC 9), from its statistics (cvfp/analysis/compare_stats.py),
computed in this order: n < 2: "not enough seeds"; Holm p < alpha: "better" (mean(d) < 0) or
"worse"; TOST p < alpha: "equivalent"; else "inconclusive". Other arms get no word.
"""

from __future__ import annotations

from cvfp.analysis.compare_metrics import Verdict

BETTER: Verdict = "better"
WORSE: Verdict = "worse"
EQUIVALENT: Verdict = "equivalent"
INCONCLUSIVE: Verdict = "inconclusive"
TOO_FEW: Verdict = "not enough seeds"


def verdict(
    n: int, diff_mean: float | None, p_holm: float | None, p_equiv: float | None, alpha: float
) -> Verdict:
    """The SPEC 9 verdict word (the rule: the module doc)."""
    if n < 2 or diff_mean is None:
        return TOO_FEW
    if p_holm is not None and p_holm < alpha:
        return BETTER if diff_mean < 0 else WORSE
    if p_equiv is not None and p_equiv < alpha:
        return EQUIVALENT
    return INCONCLUSIVE
