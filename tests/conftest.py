"""Shared fixtures. The expensive session resources (a real Prefect server, the one tiny
`dvc repro`, and the subprocess-only work of test_reruns and test_compare_flow on copies of
it) start in background threads as soon as the tests are collected, and the modules that
need them run last: on 2 cores they are built while the other tests run
(`pytest_collection_finish`)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))
from tasks.env import set_env_defaults  # noqa: E402

set_env_defaults()
# One torch thread here and in every stage the tests start (they inherit the environment):
# the tiny models' ops are too small to gain from a second thread, and on a busy machine
# OpenMP's spin-waits made them 4-8x slower (the tiny phase2 stage: 194 s on 2 threads,
# 51 s on 1). Results stay comparable: every run of a test uses the same count.
# `OMP_NUM_THREADS=2 make test` runs the suite on two.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def write_params(tmp_path, mutate):
    """A copy of the project's params.yaml, changed by `mutate(raw_dict)`; returns its path."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# The tiny model every test uses (2 blocks of 1 layer, dim 16).
TINY_MODEL = {
    "model.context_dim": 16,
    "model.embed_dim": 16,
    "model.hidden_dim": 32,
    "model.layer_structure": [1, 1],
    "phase2.block_weights": [0.5, 1.0],
    "phase1.progress": False,
}


@pytest.fixture
def tiny_params():
    """The project's params.yaml with a tiny model (2 blocks, dim 16)."""
    from cvfp.params import load_params

    return load_params(ROOT / "params.yaml", TINY_MODEL)


# ---------------------------------------------------------------- session jobs

_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="session-job")
_JOBS: dict[str, Future] = {}
_TMP: list = []  # the session's TempPathFactory
_SERVERS: list[subprocess.Popen] = []  # stopped at the end of the session, started or not
# Jobs whose code lives in a test module: (module, function, the jobs it needs). The function
# gets one waiter per needed job (it returns that job's result) and the TempPathFactory.
MODULE_JOBS = {
    "reruns_run": ("test_reruns", "run_reruns", ("dvc_project",)),
    "compare_run": ("test_compare_flow", "run_compare", ("dvc_project", "prefect_server")),
}
# A job starts when a collected test uses its fixture (directly or through another one).
HEAVY_FIXTURES = ("prefect_server", "dvc_project", *MODULE_JOBS)


def job(name: str):
    """The result of a session job (waits for it); started now if it was not."""
    _start(name)
    return _JOBS[name].result()


def _start(name: str) -> None:
    if name in _JOBS:
        return
    tmp = _TMP[0]
    if name == "prefect_server":
        _JOBS[name] = _POOL.submit(start_prefect_server, tmp.mktemp("prefect"))
    elif name == "dvc_project":
        _JOBS[name] = _POOL.submit(build_dvc_project, tmp.mktemp("dvc") / "proj")
    else:
        module, function, needs = MODULE_JOBS[name]
        for n in needs:
            _start(n)
        fn = getattr(__import__(module), function)
        _JOBS[name] = _POOL.submit(fn, *[lambda n=n: job(n) for n in needs], tmp)


def pytest_collection_modifyitems(session, config, items):
    """Modules that use a session job run after the others (their jobs build meanwhile), in
    the order of HEAVY_FIXTURES, roughly when their jobs are ready."""
    rank: dict[str, int] = {}
    for item in items:
        used = [i + 1 for i, f in enumerate(HEAVY_FIXTURES) if f in item.fixturenames]
        name = item.module.__name__
        rank[name] = max([rank.get(name, 0), *used])
    items.sort(key=lambda item: rank[item.module.__name__])  # stable: file order kept


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    _TMP.append(session.config._tmp_path_factory)
    used = {f for item in session.items for f in item.fixturenames}
    for name in HEAVY_FIXTURES:
        if name in used:
            _start(name)


def pytest_sessionfinish(session):
    """Stop the server; a job still running (the session was cut short) ends on its own."""
    _POOL.shutdown(wait=False, cancel_futures=True)
    for proc in _SERVERS:
        stop(proc)


# ---------------------------------------------------------------- Prefect


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
    _SERVERS.append(proc)
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


@pytest.fixture(scope="session")
def prefect_server() -> PrefectServer:
    return job("prefect_server")


@pytest.fixture(scope="session")
def prefect_harness(prefect_server):
    """Flows run in the tests report to the session's server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.url}):
        yield


# ---------------------------------------------------------------- the tiny DVC project


def build_dvc_project(dest: Path):
    from test_pipeline import commit, make_project, repro

    proj = make_project(dest)
    ran = repro(proj)
    commit(proj, "tiny run")
    return proj, ran


@pytest.fixture(scope="session")
def dvc_project():
    """The one full `dvc repro` of the session, on a tiny copy of the project
    (test_pipeline.TINY): (path, stages that ran). Read it, never change it: a test that
    reruns or edits anything works in its own copy (`dvc_copy`). Committed to git, so that
    `dvc params diff` and `dvc exp run` have a baseline."""
    return job("dvc_project")


@pytest.fixture
def dvc_copy(dvc_project, tmp_path) -> Path:
    """A private copy of the session's tiny project after `dvc repro` (git, DVC cache, outputs
    and dvc.lock included): a few MB, copied in well under a second."""
    proj = tmp_path / "proj"
    shutil.copytree(dvc_project[0], proj, symlinks=True)
    return proj
