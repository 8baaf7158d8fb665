"""torchrun data parallelism: `torchrun --nproc_per_node=2 -m tasks.phase1` / `tasks.phase2`
(gloo on CPU) give the single-process results with the same global batch, and only rank 0
writes. Runs in a copy of the tiny DVC project's data."""

import itertools
import json
import shutil

import pytest
import torch
from test_pipeline import BIN, run

pytestmark = pytest.mark.pipeline
PHASE1 = [
    "-S",
    "phase1.objective=cvfp",
    "-S",
    "phase1.max_iterations=3",
    "-S",
    "phase1.min_converged_ratio=1.0",
]


@pytest.fixture(scope="module")
def project(dvc_project, tmp_path_factory):
    src, _ = dvc_project
    dst = tmp_path_factory.mktemp("ddp") / "proj"
    top = {".dvc", ".git", "cache", "metrics"}  # top-level only: cvfp/metrics/ is code
    shutil.copytree(src, dst, ignore=lambda d, names: top & set(names) if d == str(src) else [])
    return dst


def stage(proj, name, *args, nproc=1):
    cmd = (
        [str(BIN / "python"), "-m", f"tasks.{name}", *args]
        if nproc == 1
        else [
            str(BIN / "torchrun"),
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            f"tasks.{name}",
            *args,
        ]
    )
    out = run(cmd, proj)
    return json.loads((proj / "metrics" / f"{name}.json").read_text()), out


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


def test_phase1_two_ranks_equal_one_process(project):
    single, _ = stage(project, "phase1", *PHASE1)
    w1 = weights(project / "cache/phase1/model.pt")
    (project / "metrics/phase1.json").unlink()
    # Two ranks, and chunks of 2000 tokens inside each rank's share: still the full-batch step.
    ddp, log = stage(project, "phase1", *PHASE1, "-S", "phase1.chunk_tokens=2000", nproc=2)
    assert single["train"]["total"] > 2 * 2000 and single["train"]["iterations"] == 3
    assert_close_tree(single, ddp, rel=1e-4)
    w2 = weights(project / "cache/phase1/model.pt")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6, msg=k)
    assert (
        "cvfp[0] INFO iter 3" in log and "cvfp[1] INFO" not in log
    )  # rank 1 quiet, rank 0 reports
    assert list((project / "cache/phase1-work").iterdir()) == []  # scratch contexts removed


def test_phase2_two_ranks_equal_one_process(project):
    if not (project / "cache/phase1/model.pt").exists():
        stage(project, "phase1", *PHASE1)
    run([str(BIN / "python"), "-m", "tasks.materialize"], project)
    single, _ = stage(project, "phase2")
    w1 = weights(project / "cache/phase2/model.pt")
    (project / "metrics/phase2.json").unlink()
    ddp, _ = stage(project, "phase2", nproc=2)
    assert single["cvfp"]["epochs_run"] == 2
    assert_close_tree(single, ddp, rel=1e-4)
    w2 = weights(project / "cache/phase2/model.pt")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)


def test_torchrun_refuses_what_cannot_be_split(project):
    if not (project / "cache/phase1/model.pt").exists():
        stage(project, "phase1", *PHASE1)
    cmd = [
        str(BIN / "torchrun"),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "tasks.phase1",
        "-S",
        "phase1.objective=reconstruction",
    ]
    import subprocess

    from test_pipeline import env

    p = subprocess.run(cmd, cwd=project, env=env(), capture_output=True, text=True)
    assert p.returncode != 0 and "phase1.objective='reconstruction' runs in one process" in p.stderr


def test_world_shares_cover_every_item_once():
    from cvfp.distributed import World

    for n in (0, 1, 5, 10, 11):
        for size in (1, 2, 3, 4):
            parts = [World(r, size).share(n) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1
