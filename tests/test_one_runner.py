"""dvc.lock records the params the outputs were made with (params edited while a stage ran
are caught), and one runner at a time: a second flow or `dvc repro` is refused, a killed
`dvc repro` stops its stage (issue 23 items 4 and 5)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

# ---------------------------------------------------------------- item 4: provenance

_FAKE_STAGE = """
import atexit
from pathlib import Path
from cvfp.runtime.utils import atomic_path
from tasks.cli import cli
from tasks.outputs import StageOutputs

def run(params):
    with atomic_path("cache/phase1", StageOutputs("phase1", params).before_replace) as tmp:
        tmp.mkdir()
        (tmp / "model.txt").write_text(f"lr={params.phase1.lr}\\n")

@atexit.register
def edit():  # the user edits params.yaml after the stage's last check, before DVC reads it
    edit = Path("edit-after-stage")
    if edit.exists():
        p = Path("params.yaml")
        p.write_text(p.read_text().replace(*edit.read_text().split("|")))

cli("phase1", run)
"""


@pytest.fixture(scope="module")
def tracked_base(tmp_path_factory):
    """A real DVC project with one stage named phase1 (params phase1.lr, out cache/phase1)
    whose command runs through tasks.cli.cli like the real stages, after `dvc repro`."""
    import shutil

    root = tmp_path_factory.mktemp("tracked") / "proj"
    root.mkdir()
    (root / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (root / "stage.py").write_text(_FAKE_STAGE)
    (root / "dvc.yaml").write_text(
        "stages:\n  phase1:\n    cmd: python stage.py\n    params:\n      - phase1.lr\n"
        "    outs:\n      - cache/phase1\n"
    )
    env = {**os.environ, **_env()}
    dvc = shutil.which("dvc", path=env["PATH"])
    subprocess.run([dvc, "init", "--no-scm", "-q"], check=True, cwd=root, env=env)
    subprocess.run([dvc, "repro", "-q"], check=True, capture_output=True, cwd=root, env=env)
    return root, dvc


def _env() -> dict:
    return {
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }


@pytest.fixture
def tracked(tracked_base, tmp_path, monkeypatch):
    """A private copy of tracked_base (cwd), PATH and PYTHONPATH set for its stage."""
    import shutil

    base, dvc = tracked_base
    root = tmp_path / "proj"
    shutil.copytree(base, root, symlinks=True)
    monkeypatch.chdir(root)
    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    return root, dvc


def _lr_line():
    return next(x for x in Path("params.yaml").read_text().splitlines() if x.startswith("  lr:"))


def test_params_edited_after_the_stage_are_caught_by_the_next_stage(tracked):
    """(b) via `dvc repro`: DVC reads params.yaml after the stage process exits; an edit in
    that gap is recorded, but the outputs say what they were made with, and the next stage
    (and the flow's up-to-date check) refuse to trust it."""
    import json

    from flows.dvc_state import stage_status
    from tasks.provenance import ProvenanceError, check_provenance, params_record, upstream_stages
    from tasks.stage import run_stage

    assert upstream_stages("materialize") == ["tokenize", "split", "phase1"]

    root, dvc = tracked
    first = _lr_line()  # phase1.lr is the first `  lr:` line
    assert json.loads((root / "cache/phase1/params.json").read_text()) == {"phase1.lr": 0.002}
    check_provenance(["phase1"])  # consistent
    (root / "edit-after-stage").write_text(f"{first}|  lr: 0.5")
    subprocess.run([dvc, "repro", "-f", "-q"], check=True, capture_output=True)
    assert "0.5" in Path("dvc.lock").read_text()  # DVC recorded the edited value
    with pytest.raises(
        ProvenanceError, match=r"stage phase1 .*phase1\.lr: dvc\.lock 0\.5, outputs 0\.002"
    ):
        check_provenance(["phase1"])
    from cvfp.params import load_params

    with pytest.raises(
        ProvenanceError, match="dvc repro -f -s <stage>"
    ):  # materialize reads phase1's outputs
        run_stage("materialize", lambda p: None, load_params("params.yaml"))
    up_to_date, reason = stage_status("phase1")
    assert not up_to_date and "phase1.lr: dvc.lock 0.5, outputs 0.002" in reason
    assert params_record("phase1", load_params("params.yaml")) == {"phase1.lr": 0.5}


def test_the_flow_commit_refuses_params_edited_after_the_stage(tracked):
    """(b) via the flow: the commit checks what DVC recorded and puts dvc.lock back."""
    from cvfp.params import load_params
    from flows.dvc_state import commit_stage
    from tasks.guard import ParamsChangedError
    from tasks.stage import run_stage

    root, _ = tracked
    lock = Path("dvc.lock").read_bytes()

    def run(params):
        from cvfp.runtime.utils import atomic_path
        from tasks.outputs import StageOutputs

        with atomic_path("cache/phase1", StageOutputs("phase1", params).before_replace) as tmp:
            tmp.mkdir()
            (tmp / "model.txt").write_text("other bytes\n")

    run_stage("phase1", run, load_params("params.yaml"))
    Path("params.yaml").write_text(Path("params.yaml").read_text().replace(_lr_line(), "  lr: 0.5"))
    with pytest.raises(ParamsChangedError, match=r"phase1\.lr: dvc\.lock 0\.5, outputs 0\.002"):
        commit_stage("phase1")
    assert Path("dvc.lock").read_bytes() == lock


def test_a_one_off_override_writes_to_scratch_unless_replace(tracked, monkeypatch):
    """(c) `python -m tasks.phase1 -S phase1.lr=0.01` leaves the tracked outputs alone; with
    --replace it replaces them, and a `dvc commit` of that (recording params.yaml's 0.002)
    is caught."""
    from tasks.provenance import ProvenanceError, check_provenance

    root, dvc = tracked
    tracked_model = (root / "cache/phase1/model.txt").read_text()
    run = [sys.executable, "stage.py", "-S", "phase1.lr=0.01"]
    p = subprocess.run(run, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (
        "go to scratch/phase1/" in p.stderr
        and "phase1.lr: params.yaml 0.002, this run 0.01" in p.stderr
    )
    assert (root / "cache/phase1/model.txt").read_text() == tracked_model == "lr=0.002\n"
    assert (root / "scratch/phase1/cache/phase1/model.txt").read_text() == "lr=0.01\n"
    assert (root / "scratch/phase1/params.yaml").is_symlink()
    status = subprocess.run([dvc, "status", "-q"], capture_output=True)
    assert status.returncode == 0  # still up to date
    subprocess.run(run + ["--replace"], check=True, capture_output=True)
    assert (root / "cache/phase1/model.txt").read_text() == "lr=0.01\n"
    check = [sys.executable, "-m", "flows.dvc_state"]
    subprocess.run([dvc, "commit", "-f", "-q", "phase1"], check=True, capture_output=True)
    with pytest.raises(ProvenanceError, match=r"phase1\.lr: dvc\.lock 0\.002, outputs 0\.01"):
        check_provenance(["phase1"])
    flagged = subprocess.run(check, capture_output=True, text=True)
    assert flagged.returncode == 1 and "phase1.lr: dvc.lock 0.002, outputs 0.01" in flagged.stdout


def test_the_flow_refuses_another_params_file(tmp_path, monkeypatch):
    """(a) `flows.pipeline --params alt.yaml` would train with alt.yaml and record params.yaml."""
    from flows import pipeline as flow

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "alt.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.setattr(sys, "argv", ["flows.pipeline", "--params", "alt.yaml"])
    with pytest.raises(SystemExit) as err:
        flow.main()
    assert err.value.code == 2
    with pytest.raises(ValueError, match=r"--params alt\.yaml: .*Copy it to params\.yaml"):
        flow.require_tracked_params("alt.yaml")
    flow.require_tracked_params(str(tmp_path / "params.yaml"))  # the same file: fine


# ---------------------------------------------------------------- item 5: one runner


def _hold_lock_in_subprocess(root: Path) -> subprocess.Popen:
    script = (
        "import sys, time\nfrom tasks.workspace import workspace_lock\n"
        "with workspace_lock('flows.pipeline'):\n    print('held', flush=True)\n    time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "--stages", "phase1"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_runner_is_refused_naming_the_first(tracked):
    """The lock names the holder; the refused stage touches nothing (not even a live
    scratch), and the lock frees itself when its holder dies."""
    from cvfp.params import load_params
    from tasks.stage import run_stage
    from tasks.workspace import WorkspaceBusyError, workspace_lock

    root, _ = tracked
    work = root / "cache/phase1-work/train-999999-x"  # no such pid: a dead writer's scratch
    work.mkdir(parents=True)
    holder = _hold_lock_in_subprocess(root)
    try:
        with pytest.raises(WorkspaceBusyError) as err:
            run_stage("phase1", lambda p: pytest.fail("ran"), load_params("params.yaml"))
        msg = str(err.value)
        assert f"in use by pid {holder.pid} (-c --stages phase1, since" in msg
        assert "stage phase1 refused" in msg and f"kill {holder.pid}" in msg
        assert work.exists()  # the refused runner cleaned nothing
        cli = subprocess.run([sys.executable, "stage.py"], capture_output=True, text=True)
        assert cli.returncode == 1 and f"in use by pid {holder.pid}" in cli.stderr
        assert "Traceback" not in cli.stderr
        from flows.compare import compare  # two comparisons at once ran the same experiments

        with pytest.raises(
            WorkspaceBusyError, match=rf"flows\.compare refused: .* pid {holder.pid}"
        ):
            compare.fn("params.yaml")
    finally:
        holder.kill()
        holder.wait()
    with workspace_lock("flows.compare"):  # the holder is gone: free again
        with workspace_lock("stage phase1"):  # re-entrant: the flow runs its stages
            pass
        # a process the holder starts (flows.compare's `dvc repro` of the report) runs
        child = subprocess.run([sys.executable, "stage.py"], capture_output=True, text=True)
        assert child.returncode == 0, child.stderr[-2000:]
    assert "CVFP_WORKSPACE_LOCK_HOLDER" not in os.environ


def test_dvc_repro_during_a_flow_is_refused_before_deleting(tracked):
    from flows.dvc_state import commit_stage, hold_dvc_lock, stage_status

    root, dvc = tracked
    before = (root / "cache/phase1/model.txt").read_bytes()
    with hold_dvc_lock():
        p = subprocess.run([dvc, "repro", "-f"], capture_output=True, text=True)
        assert p.returncode != 0 and "lock" in (p.stdout + p.stderr).lower()
        assert (root / "cache/phase1/model.txt").read_bytes() == before
        assert stage_status("phase1")[0]  # the flow's own DVC calls still work
        commit_stage("phase1")


_SLEEPING_STAGE = """
import os, time
from pathlib import Path
from tasks.cli import cli

def run(params):
    Path("stage.pid").write_text(str(os.getpid()))
    time.sleep(60)

cli("phase1", run)
"""


def test_killing_dvc_repro_stops_its_stage(tracked):
    import signal
    import time

    root, dvc = tracked
    (root / "stage.py").write_text(_SLEEPING_STAGE)
    repro = subprocess.Popen(
        [dvc, "repro", "-f", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while not (root / "stage.pid").exists():
        assert time.monotonic() < deadline and repro.poll() is None
        time.sleep(0.2)
    stage = int((root / "stage.pid").read_text())
    repro.send_signal(signal.SIGKILL)
    repro.wait()
    deadline = time.monotonic() + 10
    while _alive(stage) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(stage), "the stage outlived its dvc repro"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
