"""Download stage: the packaged chatterbot corpus, the hub layout (offline), local files;
and how a comparison resolves an untracked local data path."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from cvfp.data import chat_schema, hub_datasets, local_files, packaged_corpora
from cvfp.data import tokenization as tk
from helpers.data import params, rows, run_stages, write_records

pytestmark = pytest.mark.usefixtures("isolated_hf_cache")


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
    import cvfp.runtime.utils

    monkeypatch.setattr(cvfp.runtime.utils, "HUB_HOST", ("127.0.0.1", 9))  # closed port: refused
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
