"""Report stage on a tiny fake-but-consistent run: sections, numbers, self-contained HTML,
clear errors for missing inputs, and the warnings section."""

from __future__ import annotations

import base64
import copy
import json
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cvfp.metrics.phase1 import Trials
from cvfp.params import load_params
from cvfp.report import TITLES, fmt_acc, fmt_count, fmt_er, fmt_int, fmt_ppl

ROOT = Path(__file__).resolve().parents[1]
D = 16  # context dim of the fake run


def _history(total: int, rates: list[float], train: bool) -> list[dict]:
    rows = []
    for it, rate in enumerate(rates):
        conv = int(rate * total)
        rows.append(
            {
                "iteration": it,
                "converged": conv,
                "total": total,
                "convergence_rate": conv / total,
                "cvfp_loss": None if it == 0 else 0.5 / it,
                "diversity_loss": None if it == 0 else -0.1 * it,
                "total_loss": None if it == 0 else 0.05 / it - 0.09 * it,
                "steps": int(train and it > 0),
                "skipped_steps": 0,
                "seconds": 0.25,
            }
        )
    return rows


def _split_metrics(hist: list[dict], er: float, trials: dict | None = None) -> tuple[dict, dict]:
    f = hist[-1]
    sv = [1.0 / (i + 1) for i in range(D)]
    er_check = {
        "effective_rank": er,
        "dim": D,
        "ratio": er / D,
        "percent": 100 * er / D,
        "actual_rank": D,
        "singular_values": sv,
    }
    deg = {
        "mean_pairwise_l2": 5.2,
        "mean_pairwise_cosine": 0.03,
        "global_attractor": False,
        "mean_norm": 4.0,
        "zero_solution": False,
        "norm_std": 0.01,
        "norm_min": 3.9,
        "norm_max": 4.1,
        "sparsity": 0.004,
    }
    ident = {
        "mean_deviation_from_mean": 3.9,
        "not_near_zero": True,
        "input_output_cosine": 0.54,
        "identity_warning": False,
        "different_token_output_similarity": 0.49,
        "ignores_tokens_warning": False,
        "context_token_cosine": 0.006,
        "context_equals_token_warning": False,
    }
    m = {
        "converged": f["converged"],
        "total": f["total"],
        "convergence_rate": f["convergence_rate"],
        "iterations": len(hist) - 1,
        "stopped_early": False,
        "steps": sum(r["steps"] for r in hist),
        "converged_by_construction": False,
        "segment_starts": 8,
        "cvfp_loss": f["cvfp_loss"],
        "diversity_loss": f["diversity_loss"],
        "total_loss": f["total_loss"],
        "skipped_steps": 0,
        "effective_rank": er,
        "effective_rank_ratio": er / D,
        "actual_rank": D,
        "degeneracy": deg,
        "identity": ident,
    }
    checks = {"effective_rank": er_check, "degeneracy": deg, "identity": ident, "history": hist}
    if trials is not None:
        m["trials"] = {k: trials[k] for k in Trials.model_fields}  # the keys phase1.json keeps
        checks["convergence"] = trials
    return m, checks


def fake_run() -> dict[str, object]:
    """Consistent inputs of a tiny run: relative path -> JSON object (or CSV/HTML text)."""
    train_h = _history(640, [0.0, 0.6, 0.97], train=True)
    val_h = _history(128, [0.0, 0.5, 1.0], train=False)
    losses = [0.3 * 0.5**k for k in range(10)]
    trials = {
        "initial_loss": losses[0],
        "final_loss": losses[-1],
        "reduction_percent": 99.8,
        "std": 0.09,
        "slope": -0.02,
        "verdict": "CONVERGING",
        "losses": losses,
        "trials": 10,
        "final_diff": losses[-1],
        "passed": True,
    }
    tm, tc = _split_metrics(train_h, 13.55)
    vm, vc = _split_metrics(val_h, 12.34, trials)
    phase1 = {
        "objective": "cvfp",
        "max_iterations": 10,
        "min_iterations": 0,
        "iterations_text": "2/10",
        "train_seconds": 1.5,
        "train": tm,
        "val": vm,
    }
    data = {
        "source": "chatterbot",
        "raw_conversations": 60,
        "tokenizer_kind": "bpe",
        "vocab_size": 300,
        "max_seq_length": 32,
        "truncated_conversations": 3,
        "split_strategy": "holdout",
        "val_fraction": 0.1,
        "test_fraction": 0.1,
        "train_conversations": 40,
        "train_tokens": 640,
        "train_unique_tokens": 200,
        "val_conversations": 8,
        "val_tokens": 128,
        "val_unique_tokens": 90,
        "unexpected_val_tokens": 0,
        "val_subset_ok": True,
        "test_conversations": 9,
        "test_tokens": 131,
        "test_unique_tokens": 93,
        "unexpected_test_tokens": 0,
        "test_subset_ok": True,
        "heldout_dropped_share": 0.0123,
        "dropped_conversations": {"empty": 1, "val_unseen_token": 0, "test_unseen_token": 0},
        "val_dropped_tokens": 1,
        "test_dropped_tokens": 2,
        "val_cut_conversations": 1,
        "test_cut_conversations": 2,
        "gx_success": True,
        "gx_expectations_evaluated": 2,
        "gx_expectations_successful": 2,
    }
    gx = {
        "success": True,
        "suite_name": "val_tokens_from_train",
        "statistics": {
            "evaluated_expectations": 2,
            "successful_expectations": 2,
            "unsuccessful_expectations": 0,
            "success_percent": 100.0,
        },
        "results": [
            {
                "success": True,
                "expectation_config": {
                    "type": "expect_table_row_count_to_be_between",
                    "kwargs": {"min_value": 1},
                },
                "result": {"observed_value": 128},
            },
            {
                "success": True,
                "expectation_config": {
                    "type": "expect_column_values_to_be_in_set",
                    "kwargs": {"column": "token_id"},
                },
                "result": {"element_count": 128, "unexpected_count": 0},
            },
        ],
    }
    epochs = [
        {
            "epoch": e,
            "train_loss": 5.0 - 0.5 * e,
            "val_loss": 5.1 - 0.4 * e,
            "train_ppl": 0.0,
            "val_ppl": 0.0,
            "train_acc": 0.05 * e,
            "val_acc": 0.04 * e,
            "seconds": 0.3,
        }
        for e in (1, 2, 3)
    ]
    import math

    for r in epochs:
        r["train_ppl"], r["val_ppl"] = math.exp(r["train_loss"]), math.exp(r["val_loss"])
    best = epochs[-1]
    phase2 = {
        "cvfp": {
            "best_epoch": 3,
            "epochs_run": 3,
            "stopped_early": False,
            "heads": "single",
            "freeze_context": False,
            "phase1_objective": "cvfp",
            "head_init": "zero",
            "context": "cstar",
            **{k: best[k] for k in best if k not in ("epoch", "seconds")},
            "test_loss": 4.05,
            "test_ppl": math.exp(4.05),
            "test_acc": 0.115,
            "trainable_params": 12345,
            "train_seconds": 0.9,
            "train_positions": 600,
            "val_positions": 120,
            "test_positions": 122,
            "stages": {
                "single": {
                    "first_epoch": 1,
                    "last_epoch": 3,
                    "best_epoch": 3,
                    "stopped_early": False,
                }
            },
        },
        "baselines": {
            "bigram": {
                "val_loss": 4.5,
                "val_ppl": math.exp(4.5),
                "val_acc": 0.11,
                "test_loss": 4.6,
                "test_ppl": math.exp(4.6),
                "test_acc": 0.105,
                "trainable_params": 90000,
                "train_seconds": 0.01,
                "k": 0.03,
                "k_grid": [0.01, 0.03, 0.1],
                "val_loss_by_k": [4.6, 4.5, 4.55],
                "distinct_pairs": 640,
            },
            "transformer": {
                "val_loss": 3.2,
                "val_ppl": math.exp(3.2),
                "val_acc": 0.21,
                "test_loss": 3.3,
                "test_ppl": math.exp(3.3),
                "test_acc": 0.205,
                "best_epoch": 3,
                "train_loss": 3.0,
                "train_ppl": math.exp(3.0),
                "trainable_params": 12000,
                "target_params": 12345,
                "param_ratio": 0.972,
                "train_seconds": 2.5,
                "epochs": 3,
                "n_embd": 16,
                "n_layer": 2,
                "n_head": 2,
                "n_positions": 256,
                "train_targets": 600,
            },
        },
        "ablations": {
            "zero_context": {
                "val_loss": 4.9,
                "val_ppl": math.exp(4.9),
                "val_acc": 0.03,
                "test_loss": 4.95,
                "test_ppl": math.exp(4.95),
                "test_acc": 0.025,
            },
            "shuffled_context": {
                "val_loss": 4.7,
                "val_ppl": math.exp(4.7),
                "val_acc": 0.05,
                "test_loss": 4.75,
                "test_ppl": math.exp(4.75),
                "test_acc": 0.045,
            },
        },
    }
    csv = "epoch,train_loss,val_loss,train_ppl,val_ppl,train_acc,val_acc,seconds\n" + "".join(
        ",".join(
            str(r[k])
            for k in (
                "epoch",
                "train_loss",
                "val_loss",
                "train_ppl",
                "val_ppl",
                "train_acc",
                "val_acc",
                "seconds",
            )
        )
        + "\n"
        for r in epochs
    )
    return {
        "metrics/data.json": data,
        "data/split/gx/validation.json": gx,
        "data/split/gx/data_docs/index.html": "<html><body>docs</body></html>",
        "metrics/phase1.json": phase1,
        "cache/phase1/checks.json": {"train": tc, "val": vc},
        "metrics/phase2.json": phase2,
        "plots/phase2_epochs.csv": csv,
        "metrics/timing/phase1.json": {
            "stage": "phase1",
            "seconds": 1.75,
            "finished_utc": "2026-01-01T00:00:00+00:00",
        },
    }


def write_run(root: Path, files: dict[str, object]) -> None:
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    for rel, obj in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=2))


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    files = fake_run()
    write_run(tmp_path, files)
    monkeypatch.chdir(tmp_path)
    return tmp_path, files


def build(root: Path):
    import tasks.report as report

    params = load_params(root / "params.yaml")
    out = report.run(params)
    return out, Path(out["html"]).read_text(), Path(out["md"]).read_text()


def section(html_text: str, key: str) -> str:
    start = html_text.index(f'<section id="{key}">')
    return html_text[start : html_text.index("</section>", start)]


class TagCollector(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input", "source", "col", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.counts, self.attrs = [], [], {}, []

    def handle_starttag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()


def test_formats_follow_the_spec():
    assert fmt_count(1741, 6400) == "27.2% (1741/6400)"
    assert fmt_count(1280, 1280) == "100.0% (1280/1280)"
    assert fmt_er(627.29, 768) == "627.29/768 = 81.7%"


def test_report_has_every_section_and_the_metrics_numbers(run_dir):
    root, files = run_dir
    out, html_text, md = build(root)
    assert out["warnings"] == 0 and Path(out["md"]).name == "report.md"
    assert (root / "reports" / "report.html").exists()
    for title in TITLES.values():
        assert f"<h2>{title}</h2>" in html_text
        assert f"## {title}" in md
    p1, p2, data = (
        files["metrics/phase1.json"],
        files["metrics/phase2.json"],
        files["metrics/data.json"],
    )
    expected = [
        p1["iterations_text"],
        *(fmt_count(p1[sp]["converged"], p1[sp]["total"]) for sp in ("train", "val")),
        *(fmt_er(p1[sp]["effective_rank"], D) for sp in ("train", "val")),
        "89.3%",
        "429/768 = 55.9%",  # seeds' reference figures
        fmt_ppl(p2["cvfp"]["val_ppl"]),
        fmt_acc(p2["cvfp"]["val_acc"]),
        fmt_int(p2["cvfp"]["trainable_params"]),
        fmt_ppl(p2["cvfp"]["test_ppl"]),
        fmt_acc(p2["cvfp"]["test_acc"]),
        fmt_ppl(p2["ablations"]["zero_context"]["test_ppl"]),
        fmt_ppl(p2["ablations"]["shuffled_context"]["test_ppl"]),
        "Sanity checks",
        "val perplexity (selection)",
        "chosen on val from 0.01, 0.03, 0.1",
        fmt_int(data["train_tokens"]),
        fmt_int(data["val_conversations"]),
        fmt_int(data["test_tokens"]),
        "1.23%",  # heldout_dropped_share
        "val_unseen_token",
        "2/2 expectations successful",
        "CONVERGING",
        "seed: 42",
    ]
    expected += [
        fmt_ppl(b[f"{sp}_ppl"]) for b in p2["baselines"].values() for sp in ("val", "test")
    ]
    for text in expected:
        assert text in html_text, text
        assert text in md, text
    # per-iteration convergence table for train, as percent and count
    for row in files["cache/phase1/checks.json"]["train"]["history"]:
        assert fmt_count(row["converged"], row["total"]) in section(html_text, "phase1")
    assert (
        "<h2>Reference figures from the seeds</h2>" in html_text and "not as a target" in html_text
    )
    assert "Wall times are in metrics/timing/<stage>.json" in md  # not on the page
    assert "phase1.objective" in md and "cvfp" in md


def test_html_parses_and_is_self_contained(run_dir):
    root, _ = run_dir
    _, html_text, md = build(root)
    parser = TagCollector()
    parser.feed(html_text)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    for tag in ("html", "head", "body", "style", "table", "section", "h2"):
        assert parser.counts.get(tag, 0) >= 1, tag
    assert parser.counts.get("script", 0) == 0 and parser.counts.get("link", 0) == 0
    imgs = [v for tag, k, v in parser.attrs if tag == "img" and k == "src"]
    assert len(imgs) == 3  # phase1 history, spectrum, phase2
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for tag, k, v in parser.attrs:
        if k in ("src", "href"):
            assert not v.lower().startswith(("http://", "https://", "//")), (tag, k, v)
    assert ("a", "href", "../data/split/gx/data_docs/index.html") in parser.attrs
    assert "http://" not in html_text and "https://" not in html_text
    assert "http://" not in md and "https://" not in md and "data:image" not in md


@pytest.mark.parametrize(
    "rel,stage",
    [
        ("metrics/phase2.json", "phase2"),
        ("cache/phase1/checks.json", "phase1"),
        ("metrics/data.json", "split"),
        ("plots/phase2_epochs.csv", "phase2"),
    ],
)
def test_missing_input_names_the_file_and_its_stage(run_dir, rel, stage):
    root, _ = run_dir
    (root / rel).unlink()
    with pytest.raises(FileNotFoundError) as err:
        build(root)
    assert rel in str(err.value) and f"'{stage}' stage" in str(err.value)
    assert not (root / "reports" / "report.html").exists()


def test_warnings_section_lists_failed_checks_with_numbers(run_dir):
    root, files = run_dir
    files = copy.deepcopy(files)
    p1 = files["metrics/phase1.json"]
    p1["train"]["identity"].update(identity_warning=True, input_output_cosine=0.987)
    p1["val"]["trials"].update(verdict="DIVERGING", passed=False, final_diff=0.0421, slope=0.0123)
    p1["val"].update(convergence_rate=0.5, converged=64, total=128)
    files["metrics/data.json"].update(val_subset_ok=False, unexpected_val_tokens=7)
    files["metrics/data.json"].update(test_subset_ok=False, unexpected_test_tokens=3)
    p2 = files["metrics/phase2.json"]
    p2["cvfp"]["val_ppl"] = 500.0  # worse than the bigram
    write_run(root, files)
    out, html_text, md = build(root)
    warn = section(html_text, "warnings")
    for text in (
        "identity_warning",
        "0.987",
        "DIVERGING",
        "0.0421",
        "val_subset_ok",
        "7 val token",
        "test_subset_ok",
        "3 test token",
        "min_converged_ratio",
        "50.0% (64/128)",
        "worse_than_bigram",
        "500.00",
        fmt_ppl(p2["baselines"]["bigram"]["val_ppl"]),
    ):
        assert text in warn, text
    assert out["warnings"] >= 6
    assert f"{out['warnings']} check(s) failed or warned" in md
    assert "0.987 WARN" in section(html_text, "phase1")


def test_clean_run_has_no_warnings_and_cli_prints_the_html_path(run_dir, monkeypatch, capsys):
    root, _ = run_dir
    import tasks.report as report

    monkeypatch.setattr(sys, "argv", ["python -m tasks.report"])
    report.main()
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert Path(printed) == (root / "reports" / "report.html").resolve()
    html_text = Path(printed).read_text()
    assert "No check failed or warned." in section(html_text, "warnings")
    assert json.loads((root / "metrics/timing/report.json").read_text())["stage"] == "report"


def test_the_page_is_the_same_bytes_for_the_same_inputs(run_dir):
    """A DVC output: no time, git revision or wall time on the page, so a rerun, the
    run-cache and `dvc exp apply` all give the page that goes with the numbers."""
    root, _ = run_dir
    _, html1, md1 = build(root)
    (root / "metrics/timing/phase2.json").write_text(
        json.dumps({"stage": "phase2", "seconds": 9.0, "durations": {"epochs": [{"seconds": 0.3}]}})
    )
    _, html2, md2 = build(root)
    assert (html1, md1) == (html2, md2)
    assert "report generated" not in md1 and "9.00 s" not in html2  # the timing file's
    assert "made by the report stage from its DVC dependencies" in md1


def test_a_comparison_is_read_and_the_placeholder_is_none(run_dir):
    import tasks.report as report

    root, _ = run_dir
    path = root / "metrics" / "compare.json"
    assert report.write_compare_placeholder(path) and not report.write_compare_placeholder(path)
    assert report.read_compare(path) is None
    _, _, md = build(root)
    assert "no comparison yet: python -m flows.compare" in md
    path.write_text("{broken")
    with pytest.raises(ValueError, match=r"compare\.json is not valid JSON.*flows\.compare"):
        report.read_compare(path)


def test_thresholds_are_printed_from_the_params(run_dir):
    import yaml

    root, _ = run_dir
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["checks"].update(identity_warn=0.5, convergence_final_diff=0.01)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    _, _, md = build(root)
    # the rule from the params, the verdict from the metrics (the check ran with 0.95)
    assert "| cosine(input context, output context) | <= 0.5 | 0.54 pass | 0.54 pass |" in md
    assert "| final diff | 0.000585937 (pass if < 0.01) |" in md
    assert "| mean norm | zero solution if < 0.1 |" in md


def test_a_metrics_file_without_a_key_fails_naming_the_file_and_key(run_dir):
    root, files = run_dir
    del files["metrics/phase2.json"]["cvfp"]["val_ppl"]
    write_run(root, files)
    with pytest.raises(
        ValueError, match=r"phase2\.json does not match Phase2Metrics: cvfp\.val_ppl"
    ):
        build(root)
    assert not (root / "reports" / "report.html").exists()
