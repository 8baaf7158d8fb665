"""Outputs are replaced atomically: a writer killed between the renames leaves the old or
the new output, dead writers' leftovers go, a full disk leaves no scratch (issue 23 item 2)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

# ---------------------------------------------------------------- item 2: atomic replacement

_KILL_AT = """
import os, signal, sys
import cvfp.runtime.utils as u
from pathlib import Path
when = sys.argv[2]
real = u.move_in
def die(*a):
    if when == "before":  # a directory's old output is aside, the new one not yet in
        os.kill(os.getpid(), signal.SIGKILL)
    real(*a)
    os.kill(os.getpid(), signal.SIGKILL)  # the new one in, the old not yet deleted
u.move_in = die
final = Path(sys.argv[1])
with u.atomic_path(final) as t:
    if final.suffix:
        t.write_bytes(b"new")
    else:
        t.mkdir()
        (t / "train.npy").write_bytes(b"new")
"""


def _read(final: Path) -> bytes | None:
    f = final / "train.npy" if final.is_dir() else final
    return f.read_bytes() if f.exists() else None


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("kind", ["dir", "file"])
def test_killed_between_the_renames_the_old_or_new_output_is_there(tmp_path, when, kind):
    """Killed just before or after the new output is renamed in: the old or the new output
    (a file is renamed over the old one; a directory's old version, moved aside, is put
    back by the next start), never neither; no temporaries left."""
    from cvfp.runtime.utils import clean_stale_temps

    final = tmp_path / "cache" / ("cstar" if kind == "dir" else "data.json")
    if kind == "dir":
        final.mkdir(parents=True)
        (final / "train.npy").write_bytes(b"old")
    else:
        final.parent.mkdir(parents=True)
        final.write_bytes(b"old")
    p = subprocess.run(
        [sys.executable, "-c", _KILL_AT, str(final), when],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
    )
    assert p.returncode == -9, p.stderr.decode()[-2000:]
    expected = b"old" if when == "before" else b"new"
    if kind == "file" or when == "after":
        assert _read(final) == expected
    else:  # the old directory is aside: the next start (clean_leftovers) puts it back
        assert _read(final) is None
        assert [x.name for x in final.parent.glob(".cstar.*/old")] == ["old"]
    clean_stale_temps(final)
    assert _read(final) == expected
    assert sorted(x.name for x in final.parent.iterdir()) == [final.name]


def test_leftovers_of_dead_writers_go_and_live_ones_stay(tmp_path, monkeypatch):
    """Temporaries of any output (a run-cache restore never runs the owning stage), the
    report's, and scratch whose writer is gone; never a running process's."""
    import shutil

    from tasks.stage import clean_leftovers

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    dead_pid, live = int(dead.stdout), os.getpid()
    for rel in (
        f"cache/.cstar.{dead_pid}.a1/cstar/train.npy",
        f"reports/.report.html.{dead_pid}.b2/report.html",
        f"cache/phase1-work/train-{dead_pid}-c3/contexts_a.npy",
        f"cache/.cstar.{live}.d4/cstar/train.npy",
        f"cache/phase1-work/train-{live}-e5/contexts_a.npy",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    clean_leftovers("phase1")  # not the owner of cache/cstar or the report
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        f"cache/.cstar.{live}.d4/cstar/train.npy",
        f"cache/phase1-work/train-{live}-e5/contexts_a.npy",
        "dvc.yaml",
    ]


def test_phase1_out_of_disk_leaves_no_empty_scratch(tmp_path, tiny_params):
    from cvfp.core.contexts import DiskSpaceError, context_stores
    from cvfp.runtime.distributed import init_world

    stores = context_stores((10**12, 16), tmp_path / "work", init_world(), "train")
    with pytest.raises(DiskSpaceError):
        stores.__enter__()
    assert list((tmp_path / "work").iterdir()) == []
