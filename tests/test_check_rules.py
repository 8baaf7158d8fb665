"""The check rules (cvfp/phase1/rules.py: numbers and operators), applied by the checks and
the guard, and their words (cvfp/analysis/report/rule_words.py), printed by the report."""

import math

import pytest
import torch

from cvfp.analysis.report.rule_words import (
    limit_text,
    message,
    pass_rule,
    pass_text,
    rule_text,
    warn_text,
)
from cvfp.params import load_params
from cvfp.phase1.checks import degeneracy
from cvfp.phase1.guard import collapse_problems
from cvfp.phase1.rules import (
    CONTEXT_EQUALS_TOKEN,
    GLOBAL_ATTRACTOR,
    IDENTITY,
    LOW_CONVERGENCE,
    LOW_EFFECTIVE_RANK,
    NEAR_MEAN,
    TRIALS,
)


@pytest.fixture(scope="module")
def params():
    from helpers import ROOT

    return load_params(ROOT / "params.yaml", {"checks.identity_warn": 0.8})


def test_texts_of_a_param_threshold_follow_the_params(params):
    (cond,) = IDENTITY.when
    assert warn_text(cond, params) == "> 0.8" and pass_text(cond, params) == "<= 0.8"
    msg = message(IDENTITY, {"input_output_cosine": 0.91234}, params)
    assert msg == "identity mapping: input/output context cosine 0.9123 > 0.8"
    assert pass_rule(TRIALS.when[0]) == "final diff < checks.convergence_final_diff"
    (ratio,) = LOW_CONVERGENCE.when
    assert limit_text(ratio, params) == f"{100 * params.phase1.min_converged_ratio:.1f}%"
    with pytest.raises(ValueError, match="checks.identity_warn"):
        cond.limit_of()  # a param threshold needs the params


def test_a_rule_warns_only_when_all_its_conditions_hold():
    assert GLOBAL_ATTRACTOR.warns({"mean_pairwise_l2": 0.05, "mean_pairwise_cosine": 0.995})
    assert not GLOBAL_ATTRACTOR.warns({"mean_pairwise_l2": 0.05, "mean_pairwise_cosine": 0.5})
    assert rule_text(GLOBAL_ATTRACTOR, "mean_pairwise_cosine") == (
        "global attractor if > 0.99 (and mean pairwise L2 < 0.1)"
    )
    # The boundary belongs to the side the operator says.
    assert CONTEXT_EQUALS_TOKEN.warns({"context_token_cosine": 0.95})
    assert not IDENTITY.when[0].warns(0.95, 0.95)


def test_nan_fails_the_checks_that_say_so():
    assert TRIALS.when[0].warns(math.nan, 1e-3) and TRIALS.when[0].warns(math.inf, 1e-3)
    assert NEAR_MEAN.when[0].warns(math.nan) and not NEAR_MEAN.when[0].warns(0.2)
    assert NEAR_MEAN.flagged(False) and not NEAR_MEAN.flagged(True)  # its flag says "passed"
    assert not GLOBAL_ATTRACTOR.warns({"mean_pairwise_l2": math.nan, "mean_pairwise_cosine": 1.0})


def test_the_checks_and_the_guard_apply_the_rules():
    d = degeneracy(torch.full((20, 4), 1e-3))
    assert d["zero_solution"] and d["global_attractor"]
    problems = collapse_problems(
        {"effective_rank": {"ratio": 0.01}, "degeneracy": d}, load_params_divergence(0.05)
    )
    assert problems[0] == (
        "effective_rank: effective_rank_ratio 0.01 < 0.05 "
        "(phase1.divergence.min_effective_rank_ratio)"
    )
    (attractor,) = [p for p in problems if p.startswith("global_attractor: ")]
    assert "< 0.1 and mean_pairwise_cosine 1 > 0.99" in attractor
    assert LOW_EFFECTIVE_RANK.check == "effective_rank"


def load_params_divergence(ratio: float):
    from helpers import ROOT

    return load_params(
        ROOT / "params.yaml", {"phase1.divergence.min_effective_rank_ratio": ratio}
    ).phase1.divergence


def test_the_rules_module_holds_no_words_or_formats():
    """Rewording a warning or changing a number format must not touch Phase 1's code: the
    rules module imports neither cvfp.analysis.formats nor the report, and every rule has its words
    in the report."""
    import ast

    import cvfp.phase1.rules as rules
    from cvfp.analysis.report import rule_words

    tree = ast.parse(open(rules.__file__).read())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert not any("formats" in m or "report" in m for m in imported), imported
    every = [r for r in vars(rules).values() if isinstance(r, rules.Rule)]
    assert len(every) == 9 and all(r.check in rule_words.NAMES for r in every)
    assert {c.stat for r in every for c in r.when} <= set(rule_words.LABELS)
