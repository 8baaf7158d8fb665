"""Full disks and killed processes (issue 14): materialize on a full disk says how much it
needs and keeps the old C*, a killed stage's temporaries go on the next run, and killing
the flow stops its temporary Prefect server."""

import shutil
from pathlib import Path

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


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killing_the_flow_process_stops_its_temporary_prefect_server(tmp_path):
    """A real temporary server (no PREFECT_API_URL): SIGKILL the flow's process, and the
    server (uvicorn) must exit by itself instead of living on re-parented to PID 1."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from helpers import ROOT

    script = (
        "import time, flows\nfrom prefect import flow\n@flow\ndef wait():\n"
        "    print('READY', flush=True)\n    time.sleep(600)\nwait()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PYTHONPATH=str(ROOT),
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    servers: list[int] = []
    try:
        assert proc.stdout.readline().strip() == "READY"
        servers += [
            c
            for c in _children(proc.pid)
            if "create_app" in Path(f"/proc/{c}/cmdline").read_text(errors="replace")
        ]
        assert len(servers) == 1, _children(proc.pid)
        server = servers[0]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while _running(server) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _running(server), f"temporary Prefect server {server} outlived its flow process"
    finally:
        proc.kill()
        for pid in servers:  # only if the test failed
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
