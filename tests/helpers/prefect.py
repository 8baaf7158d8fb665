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


# ---------------------------------------------------------------- test_faults_processes' kill


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def running(pid: int) -> bool:
    """Whether `pid` is alive (a zombie is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class KilledFlow:
    ready: str  # the flow's first line ("READY": its temporary server answered)
    servers: list[int]  # the flow process's children running the server app (one)
    children: list[int]  # all its children, for the message
    survivors: list[int]  # servers still running 30 s after the SIGKILL (none)


def kill_flow_process(tmp: Path) -> KilledFlow:
    """A flow with no PREFECT_API_URL starts a real temporary server (~12 s on a fresh
    PREFECT_HOME): SIGKILL the flow's process once the flow runs, then wait up to 30 s for the
    server (uvicorn) to exit by itself. A session job (conftest.py): mostly waiting, it runs
    in the background."""
    script = (
        "import time, flows\nfrom prefect import flow\n@flow\ndef wait():\n"
        "    print('READY', flush=True)\n    time.sleep(600)\nwait()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PYTHONPATH=str(ROOT),
        PREFECT_HOME=str(tmp / "prefect"),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
    )
    proc = subprocess.Popen(
        [str(BIN / "python"), "-c", script],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    servers: list[int] = []
    try:
        ready = proc.stdout.readline().strip() if proc.stdout else ""
        children = _children(proc.pid)
        servers = [
            c
            for c in children
            if "create_app" in Path(f"/proc/{c}/cmdline").read_text(errors="replace")
        ]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while any(map(running, servers)) and time.monotonic() < deadline:
            time.sleep(0.5)
        return KilledFlow(ready, servers, children, [s for s in servers if running(s)])
    finally:
        proc.kill()
        for pid in servers:  # only if the server outlived its flow: do not leak it
            if running(pid):
                os.kill(pid, signal.SIGKILL)
