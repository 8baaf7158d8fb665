"""Speed and memory knobs do not change a byte (workers, shard size, how rows were built),
and temporaries, scratch and comparison outputs are git-ignored (issue 23 item 7)."""

import subprocess
from pathlib import Path

from helpers import ROOT

# ---------------------------------------------------------------- item 7: knobs and bytes


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_workers_and_shard_size_do_not_change_a_byte(mat_project):
    """orchestration.workers (threads mapping the shards) and shard_conversations are
    speed/memory knobs: C* is the same bytes for any of them."""
    import shutil

    from cvfp.runtime.sharding import threaded
    from tasks import materialize as mat_task

    root, params = mat_project
    seen, shards = [], []
    for workers, shard in ((1, 10**6), (3, 2), (2, 5)):
        p = params.model_copy(
            update={
                "orchestration": params.orchestration.model_copy(
                    update={"workers": workers, "shard_conversations": shard}
                ),
                # chunks of a few conversations, so that shards can differ
                "materialize": params.materialize.model_copy(
                    update={"chunk_tokens": 16, "batch_tokens": 16}
                ),
            }
        )
        mapper = threaded(workers)

        def counting(fn, items, consume, common, mapper=mapper):
            shards.append(len(items))
            return mapper(fn, items, consume, common)

        mat_task.run(p, map_shards=counting)
        seen.append(_tree(root / "cache/cstar"))
        shutil.rmtree(root / "cache/cstar")
    assert min(shards) > 3  # several shards (whole length batches), so the workers overlap
    assert seen[0] == seen[1] == seen[2] and "train.npy" in seen[0]


def test_a_stage_writes_the_same_dataset_bytes_however_the_rows_were_built(tmp_path, monkeypatch):
    """The same rows, in memory or loaded from a file (whose mtime `datasets` hashes into
    the fingerprint, as split's inputs): state.json differs unless the stage pins it."""
    import shutil
    import time

    from datasets import Dataset, load_from_disk

    from cvfp.params import load_params
    from cvfp.runtime.utils import atomic_path
    from tasks.outputs import StageOutputs
    from tasks.stage import run_stage

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    rows = {"conversation_id": [1, 2], "input_ids": [[1, 2, 3], [4, 5]], "n_tokens": [3, 2]}
    Dataset.from_dict(rows).save_to_disk("src")
    time.sleep(0.01)
    (tmp_path / "src" / "touch").write_text("")
    builders = {
        "memory": lambda: Dataset.from_dict(rows),
        "file": lambda: load_from_disk("src").map(lambda r: r),
    }

    def save(build, pin: bool):
        def run(params):
            check = StageOutputs("split", params).before_replace if params else None
            with atomic_path("data/split", check) as tmp:
                tmp.mkdir()
                build().save_to_disk(str(tmp / "train"))

        if pin:
            run_stage("split", run, load_params(ROOT / "params.yaml"))
        else:
            run(None)
        return _tree(tmp_path / "data/split/train")

    raw = [save(b, pin=False) for b in builders.values()]
    assert raw[0]["state.json"] != raw[1]["state.json"]  # what used to differ
    pinned = [save(b, pin=True) for b in builders.values()]
    assert pinned[0] == pinned[1]


def test_temporaries_scratch_and_compare_outputs_are_git_ignored():
    paths = [
        "cache/.cstar.1234.ab12cd/cstar/train.npy",
        "reports/.report.html.1234.x/report.html",
        "data/.tokenize-1234-abc/tokenizer/tokenizer.json",
        "reports/compare.html",
        "scratch/phase1/cache/phase1/model.pt",
    ]
    p = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True
    )
    assert p.stdout.split() == paths
    kept = ["metrics/phase1.json", "metrics/compare.json"]  # tracked (compare: a report dep)
    p = subprocess.run(
        ["git", "check-ignore", "--no-index", *kept], cwd=ROOT, capture_output=True, text=True
    )
    assert p.stdout.split() == []
