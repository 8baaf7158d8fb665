"""Bad input (issue 14): params overrides, generate's options, a fresh clone, truncated
C* and checkpoints, bad local files at download, invalid UTF-8, and the tokenizer and its
ids replaced together: each refused with the file, line or key and the fix."""

import pytest

from helpers.outputs import leftovers, snapshot

# ---------------------------------------------------------------- item 9: smaller ones


def test_params_overrides_on_an_empty_file_or_through_a_value_name_the_key(tmp_path):
    from cvfp.params import ParamsError, load_params
    from helpers import ROOT

    empty = tmp_path / "params.yaml"
    empty.write_text("")
    with pytest.raises(ParamsError, match=r"(?s)invalid parameters.*seed: missing"):
        load_params(empty, {"phase1.lr": 0.1})
    with pytest.raises(ParamsError, match=r"override seed\.x=1: seed is 42, not a section"):
        load_params(ROOT / "params.yaml", {"seed.x": 1})


@pytest.mark.parametrize(
    "args, expected",
    [(["--max-new-tokens", "-1"], "--max-new-tokens -1"), (["--top-k", "-5"], "--top-k -5")],
)
def test_generate_rejects_out_of_range_options(args, expected, capsys):
    from helpers import ROOT
    from tasks import generate as gen_cli

    with pytest.raises(SystemExit) as err:
        gen_cli.main(["--prompt", "hi", "--params", str(ROOT / "params.yaml"), *args])
    assert err.value.code == 2 and expected in capsys.readouterr().err


def test_phase2_in_a_fresh_clone_says_run_the_earlier_stages(tmp_path, tiny_params, monkeypatch):
    from tasks import phase2 as p2_task

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        FileNotFoundError, match="data/tokenizer: tokenizer not found .run the earlier stages"
    ):
        p2_task.run(tiny_params)


def test_truncated_cstar_and_checkpoint_name_the_file(phase2_project):
    from cvfp.core.checkpoint import CheckpointError, read_checkpoint
    from cvfp.materialize.cstar import CstarError
    from tasks import phase2 as p2_task

    root, params = phase2_project
    for rel, err in (
        ("cache/cstar/train.npy", CstarError),
        ("cache/phase1/model.pt", CheckpointError),
    ):
        path = root / rel
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
        with pytest.raises(err, match=rel.replace(".", r"\.")):
            p2_task.run(params)
        path.write_bytes(data)
    read_checkpoint(root / "cache/phase1/model.pt")


# ---------------------------------------------------------------- item 5: bad input at download


def _jsonl(rows_) -> bytes:
    import json

    return b"".join(json.dumps(r).encode() + b"\n" for r in rows_)


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            lambda good: good.replace(b"Thanks!", b"Thanks\xff!"),
            r"bad\.jsonl:2: invalid UTF-8 \(byte 0xff",
        ),
        (
            lambda good: good + b'{"prompt": "x", \n',
            r"bad\.jsonl:5: JSON document ends early at line 5 \(file truncated\?\): 4 complete",
        ),
        (lambda good: good + b'{"prompt": x}\n{}\n', r"bad\.jsonl:5: not valid JSON"),
        (lambda good: b"", r"bad\.jsonl: empty file"),
        (lambda good: b"\n \n", r"bad\.jsonl: empty file"),
    ],
)
def test_download_refuses_bad_local_files_naming_file_and_line(
    content, expected, tmp_path, monkeypatch
):
    from cvfp.data.chat_schema import DataError
    from helpers.data import params, rows
    from tasks import download

    good = _jsonl(rows())
    assert b"Thanks!" in good.splitlines()[1]
    (tmp_path / "bad.jsonl").write_bytes(content(good))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=expected):
        download.run(params(data__source="local", data__path="bad.jsonl"))
    assert not (tmp_path / "data/raw").exists() and leftovers(tmp_path) == []


def test_download_refuses_a_directory_with_several_formats(tmp_path):
    import pandas as pd

    from cvfp.data import chat_schema, local_files
    from helpers.data import rows

    d = tmp_path / "mixed"
    d.mkdir()
    pd.DataFrame(rows()).to_parquet(d / "part-0.parquet")
    (d / "more.jsonl").write_bytes(_jsonl(rows()))
    with pytest.raises(
        chat_schema.DataError, match=r"2 formats \(json: more\.jsonl; parquet: part-0\.parquet\)"
    ):
        local_files.load_local(d, split="train")
    (d / "more.jsonl").unlink()
    assert len(local_files.load_local(d, split="train").dataset) == len(rows())
    with pytest.raises(chat_schema.DataError, match=r"Unknown split.*set data\.split"):
        local_files.load_local(d, split="train_sft")


def test_invalid_utf8_from_parquet_or_hub_is_refused_at_validate():
    import pyarrow as pa
    from datasets import Dataset

    from cvfp.data import chat_schema, hub_datasets
    from helpers.data import rows

    table = pa.Table.from_pylist(rows())
    # Arrow string column with an invalid UTF-8 byte, as a corrupt parquet/hub shard can carry
    bad = pa.array([b"caf\xe9"], type=pa.binary()).cast(pa.string(), safe=False)
    table = table.set_column(
        0, "prompt", pa.concat_arrays([bad, table.column("prompt").combine_chunks()[1:]])
    )
    with pytest.raises(chat_schema.DataError, match=r"hub:x: invalid data .*UTF8"):
        hub_datasets.validate(Dataset(table), "hub:x")


# ---------------------------------------------------------------- item 4: tokenizer and ids together


def test_tokenize_outputs_are_replaced_together_and_split_checks_the_pair(tmp_path, monkeypatch):
    import errno
    import shutil as sh

    import datasets

    from helpers.data import run_stages

    small = dict(data__num_samples=60, tokenizer__vocab_size=300, tokenizer__num_proc=1)
    run_stages(tmp_path, monkeypatch, "download", "tokenize", **small)
    outs = ["data/tokenizer", "data/tokenized"]
    before = snapshot(tmp_path, outs)
    real = datasets.Dataset.save_to_disk

    def disk_full(self, path, *a, **kw):
        if "tokenized" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(self, path, *a, **kw)

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_stages(tmp_path, monkeypatch, "tokenize", **{**small, "tokenizer__vocab_size": 280})
    monkeypatch.setattr(datasets.Dataset, "save_to_disk", real)
    assert snapshot(tmp_path, outs) == before and leftovers(tmp_path) == []

    # An old data/tokenized beside a new data/tokenizer (as a crash between the two renames
    # would leave): split refuses instead of running on mismatched ids.
    sh.copytree(tmp_path / "data/tokenized", tmp_path / "old_tokenized")
    run_stages(tmp_path, monkeypatch, "tokenize", **{**small, "tokenizer__vocab_size": 280})
    sh.rmtree(tmp_path / "data/tokenized")
    sh.move(tmp_path / "old_tokenized", tmp_path / "data/tokenized")
    with pytest.raises(ValueError, match="different tokenize runs.*dvc repro -f -s tokenize"):
        run_stages(tmp_path, monkeypatch, "split", **small)
    assert not (tmp_path / "data/split").exists()
    # Without the digest (older outputs) the id range still catches a smaller vocabulary.
    import numpy as np

    from tasks.split import check_ids_fit

    with pytest.raises(ValueError, match="token id 290 but data/tokenizer has 280 tokens"):
        check_ids_fit([np.array([1, 290])], 280, None)
