"""A real local Prefect server (`prefect server start`), and stopping the processes tests start."""

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from helpers import BIN

SERVERS: list[subprocess.Popen] = []  # conftest.py stops them at the end of the session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30) -> str:
    """Signal a process the tests started in its own session (its group is ours alone)."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.stdout.read() if proc.stdout else ""


@dataclass
class PrefectServer:
    url: str  # the API, http://127.0.0.1:<port>/api
    env: dict  # the environment that points clients (CLI, flows, served flows) at it
    log: Path
    proc: subprocess.Popen


def start_prefect_server(home: Path) -> PrefectServer:
    """`prefect server start` on a free port, SQLite in a temporary PREFECT_HOME: the one
    server of the session (starting one costs ~15-20 s), for flows run in the tests
    (`prefect_harness`) and for the scheduled runs of test_schedule."""
    import httpx

    port = free_port()
    e = dict(os.environ)
    e.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_UI_ENABLED="false",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH="",  # a served flow imports its project's own code
    )
    e.pop("PREFECT_PROFILES_PATH", None)
    log = home / "server.log"
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        + ["--no-ui", "--analytics-off"],
        env=e,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    SERVERS.append(proc)
    deadline = time.monotonic() + 180  # a busy machine (CI, parallel jobs) starts it slowly
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return PrefectServer(e["PREFECT_API_URL"], e, log, proc)
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"prefect server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
