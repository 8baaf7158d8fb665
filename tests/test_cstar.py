"""C* materialization (cvfp/materialize/cstar.py): the sharded stage's C* equals the library's
sequential pass, and missing or mismatched C* and checkpoints are named."""

import json

import numpy as np
import pytest

from cvfp.core.checkpoint import CheckpointError, save_checkpoint
from cvfp.core.corpus import Corpus, sequential_pass
from cvfp.materialize.cstar import CstarError, load_phase1_model, open_cstar
from helpers.phase2 import (
    CONVS,
    V,
    materialize,
    tiny_model,
)

# ---------------------------------------------------------------- C* materialization


@pytest.mark.parametrize(
    "reset,chunk", [("conversation", 5), ("conversation", 1000), ("stream", 4), ("stream", 7)]
)
def test_cstar_equals_library_sequential_pass(tmp_path, reset, chunk):
    model = tiny_model().eval()
    corpora = {
        "train": Corpus.from_conversations(CONVS, reset),
        "val": Corpus.from_conversations(CONVS[::-1], reset),
    }
    meta = materialize(model, corpora, tmp_path / "cstar", chunk, reset)
    for name, corpus in corpora.items():
        expected, _ = sequential_pass(model, corpus)
        got = open_cstar(tmp_path / "cstar", name, corpus, 16)
        assert got.dtype == np.float32 and got.shape == (corpus.n_tokens, 16)
        rows = np.array([5, 0, 6, 6, 2, -1])  # any order, repeats, runs, negative
        np.testing.assert_array_equal(got[rows], np.asarray(got)[rows])
        np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-6)
        assert np.array_equal(
            np.load(tmp_path / "cstar" / f"{name}_offsets.npy"), corpus.offsets.numpy()
        )
    assert meta["splits"]["train"]["shape"] == [corpora["train"].n_tokens, 16]
    assert json.loads((tmp_path / "cstar" / "meta.json").read_text())["context_reset"] == reset
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cstar", "phase1.pt"]  # no temp dir


def test_cstar_missing_and_shape_mismatch(tmp_path):
    corpus = Corpus.from_conversations(CONVS)
    with pytest.raises(FileNotFoundError, match="train.npy"):
        open_cstar(tmp_path / "cstar", "train", corpus, 16)
    materialize(tiny_model(), {"train": corpus}, tmp_path / "cstar", 8, "conversation")
    with pytest.raises(CstarError) as err:  # params now say context_dim 32
        open_cstar(tmp_path / "cstar", "train", corpus, 32)
    assert (
        "train.npy" in str(err.value)
        and "(24, 16)" in str(err.value)
        and "(24, 32)" in str(err.value)
    )
    with pytest.raises(CstarError, match="offsets"):  # same tokens, other context_reset
        open_cstar(tmp_path / "cstar", "train", Corpus.from_conversations(CONVS, "stream"), 16)


def test_checkpoint_missing_and_shape_mismatch(tmp_path, tiny_params):
    path = tmp_path / "phase1" / "model.pt"
    with pytest.raises(CheckpointError, match="not found.*model.pt"):
        load_phase1_model(path, tiny_params.model, V)
    save_checkpoint(path, tiny_model(), tiny_params.model_dump(), vocab_size=V)
    assert load_phase1_model(path, tiny_params.model, V).vocab_size == V
    wider = tiny_params.model.model_copy(update={"context_dim": 24, "hidden_dim": 40})
    with pytest.raises(CheckpointError) as err:
        load_phase1_model(path, wider, V)
    msg = str(err.value)
    assert str(path) in msg and "[32, 32]" in msg and "[40, 40]" in msg
