"""Phase 2 in bounded memory (issue 26): the bigram counted and scored in chunks of positions
gives the whole-corpus numbers; the position index is int32 with the same values."""

from __future__ import annotations

import numpy as np
import pytest

from cvfp.core.corpus import Corpus
from cvfp.phase2.baselines import Bigram, bigram_baseline
from cvfp.phase2.data import PositionData


def corpus(seed: int, n_conv: int, reset: str = "conversation") -> Corpus:
    rng = np.random.default_rng(seed)
    convs = [rng.integers(0, 7, size=rng.integers(1, 12)) for _ in range(n_conv)]
    return Corpus.from_conversations(convs, reset)


def whole(c: Corpus, v: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bigram written out over the whole corpus: pairs within segments, counted."""
    ids, offsets = c.ids.numpy(), c.offsets.numpy()
    a = np.concatenate([ids[s : e - 1] for s, e in zip(offsets[:-1], offsets[1:], strict=True)])
    b = np.concatenate([ids[s + 1 : e] for s, e in zip(offsets[:-1], offsets[1:], strict=True)])
    codes, counts = np.unique(a * v + b, return_counts=True)
    return codes, counts, np.bincount(a, minlength=v)


@pytest.mark.parametrize("reset", ["conversation", "stream"])
@pytest.mark.parametrize("chunk", [1, 2, 5, 13, 1 << 20])
def test_bigram_in_chunks_is_the_whole_corpus_bigram(chunk, reset):
    train, val = corpus(0, 40, reset), corpus(1, 15, reset)
    codes, counts, rows = whole(train, 7)
    model = Bigram(train, 7, chunk=chunk)
    assert model.codes.tolist() == codes.tolist() and model.counts.tolist() == counts.tolist()
    assert model.row_total.tolist() == rows.tolist()
    ref = Bigram(train, 7)
    for k in (0.01, 1.0):
        nats, hits = model.score(val, k)
        ref_nats, ref_hits = ref.score(val, k)
        assert nats.size == val.n_tokens - (1 if reset == "stream" else val.n_conversations)
        assert nats.tolist() == ref_nats.tolist() and hits.tolist() == ref_hits.tolist()
    assert model.argmax.tolist() == ref.argmax.tolist()


def test_bigram_of_a_split_without_pairs_scores_nothing():
    single = Corpus.from_conversations([[1], [2], [3]])  # no token has a next one
    assert Bigram(single, 7).codes.size == 0
    nats, hits = Bigram(corpus(0, 5), 7).score(single, 1.0)
    assert nats.dtype == np.float64 and hits.dtype == bool and nats.size == hits.size == 0
    res = bigram_baseline(corpus(0, 5), corpus(1, 5), corpus(2, 5), 7, [1.0])
    assert res.test_nats.size == corpus(2, 5).n_tokens - 5 and res.metrics["distinct_pairs"] > 0


def test_positions_are_int32_with_the_same_rows():
    c = corpus(3, 30)
    data = PositionData.from_corpus(c, np.zeros((c.n_tokens, 4), np.float32))
    keep = np.ones(c.n_tokens, dtype=bool)
    keep[c.offsets[1:].numpy() - 1] = False
    assert data.positions.dtype == np.int32
    assert data.positions.tolist() == np.flatnonzero(keep).tolist()
    batch = data.batch(data.positions[::3])
    assert batch.targets.tolist() == c.ids.numpy()[data.positions[::3] + 1].tolist()
