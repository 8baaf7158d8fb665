"""The pass/warn rules of the Phase 1 checks (SPEC 4): every threshold and its wording, once.

cvfp/checks.py, cvfp/phase1.py and cvfp/phase1_guard.py apply them; the run report prints
them (rule columns, warnings) from here. A limit is a fixed number or a params key
(`checks.identity_warn`), read from the params where the rule is applied. No torch here, so
the report can import it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import reduce
from typing import Any

from .formats import fmt_limit, fmt_loss, fmt_num, fmt_pct

OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
NEGATION = {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}


@dataclass(frozen=True)
class Condition:
    """A check warns when `value op limit` (all its rule's conditions at once)."""

    stat: str  # key of the number in the check's output
    label: str  # how messages name it
    op: str
    limit: float | None = None  # fixed, or None: the params key `param`
    param: str | None = None
    nan_warns: bool = False  # a NaN value warns too (the comparison alone is False)
    fmt: Callable[[Any], str] = fmt_num  # the value in messages
    percent: bool = False  # the limit is a ratio shown as a percent

    def limit_of(self, params: Any = None) -> float:
        """The limit; `params`: the Params, or a mapping {param key: value}."""
        if self.limit is not None:
            return self.limit
        if params is None or self.param is None:
            raise ValueError(f"{self.stat}: the limit is the param {self.param}; pass the params")
        if isinstance(params, Mapping):
            return float(params[self.param])
        return float(reduce(getattr, self.param.split("."), params))

    def warns(self, value: float, limit: float | None = None) -> bool:
        lim = self.limit_of() if limit is None else limit
        return bool((self.nan_warns and math.isnan(value)) or OPS[self.op](value, lim))

    def limit_text(self, params: Any = None) -> str:
        lim = self.limit_of(params)
        return fmt_pct(lim) if self.percent else fmt_limit(lim)

    def warn_text(self, params: Any = None) -> str:
        """`> 0.95`: when it warns."""
        return f"{self.op} {self.limit_text(params)}"

    def pass_text(self, params: Any = None) -> str:
        """`<= 0.95`: when it passes."""
        return f"{NEGATION[self.op]} {self.limit_text(params)}"

    def pass_rule(self) -> str:
        """`final diff < checks.convergence_final_diff`: the pass condition, the limit by name."""
        limit = self.param if self.param is not None else self.limit_text()
        return f"{self.label} {NEGATION[self.op]} {limit}"


@dataclass(frozen=True)
class Rule:
    check: str  # the flag in the check's output, and the warning's name in the report
    name: str
    when: tuple[Condition, ...]
    suffix: str = ""  # after the limits in messages (which limit it is)
    flag_passes: bool = False  # the output flag is True when the check passes (not_near_zero)

    def flagged(self, flag: bool | None) -> bool:
        """Whether the check's output flag says it warned."""
        return flag is False if self.flag_passes else bool(flag)

    def warns(self, values: Mapping[str, float], params: Any = None) -> bool:
        return all(c.warns(values[c.stat], c.limit_of(params)) for c in self.when)

    def message(self, values: Mapping[str, Any], params: Any = None) -> str:
        """`global attractor: mean pairwise L2 0.02 < 0.1 and ...`, with the values that
        triggered it (a str value is printed as it is)."""
        parts = [
            f"{c.label} {v if isinstance(v, str) else c.fmt(v)} {c.warn_text(params)}"
            for c in self.when
            for v in [values.get(c.stat)]
        ]
        return f"{self.name}: {' and '.join(parts)}{self.suffix}"

    def rule_text(self, stat: str, params: Any = None) -> str:
        """The rule as seen from one statistic: `global attractor if < 0.1 (and mean
        pairwise cosine > 0.99)`."""
        (own,) = [c for c in self.when if c.stat == stat]
        others = [f"{c.label} {c.warn_text(params)}" for c in self.when if c is not own]
        return f"{self.name} if {own.warn_text(params)}" + (
            f" (and {' and '.join(others)})" if others else ""
        )


# Effective rank: the actual rank counts singular values above this.
ACTUAL_RANK_TOL = 1e-6
# Degeneracy: the share of context entries with |x| below this is the sparsity.
SPARSITY_ABS = 0.01

GLOBAL_ATTRACTOR = Rule(
    "global_attractor",
    "global attractor",
    (
        Condition("mean_pairwise_l2", "mean pairwise L2", "<", 0.1),
        Condition("mean_pairwise_cosine", "mean pairwise cosine", ">", 0.99),
    ),
)
ZERO_SOLUTION = Rule(
    "zero_solution",
    "zero solution",
    (Condition("mean_norm", "mean context norm", "<", 0.1),),
)
NEAR_MEAN = Rule(
    "not_near_zero",
    "contexts near their mean",
    (Condition("mean_deviation_from_mean", "mean deviation", "<=", 0.1, nan_warns=True),),
    flag_passes=True,
)
IDENTITY = Rule(
    "identity_warning",
    "identity mapping",
    (
        Condition(
            "input_output_cosine", "input/output context cosine", ">", param="checks.identity_warn"
        ),
    ),
)
IGNORES_TOKENS = Rule(
    "ignores_tokens_warning",
    "ignores tokens",
    (
        Condition(
            "different_token_output_similarity",
            "different-token output similarity",
            ">",
            param="checks.ignores_tokens_warn",
        ),
    ),
)
CONTEXT_EQUALS_TOKEN = Rule(
    "context_equals_token_warning",
    "context equals token embedding",
    (Condition("context_token_cosine", "cosine", ">=", 0.95),),
)
# Identity-mapping probes in the order the report lists them.
IDENTITY_PROBES = (NEAR_MEAN, IDENTITY, IGNORES_TOKENS, CONTEXT_EQUALS_TOKEN)

# The val convergence trials (SPEC 4.4) pass when this does not warn (a NaN diff fails).
TRIALS = Rule(
    "convergence_trials",
    "convergence trials not passed",
    (
        Condition(
            "final_diff",
            "final diff",
            ">=",
            param="checks.convergence_final_diff",
            nan_warns=True,
            fmt=fmt_loss,
        ),
    ),
)
# Phase 1 stops once a pass converges at least this share of tokens (cvfp/phase1.py).
LOW_CONVERGENCE = Rule(
    "min_converged_ratio",
    "convergence below min_converged_ratio",
    (
        Condition(
            "convergence_rate",
            "convergence",
            "<",
            param="phase1.min_converged_ratio",
            percent=True,
        ),
    ),
)
# Collapsed contexts: Phase 1 fails (phase1.divergence.action: fail) or the report warns.
LOW_EFFECTIVE_RANK = Rule(
    "effective_rank",
    "collapsed contexts",
    (
        Condition(
            "effective_rank_ratio",
            "effective rank",
            "<",
            param="phase1.divergence.min_effective_rank_ratio",
            nan_warns=True,
            percent=True,
        ),
    ),
    " (phase1.divergence.min_effective_rank_ratio)",
)
