"""The download collector writes data/raw as the records come (issue 26: bounded memory),
with the bytes the in-memory collector + `save_to_disk` wrote."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pytest
from datasets.table import InMemoryTable

from cvfp.data import collect_records, packaged_corpora
from cvfp.data.chat_schema import FEATURES, DataError, make_record


def records(n: int, seed: int = 0) -> list[dict]:
    """Conversations of varied length; some prompts shorter than Arrow's 64-byte padding."""
    out = []
    for i in range(n):
        turns = [f"q{i}" if i % 3 else f"question {i} " * (i % 7 + 1), f"answer {i + seed}"]
        turns += [f"more {i}"] * (i % 4)
        out.append(make_record(turns, f"test:{i}"))
    return out


def old_save(recs: list[dict], fingerprint: str, path: Path) -> None:
    """What download wrote before: one in-memory table of 2000-record chunks, save_to_disk."""
    tables = [
        pa.Table.from_pylist(recs[i : i + 2000], schema=FEATURES.arrow_schema)
        for i in range(0, len(recs), 2000)
    ]
    ds = datasets.Dataset(
        InMemoryTable(pa.concat_tables(tables)),
        info=datasets.DatasetInfo(features=FEATURES),
        fingerprint=fingerprint,
    )
    ds.save_to_disk(str(path))


def files(path: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(path.iterdir())}


@pytest.mark.parametrize("n", [1, 999, 2000, 4501])
def test_streamed_dataset_has_the_bytes_of_the_in_memory_one(tmp_path, n):
    recs = records(n)
    loaded = collect_records.collect_schema_records(recs, "text", None, tmp_path / "new")
    state = json.loads((tmp_path / "new" / "state.json").read_text())
    old_save(recs, state["_fingerprint"], tmp_path / "old")
    assert files(tmp_path / "new") == files(tmp_path / "old")
    assert loaded.dataset[:] == datasets.Dataset.from_list(recs, features=FEATURES)[:]
    assert len(loaded) == n


def test_default_data_bytes_unchanged(tmp_path):
    """The chatterbot corpus (the default data/raw) as the old collector saved it."""
    recs = [r for r in packaged_corpora.chatterbot_records() if r["messages"][0]["content"]]
    loaded = packaged_corpora.load_chatterbot(None, tmp_path / "new")
    assert len(loaded) == len(recs) > 2000
    fingerprint = json.loads((tmp_path / "new" / "state.json").read_text())["_fingerprint"]
    old_save(recs, fingerprint, tmp_path / "old")
    assert files(tmp_path / "new") == files(tmp_path / "old")


def test_groups_are_written_before_the_end_and_shards_roll_over(tmp_path):
    coll = collect_records.Collector(None, tmp_path / "ds", shard_bytes=3000)
    recs = records(4100)
    for r in recs[:2000]:
        coll.add(r)
    # The first group is on disk, nothing held: no table of all records
    assert coll.group == [] and coll.piece == [] and coll.shards[0].stat().st_size > 2000 * 20
    for r in recs[2000:]:
        coll.add(r)
        assert coll.group_rows + len(coll.piece) < collect_records.GROUP_ROWS
    coll.finish()
    names = sorted(p.name for p in (tmp_path / "ds").glob("*.arrow"))
    assert names == [f"data-0000{i}-of-00003.arrow" for i in range(3)]  # 2000 + 2000 + 100
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    assert ds["prompt_id"] == [r["prompt_id"] for r in recs]


def test_no_records_gives_a_readable_empty_dataset(tmp_path):
    loaded = collect_records.collect_schema_records([], "text", None, tmp_path / "ds")
    assert len(loaded) == 0 and len(loaded.dataset) == 0
    assert loaded.dataset.features == FEATURES


def test_bad_record_after_a_written_group_leaves_no_output(tmp_path, monkeypatch):
    """The collector writes into atomic_path's temporary directory: an error in record 2501,
    after a group was written, leaves neither data/raw nor a temporary file."""
    from helpers.data import params
    from tasks import download

    lines = [json.dumps(r) for r in records(2600)]
    lines[2500] = json.dumps({"messages": [{"role": "user", "content": 5}]})
    (tmp_path / "big.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"big\.jsonl: line 2501"):
        download.run(params(data__source="local", data__path="big.jsonl"))
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []


def test_long_conversations_end_a_group_at_its_byte_bound(tmp_path):
    """Conversations of ~20 KB (the prompt repeats the first turn): groups of ~200 (4 MB), not
    2000; the same rows as save_to_disk of them all."""
    recs = [make_record([f"{i} " + "word " * 2000, "ok"], f"long:{i}") for i in range(900)]
    coll = collect_records.Collector(None, tmp_path / "ds")
    sizes = []
    for r in recs:
        coll.add(r)
        sizes.append(coll.group_rows + len(coll.piece))
    coll.finish()
    assert 150 < max(sizes) < 250 and max(coll.group_bytes, coll.piece_bytes) == 0
    assert (
        datasets.load_from_disk(str(tmp_path / "ds"))[:]
        == (datasets.Dataset.from_list(recs, features=FEATURES)[:])
    )
