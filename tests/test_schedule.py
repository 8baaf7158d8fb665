"""Scheduled runs against a REAL local Prefect server (the session's, conftest.py): the server's
scheduler must create runs for `python -m flows.pipeline --serve` and the served process must
execute them; `prefect deployment run` and `prefect flow-run ls` must work; Ctrl-C stops
serving cleanly. Catches server-dependency breakage (SQLAlchemy 2.1 stops the scheduler,
FastAPI >= 0.151 rejects the CLI's null filters with a 422), which a test harness (no
scheduler) would hide."""

import json
import re
import signal
import subprocess
import time

import httpx
import pytest

from helpers import BIN
from helpers.prefect import stop
from helpers.project import make_project

pytestmark = pytest.mark.server

DEPLOYMENT = "cvfp-pipeline/sched-test"


def api(e, path: str, body: dict | None = None):
    r = httpx.post(f"{e['PREFECT_API_URL']}{path}", json=body or {}, timeout=10)
    r.raise_for_status()
    return r.json()


def cli(e, *args, cwd) -> str:
    p = subprocess.run(
        [str(BIN / "prefect"), *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, f"prefect {' '.join(args)}:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def test_scheduled_and_triggered_runs_complete_on_a_real_server(prefect_server, tmp_path):
    server = prefect_server.env
    proj = make_project(tmp_path / "proj")
    # `--stages download`: the first run runs it (seconds, offline data), later ones skip it
    serve = subprocess.Popen(
        [
            str(BIN / "python"),
            "-m",
            "flows.pipeline",
            "--serve",
            "--interval",
            "5",
            "--stages",
            "download",
            "--name",
            DEPLOYMENT.split("/")[1],
        ],
        cwd=proj,
        env={**server, "PREFECT_RUNNER_POLL_FREQUENCY": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (
            deps := api(
                server, "/deployments/filter", {"deployments": {"name": {"any_": ["sched-test"]}}}
            )
        ):
            assert serve.poll() is None and time.monotonic() < deadline, stop(serve)
            time.sleep(1)
        (dep,) = deps
        assert dep["schedules"][0]["schedule"]["interval"] == 5 and not dep["paused"]

        out = cli(server, "deployment", "run", DEPLOYMENT, cwd=proj)
        manual_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)

        def runs():
            return api(server, "/flow_runs/filter", {"deployments": {"id": {"any_": [dep["id"]]}}})

        deadline = time.monotonic() + 120
        while True:
            done = {r["id"]: r for r in runs() if r["state_type"] == "COMPLETED"}
            scheduled = [r for r in done.values() if r["auto_scheduled"]]
            if manual_id in done and scheduled:
                break
            failed = [r for r in runs() if r["state_type"] in ("FAILED", "CRASHED")]
            assert not failed, (failed, stop(serve)[-3000:])
            assert serve.poll() is None and time.monotonic() < deadline, (
                runs(),
                stop(serve)[-3000:],
            )
            time.sleep(1)
        # the scheduler (not a person) created it: auto_scheduled, the scheduler's idempotency key
        run = scheduled[0]
        assert (
            run["idempotency_key"].startswith("scheduled ")
            and run["created_by"]["type"] == "SCHEDULE"
        )
        assert done[manual_id]["auto_scheduled"] is False
        assert run["parameters"] == {"params_path": "params.yaml", "stages": ["download"]}
        assert (proj / "dvc.lock").exists()  # the run committed the stage to DVC

        assert "Flow Runs" in cli(
            server, "flow-run", "ls", cwd=proj
        )  # was a 422 with fastapi>=0.151
        listed = json.loads(
            cli(server, "flow-run", "ls", "--state-type", "COMPLETED", "-o", "json", cwd=proj)
        )
        assert {run["id"], manual_id} <= {r["id"] for r in listed}

        # Ctrl-C while idle (during a run, Ctrl-C in a terminal interrupts that run too)
        api(server, f"/deployments/{dep['id']}/pause_deployment")
        while any(r["state_type"] in ("PENDING", "RUNNING") for r in runs()):
            assert time.monotonic() < deadline + 30, runs()
            time.sleep(1)
    finally:
        out = stop(serve, signal.SIGINT, timeout=40)  # Ctrl-C: SIGINT to its process group
    assert serve.returncode == 0, out[-3000:]
    assert "never awaited" not in out and "Traceback" not in out, out[-3000:]
    assert "stopped serving cvfp-pipeline/sched-test" in out
    # the scheduler loop logged no error (SQLAlchemy 2.1: "Can't evaluate bulk DML statement").
    # (A busy machine may log a retried "database is locked" from SQLite: not our concern.)
    text = prefect_server.log.read_text()
    assert "InvalidRequestError" not in text and "bulk DML" not in text, text[-3000:]
