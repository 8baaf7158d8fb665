"""The flow's temporary Prefect server goes away with the flow's process, even a killed one.

Without PREFECT_API_URL a flow starts a temporary API server (`python -m uvicorn ...
prefect.server.api.server:create_app`) and stops it at exit; a SIGKILLed flow left it
running, re-parented to PID 1 (~225 MB). Prefect has no setting for this, so the server's
command is started through a small launcher that watches its parent and shuts the server
down (SIGTERM: uvicorn's own graceful stop) once the parent is gone. Only that exact command
is changed; every other subprocess is untouched. Installed by `import flows`.
"""

from __future__ import annotations

import subprocess

_SERVER_APP = "prefect.server.api.server:create_app"
_LAUNCHER = """
import os, runpy, signal, sys, threading, time
parent = os.getppid()
def watch():
    while os.getppid() == parent:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGTERM)      # uvicorn stops gracefully
    time.sleep(10)
    os._exit(1)
threading.Thread(target=watch, daemon=True).start()
sys.argv = ["uvicorn", *sys.argv[1:]]
runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
"""


def _launcher_args(args):
    """Prefect's server command -> the same through the launcher; anything else unchanged."""
    if (
        isinstance(args, (list, tuple))
        and len(args) > 3
        and list(args[1:3]) == ["-m", "uvicorn"]
        and _SERVER_APP in args
    ):
        return [args[0], "-c", _LAUNCHER, *args[3:]]
    return args


class _Popen(subprocess.Popen):
    def __init__(self, args, *a, **kw):
        super().__init__(_launcher_args(args), *a, **kw)


def install() -> None:
    if not issubclass(subprocess.Popen, _Popen):
        subprocess.Popen = _Popen  # type: ignore[misc]  # on purpose: every Popen of the process


install()


async def crash_stale_pending(deployment: str) -> list[str]:
    """Mark Crashed the runs of `deployment` ("flow/name") left PENDING: `--serve` executes one
    run at a time in this process, so at its start any PENDING run is one a previous, interrupted
    `--serve` took but never started (SIGINT just as the run was handed off left it in
    `PENDING "Submitting"` for good). Returns their ids; no deployment yet: none."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    async with get_client() as client:
        try:
            dep = await client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            return []
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING]))
            ),
        )
        for run in runs:
            await client.set_flow_run_state(
                run.id,
                Crashed(message="left PENDING by an interrupted --serve; marked at the next start"),
                force=True,
            )
    return [str(r.id) for r in runs]
