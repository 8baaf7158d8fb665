"""Shared fixtures and the session's background jobs. The expensive session resources (a
real Prefect server, the one tiny `dvc repro`, the subprocess-only work of test_reruns and
test_compare_flow on copies of it, and the mostly-waiting process tests of test_schedule and
test_faults_processes; their code is in helpers/) start in background
threads before the first test, and the modules that need them run last: on 2 cores they are
built while the other tests run. Helpers shared by test modules live in helpers/ (no test
module imports another, nor this file: test_suite_layout.py)."""

import os
import shutil
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code first
from helpers import ROOT, TINY_MODEL, jobs  # noqa: E402
from helpers.prefect import SERVERS, PrefectServer, kill_flow_process, stop  # noqa: E402
from helpers.schedule import run_schedule  # noqa: E402
from tasks.env import set_env_defaults  # noqa: E402

set_env_defaults()
# One torch thread here and in every stage the tests start (they inherit the environment):
# the tiny models' ops are too small to gain from a second thread, and on a busy machine
# OpenMP's spin-waits made them 4-8x slower (the tiny phase2 stage: 194 s on 2 threads,
# 51 s on 1). Results stay comparable: every run of a test uses the same count.
# `OMP_NUM_THREADS=2 make test` runs the suite on two.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def tiny_params():
    """The project's params.yaml with a tiny model (2 blocks, dim 16)."""
    from cvfp.params import load_params

    return load_params(ROOT / "params.yaml", TINY_MODEL)


# ---------------------------------------------------------------- session jobs

# name -> (the function in helpers/jobs.py, the jobs it needs). A job starts when a collected
# test uses its fixture (directly or through another one); its fixture waits for it.
JOBS = {
    "prefect_server": (jobs.prefect_server, ()),
    "killed_flow": (kill_flow_process, ()),
    "scheduled_runs": (run_schedule, ("prefect_server",)),
    "dvc_project": (jobs.dvc_project, ()),
    "reruns_run": (jobs.run_reruns, ("dvc_project",)),
    "compare_run": (jobs.run_compare, ("dvc_project", "prefect_server")),
}
_POOL = ThreadPoolExecutor(max_workers=len(JOBS), thread_name_prefix="session-job")
_STARTED: dict[str, Future] = {}


def _start(name: str, tmp: pytest.TempPathFactory) -> None:
    if name in _STARTED:
        return
    fn, needs = JOBS[name]
    for n in needs:
        _start(n, tmp)
    waiters = [_STARTED[n].result for n in needs]
    _STARTED[name] = _POOL.submit(fn, *waiters, tmp.mktemp(name))


@pytest.fixture(scope="session", autouse=True)
def _session_jobs(request, tmp_path_factory):
    """Before the first test: start the jobs the collected tests use."""
    used = {f for item in request.session.items for f in item.fixturenames}
    for name in JOBS:
        if name in used:
            _start(name, tmp_path_factory)
    yield
    _POOL.shutdown(wait=False, cancel_futures=True)  # a job still running ends on its own
    for proc in SERVERS:
        stop(proc)


def _job(request, name: str):
    """The result of a session job (waits for it); started now if it was not."""
    _start(name, request.getfixturevalue("tmp_path_factory"))
    return _STARTED[name].result()


def pytest_collection_modifyitems(session, config, items):
    """Modules that use a session job run after the others (their jobs build meanwhile), in
    the order of JOBS, roughly when their jobs are ready."""
    rank: dict[str, int] = {}
    for item in items:
        used = [i + 1 for i, f in enumerate(JOBS) if f in item.fixturenames]
        name = item.module.__name__
        rank[name] = max([rank.get(name, 0), *used])
    items.sort(key=lambda item: rank[item.module.__name__])  # stable: file order kept


@pytest.fixture(scope="session")
def prefect_server(request) -> PrefectServer:
    """The session's real local `prefect server start` (helpers/prefect.py)."""
    return _job(request, "prefect_server")


@pytest.fixture(scope="session")
def prefect_harness(prefect_server):
    """Flows run in the tests report to the session's server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.url}):
        yield


@pytest.fixture(scope="session")
def killed_flow(request):
    """A flow process killed while its temporary server runs (helpers.prefect.kill_flow_process)."""
    return _job(request, "killed_flow")


@pytest.fixture(scope="session")
def scheduled_runs(request):
    """test_schedule's served deployment and its runs (helpers.schedule.run_schedule)."""
    return _job(request, "scheduled_runs")


@pytest.fixture(scope="session")
def dvc_project(request):
    """The one full `dvc repro` of the session, on a tiny copy of the project
    (helpers.project.TINY): (path, stages that ran). Read it, never change it: a test that
    reruns or edits anything works in its own copy (`dvc_copy`). Committed to git, so that
    `dvc params diff` and `dvc exp run` have a baseline."""
    return _job(request, "dvc_project")


@pytest.fixture
def dvc_copy(dvc_project, tmp_path) -> Path:
    """A private copy of the session's tiny project after `dvc repro` (git, DVC cache, outputs
    and dvc.lock included): a few MB, copied in well under a second."""
    proj = tmp_path / "proj"
    shutil.copytree(dvc_project[0], proj, symlinks=True)
    return proj


@pytest.fixture(scope="session")
def reruns_run(request):
    """test_reruns' forced reruns (helpers.jobs.run_reruns)."""
    return _job(request, "reruns_run")


@pytest.fixture(scope="session")
def compare_run(request) -> "jobs.CompareRuns":
    """test_compare_flow's three `flows.compare` runs (helpers.jobs.run_compare)."""
    return _job(request, "compare_run")


# ---------------------------------------------------------------- data stages' inputs


@pytest.fixture
def isolated_hf_cache(tmp_path, monkeypatch):
    """Hugging Face datasets' cache in the test's tmp_path, the hub not forced offline
    (the data stage tests use it: `pytestmark = pytest.mark.usefixtures(...)`)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def hub_dir(tmp_path):
    """A local directory laid out like HuggingFaceH4/ultrachat_200k."""
    import pandas as pd

    from helpers.data import rows

    root = tmp_path / "ultrachat_tiny"
    (root / "data").mkdir(parents=True)
    pd.DataFrame(rows()).to_parquet(root / "data" / "train_sft-00000-of-00001.parquet")
    pd.DataFrame(rows()[:1]).to_parquet(root / "data" / "test_sft-00000-of-00001.parquet")
    return root


@pytest.fixture
def tiny_tokenizer_dir(tmp_path):
    """A tiny GPT-2-style (byte-level BPE) tokenizer saved like a hub checkpoint."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from helpers.data import CONVS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([t for c in CONVS for _, t in c], trainer=trainer)
    path = tmp_path / "tiny-gpt2"
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(
        str(path)
    )
    return path


@pytest.fixture
def mat_project(tmp_path, tiny_params, monkeypatch):
    """A tiny project (data/split, data/tokenizer, a Phase 1 checkpoint) as the cwd, and the
    params for its materialize and phase2 stages: (path, params)."""
    from helpers.phase2 import stage_params, tiny_project

    tiny_project(tmp_path, tiny_params)
    monkeypatch.chdir(tmp_path)
    return tmp_path, stage_params(tiny_params)


@pytest.fixture
def phase2_project(tmp_path, tiny_params, monkeypatch):
    """A tiny project after materialize and a successful phase2: (root, params)."""
    from helpers.phase2 import stage_params, tiny_project
    from tasks import materialize as mat_task
    from tasks import phase2 as p2_task

    tiny_project(tmp_path, tiny_params)
    monkeypatch.chdir(tmp_path)
    params = stage_params(tiny_params)
    mat_task.run(params)
    p2_task.run(params)
    return tmp_path, params
