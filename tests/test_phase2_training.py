"""Phase 2 mechanics (cvfp/phase2/trainer.py; tiny: 2 blocks, dim 16): positions and targets,
where gradients flow, frozen stack, per-block heads, the best epoch, a NaN loss, the
per-conversation sums."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cvfp.core.checkpoint import Checkpointer, read_checkpoint
from cvfp.core.corpus import Corpus
from cvfp.core.model import CVFPModel
from cvfp.core.training import BestEpoch, perplexity
from cvfp.phase2.data import PositionData
from cvfp.phase2.evaluation import evaluate, head_logits
from cvfp.phase2.trainer import NonFiniteLossError, clone_heads, configure_trainable, train_phase2
from helpers.phase2 import CONVS, V, cfg, make_cstar, tiny_model

# ---------------------------------------------------------------- Phase 2 mechanics


def test_positions_inputs_and_targets(tmp_path):
    for reset, n_pos in (("conversation", 24 - 5), ("stream", 24 - 1)):
        corpus = Corpus.from_conversations(CONVS, reset)
        cstar = np.arange(24 * 16, dtype=np.float32).reshape(24, 16)
        data = PositionData.from_corpus(corpus, cstar)
        assert len(data) == n_pos
        prev, ids, fixed, target = data.batch(np.array([7, 8, 9]))  # 7 starts conversation 2
        zero_first = reset == "conversation"
        assert torch.equal(prev[0], torch.zeros(16) if zero_first else torch.from_numpy(cstar[6]))
        assert torch.equal(prev[1], torch.from_numpy(cstar[7])) and torch.equal(
            fixed[2], torch.from_numpy(cstar[9])
        )
        assert ids.tolist() == [3, 3, 1] and target.tolist() == [3, 1, 5]


def test_no_grad_to_cstar_and_stack_only_through_token_out(tmp_path):
    model = tiny_model()
    data = make_cstar(model, Corpus.from_conversations(CONVS), tmp_path)
    configure_trainable(model, freeze_context=False)
    model.token_output.weight.data.normal_(0, 0.1)  # non-zero head so the stack gets gradient
    prev, ids, fixed, target = data.batch(data.positions)
    assert not prev.requires_grad and not fixed.requires_grad
    outs = model(prev, model.embed(ids))
    loss = F.cross_entropy(head_logits(model, None, fixed, outs)[0], target)
    context_out, token_out = outs
    g_ctx, g_tok = torch.autograd.grad(
        loss, [context_out, token_out], retain_graph=True, allow_unused=True
    )
    assert g_ctx is None  # context_out is discarded: no path
    assert g_tok.abs().sum() > 0
    loss.backward()
    assert prev.grad is None and fixed.grad is None  # C* is data, never differentiated
    assert model.token_output.weight.grad.abs().sum() > 0
    for block in model.blocks:
        assert block.layers[0].fnn.weight.grad.abs().sum() > 0
    assert model.token_embedding.weight.grad is None  # random_frozen embeddings stay frozen


def test_freeze_context_leaves_stack_unchanged(tmp_path, tiny_params):
    model = tiny_model()
    data = make_cstar(model, Corpus.from_conversations(CONVS), tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_phase2(model, data, data, cfg(tiny_params, freeze_context=True, epochs=2))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"token_output.weight", "token_output.bias"}


def test_per_block_heads_start_as_clones_and_train(tmp_path, tiny_params):
    model = tiny_model()
    model.token_output.weight.data.normal_()
    heads = clone_heads(model, 2)
    for h in heads:
        assert h is not model.token_output
        assert torch.equal(h.weight, model.token_output.weight) and torch.equal(
            h.bias, model.token_output.bias
        )
    heads[0].weight.data.add_(1.0)  # independent copies, not shared storage
    assert not torch.equal(heads[0].weight, model.token_output.weight)

    model = tiny_model()
    data = make_cstar(model, Corpus.from_conversations(CONVS), tmp_path)
    ckpt = tmp_path / "phase2" / "model.pt"
    res = train_phase2(
        model,
        data,
        data,
        cfg(tiny_params, heads="per_block", epochs=2),
        checkpointer=Checkpointer(ckpt, {}),
    )
    assert (
        res.stages["single"]["first_epoch"] == 1
        and res.stages["per_block"]["first_epoch"] == res.stages["single"]["last_epoch"] + 1
    )
    assert [r["epoch"] for r in res.history] == list(range(1, len(res.history) + 1))
    assert torch.equal(
        model.token_output.weight, res.heads[-1].weight
    )  # the model's head = last block's
    state = read_checkpoint(ckpt)
    assert len(state["block_heads"]) == 2 and state["phase2"]["heads"] == "per_block"
    assert torch.equal(
        state["state_dict"]["token_output.weight"], state["block_heads"][-1]["weight"]
    )
    # trainable: 2 heads + stack + embed_norm (token_output itself is replaced by the heads)
    head = 32 * V + V
    stack = sum(p.numel() for p in model.blocks.parameters()) + 32
    assert res.trainable_params == 2 * head + stack


def test_phase2_loss_goes_to_zero_on_repeated_pattern(tmp_path, tiny_params):
    convs = [[1, 2, 3, 4] * 6 for _ in range(4)]
    model = tiny_model()
    data = make_cstar(model, Corpus.from_conversations(convs), tmp_path)
    assert len(data) == 4 * 23
    start = evaluate(model, data, 16)[0]
    assert start.loss == pytest.approx(math.log(V))  # zero-initialised head: uniform
    res = train_phase2(
        model, data, data, cfg(tiny_params, epochs=12, patience=12, batch_size=16, lr=0.1)
    )
    assert (
        res.best["val_loss"] < 1e-3 and res.best["val_acc"] == 1.0 and res.best["val_ppl"] < 1.001
    )
    assert res.history[-1]["train_loss"] < 1e-3
    assert (
        res.trainable_params
        == (32 * V + V) + sum(p.numel() for p in model.blocks.parameters()) + 32
    )


def test_best_epoch_keeps_a_copy_and_counts_epochs_without_improvement():
    best, state = BestEpoch(), {"w": torch.zeros(2)}
    assert best.update(1, 2.0, lambda: state) and best.epoch == 1
    state["w"] += 1  # the kept state is a copy, not the live one
    assert not best.update(2, 2.0, lambda: state) and best.bad == 1  # a tie is no improvement
    assert best.update(3, 1.5, lambda: state) and (best.epoch, best.bad) == (3, 0)
    assert not best.update(4, float("nan"), lambda: state) and best.bad == 1
    assert best.epoch == 3 and torch.equal(best.state["w"], torch.ones(2))
    assert perplexity(1.0) == math.e and perplexity(710.0) == math.inf  # no OverflowError


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_params, monkeypatch):
    model = tiny_model()
    data = make_cstar(model, Corpus.from_conversations(CONVS), tmp_path)
    ckpt = tmp_path / "phase2" / "model.pt"
    steps_per_epoch = math.ceil(len(data) / 8)  # 19 positions, batch 8 -> 3
    calls = {"n": 0}
    real = CVFPModel.logits

    def poisoned(self, context, token_out):
        out = real(self, context, token_out)
        calls["n"] += 1 if torch.is_grad_enabled() else 0
        return out * float("nan") if calls["n"] > steps_per_epoch + 1 else out  # epoch 2, step 2

    monkeypatch.setattr(CVFPModel, "logits", poisoned)
    with pytest.raises(NonFiniteLossError) as err:
        train_phase2(
            model, data, data, cfg(tiny_params, epochs=5), checkpointer=Checkpointer(ckpt, {})
        )
    assert "epoch 2, step 2/3" in str(err.value) and "epoch 1" in str(err.value)
    state = read_checkpoint(ckpt)
    assert state["phase2"]["epoch"] == 1
    assert all(
        torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
    )


def test_per_conversation_sums_pieces_and_follows_the_segments():
    from cvfp.phase2.evaluation import per_conversation

    rows = [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]]  # rows 1 and 3 are pieces of "b"
    ids = ["a", "b", "c", "b"]
    offsets = np.array([0, 3, 5, 6, 10])
    for reset, targets in (("conversation", [2, 1 + 3, 0]), ("stream", [3, 2 + 3, 1])):
        data = PositionData.from_corpus(
            Corpus.from_conversations(rows, reset), np.zeros((10, 16), np.float32)
        )
        nats = np.arange(len(data), dtype=np.float64) + 1.0
        out = per_conversation(data.positions, offsets, ids, {"m": nats})
        assert out["conversation_id"] == ["a", "b", "c"] and out["targets"] == targets
        assert sum(out["m"]) == pytest.approx(nats.sum())
    # stream: positions 0..8, targets cross rows; position 2 (token 3 -> 4) belongs to "a"
    assert out["m"] == [1 + 2 + 3, 4 + 5 + 7 + 8 + 9, 6]
    with pytest.raises(ValueError, match="m: 3 nats for 9 positions"):
        per_conversation(data.positions, offsets, ids, {"m": nats[:3]})
