"""The result artifacts' content (flows/artifacts.py), the stage progress (flows/progress.py)
and the progress listener hook (cvfp/runtime/utils.py), without Prefect: plain functions of the
metrics files."""

import json
import re

import pytest

from cvfp.analysis.formats import fmt_er
from cvfp.params import load_params
from cvfp.runtime import utils
from cvfp.runtime.utils import eta_text, progress, progress_listener
from flows.artifacts import read_metrics, sections, sections_markdown, summary_rows
from helpers import ROOT


def rows(m):
    return {r["quantity"]: r["value"] for r in summary_rows(m)}


def test_summary_of_the_committed_metrics_is_rounded():
    m = read_metrics(ROOT / "metrics")
    p2 = m["phase2"]
    s = rows(m)
    assert s["Val perplexity: CVFP (Phase 2)"] == (
        f"val {p2['cvfp']['val_ppl']:.2f} (best epoch {p2['cvfp']['best_epoch']})"
    )
    assert s["Val perplexity: bigram"] == f"val {p2['baselines']['bigram']['val_ppl']:.2f}"
    assert (
        s["Val perplexity: Transformer (same params)"]
        == f"val {p2['baselines']['transformer']['val_ppl']:.2f}"
    )
    assert (
        s["Val perplexity: CVFP with zero C* (ablation)"]
        == f"val {p2['ablations']['zero_context']['val_ppl']:.2f}"
    )
    assert (
        s["Val perplexity: CVFP with shuffled C* (ablation)"]
        == f"val {p2['ablations']['shuffled_context']['val_ppl']:.2f}"
    )
    assert s["Convergence-trial verdict (val)"] == f"val {m['phase1']['val']['trials']['verdict']}"
    dim = load_params(ROOT / "params.yaml").model.context_dim
    assert s["Effective rank (train / val)"] == (
        f"train {fmt_er(m['phase1']['train']['effective_rank'], dim)}, "
        f"val {fmt_er(m['phase1']['val']['effective_rank'], dim)}"
    )
    assert not any(re.search(r"\.\d{6,}", v) for v in s.values())  # no 15-digit floats


def test_summary_tolerates_missing_files_and_keys():
    s = rows({})
    assert s.pop("Comparison (over seeds)") == "no comparison yet: python -m flows.compare"
    assert s.pop("Perplexity on val: CVFP / Transformer / bigram") == (
        "val: CVFP n/a, Transformer not trained, bigram n/a (no test numbers yet: val is the "
        "selection split)"
    )
    assert set(s.values()) == {"n/a"}
    # e.g. phase1.objective: none (no Phase 1 training) and steps per split present
    s = rows(
        {
            "phase1": {"objective": "none", "train": {"steps": 1200}, "val": {"steps": 300}},
            "phase2": {"cvfp": {"val_ppl": 20.123456}},
        }
    )
    assert s["Phase 1"].startswith("objective none: train 1,200 optimizer step(s)")
    assert s["Phase 1 steps (train / val)"] == "train 1,200, val 300"
    assert s["Val perplexity: CVFP (Phase 2)"] == "val 20.12"
    assert s["Convergence-trial verdict (val)"] == "n/a" and s["Val perplexity: bigram"] == "n/a"


def test_read_metrics_skips_missing_and_broken_files(tmp_path):
    (tmp_path / "phase1.json").write_text("{broken")
    (tmp_path / "phase2.json").write_text(json.dumps({"cvfp": {"val_ppl": 3.0}}))
    assert read_metrics(tmp_path) == {"phase2": {"cvfp": {"val_ppl": 3.0}}}


def test_stage_tables_are_grouped_by_section_and_rounded():
    p2 = read_metrics(ROOT / "metrics")["phase2"]
    sec = sections(p2)
    assert {
        "cvfp",
        "cvfp.stages.single",
        "baselines.bigram",
        "baselines.transformer",
        "ablations.zero_context",
        "ablations.shuffled_context",
    } <= set(sec)
    bigram = dict(sec["baselines.bigram"])
    assert bigram["val_ppl"] == f"{p2['baselines']['bigram']['val_ppl']:.2f}"
    assert bigram["val_acc"].endswith("%") and bigram["trainable_params"] == "4,000,000"
    md = sections_markdown("phase2", p2)
    assert "### ablations.shuffled_context" in md and not re.search(r"\.\d{6,}", md)
    assert all(len(line) < 100 for line in md.splitlines())


def test_progress_listeners_see_every_bar_even_disabled(monkeypatch):
    monkeypatch.setattr(utils, "PROGRESS_NOTIFY_S", 0.0)
    seen = []
    with progress_listener(lambda *a: seen.append(a[:3])):
        for _ in progress(range(3), desc="epoch 1", enabled=False):
            pass
        bar = progress(total=10, desc="C*", enabled=False)
        bar.update(4)
        bar.set_postfix(loss="1.0")
        bar.close()
        for _ in progress(iter("ab"), desc="no len", enabled=False):
            break  # closing early still reports
    assert seen[:3] == [("epoch 1", 1, 3), ("epoch 1", 2, 3), ("epoch 1", 3, 3)]
    assert seen[-1] == ("no len", 0, None)  # the item taken was not finished
    assert ("C*", 4, 10) in seen
    seen.clear()
    for _ in progress(range(2), enabled=False):  # the listener is gone after the block
        pass
    assert seen == []


@pytest.mark.parametrize(
    "args,text",
    [
        ((40, 120, 12.0), "40/120 (33%), 00:12 elapsed, ETA 00:24"),
        ((0, 10, 1.0), "0/10 (0%), 00:01 elapsed"),
        ((5, None, 4000.0), "5 done, 1:06:40 elapsed"),
    ],
)
def test_eta_text(args, text):
    assert eta_text(*args) == text


def test_summary_json_is_the_rounded_headline_numbers(tmp_path):
    import shutil

    from tasks.summary import write_summary

    for name in ("data.json", "phase1.json", "phase2.json"):
        shutil.copy(ROOT / "metrics" / name, tmp_path / name)
    written = write_summary(tmp_path)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    p2 = json.loads((ROOT / "metrics/phase2.json").read_text())
    assert on_disk == written
    assert on_disk["ppl"] == {
        "cvfp": round(p2["cvfp"]["val_ppl"], 2),
        "bigram": round(p2["baselines"]["bigram"]["val_ppl"], 2),
        "transformer": round(p2["baselines"]["transformer"]["val_ppl"], 2),
        "zero_c": round(p2["ablations"]["zero_context"]["val_ppl"], 2),
        "shuffled_c": round(p2["ablations"]["shuffled_context"]["val_ppl"], 2),
    }
    p1 = json.loads((ROOT / "metrics/phase1.json").read_text())
    assert on_disk["p1"]["verdict"] == p1["val"]["trials"]["verdict"]
    assert on_disk["p1"]["steps_train"] == p1["train"].get("steps")  # None until recorded


COMPARE = {  # metrics/compare.json as flows.compare writes it (the plan's interface)
    "control": "none",
    "metric": "test loss",
    "arms": {
        "none": {"n_seeds": 5, "seeds": [42, 7, 123, 1, 2]},
        "cvfp": {
            "verdict": "inconclusive",
            "diff_mean": -0.0123,
            "ci95": [-0.031, 0.0061],
            "p_holm": 0.21,
            "n_seeds": 5,
        },
        "no_context": {"diff_mean": 0.41, "ci95": [0.38, 0.44], "n_seeds": 5},
    },
}


def test_headline_leads_with_verdicts_models_check_and_phase1():
    m = read_metrics(ROOT / "metrics")
    p1 = m["phase1"]
    table = summary_rows(m, COMPARE, 3, "< 0.001")
    first = [(r["quantity"], r["value"]) for r in table[:6]]
    assert first[0] == (
        "Comparison: cvfp vs none (5 seeds)",
        "inconclusive: test loss cvfp - none: -0.0123, 95% CI [-0.0310, +0.0061], p (Holm) 0.21",
    )
    assert (
        first[1][1] == "interval only (no verdict): test loss no_context - none: +0.4100, "
        "95% CI [+0.3800, +0.4400]"
    )
    assert first[2][0] == "Perplexity on test: CVFP / Transformer / bigram"  # Phase 2 read test
    word = "PASSED" if p1["val"]["trials"]["passed"] else "NOT PASSED"
    assert first[3] == (
        "Fixed-point check (val convergence trials)",
        f"{word}: val final diff {p1['val']['trials']['final_diff']:.4g} (pass if < 0.001), "
        f"trial verdict {p1['val']['trials']['verdict']}",
    )
    assert first[4][0] == "Phase 1" and f"train {p1['train']['steps']:,} optimizer" in first[4][1]
    assert ("converged by construction" in first[4][1]) == p1["train"]["converged_by_construction"]
    assert first[5] == ("Warnings (failed or warning checks)", "3")
    # metrics from before the test split: the models are compared on val, labelled so
    p2 = json.loads(json.dumps(m["phase2"]))
    for model in (p2["cvfp"], p2["baselines"]["bigram"], p2["baselines"]["transformer"]):
        del model["test_ppl"]
    assert "Perplexity on val: CVFP / Transformer / bigram" in rows({**m, "phase2": p2})
    # with test numbers, the models are compared on test
    p2["cvfp"]["test_ppl"], p2["baselines"]["bigram"]["test_ppl"] = 21.456, 40.0
    p2["baselines"]["transformer"]["test_ppl"] = 18.0
    s = rows({**m, "phase2": p2})
    assert s["Perplexity on test: CVFP / Transformer / bigram"] == (
        "test: CVFP 21.46, Transformer 18.00, bigram 40.00"
    )


def test_summary_artifact_through_the_prefect_server(prefect_harness, tmp_path):
    """cvfp-summary on the session's real server: created first, updated in place at the end,
    read back through the client with the verdict, the check word and labelled splits."""
    import shutil

    from prefect import flow, get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.artifacts import publish_details, publish_summary

    for name in ("phase1.json", "phase2.json", "data.json"):
        shutil.copy(ROOT / "metrics" / name, tmp_path / name)

    @flow
    def publish() -> None:
        first = publish_summary(tmp_path, ROOT / "params.yaml")  # no comparison yet
        (tmp_path / "compare.json").write_text(json.dumps(COMPARE))
        (tmp_path / "summary.json").write_text(json.dumps({"warnings": 2}))
        publish_summary(tmp_path, ROOT / "params.yaml", artifact_id=first)
        publish_details(tmp_path, tmp_path)

    state = publish(return_state=True)
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the run's logs now, while the session's server is up
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    (summary,) = [a for a in arts if a.key == "cvfp-summary"]  # updated, not a second one
    assert min(arts, key=lambda a: a.created).key == "cvfp-summary"
    table = {r["quantity"]: r["value"] for r in json.loads(summary.data)}
    assert table["Comparison: cvfp vs none (5 seeds)"].startswith("inconclusive: ")
    p1 = json.loads((ROOT / "metrics/phase1.json").read_text())
    check = table["Fixed-point check (val convergence trials)"]
    assert check.startswith("PASSED: val " if p1["val"]["trials"]["passed"] else "NOT PASSED: val ")
    assert table["Phase 1 convergence (train / val)"].startswith("train ")
    assert ", val " in table["Effective rank (train / val)"]
    assert table["Warnings (failed or warning checks)"] == "2"
    assert "after this run" in summary.description


def test_stage_plan_covers_the_whole_stage(tiny_params):
    """Phase 2 with 3 epochs and the Transformer: "epoch k of N", an integer percent and an
    ETA that adds the Transformer's epochs still to run (at Phase 2's pace until measured)."""
    from flows.progress import StagePlan, stage_loops

    p = tiny_params.model_copy(deep=True)
    p.phase2.epochs, p.baselines.transformer = 3, True
    plan = StagePlan("phase2", stage_loops("phase2", p))
    plan.see("phase2 epoch 1", 50, 100, 10.0)  # 10 s for half an epoch: 20 s per epoch
    assert plan.eta() == pytest.approx(10 + 2 * 20 + 3 * 20)
    pct, text = plan.status(elapsed=10.0)
    assert pct == round(100 * 10 / (10 + 110)) and pct.is_integer()
    assert text.startswith("phase2: epoch 1 of 3, then 3 transformer epochs; stage 8%, 0:10 ")
    assert text.endswith("ETA 1:50 (phase2 epoch 1: 50/100 (50%))")
    plan.see("cvfp eval", 3, 10, 1.0)  # another bar: the stage position stays
    assert plan.status(12.0)[1].startswith("phase2: epoch 1 of 3, then")
    # Phase 2 stops early after epoch 2: the Transformer then runs 2 epochs, at its own pace
    plan.see("phase2 epoch 2", 100, 100, 20.0)
    plan.see("transformer epoch 1", 25, 100, 5.0)
    assert plan.eta() == pytest.approx(15 + 20)
    assert plan.status(60.0)[1].startswith("phase2: transformer epoch 1 of 2; stage 63%")


def test_stage_plan_of_phase1_counts_iterations(tiny_params):
    from flows.progress import StagePlan, stage_loops

    p = tiny_params.model_copy(deep=True)
    p.phase1.max_iterations = 10
    plan = StagePlan("phase1", stage_loops("phase1", p))
    plan.see("phase1 iter 0", 5, 10, 1.0)  # the zero-start pass: no loop yet
    assert plan.status(1.0) == (0.0, "phase1: stage 0%, 0:01 elapsed (phase1 iter 0: 5/10 (50%))")
    plan.see("phase1 train", 2, 10, 8.0)  # 2 iterations in 8 s, the third running
    assert plan.eta() == pytest.approx(8 * 4 + 10 * 4)
    assert plan.status(9.0)[1].startswith(
        "phase1: train iteration 3 of 10, then 10 val iterations;"
    )
    plan.see("phase1 val", 1, 10, 1.0)  # train stopped early: val's own pace
    assert plan.eta() == pytest.approx(9.0)
    assert "then" not in plan.status(30.0)[1]


def test_compare_progress_text():
    from flows.progress import CompareProgress

    p = CompareProgress.__new__(CompareProgress)  # the text alone, without a Prefect run
    p.n, p.workers, p.k, p.seconds = 5, 2, 2, [60.0, 80.0]
    assert p.text("cmp-cvfp-s7", "done", 75.0) == (
        40.0,
        "compare: experiment 2 of 5 done (cmp-cvfp-s7 done); 40%, 1:15 elapsed, ETA 1:45",
    )
