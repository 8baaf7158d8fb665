"""C* materialization in batches of similar length: `materialize.chunk_tokens` (memory only)
and the shard size never change a byte of C*; `batch_tokens` batches are whole
conversations sorted by length; C* is the sequential pass (tiny random model, dim 16)."""

import numpy as np
import pytest
import torch

from cvfp.core.checkpoint import save_checkpoint
from cvfp.core.corpus import Corpus, sequential_pass
from cvfp.core.model import CVFPModel
from cvfp.materialize.cstar import batch_plan, materialize_sharded, open_cstar, shard_plan
from cvfp.params import load_params
from cvfp.runtime.utils import one_intraop_thread
from helpers import ROOT, TINY_MODEL

V = 40
MODEL = load_params(ROOT / "params.yaml", TINY_MODEL).model


def lengths_corpus(lengths, reset="conversation", seed=0):
    g = torch.Generator().manual_seed(seed)
    return Corpus.from_conversations(
        [torch.randint(0, V, (k,), generator=g).tolist() for k in lengths], reset
    )


def files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = CVFPModel.from_params(MODEL, V)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, {}, vocab_size=V)
    return model.eval(), path


def write_cstar(
    path, corpora, out, chunk_tokens, shards=10**9, batch_tokens=40, reset="conversation"
):
    return materialize_sharded(
        path, corpora, out, MODEL, V, chunk_tokens, reset, shards, batch_tokens=batch_tokens
    )


LENGTHS = (3, 17, 1, 9, 9, 30, 2, 5, 12, 4, 60, 7, 7, 1, 22)


def test_batch_plan_sorts_by_length_and_fills_batch_tokens():
    corpus = lengths_corpus(LENGTHS)
    plan = batch_plan(corpus, 20)
    lens = corpus.lengths.numpy()
    flat = np.concatenate(plan)
    assert sorted(flat.tolist()) == list(range(len(LENGTHS)))  # every conversation once
    assert list(lens[flat]) == sorted(LENGTHS, reverse=True)  # longest first
    for b in plan:  # whole conversations up to 20 tokens, or one longer alone
        assert lens[b].sum() <= 20 or len(b) == 1
    assert [lens[b].tolist() for b in plan][:4] == [[60], [30], [22], [17]]  # 17 + 12 > 20
    for size in (1, 3, 100):
        shards = shard_plan(corpus, 20, size)
        got = sorted(np.concatenate([np.concatenate(s) for s in shards]).tolist())
        assert got == list(range(len(LENGTHS)))
        assert all(sum(map(len, s)) <= size or len(s) == 1 for s in shards)


@pytest.mark.parametrize("reset", ["conversation", "stream"])
def test_chunk_tokens_and_shards_change_no_byte(checkpoint, tmp_path, reset):
    model, path = checkpoint
    corpora = {
        "train": lengths_corpus(LENGTHS, reset),
        "val": lengths_corpus(LENGTHS[::-1], reset, seed=1),
    }
    ref = write_cstar(path, corpora, tmp_path / "ref", 8192, reset=reset)
    a = files(tmp_path / "ref")
    for chunk, shards in ((3, 10**9), (1, 2), (50, 1)):  # 1: one position at a time
        meta = write_cstar(path, corpora, tmp_path / f"c{chunk}", chunk, shards, reset=reset)
        assert files(tmp_path / f"c{chunk}") == a, (chunk, shards)
        assert meta == ref
    # ... and C* is the sequential pass from zero contexts (other batches: float rounding)
    with one_intraop_thread():
        for name, corpus in corpora.items():
            expected, _ = sequential_pass(model, corpus)
            got = open_cstar(tmp_path / "ref", name, corpus, 16)
            np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=2e-5)


def test_batch_tokens_is_the_batch(checkpoint, tmp_path):
    """Another batch_tokens is another batching: the same contexts to float rounding."""
    model, path = checkpoint
    corpora = {"train": lengths_corpus(LENGTHS)}
    write_cstar(path, corpora, tmp_path / "a", 8, batch_tokens=1)  # one conversation each
    write_cstar(path, corpora, tmp_path / "b", 8, batch_tokens=10**6)  # one batch
    a = np.load(tmp_path / "a" / "train.npy")
    b = np.load(tmp_path / "b" / "train.npy")
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5)
