"""Bad inputs fail with an error naming the file and the fix, before any work: broken
files, a full disk, all-empty data (issue 23 item 6)."""

from pathlib import Path

import pytest
import torch

# ---------------------------------------------------------------- item 6: errors name file and fix


def _cut(path: Path) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return data


def test_broken_inputs_name_the_file_and_the_fix(mat_project):
    """Used to be `ValueError: negative seek value`, `OSError: Expected to be able to read
    82944 bytes`, a bare JSONDecodeError."""
    from cvfp.core.checkpoint import CheckpointError
    from tasks import materialize as mat_task
    from tasks.tokens import BrokenInputError, load_conversations, load_tokenizer

    root, params = mat_project
    good = _cut(root / "cache/phase1/model.pt")
    with pytest.raises(
        CheckpointError, match=r"cannot read checkpoint cache/phase1/model\.pt .*dvc repro -f -s"
    ):
        mat_task.run(params)
    (root / "cache/phase1/model.pt").write_bytes(good)
    arrow = next((root / "data/split/train").glob("*.arrow"))
    good = _cut(arrow)
    with pytest.raises(
        BrokenInputError,
        match=r"data/split/train: truncated or corrupt .*dvc checkout --force split",
    ):
        load_conversations("data/split/train")
    arrow.write_bytes(good)
    state = root / "data/split/val/state.json"
    state.write_text(state.read_text()[:20])
    with pytest.raises(
        BrokenInputError, match=r"data/split/val: truncated or corrupt \(JSONDecodeError"
    ):
        load_conversations("data/split/val")
    tok = root / "data/tokenizer/tokenizer.json"
    tok.write_text(tok.read_text()[:100])
    with pytest.raises(
        BrokenInputError, match=r"data/tokenizer \(tokenizer\.json.*dvc repro -f -s tokenize"
    ):
        load_tokenizer("data/tokenizer")


def test_phase2_checks_free_space_before_training(tmp_path):
    from cvfp.core.checkpoint import require_space
    from cvfp.core.contexts import DiskSpaceError

    huge = {"w": torch.zeros(1).expand(2**50)}  # 4 PiB of float32 that takes no memory
    with pytest.raises(
        DiskSpaceError,
        match=r"not enough disk space for .*model\.pt: needs \d+\.\d MiB \(2 checkpoint",
    ):
        require_space(tmp_path / "cache/phase2/model.pt", huge, copies=2)
    require_space(tmp_path / "model.pt", {"w": torch.zeros(10)}, copies=2)


def test_phase2_stage_on_a_full_disk_fails_before_an_epoch(mat_project, monkeypatch):
    import shutil

    from cvfp.core.contexts import DiskSpaceError
    from cvfp.phase2.trainer import Trainer
    from tasks import materialize as mat_task
    from tasks import phase2 as p2_task

    root, params = mat_project
    mat_task.run(params)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=4096))  # nearly full
    monkeypatch.setattr(Trainer, "train_epoch", lambda *a: pytest.fail("an epoch ran"))
    with pytest.raises(
        DiskSpaceError, match=r"cache/\.phase2\..*/model\.pt: needs .* 0\.0 MiB free"
    ):
        p2_task.run(params)
    assert not (root / "cache/phase2").exists()


def test_all_empty_data_is_refused_naming_it(tmp_path, monkeypatch):
    """Used to pass tokenize (rc 0, an unloadable dataset) and fail in split (IndexError)."""
    import json

    from datasets import Dataset

    from helpers.data import params, rows, run_stages
    from tasks.tokenize import train_rows

    empty = rows([[("user", " "), ("assistant", "")]] * 3)
    f = tmp_path / "chats.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in empty))
    with pytest.raises(ValueError, match=r"chats\.jsonl has no conversations \(3 empty"):
        run_stages(tmp_path, monkeypatch, "download", data__source="local", data__path=str(f))
    # data/raw from elsewhere (an older download, a hub dataset): tokenize says the same
    with pytest.raises(ValueError, match=r"no non-empty conversations in data\.path.*all 3"):
        train_rows(Dataset.from_list(empty), params().split)
    assert not (tmp_path / "data/tokenized").exists()
