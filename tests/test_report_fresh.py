"""The report a researcher opens matches the workspace (issue 22): reports/report.{html,md}
are DVC outputs without volatile fields, and metrics/compare.json is a dep of the report
stage. The three sequences that used to leave a stale report, on copies of the session's
tiny project: a param A -> B -> A (the report restored from the run-cache), `dvc exp apply`,
and a new comparison (flows.compare refreshes the report; the full sweep is in
test_compare_flow)."""

import json
import os
import re

import pytest
import yaml

from helpers import BIN, ROOT
from helpers.project import env, run

pytestmark = pytest.mark.pipeline


def dvc(proj, *args) -> str:
    return run([str(BIN / "dvc"), *args], proj)


def report_matches(proj, workers: int) -> str:
    """reports/report.md shows the workspace's params and summary.json's numbers."""
    md = (proj / "reports/report.md").read_text()
    assert yaml.safe_load((proj / "params.yaml").read_text())["orchestration"]["workers"] == workers
    assert re.search(rf"^orchestration: \{{.*workers: {workers}[,}}]", md, re.M), md[-2000:]
    summary = json.loads((proj / "metrics/summary.json").read_text())
    assert f"Phase 2 CVFP val (selection) perplexity | val: {summary['ppl']['cvfp']:.2f}" in md
    return md


def test_a_b_a_param_change_and_exp_apply_restore_the_matching_report(dvc_copy):
    proj = dvc_copy
    before = report_matches(proj, 2)
    out = dvc(proj, "exp", "run", "-n", "workers3", "-S", "orchestration.workers=3")
    assert re.findall(r"Running stage '(\w+)'", out) == ["report"]
    after_b = report_matches(proj, 3)
    # back to A: DVC reruns the report or restores it from the run-cache (params.yaml, a
    # dep, is rewritten by -S); either way it is A's page
    dvc(proj, "exp", "run", "-n", "workers2", "-S", "orchestration.workers=2")
    assert report_matches(proj, 2) == before
    # B once more: the same params.yaml bytes as the first B, restored from the run-cache
    out = dvc(proj, "exp", "run", "-n", "workers3again", "-S", "orchestration.workers=3")
    assert "Running stage" not in out, out
    assert report_matches(proj, 3) == after_b
    dvc(proj, "exp", "apply", "workers2")
    assert report_matches(proj, 2) == before
    assert "up to date" in dvc(proj, "status")
    # the README's research view of these experiments fits 200 columns, nothing elided
    header, rows = research_view(proj)
    for column in ("Experiment", "seed", "phase1.objective", "orchestration.workers"):
        assert column in header, header
    # DVC shows no column for a metric that is null in every row: the test perplexities appear
    # once Phase 2 records the test split (metrics/phase2.json cvfp.test_ppl)
    tested = json.loads((proj / "metrics/phase2.json").read_text())["cvfp"].get("test_ppl")
    for model in ("cvfp", "transformer", "bigram"):
        assert (f"test_ppl.{model}" in header) == (tested is not None), header
    assert not any(c in header for c in ("Created", "cvfp/", "params.yaml"))
    assert not re.search(r"(?<!test_)ppl\.cvfp", header), header  # val ppl is not in the view
    assert any("[workers3]" in r and " 3 " in r for r in rows), rows


def research_view(proj) -> tuple[str, list[str]]:
    """The README's research-view command run at COLUMNS=200: (header line, other lines);
    fails when any line is wider than 200 or anything is elided."""
    import shlex
    import subprocess

    (line,) = [x for x in (ROOT / "README.md").read_text().splitlines() if "research" in x]
    (cmd,) = re.findall(r"`(dvc exp show [^`]+)`", line)
    args = shlex.split(cmd)
    done = subprocess.run(
        [str(BIN / "dvc"), *args[1:]],
        cwd=proj,
        env={**env(), "COLUMNS": "200"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    lines = [x for x in done.stdout.splitlines() if x.strip(" ─")]
    assert lines and all(len(x) <= 200 for x in lines), done.stdout
    assert "…" not in done.stdout, done.stdout
    return lines[0], lines[1:]


def test_a_new_comparison_refreshes_the_report(dvc_copy, monkeypatch):
    from flows.artifacts import refresh_report

    proj = dvc_copy
    assert "no comparison yet: python -m flows.compare" in (proj / "reports/report.md").read_text()
    compare = {
        "control": "none",
        "metric": "test loss",
        "arms": {
            "none": {"n_seeds": 2},
            "cvfp": {"verdict": "worse", "diff_mean": 0.05, "ci95": [0.01, 0.09], "n_seeds": 2},
        },
    }
    (proj / "metrics/compare.json").write_text(json.dumps(compare))
    assert "report" in dvc(proj, "status")  # the report depends on the comparison
    monkeypatch.chdir(proj)
    monkeypatch.setenv("PATH", f"{BIN}:{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", "")  # the stage imports the copy's own code
    assert refresh_report() == "report refreshed with the comparison"
    md = (proj / "reports/report.md").read_text()
    assert (
        "| Comparison: cvfp vs none (2 seeds) | worse: test loss cvfp - none: +0.0500, 95% CI [+0.0100, +0.0900] |"
        in md
    )
    assert "up to date" in dvc(proj, "status")
