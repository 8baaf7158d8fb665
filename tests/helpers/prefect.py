"""A real local Prefect server (`make ui`), and stopping the processes tests start."""

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from helpers import BIN, ROOT

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
    """The one server of the session (starting one costs ~15-20 s), for the flows run in the
    tests (`prefect_harness`), the scheduled runs of test_schedule and the UI of test_ui:
    `make ui` on a free port, SQLite in a temporary PREFECT_HOME, started without any PREFECT_
    variable of ours (the Makefile sets the server's own). Its output (the first line is
    `make ui`'s) goes to `log`."""
    import httpx

    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    base.update(
        PREFECT_HOME=str(home),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH="",  # a served flow imports its project's own code
    )
    log = home / "server.log"
    proc = subprocess.Popen(
        ["make", "-s", "ui", f"PORT={port}"],
        cwd=ROOT,
        env=base,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    SERVERS.append(proc)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180  # a busy machine (CI, parallel jobs) starts it slowly
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return PrefectServer(url, {**base, "PREFECT_API_URL": url}, log, proc)
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"prefect server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
