"""`make ui` on a non-default port (the session's server is started that way): the server's
UI settings point the UI at that port's API, telemetry off; and a run an interrupted `--serve`
left PENDING is marked Crashed at the next start (flows/server_lifetime.py), on the session's
real Prefect server."""

import asyncio
import uuid
from urllib.parse import urlparse

import httpx
import pytest

pytestmark = pytest.mark.server


def test_make_ui_serves_the_ui_pointing_at_its_own_port(prefect_server):
    """The session's server is `make ui PORT=<a free port>` started without any PREFECT_
    variable (helpers/prefect.py): the settings it serves come from the Makefile."""
    port = urlparse(prefect_server.url).port
    settings = httpx.get(f"http://127.0.0.1:{port}/ui-settings", timeout=5).json()
    assert settings["api_url"] == f"http://127.0.0.1:{port}/api"
    assert httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5).json() is True
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200  # the UI
    out = prefect_server.log.read_text()
    assert f"Prefect UI: http://127.0.0.1:{port}" in out.splitlines()[0]
    assert "telemetry" not in out.lower(), out[-2000:]


def test_a_run_left_pending_is_marked_crashed_at_the_next_start(prefect_harness):
    from prefect import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.states import Pending

    from flows.server_lifetime import crash_stale_pending

    name = f"pending-{uuid.uuid4().hex[:8]}"

    async def scenario():
        async with get_client() as client:
            flow_id = await client.create_flow_from_name(name)
            dep = await client.create_deployment(flow_id=flow_id, name="serve")
            left = await client.create_flow_run_from_deployment(dep, state=Pending())
            done = await client.create_flow_run_from_deployment(dep)  # SCHEDULED: untouched
            marked = await crash_stale_pending(f"{name}/serve")
            states = [(await client.read_flow_run(r.id)).state for r in (left, done)]
        return left, marked, states

    left, marked, (left_state, other) = asyncio.run(scenario())
    assert marked == [str(left.id)]
    assert left_state.type == StateType.CRASHED and "interrupted --serve" in left_state.message
    assert other.type == StateType.SCHEDULED
    assert asyncio.run(crash_stale_pending("no-such-flow/serve")) == []
