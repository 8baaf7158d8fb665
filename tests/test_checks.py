import math

import numpy as np
import pytest
import torch

from cvfp.core.contexts import ContextFile
from cvfp.core.corpus import Corpus, sequential_pass
from cvfp.core.model import CVFPModel
from cvfp.phase1 import checks
from cvfp.phase1.checks import (
    convergence_trials,
    degeneracy,
    effective_rank,
    identity_probes,
    singular_values,
    verdict,
)


def test_effective_rank_identity_and_rank_one():
    er = effective_rank(torch.eye(8))
    assert er["effective_rank"] == pytest.approx(8.0, rel=1e-9) and er["actual_rank"] == 8
    assert "text" not in er  # numbers only: the report formats them
    rank1 = torch.outer(torch.arange(1.0, 11.0), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    er = effective_rank(rank1)
    assert er["effective_rank"] == pytest.approx(1.0, abs=1e-5) and er["actual_rank"] == 1


def test_gram_method_equals_svd_on_random_data():
    x = torch.randn(500, 12, generator=torch.Generator().manual_seed(0))
    s_svd = torch.linalg.svdvals(x.double())
    torch.testing.assert_close(singular_values(x, chunk=64), s_svd, rtol=1e-9, atol=1e-9)
    p = s_svd / s_svd.sum()
    assert effective_rank(x)["effective_rank"] == pytest.approx(
        math.exp(-(p * p.log()).sum()), rel=1e-9
    )


@pytest.mark.parametrize(
    "losses, expected",
    [
        ([1.0, 0.8, 0.6, 0.4, 0.2], "CONVERGING"),
        ([0.0010, 0.0011, 0.0010, 0.0011, 0.0010], "CONVERGED"),
        ([0.1, 0.2, 0.3, 0.4, 0.5], "DIVERGING"),
        ([0.0, 0.5, 0.0, 0.5, 0.0, 0.5, 0.0], "UNSTABLE"),  # flat trend, large std
    ],
)
def test_verdicts(losses, expected):
    v = verdict(losses)
    assert v["verdict"] == expected


def test_verdict_numbers():
    v = verdict([1.0, 0.8, 0.6, 0.4, 0.2])
    assert v["slope"] == pytest.approx(-0.2) and v["reduction_percent"] == pytest.approx(80.0)
    assert v["initial_loss"] == 1.0 and v["final_loss"] == 0.2
    assert v["std"] == pytest.approx(np.std([1.0, 0.8, 0.6, 0.4, 0.2]))


def test_degeneracy_detects_attractor_and_zero():
    same = torch.ones(50, 4)
    d = degeneracy(same)
    assert d["global_attractor"] and d["mean_pairwise_l2"] == pytest.approx(0.0, abs=1e-3)
    assert d["mean_norm"] == pytest.approx(2.0) and not d["zero_solution"]
    z = degeneracy(torch.zeros(10, 4) + 1e-3)
    assert z["zero_solution"] and z["sparsity"] == 1.0
    spread = degeneracy(torch.randn(100, 8, generator=torch.Generator().manual_seed(1)))
    assert not spread["global_attractor"] and spread["mean_pairwise_cosine"] < 0.2


def test_identity_probes_flag_a_copying_model():
    torch.manual_seed(0)
    m = CVFPModel(20, 8, 8, 16, [1], layernorm_mix=0.0)
    with torch.no_grad():  # f(c, t) = c: copies the context, ignores the token
        m.blocks[0].layers[0].fnn.weight.zero_()
        m.blocks[0].layers[0].fnn.bias.zero_()
    corpus = Corpus.from_conversations([list(range(20))], "stream")
    ctx = torch.randn(20, 8)
    r = identity_probes(m, corpus, ctx, samples=10)
    assert r["input_output_cosine"] == pytest.approx(1.0, abs=1e-6) and r["identity_warning"]
    assert r["ignores_tokens_warning"] and r["different_token_output_similarity"] == pytest.approx(
        1.0, abs=1e-6
    )
    assert r["context_token_cosine"] is not None


def test_convergence_trials_pass_a_fixed_point_and_fail_a_drifting_model():
    corpus = Corpus.from_conversations([[1, 2, 3, 4, 5, 6]] * 3, "conversation")
    torch.manual_seed(0)
    copying = CVFPModel(20, 8, 8, 16, [1, 1], layernorm_mix=0.0)
    with torch.no_grad():  # f(c, t) = c: every pass repeats the last one
        for block in copying.blocks:
            for layer in block.layers:
                layer.fnn.weight.zero_()
                layer.fnn.bias.zero_()
    r = convergence_trials(copying, corpus, trials=3)
    assert r["losses"] == [0.0, 0.0, 0.0] and r["passed"] and r["verdict"] == "CONVERGED"

    torch.manual_seed(0)
    drifting = CVFPModel(20, 8, 8, 16, [1, 1])
    r = convergence_trials(drifting, corpus, trials=5, final_diff=1e-3)
    # losses: MSE between successive passes, each starting where the last one ended
    prev, final = sequential_pass(drifting, corpus)
    expected = []
    for _ in range(5):
        cur, final = sequential_pass(drifting, corpus, start=final)
        expected.append(float(torch.nn.functional.mse_loss(cur, prev)))
        prev = cur
    assert r["losses"] == pytest.approx(expected, rel=1e-6) and r["trials"] == 5
    assert r["final_diff"] == r["losses"][-1] > 1e-3 and not r["passed"]
    assert r["verdict"] == verdict(r["losses"])["verdict"]


# --- streamed checks against the old whole-array formulas ----------------------------------


def old_degeneracy(x: torch.Tensor, idx: torch.Tensor) -> dict:
    """The formulas before the checks streamed (whole [N, D] arrays), pairs over rows idx."""
    sub = x[idx]
    iu = torch.triu_indices(sub.shape[0], sub.shape[0], offset=1)
    normed = torch.nn.functional.normalize(x, dim=1)
    iu_all = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
    norms = x.norm(dim=1)
    return {
        "mean_pairwise_l2": float(torch.cdist(sub, sub)[iu[0], iu[1]].mean()),
        "mean_pairwise_cosine": float((normed @ normed.T)[iu_all[0], iu_all[1]].mean()),
        "mean_norm": float(norms.mean()),
        "norm_std": float(norms.std()),
        "norm_min": float(norms.min()),
        "norm_max": float(norms.max()),
        "sparsity": float((x.abs() < 0.01).float().mean()),
    }


def as_file(x: torch.Tensor, path) -> ContextFile:
    f = ContextFile(path, tuple(x.shape), create=True)
    f[0 : x.shape[0]] = x
    return f


@pytest.mark.parametrize("n", [150, 700])  # all rows are the sample / a sample of 200
def test_streamed_degeneracy_equals_the_whole_array_formulas(n, tmp_path):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 6, generator=g) * 0.3 + torch.randn(6, generator=g)
    x[::9] *= 0.001  # some near-zero rows (sparsity, small norms)
    want = old_degeneracy(x, checks.sample_index(n, 200))
    for contexts, chunk in ((x, 10**6), (x, 7), (as_file(x, tmp_path / "c.npy"), 64)):
        got = degeneracy(contexts, 200, chunk=chunk)
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (k, chunk)
    if n <= 200:  # the sample is every row: the old function itself
        assert checks.sample_index(n, 200).tolist() == list(range(n))


def test_norm_std_has_no_cancellation_when_norms_are_nearly_equal():
    x = torch.nn.functional.normalize(torch.randn(5000, 8, dtype=torch.float64), dim=1) * 8
    x = (x * (1 + 1e-4 * torch.randn(5000, 1, dtype=torch.float64))).float()
    got = degeneracy(x, chunk=333)["norm_std"]
    assert got == pytest.approx(float(x.double().norm(dim=1).std()), rel=1e-3)


def test_sample_index_is_fixed_distinct_and_bounded():
    a, b = checks.sample_index(10**7, 200, seed=0), checks.sample_index(10**7, 200, seed=0)
    assert torch.equal(a, b) and len(set(a.tolist())) == 200 and int(a.max()) < 10**7
    assert not torch.equal(a, checks.sample_index(10**7, 200, seed=1))


def test_prev_of_equals_prev_index():
    corpus = Corpus.from_conversations([[1] * k for k in (3, 1, 5, 2)])
    pos = torch.arange(corpus.n_tokens)
    assert torch.equal(checks.prev_of(corpus, pos), corpus.prev_index())


def test_streamed_identity_probes_equal_the_whole_array_formulas(tmp_path):
    torch.manual_seed(0)
    m = CVFPModel(30, 8, 8, 16, [1, 1])
    corpus = Corpus.from_conversations(
        [torch.randint(0, 30, (k,)).tolist() for k in (9, 4, 17, 1, 12)]
    )
    x = torch.randn(corpus.n_tokens, 8)
    pos = checks.sample_index(corpus.n_tokens, 20)
    with torch.no_grad():  # the old formulas, whole arrays
        embeds = m.embed(corpus.ids)
        inp = x[corpus.prev_index()[pos]]
        out, _ = m(inp, embeds[pos])
        io_cos = float(torch.nn.functional.cosine_similarity(inp, out, dim=1).mean())
        deviation = float((x - x.mean(0)).norm(dim=1).mean())
        ct = float(torch.nn.functional.cosine_similarity(x, embeds, dim=1).mean())
    for contexts, chunk in ((x, 10**6), (x, 5), (as_file(x, tmp_path / "c.npy"), 6)):
        r = identity_probes(m, corpus, contexts, samples=20, chunk=chunk)
        assert r["input_output_cosine"] == pytest.approx(io_cos, rel=1e-6)
        assert r["mean_deviation_from_mean"] == pytest.approx(deviation, rel=1e-6)
        assert r["context_token_cosine"] == pytest.approx(ct, rel=1e-5, abs=1e-7)


def old_trials(model, corpus, trials):
    prev, final = sequential_pass(model, corpus)
    losses = []
    for _ in range(trials):
        cur, final = sequential_pass(model, corpus, start=final)
        losses.append(float(torch.nn.functional.mse_loss(cur, prev)))
        prev = cur
    return losses


@pytest.mark.parametrize("reset", ["conversation", "stream"])
def test_chunked_trials_equal_whole_split_passes(reset, tmp_path):
    torch.manual_seed(1)
    m = CVFPModel(20, 8, 8, 16, [1, 1])
    corpus = Corpus.from_conversations(
        [torch.randint(0, 20, (k,)).tolist() for k in (6, 3, 11, 2, 7, 5)], reset
    )
    want = old_trials(m, corpus, 4)
    # chunks of whole conversations; and 4-token chunks: conversations (or the stream) in
    # slices that carry on, their previous pass in a file under work_dir
    for chunk, work in ((10**6, None), (8, None), (4, tmp_path / "work")):
        got = convergence_trials(m, corpus, trials=4, chunk_tokens=chunk, work_dir=work)
        assert got["losses"] == pytest.approx(want, rel=1e-5), chunk
    assert list((tmp_path / "work").iterdir()) == []  # the slices' row store is removed


def test_effective_rank_from_a_context_file(tmp_path):
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(2))
    a = effective_rank(x)
    b = effective_rank(as_file(x, tmp_path / "c.npy"), chunk=17)
    assert b["effective_rank"] == pytest.approx(a["effective_rank"], rel=1e-9)
