"""python -m flows.compare end to end on a tiny copy of the project: arms x seeds as DVC
experiments, a failing arm (at run time and at validation) that does not stop the sweep,
progress in the flow run's logs, the three outputs and the exit status. The fewest
experiments that show it: 2 arms x 1 seed + 1 arm failing at run time (+ 1 failing at
validation, never run); the statistics over several seeds are tested on their own
(test_compare.py). The arms are the control (objective none) and the reconstruction
objective, so the sweep also runs that objective end to end through DVC, and shows which
stages a Phase 1 param reruns. The sweep runs in the background from the start of the
session (conftest.py); the test checks what it left."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_pipeline import BIN, commit, env, run

pytestmark = pytest.mark.pipeline
ARMS = ["broken", "none", "reconstruction", "invalid"]


def run_compare(project, server, tmp_path_factory):
    """`python -m flows.compare` in a copy of the session's tiny project (`project()` waits
    for it), reporting to the session's Prefect server: (project, finished process). The copy gets
    two arms that fail: one at run time (distribution diversity cannot be split into chunks:
    phase1 raises), one at validation (a negative learning rate); compare.seeds starts at 7,
    not the workspace's seed 42, so the experiments' seed shows it came from the comparison."""
    proj = tmp_path_factory.mktemp("cmp") / "proj"
    shutil.copytree(project()[0], proj, symlinks=True)
    raw = yaml.safe_load((proj / "params.yaml").read_text())
    raw["compare"]["arms"]["broken"] = {
        "phase1.diversity.kind": "distribution",
        "phase1.chunk_tokens": 7,
    }
    raw["compare"]["arms"]["invalid"] = {"phase1.lr": -1.0}
    raw["compare"]["seeds"] = [7, 42]
    (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    commit(proj, "compare arms")
    cmd = [str(BIN / "python"), "-m", "flows.compare", "--arms", *ARMS, "--seeds", "1"]
    cmd += ["-S", "phase2.epochs=1"]
    e = {**env(), "PREFECT_API_URL": server().url}
    return proj, subprocess.run(cmd, cwd=proj, env=e, capture_output=True, text=True)


@pytest.fixture(scope="session")
def compare_run():
    from conftest import job

    return job("compare_run")


def test_compare_arms_as_dvc_experiments_with_failing_arms(compare_run, prefect_harness):
    proj, done = compare_run
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]  # 1: an experiment failed, outputs written
    assert f"Comparison report: {(proj / 'reports/compare.html').resolve()}" in out, out[-3000:]

    for rel in ("reports/compare.html", "reports/compare.md", "metrics/compare.json"):
        assert (proj / rel).exists(), rel
    data = json.loads((proj / "metrics/compare.json").read_text())
    assert data["control"] == "none" and data["seeds"] == [7]  # --seeds 1: the first seed
    none, rec = data["arms"]["none"], data["arms"]["reconstruction"]
    assert none["seeds"] == [7] and rec["seeds"] == [7]
    assert none["phase1_steps"] == [0] and rec["phase1_steps"][0] > 0
    loss = {
        arm: data["arms"][arm]["per_seed"]["7"]["test_loss"] for arm in ("none", "reconstruction")
    }
    assert (
        none["test_loss_mean"] == loss["none"] > 0
        and rec["test_loss_mean"] == loss["reconstruction"] > 0
    )
    assert none["role"] == "control" and "diff_mean" not in none
    assert rec["diffs"] == [pytest.approx(loss["reconstruction"] - loss["none"])]
    # One seed: no test can be made; every key is there, the undefined ones null.
    assert rec["role"] == "confirmatory" and rec["n_seeds"] == 1
    assert rec["verdict"] == "not enough seeds" and rec["ci95"] is None and rec["p"] is None
    assert rec["delta"] == pytest.approx(0.00995033) and rec["seeds_needed"] is None
    # The per-seed bootstrap over the test conversations of metrics/phase2_test_conversations.csv
    assert rec["bootstrap"]["7"]["conversations"] == rec["per_seed"]["7"]["test_conversations"] >= 1
    assert rec["bootstrap"]["7"]["diff"] == pytest.approx(rec["diffs"][0], abs=1e-5)
    tr = data["baselines"]["transformer"]
    assert tr["source_arm"] == "none" and tr["seeds"] == [7]  # only the control trains it
    assert rec["per_seed"]["7"]["transformer_test_ppl"] is None
    # The reconstruction objective through DVC: its checkpoint feeds materialize and Phase 2,
    # which starts from its trained head (epoch 0 is a candidate: never worse than Phase 1).
    p1, p2 = (exp_metrics(proj, "cmp-reconstruction-s7", n) for n in ("phase1", "phase2"))
    assert p1["objective"] == "reconstruction" and p1["iterations_text"] == "4/4 epochs"
    assert p1["val"]["ppl"] > 1 and "effective_rank" in p1["val"]
    assert (
        p2["cvfp"]["head_init"] == "phase1" and p2["cvfp"]["phase1_objective"] == "reconstruction"
    )
    assert p2["cvfp"]["test_loss"] == loss["reconstruction"]
    assert p2["cvfp"]["val_ppl"] <= p1["val"]["ppl"] * (1 + 1e-4)
    # The failing arms: reported with their errors; the broken arm ran first, the rest ran.
    failed = {(f["arm"], f["seed"]): f["error"] for f in data["failed"]}
    assert set(failed) == {("broken", 7), ("invalid", 7)}
    assert "cannot be split into chunks" in failed[("broken", 7)]
    assert "phase1.lr = -1.0" in failed[("invalid", 7)]
    assert data["arms"]["broken"]["seeds"] == [] and data["arms"]["broken"]["failed_seeds"] == [7]
    md = (proj / "reports/compare.md").read_text()
    assert "reconstruction vs none: not enough seeds: 1 seed paired" in md
    assert "cmp-broken-s7" in md

    # The experiments are DVC experiments with the arm's params and the seed; the workspace
    # keeps its params.
    shown = exp_show(proj)
    assert {n: shown[n] for n in ("cmp-none-s7", "cmp-reconstruction-s7")} == {
        "cmp-none-s7": {"seed": 7, "objective": "none", "phase2.epochs": 1},
        "cmp-reconstruction-s7": {"seed": 7, "objective": "reconstruction", "phase2.epochs": 1},
    }
    assert not any(n.startswith(("cmp-broken", "cmp-invalid")) for n in shown), shown
    assert (
        subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "params.yaml"], cwd=proj).returncode
        == 0
    )

    # Progress in the flow run's logs: each experiment with its outcome and the ETA, and
    # DVC's stage lines as they happen.
    logs = "\n".join(flow_run_logs(proj))
    assert f"compare: 4 experiment(s): arms {ARMS} x seeds [7]" in logs
    assert "experiment 1 of 4 cmp-broken-s7 FAILED in " in logs
    assert "experiment 4 of 4 cmp-invalid-s7 FAILED in " in logs
    for k, name in ((2, "cmp-none-s7"), (3, "cmp-reconstruction-s7")):
        assert f"experiment {k} of 4 {name} done in " in logs, logs
        # A Phase 1 param (the objective, the seed): DVC reruns phase1 and what follows only.
        ran = re.findall(rf"^{name}: Running stage '(\w+)'", logs, re.M)
        assert ran == ["phase1", "materialize", "phase2", "report"], logs
    assert ", ETA " in logs and "compare: 2 of 4 experiment(s) ok in " in logs


def flow_run_logs(proj: Path) -> list[str]:
    """The log messages of the one cvfp-compare flow run on the session's server."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        LogFilter,
        LogFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["cvfp-compare"]))
        )
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=200)
    return [log.message for log in logs]


def exp_metrics(proj, name: str, stage: str) -> dict:
    """metrics/<stage>.json as committed by the experiment `name`."""
    (ref,) = [
        r
        for r in run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], proj).split()
        if r.endswith(f"/{name}")
    ]
    return json.loads(run(["git", "show", f"{ref}:metrics/{stage}.json"], proj))


def exp_show(proj) -> dict[str, dict]:
    """`dvc exp show --json`: experiment name -> its seed, phase1 objective, phase2 epochs."""
    p = subprocess.run(
        [str(BIN / "dvc"), "exp", "show", "--json"],
        cwd=proj,
        env=env(),
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = {}
    for baseline in json.loads(p.stdout):
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs", []):
                params = rev["data"]["params"]["params.yaml"]["data"]
                out[rev.get("name") or exp.get("name")] = {
                    "seed": params["seed"],
                    "objective": params["phase1"]["objective"],
                    "phase2.epochs": params["phase2"]["epochs"],
                }
    return out
