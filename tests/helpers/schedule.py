"""test_schedule's session job: `python -m flows.pipeline --serve` against the session's real
Prefect server until the scheduler has created a run and the served process has completed
it and a manual one. Mostly waiting for the scheduler, so it runs in the background
(conftest.py); test_schedule.py asserts on what it returns."""

import json
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from helpers import BIN
from helpers.prefect import stop
from helpers.project import make_project

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


@dataclass
class ScheduledRuns:
    proj: Path
    deployment: dict  # as the server first listed it
    manual_id: str  # `prefect deployment run`'s flow run
    done: dict  # flow run id -> run, the COMPLETED ones
    scheduled: list  # the completed runs the scheduler created
    flow_run_ls: str  # `prefect flow-run ls`
    listed: list  # `prefect flow-run ls --state-type COMPLETED -o json`
    returncode: int  # the serving process's, after Ctrl-C
    output: str  # the serving process's output
    server_log: str  # the server's log afterwards


def run_schedule(server, tmp: Path) -> ScheduledRuns:
    """Serve the pipeline (`--stages download`: the first run runs it in seconds on the
    offline data, later ones skip it) every 5 s, trigger one run by hand, wait until it and a
    scheduled one completed (any failed or crashed run fails the job), list runs with the CLI,
    pause the deployment, then Ctrl-C the serving process. `server()` waits for the server."""
    prefect_server = server()
    e = prefect_server.env
    proj = make_project(tmp / "proj")
    serve = subprocess.Popen(
        [str(BIN / "python"), "-m", "flows.pipeline", "--serve", "--interval", "5"]
        + ["--stages", "download", "--name", DEPLOYMENT.split("/")[1]],
        cwd=proj,
        env={**e, "PREFECT_RUNNER_POLL_FREQUENCY": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        name_filter = {"deployments": {"name": {"any_": ["sched-test"]}}}
        while not (deps := api(e, "/deployments/filter", name_filter)):
            assert serve.poll() is None and time.monotonic() < deadline, stop(serve)
            time.sleep(1)
        (dep,) = deps
        out = cli(e, "deployment", "run", DEPLOYMENT, cwd=proj)
        manual_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)

        def runs():
            return api(e, "/flow_runs/filter", {"deployments": {"id": {"any_": [dep["id"]]}}})

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
        flow_run_ls = cli(e, "flow-run", "ls", cwd=proj)
        listed = cli(e, "flow-run", "ls", "--state-type", "COMPLETED", "-o", "json", cwd=proj)
        # Ctrl-C while idle (during a run, Ctrl-C in a terminal interrupts that run too)
        api(e, f"/deployments/{dep['id']}/pause_deployment")
        while any(r["state_type"] in ("PENDING", "RUNNING") for r in runs()):
            assert time.monotonic() < deadline + 30, runs()
            time.sleep(1)
    finally:
        output = stop(serve, signal.SIGINT, timeout=40)  # Ctrl-C: SIGINT to its process group
    return ScheduledRuns(
        proj,
        dep,
        manual_id,
        done,
        scheduled,
        flow_run_ls,
        json.loads(listed),
        serve.returncode,
        output,
        prefect_server.log.read_text(),
    )
