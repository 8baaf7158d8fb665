"""Phase 1 objective `reconstruction` (SPEC section 7, seed 003): target, learning, TBPTT,
batching across conversations, params, checkpoint loading and the Phase 2 warm start."""

import numpy as np
import pytest
import torch
import yaml

from cvfp.core.corpus import Corpus, sequential_pass
from cvfp.core.model import CVFPModel
from cvfp.params import ParamsError, load_params
from cvfp.phase1.reconstruction import (
    ContextDecoder,
    ConversationBatch,
    chunk_forward,
    conversation_batches,
    evaluate,
    reconstruction_target,
    train_reconstruction,
)
from cvfp.runtime.utils import seed_everything
from helpers import write_params


def tiny_model(seed=0, vocab=30, **kw):
    torch.manual_seed(seed)
    return CVFPModel(vocab, 16, 16, 32, [1, 1], **kw)


def convs(seed=0, n=6, vocab=30, lo=3, hi=12):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=rng.integers(lo, hi)) for _ in range(n)]


def whole(corpus):
    """All conversations of `corpus` as one batch."""
    return ConversationBatch(corpus, list(range(corpus.n_conversations)))


def run_batch(model, decoder, batch, chunk_length, out):
    """Every chunk of one batch from a zero context; returns the ChunkOutputs."""
    state, outs = torch.zeros(batch.corpus.n_conversations, model.context_dim), []
    for t0 in range(0, len(batch.schedule), chunk_length):
        o = chunk_forward(
            model, decoder, batch, state, t0, min(t0 + chunk_length, len(batch.schedule)), out
        )
        state = o.state
        outs.append(o)
    return outs


class ZeroDecoder(torch.nn.Module):
    """Decodes everything to zeros, so the per-position MSE is mean(target^2)."""

    def forward(self, context):
        return torch.zeros(context.shape[0], 32)


def test_target_is_exactly_concat_of_previous_context_and_embedding_detached():
    prev = torch.randn(4, 16, requires_grad=True)
    emb = torch.randn(4, 16, requires_grad=True)
    target = reconstruction_target(prev, emb)
    assert torch.equal(target, torch.cat([prev, emb], dim=-1)) and not target.requires_grad

    # In training: the previous context is the context before the token (zero at a
    # conversation start) and the embedding is model.embed(token); no gradient flows into
    # the target (with a constant decoder the MSE has no graph at all).
    m = tiny_model()
    corpus = Corpus.from_conversations(convs(n=4), "conversation")
    with torch.no_grad():
        ctx, _ = sequential_pass(m, corpus)
    prev_ctx = ctx[corpus.prev_index()]
    prev_ctx[corpus.offsets[:-1]] = 0.0
    expected = (torch.cat([prev_ctx, m.embed(corpus.ids)], -1).detach() ** 2).mean(1).sum()
    outs = run_batch(m, ZeroDecoder(), whole(corpus), 4, None)
    got = sum(o.recon_loss for o in outs)
    assert not got.requires_grad
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert sum(o.n_positions for o in outs) == corpus.n_tokens


def test_decoder_shape_and_layers():
    d = ContextDecoder(16, 24)
    kinds = [type(layer).__name__ for layer in d.net]
    assert kinds == ["Linear", "ReLU", "Linear"]
    assert (d.net[0].in_features, d.net[0].out_features, d.net[2].out_features) == (16, 32, 40)
    assert d(torch.zeros(3, 16)).shape == (3, 40)


def test_truncated_bptt_no_gradient_crosses_a_chunk_boundary():
    m = tiny_model(embedding="learned")  # embedding rows get gradients
    with torch.no_grad():
        m.token_output.weight.normal_(0.0, 0.1)  # a non-zero head, as after some training
    dec = ContextDecoder(16, 16)
    # chunk 1 = tokens 1, 2, 3; chunk 2 = tokens 4, 5, 6 (each token in one chunk only)
    corpus = Corpus.from_conversations([[1, 2, 3, 4, 5, 6, 7]], "conversation")
    batch = whole(corpus)
    first = chunk_forward(m, dec, batch, torch.zeros(1, 16), 0, 3)
    assert first.state.requires_grad  # the carried state still has its graph...
    second = chunk_forward(m, dec, batch, first.state, 3, 6)
    (g,) = torch.autograd.grad(second.token_loss + second.recon_loss, m.token_embedding.weight)
    assert g[[1, 2, 3]].abs().sum() == 0  # ...but chunk 2's loss does not reach chunk 1
    assert (g[[4, 5, 6]].abs().sum(1) > 0).all()

    def grad_in_chunks(length):  # positions 3..5 in chunks of `length`
        state, total = first.state, 0.0
        for t0 in range(3, 6, length):
            o = chunk_forward(m, dec, batch, state, t0, min(t0 + length, 6))
            state, total = o.state, total + o.token_loss + o.recon_loss
        return torch.autograd.grad(total, m.token_embedding.weight)[0]

    torch.testing.assert_close(grad_in_chunks(3), g)
    # within a chunk the gradient does run back through the recurrence: token 4's embedding
    # also gets gradient from the losses at positions 4 and 5 when they share its chunk
    assert not torch.allclose(grad_in_chunks(1)[4], g[4])
    # and chunk 1 does change chunk 2's values: the zero gradient is truncation, not independence
    other = whole(Corpus.from_conversations([[9, 9, 9, 4, 5, 6, 7]], "conversation"))
    first_o = chunk_forward(m, dec, other, torch.zeros(1, 16), 0, 3)
    second_o = chunk_forward(m, dec, other, first_o.state, 3, 6)
    assert not torch.allclose(second_o.token_loss, second.token_loss)


def test_batched_conversations_equal_each_conversation_alone():
    seed_everything(0)
    m, dec = tiny_model(), ContextDecoder(16, 16)
    cs = convs(n=7, lo=2, hi=20)
    corpus = Corpus.from_conversations(cs, "conversation")
    batched = torch.full((corpus.n_tokens, 16), float("nan"))
    with torch.no_grad():
        outs = run_batch(m, dec, whole(corpus), 5, batched)
        reference, _ = sequential_pass(m, corpus)
        alone_ce = alone_rec = 0.0
        start = 0
        for c in cs:
            one = Corpus.from_conversations([c], "conversation")
            ctx = torch.empty(len(c), 16)
            for o in run_batch(m, dec, whole(one), 5, ctx):
                alone_ce += o.token_loss.item()
                alone_rec += o.recon_loss.item()
            torch.testing.assert_close(batched[start : start + len(c)], ctx, atol=1e-5, rtol=0)
            start += len(c)
    torch.testing.assert_close(batched, reference, atol=1e-5, rtol=0)  # = the sequential pass (C*)
    assert sum(o.token_loss.item() for o in outs) == pytest.approx(alone_ce, rel=1e-5)
    assert sum(o.recon_loss.item() for o in outs) == pytest.approx(alone_rec, rel=1e-5)
    assert sum(o.n_tokens for o in outs) == corpus.n_tokens - corpus.n_conversations


def test_training_batches_cover_every_conversation_once():
    corpus = Corpus.from_conversations(convs(n=11), "conversation")
    batches = conversation_batches(corpus, 4, torch.Generator().manual_seed(0))
    assert [b.corpus.n_conversations for b in batches].count(4) == 2
    rows = torch.cat([b.index for b in batches]).sort().values
    assert torch.equal(rows, torch.arange(corpus.n_tokens))
    for b in batches:  # index maps sub-corpus rows to corpus rows
        assert torch.equal(corpus.ids[b.index], b.corpus.ids)


def test_reconstruction_and_token_loss_fall(tiny_params):
    seed_everything(0)
    p = tiny_params.phase1.model_copy(update={"objective": "reconstruction"})
    p.reconstruction = p.reconstruction.model_copy(
        update={"epochs": 25, "batch_conversations": 4, "chunk_length": 8, "lr": 0.005}
    )
    m = tiny_model(vocab=20)
    corpus = Corpus.from_conversations(convs(n=12, vocab=20, lo=8, hi=16), "conversation")
    before, _ = evaluate(m, ContextDecoder(16, 16), corpus, p.reconstruction)
    head = m.token_output.weight.clone()
    r = train_reconstruction(m, corpus, corpus, p, seed=0)
    after = r.final["val"]
    assert after.recon_loss < 0.5 * before.recon_loss, (before, after)
    assert after.token_loss < before.token_loss and after.ppl < before.ppl
    assert not torch.equal(head, m.token_output.weight)  # the head is trained here
    assert (
        len(r.history) == 25 and r.history[-1]["steps"] > 0 and r.history[-1]["skipped_steps"] == 0
    )
    assert r.history[-1]["train_recon_loss"] < r.history[0]["train_recon_loss"]
    assert r.contexts["train"].shape == (corpus.n_tokens, 16)
    with torch.no_grad():  # final contexts are C*
        torch.testing.assert_close(
            r.contexts["train"], sequential_pass(m, corpus)[0], atol=1e-5, rtol=0
        )


def test_same_seed_same_numbers(tiny_params):
    p = tiny_params.phase1.model_copy(update={"objective": "reconstruction"})
    p.reconstruction = p.reconstruction.model_copy(update={"epochs": 2, "batch_conversations": 3})
    outs = []
    for _ in range(2):
        seed_everything(1)
        m = CVFPModel(30, 16, 16, 32, [1, 1])
        corpus = Corpus.from_conversations(convs(), "conversation")
        outs.append(train_reconstruction(m, corpus, corpus, p, seed=1).history)
    assert outs[0] == outs[1]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (
            lambda r: r["phase1"].update(objective="autoencoder"),
            r"phase1\.objective = 'autoencoder': Input should be 'cvfp', 'reconstruction' or 'none'",
        ),
        (
            lambda r: r["phase1"]["reconstruction"].update(recon_weight=-1),
            r"phase1\.reconstruction\.recon_weight = -1: Input should be greater than or equal to 0",
        ),
        (
            lambda r: r["phase1"]["reconstruction"].update(chunk_length=0),
            r"phase1\.reconstruction\.chunk_length = 0: Input should be greater than or equal to 1",
        ),
        (
            lambda r: r["phase1"]["reconstruction"].update(epochs="many"),
            r"phase1\.reconstruction\.epochs = 'many': Input should be a valid integer",
        ),
        (
            lambda r: r["phase1"]["reconstruction"].update(batch_conversations=0),
            r"phase1\.reconstruction\.batch_conversations = 0",
        ),
        (
            lambda r: r["phase1"]["reconstruction"].update(lr=0),
            r"phase1\.reconstruction\.lr = 0: Input should be greater than 0",
        ),
        (
            lambda r: r["phase1"]["reconstruction"].update(lambda_=1.0),
            r"phase1\.reconstruction\.lambda_: unknown key",
        ),
        (
            lambda r: r["phase1"]["reconstruction"].pop("chunk_length"),
            r"phase1\.reconstruction\.chunk_length: missing",
        ),
    ],
)
def test_params_validation_names_the_key(tmp_path, mutate, expected):
    with pytest.raises(ParamsError, match=expected):
        load_params(write_params(tmp_path, mutate))


def test_stage_checkpoint_loads_for_materialize_and_phase2_warm_start(
    tiny_params, tmp_path, monkeypatch
):
    """tasks.phase1 with objective=reconstruction on a tiny token set: its checkpoint loads
    with cvfp.materialize.cstar.load_phase1_model (strict), carries the decoder outside the model's
    state_dict, and Phase 2's warm start begins exactly at the reconstruction val numbers."""
    from datasets import Dataset

    import tasks.phase1 as stage
    from cvfp.core.checkpoint import read_checkpoint
    from cvfp.materialize.cstar import load_phase1_model
    from cvfp.phase2.data import PositionData
    from cvfp.phase2.evaluation import evaluate as p2_evaluate

    monkeypatch.chdir(tmp_path)
    for split, seed in (("train", 0), ("val", 1)):
        Dataset.from_dict(
            {"input_ids": [c.tolist() for c in convs(seed, n=8, lo=4, hi=14)]}
        ).save_to_disk(f"data/split/{split}")
    monkeypatch.setattr(stage, "read_vocab_size", lambda _: 30)
    params = tiny_params.model_copy(deep=True)
    params.phase1.objective = "reconstruction"
    params.phase1.max_iterations = 2
    params.phase1.reconstruction.epochs = 2
    params.checks.convergence_trials = 2
    params.checks.probe_samples = 20
    metrics = stage.run(params)
    assert (
        metrics["objective"] == "reconstruction" and metrics["epochs"] == metrics["max_epochs"] == 2
    )
    for key in (
        "convergence_rate",
        "effective_rank",
        "degeneracy",
        "ppl",
        "acc",
        "token_loss",
        "recon_loss",
    ):
        assert key in metrics["val"] and key in metrics["train"], key
    assert "trials" in metrics["val"]
    state = read_checkpoint("cache/phase1/model.pt")
    assert state["objective"] == "reconstruction"
    assert "net.0.weight" in state["context_decoder"]
    assert not any(k.startswith("net.") or "decoder" in k for k in state["state_dict"])
    model = load_phase1_model("cache/phase1/model.pt", params.model, 30)
    assert model.token_output.weight.abs().sum() > 0  # the trained head came along
    import pandas as pd

    csv = pd.read_csv("plots/phase1_train.csv")
    assert list(csv["epoch"]) == [1, 2] and {
        "train_token_loss",
        "train_recon_loss",
        "val_ppl",
    } <= set(csv)
    # Phase 2 epoch 0 (the reused head on C*) = the reconstruction objective's own val numbers
    val = Corpus.from_conversations(convs(1, n=8, lo=4, hi=14), "conversation")
    with torch.no_grad():
        cstar, _ = sequential_pass(model, val)
    (st,) = p2_evaluate(model, PositionData.from_corpus(val, cstar.numpy()), 64)
    assert st.ppl == pytest.approx(metrics["val"]["ppl"], rel=1e-4)
    assert st.acc == pytest.approx(metrics["val"]["acc"], abs=1e-9)


def test_report_shows_the_objective_and_the_reconstruction_epochs(tmp_path, monkeypatch):
    import json

    import helpers.report as tr
    from cvfp.analysis.formats import fmt_ppl
    from cvfp.analysis.report.inputs import RECONSTRUCTION_TITLE

    files = tr.fake_run()
    epochs = [
        {
            "epoch": e,
            "train_token_loss": 4.0 / e,
            "train_recon_loss": 0.6 / e,
            "train_loss": 4.6 / e,
            "train_ppl": 50.0 / e,
            "train_acc": 0.1 * e,
            "val_token_loss": 4.2 / e,
            "val_recon_loss": 0.7 / e,
            "val_loss": 4.9 / e,
            "val_ppl": 66.6 / e,
            "val_acc": 0.09 * e,
            "steps": 7,
            "skipped_steps": 0,
            "seconds": 0.5,
        }
        for e in (1, 2)
    ]
    p1 = files["metrics/phase1.json"]
    p1.update(objective="reconstruction", epochs=2, max_epochs=2)
    for split, ppl in (("train", 25.0), ("val", 33.3)):
        p1[split].update(token_loss=3.2, recon_loss=0.35, loss=3.55, ppl=ppl, acc=0.42)
    keys = ("token_loss", "recon_loss", "loss", "ppl", "acc")
    final = {s: {k: p1[s][k] for k in keys} for s in ("train", "val")}
    files["cache/phase1/checks.json"]["reconstruction"] = {
        "history": epochs,
        "recon_weight": 1.0,
        "final": final,
    }
    files["metrics/phase2.json"]["cvfp"]["head_init"] = "phase1"
    tr.write_run(tmp_path, files)
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["phase1"]["objective"] = "reconstruction"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    out, html_text, md = tr.build(tmp_path)
    for text in (
        f"<h2>{RECONSTRUCTION_TITLE}</h2>",
        "Reconstruction training per epoch",
        "2/2 epochs",
        "Phase 1 (reconstruction) val perplexity / accuracy",
        "33.30 / 42.00%",
        fmt_ppl(66.6),
        fmt_ppl(33.3),
        "reused from Phase 1",
        "Fixed-point convergence of the trained model",
    ):
        assert text in html_text, text
        assert text.replace("<h2>", "## ").replace("</h2>", "") in md, text
    assert html_text.count("data:image/png;base64,") == 4  # + the reconstruction epochs figure
    assert json.loads(json.dumps(out))["warnings"] == 0
