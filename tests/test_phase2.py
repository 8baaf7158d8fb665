"""C* materialization, Phase 2 training, baselines and generation (tiny: 2 blocks, dim 16)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cvfp.baselines import (
    bigram_baseline,
    build_transformer,
    choose_n_embd,
    context_ablations,
    gpt2_param_count,
    transformer_baseline,
    windows,
)
from cvfp.checkpoint import Checkpointer, CheckpointError, read_checkpoint, save_checkpoint
from cvfp.corpus import Corpus, sequential_pass
from cvfp.cstar import CstarError, load_phase1_model, materialize_sharded, open_cstar
from cvfp.generate import generate, load_model
from cvfp.model import CVFPModel
from cvfp.phase2 import NonFiniteLossError, clone_heads, configure_trainable, train_phase2
from cvfp.phase2_data import PositionData
from cvfp.phase2_eval import evaluate, head_logits
from cvfp.training import BestEpoch, perplexity
from helpers.phase2 import CONVS, TINY_MODEL, V, cfg, stage_params, tiny_model, tiny_project


def materialize(model, corpora, out, chunk, reset):
    """C* of a tiny_model as the materialize stage writes it: from its checkpoint, in shards
    (of 2 conversations, so that several are combined)."""
    ckpt = out.parent / "phase1.pt"
    save_checkpoint(ckpt, model, {}, vocab_size=model.vocab_size)
    return materialize_sharded(ckpt, corpora, out, TINY_MODEL, model.vocab_size, chunk, reset, 2)


def make_cstar(model, corpus, tmp_path, chunk=5):
    materialize(model, {"train": corpus}, tmp_path / "cstar", chunk, "conversation")
    return PositionData.from_corpus(corpus, open_cstar(tmp_path / "cstar", "train", corpus, 16))


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
    from cvfp.phase2_eval import per_conversation

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


# ---------------------------------------------------------------- generation


def test_generation_deterministic_in_vocab_and_stops_at_eos(tmp_path, tiny_params):
    model = tiny_model().eval()
    model.token_output.weight.data.normal_(0, 1.0)
    a = generate(model, [1, 2, 3], 30, temperature=1.0, top_k=5, seed=7)
    assert a == generate(model, [1, 2, 3], 30, temperature=1.0, top_k=5, seed=7)
    assert len(a) == 30 and all(0 <= t < V for t in a)
    assert a != generate(model, [1, 2, 3], 30, temperature=1.0, top_k=5, seed=8)
    model.token_output.bias.data[5] = 100.0  # eos = 5 dominates
    assert generate(model, [1], 30, seed=0, eos_id=5) == [5]
    # round trip through a checkpoint built from its own stored params
    save_checkpoint(tmp_path / "m.pt", model, tiny_params.model_dump(), vocab_size=V)
    assert generate(load_model(tmp_path / "m.pt", V), [1], 3, seed=0, eos_id=5) == [5]
    with pytest.raises(CheckpointError, match=r"(?s)m.pt.*\[12, 16\].*\[20, 16\]"):
        load_model(tmp_path / "m.pt", 20)  # a tokenizer with another vocabulary


# ---------------------------------------------------------------- stages end to end


def test_stages_materialize_phase2_and_generate_cli(tmp_path, tiny_params, monkeypatch, capsys):
    from tasks import generate as gen_cli
    from tasks import materialize as mat_task
    from tasks import phase2 as p2_task

    tiny_project(tmp_path, tiny_params)
    monkeypatch.chdir(tmp_path)
    params = stage_params(tiny_params)
    meta = mat_task.run(params)
    assert meta["splits"]["train"]["shape"] == [72, 16]
    assert sorted(p.name for p in (tmp_path / "cache/cstar").iterdir()) == [
        "meta.json",
        "test.npy",
        "test_offsets.npy",
        "train.npy",
        "train_offsets.npy",
        "val.npy",
        "val_offsets.npy",
    ]
    assert meta["splits"]["test"]["shape"] == [12, 16]
    metrics = p2_task.run(params)
    saved = json.loads((tmp_path / "metrics/phase2.json").read_text())
    assert saved["cvfp"]["val_ppl"] == pytest.approx(metrics["cvfp"]["val_ppl"])
    assert saved["cvfp"]["test_ppl"] == pytest.approx(math.exp(saved["cvfp"]["test_loss"]))
    assert set(saved["baselines"]) == {"bigram", "transformer"}
    assert set(saved["ablations"]) == {"zero_context", "shuffled_context"}
    for m in (saved["cvfp"], saved["baselines"]["bigram"], saved["baselines"]["transformer"]):
        assert {"val_ppl", "val_acc", "trainable_params"} <= set(m) and "train_seconds" not in m
        assert {"test_loss", "test_ppl", "test_acc"} <= set(m)

    # One row per test conversation (the pieces of t1 summed); the sums give test_loss.
    per_conv = pd.read_csv(tmp_path / "metrics/phase2_test_conversations.csv")
    assert list(per_conv.columns) == [
        "conversation_id",
        "targets",
        "cvfp_nats",
        "bigram_nats",
        "transformer_nats",
    ]
    assert per_conv["conversation_id"].tolist() == ["t0", "t1", "t2"]
    assert per_conv["targets"].tolist() == [4, 2 + 2, 0]  # t2 is one token: no target
    assert per_conv["targets"].sum() == saved["cvfp"]["test_positions"] == 8
    for col, m in (
        ("cvfp_nats", saved["cvfp"]),
        ("bigram_nats", saved["baselines"]["bigram"]),
        ("transformer_nats", saved["baselines"]["transformer"]),
    ):
        assert per_conv[col].iloc[2] == 0.0 and (per_conv[col].iloc[:2] > 0).all()
        assert per_conv[col].sum() / per_conv["targets"].sum() == pytest.approx(
            m["test_loss"], rel=1e-9
        )
    csv = (tmp_path / "plots/phase2_epochs.csv").read_text().splitlines()
    assert csv[0] == "epoch,train_loss,val_loss,train_ppl,val_ppl,train_acc,val_acc"  # no seconds
    assert len(csv) == 1 + saved["cvfp"]["epochs_run"]
    argv = [
        "--prompt",
        "w1 w2 w3",
        "--max-new-tokens",
        "5",
        "--temperature",
        "1.0",
        "--top-k",
        "0",
        "--seed",
        "3",
        "--params",
        "missing.yaml",
    ]
    first, second = gen_cli.main(argv), gen_cli.main(argv)
    assert first == second and first.startswith("w1 w2 w3")
    assert all(w in {f"w{i}" for i in range(1, V)} for w in first.split())


def _without_test(obj):
    """A metrics dict without its test numbers (test_loss/_ppl/_acc, test_positions)."""
    if isinstance(obj, dict):
        return {k: _without_test(v) for k, v in obj.items() if not k.startswith("test_")}
    return obj


def test_test_split_never_feeds_selection(tmp_path, tiny_params, monkeypatch):
    """Val chooses, test reports: two runs that differ only in the test split choose the
    same epochs and the same bigram k, and every val number is the same; test numbers move."""
    from tasks import materialize as mat_task
    from tasks import phase2 as p2_task

    params = stage_params(tiny_params)
    params.phase2.epochs, params.phase2.patience = 3, 1  # so early stopping can choose
    runs = {}
    for name, test, ids in (
        ("a", None, None),
        ("b", [[5, 4, 3, 2, 1, 9], [7, 7, 8], [11, 10]], ["u0", "u1", "u2"]),
    ):
        root = tmp_path / name
        tiny_project(root, tiny_params, test=test, test_ids=ids)
        monkeypatch.chdir(root)
        mat_task.run(params)
        runs[name] = (p2_task.run(params), (root / "plots/phase2_epochs.csv").read_text())
    (a, epochs_a), (b, epochs_b) = runs["a"], runs["b"]
    assert _without_test(a) == _without_test(b) and epochs_a == epochs_b
    assert a["cvfp"]["best_epoch"] == b["cvfp"]["best_epoch"]
    assert (
        a["baselines"]["transformer"]["best_epoch"] == b["baselines"]["transformer"]["best_epoch"]
    )
    assert a["baselines"]["bigram"]["k"] == b["baselines"]["bigram"]["k"]
    assert (a["cvfp"]["test_positions"], b["cvfp"]["test_positions"]) == (8, 8)
    for part in (("cvfp",), ("baselines", "bigram"), ("baselines", "transformer")):
        ma, mb = a, b
        for key in part:
            ma, mb = ma[key], mb[key]
        assert ma["test_loss"] != pytest.approx(mb["test_loss"]), part


def test_no_context_control_never_reads_cstar(tmp_path, tiny_params, monkeypatch):
    """phase2.context: zero trains and evaluates with C* zeroed: C* files full of noise give
    the same bytes; the eval-time ablations then equal the model; the head starts at zero."""
    from tasks import materialize as mat_task
    from tasks import phase2 as p2_task

    tiny_project(tmp_path, tiny_params)
    monkeypatch.chdir(tmp_path)
    params = stage_params(tiny_params)
    params.phase2.context = "zero"
    params.baselines.transformer = False
    mat_task.run(params)
    zero = p2_task.run(params)
    first = (tmp_path / "metrics/phase2.json").read_bytes()
    for split in ("train", "val", "test"):  # overwrite C* with noise, same shapes
        path = tmp_path / f"cache/cstar/{split}.npy"
        cstar = np.load(path)
        np.save(path, np.random.default_rng(0).normal(0, 5, cstar.shape).astype(np.float32))
    p2_task.run(params)
    assert (tmp_path / "metrics/phase2.json").read_bytes() == first
    cv, ab = zero["cvfp"], zero["ablations"]
    assert cv["context"] == "zero" and cv["head_init"] == "zero"
    for a in ab.values():
        assert a["val_loss"] == pytest.approx(cv["val_loss"], rel=1e-6)
        assert a["test_loss"] == pytest.approx(cv["test_loss"], rel=1e-9)
    per_conv = pd.read_csv(tmp_path / "metrics/phase2_test_conversations.csv")
    assert per_conv["transformer_nats"].isna().all()  # not trained: an empty column
    # with C* the same run gives other numbers
    params.phase2.context = "cstar"
    with_cstar = p2_task.run(params)
    assert with_cstar["cvfp"]["context"] == "cstar"
    assert with_cstar["cvfp"]["test_loss"] != pytest.approx(cv["test_loss"])
