"""Report stage on a tiny fake-but-consistent run: sections, numbers, self-contained HTML,
clear errors for missing inputs, and the warnings section."""

from __future__ import annotations

import base64
import copy
import json
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cvfp.analysis.formats import fmt_acc, fmt_count, fmt_er, fmt_int, fmt_ppl
from cvfp.analysis.report.inputs import TITLES
from helpers.report import D, build, fake_run, section, write_run


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    files = fake_run()
    write_run(tmp_path, files)
    monkeypatch.chdir(tmp_path)
    return tmp_path, files


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
        f"{p1['train']['iterations']}/{p1['max_iterations']} (stopped early",  # iterations
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
