"""torchrun data parallelism: `torchrun --nproc_per_node=2 -m tasks.phase1` / `tasks.phase2`
(gloo on CPU) give the single-process results with the same global batch, and only rank 0
writes. The single-process reference is the session's tiny `dvc repro`; the ranks run in a
copy of it."""

import itertools
import json

import pytest
import torch

from helpers import BIN
from helpers.project import run

pytestmark = pytest.mark.pipeline


def torchrun(proj, name, *args):
    """`torchrun --standalone --nproc_per_node=2 -m tasks.<name> args` in `proj`: its metrics
    and output."""
    out = run(
        [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            f"tasks.{name}",
            *args,
        ],
        proj,
    )
    return json.loads((proj / "metrics" / f"{name}.json").read_text()), out


def reference(dvc_project, name):
    """The single-process result: the session's `dvc repro` (one process per stage, the
    same params: test_pipeline.TINY runs all 3 Phase 1 iterations): metrics and weights."""
    src = dvc_project[0]
    return (
        json.loads((src / "metrics" / f"{name}.json").read_text()),
        weights(src / "cache" / name / "model.pt"),
    )


def assert_close_tree(a, b, rel, path=""):
    """Same keys and strings; numbers equal within `rel` (wall-clock seconds skipped)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            if "seconds" not in k:
                assert_close_tree(a[k], b[k], rel, f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close_tree(x, y, rel, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(a, bool):
        assert b == pytest.approx(a, rel=rel, abs=1e-6), path
    else:
        assert a == b, path


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_phase1_two_ranks_equal_one_process(dvc_project, dvc_copy):
    single, w1 = reference(dvc_project, "phase1")
    (dvc_copy / "metrics/phase1.json").unlink()
    # Two ranks, and chunks of 2000 tokens inside each rank's share: still the full-batch step.
    # --replace: a -S value that differs from params.yaml otherwise writes to scratch/
    ddp, log = torchrun(dvc_copy, "phase1", "-S", "phase1.chunk_tokens=2000", "--replace")
    assert single["train"]["total"] > 2 * 2000 and single["train"]["iterations"] == 3
    assert_close_tree(single, ddp, rel=1e-4)
    w2 = weights(dvc_copy / "cache/phase1/model.pt")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6, msg=k)
    assert (
        "cvfp[0] INFO phase1 train iter 3" in log and "cvfp[1] INFO" not in log
    )  # rank 1 quiet, rank 0 reports
    assert list((dvc_copy / "cache/phase1-work").iterdir()) == []  # scratch contexts removed


def test_phase2_two_ranks_equal_one_process(dvc_project, dvc_copy):
    single, w1 = reference(dvc_project, "phase2")
    (dvc_copy / "metrics/phase2.json").unlink()
    ddp, _ = torchrun(dvc_copy, "phase2")  # on the session's Phase 1 model and C*
    assert single["cvfp"]["epochs_run"] == 2
    assert_close_tree(single, ddp, rel=1e-4)
    w2 = weights(dvc_copy / "cache/phase2/model.pt")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)


def test_two_ranks_refuse_what_cannot_be_split(tiny_params, monkeypatch):
    """What a rank of `torchrun --nproc_per_node=2 -m tasks.phase1` sees (the tests above
    show that torchrun gives it a world of 2), before it reads anything."""
    from cvfp.runtime.distributed import World
    from tasks import phase1 as p1_task

    monkeypatch.setattr(p1_task, "current_world", lambda: World(0, 2))
    params = tiny_params.model_copy(deep=True)
    params.phase1.objective = "reconstruction"
    with pytest.raises(ValueError, match="phase1.objective='reconstruction' runs in one process"):
        p1_task.run(params)


def test_world_shares_cover_every_item_once():
    from cvfp.runtime.distributed import World

    for n in (0, 1, 5, 10, 11):
        for size in (1, 2, 3, 4):
            parts = [World(r, size).share(n) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1
