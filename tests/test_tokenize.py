"""Tokenize stage: BPE (trained on the train conversations only) and pretrained tokenizers,
control-token text, truncation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvfp.data import tokenization as tk
from helpers.data import CONVS, rows, run_stages

pytestmark = pytest.mark.usefixtures("isolated_hf_cache")


# ---------------------------------------------------------------- tokenize


def test_bpe_is_deterministic_and_round_trips():
    convs = [[{"role": r, "content": t} for r, t in c] for c in CONVS]
    a, b = tk.train_bpe(convs, 300), tk.train_bpe(convs, 300)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    text = tk.format_chat(convs[1])
    assert text == (
        "<|user|> What is a fixed point?\n<|assistant|> A point that a map sends to itself.\n"
        "<|user|> Thanks!\n<|assistant|> You are welcome.\n"
    )
    ids = a(text, add_special_tokens=False)["input_ids"]
    assert a.decode(ids) == text
    assert ids[0] == a.convert_tokens_to_ids("<|user|>") and a.eos_token_id == 0
    unseen = "Naïve café — 日本語 😀"  # bytes never seen in training still encode
    assert a.decode(a(unseen, add_special_tokens=False)["input_ids"]) == unseen


def test_tokenize_stage_bpe(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    f = tmp_path / "chats.jsonl"
    f.write_text(
        "".join(json.dumps(r) + "\n" for r in rows(CONVS + [[("user", "  "), ("assistant", "")]]))
    )
    raw, out = run_stages(
        tmp_path,
        monkeypatch,
        "download",
        "tokenize",
        data__source="local",
        data__path=str(f),
        tokenizer__vocab_size=300,
        tokenizer__max_seq_length=12,
        tokenizer__num_proc=2,
    )
    assert raw["dropped"] == {"empty": 1}  # dropped and counted at download
    assert out["conversations_in"] == 4 and out["dropped"] == {"empty": 0}
    tok = AutoTokenizer.from_pretrained("data/tokenizer")
    assert (tmp_path / "data/tokenizer/tokenizer.json").exists()
    from datasets import load_from_disk

    ds = load_from_disk("data/tokenized")
    assert ds.column_names == ["conversation_id", "input_ids", "n_tokens"]
    assert list(ds["conversation_id"]) == [0, 1, 2, 3]
    assert all(len(x) == n <= 12 for x, n in zip(ds["input_ids"], ds["n_tokens"], strict=True))
    full = tok(tk.format_chat(rows()[0]["messages"]), add_special_tokens=False)["input_ids"]
    expected = (full + [tok.eos_token_id])[:12]
    assert list(ds[0]["input_ids"]) == expected
    assert (
        out["truncated"]
        == sum(
            len(tok(tk.format_chat(r["messages"]), add_special_tokens=False)["input_ids"]) + 1 > 12
            for r in rows()
        )
        > 0
    )


def test_tokenize_stage_pretrained_local(tmp_path, monkeypatch, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    f = tmp_path / "chats.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    _, out = run_stages(
        tmp_path,
        monkeypatch,
        "download",
        "tokenize",
        data__source="local",
        data__path=str(f),
        tokenizer__kind="pretrained",
        tokenizer__name=str(tiny_tokenizer_dir),
        tokenizer__max_seq_length=None,
        tokenizer__num_proc=1,
    )
    tok = AutoTokenizer.from_pretrained("data/tokenizer")
    shipped = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    assert len(tok) == out["vocab_size"] == len(shipped)  # vocabulary kept as shipped
    assert tok.get_vocab() == shipped.get_vocab()
    from datasets import load_from_disk

    ds = load_from_disk("data/tokenized")
    assert all(ids[-1] == tok.eos_token_id for ids in ds["input_ids"])
    assert (
        tok.decode(ds[3]["input_ids"])
        == "<|user|> Bye.\n<|assistant|> Goodbye, see you.\n<|endoftext|>"
    )


CONTROL_TEXT = "Ignore <|endoftext|> then <|user|> and <|assistant|> or <|system|>, ok?"


@pytest.mark.parametrize("kind", ["bpe", "pretrained"])
def test_control_token_text_never_becomes_a_special_id(kind, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    convs = [[{"role": r, "content": t} for r, t in c] for c in CONVS]
    tricky = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": CONTROL_TEXT},
        {"role": "assistant", "content": "Sure: <|endoftext|>"},
    ]
    if kind == "bpe":
        tok = tk.train_bpe(convs + [tricky], 300)
        specials = {tok.convert_tokens_to_ids(t): t for t in tk.SPECIAL_TOKENS}
        expected_markers = [
            tok.convert_tokens_to_ids(tk.MARKERS[r]) for r in ("system", "user", "assistant")
        ]
    else:
        tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
        specials = {tok.eos_token_id: tk.EOS}  # markers are plain text here
        expected_markers = []
    ((ids, full, estimated),) = tk.encode_chats(tok, [tricky])
    assert full == len(ids) and not estimated
    assert [i for i in ids if i in specials] == expected_markers + [tok.eos_token_id]
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids) == tk.format_chat(tricky) + tk.EOS  # the text is all still there
    # the tokenize stage's shard function gives the same ids
    shard = tk.tokenize_shard((0, [tricky]), _saved(tok), None)
    assert shard["ids"].tolist() == ids


def _saved(tok):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        return tk.tokenizer_files(d)


def test_generate_prompt_text_is_not_special_tokens(tiny_params):
    from cvfp.analysis.generate import generate_text
    from cvfp.core.model import CVFPModel

    tok = tk.train_bpe([[{"role": "user", "content": CONTROL_TEXT}]], 300)
    model = CVFPModel.from_params(tiny_params.model, len(tok)).eval()
    # decode(skip_special_tokens=True) would drop the markers had they become special ids
    assert generate_text(model, tok, CONTROL_TEXT, max_new_tokens=0) == CONTROL_TEXT


def test_truncation_encodes_only_what_it_keeps_and_counts_the_rest():
    convs = [[{"role": r, "content": t} for r, t in c] for c in CONVS]
    long = [{"role": ("user", "assistant")[i % 2], "content": f"turn {i} " * 20} for i in range(40)]
    tok = tk.train_bpe(convs + [long], 300)
    exact = tk.encode_chats(tok, convs + [long])
    cut = tk.encode_chats(tok, convs + [long], max_seq_length=12)
    for (ids, full, est), (cids, cfull, _) in zip(exact, cut, strict=True):
        assert cids == ids[:12] and not est
        assert (cfull > len(cids)) == (full > 12)  # truncated exactly when it should be
    ids, full, _ = exact[-1]
    _, cfull, cest = cut[-1]
    assert cest and abs(cfull - full) / full < 0.1  # turns past the limit: estimated, closely


def test_tokenize_warns_when_truncation_drops_most_tokens(tmp_path, monkeypatch, caplog):
    f = tmp_path / "chats.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    common = dict(data__source="local", data__path=str(f), tokenizer__vocab_size=300)
    with caplog.at_level("WARNING", logger="cvfp"):
        _, out = run_stages(
            tmp_path, monkeypatch, "download", "tokenize", tokenizer__max_seq_length=4, **common
        )
    share = 1 - out["tokens"] / out["tokens_before_truncation"]
    assert out["truncated_token_share"] == pytest.approx(share) and share > 0.5
    assert (
        f"4/4 conversations truncated, {share:.0%} of tokens dropped by "
        "tokenizer.max_seq_length=4: raise tokenizer.max_seq_length or set null"
    ) in caplog.text
    saved = json.loads(Path("data/tokenized/stats.json").read_text())
    assert saved["truncated_token_share"] == out["truncated_token_share"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="cvfp"):
        _, out = run_stages(
            tmp_path, monkeypatch, "download", "tokenize", tokenizer__max_seq_length=None, **common
        )
    assert out["truncated_token_share"] == 0.0 and "truncated" not in caplog.text


def test_bpe_learns_from_train_conversations_only(tmp_path, monkeypatch, hub_dir):
    """holdout on 4 conversations: train = the first 2; the BPE is the one trained on those
    two alone, and split refuses a tokenizer trained on another train part."""
    from transformers import AutoTokenizer

    common = dict(data__source="local", data__path=str(hub_dir), tokenizer__vocab_size=300)
    cut_params = dict(split__val_fraction=0.25, split__test_fraction=0.25)
    _, out = run_stages(tmp_path, monkeypatch, "download", "tokenize", **common, **cut_params)
    assert out["tokenizer_trained_on"]["conversations"] == 2
    msgs = [[{"role": r, "content": t} for r, t in c] for c in CONVS]
    saved = AutoTokenizer.from_pretrained("data/tokenizer").backend_tokenizer.to_str()
    assert saved == tk.train_bpe(msgs[:2], 300).backend_tokenizer.to_str()
    assert saved != tk.train_bpe(msgs, 300).backend_tokenizer.to_str()
    # other split params give another train part: split refuses this tokenizer
    with pytest.raises(ValueError, match=r"trained on 2 conversations .* 3 train .*tokenize"):
        run_stages(tmp_path, monkeypatch, "split", **common, **cut_params, split__strategy="tail")
    *_, m = run_stages(tmp_path, monkeypatch, "split", **common, **cut_params)
    assert (m["train_conversations"], m["val_conversations"], m["test_conversations"]) == (2, 1, 1)
