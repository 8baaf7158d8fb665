"""The comparison's summary on fixed experiments (cvfp/analysis/compare.py): each verdict word with
Holm over the family, and the compare.json model and report built from it."""

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from cvfp.analysis.compare_metrics import VERDICTS, CompareMetrics
from cvfp.analysis.compare_report import build_compare_report
from cvfp.analysis.compare_verdict import BETTER, EQUIVALENT, INCONCLUSIVE, TOO_FEW, WORSE
from cvfp.analysis.compare_words import verdict_lines
from cvfp.runtime.metrics_base import parse
from helpers.compare import DELTA, DIFFS, SEEDS, comparison


def test_summarise_reaches_each_verdict_word_with_holm_over_the_family():
    c, _ = comparison()
    arms = c.arms
    got = {a: arms[a].verdict for a in DIFFS}
    assert got == {
        "better": BETTER,
        "worse": WORSE,
        "equiv": EQUIVALENT,
        "incon": INCONCLUSIVE,
        "few": TOO_FEW,
        "no_context": None,
    }
    assert set(got.values()) - {None} == set(VERDICTS)
    assert c.confirmatory == ["better", "worse", "equiv", "incon", "few"]
    # Holm over the 4 arms with a p (few has 1 seed), the same as statsmodels'
    family = ["better", "worse", "equiv", "incon"]
    ps = [stats.ttest_rel(np.array(DIFFS[a]), np.zeros(4)).pvalue for a in family]
    assert [arms[a].p for a in family] == pytest.approx(ps, rel=1e-4)
    assert [arms[a].p_holm for a in family] == pytest.approx(
        multipletests([arms[a].p for a in family], method="holm")[1]
    )
    assert arms["few"].p is None and arms["few"].p_holm is None and arms["few"].n_seeds == 1
    assert arms["few"].failed_seeds == [7] and arms["few"].seeds == [42]
    nc = arms["no_context"]
    assert nc.role == "interval only" and nc.p_holm is None and nc.p is not None
    assert nc.diffs == pytest.approx(DIFFS["no_context"]) and nc.ci95[0] > 0
    # per seed: the bootstrap of each seed's difference over the 3 conversations
    assert set(arms["better"].bootstrap) == {str(s) for s in SEEDS}
    assert arms["better"].bootstrap["7"].diff == pytest.approx(-0.051)
    assert arms["none"].role == "control" and arms["none"].n_seeds == 4
    # baselines: paired with the control's CVFP, intervals only; Transformer from the control
    bg, tr = c.baselines["bigram"], c.baselines["transformer"]
    assert bg.source_arm == "none" and bg.verdict is None and bg.diff_mean > 0 > tr.diff_mean
    assert set(tr.bootstrap) == {str(s) for s in SEEDS}
    ab = c.ablations["better"]["zero_context"]
    assert ab.diff_mean == pytest.approx(1.5) and ab.reference == "C* (better)"
    assert c.delta == pytest.approx(DELTA) and c.delta_relative == 0.01


def test_compare_json_keys_round_trip_and_report():
    c, _ = comparison()
    data = c.to_dict()
    cv = data["arms"]["worse"]
    for key in (
        "diff_mean",
        "ci95",
        "p",
        "p_holm",
        "p_equiv",
        "delta",
        "seeds_needed",
        "verdict",
        "n_seeds",
        "seeds",
        "ppl_diff",
        "rel_change",
        "bootstrap",
        "rank_p",
    ):
        assert key in cv, key
    assert len(cv["ci95"]) == 2 and cv["rank_p"] is None and cv["verdict"] == "worse"
    ctrl = data["arms"]["none"]
    assert data["control"] == "none" and ctrl["role"] == "control" and "diff_mean" not in ctrl
    assert data["metric"] == "test_loss" and data["unit"] == "nats/token"
    assert parse(CompareMetrics, data, "compare.json").to_dict() == data
    bad = {**data, "arms": {**data["arms"], "worse": {**cv, "verdict": "no measurable effect"}}}
    with pytest.raises(ValueError, match="arms.worse.verdict"):
        parse(CompareMetrics, bad, "compare.json")

    html, md = build_compare_report(c, "shared: none")
    lines = verdict_lines(c)
    assert lines[0].startswith("none: the control (test perplexity ")
    inc = next(line for line in lines if line.startswith("incon vs none: inconclusive: between "))
    assert "better and" in inc and "worse test perplexity (95% CI, 4 seeds)" in inc
    assert any(line.startswith("few vs none: not enough seeds: 1 seed paired") for line in lines)
    assert any(line.startswith("equiv vs none: equivalent within ±1% perplexity") for line in lines)
    assert any(line.startswith("no_context vs none: interval only: between ") for line in lines)
    for text in (*lines, "boom", "cmp-few-s7", "Plots are in compare.html", "p Holm"):
        assert text in md, text
    assert "no measurable effect" not in md
    assert html.count("data:image/png;base64,") == 1  # the forest plot
