"""C* materialization, Phase 2 training, baselines and generation (tiny: 2 blocks, dim 16)."""

import json
import math

import numpy as np
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
from cvfp.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from cvfp.corpus import Corpus, sequential_pass
from cvfp.cstar import CstarError, load_phase1_model, materialize_sharded, open_cstar
from cvfp.generate import generate, load_model
from cvfp.model import CVFPModel
from cvfp.params import ModelParams
from cvfp.phase2 import (
    NonFiniteLossError,
    PositionData,
    clone_heads,
    configure_trainable,
    evaluate,
    head_logits,
    train_phase2,
)

V = 12
CONVS = [[1, 2, 3, 4, 5, 6, 7], [3, 3, 1], [5, 6, 7, 8, 9, 10, 11, 2, 3, 4, 1], [2, 9], [4]]


TINY_MODEL = ModelParams(
    context_dim=16,
    embed_dim=16,
    hidden_dim=32,
    layer_structure=[1, 1],
    layernorm_mix=1.0,
    init_std=0.1,
    bias_init_std=0.01,
    embedding="random_frozen",
    embed_init_std=0.02,
    pretrained_name="gpt2",
)


def tiny_model(seed=0, vocab=V):
    torch.manual_seed(seed)
    return CVFPModel.from_params(TINY_MODEL, vocab)


def materialize(model, corpora, out, chunk, reset):
    """C* of a tiny_model as the materialize stage writes it: from its checkpoint, in shards
    (of 2 conversations, so that several are combined)."""
    ckpt = out.parent / "phase1.pt"
    save_checkpoint(ckpt, model, {}, vocab_size=model.vocab_size)
    return materialize_sharded(ckpt, corpora, out, TINY_MODEL, model.vocab_size, chunk, reset, 2)


def cfg(tiny_params, **kw):
    base = {"epochs": 3, "batch_size": 8, "lr": 0.01, "patience": 3}
    return tiny_params.phase2.model_copy(update={**base, **kw})


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
    assert str(path) in msg and "(32, 32)" in msg and "(40, 40)" in msg


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
        model, data, data, cfg(tiny_params, heads="per_block", epochs=2), checkpoint=ckpt
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
        train_phase2(model, data, data, cfg(tiny_params, epochs=5), checkpoint=ckpt)
    assert "epoch 2, step 2/3" in str(err.value) and "epoch 1" in str(err.value)
    state = read_checkpoint(ckpt)
    assert state["phase2"]["epoch"] == 1
    assert all(
        torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
    )


# ---------------------------------------------------------------- baselines and ablations


def test_bigram_perplexity_hand_computed():
    train = Corpus.from_conversations([[0, 1, 0, 1], [1, 2]])
    val = Corpus.from_conversations([[0, 1, 2]])
    # counts: (0,1)=2 (1,0)=1 (1,2)=1; c(0)=2 c(1)=2; V=3, k=1
    # P(1|0) = 3/5, P(2|1) = 2/5 -> ppl = (0.6 * 0.4) ** -0.5
    m = bigram_baseline(train, val, vocab_size=3, k=1.0)
    assert m["val_ppl"] == pytest.approx(0.24**-0.5, rel=1e-12)
    assert m["val_acc"] == 0.5  # row 1 ties 0 and 2 -> predicts 0
    assert m["trainable_params"] == 9
    # stream mode adds the cross-conversation pair (1,1)
    stream = bigram_baseline(
        Corpus.from_conversations([[0, 1, 0, 1], [1, 2]], "stream"), val, 3, 1.0
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
    m = transformer_baseline(
        corpus, corpus, V, bp, cfg(tiny_params), res.trainable_params, 2, seed=0
    )
    assert abs(m["trainable_params"] - res.trainable_params) / res.trainable_params <= 0.1
    assert m["epochs"] == 2 and m["train_targets"] == len(data) and math.isfinite(m["val_ppl"])
    abl = context_ablations(model, data, 8, seed=0)
    assert set(abl) == {"zero_context", "shuffled_context"}
    assert abl["zero_context"]["val_loss"] != pytest.approx(res.best["val_loss"])


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
    with pytest.raises(CheckpointError, match=r"(?s)m.pt.*\(12, 16\).*\(20, 16\)"):
        load_model(tmp_path / "m.pt", 20)  # a tokenizer with another vocabulary


# ---------------------------------------------------------------- stages end to end


def _tiny_project(root, tiny_params):
    """data/split, data/tokenizer and a Phase 1 checkpoint as the earlier stages write them."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<eos>"] + [f"w{i}" for i in range(1, V)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<eos>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>").save_pretrained(
        root / "data/tokenizer"
    )
    for name, convs in (("train", CONVS * 3), ("val", CONVS[:3])):
        Dataset.from_dict(
            {
                "conversation_id": [str(i) for i in range(len(convs))],
                "input_ids": convs,
                "n_tokens": [len(c) for c in convs],
            }
        ).save_to_disk(str(root / f"data/split/{name}"))
    save_checkpoint(
        root / "cache/phase1/model.pt", tiny_model(), tiny_params.model_dump(), vocab_size=V
    )


def stage_params(tiny_params):
    """tiny_params for running the materialize and phase2 stages on a tiny project."""
    return tiny_params.model_copy(
        update={
            "materialize": tiny_params.materialize.model_copy(update={"chunk_tokens": 10}),
            "phase2": cfg(tiny_params, epochs=2),
            "baselines": tiny_params.baselines.model_copy(update={"transformer_n_positions": 8}),
        }
    )


def test_stages_materialize_phase2_and_generate_cli(tmp_path, tiny_params, monkeypatch, capsys):
    from tasks import generate as gen_cli
    from tasks import materialize as mat_task
    from tasks import phase2 as p2_task

    _tiny_project(tmp_path, tiny_params)
    monkeypatch.chdir(tmp_path)
    params = stage_params(tiny_params)
    meta = mat_task.run(params)
    assert meta["splits"]["train"]["shape"] == [72, 16]
    assert sorted(p.name for p in (tmp_path / "cache/cstar").iterdir()) == [
        "meta.json",
        "train.npy",
        "train_offsets.npy",
        "val.npy",
        "val_offsets.npy",
    ]
    metrics = p2_task.run(params)
    saved = json.loads((tmp_path / "metrics/phase2.json").read_text())
    assert saved["cvfp"]["val_ppl"] == pytest.approx(metrics["cvfp"]["val_ppl"])
    assert set(saved["baselines"]) == {"bigram", "transformer"}
    assert set(saved["ablations"]) == {"zero_context", "shuffled_context"}
    for m in (saved["cvfp"], saved["baselines"]["bigram"], saved["baselines"]["transformer"]):
        assert {"val_ppl", "val_acc", "trainable_params"} <= set(m) and "train_seconds" not in m
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
