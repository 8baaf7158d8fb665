"""The comparison's statistics and verdict (cvfp/compare_stats.py, cvfp/compare_verdict.py)
against scipy.stats and statsmodels on fixed numbers, the compare.json model, the report built
from them, and the plan of experiments (tasks/compare.py)."""

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired

from cvfp.compare import summarise
from cvfp.compare_inputs import check_consistent, experiment_values, parse_conversations
from cvfp.compare_report import build_compare_report
from cvfp.compare_stats import (
    bootstrap_diff,
    delta_nats,
    holm,
    paired_stats,
    rank_test_possible,
    seeds_needed,
)
from cvfp.compare_verdict import BETTER, EQUIVALENT, INCONCLUSIVE, TOO_FEW, WORSE, verdict
from cvfp.compare_words import verdict_lines
from cvfp.formats import interval_words
from cvfp.metrics.base import parse
from cvfp.metrics.compare import VERDICTS, CompareMetrics
from cvfp.params import ParamsError, load_params
from helpers import ROOT

DELTA = delta_nats(0.01)
# docs/compare.md's recorded default comparison (val perplexity, seeds 42 / 7 / 123), the
# numbers issue 20 recomputed with a paired t-test.
RECORDED = {
    "none": [18.76, 19.02, 18.84],
    "cvfp": [19.11, 18.82, 19.19],
    "cvfp_min10": [19.07, 19.19, 18.84],
    "reconstruction": [19.36, 19.79, 20.63],
}


def _seeds(xs):
    return dict(zip((42, 7, 123, 1, 2, 3, 4), xs, strict=False))


def test_paired_t_holm_on_the_recorded_comparisons():
    none = _seeds(RECORDED["none"])
    got = {
        a: paired_stats(_seeds(RECORDED[a]), none, "none", DELTA, 0.05, 0.8)
        for a in ("cvfp", "cvfp_min10", "reconstruction")
    }
    # issue 20: p = 0.46, 0.22, 0.105 before Holm; Holm 0.43 and 0.32 (cvfp stays 0.46)
    assert [round(got[a].p, 3) for a in got] == [0.459, 0.216, 0.105]
    assert [round(p, 2) for p in holm([g.p for g in got.values()])] == [0.46, 0.43, 0.32]
    # the same numbers straight from scipy / statsmodels
    for a, g in got.items():
        r = stats.ttest_rel(RECORDED[a], RECORDED["none"])
        ci = r.confidence_interval(0.95)
        assert g.p == pytest.approx(r.pvalue) and g.t == pytest.approx(r.statistic) and g.df == 2
        assert g.ci95 == pytest.approx((ci.low, ci.high))
        assert g.p_equiv == pytest.approx(
            ttost_paired(np.array(RECORDED[a]), np.array(RECORDED["none"]), -DELTA, DELTA)[0]
        )
        assert g.rank_p is None  # 3 seeds: a rank test cannot reach p < 0.05
    assert got["cvfp"].diffs == pytest.approx([0.35, -0.20, 0.35])
    assert got["cvfp"].ci95 == pytest.approx((-0.622, 0.955), abs=1e-3)  # "[-0.62, +0.96] ppl"
    assert got["cvfp_min10"].t == pytest.approx(1.79, abs=0.01)
    # docs/compare.md's re-reading: the intervals and the seeds to detect 1% of 18.87 ppl
    assert [tuple(round(v, 2) for v in got[a].ci95) for a in got] == [
        (-0.62, 0.96),
        (-0.23, 0.55),
        (-0.55, 2.65),
    ]
    ppl_delta = 0.01 * round(np.mean(RECORDED["none"]), 2)
    assert [seeds_needed(ppl_delta, got[a].diff_std, 0.05, 0.8) for a in got] == [25, 8, 94]
    h = multipletests([0.46, 0.2162, 0.1052], method="holm")[1]
    assert holm([0.46, None, 0.2162, 0.1052]) == pytest.approx([h[0], None, h[1], h[2]])
    # All three are inconclusive: no Holm p < 0.05, and +-1% is far inside the spread.
    for g, ph in zip(got.values(), holm([g.p for g in got.values()]), strict=True):
        assert verdict(3, g.diff_mean, ph, g.p_equiv, 0.05) == INCONCLUSIVE
    assert interval_words(got["cvfp"].ci95) == "between 0.62 better and 0.96 worse"
    assert interval_words((-0.9, -0.1)) == "between 0.10 and 0.90 better"
    assert interval_words((0.2, 1.04)) == "between 0.20 and 1.04 worse"


def test_equivalence_on_tight_differences_and_the_ppl_translation():
    ctrl = _seeds([3.0, 3.1, 2.9, 3.05])
    arm = _seeds([3.001, 3.0985, 2.9012, 3.0498])  # |d| <= 0.0015 nats, delta 0.00995
    g = paired_stats(arm, ctrl, "none", DELTA, 0.05, 0.8)
    x, y = np.array(list(arm.values())), np.array(list(ctrl.values()))
    assert g.p_equiv == pytest.approx(ttost_paired(x, y, -DELTA, DELTA)[0]) and g.p_equiv < 0.05
    assert g.p > 0.05
    assert verdict(4, g.diff_mean, g.p, g.p_equiv, 0.05) == EQUIVALENT
    # perplexity: exp of the mean loss; the interval moved to the control's perplexity
    ref = math.exp(y.mean())
    assert g.reference_ppl == pytest.approx(ref)
    assert g.ppl_diff == pytest.approx(math.exp(x.mean()) - ref)
    assert g.rel_change == pytest.approx(math.exp(x.mean() - y.mean()) - 1)
    assert g.rel_ci95 == pytest.approx([math.expm1(v) for v in g.ci95])
    assert g.ppl_ci95 == pytest.approx([ref * math.expm1(v) for v in g.ci95])
    assert delta_nats(0.01) == pytest.approx(0.00995033)


def test_seeds_needed_from_ttestpower():
    tp = TTestPower()
    n = seeds_needed(DELTA, 0.02, 0.05, 0.8)
    assert n == math.ceil(tp.solve_power(effect_size=DELTA / 0.02, alpha=0.05, power=0.8))
    assert tp.power(DELTA / 0.02, n, 0.05) >= 0.8 > tp.power(DELTA / 0.02, n - 1, 0.05)
    assert seeds_needed(DELTA, 1e-5, 0.05, 0.8) == 2  # huge effect: the minimum of a t-test
    # effect 11: 2 seeds give power 0.78 (t quantile 12.7 at 1 df), so 3 are needed
    assert tp.power(11, 2, 0.05) < 0.8 <= tp.power(11, 3, 0.05)
    assert seeds_needed(DELTA, DELTA / 11, 0.05, 0.8) == 3
    assert (
        seeds_needed(DELTA, 0.0, 0.05, 0.8) is None and seeds_needed(DELTA, None, 0.05, 0.8) is None
    )


def test_rank_test_only_from_six_seeds():
    assert [rank_test_possible(n, 0.05) for n in (1, 5, 6, 9)] == [False, False, True, True]
    assert rank_test_possible(8, 0.01) and not rank_test_possible(7, 0.01)  # 2/2**n < alpha
    ctrl = _seeds([3.0, 3.1, 2.9, 3.05, 3.02, 2.95])
    arm6 = {s: v - 0.01 * (k + 1) for k, (s, v) in enumerate(ctrl.items())}
    six = paired_stats(arm6, ctrl, "none", DELTA, 0.05, 0.8)
    assert six.rank_p == pytest.approx(
        stats.wilcoxon(list(arm6.values()), list(ctrl.values())).pvalue
    )
    assert six.rank_p == pytest.approx(2 / 2**6)
    five = paired_stats(dict(list(arm6.items())[:5]), ctrl, "none", DELTA, 0.05, 0.8)
    assert five.n_seeds == 5 and five.rank_p is None and five.p is not None


def _table(rows):
    return "conversation_id,targets,cvfp_nats,bigram_nats,transformer_nats\n" + "".join(
        ",".join(str(v) for v in r) + "\n" for r in rows
    )


def test_bootstrap_over_conversations_on_a_small_table():
    ctrl = parse_conversations(
        _table(
            [
                ("a", 10, 30.0, 45.0, 28.0),
                ("b", 4, 13.0, 20.0, 12.0),
                ("c", 7, 20.0, 30.0, 19.5),
                ("d", 12, 35.0, 52.0, 33.0),
                ("e", 5, 16.0, 22.0, 15.0),
            ]
        ),
        "ctrl.csv",
    )
    arm_nats = np.array([29.0, 13.5, 19.0, 36.0, 15.2])
    b = bootstrap_diff(ctrl.targets, arm_nats, ctrl.cvfp, 999, 0, 0.05)
    point = (arm_nats.sum() - ctrl.cvfp.sum()) / ctrl.targets.sum()
    assert b.diff == pytest.approx(point) and b.conversations == 5
    ref = stats.bootstrap(
        (ctrl.targets, arm_nats, ctrl.cvfp),
        lambda t, a, c, axis=-1: (a.sum(axis) - c.sum(axis)) / t.sum(axis),
        paired=True,
        vectorized=True,
        n_resamples=999,
        random_state=np.random.default_rng(0),
    ).confidence_interval
    assert b.ci95 == pytest.approx((ref.low, ref.high))
    assert b.ci95[0] < point < b.ci95[1]
    assert bootstrap_diff(ctrl.targets, arm_nats, ctrl.cvfp, 999, 0, 0.05) == b  # fixed seed
    # Paired: a shift of exactly 0.1 nat on every target gives 0.1 in every resample (the
    # conversations' own spread cancels), so the interval collapses onto 0.1.
    same = bootstrap_diff(ctrl.targets, ctrl.cvfp + 0.1 * ctrl.targets, ctrl.cvfp, 999, 0, 0.05)
    assert same.diff == pytest.approx(0.1)
    assert same.ci95 is None or same.ci95 == pytest.approx((0.1, 0.1), abs=1e-12)
    one = bootstrap_diff(ctrl.targets[:1], arm_nats[:1], ctrl.cvfp[:1], 999, 0, 0.05)
    assert one.diff == pytest.approx(-0.1) and one.ci95 is None and one.conversations == 1
    assert ctrl.loss("cvfp") == pytest.approx(114.0 / 38) and ctrl.transformer is not None


def test_conversation_table_errors_name_file_line_and_field():
    with pytest.raises(ValueError, match=r"x\.csv: header \['id', 'n'\]; expected conversation_id"):
        parse_conversations("id,n\n1,2\n", "x.csv")
    with pytest.raises(ValueError, match=r"x\.csv line 3 \(b\): cvfp_nats='nan' is not a finite"):
        parse_conversations(_table([("a", 2, 1.0, 2.0, ""), ("b", 2, "nan", 2.0, "")]), "x.csv")
    with pytest.raises(ValueError, match=r"line 2 \(a\): targets='0' is not a count >= 1"):
        parse_conversations(_table([("a", 0, 1.0, 2.0, "")]), "x.csv")
    with pytest.raises(ValueError, match="transformer_nats is empty on some rows only"):
        parse_conversations(_table([("a", 2, 1.0, 2.0, ""), ("b", 2, 1.0, 2.0, 1.5)]), "x.csv")
    with pytest.raises(ValueError, match="no test conversation rows"):
        parse_conversations(_table([]), "x.csv")
    conv = parse_conversations(_table([("a", 2, 1.0, 2.0, ""), ("b", 3, 2.0, 2.0, "")]), "x.csv")
    assert conv.transformer is None and conv.loss("transformer") is None
    v = experiment_values({}, {"cvfp": {"test_loss": 0.6}}, conv)
    check_consistent(v, conv, "cmp-x")  # 3 / 5 = 0.6
    with pytest.raises(ValueError, match=r"cmp-x: sum\(cvfp_nats\) / sum\(targets\) = 0\.6 but"):
        check_consistent(experiment_values({}, {"cvfp": {"test_loss": 0.7}}, conv), conv, "cmp-x")


SEEDS = [42, 7, 123, 1]
TARGETS = np.array([10.0, 4.0, 7.0])
# arm -> its per-seed difference in test loss vs the control (nats/token)
DIFFS = {
    "better": [-0.05, -0.051, -0.049, -0.0505],
    "worse": [0.08, 0.081, 0.079, 0.0805],
    "equiv": [0.001, -0.0008, 0.0005, -0.0002],
    "incon": [0.05, -0.04, 0.03, -0.02],
    "few": [0.02, None, None, None],  # one seed finished
    "no_context": [0.4, 0.38, 0.41, 0.42],  # interval only
}


def _experiment(arm, k, seed, diff):
    """An ok experiment record whose per-conversation table adds up to its test loss."""
    base = np.array([30.0, 13.0, 20.0]) + 0.1 * k  # the control's nats, per seed
    nats = base + diff * TARGETS + np.array([0.01, -0.01, 0.0])  # same total: loss diff = diff
    rows = [
        (f"c{i}", int(t), n, 1.5 * n, (0.9 * n if arm == "none" else ""))
        for i, (t, n) in enumerate(zip(TARGETS, nats, strict=True))
    ]
    conv = parse_conversations(_table(rows), f"cmp-{arm}-s{seed}")
    loss = conv.loss("cvfp")
    p2 = {
        "cvfp": {
            "test_loss": loss,
            "test_ppl": math.exp(loss),
            "test_acc": 0.5,
            "val_loss": 2.0,
            "best_epoch": 2,
        },
        "baselines": {
            "bigram": {"test_loss": conv.loss("bigram"), "test_ppl": 80.0, "test_acc": 0.4},
            **(
                {
                    "transformer": {
                        "test_loss": conv.loss("transformer"),
                        "test_ppl": 14.0,
                        "test_acc": 0.6,
                    }
                }
                if arm == "none"
                else {}
            ),
        },
        "ablations": {
            "zero_context": {"test_loss": loss + 1.5, "test_ppl": 100.0},
            "shuffled_context": {"test_loss": loss + 2.0 + 0.01 * k, "test_ppl": 160.0},
        },
    }
    p1 = {
        "train": {"steps": 0 if arm == "none" else 1, "converged_by_construction": True},
        "val": {"effective_rank_ratio": 0.8, "trials": {"final_diff": 0.1, "verdict": "OK"}},
    }
    return {
        "arm": arm,
        "seed": seed,
        "name": f"cmp-{arm}-s{seed}",
        "status": "ok",
        "seconds": 9.0,
        "values": experiment_values(p1, p2, conv),
        "conversations": conv,
    }


def _comparison():
    from cvfp.params import CompareParams

    exps = []
    for k, seed in enumerate(SEEDS):
        exps.append(_experiment("none", k, seed, 0.0))
        for arm, diffs in DIFFS.items():
            if diffs[k] is not None:
                exps.append(_experiment(arm, k, seed, diffs[k]))
    exps.append(
        {
            "arm": "few",
            "seed": 7,
            "name": "cmp-few-s7",
            "status": "failed",
            "error": "boom",
            "seconds": 3.0,
        }
    )
    arms = ["none", *DIFFS]
    cfg = CompareParams(
        arms={a: {"phase1.objective": "none" if a == "none" else "cvfp"} for a in arms},
        run=arms,
        control="none",
        confirmatory=["better", "worse", "equiv", "incon", "few"],
        seeds=SEEDS,
        delta=0.01,
        alpha=0.05,
        power=0.8,
        bootstrap_resamples=199,
        bootstrap_seed=0,
    )
    return summarise(exps, cfg, arms, "none"), exps


def test_summarise_reaches_each_verdict_word_with_holm_over_the_family():
    c, _ = _comparison()
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
    c, _ = _comparison()
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


def test_compare_params_are_validated(tmp_path):
    from helpers import write_params

    p = load_params(ROOT / "params.yaml")
    assert (
        p.compare.run == ["none", "cvfp", "cvfp_min10", "reconstruction", "no_context"]
        and p.compare.control == "none"
    )
    # the context control: trained without C*, paired with the control, interval only
    assert p.compare.arms["no_context"] == {"phase1.objective": "none", "phase2.context": "zero"}
    assert "no_context" not in p.compare.confirmatory
    assert len(p.compare.seeds) == 5 and p.phase1.min_iterations == 0
    assert p.compare.confirmatory == ["cvfp", "cvfp_min10", "reconstruction"]
    assert p.compare.delta == 0.01 and p.compare.alpha == 0.05 and p.compare.power == 0.8
    cases = [
        (lambda r: r["compare"].update(control="nope"), r"control: unknown arm\(s\) \['nope'\]"),
        (
            lambda r: r["compare"]["arms"].update(x={"phase1.lrr": 1}),
            r"compare\.arms\.x: 'phase1\.lrr' is not a params key",
        ),
        (lambda r: r["compare"]["arms"].update(x={"seed": 1}), r"'seed' cannot be set by an arm"),
        (
            lambda r: r["phase1"].update(min_iterations=11),
            r"min_iterations=11 exceeds max_iterations=10",
        ),
        (lambda r: r["phase1"].update(objective="nothing"), r"'cvfp', 'reconstruction' or 'none'"),
        (
            lambda r: r["compare"].update(confirmatory=["cvfp", "none"]),
            r"confirmatory lists the control 'none'",
        ),
        (
            lambda r: r["compare"].update(confirmatory=["cvfp", "typo"]),
            r"confirmatory: unknown arm\(s\) \['typo'\]",
        ),
        (lambda r: r["compare"].update(delta=1.5), r"compare\.delta"),
        (lambda r: r["compare"].update(alpha=0), r"compare\.alpha"),
        (lambda r: r["compare"].update(bootstrap_resamples=10), r"compare\.bootstrap_resamples"),
    ]
    for mutate, expected in cases:
        with pytest.raises(ParamsError, match=expected):
            load_params(write_params(tmp_path, mutate))


def test_plan_validates_every_arm_and_seed_before_running():
    from tasks.compare import plan

    p = load_params(ROOT / "params.yaml")
    exps = plan(p, ["none", "cvfp_min10"], 2, {"phase2.epochs": 1})
    assert [e["name"] for e in exps] == [
        "cmp-none-s42",
        "cmp-cvfp_min10-s42",
        "cmp-none-s7",
        "cmp-cvfp_min10-s7",
    ]
    assert exps[1]["sets"] == {
        "phase2.epochs": 1,
        "phase1.objective": "cvfp",
        "phase1.min_iterations": 10,
        "seed": 42,
        "baselines.transformer": False,
    }  # only the control trains it
    assert "baselines.transformer" not in exps[0]["sets"]
    with pytest.raises(ValueError, match=r"unknown arm\(s\) \['nope'\]"):
        plan(p, ["nope"])
    with pytest.raises(ValueError, match="compare.seeds lists 5 seed"):
        plan(p, None, 6)
    with pytest.raises(ParamsError, match=r"phase2\.epochs = 0"):
        plan(p, ["cvfp"], 1, {"phase2.epochs": 0})
    assert all(e["invalid"] is None for e in exps)
    p.compare.arms["bad"] = {"phase1.lr": -1.0}
    (bad,) = plan(p, ["bad"], 1)
    assert "phase1.lr = -1.0" in bad["invalid"]


def test_run_report_summary_tells_the_truth_and_links_the_comparison(tmp_path, monkeypatch):
    """reports/report.html: Phase 1 steps, 'converged by construction' instead of a rate as a
    result, the convergence trials as the fixed-point check, and the comparison link + verdicts."""
    import json

    from helpers.report import build, fake_run, section, write_run

    files = fake_run()
    p1 = files["metrics/phase1.json"]
    p1["train"].update(steps=1, converged_by_construction=True, segment_starts=240)
    p1["val"].update(steps=0, converged_by_construction=True, segment_starts=60)
    t = p1["train"]  # the history's last (stopping) iteration
    stop = f"{100 * t['converged'] / t['total']:.1f}% ({t['converged']}/{t['total']})"
    t.update(converged=599, total=640)  # the saved model's own pass differs
    write_run(tmp_path, files)
    monkeypatch.chdir(tmp_path)
    _, html, md = build(tmp_path)
    summary = section(html, "summary")
    assert "objective cvfp: train 1 optimizer step(s)" in summary
    assert f"iteration 1 converged by construction: {stop}" in summary
    assert "not a result); the saved model, after its step: 93.6% (599/640)" in summary
    assert (
        f"converged by construction: {100 * p1['val']['convergence_rate']:.1f}% (" in summary
    )  # val: no step, same rate
    assert "except at the 240 segment starts, for any model; not a result" in summary
    t = p1["val"]["trials"]
    assert (
        "Fixed-point check (val convergence trials)" in summary
        and f"verdict {t['verdict']}" in summary
    )
    assert "compare.html" not in html
    # With a comparison next to it: linked, and its computed verdicts repeated.
    (tmp_path / "reports" / "compare.html").write_text("<html></html>")
    (tmp_path / "metrics" / "compare.json").write_text(json.dumps(_comparison()[0].to_dict()))
    _, html, md = build(tmp_path)
    summary = section(html, "summary")
    assert 'href="compare.html"' in summary
    for row in (  # the headline rows (cvfp/report/headline.py), the control not as a row
        "| Comparison: worse vs none (4 seeds) | worse: test loss worse - none: +0.0801, "
        "95% CI [+0.0788, +0.0815], p (Holm) 1.33e-06 |",
        "| Comparison: incon vs none (4 seeds) | inconclusive (between ",
        "| Comparison: no_context vs none (4 seeds) | interval only (no verdict): test loss "
        "no_context - none: +0.4025, 95% CI [",
    ):
        assert row in md, row
    assert "Comparison: none vs none" not in md


def _git(cwd, *args):
    import subprocess

    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_collect_reads_experiment_commits_and_writes_the_outputs(tmp_path, monkeypatch):
    """tasks.compare.collect on real git refs like `dvc exp run` leaves (refs/exps/...), then
    write_outputs: metrics/compare.json (valid against its model) and both reports."""
    import json

    from cvfp.metrics.base import read
    from tasks.compare import collect, plan, write_outputs
    from tasks.compare_experiment import ExperimentFailed, exp_ref

    monkeypatch.chdir(tmp_path)
    _git(tmp_path, "init", "-q")
    (tmp_path / "params.yaml").write_text("x\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "baseline")
    head = _git(tmp_path, "rev-parse", "HEAD")
    p = load_params(ROOT / "params.yaml")
    exps = plan(p, ["none", "cvfp"], 2)
    records = {}
    for k, e in enumerate(exps):
        made = _experiment(e["arm"], k // 2, e["seed"], 0.0 if e["arm"] == "none" else 0.02)
        conv = made["conversations"]
        rows = [
            (i, int(t), c, b, "" if conv.transformer is None else conv.transformer[j])
            for j, (i, t, c, b) in enumerate(
                zip(conv.ids, conv.targets, conv.cvfp, conv.bigram, strict=True)
            )
        ]
        files = {
            "metrics/phase1.json": json.dumps({"train": {"steps": 1}}),
            "metrics/phase2.json": json.dumps({"cvfp": {"test_loss": made["values"].test_loss}}),
            "metrics/phase2_test_conversations.csv": _table(rows),
        }
        if e["name"] == "cmp-cvfp-s7":
            del files["metrics/phase2_test_conversations.csv"]
        for rel, text in files.items():
            (tmp_path / rel).parent.mkdir(exist_ok=True)
            (tmp_path / rel).write_text(text)
        ref = exp_ref(e["name"])  # on the baseline commit, as dvc names it
        _git(tmp_path, "add", "-A")
        _git(tmp_path, "commit", "-qm", e["name"])
        _git(tmp_path, "update-ref", ref, "HEAD")
        _git(tmp_path, "reset", "-q", "--hard", head)
        records[e["name"]] = e
    got = collect(records["cmp-cvfp-s42"])
    assert got["values"].test_loss == pytest.approx(3.02) and len(got["conversations"].ids) == 3
    with pytest.raises(ExperimentFailed, match=r"cmp-cvfp-s7 .*metrics/phase2_test_conversations"):
        collect(records["cmp-cvfp-s7"])
    out = [collect(records[n]) for n in ("cmp-none-s42", "cmp-cvfp-s42", "cmp-none-s7")]
    data = write_outputs(p, out, ["none", "cvfp"])
    on_disk = read(CompareMetrics, tmp_path / "metrics/compare.json")
    assert json.loads(json.dumps(on_disk.to_dict())) == json.loads(json.dumps(data))
    assert data["arms"]["cvfp"]["diffs"] == [pytest.approx(0.02)]
    assert data["arms"]["cvfp"]["verdict"] == TOO_FEW and data["git_revision"] == head
    md = (tmp_path / "reports/compare.md").read_text()
    assert "cvfp vs none: not enough seeds: 1 seed paired" in md
