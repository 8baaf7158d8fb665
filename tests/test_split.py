"""Split stage: the partition rules (holdout / tail), unseen ids, and the Great Expectations
check of the parts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cvfp.data import splitting
from helpers.data import run_stages

pytestmark = pytest.mark.usefixtures("isolated_hf_cache")


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

    from cvfp.data.tokenization import OUT_FEATURES
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
