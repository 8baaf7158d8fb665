"""The pass/warn rules of the Phase 1 checks (SPEC 4): every threshold and its comparison,
once, as numbers and operators only.

cvfp/phase1/checks.py and cvfp/phase1/guard.py apply them; the run report words and prints them
(cvfp/analysis/report/rule_words.py: names, labels, number formats). A limit is a fixed number or a
params key (`checks.identity_warn`), read from the params where the rule is applied. No torch
and no formatting here: rewording a warning or changing a number format does not touch the
code Phase 1 runs.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import reduce
from typing import Any

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
    op: str
    limit: float | None = None  # fixed, or None: the params key `param`
    param: str | None = None
    nan_warns: bool = False  # a NaN value warns too (the comparison alone is False)

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


@dataclass(frozen=True)
class Rule:
    check: str  # the flag in the check's output, and the warning's id in the report
    when: tuple[Condition, ...]
    flag_passes: bool = False  # the output flag is True when the check passes (not_near_zero)

    def flagged(self, flag: bool | None) -> bool:
        """Whether the check's output flag says it warned."""
        return flag is False if self.flag_passes else bool(flag)

    def warns(self, values: Mapping[str, float], params: Any = None) -> bool:
        return all(c.warns(values[c.stat], c.limit_of(params)) for c in self.when)


# Effective rank: the actual rank counts singular values above this.
ACTUAL_RANK_TOL = 1e-6
# Degeneracy: the share of context entries with |x| below this is the sparsity.
SPARSITY_ABS = 0.01

GLOBAL_ATTRACTOR = Rule(
    "global_attractor",
    (
        Condition("mean_pairwise_l2", "<", 0.1),
        Condition("mean_pairwise_cosine", ">", 0.99),
    ),
)
ZERO_SOLUTION = Rule(
    "zero_solution",
    (Condition("mean_norm", "<", 0.1),),
)
NEAR_MEAN = Rule(
    "not_near_zero",
    (Condition("mean_deviation_from_mean", "<=", 0.1, nan_warns=True),),
    flag_passes=True,
)
IDENTITY = Rule(
    "identity_warning",
    (Condition("input_output_cosine", ">", param="checks.identity_warn"),),
)
IGNORES_TOKENS = Rule(
    "ignores_tokens_warning",
    (
        Condition(
            "different_token_output_similarity",
            ">",
            param="checks.ignores_tokens_warn",
        ),
    ),
)
CONTEXT_EQUALS_TOKEN = Rule(
    "context_equals_token_warning",
    (Condition("context_token_cosine", ">=", 0.95),),
)
# Identity-mapping probes in the order the report lists them.
IDENTITY_PROBES = (NEAR_MEAN, IDENTITY, IGNORES_TOKENS, CONTEXT_EQUALS_TOKEN)

# The val convergence trials (SPEC 4.4) pass when this does not warn (a NaN diff fails).
TRIALS = Rule(
    "convergence_trials",
    (
        Condition(
            "final_diff",
            ">=",
            param="checks.convergence_final_diff",
            nan_warns=True,
        ),
    ),
)
# The report warns when Phase 1 ended below this share of converged tokens (the loop's
# stop rule is cvfp.phase1.trainer.converged_enough).
LOW_CONVERGENCE = Rule(
    "min_converged_ratio",
    (
        Condition(
            "convergence_rate",
            "<",
            param="phase1.min_converged_ratio",
        ),
    ),
)
# Collapsed contexts: Phase 1 fails (phase1.divergence.action: fail) or the report warns.
LOW_EFFECTIVE_RANK = Rule(
    "effective_rank",
    (
        Condition(
            "effective_rank_ratio",
            "<",
            param="phase1.divergence.min_effective_rank_ratio",
            nan_warns=True,
        ),
    ),
)
