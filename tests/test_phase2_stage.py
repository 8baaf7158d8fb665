"""Generation (cvfp/analysis/generate.py), and the materialize, phase2 and generate stages end to end
on a tiny project: outputs, test never feeding selection, the no-context control never
reading C*."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from cvfp.analysis.generate import generate, load_model
from cvfp.core.checkpoint import CheckpointError, save_checkpoint
from helpers.phase2 import V, stage_params, tiny_model, tiny_project

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
