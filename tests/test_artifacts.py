"""The result artifacts' content (flows/artifacts.py) and the progress listener hook
(cvfp/utils.py), without Prefect: plain functions of the metrics files."""

import json
import re

import pytest
from conftest import ROOT

from cvfp import utils
from cvfp.utils import eta_text, progress, progress_listener
from flows.artifacts import read_metrics, sections, sections_markdown, summary_rows


def rows(m):
    return {r["quantity"]: r["value"] for r in summary_rows(m)}


def test_summary_of_the_committed_metrics_is_rounded():
    m = read_metrics(ROOT / "metrics")
    p2 = m["phase2"]
    s = rows(m)
    assert s["Val perplexity: CVFP (Phase 2)"] == (
        f"{p2['cvfp']['val_ppl']:.2f} (best epoch {p2['cvfp']['best_epoch']})"
    )
    assert s["Val perplexity: bigram"] == f"{p2['baselines']['bigram']['val_ppl']:.2f}"
    assert (
        s["Val perplexity: Transformer (same params)"]
        == f"{p2['baselines']['transformer']['val_ppl']:.2f}"
    )
    assert (
        s["Val perplexity: CVFP with zero C* (ablation)"]
        == f"{p2['ablations']['zero_context']['val_ppl']:.2f}"
    )
    assert (
        s["Val perplexity: CVFP with shuffled C* (ablation)"]
        == f"{p2['ablations']['shuffled_context']['val_ppl']:.2f}"
    )
    assert s["Convergence-trial verdict (val)"] == m["phase1"]["val"]["trials"]["verdict"]
    assert s["Effective rank (train / val)"] == (
        f"{m['phase1']['train']['effective_rank_text']} / "
        f"{m['phase1']['val']['effective_rank_text']}"
    )
    assert not any(re.search(r"\.\d{6,}", v) for v in s.values())  # no 15-digit floats


def test_summary_tolerates_missing_files_and_keys():
    s = rows({})
    assert set(s.values()) == {"n/a"}
    # e.g. phase1.objective: none (no Phase 1 training) and steps per split present
    s = rows(
        {
            "phase1": {"objective": "none", "train": {"steps": 1200}, "val": {"steps": 300}},
            "phase2": {"cvfp": {"val_ppl": 20.123456}},
        }
    )
    assert s["Phase 1 objective"] == "none" and s["Phase 1 steps (train / val)"] == "1,200 / 300"
    assert s["Val perplexity: CVFP (Phase 2)"] == "20.12"
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
        bar.set_postfix(loss="1.0")  # tqdm methods pass through
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
        ((40, 120, 12.0), "40/120 (33%), 0:12 elapsed, ETA 0:24"),
        ((0, 10, 1.0), "0/10 (0%), 0:01 elapsed"),
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
