"""Scheduled runs against a REAL local Prefect server (not the test harness): the server's
scheduler must create runs for `python -m flows.pipeline --serve` and the served process must
execute them; `prefect deployment run` and `prefect flow-run ls` must work; Ctrl-C stops
serving cleanly. Catches server-dependency breakage (SQLAlchemy 2.1 stops the scheduler,
FastAPI >= 0.151 rejects the CLI's null filters with a 422), which the harness hides."""

import json
import os
import re
import signal
import socket
import subprocess
import time

import httpx
import pytest
from test_pipeline import BIN, env, make_project

pytestmark = pytest.mark.server

DEPLOYMENT = "cvfp-pipeline/sched-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30) -> str:
    """Signal a process this test started in its own session (its group is ours alone)."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.stdout.read() if proc.stdout else ""


@pytest.fixture
def server(tmp_path):
    """`prefect server start` on a free port, SQLite in a temporary PREFECT_HOME; yields the
    environment that points clients (CLI, served flow) at it."""
    port = free_port()
    e = env()
    e.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_UI_ENABLED="false",
    )
    e.pop("PREFECT_PROFILES_PATH", None)
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen(
        [
            str(BIN / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-ui",
            "--analytics-off",
        ],
        env=e,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120  # a busy machine (CI, parallel jobs) starts it slowly
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (
                f"server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}"
            )
            time.sleep(0.5)
        yield e
    finally:
        stop(proc)
        log.seek(0)
        text = log.read()
        log.close()
    # the scheduler loop logged no error (SQLAlchemy 2.1: "Can't evaluate bulk DML statement").
    # (A busy machine may log a retried "database is locked" from SQLite: not our concern.)
    assert "InvalidRequestError" not in text and "bulk DML" not in text, text[-3000:]


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


def test_scheduled_and_triggered_runs_complete_on_a_real_server(server, tmp_path):
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
