"""The comparison's statistics and verdict (cvfp/compare.py) on known numbers, the report
built from them, and the plan of experiments (tasks/compare.py)."""

import math

import pytest
from conftest import ROOT

from cvfp.compare import (
    BETTER,
    NO_EFFECT,
    TOO_FEW,
    WORSE,
    experiment_values,
    mean_std,
    paired,
    summarise,
    verdict,
)
from cvfp.compare_report import build_compare_report
from cvfp.params import ParamsError, load_params


def test_mean_std_is_the_sample_std():
    m, sd = mean_std([1, 2, 3, 4])
    assert m == 2.5 and sd == pytest.approx(math.sqrt(5 / 3))
    assert mean_std([]) == (None, None) and mean_std([7.0]) == (7.0, None)


def test_paired_differences_on_the_issue_numbers_are_within_noise():
    # Issue 12's hand-run numbers (seeds 42, 7, 123): CVFP-trained vs untrained stack.
    cvfp = {42: 19.10, 7: 18.81, 123: 19.16}
    none = {42: 18.73, 7: 19.11, 123: 19.00}
    p = paired("cvfp", cvfp, "none", none)
    assert p.diffs == pytest.approx([0.37, -0.30, 0.16])
    assert p.mean == pytest.approx(0.23 / 3)
    assert p.std == pytest.approx(
        math.sqrt(((0.37 - 0.23 / 3) ** 2 + (-0.30 - 0.23 / 3) ** 2 + (0.16 - 0.23 / 3) ** 2) / 2)
    )
    assert p.verdict == NO_EFFECT
    assert (
        p.text == "cvfp vs none: +0.08 ± 0.34 val ppl (paired over 3 seeds): no measurable effect"
    )


def test_verdict_better_worse_and_the_boundaries():
    p = paired("a", {1: 18.0, 2: 18.1, 3: 18.2}, "c", {1: 19.0, 2: 19.3, 3: 19.1})
    assert p.diffs == pytest.approx([-1.0, -1.2, -0.9]) and p.verdict == BETTER
    assert p.text == "a vs c: -1.03 ± 0.15 val ppl (paired over 3 seeds): better"
    assert p.t == pytest.approx(p.mean / (p.std / math.sqrt(3)))
    assert paired("a", {1: 20.0, 2: 20.5}, "c", {1: 19.0, 2: 19.4}).verdict == WORSE
    # A negative mean within the spread is still no effect ("whatever its sign").
    assert verdict(-0.5, 0.5, 3) == NO_EFFECT and verdict(-0.51, 0.5, 3) == BETTER
    assert verdict(0.0, 0.0, 3) == NO_EFFECT and verdict(0.1, 0.0, 2) == WORSE
    # Only seeds both arms finished are paired; one seed has no spread.
    one = paired("a", {1: 18.0, 2: 17.0}, "c", {1: 19.0})
    assert one.seeds == [1] and one.verdict == TOO_FEW and "paired over 1 seed)" in one.text


def _values(ppl, tr=15.0, steps=1):
    p1 = {
        "train": {
            "steps": steps,
            "converged_by_construction": steps == 1,
            "effective_rank_ratio": 0.8,
        },
        "val": {
            "effective_rank_ratio": 0.7,
            "trials": {"final_diff": 0.1, "verdict": "CONVERGING"},
        },
    }
    p2 = {
        "cvfp": {"val_ppl": ppl, "val_acc": 0.5, "best_epoch": 2},
        "baselines": {
            "bigram": {"val_ppl": 80.0, "val_acc": 0.4},
            "transformer": {"val_ppl": tr, "val_acc": 0.6},
        },
        "ablations": {
            "zero_context": {"val_ppl": ppl + 80},
            "shuffled_context": {"val_ppl": ppl + 140},
        },
    }
    return experiment_values(p1, p2)


def test_summarise_and_report_keys_verdicts_and_failures():
    def ok(arm, seed, ppl, **kw):
        return {
            "arm": arm,
            "seed": seed,
            "name": f"cmp-{arm}-s{seed}",
            "status": "ok",
            "seconds": 10.0,
            "values": _values(ppl, **kw),
        }

    exps = [
        ok("none", 42, 19.0, steps=0),
        ok("cvfp", 42, 18.0),
        ok("none", 7, 19.4, steps=0),
        ok("cvfp", 7, 18.3),
        {"arm": "recon", "seed": 42, "name": "cmp-recon-s42", "status": "failed", "error": "boom"},
        ok("recon", 7, 17.0),
    ]
    s = summarise(exps, {"none": {"phase1.objective": "none"}, "cvfp": {}, "recon": {}}, "none")
    none, cvfp, recon = (s["arms"][a] for a in ("none", "cvfp", "recon"))
    assert none["val_ppl_mean"] == pytest.approx(19.2) and none["val_ppl_std"] == pytest.approx(
        math.sqrt(0.08)
    )
    assert (
        none["phase1_steps"] == [0, 0]
        and cvfp["phase1_steps"] == [1, 1]
        and cvfp["seeds"] == [42, 7]
    )
    assert cvfp["verdict"] == "cvfp vs none: -1.05 ± 0.07 val ppl (paired over 2 seeds): better"
    assert recon["failed_seeds"] == [42] and recon["verdict"].endswith("not enough seeds")
    assert s["failed"] == [{"arm": "recon", "seed": 42, "name": "cmp-recon-s42", "error": "boom"}]
    tr = s["baselines"]["transformer"]
    assert (
        tr["source_arm"] == "none"
        and tr["val_ppl_mean"] == 15.0
        and tr["verdict"].endswith(": better")
    )
    assert s["ablations"]["cvfp"]["zero_context"]["paired"]["mean"] == pytest.approx(80.0)
    assert s["ablations"]["cvfp"]["zero_context"]["paired"]["verdict"] == WORSE
    html, md = build_compare_report(s, "shared: none")
    for text in (
        cvfp["verdict"],
        "boom",
        "cmp-recon-s42",
        "19.20 ± 0.28",
        "Plots are in compare.html",
    ):
        assert text in md, text
    assert html.count("data:image/png;base64,") == 1 and "better" in html


def test_compare_params_are_validated(tmp_path):
    from conftest import write_params

    p = load_params(ROOT / "params.yaml")
    assert (
        p.compare.run == ["none", "cvfp", "cvfp_min10", "reconstruction"]
        and p.compare.control == "none"
    )
    assert len(p.compare.seeds) == 3 and p.phase1.min_iterations == 0
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
    with pytest.raises(ValueError, match="compare.seeds lists 3 seed"):
        plan(p, None, 4)
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

    from test_report import build, fake_run, section, write_run

    files = fake_run()
    p1 = files["metrics/phase1.json"]
    p1["train"].update(steps=1, converged_by_construction=True, segment_starts=240)
    p1["val"].update(steps=0, converged_by_construction=True, segment_starts=60)
    stop = p1["train"]["convergence"]  # the history's last (stopping) iteration
    p1["train"]["convergence"] = "93.7% (600/640)"  # the saved model's own pass differs
    write_run(tmp_path, files)
    monkeypatch.chdir(tmp_path)
    _, html, md = build(tmp_path)
    summary = section(html, "summary")
    assert "objective cvfp: train 1 optimizer step(s)" in summary
    assert f"iteration 1 converged by construction: {stop}" in summary
    assert "not a result); the saved model, after its step: 93.7% (600/640)" in summary
    assert (
        f"converged by construction: {p1['val']['convergence']} (" in summary
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
    (tmp_path / "metrics" / "compare.json").write_text(
        json.dumps(
            {
                "arms": {
                    "none": {"verdict": "none: the control"},
                    "cvfp": {
                        "verdict": "cvfp vs none: +0.08 ± 0.34 val ppl (paired over 3 seeds): no measurable effect"
                    },
                }
            }
        )
    )
    _, html, md = build(tmp_path)
    assert 'href="compare.html"' in section(html, "summary")
    assert "cvfp vs none: +0.08 ± 0.34 val ppl (paired over 3 seeds): no measurable effect" in md
