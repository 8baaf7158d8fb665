import math

import numpy as np
import pytest
import torch

from cvfp.checks import (
    convergence_trials,
    degeneracy,
    effective_rank,
    identity_probes,
    singular_values,
    verdict,
)
from cvfp.corpus import Corpus, sequential_pass
from cvfp.model import CVFPModel


def test_effective_rank_identity_and_rank_one():
    er = effective_rank(torch.eye(8))
    assert er["effective_rank"] == pytest.approx(8.0, rel=1e-9) and er["actual_rank"] == 8
    assert er["text"] == "8.00/8 = 100.0%"
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
