"""Full disks and killed processes (issue 14): materialize on a full disk says how much it
needs and keeps the old C*, a killed stage's temporaries go on the next run, and killing
the flow stops its temporary Prefect server."""

import shutil

import pytest

from helpers.outputs import leftovers, snapshot
from helpers.phase2 import tiny_project

# ---------------------------------------------------------------- item 6: disk full, killed runs


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs root; skipped elsewhere)."""
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _stage(root, stage):
    import os
    import subprocess
    import sys

    from helpers import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", f"tasks.{stage}"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_disk_full_materialize_says_how_much_is_needed_and_keeps_the_old_cstar(
    small_disk, tiny_params
):
    import shutil as sh

    from datasets import Dataset

    from helpers import write_params
    from helpers.phase2 import CONVS

    root = small_disk
    tiny_project(root, tiny_params)
    convs = CONVS * 10  # C* train: 240 rows x 64 bytes = 4 pages
    sh.rmtree(root / "data/split/train")
    Dataset.from_dict(
        {
            "conversation_id": [str(i) for i in range(len(convs))],
            "input_ids": convs,
            "n_tokens": [len(c) for c in convs],
        }
    ).save_to_disk(str(root / "data/split/train"))
    tiny = tiny_params.model_dump(mode="json")
    write_params(root, lambda raw: raw.update({"model": tiny["model"], "phase1": tiny["phase1"]}))
    with pytest.MonkeyPatch.context() as mp:  # the good run, in this process
        from cvfp.params import load_params
        from tasks import materialize as mat_task

        mp.chdir(root)
        mat_task.run(load_params(root / "params.yaml"))
    before = snapshot(root, ["cache/cstar"])
    free = sh.disk_usage(root).free
    (root / "filler").write_bytes(b"\0" * (free - 3 * 4096))  # three pages left
    failed = _stage(root, "materialize")
    # before: killed by SIGBUS (returncode -7) with no message and a hidden .cstar.* left behind
    assert failed.returncode == 1, (failed.returncode, failed.stderr[-2000:])
    assert (
        "not enough disk space for" in failed.stderr and "train.npy: needs 0.0 MiB" in failed.stderr
    )
    assert snapshot(root, ["cache/cstar"]) == before and leftovers(root) == []


def test_a_killed_stage_leaves_temporaries_that_the_next_run_removes(
    tmp_path, tiny_params, monkeypatch
):
    import os
    import subprocess
    import sys

    from helpers import ROOT
    from tasks.stage import clean_leftovers

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "cache/cstar").mkdir(parents=True)
    (tmp_path / "cache/cstar/train.npy").write_bytes(b"good")
    script = (
        "import os, signal\nfrom cvfp.runtime.utils import atomic_path\n"
        "with atomic_path('cache/cstar') as t:\n    t.mkdir()\n"
        "    (t / 'train.npy').write_bytes(bytes(100000))\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert p.returncode == -9
    assert [x.name.split(".")[1] for x in (tmp_path / "cache").glob(".cstar.*")] == ["cstar"]
    (tmp_path / "cache/phase1-work/train-abc").mkdir(parents=True)  # a killed phase1's scratch
    (tmp_path / "cache/phase1-work/train-abc/contexts_a.npy").write_bytes(bytes(1000))
    live = tmp_path / f"cache/.cstar.{os.getpid()}.x"  # a running writer's: kept
    live.mkdir()
    clean_leftovers("materialize")
    clean_leftovers("phase1")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        live.name,
        "cstar",
        "phase1-work",
    ]
    assert list((tmp_path / "cache/phase1-work").iterdir()) == []
    assert (tmp_path / "cache/cstar/train.npy").read_bytes() == b"good"


# ---------------------------------------------------------------- item 7: the temporary Prefect server


def test_killing_the_flow_process_stops_its_temporary_prefect_server(killed_flow):
    """A real temporary server (no PREFECT_API_URL): SIGKILL the flow's process, and the
    server (uvicorn) must exit by itself instead of living on re-parented to PID 1
    (helpers.prefect.kill_flow_process, a session job)."""
    assert killed_flow.ready == "READY"
    assert len(killed_flow.servers) == 1, killed_flow.children
    assert killed_flow.survivors == [], "temporary Prefect server outlived its flow process"
