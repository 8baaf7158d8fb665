import pytest
import torch

from cvfp.core.corpus import Corpus, sequential_pass
from cvfp.core.model import CVFPModel
from cvfp.phase1.diversity import make_diversity
from cvfp.phase1.trainer import parallel_iteration, run_phase1
from cvfp.runtime.utils import seed_everything
from helpers.phase1 import convs, tiny_model


def test_parallel_input_contexts_shift_by_one_with_carryover(tiny_params):
    c = Corpus.from_conversations([[1, 2, 3, 4], [5, 6, 7]], "stream")
    assert c.prev_index().tolist() == [6, 0, 1, 2, 3, 4, 5]  # token 0 gets previous[-1]
    c = Corpus.from_conversations([[1, 2, 3, 4], [5, 6, 7]], "conversation")
    assert c.prev_index().tolist() == [3, 0, 1, 2, 6, 4, 5]  # each conversation its own last

    class Recorder(torch.nn.Module):  # model stub: records inputs, returns them unchanged
        context_dim = 2

        def embed(self, ids):
            return ids.float()[:, None]

        def forward(self, ctx, emb):
            self.seen = ctx.clone()
            return ctx, emb

    prev = torch.arange(14.0).reshape(7, 2)
    rec = Recorder()
    p = tiny_params.phase1.model_copy(
        update={"dist_reg_weight": 0.9, "chunk_tokens": 100, "convergence_threshold": 0.1}
    )
    parallel_iteration(rec, c, prev, p, make_diversity("global_mean"))
    torch.testing.assert_close(rec.seen, prev[[3, 0, 1, 2, 6, 4, 5]])


def test_conversation_mode_equals_each_conversation_alone():
    m = tiny_model()
    cs = convs(n=6)
    batched, final = sequential_pass(m, Corpus.from_conversations(cs, "conversation"))
    start = 0
    for i, conv in enumerate(cs):
        alone, last = sequential_pass(m, Corpus.from_conversations([conv], "stream"))
        torch.testing.assert_close(batched[start : start + len(conv)], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(final[i], last[0], atol=1e-5, rtol=0)
        start += len(conv)


def test_sequential_pass_matches_token_by_token_definition():
    m = tiny_model()
    ids = torch.tensor([3, 1, 4, 1, 5])
    ctx = torch.zeros(1, 16)
    expected = []
    for t in ids:
        ctx, _ = m(ctx, m.embed(t[None]))
        expected.append(ctx[0])
    got, _ = sequential_pass(m, Corpus.from_conversations([ids.numpy()], "stream"))
    torch.testing.assert_close(got, torch.stack(expected))


def test_carryover_next_pass_starts_from_previous_final_not_zero(tiny_params):
    p = tiny_params.phase1.model_copy(
        update={"mode": "sequential", "max_iterations": 1, "min_converged_ratio": 1.0}
    )
    m = tiny_model()
    corpus = Corpus.from_conversations([[1, 2, 3, 4, 5]], "stream")
    started = []
    orig = m.forward

    def spy(ctx, emb, all_blocks=False):
        started.append(ctx.detach().clone())
        return orig(ctx, emb, all_blocks)

    m.forward = spy
    with torch.no_grad():
        _, final0 = sequential_pass(m, corpus)
    started.clear()
    run_phase1(m, corpus, p, train=False)
    # iteration 0 starts at zero; iteration 1's first input is iteration 0's final context
    assert torch.count_nonzero(started[0]) == 0
    torch.testing.assert_close(started[5], final0)


@pytest.mark.parametrize("kind", ["global_mean", "ema_variance", "distribution"])
def test_each_diversity_loss_has_nonzero_weight_gradient(kind):
    m = tiny_model()
    m.set_track_stats(kind == "distribution")
    m.train()
    div = make_diversity(kind, 0.99)
    corpus = Corpus.from_conversations(convs(n=4), "conversation")
    prev = torch.randn(corpus.n_tokens, 16)
    if kind == "ema_variance":
        div(prev)  # establish EMA state first, as after iteration 0
    ctx, _ = m(prev, m.embed(corpus.ids))
    loss = div(ctx, m)
    loss.backward()
    g = m.blocks[0].layers[0].fnn.weight.grad
    assert g is not None and g.abs().sum().item() > 1e-8


def test_phase1_parallel_history_and_learning(tiny_params):
    seed_everything(0)
    p = tiny_params.phase1.model_copy(update={"max_iterations": 4, "min_converged_ratio": 1.0})
    m = tiny_model()
    corpus = Corpus.from_conversations(convs(n=8), "conversation")
    before = m.blocks[0].layers[0].fnn.weight.clone()
    r = run_phase1(m, corpus, p, train=True)
    assert r.iterations == 4 and len(r.history) == 5
    h = r.history[2]
    assert h.total == corpus.n_tokens and h.steps == 1 and h.skipped_steps == 0
    assert h.total_loss == pytest.approx(0.1 * h.cvfp_loss + 0.9 * h.diversity_loss, rel=1e-5)
    assert 0 <= h.converged <= h.total and h.convergence_rate == h.converged / h.total
    assert not torch.equal(before, m.blocks[0].layers[0].fnn.weight)
    assert r.contexts.shape == (corpus.n_tokens, 16)


def test_early_stop_when_converged(tiny_params):
    p = tiny_params.phase1.model_copy(update={"convergence_threshold": 1e9, "max_iterations": 10})
    r = run_phase1(tiny_model(), Corpus.from_conversations(convs(), "conversation"), p)
    assert r.iterations == 1 and r.stopped_early and r.final.convergence_rate == 1.0


def test_nan_steps_are_skipped_and_counted(tiny_params):
    p = tiny_params.phase1.model_copy(
        update={
            "max_iterations": 2,
            "min_converged_ratio": 1.0,
            "divergence": tiny_params.phase1.divergence.model_copy(update={"action": "continue"}),
        }
    )  # else it fails
    m = tiny_model()
    corpus = Corpus.from_conversations(convs(), "conversation")
    with torch.no_grad():
        m.blocks[1].layers[0].fnn.bias[0] = float("nan")
    w = m.blocks[0].layers[0].fnn.weight.clone()
    r = run_phase1(m, corpus, p)
    assert [h.skipped_steps for h in r.history[1:]] == [1, 1]
    assert [h.steps for h in r.history[1:]] == [0, 0]
    assert torch.equal(w, m.blocks[0].layers[0].fnn.weight)


def test_sequential_mode_steps_once_per_position(tiny_params):
    p = tiny_params.phase1.model_copy(
        update={"mode": "sequential", "max_iterations": 1, "min_converged_ratio": 1.0}
    )
    cs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    r = run_phase1(tiny_model(), Corpus.from_conversations(cs, "conversation"), p)
    assert r.history[1].steps == 4  # one step per position, conversations side by side
    r = run_phase1(tiny_model(), Corpus.from_conversations(cs, "stream"), p)
    assert r.history[1].steps == 9  # one stream: one step per token


def test_same_seed_bit_identical(tiny_params):
    p = tiny_params.phase1.model_copy(update={"max_iterations": 3, "min_converged_ratio": 1.0})
    outs = []
    for _ in range(2):
        seed_everything(42)
        m = CVFPModel(30, 16, 16, 32, [1, 1])
        outs.append(run_phase1(m, Corpus.from_conversations(convs(), "conversation"), p).contexts)
    assert torch.equal(outs[0], outs[1])


def _reference_gradient(m, corpus, prev, kind, w=0.9):
    """The full-batch loss written out directly (no chunks, no sums), as the seeds did."""
    m.zero_grad(set_to_none=True)
    ctx, _ = m(prev[corpus.prev_index()], m.embed(corpus.ids))
    if kind == "global_mean":
        div = -torch.linalg.vector_norm(ctx - ctx.mean(0)) / ctx.shape[0]
    else:  # ema_variance, first call: EMA starts at this batch's mean with unit variance
        var = 0.99 + 0.01 * ((ctx - ctx.detach().mean(0)) ** 2).mean(0)
        div = 1.0 / (var.mean() + 1e-6)
    loss = (1 - w) * torch.nn.functional.mse_loss(ctx, prev) + w * div
    loss.backward()
    return loss.item(), _grads(m)


def _grads(m):
    return {
        k: torch.zeros_like(q) if q.grad is None else q.grad.clone()
        for k, q in m.named_parameters()
        if q.requires_grad
    }


@pytest.mark.parametrize("kind", ["global_mean", "ema_variance"])
@pytest.mark.parametrize("chunk", [10_000, 7, 1])
def test_chunked_gradient_equals_full_batch_gradient(tiny_params, kind, chunk):
    corpus = Corpus.from_conversations(convs(n=8), "conversation")
    prev = torch.randn(corpus.n_tokens, 16)
    m = tiny_model()
    m.train()
    want_loss, want = _reference_gradient(m, corpus, prev, kind)
    p = tiny_params.phase1.model_copy(update={"chunk_tokens": chunk, "grad_clip": 1e9})
    opt = torch.optim.SGD([q for q in m.parameters() if q.requires_grad], lr=0.0)  # keeps .grad
    out, (cvfp, div, total), steps, _, _ = parallel_iteration(
        m, corpus, prev, p, make_diversity(kind), opt
    )
    got = _grads(m)
    assert steps == 1 and total == pytest.approx(want_loss, rel=1e-5)
    assert got.keys() == want.keys() and any(g.abs().sum() > 0 for g in got.values())
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-7, msg=k)
    expected, _ = m(prev[corpus.prev_index()], m.embed(corpus.ids))
    torch.testing.assert_close(out.data, expected.detach(), rtol=0, atol=1e-6)


def test_chunked_training_matches_one_chunk(tiny_params):
    """Whole Phase 1 runs (Adam steps, carryover, convergence) with chunks of 5 tokens and
    with one chunk end with the same weights and contexts."""
    corpus = Corpus.from_conversations(convs(n=8), "conversation")
    runs = []
    for chunk in (100_000, 5):
        seed_everything(3)
        m = tiny_model(seed=3)
        p = tiny_params.phase1.model_copy(
            update={"chunk_tokens": chunk, "max_iterations": 3, "min_converged_ratio": 1.0}
        )
        r = run_phase1(m, corpus, p)
        runs.append((r, m.blocks[0].layers[0].fnn.weight.detach().clone()))
    (a, wa), (b, wb) = runs
    torch.testing.assert_close(wa, wb, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a.contexts, b.contexts, rtol=1e-4, atol=1e-5)
    assert [h.converged for h in a.history] == [h.converged for h in b.history]


def test_every_pass_shows_its_tokens(tiny_params):
    """Issue 26: an iteration over the whole ShareGPT corpus is ~15 min; its bar counts the
    tokens of both passes over the chunks (pass 2 recomputes them for the step), and the
    saved model's pass has its own bar; with one chunk the step reuses pass 1's graph."""
    from cvfp.runtime.utils import progress_listener

    corpus = Corpus.from_conversations(convs(n=8), "conversation")
    n = corpus.n_tokens
    for chunk, passes in ((5, 2), (100_000, 1)):
        seen: dict[str, tuple[int, int]] = {}
        p = tiny_params.phase1.model_copy(
            update={"chunk_tokens": chunk, "max_iterations": 2, "min_converged_ratio": 1.0}
        )
        with progress_listener(
            lambda desc, k, total, _s, seen=seen: seen.update({desc: (k, total)})
        ):
            run_phase1(tiny_model(), corpus, p)
        assert seen["phase1 train iter 0"] == (n, n)
        assert seen["phase1 train iter 1"] == seen["phase1 train iter 2"] == (passes * n,) * 2
        assert seen["phase1 saved model"] == (n, n)  # no step: one pass
        assert seen["phase1 train"] == (2, 2)  # the iterations, k of max_iterations


def test_contexts_in_work_dir_files_equal_in_memory(tiny_params, tmp_path):
    corpus = Corpus.from_conversations(convs(n=6), "conversation")
    p = tiny_params.phase1.model_copy(
        update={"max_iterations": 2, "min_converged_ratio": 1.0, "chunk_tokens": 9}
    )
    outs = []
    for work in (None, tmp_path / "work"):
        seed_everything(0)
        outs.append(run_phase1(tiny_model(), corpus, p, work_dir=work).contexts)
    assert list((tmp_path / "work").iterdir()) == []  # scratch files removed
    # ... and the final contexts stay readable, a row range at a time, from the open file
    assert torch.equal(outs[0], outs[1][0 : len(outs[1])])
    assert torch.equal(outs[0][3:7], outs[1][3:7])


def test_distribution_diversity_refuses_chunks(tiny_params):
    corpus = Corpus.from_conversations(convs(n=6), "conversation")
    p = tiny_params.phase1.model_copy(update={"chunk_tokens": 4})
    p.diversity.kind = "distribution"
    with pytest.raises(
        ValueError, match="phase1.diversity.kind='distribution'.*global_mean or ema_variance"
    ):
        run_phase1(tiny_model(), corpus, p)


SIGTERM_RUN = """
import sys, torch
from cvfp.core.corpus import Corpus
from cvfp.core.model import CVFPModel
from cvfp.params import load_params
from cvfp.phase1.trainer import run_phase1
over = {"phase1.max_iterations": 10**6, "phase1.min_converged_ratio": 1.0,
        "phase1.convergence_threshold": 1e-30, "phase1.progress": False,
        "phase1.chunk_tokens": 16, "phase1.divergence.max_loss": 1e30}
p = load_params("params.yaml", over).phase1
torch.manual_seed(0)
corpus = Corpus.from_conversations([list(range(i, i + 20)) for i in range(10)])
run_phase1(CVFPModel(30, 16, 16, 32, [1, 1]), corpus, p, work_dir=sys.argv[1])
"""


def test_sigterm_removes_the_work_files(tmp_path):
    """A real process running Phase 1 (it would run for ever) gets SIGTERM once its context
    files exist: it exits with 143 and leaves no work file behind."""
    import signal
    import subprocess
    import sys
    import time

    from helpers import ROOT

    work = tmp_path / "work"
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_RUN, str(work)], cwd=ROOT, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not list(work.glob("*/contexts_*.npy")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no work files after 120 s"
            time.sleep(0.1)
        time.sleep(0.5)  # well inside the iterations
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143, proc.stderr.read().decode()
    finally:
        proc.kill()
    assert work.is_dir() and list(work.iterdir()) == []
