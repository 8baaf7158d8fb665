"""python -m flows.compare end to end on a tiny copy of the project: arms x seeds as DVC
experiments, a failing arm (at run time and at validation) that does not stop the sweep,
progress in the flow run's logs, the three outputs and the exit status. The fewest
experiments that show it: 3 arms x 1 seed + 1 arm failing at run time (+ 1 failing at
validation, never run); the statistics over several seeds are tested on their own
(test_compare_stats.py, test_compare_summary.py). The arms are the control (objective none) and the reconstruction
objective, so the sweep also runs that objective end to end through DVC, and shows which
stages a Phase 1 param reruns; the no-context control has the control's phase1 params, so
it restores phase1 and materialize from DVC's run-cache once the control has finished. The
sweep runs 2 experiments at once (`--workers 2`, one torch thread each); then the same comparison again, which restores every experiment (nothing runs);
then the control alone, forced to rerun, on a 2-process Dask LocalCluster: the same bytes as
when it ran beside the others. It all runs in the background from the start of the session
(conftest.py, helpers/jobs.py); the tests check what it left."""

import json
import re
import subprocess

import pytest

from helpers import BIN
from helpers.jobs import ARMS, exp_file
from helpers.project import env

pytestmark = pytest.mark.pipeline


def test_compare_arms_as_dvc_experiments_with_failing_arms(compare_run, prefect_harness):
    proj, done = compare_run.proj, compare_run.first
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]  # 1: an experiment failed, outputs written
    assert f"Comparison report: {(proj / 'reports/compare.html').resolve()}" in out, out[-3000:]

    for rel in ("reports/compare.html", "reports/compare.md", "metrics/compare.json"):
        assert (proj / rel).exists(), rel
    data = compare_run.first_json
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
    assert p1["objective"] == "reconstruction" and p1["epochs"] == p1["max_epochs"] == 4
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
    md = compare_run.first_md
    assert "reconstruction vs none: not enough seeds: 1 seed paired" in md
    assert rec["verdict"] in md and "cmp-broken-s7" in md
    # the run report shows the verdicts: flows.compare reran the report stage (compare.json is
    # its dep), and dvc.lock records it
    assert rec["verdict"] in compare_run.first_report
    assert "no comparison yet" not in compare_run.first_report
    assert "up to date" in compare_run.first_report_status

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
    logs = "\n".join(flow_run_logs()[0])
    assert (
        f"compare: 5 experiment(s): arms {ARMS} x seeds [7]; 2 at once, 1 torch thread(s)" in logs
    )
    assert "experiment 1 of 5 cmp-broken-s7 FAILED in " in logs
    assert "experiment 4 of 5 cmp-invalid-s7 FAILED in " in logs
    for k, name in ((3, "cmp-none-s7"), (2, "cmp-reconstruction-s7")):
        assert f"experiment {k} of 5 {name} done in " in logs, logs
        # A Phase 1 param (the objective, the seed): DVC reruns phase1 and what follows only.
        ran = re.findall(rf"^{name}: Running stage '(\w+)'", logs, re.M)
        assert ran == ["phase1", "materialize", "phase2", "report"], logs
    assert ", ETA " in logs and "compare: 3 of 5 experiment(s) ok in " in logs
    # Longest first: the control (it trains the Transformer) starts before the other arms,
    # here before reconstruction, which comes first in plan order (k = 2 < 3) and now waits
    # for a free worker behind broken.
    started = re.findall(r"^(cmp-\S+): running on 1 torch thread", logs, re.M)
    assert set(started[:2]) == {"cmp-none-s7", "cmp-broken-s7"}, logs
    assert started[2:] == ["cmp-reconstruction-s7", "cmp-no_context-s7"], logs  # invalid: not run
    # no_context has the control's phase1 params: it starts once the control has finished
    # and DVC's run-cache restores phase1 and materialize (the same bytes), phase2 runs.
    lines = logs.splitlines()
    assert lines.index("cmp-no_context-s7: running on 1 torch thread(s)") > max(
        i for i, x in enumerate(lines) if x.startswith("cmp-none-s7: ")
    )
    assert re.findall(r"^cmp-no_context-s7: Stage '(\w+)' is cached", logs, re.M) == [
        "phase1",
        "materialize",
    ]
    assert re.findall(r"^cmp-no_context-s7: Running stage '(\w+)'", logs, re.M) == [
        "phase2",
        "report",
    ]
    assert re.search(
        r"experiment 5 of 5 cmp-no_context-s7 done in \w+ \(CPU \w+\); "
        r"from DVC's run-cache: phase1, materialize;",
        logs,
    ), logs
    for path in ("metrics/phase1.json", "plots/phase1_trials.csv"):
        assert exp_file(proj, "cmp-no_context-s7", path) == exp_file(proj, "cmp-none-s7", path)
    assert data["arms"]["no_context"]["seeds"] == [7]
    # the experiments are independent task runs: no inputs linking one to another
    inputs = {t.name: t.task_inputs for t in flow_run_task_runs()}
    assert len(inputs) == 5 and all(not any(v.values()) for v in inputs.values()), inputs
    # ... and a progress artifact over the whole sweep
    (progress,) = flow_run_artifacts("compare-progress")
    assert progress.type == "progress" and progress.data == 100.0
    assert progress.description.startswith("compare: experiment 5 of 5 done (cmp-")


def _numbers(data: dict) -> dict:
    """compare.json's results (not the run's times, errors or date)."""
    return {k: data.get(k) for k in ("control", "metric", "seeds", "arms", "ablations")}


def test_compare_again_restores_every_experiment_and_dask_gives_the_same_bytes(
    compare_run, prefect_harness
):
    # The same comparison again: every finished experiment is restored from its commit
    # (same code, params and thread count), no DVC stage runs, the numbers are the same.
    again = compare_run.again
    assert again.returncode == 1, (again.stdout + again.stderr)[-3000:]  # the broken arm
    assert _numbers(compare_run.again_json) == _numbers(compare_run.first_json)
    first_logs, again_logs, dask_logs = ("\n".join(r) for r in flow_run_logs())
    assert "3 restored from finished experiments" in again_logs, again_logs
    for k, name in ((3, "cmp-none-s7"), (2, "cmp-reconstruction-s7"), (5, "cmp-no_context-s7")):
        assert re.search(rf"experiment {k} of 5 {name} restored \(\w{{7}}\)", again_logs)
    ran = re.compile(r"^cmp-(none|reconstruction|no_context)-s7: (Running s|S)tage", re.M)
    assert ran.search(first_logs) and not ran.search(again_logs), again_logs
    # The broken arm is not a finished experiment: it runs (and fails) again.
    assert "experiment 1 of 5 cmp-broken-s7 FAILED in " in again_logs

    # The control alone on a 2-process Dask LocalCluster, forced to rerun: the experiment's
    # bytes and the comparison's numbers equal those of the run beside the other arms.
    dask = compare_run.dask
    assert dask.returncode == 0, (dask.stdout + dask.stderr)[-3000:]
    assert "0 restored from finished experiments" in dask_logs
    # --force: every stage downstream of the data reruns, none is restored from DVC's
    # run-cache (which holds the first run of each).
    assert re.findall(r"^cmp-none-s7: Running stage '(\w+)'", dask_logs, re.M) == [
        "phase1",
        "materialize",
        "phase2",
        "report",
    ]
    assert not re.search(r"^cmp-none-s7: Stage '(\w+)' is cached", dask_logs, re.M), dask_logs
    assert compare_run.dask_none_phase2 == compare_run.none_phase2
    assert compare_run.dask_json["arms"]["none"] == compare_run.first_json["arms"]["none"]


def flow_run_logs() -> list[list[str]]:
    """The log messages of each cvfp-compare flow run on the session's server, oldest first."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort, LogSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["cvfp-compare"])),
            sort=FlowRunSort.START_TIME_ASC,
        )
        assert len(runs) == 3, [r.name for r in runs]
        out = []
        for run in runs:  # the server returns at most 200 logs a call
            messages: list[str] = []
            while True:
                page = client.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
                    limit=200,
                    offset=len(messages),
                    sort=LogSort.TIMESTAMP_ASC,
                )
                messages += [log.message for log in page]
                if len(page) < 200:
                    break
            out.append(messages)
        return out


def flow_run_task_runs() -> list:
    """The task runs of the one cvfp-compare flow run on the session's server."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
    )

    with get_client(sync_client=True) as client:
        run = first_compare_run(client)
        return client.read_task_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["cvfp-compare"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
        )


def first_compare_run(client):
    """The session's first cvfp-compare flow run (the sweep of 5 experiments, 2 at once)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    return client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["cvfp-compare"])),
        sort=FlowRunSort.START_TIME_ASC,
    )[0]


def flow_run_artifacts(key: str) -> list:
    """The artifacts `key` of the one cvfp-compare flow run on the session's server."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with get_client(sync_client=True) as client:
        run = first_compare_run(client)
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
                key=ArtifactFilterKey(any_=[key]),
            )
        )


def exp_metrics(proj, name: str, stage: str) -> dict:
    """metrics/<stage>.json as committed by the experiment `name`."""
    return json.loads(exp_file(proj, name, f"metrics/{stage}.json"))


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
