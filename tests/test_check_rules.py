"""The check rules (cvfp/check_rules.py): one threshold and one wording per rule, applied by
the checks and printed by the report."""

import math

import pytest
import torch

from cvfp.check_rules import (
    CONTEXT_EQUALS_TOKEN,
    GLOBAL_ATTRACTOR,
    IDENTITY,
    LOW_CONVERGENCE,
    LOW_EFFECTIVE_RANK,
    NEAR_MEAN,
    TRIALS,
)
from cvfp.checks import degeneracy
from cvfp.params import load_params
from cvfp.phase1_guard import collapse_problems


@pytest.fixture(scope="module")
def params():
    from helpers import ROOT

    return load_params(ROOT / "params.yaml", {"checks.identity_warn": 0.8})


def test_texts_of_a_param_threshold_follow_the_params(params):
    (cond,) = IDENTITY.when
    assert cond.warn_text(params) == "> 0.8" and cond.pass_text(params) == "<= 0.8"
    msg = IDENTITY.message({"input_output_cosine": 0.91234}, params)
    assert msg == "identity mapping: input/output context cosine 0.9123 > 0.8"
    assert TRIALS.when[0].pass_rule() == "final diff < checks.convergence_final_diff"
    (ratio,) = LOW_CONVERGENCE.when
    assert ratio.limit_text(params) == f"{100 * params.phase1.min_converged_ratio:.1f}%"
    with pytest.raises(ValueError, match="checks.identity_warn"):
        cond.limit_of()  # a param threshold needs the params


def test_a_rule_warns_only_when_all_its_conditions_hold():
    assert GLOBAL_ATTRACTOR.warns({"mean_pairwise_l2": 0.05, "mean_pairwise_cosine": 0.995})
    assert not GLOBAL_ATTRACTOR.warns({"mean_pairwise_l2": 0.05, "mean_pairwise_cosine": 0.5})
    assert GLOBAL_ATTRACTOR.rule_text("mean_pairwise_cosine") == (
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
        {"effective_rank": {"ratio": 0.01, "text": "0.04/4 = 1.0%"}, "degeneracy": d},
        load_params_divergence(0.05),
    )
    assert problems[0] == (
        "collapsed contexts: effective rank 0.04/4 = 1.0% < 5.0% "
        "(phase1.divergence.min_effective_rank_ratio)"
    )
    (attractor,) = [p for p in problems if p.startswith("global attractor: ")]
    assert "< 0.1 and mean pairwise cosine 1 > 0.99" in attractor
    assert LOW_EFFECTIVE_RANK.check == "effective_rank"


def load_params_divergence(ratio: float):
    from helpers import ROOT

    return load_params(
        ROOT / "params.yaml", {"phase1.divergence.min_effective_rank_ratio": ratio}
    ).phase1.divergence
