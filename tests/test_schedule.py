"""Scheduled runs against a REAL local Prefect server (the session's, conftest.py): the server's
scheduler must create runs for `python -m flows.pipeline --serve` and the served process must
execute them; `prefect deployment run` and `prefect flow-run ls` must work; Ctrl-C stops
serving cleanly. Catches server-dependency breakage (SQLAlchemy 2.1 stops the scheduler,
FastAPI >= 0.151 rejects the CLI's null filters with a 422), which a test harness (no
scheduler) would hide. The serving and waiting run in the background from the start of the
session (helpers/schedule.py); this test checks what they saw."""

import pytest

pytestmark = pytest.mark.server


def test_scheduled_and_triggered_runs_complete_on_a_real_server(scheduled_runs):
    s = scheduled_runs
    assert s.deployment["schedules"][0]["schedule"]["interval"] == 5
    assert not s.deployment["paused"]
    # the scheduler (not a person) created it: auto_scheduled, the scheduler's idempotency key
    run = s.scheduled[0]
    assert (
        run["idempotency_key"].startswith("scheduled ") and run["created_by"]["type"] == "SCHEDULE"
    )
    assert s.done[s.manual_id]["auto_scheduled"] is False
    assert run["parameters"] == {"params_path": "params.yaml", "stages": ["download"]}
    assert (s.proj / "dvc.lock").exists()  # the run committed the stage to DVC
    assert "Flow Runs" in s.flow_run_ls  # was a 422 with fastapi>=0.151
    assert {run["id"], s.manual_id} <= {r["id"] for r in s.listed}
    assert s.returncode == 0, s.output[-3000:]
    assert "never awaited" not in s.output and "Traceback" not in s.output, s.output[-3000:]
    assert "stopped serving cvfp-pipeline/sched-test" in s.output
    # the scheduler loop logged no error (SQLAlchemy 2.1: "Can't evaluate bulk DML statement").
    # (A busy machine may log a retried "database is locked" from SQLite: not our concern.)
    text = s.server_log
    assert "InvalidRequestError" not in text and "bulk DML" not in text, text[-3000:]
