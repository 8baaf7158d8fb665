"""End to end on tiny params in temporary copies of the project: dvc repro, the Prefect
flow, and that both front doors share one DVC state."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import BIN, ROOT
from helpers.project import TINY, dvc_json, env, make_project, repro, run, status_clean
from tasks.layout import stage_names

STAGES = list(stage_names())
pytestmark = pytest.mark.pipeline


def lock_outs(cwd) -> dict[str, str]:
    """{output path: the hash dvc.lock records} over every stage."""
    lock = yaml.safe_load((Path(cwd) / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for st in lock["stages"].values() for o in st.get("outs", [])}


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
        "phase1_fixed_point",
        "phase1_convergence",
        "phase1_spectrum",
        "phase2_loss",
        "phase2_accuracy",
    }  # phase1_reconstruction: other objective
    assert "could not find provided field ('epoch')" in p.stderr  # ... and DVC says so
    # no single-point chart: the fixed-point check has one point per trial, the convergence
    # chart train and val from iteration 0; iteration 0 and 1 are marked, not drawn as learning
    trials = specs["phase1_fixed_point"][0]["content"]["data"]["values"]
    assert len(trials) == TINY["checks.convergence_trials"]
    conv = specs["phase1_convergence"][0]["content"]
    rows = conv["data"]["values"]
    assert {r["filename"] for r in rows} == {"phase1_train.csv", "phase1_val.csv"}
    kinds = {(r["iteration"], r["kind"]) for r in rows}
    assert {("0", "zero start"), ("1", "by construction")} <= kinds, kinds
    line, marks, label = conv["layer"]
    assert line["mark"]["type"] == "line" and "datum.kind === 'iteration'" in json.dumps(line)
    assert marks["encoding"]["shape"]["field"] == "kind" and "by construction" in json.dumps(label)


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
    seen = []  # phase2-progress as the server holds it while the stage runs

    def read_progress(*_):
        from prefect import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        with get_client(sync_client=True) as client:
            arts = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["phase2-progress"]))
            )
        seen.extend((a.data, a.description) for a in arts)

    from cvfp.runtime.utils import progress_listener

    with progress_listener(read_progress):  # called before the flow's own listener
        state = pipeline("params.yaml", return_state=True)
    outcome = state.result()
    assert outcome == {s: "ran" for s in STAGES}
    assert status_clean(other), run([str(BIN / "dvc"), "status"], other)
    assert repro(other) == []  # DVC accepts what the flow produced
    assert metrics(other) == metrics(proj)  # same numbers from both front doors
    # the same bytes for every output (issue 23: tokenize's state.json fingerprint differed,
    # so switching front door reran every stage after it)
    assert lock_outs(other) == lock_outs(proj)

    logs, tasks, arts = flow_run_record(state)
    # the library's INFO lines reach the run's logs: every Phase 2 epoch and the summary line
    epochs = [m for m in logs if m.startswith("phase2 epoch ")]
    p2 = json.loads((other / "metrics/phase2.json").read_text())["cvfp"]
    assert len(epochs) == p2["epochs_run"] and "phase2: test ppl cvfp" in "\n".join(logs)
    # cvfp/phase1/trainer.py per iteration, naming the split
    assert any(m.startswith("phase1 train iter 1: converged") for m in logs)
    assert any(m.startswith("phase1 val iter 1: converged") for m in logs)
    assert any(m.startswith("transformer epoch ") for m in logs)
    # progress artifacts of the long stages, finished at 100%
    for stage in ("phase1", "materialize", "phase2"):
        assert f"{stage}-progress" in arts, sorted(arts)
        final = arts[f"{stage}-progress"][0]
        assert final.type == "progress" and final.data == 100.0
        assert final.description.startswith(f"{stage}: done in ")
    # during Phase 2 (2 epochs, then the Transformer's): the whole stage, "epoch k of N"
    during = [d for _, d in seen if d.startswith("phase2: epoch ")]
    assert any(
        d.startswith("phase2: epoch 1 of 2, then 2 transformer epochs; stage ") for d in during
    ), seen
    assert all(float(pct).is_integer() for pct, _ in seen)
    assert any(", ETA " in d for d in during), during
    assert {
        "cvfp-summary",
        "split-metrics",
        "phase1-metrics",
        "phase2-metrics",
        "cvfp-report",
    } <= set(arts)
    summary = {r["quantity"]: r["value"] for r in json.loads(arts["cvfp-summary"][0].data)}
    assert summary["Val perplexity: CVFP (Phase 2)"].startswith(f"val {p2['val_ppl']:.2f}")
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
    stage_runs = [t for t in tasks if t.name != "publish-results"]
    assert sorted(t.name for t in stage_runs) == sorted(
        f"{s} (skipped: up to date)" for s in STAGES
    )
    for t in stage_runs:
        assert t.state.type.value == "COMPLETED" and t.state.name == "Skipped (DVC)"
        assert t.state.message.startswith("skipped, up to date in dvc.lock"), t.state.message
    # the results are published even though nothing ran
    summary = {r["quantity"]: r["value"] for r in json.loads(arts["cvfp-summary"][0].data)}
    p2 = json.loads((proj / "metrics/phase2.json").read_text())
    assert summary["Val perplexity: bigram"] == f"val {p2['baselines']['bigram']['val_ppl']:.2f}"
    assert "### baselines.bigram" in arts["phase2-metrics"][0].data
    assert "cvfp-report" in arts


def set_params(proj: Path, **changes) -> None:
    """Edit params.yaml in `proj`: set_params(p, **{"phase2.lr": 0.001})."""
    from cvfp.params import set_dotted

    raw = yaml.safe_load((proj / "params.yaml").read_text())
    for key, value in changes.items():
        set_dotted(raw, key, value)
    (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def test_a_param_puts_only_the_stages_that_read_it_out_of_date(dvc_copy, monkeypatch):
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
    # the flow's rerun reason names the key, old -> new (flows/dvc_state.py)
    from flows.dvc_state import stage_status

    monkeypatch.chdir(proj)
    lr = yaml.safe_load((ROOT / "params.yaml").read_text())["phase2"]["lr"]
    assert stage_status("phase2") == (False, f"changed params: phase2.lr {lr} -> 0.001")
    assert stage_status("report") == (False, f"changed params: phase2.lr {lr} -> 0.001")
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
