"""The Phase 2 baselines and sanity checks (cvfp/phase2/baselines.py): the bigram hand-computed
with k chosen on val, the GPT-2's size and windows, the baseline and ablations running."""

import math

import numpy as np
import pytest

from cvfp.core.corpus import Corpus
from cvfp.phase2.baselines import (
    bigram_baseline,
    build_transformer,
    choose_n_embd,
    context_ablations,
    gpt2_param_count,
    transformer_baseline,
    windows,
)
from cvfp.phase2.trainer import train_phase2
from helpers.phase2 import (
    CONVS,
    V,
    cfg,
    make_cstar,
    tiny_model,
)

# ---------------------------------------------------------------- baselines and ablations


def test_bigram_perplexity_hand_computed_and_k_chosen_on_val():
    train = Corpus.from_conversations([[0, 1, 0, 1], [1, 2]])
    val = Corpus.from_conversations([[0, 1, 2]])
    test = Corpus.from_conversations([[1, 0], [2, 2]])
    # counts: (0,1)=2 (1,0)=1 (1,2)=1; c(0)=2 c(1)=2 c(2)=0; V=3
    # k=1: val P(1|0) = 3/5, P(2|1) = 2/5 -> ppl = (0.6 * 0.4) ** -0.5
    m, test_nats, _ = bigram_baseline(train, val, test, vocab_size=3, k_grid=[1.0])
    assert m["val_ppl"] == pytest.approx(0.24**-0.5, rel=1e-12)
    assert m["val_acc"] == 0.5  # row 1 ties 0 and 2 -> predicts 0
    assert m["trainable_params"] == 9
    # test, k=1: P(0|1) = 2/5, P(2|2) = 1/3 (an unseen row: uniform)
    assert test_nats.tolist() == pytest.approx([-math.log(2 / 5), -math.log(1 / 3)], rel=1e-12)
    assert m["test_loss"] == pytest.approx(test_nats.mean()) and m["test_acc"] == 0.5
    # k on val: a val with an unseen pair (0,2) penalises small k; the grid's best is 1.0
    val2 = Corpus.from_conversations([[0, 1, 2], [0, 2]])
    grid = [0.01, 0.3, 1.0, 3.0]
    m, test_nats, _ = bigram_baseline(train, val2, test, 3, grid)
    by_k = [
        -(
            math.log((2 + k) / (2 + 3 * k))
            + math.log((1 + k) / (2 + 3 * k))
            + math.log(k / (2 + 3 * k))
        )
        / 3
        for k in grid
    ]
    assert m["val_loss_by_k"] == pytest.approx(by_k, rel=1e-12) and m["k_grid"] == grid
    assert m["k"] == 1.0 == grid[int(np.argmin(by_k))] and m["val_loss"] == pytest.approx(by_k[2])
    # the grid without 1.0: 3.0 wins, and test is scored with it
    m, test_nats, _ = bigram_baseline(train, val2, test, 3, [0.01, 0.3, 3.0])
    assert m["k"] == 3.0 and test_nats[0] == pytest.approx(-math.log(4 / 11), rel=1e-12)
    # stream mode adds the cross-conversation pair (1,1)
    stream, _, _ = bigram_baseline(
        Corpus.from_conversations([[0, 1, 0, 1], [1, 2]], "stream"), val, test, 3, [1.0]
    )
    assert stream["val_ppl"] == pytest.approx((3 / 5 * 2 / 6) ** -0.5, rel=1e-12)


def test_transformer_param_count_within_tolerance():
    target = 358_000  # CVFP default config (64-d, V 2000)
    d = choose_n_embd(target, 2000, 2, 2, 256, 0.1)
    model = build_transformer(2000, d, 2, 2, 256)
    actual = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert actual == gpt2_param_count(d, 2000, 2, 256)
    assert d % 2 == 0 and abs(actual - target) / target <= 0.1
    with pytest.raises(ValueError, match="no GPT-2 width fits.*baselines"):
        choose_n_embd(1000, 2000, 2, 2, 256, 0.1)  # even n_embd=2 is too big


def test_transformer_windows_cover_every_target_once():
    corpus = Corpus.from_conversations(CONVS)
    wins = windows(corpus, 4)
    assert sum(len(w) - 1 for w in wins) == 24 - 5
    assert max(len(w) for w in wins) == 5 and [w.tolist() for w in wins[:2]] == [
        [1, 2, 3, 4, 5],
        [5, 6, 7],
    ]


def test_transformer_baseline_and_ablations_run(tmp_path, tiny_params):
    model = tiny_model()
    corpus = Corpus.from_conversations(CONVS)
    data = make_cstar(model, corpus, tmp_path)
    res = train_phase2(model, data, data, cfg(tiny_params, epochs=2))
    bp = tiny_params.baselines.model_copy(update={"transformer_n_positions": 8})
    m, test_nats, _ = transformer_baseline(
        corpus, corpus, corpus, V, bp, cfg(tiny_params), res.trainable_params, 2, seed=0
    )
    assert abs(m["trainable_params"] - res.trainable_params) / res.trainable_params <= 0.1
    assert m["epochs"] == 2 and m["train_targets"] == len(data) and math.isfinite(m["val_ppl"])
    # test = val here, scored with the best epoch's weights: the same loss, per target
    assert test_nats.shape == (len(data),) and m["test_loss"] == pytest.approx(m["val_loss"])
    assert m["test_acc"] == pytest.approx(m["val_acc"])
    abl = context_ablations(model, data, data, 8, seed=0)
    assert set(abl) == {"zero_context", "shuffled_context"}
    assert abl["zero_context"]["val_loss"] != pytest.approx(res.best["val_loss"])
    for a in abl.values():  # test = val: the per-position pass agrees with evaluate()
        assert a["test_loss"] == pytest.approx(a["val_loss"], rel=1e-5)


def _gpt2_steps(model, batches, real_rows_only: bool):
    """Train `model` one Adam step per batch (as transformer_baseline does); returns the
    losses, then the per-target nats and top-1 hits of the trained model on the batches."""
    import torch
    import torch.nn.functional as F

    from cvfp.core.training import optimizer_step
    from cvfp.phase2.padded import padded_mean, real_logits
    from cvfp.runtime.utils import adam

    params = list(model.parameters())
    optimizer = adam(params, lr=0.002, fused=True)
    losses, nats, hits = [], [], []
    for inputs, mask, targets in batches:
        if real_rows_only:
            logits, real = real_logits(model, inputs, mask, targets)
            loss = padded_mean(F.cross_entropy(logits, real, reduction="none"), targets)
        else:  # the padded batch, as GPT2LMHeadModel + F.cross_entropy compute it
            logits = model(input_ids=inputs, attention_mask=mask).logits
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        optimizer_step(optimizer, loss, params, 1.0)
        losses.append(loss.detach())
    with torch.no_grad():
        for inputs, mask, targets in batches:
            if real_rows_only:
                logits, real = real_logits(model, inputs, mask, targets)
            else:
                full = model(input_ids=inputs, attention_mask=mask).logits
                logits, real = full[targets >= 0], targets[targets >= 0]
            nats.append(F.cross_entropy(logits, real, reduction="none"))
            hits.append(logits.argmax(-1) == real)
    return torch.stack(losses), torch.cat(nats), torch.cat(hits)


def test_gpt2_on_real_rows_keeps_every_bit():
    """cvfp/phase2/padded.py: the output layer and softmax on the real rows of padded batches
    give the same losses, weights and per-target nats, bit for bit, as the full padded
    batch, at the default data's shapes (vocab 2000, n_embd 84, windows of unequal length
    padded to the longest; a weight gradient summed over the real rows alone fails this)."""
    import copy

    import torch

    from cvfp.phase2.baselines import collate

    rng = np.random.default_rng(0)
    batches = [
        collate([rng.integers(0, 2000, n) for n in rng.integers(2, 129, rng.integers(2, 9))])
        for _ in range(12)
    ]
    torch.manual_seed(0)
    model = build_transformer(2000, 84, 2, 2, 256)
    fast, slow = copy.deepcopy(model), model
    results = [_gpt2_steps(fast, batches, True), _gpt2_steps(slow, batches, False)]
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    for (name, a), b in zip(fast.named_parameters(), slow.parameters(), strict=True):
        assert torch.equal(a, b), name
