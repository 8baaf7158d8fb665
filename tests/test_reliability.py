"""Issue 23: nothing runs that was not asked for, outputs are replaced atomically, params
are strict, dvc.lock records the params the outputs were made with, one runner at a time."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ROOT

# ---------------------------------------------------------------- item 1: safe loading


class _Evil:
    """Unpickling this runs `touch <marker>` (what a hostile .pt on a shared remote does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_checkpoint(tmp_path: Path, name: str = "evil.pt") -> tuple[Path, Path]:
    from cvfp.model import CVFPModel
    from cvfp.params import load_params

    marker = tmp_path / "pwned"
    p = load_params(ROOT / "params.yaml")
    model = CVFPModel.from_params(p.model.model_copy(update={"layer_structure": [1]}), 300)
    path = tmp_path / name
    torch.save({"state_dict": model.state_dict(), "params": _Evil(marker)}, path)
    return path, marker


def test_a_malicious_checkpoint_runs_nothing_and_is_named(tmp_path):
    import pickle

    from cvfp.checkpoint import CheckpointError, read_checkpoint
    from cvfp.cstar import _shard_model
    from cvfp.generate import load_model
    from cvfp.params import load_params

    path, marker = _evil_checkpoint(tmp_path)
    with pytest.raises(pickle.UnpicklingError):  # the hostile pickle is real: torch refuses it
        torch.load(path, weights_only=True)
    p = load_params(ROOT / "params.yaml")
    for load in (
        lambda: read_checkpoint(path),
        lambda: load_model(path, 300),  # tasks.generate --checkpoint
        lambda: _shard_model(path, p.model, 300, 0.99),  # materialize
    ):
        with pytest.raises(CheckpointError, match=rf"{path} is not a safe checkpoint"):
            load()
        assert not marker.exists()


def test_checkpoints_are_plain_and_other_torch_files_are_named(tmp_path, tiny_params):
    import numpy as np

    from cvfp.checkpoint import CheckpointError, plain, read_checkpoint, save_checkpoint
    from cvfp.model import CVFPModel

    model = CVFPModel.from_params(tiny_params.model, 300)
    save_checkpoint(
        tmp_path / "m.pt",
        model,
        tiny_params.model_dump(),
        history={"train": [{"loss": np.float32(1.5), "step": np.int64(3)}]},
    )
    state = read_checkpoint(tmp_path / "m.pt")  # weights_only
    assert state["history"]["train"][0] == {"loss": 1.5, "step": 3}
    assert state["params"] == tiny_params.model_dump()
    with pytest.raises(TypeError, match=r"checkpoint\.x: a PosixPath cannot go into a checkpoint"):
        plain({"x": tmp_path})
    torch.save(7, tmp_path / "int.pt")
    with pytest.raises(CheckpointError, match=r"int\.pt is a torch file but not a checkpoint"):
        read_checkpoint(tmp_path / "int.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*cut\.pt.*truncated"):
        read_checkpoint(tmp_path / "cut.pt")


def test_a_tiny_temperature_names_the_option(tiny_params):
    from cvfp.generate import generate
    from cvfp.model import CVFPModel

    torch.manual_seed(0)
    model = CVFPModel.from_params(tiny_params.model, 50)
    with torch.no_grad():  # the output head starts at zero: give it real logits
        for w in model.parameters():
            w.normal_()
    assert len(generate(model, [1, 2], 3, temperature=1e-40, seed=0)) == 3  # float64: fine
    with pytest.raises(ValueError, match=r"temperature=1e-320 is too small.*--temperature"):
        generate(model, [1, 2], 3, temperature=1e-320, seed=0)


# ---------------------------------------------------------------- item 2: atomic replacement

_KILL_AT = """
import os, signal, sys
import cvfp.utils as u
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
    from cvfp.utils import clean_stale_temps

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
    from cvfp.contexts import DiskSpaceError, context_stores
    from cvfp.distributed import init_world

    stores = context_stores((10**12, 16), tmp_path / "work", init_world(), "train")
    with pytest.raises(DiskSpaceError):
        stores.__enter__()
    assert list((tmp_path / "work").iterdir()) == []


# ---------------------------------------------------------------- item 3: strict params


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            if prefix == "compare." and k == "arms":
                continue  # free-form overrides, validated per arm (arm_params)
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], node


def _raw():
    import yaml

    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _kind(key: str):
    """The type params.py declares for a dotted key (int, float, bool, str, list[...])."""
    import types
    import typing

    from pydantic import BaseModel

    from cvfp.params import Params

    model: typing.Any = Params
    for part in key.split("."):
        ann = model.model_fields[part].annotation
        model = ann
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        ann = args[0]
    if typing.get_origin(ann) is list:
        inner = typing.get_args(ann)[0]
        inner = typing.get_args(inner)[0] if typing.get_origin(inner) is typing.Annotated else inner
        return ("list", inner)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return None
    return ann


def _wrong_values(key, value):
    """Values YAML gives that are the wrong type (or not finite / empty) for this key."""
    kind = _kind(key)
    if kind is bool:
        return ["yes", 1]
    if kind is int:
        return ["3", True, 2.5]
    if kind is float:
        return ["0.5", True, float("inf"), float("nan")]
    if kind is str:
        return ["", 3]
    if isinstance(kind, tuple) and kind[1] in (int, float) and value:
        return [[str(value[0])] + value[1:]] + (
            [[float("nan")] + value[1:]] if kind[1] is float else []
        )
    return []


CASES = [(k, bad) for k, v in _leaves(_raw()) for bad in _wrong_values(k, v)]


@pytest.mark.parametrize("key, bad", CASES, ids=[f"{k}={b!r}" for k, b in CASES])
def test_every_key_refuses_wrong_types_infinities_and_empty_strings(tmp_path, key, bad):
    """Generated from params.yaml's own leaves: a key added to any section later is held to
    the same rules (strict types, finite numbers, no empty strings) without a new test."""
    import re

    from cvfp.params import ParamsError, load_params, set_dotted
    from helpers import write_params

    with pytest.raises(ParamsError, match=rf"(?m)^  {re.escape(key)}[ .=:]"):
        load_params(write_params(tmp_path, lambda r: set_dotted(r, key, bad)))


@pytest.mark.parametrize(
    "key, text, expected",
    [
        ("phase2.epochs", "'3'", r"phase2\.epochs = '3': .* integer \(write it without quotes\)"),
        ("phase2.epochs", "true", r"phase2\.epochs = True: .* integer \(a number, not true"),
        ("deterministic", "'yes'", r"deterministic = 'yes': Input should be a valid boolean"),
        ("phase2.lr", ".inf", r"phase2\.lr = inf: Input should be a finite number"),
        ("phase2.block_weights", "[.nan, 1.0]", r"phase2\.block_weights\.0 = nan: .* finite"),
        ("phase2.block_weights", "[-1.0, 1.0]", r"block_weights\.0 = -1\.0: .* greater than or"),
    ],
)
def test_the_issues_yaml_values_are_refused(tmp_path, key, text, expected):
    from cvfp.params import ParamsError, load_params, set_dotted
    from helpers import write_params

    value = yaml_load(f"v: {text}")["v"]
    with pytest.raises(ParamsError, match=expected):
        load_params(write_params(tmp_path, lambda r: set_dotted(r, key, value)))


def test_seed_range_duplicates_empty_paths_and_long_values(tmp_path):
    from cvfp.params import ParamsError, load_params
    from helpers import write_params

    with pytest.raises(
        ParamsError, match=r"seed = 4294967296: Input should be less than 4294967296"
    ):
        load_params(write_params(tmp_path, lambda r: r.update(seed=2**32)))
    with pytest.raises(ParamsError, match=r"compare\.seeds\.1 = 4294967296"):
        load_params(write_params(tmp_path, lambda r: r["compare"].update(seeds=[1, 2**32])))
    assert load_params(write_params(tmp_path, lambda r: r.update(seed=2**32 - 1))).seed == 2**32 - 1
    with pytest.raises(ParamsError, match=r"data\.path = '': String should have at least 1"):
        load_params(write_params(tmp_path, lambda r: r["data"].update(path="")))
    with pytest.raises(ParamsError, match=r"divergence\.max_loss = inf: Input should be a finite"):
        load_params(
            write_params(
                tmp_path, lambda r: r["phase1"]["divergence"].update(max_loss=float("inf"))
            )
        )
    text = (ROOT / "params.yaml").read_text()
    dup = tmp_path / "dup.yaml"
    dup.write_text(text + "seed: 7\n")  # the last would win silently
    with pytest.raises(
        ParamsError,
        match=rf"(?s)duplicate key 'seed' \(first on line \d+\).*line {len(text.splitlines()) + 1}",
    ):
        load_params(dup)
    bomb = tmp_path / "bomb.yaml"  # an anchor expanding to a large value under an unknown key
    bomb.write_text(
        text
        + "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        + "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nbomb: [*c, *c, *c, *c, *c, *c, *c, *c]\n"
    )
    with pytest.raises(ParamsError) as err:
        load_params(bomb)
    assert "bomb: unknown key" in str(err.value) and len(str(err.value)) < 2000
    # YAML 1.2 numbers: 1e-3 is a float (YAML 1.1 would read text, which strict refuses)
    assert load_params(ROOT / "params.yaml", {"phase1.lr": yaml_load("1e-3")}).phase1.lr == 1e-3


def yaml_load(text):
    from cvfp.params import yaml_load as load

    return load(text)


# ---------------------------------------------------------------- item 4: provenance

_FAKE_STAGE = """
import atexit
from pathlib import Path
from cvfp.utils import atomic_path
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
        from cvfp.utils import atomic_path
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


# ---------------------------------------------------------------- item 6: errors name file and fix


@pytest.fixture
def mat_project(tmp_path, tiny_params, monkeypatch):
    from helpers.phase2 import stage_params, tiny_project

    tiny_project(tmp_path, tiny_params)
    monkeypatch.chdir(tmp_path)
    return tmp_path, stage_params(tiny_params)


def _cut(path: Path) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return data


def test_broken_inputs_name_the_file_and_the_fix(mat_project):
    """Used to be `ValueError: negative seek value`, `OSError: Expected to be able to read
    82944 bytes`, a bare JSONDecodeError."""
    from cvfp.checkpoint import CheckpointError
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
    from cvfp.checkpoint import require_space
    from cvfp.contexts import DiskSpaceError

    huge = {"w": torch.zeros(1).expand(2**50)}  # 4 PiB of float32 that takes no memory
    with pytest.raises(
        DiskSpaceError,
        match=r"not enough disk space for .*model\.pt: needs \d+\.\d MiB \(2 checkpoint",
    ):
        require_space(tmp_path / "cache/phase2/model.pt", huge, copies=2)
    require_space(tmp_path / "model.pt", {"w": torch.zeros(10)}, copies=2)


def test_phase2_stage_on_a_full_disk_fails_before_an_epoch(mat_project, monkeypatch):
    import shutil

    from cvfp.contexts import DiskSpaceError
    from cvfp.phase2 import Trainer
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


# ---------------------------------------------------------------- item 7: knobs and bytes


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_workers_and_shard_size_do_not_change_a_byte(mat_project):
    """orchestration.workers (threads mapping the shards) and shard_conversations are
    speed/memory knobs: C* is the same bytes for any of them."""
    import shutil

    from cvfp.sharding import threaded
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
    from cvfp.utils import atomic_path
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
