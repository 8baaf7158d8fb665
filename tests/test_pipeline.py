"""End to end on tiny params in temporary copies of the project: dvc repro, the Prefect
flow, and that both front doors share one DVC state."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_MODEL

from tasks.layout import stage_names

BIN = Path(sys.executable).parent
STAGES = list(stage_names())
TINY = {
    "data.num_samples": 300,
    "tokenizer.vocab_size": 400,
    "tokenizer.max_seq_length": 48,
    "tokenizer.num_proc": 1,
    **TINY_MODEL,
    "phase1.max_iterations": 3,
    "phase1.min_converged_ratio": 1.0,  # all 3 iterations run (test_distributed's reference)
    "checks.convergence_trials": 3,
    "checks.probe_samples": 50,
    "phase2.epochs": 2,
    "phase2.batch_size": 128,
    "materialize.chunk_tokens": 1000,
}
pytestmark = pytest.mark.pipeline


def make_project(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("cvfp", "tasks", "flows"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    from cvfp.params import set_dotted

    for k, v in TINY.items():
        set_dotted(raw, k, v)
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run(["git", "init", "-q"], dest)
    run([str(BIN / "dvc"), "init", "-q"], dest)
    shutil.copy(ROOT / ".dvc" / "config", dest / ".dvc" / "config")  # analytics off, plots page
    shutil.copytree(ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")  # plot templates
    return dest


def commit(proj: Path, message: str) -> None:
    """Commit everything git sees (DVC's outputs are git-ignored; dvc.lock is not)."""
    for cmd in (
        ["git", "config", "user.email", "t@example.com"],
        ["git", "config", "user.name", "t"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", message],
    ):
        run(cmd, proj)


def env():
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e["PYTHONPATH"] = ""  # stages import the copy's own code
    return e


def run(cmd, cwd) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    assert p.returncode == 0, f"{cmd} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


def dvc_json(cwd, *args):
    """`dvc <args>` (a --json command) in cwd, parsed; fails the test on a non-zero exit."""
    p = subprocess.run(
        [str(BIN / "dvc"), *args], cwd=cwd, env=env(), capture_output=True, text=True
    )
    assert p.returncode == 0, f"dvc {args} failed:\n{p.stderr[-3000:]}"
    return json.loads(p.stdout)


def repro(cwd) -> list[str]:
    out = run([str(BIN / "dvc"), "repro"], cwd)
    return re.findall(r"Running stage '(\w+)'", out)


def status_clean(cwd) -> bool:
    return "up to date" in run([str(BIN / "dvc"), "status"], cwd)


def metrics(cwd) -> dict:
    def strip(x):  # wall-clock numbers differ run to run; everything else must not
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if "second" not in k and "time" not in k}
        return x

    return {
        n: strip(json.loads((cwd / "metrics" / n).read_text()))
        for n in ("data.json", "phase1.json", "phase2.json")
    }


def test_dvc_repro_end_to_end_then_noop(dvc_project):
    proj, ran = dvc_project
    assert ran == STAGES
    for out in (
        "data/raw",
        "data/tokenizer",
        "data/tokenized",
        "data/split/train",
        "data/split/val",
        "data/split/test",
        "data/split/gx/validation.json",
        "cache/phase1/model.pt",
        "cache/cstar",
        "cache/phase2",
        "metrics/data.json",
        "metrics/phase1.json",
        "metrics/phase2.json",
        "metrics/phase2_test_conversations.csv",
        "plots/phase1_train.csv",
        "plots/phase2_epochs.csv",
        "reports/report.html",
        "reports/report.md",
    ):
        assert (proj / out).exists(), out
    data = json.loads((proj / "metrics/data.json").read_text())
    assert data["val_subset_ok"] is True and data["test_subset_ok"] is True
    assert data["test_conversations"] == 30 and data["heldout_dropped_share"] < 0.01
    assert repro(proj) == []
    assert status_clean(proj)


def test_dvc_views_show_research_numbers_and_plots_offline(dvc_project, tmp_path):
    proj, _ = dvc_project
    # DVC metrics = metrics/summary.json only (timing aside): no stage file's 50 keys
    shown = dvc_json(proj, "metrics", "show", "--json")
    (files,) = [v["data"] for v in shown.values()]
    research = {f for f in files if not f.startswith("metrics/timing/")}
    assert research == {"metrics/summary.json"}, files
    summary = files["metrics/summary.json"]["data"]
    p2 = json.loads((proj / "metrics/phase2.json").read_text())
    assert summary["ppl"]["cvfp"] == round(p2["cvfp"]["val_ppl"], 2)
    assert summary["p1"]["objective"] == "cvfp"
    # plots: an offline page (scripts inline), only the plots defined in dvc.yaml
    p = subprocess.run(
        [str(BIN / "dvc"), "plots", "show", "-o", str(tmp_path / "plots")],
        cwd=proj,
        env=env(),
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    page = (tmp_path / "plots" / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=", page) and "cdn.jsdelivr" not in page
    specs = dvc_json(proj, "plots", "show", "--json")["data"]
    drawn = {name for name, v in specs.items() if v}
    assert drawn == {
        "phase1_convergence",
        "phase1_cvfp_losses",
        "phase1_spectrum",
        "phase2_loss",
        "phase2_accuracy",
    }  # phase1_reconstruction: other objective
    assert "could not find provided field ('epoch')" in p.stderr  # ... and DVC says so
    for name in ("phase1_convergence", "phase1_cvfp_losses"):  # iteration 0 filtered out
        spec = specs[name][0]["content"]
        assert "toNumber(datum['iteration']) >= 1" in json.dumps(spec["transform"])


def flow_run_record(state):
    """What the Prefect API holds about the flow run that ended in `state`: its logs (messages),
    task runs and artifacts (by key, latest first)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs are sent in batches
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200)
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    by_key = {}
    for a in arts:
        by_key.setdefault(a.key, []).append(a)
    return [log.message for log in logs], tasks, by_key


def test_flow_matches_dvc_and_leaves_status_clean(
    dvc_project, tmp_path, monkeypatch, prefect_harness
):
    from flows.pipeline import pipeline

    proj, _ = dvc_project
    other = make_project(tmp_path / "flowproj")
    monkeypatch.chdir(other)
    state = pipeline("params.yaml", return_state=True)
    outcome = state.result()
    assert outcome == {s: "ran" for s in STAGES}
    assert status_clean(other)
    assert repro(other) == []  # DVC accepts what the flow produced
    assert metrics(other) == metrics(proj)  # same numbers from both front doors

    logs, tasks, arts = flow_run_record(state)
    # the library's INFO lines reach the run's logs: every Phase 2 epoch and the summary line
    epochs = [m for m in logs if m.startswith("phase2 epoch ")]
    p2 = json.loads((other / "metrics/phase2.json").read_text())["cvfp"]
    assert len(epochs) == p2["epochs_run"] and "phase2: val ppl cvfp" in "\n".join(logs)
    assert any(m.startswith("iter 1: converged") for m in logs)  # cvfp/phase1.py per iteration
    assert any(m.startswith("transformer epoch ") for m in logs)
    # progress artifacts of the long stages, finished at 100%
    for stage in ("phase1", "materialize", "phase2"):
        assert f"{stage}-progress" in arts, sorted(arts)
        final = arts[f"{stage}-progress"][0]
        assert (
            final.type == "progress"
            and final.data == 100.0
            and final.description == f"{stage}: done"
        )
    assert {
        "cvfp-summary",
        "split-metrics",
        "phase1-metrics",
        "phase2-metrics",
        "cvfp-report",
    } <= set(arts)
    summary = {r["quantity"]: r["value"] for r in json.loads(arts["cvfp-summary"][0].data)}
    assert summary["Val perplexity: CVFP (Phase 2)"].startswith(f"{p2['val_ppl']:.2f}")
    assert [
        t.name for t in sorted(tasks, key=lambda t: t.expected_start_time) if t.name in STAGES
    ] == STAGES


def test_flow_skips_everything_after_dvc_repro(dvc_project, monkeypatch, prefect_harness):
    from flows.pipeline import pipeline

    proj, _ = dvc_project
    monkeypatch.chdir(proj)
    state = pipeline("params.yaml", return_state=True)
    assert state.result() == {s: "skipped" for s in STAGES}
    _, tasks, arts = flow_run_record(state)
    # each skipped stage says so in the task-run list: name, state name and DVC's reason
    assert sorted(t.name for t in tasks) == sorted(f"{s} (skipped: up to date)" for s in STAGES)
    for t in tasks:
        assert t.state.type.value == "COMPLETED" and t.state.name == "Skipped (DVC)"
        assert t.state.message.startswith("skipped, up to date in dvc.lock"), t.state.message
    # the results are published even though nothing ran
    summary = {r["quantity"]: r["value"] for r in json.loads(arts["cvfp-summary"][0].data)}
    p2 = json.loads((proj / "metrics/phase2.json").read_text())
    assert summary["Val perplexity: bigram"] == f"{p2['baselines']['bigram']['val_ppl']:.2f}"
    assert "### baselines.bigram" in arts["phase2-metrics"][0].data
    assert "cvfp-report" in arts


def set_params(proj: Path, **changes) -> None:
    """Edit params.yaml in `proj`: set_params(p, **{"phase2.lr": 0.001})."""
    from cvfp.params import set_dotted

    raw = yaml.safe_load((proj / "params.yaml").read_text())
    for key, value in changes.items():
        set_dotted(raw, key, value)
    (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def test_a_param_puts_only_the_stages_that_read_it_out_of_date(dvc_copy):
    """`dvc status` after editing params: out of date are the stages that list the key (and the
    report, which reads all of params.yaml); materialize reads only phase1.context_reset.
    That a rerun phase1 makes DVC rerun what follows it, and nothing before it, is checked on
    the comparison's experiments (test_compare_flow.py: the stages each one ran)."""
    proj = dvc_copy
    dvc_status = lambda: json.loads(run([str(BIN / "dvc"), "status", "--json"], proj))  # noqa: E731
    set_params(proj, **{"phase2.lr": 0.001})
    assert dvc_status() == {
        "phase2": [{"changed deps": {"params.yaml": {"phase2": "modified"}}}],
        "report": [{"changed deps": {"params.yaml": "modified"}}],
    }
    set_params(proj, **{"phase1.objective": "reconstruction"})
    assert dvc_status() == {
        "phase1": [{"changed deps": {"params.yaml": {"phase1": "modified"}}}],
        "phase2": [{"changed deps": {"params.yaml": {"phase2": "modified"}}}],
        "report": [{"changed deps": {"params.yaml": "modified"}}],
    }
    diff = json.loads(run([str(BIN / "dvc"), "params", "diff", "--json"], proj))["params.yaml"]
    assert {k: (v["old"], v["new"]) for k, v in diff.items()} == {
        "phase1.objective": ("cvfp", "reconstruction"),
        "phase2.lr": (0.002, 0.001),
    }
