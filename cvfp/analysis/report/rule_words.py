"""The check rules (cvfp/phase1/rules.py: numbers and operators) in words: each rule's name,
each statistic's label and number format, and the texts the run report, the comparison
report and the Prefect artifacts print. Rewording a warning here reruns only those.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cvfp.analysis.formats import fmt_count, fmt_er, fmt_limit, fmt_loss, fmt_num, fmt_pct
from cvfp.analysis.report.inputs import ReportInputs
from cvfp.phase1.rules import (
    CONTEXT_EQUALS_TOKEN,
    GLOBAL_ATTRACTOR,
    IDENTITY,
    IGNORES_TOKENS,
    LOW_CONVERGENCE,
    LOW_EFFECTIVE_RANK,
    NEAR_MEAN,
    NEGATION,
    TRIALS,
    ZERO_SOLUTION,
    Condition,
    Rule,
)

# A rule's name in messages, by its check id.
NAMES = {
    GLOBAL_ATTRACTOR.check: "global attractor",
    ZERO_SOLUTION.check: "zero solution",
    NEAR_MEAN.check: "contexts near their mean",
    IDENTITY.check: "identity mapping",
    IGNORES_TOKENS.check: "ignores tokens",
    CONTEXT_EQUALS_TOKEN.check: "context equals token embedding",
    TRIALS.check: "convergence trials not passed",
    LOW_CONVERGENCE.check: "convergence below min_converged_ratio",
    LOW_EFFECTIVE_RANK.check: "collapsed contexts",
}
# After the limits in a rule's message (which limit it is).
SUFFIXES = {LOW_EFFECTIVE_RANK.check: " (phase1.divergence.min_effective_rank_ratio)"}
# How messages name a statistic.
LABELS = {
    "mean_pairwise_l2": "mean pairwise L2",
    "mean_pairwise_cosine": "mean pairwise cosine",
    "mean_norm": "mean context norm",
    "mean_deviation_from_mean": "mean deviation",
    "input_output_cosine": "input/output context cosine",
    "different_token_output_similarity": "different-token output similarity",
    "context_token_cosine": "cosine",
    "final_diff": "final diff",
    "convergence_rate": "convergence",
    "effective_rank_ratio": "effective rank",
}
# A statistic's value in messages (default fmt_num).
VALUE_FORMATS: dict[str, Callable[[Any], str]] = {"final_diff": fmt_loss}
# Statistics whose limit is a ratio shown as a percent.
PERCENT = {"convergence_rate", "effective_rank_ratio"}


def limit_text(c: Condition, params: Any = None) -> str:
    lim = c.limit_of(params)
    return fmt_pct(lim) if c.stat in PERCENT else fmt_limit(lim)


def warn_text(c: Condition, params: Any = None) -> str:
    """`> 0.95`: when it warns."""
    return f"{c.op} {limit_text(c, params)}"


def pass_text(c: Condition, params: Any = None) -> str:
    """`<= 0.95`: when it passes."""
    return f"{NEGATION[c.op]} {limit_text(c, params)}"


def pass_rule(c: Condition) -> str:
    """`final diff < checks.convergence_final_diff`: the pass condition, the limit by name."""
    limit = c.param if c.param is not None else limit_text(c)
    return f"{LABELS[c.stat]} {NEGATION[c.op]} {limit}"


def message(rule: Rule, values: Mapping[str, Any], params: Any = None) -> str:
    """`global attractor: mean pairwise L2 0.02 < 0.1 and ...`, with the values that
    triggered it (a str value is printed as it is)."""
    parts = [
        f"{LABELS[c.stat]} {v if isinstance(v, str) else VALUE_FORMATS.get(c.stat, fmt_num)(v)} "
        f"{warn_text(c, params)}"
        for c in rule.when
        for v in [values.get(c.stat)]
    ]
    return f"{NAMES[rule.check]}: {' and '.join(parts)}{SUFFIXES.get(rule.check, '')}"


def rule_text(rule: Rule, stat: str, params: Any = None) -> str:
    """The rule as seen from one statistic: `global attractor if < 0.1 (and mean
    pairwise cosine > 0.99)`."""
    (own,) = [c for c in rule.when if c.stat == stat]
    others = [f"{LABELS[c.stat]} {warn_text(c, params)}" for c in rule.when if c is not own]
    return f"{NAMES[rule.check]} if {warn_text(own, params)}" + (
        f" (and {' and '.join(others)})" if others else ""
    )


def convergence_words(inp: ReportInputs, split: str) -> str:
    """A split's final convergence, `27.2% (1741/6400)` (metrics/phase1.json's numbers)."""
    m = getattr(inp.phase1, split)
    return fmt_count(m.converged, m.total)


def effective_rank_words(inp: ReportInputs, split: str) -> str:
    """A split's effective rank, `627.29/768 = 81.7%` (the dim from cache/phase1/checks.json)."""
    dim = getattr(inp.checks, split).effective_rank.dim
    return fmt_er(getattr(inp.phase1, split).effective_rank, dim)
