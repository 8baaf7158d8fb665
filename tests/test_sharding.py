"""Sharded tokenize and materialize: the mapped Prefect tasks on a real 2-worker Dask
LocalCluster (processes, 1 thread each) give bitwise the outputs of the plain loop, and no
shard size changes a byte (tiny data: 300 chatterbot conversations, model 2 blocks dim 16)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cvfp.core.checkpoint import save_checkpoint
from cvfp.core.corpus import Corpus
from cvfp.core.model import CVFPModel
from cvfp.materialize.cstar import materialize_shard, materialize_sharded
from cvfp.params import ParamsError, load_params
from cvfp.runtime.sharding import threaded
from helpers import ROOT, TINY_MODEL

TINY = {
    "data.num_samples": 300,
    "tokenizer.vocab_size": 400,
    "tokenizer.max_seq_length": 48,
    **TINY_MODEL,
    "materialize.chunk_tokens": 400,
    "materialize.batch_tokens": 400,
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread, as in each Dask worker: tiny ops on a busy machine are many
    times slower with several (OpenMP spin-waits). Thread count and bitwise results:
    docs/scaling.md."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(**kw):
    return load_params(ROOT / "params.yaml", {**TINY, **kw})


def files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cluster():
    """One 2-worker LocalCluster (processes, 1 thread each) for the module."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as c,
        Client(c) as client,
    ):
        # Workers import the shard code's libraries while the project is being built.
        warm = [
            client.submit(_warm_up, pure=False, workers=[w])
            for w in client.scheduler_info()["workers"]
        ]
        yield c
        client.gather(warm)


def _warm_up():
    import prefect.task_engine  # noqa: F401
    import transformers.models.auto.tokenization_auto  # noqa: F401

    import cvfp.materialize.cstar  # noqa: F401  (torch)


@pytest.fixture(scope="module")
def project(tmp_path_factory, cluster):
    """data/raw (300 conversations) -> plain-loop tokenize (shards of 64) -> a train/val
    split and a random tiny Phase 1 checkpoint; the plain outputs are kept for comparison.
    (The cluster starts first so that its workers warm up meanwhile.)"""
    from tasks import download, tokenize
    from tasks.split import to_dataset
    from tasks.tokens import load_conversations, read_vocab_size

    proj = tmp_path_factory.mktemp("shards")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(proj)
        p = tiny(**{"orchestration.shard_conversations": 64, "tokenizer.num_proc": 1})
        download.run(p)
        tokenize.run(p)
        plain = {d: files(proj / "data" / d) for d in ("tokenizer", "tokenized")}
        convs = load_conversations("data/tokenized")
        for name, part in corpora(convs, None).items():
            to_dataset(list(range(len(part))), part).save_to_disk(f"data/split/{name}")
        vocab = read_vocab_size("data/tokenizer")
        torch.manual_seed(0)
        model = CVFPModel.from_params(p.model, vocab)
        save_checkpoint("cache/phase1/model.pt", model, p.model_dump(), vocab_size=vocab)
    return proj, plain, convs, vocab


def corpora(convs, reset):
    """Train, then val and test (a tenth each), as Corpus (or the lists when reset is None)."""
    n = len(convs) // 10
    parts = {"train": convs[: -2 * n], "val": convs[-2 * n : -n], "test": convs[-n:]}
    if reset is None:
        return parts
    return {k: Corpus.from_conversations(v, reset) for k, v in parts.items()}


def cstar_files(convs, vocab, reset, out, chunk_tokens=400, shard_conversations=10**9):
    """The files materialize_sharded writes on the plain loop in this process (default: a
    single shard per split), batches of at most `chunk_tokens` tokens; run in the project
    directory."""
    p = tiny()
    materialize_sharded(
        Path("cache/phase1/model.pt"),
        corpora(convs, reset),
        out,
        p.model,
        vocab,
        chunk_tokens,
        reset,
        shard_conversations,
        batch_tokens=chunk_tokens,
    )
    return files(out)


# ---------------------------------------------------------------- in process


@pytest.mark.parametrize(
    "reset, chunk_tokens, n_conversations, sizes",
    [
        ("conversation", 400, 150, (1, 7, 10_000)),  # many batches per shard, or one
        ("conversation", 20, 20, (1, 10_000)),  # conversations longer than a step
        ("stream", 100, 40, (1,)),
    ],
)  # one sequence: one shard
def test_no_shard_size_changes_a_byte(
    project, tmp_path, monkeypatch, reset, chunk_tokens, n_conversations, sizes
):
    proj, _, convs, vocab = project
    convs = convs[:n_conversations]
    monkeypatch.chdir(proj)
    ref = cstar_files(convs, vocab, reset, tmp_path / "ref", chunk_tokens)
    for size in sizes:
        got = cstar_files(convs, vocab, reset, tmp_path / f"s{size}", chunk_tokens, size)
        assert got == ref, (reset, size)


def test_materialize_shard_is_pure_and_takes_path_or_bytes(project):
    proj, _, convs, vocab = project
    p = tiny()
    ckpt = proj / "cache/phase1/model.pt"
    batches = [convs[:12], convs[12:20]]
    a = materialize_shard(batches, ckpt, p.model, vocab, 30)
    b = materialize_shard(batches, ckpt.read_bytes(), p.model, vocab, 30)
    assert a[0].dtype == np.float32 and a[0].shape == (sum(map(len, convs[:20])), 16)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


class Watched:
    """Shards whose takes and consumptions are recorded: how many shards are taken and not
    yet consumed at each take."""

    def __init__(self, shards):
        self.shards, self.taken, self.consumed, self.in_flight = shards, [], [], []

    def __len__(self):
        return len(self.shards)

    def __getitem__(self, i):
        self.taken.append(i)
        self.in_flight.append(len(self.taken) - len(self.consumed))
        return self.shards[i]

    def consumer(self, consume):
        def watched(i, result):
            self.consumed.append(i)
            consume(i, result)

        return watched


def test_tokenize_shard_sizes_agree(project, tmp_path):
    """Shards of 1, 7 (on 3 threads: at most 4 taken and not consumed) and 1000 rows; each
    shard's ids appended to the combiner's file: the same saved bytes and stats as the
    stage, whose shards were 64 rows."""
    from datasets import load_from_disk

    from cvfp.data import token_shards
    from cvfp.data import tokenization as tk
    from tasks.provenance import pin_fingerprint

    proj, _, _, _ = project
    raw = load_from_disk(str(proj / "data/raw"))
    files_ = tk.tokenizer_files(proj / "data/tokenizer")
    outs = []
    for size, workers in ((1, 1), (7, 3), (1000, 1)):
        shards = token_shards.shards_of(raw, size)
        assert len(shards) == -(-len(raw) // size)
        watched = Watched(shards)
        (work := tmp_path / f"work{size}").mkdir()
        combine = token_shards.ShardCombiner(work)
        threaded(workers)(
            tk.tokenize_shard,
            watched,
            watched.consumer(combine),
            {"tokenizer": files_, "max_seq_length": 48},
        )
        assert watched.consumed == list(range(len(shards)))
        assert max(watched.in_flight) <= workers + 1
        ds, stats = combine.finish(tk._tokenizer_from(files_))
        ds.save_to_disk(str(tmp_path / str(size)))
        pin_fingerprint(tmp_path / str(size))  # as the stage does (tasks/outputs.py)
        outs.append((files(tmp_path / str(size)), stats))
    assert outs[0] == outs[1] == outs[2]
    plain = files(proj / "data/tokenized")
    stage_stats = json.loads(plain.pop("stats.json"))
    assert outs[0][0] == plain  # the stage wrote the same bytes
    assert {k: stage_stats[k] for k in outs[0][1]} == outs[0][1]


def test_shard_combiner_refuses_out_of_order_results(tmp_path):
    from cvfp.data import token_shards

    combine = token_shards.ShardCombiner(tmp_path)
    empty = {k: np.zeros(0, np.int64) for k in ("conversation_id", "n_tokens", "n_full", "ids")}
    with pytest.raises(RuntimeError, match="tokenize shard 1 arrived before shard 0"):
        combine(1, {**empty, "n_in": 0})


def test_orchestration_params_validated():
    assert tiny().orchestration.task_runner in ("thread", "dask")
    for bad in ("127.0.0.1:8786", "tcp://host", "tcp://host:0", "http://host:8786"):
        with pytest.raises(ParamsError, match=r"orchestration: dask_address='.*': expected null"):
            tiny(**{"orchestration.dask_address": bad})
    assert tiny(**{"orchestration.dask_address": "tcp://10.0.0.5:8786"}).orchestration.dask_address
    with pytest.raises(ParamsError, match=r"orchestration\.task_runner = 'ray'"):
        tiny(**{"orchestration.task_runner": "ray"})
    with pytest.raises(ParamsError, match=r"orchestration\.shard_conversations = 0"):
        tiny(**{"orchestration.shard_conversations": 0})


def test_task_runner_choice():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.shards import task_runner

    o = tiny().orchestration
    assert isinstance(
        task_runner(o.model_copy(update={"task_runner": "thread"})), ThreadPoolTaskRunner
    )
    local = task_runner(o.model_copy(update={"task_runner": "dask", "workers": 2}))
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs == {"n_workers": 2, "threads_per_worker": 1, "processes": True}
    remote = task_runner(
        o.model_copy(update={"task_runner": "dask", "dask_address": "tcp://h:8786"})
    )
    assert remote.address == "tcp://h:8786"


# ---------------------------------------------------------------- mapped Prefect tasks


def run_stage_mapped(module, p, proj, monkeypatch):
    from flows.shards import shard_mapper

    monkeypatch.chdir(proj)
    return module.run(p, map_shards=shard_mapper(module.__name__.split(".")[-1], p.orchestration))


def test_dask_tokenize_equals_plain_loop(cluster, project, prefect_harness, monkeypatch):
    from tasks import tokenize

    proj, plain, _, _ = project
    p = tiny(
        **{
            "orchestration.task_runner": "dask",
            "orchestration.shard_conversations": 110,
            "orchestration.dask_address": cluster.scheduler_address,
        }
    )
    run_stage_mapped(tokenize, p, proj, monkeypatch)
    assert {d: files(proj / "data" / d) for d in ("tokenizer", "tokenized")} == plain


@pytest.mark.parametrize("runner", ["dask", "thread"])
def test_mapped_materialize_equals_plain_loop(
    cluster, project, prefect_harness, monkeypatch, tmp_path, runner, reset="conversation"
):
    from tasks import materialize as stage

    proj, _, convs, vocab = project
    monkeypatch.chdir(proj)
    ref = cstar_files(convs, vocab, reset, tmp_path / "ref")
    stage.run(tiny(**{"orchestration.shard_conversations": 30}))  # the plain loop
    assert files(proj / "cache/cstar") == ref
    over = {
        "orchestration.task_runner": runner,
        "orchestration.shard_conversations": 70,
        "phase1.context_reset": reset,
    }
    if runner == "dask":
        over["orchestration.dask_address"] = cluster.scheduler_address
    meta = run_stage_mapped(stage, tiny(**over), proj, monkeypatch)
    assert files(proj / "cache/cstar") == ref
    assert meta["splits"]["train"]["n_conversations"] == len(convs) - 2 * (len(convs) // 10)


def test_pinned_shards_leave_no_pool_thread_on_one_thread(monkeypatch):
    """Two shards overlap on two pool threads (as materialize on the thread runner); after
    them, every pool thread, and any stage that starts on one, runs on the process default.
    (torch's thread count is per OS thread: a thread left on 1 would change a later stage's
    floats, e.g. phase2 under the flow vs under dvc repro.)"""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import cvfp.runtime.utils as utils

    monkeypatch.setattr(utils, "DEFAULT_THREADS", 2)
    both = threading.Barrier(2)

    def shard():
        with utils.one_intraop_thread():
            both.wait()
            inside = torch.get_num_threads()
            both.wait()
        return inside, torch.get_num_threads()

    def stage():
        utils.seed_everything(0)
        return torch.get_num_threads()

    with ThreadPoolExecutor(2) as pool:
        assert [f.result() for f in [pool.submit(shard) for _ in range(2)]] == [(1, 2), (1, 2)]
        torch.set_num_threads(1)  # whatever a thread was left with, a stage resets it
        assert [f.result() for f in [pool.submit(stage) for _ in range(2)]] == [2, 2]
    torch.set_num_threads(utils.DEFAULT_THREADS)
