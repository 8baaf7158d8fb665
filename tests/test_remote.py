"""A shared DVC remote: push the tiny project's outputs (the session's `dvc repro`) to a
local-directory remote, lose the cache and the first stages' outputs, pull them back, and
`dvc repro` has nothing left to do."""

import re
import shutil

import pytest

from helpers import BIN
from helpers.project import repro, run

pytestmark = pytest.mark.pipeline
DVC = str(BIN / "dvc")
OUTS = ("data/raw", "data/tokenizer", "data/tokenized", "data/split")


def snapshot(proj) -> dict[str, bytes]:
    return {
        str(p.relative_to(proj)): p.read_bytes()
        for out in OUTS
        for p in sorted((proj / out).rglob("*"))
        if p.is_file()
    }


def test_push_then_pull_into_an_empty_checkout_restores_everything(dvc_copy, tmp_path):
    proj = dvc_copy
    before = snapshot(proj)
    assert any(k.startswith("data/split/train/") for k in before)

    remote = tmp_path / "remote"
    run([DVC, "remote", "add", "-d", "storage", str(remote)], proj)
    pushed = run([DVC, "push"], proj)
    assert re.search(r"\d+ files? pushed", pushed), pushed
    assert any(p.is_file() for p in remote.rglob("*"))

    # Another machine: the repo (dvc.yaml, dvc.lock, params, code) but no cache, no data.
    shutil.rmtree(proj / ".dvc" / "cache")
    for out in OUTS:
        shutil.rmtree(proj / out)
    assert "deleted" in run([DVC, "status", "split"], proj)

    # The first stages only (plain `dvc pull` fetches everything).
    pulled = run([DVC, "pull", "--with-deps", "split"], proj)
    assert re.search(r"\d+ files? (fetched|added)", pulled), pulled
    assert snapshot(proj) == before
    assert repro(proj, "split") == []
    assert "up to date" in run([DVC, "status", "split"], proj)
