"""The comparison's params and plan of experiments (tasks/compare.py), the run report's
summary of it, and collecting the experiments' commits and outputs."""

import pytest

from cvfp.analysis.compare_metrics import CompareMetrics
from cvfp.analysis.compare_verdict import TOO_FEW
from cvfp.params import ParamsError, load_params
from helpers import ROOT
from helpers.compare import comparison, conversation_table, experiment


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
    (tmp_path / "metrics" / "compare.json").write_text(json.dumps(comparison()[0].to_dict()))
    _, html, md = build(tmp_path)
    summary = section(html, "summary")
    assert 'href="compare.html"' in summary
    for row in (  # the headline rows (cvfp/analysis/report/headline.py), the control not as a row
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

    from cvfp.runtime.metrics_base import read
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
        made = experiment(e["arm"], k // 2, e["seed"], 0.0 if e["arm"] == "none" else 0.02)
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
            "metrics/phase2_test_conversations.csv": conversation_table(rows),
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
