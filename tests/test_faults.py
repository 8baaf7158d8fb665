"""Issue 14: faults and bad input leave the previous good outputs intact, fail with a clear
error naming what to fix, and leave no temporary files behind."""

import hashlib
import shutil
from pathlib import Path

import pytest

from cvfp.phase2 import NonFiniteLossError, Trainer
from helpers.phase2 import cfg, stage_params, tiny_project


def snapshot(root: Path, rels) -> dict[str, str]:
    out = {}
    for rel in rels:
        p = root / rel
        for f in sorted([p] if p.is_file() else p.rglob("*")):
            if f.is_file():
                out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def leftovers(root: Path) -> list[str]:
    """Temporary siblings atomic_path makes (".<name>.*"), anywhere in the project."""
    return sorted(
        str(p.relative_to(root)) for p in root.rglob(".*") if p.name not in (".git", ".dvc")
    )


PHASE2_OUT = [
    "cache/phase2",
    "metrics/phase2.json",
    "metrics/phase2_test_conversations.csv",
    "plots/phase2_epochs.csv",
]


@pytest.fixture
def phase2_project(tmp_path, tiny_params, monkeypatch):
    """A tiny project after materialize and a successful phase2: (root, params)."""
    from tasks import materialize as mat_task
    from tasks import phase2 as p2_task

    tiny_project(tmp_path, tiny_params)
    monkeypatch.chdir(tmp_path)
    params = stage_params(tiny_params)
    mat_task.run(params)
    p2_task.run(params)
    return tmp_path, params


def test_phase2_failing_after_epoch_1_keeps_the_previous_model(phase2_project, monkeypatch):
    from tasks import phase2 as p2_task

    root, params = phase2_project
    before = snapshot(root, PHASE2_OUT)
    assert "cache/phase2/model.pt" in before
    real, epochs = Trainer.train_epoch, []

    def fail_in_epoch_2(self, epoch):
        epochs.append(epoch)
        if epoch == 2:  # epoch 1's best-so-far checkpoint is already written
            raise RuntimeError("killed during epoch 2")
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", fail_in_epoch_2)
    other = params.model_copy(update={"phase2": cfg(params, epochs=3, lr=0.002)})
    with pytest.raises(RuntimeError, match="killed during epoch 2"):
        p2_task.run(other)
    assert epochs == [1, 2]
    assert snapshot(root, PHASE2_OUT) == before  # model, metrics and plot as they were
    assert leftovers(root) == []


def test_phase2_divergence_names_the_loss_and_the_param(phase2_project):
    """phase2.lr=1e6 used to end in OverflowError from exp(loss)."""
    from tasks import phase2 as p2_task

    root, params = phase2_project
    before = snapshot(root, PHASE2_OUT)
    wild = params.model_copy(update={"phase2": cfg(params, epochs=3, lr=1e6, grad_clip=1e6)})
    with pytest.raises(NonFiniteLossError) as err:
        p2_task.run(wild)
    msg = str(err.value)
    assert "epoch 1" in msg and "phase2.lr (now 1000000.0)" in msg
    assert "diverged" in msg or "loss is nan" in msg or "loss is inf" in msg
    assert snapshot(root, PHASE2_OUT) == before
    assert leftovers(root) == []


# ---------------------------------------------------------------- item 3: diverged Phase 1


def _phase1(tiny_params, **kw):
    div = {k: kw.pop(k) for k in ("action",) if k in kw}
    return tiny_params.phase1.model_copy(
        update={**kw, "divergence": tiny_params.phase1.divergence.model_copy(update=div)}
    )


def _corpus():
    from cvfp.corpus import Corpus
    from helpers.phase1 import convs

    return Corpus.from_conversations(convs(n=20), "conversation")


def test_diverged_phase1_fails_with_the_iteration_and_the_numbers(tiny_params):
    from cvfp.phase1 import run_phase1
    from cvfp.phase1_guard import Phase1DivergedError
    from helpers.phase1 import tiny_model

    with pytest.raises(Phase1DivergedError) as err:
        run_phase1(tiny_model(), _corpus(), _phase1(tiny_params, lr=1e6, max_iterations=5))
    msg = str(err.value)
    assert "train iteration 1 (after 1 step(s)" in msg and "max |weight| = 1e+06" in msg
    assert "phase1.lr (now 1e+06)" in msg and "phase1.divergence.action=continue" in msg


def test_phase1_numbers_describe_the_saved_model(tiny_params, caplog):
    """The training pass measures the model before its step: with phase1.lr=1e6 the last
    training row says 84% converged, the saved model (run_phase1's pass without a step after
    training) converges nowhere."""
    from cvfp.phase1 import run_phase1
    from helpers.phase1 import tiny_model

    p = _phase1(tiny_params, lr=1e6, max_iterations=1, action="continue")
    model, corpus = tiny_model(), _corpus()
    r = run_phase1(model, corpus, p)
    assert r.history[-1].convergence_rate > 0.5 and r.history[-1].steps == 1
    assert r.final is r.saved and r.final.steps == 0 and r.final.convergence_rate == 0.0
    assert r.final.total_loss > 1e6 and r.iterations == 1  # history: training passes only
    assert "keeping going" in caplog.text
    # A normal run: the saved model's numbers come from one more pass, as for val.
    p = _phase1(tiny_params, max_iterations=2)
    model = tiny_model()
    r = run_phase1(model, corpus, p)
    last = r.history[-1]
    assert r.final.steps == 0 and r.final.total_loss != last.total_loss and r.iterations == 2


def test_diverged_phase1_stage_keeps_the_previous_outputs(tmp_path, tiny_params, monkeypatch):
    from cvfp.phase1_guard import Phase1DivergedError
    from tasks import phase1 as p1_task

    tiny_project(tmp_path, tiny_params)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/phase1.json").write_text('{"good": true}\n')
    before = snapshot(tmp_path, ["cache/phase1", "metrics"])
    params = tiny_params.model_copy(
        update={"phase1": _phase1(tiny_params, lr=1e6, max_iterations=3)}
    )
    with pytest.raises(Phase1DivergedError, match="train iteration 1"):
        p1_task.run(params)
    assert snapshot(tmp_path, ["cache/phase1", "metrics"]) == before
    assert leftovers(tmp_path) == [] and list((tmp_path / "cache/phase1-work").iterdir()) == []


# ---------------------------------------------------------------- item 1: params edited mid-stage


def test_params_edited_while_phase1_runs_refuses_the_outputs(tmp_path, tiny_params, monkeypatch):
    """The stage reruns against params.yaml before replacing an output (and before dvc.lock /
    the flow commits): a changed phase1 key refuses, an unrelated key does not."""
    import yaml

    from cvfp.params import load_params
    from helpers import ROOT, write_params
    from tasks import phase1 as p1_task
    from tasks.guard import ParamsChangedError
    from tasks.stage import run_stage

    tiny_project(tmp_path, tiny_params)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")  # which keys phase1 depends on
    tiny = tiny_params.model_dump(mode="json")
    write_params(
        tmp_path,
        lambda raw: raw.update(
            {k: tiny[k] for k in ("model", "phase2")}
            | {"phase1": {**tiny["phase1"], "max_iterations": 2}}
        ),
    )
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path, ["cache/phase1"])
    real_checks = p1_task.run_checks

    def edit(key, value):
        def checks_then_edit(*a, **kw):  # mid-stage: after training, before saving
            raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
            section, leaf = key.split(".")
            raw[section][leaf] = value
            (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
            return real_checks(*a, **kw)

        monkeypatch.setattr(p1_task, "run_checks", checks_then_edit)

    edit("phase1.lr", 0.5)
    with pytest.raises(ParamsChangedError) as err:
        run_stage("phase1", p1_task.run, load_params(tmp_path / "params.yaml"))
    msg = str(err.value)
    assert "(phase1.lr: 0.002 -> 0.5)" in msg and "cache/phase1 was not replaced" in msg
    assert snapshot(tmp_path, ["cache/phase1"]) == before
    assert not (tmp_path / "metrics/phase1.json").exists() and leftovers(tmp_path) == []

    edit("phase2.lr", 0.5)  # not a phase1 dependency: fine
    run_stage("phase1", p1_task.run, load_params(tmp_path / "params.yaml"))
    assert snapshot(tmp_path, ["cache/phase1"]) != before
    assert (tmp_path / "metrics/timing/phase1.json").exists()


# ---------------------------------------------------------------- item 9: smaller ones


def test_params_overrides_on_an_empty_file_or_through_a_value_name_the_key(tmp_path):
    from cvfp.params import ParamsError, load_params
    from helpers import ROOT

    empty = tmp_path / "params.yaml"
    empty.write_text("")
    with pytest.raises(ParamsError, match=r"(?s)invalid parameters.*seed: missing"):
        load_params(empty, {"phase1.lr": 0.1})
    with pytest.raises(ParamsError, match=r"override seed\.x=1: seed is 42, not a section"):
        load_params(ROOT / "params.yaml", {"seed.x": 1})


@pytest.mark.parametrize(
    "args, expected",
    [(["--max-new-tokens", "-1"], "--max-new-tokens -1"), (["--top-k", "-5"], "--top-k -5")],
)
def test_generate_rejects_out_of_range_options(args, expected, capsys):
    from helpers import ROOT
    from tasks import generate as gen_cli

    with pytest.raises(SystemExit) as err:
        gen_cli.main(["--prompt", "hi", "--params", str(ROOT / "params.yaml"), *args])
    assert err.value.code == 2 and expected in capsys.readouterr().err


def test_phase2_in_a_fresh_clone_says_run_the_earlier_stages(tmp_path, tiny_params, monkeypatch):
    from tasks import phase2 as p2_task

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        FileNotFoundError, match="data/tokenizer: tokenizer not found .run the earlier stages"
    ):
        p2_task.run(tiny_params)


def test_truncated_cstar_and_checkpoint_name_the_file(phase2_project):
    from cvfp.checkpoint import CheckpointError, read_checkpoint
    from cvfp.cstar import CstarError
    from tasks import phase2 as p2_task

    root, params = phase2_project
    for rel, err in (
        ("cache/cstar/train.npy", CstarError),
        ("cache/phase1/model.pt", CheckpointError),
    ):
        path = root / rel
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
        with pytest.raises(err, match=rel.replace(".", r"\.")):
            p2_task.run(params)
        path.write_bytes(data)
    read_checkpoint(root / "cache/phase1/model.pt")


# ---------------------------------------------------------------- item 5: bad input at download


def _jsonl(rows_) -> bytes:
    import json

    return b"".join(json.dumps(r).encode() + b"\n" for r in rows_)


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            lambda good: good.replace(b"Thanks!", b"Thanks\xff!"),
            r"bad\.jsonl:2: invalid UTF-8 \(byte 0xff",
        ),
        (
            lambda good: good + b'{"prompt": "x", \n',
            r"bad\.jsonl:5: JSON document ends early at line 5 \(file truncated\?\): 4 complete",
        ),
        (lambda good: good + b'{"prompt": x}\n{}\n', r"bad\.jsonl:5: not valid JSON"),
        (lambda good: b"", r"bad\.jsonl: empty file"),
        (lambda good: b"\n \n", r"bad\.jsonl: empty file"),
    ],
)
def test_download_refuses_bad_local_files_naming_file_and_line(
    content, expected, tmp_path, monkeypatch
):
    from cvfp.chat_schema import DataError
    from helpers.data import params, rows
    from tasks import download

    good = _jsonl(rows())
    assert b"Thanks!" in good.splitlines()[1]
    (tmp_path / "bad.jsonl").write_bytes(content(good))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=expected):
        download.run(params(data__source="local", data__path="bad.jsonl"))
    assert not (tmp_path / "data/raw").exists() and leftovers(tmp_path) == []


def test_download_refuses_a_directory_with_several_formats(tmp_path):
    import pandas as pd

    from cvfp import chat_schema, local_files
    from helpers.data import rows

    d = tmp_path / "mixed"
    d.mkdir()
    pd.DataFrame(rows()).to_parquet(d / "part-0.parquet")
    (d / "more.jsonl").write_bytes(_jsonl(rows()))
    with pytest.raises(
        chat_schema.DataError, match=r"2 formats \(json: more\.jsonl; parquet: part-0\.parquet\)"
    ):
        local_files.load_local(d, split="train")
    (d / "more.jsonl").unlink()
    assert len(local_files.load_local(d, split="train").dataset) == len(rows())
    with pytest.raises(chat_schema.DataError, match=r"Unknown split.*set data\.split"):
        local_files.load_local(d, split="train_sft")


def test_invalid_utf8_from_parquet_or_hub_is_refused_at_validate():
    import pyarrow as pa
    from datasets import Dataset

    from cvfp import chat_schema, hub_datasets
    from helpers.data import rows

    table = pa.Table.from_pylist(rows())
    # Arrow string column with an invalid UTF-8 byte, as a corrupt parquet/hub shard can carry
    bad = pa.array([b"caf\xe9"], type=pa.binary()).cast(pa.string(), safe=False)
    table = table.set_column(
        0, "prompt", pa.concat_arrays([bad, table.column("prompt").combine_chunks()[1:]])
    )
    with pytest.raises(chat_schema.DataError, match=r"hub:x: invalid data .*UTF8"):
        hub_datasets.validate(Dataset(table), "hub:x")


# ---------------------------------------------------------------- item 4: tokenizer and ids together


def test_tokenize_outputs_are_replaced_together_and_split_checks_the_pair(tmp_path, monkeypatch):
    import errno
    import shutil as sh

    import datasets

    from helpers.data import run_stages

    small = dict(data__num_samples=60, tokenizer__vocab_size=300, tokenizer__num_proc=1)
    run_stages(tmp_path, monkeypatch, "download", "tokenize", **small)
    outs = ["data/tokenizer", "data/tokenized"]
    before = snapshot(tmp_path, outs)
    real = datasets.Dataset.save_to_disk

    def disk_full(self, path, *a, **kw):
        if "tokenized" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(self, path, *a, **kw)

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_stages(tmp_path, monkeypatch, "tokenize", **{**small, "tokenizer__vocab_size": 280})
    monkeypatch.setattr(datasets.Dataset, "save_to_disk", real)
    assert snapshot(tmp_path, outs) == before and leftovers(tmp_path) == []

    # An old data/tokenized beside a new data/tokenizer (as a crash between the two renames
    # would leave): split refuses instead of running on mismatched ids.
    sh.copytree(tmp_path / "data/tokenized", tmp_path / "old_tokenized")
    run_stages(tmp_path, monkeypatch, "tokenize", **{**small, "tokenizer__vocab_size": 280})
    sh.rmtree(tmp_path / "data/tokenized")
    sh.move(tmp_path / "old_tokenized", tmp_path / "data/tokenized")
    with pytest.raises(ValueError, match="different tokenize runs.*dvc repro -f -s tokenize"):
        run_stages(tmp_path, monkeypatch, "split", **small)
    assert not (tmp_path / "data/split").exists()
    # Without the digest (older outputs) the id range still catches a smaller vocabulary.
    import numpy as np

    from tasks.split import check_ids_fit

    with pytest.raises(ValueError, match="token id 290 but data/tokenizer has 280 tokens"):
        check_ids_fit([np.array([1, 290])], 280, None)


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
        "import os, signal\nfrom cvfp.utils import atomic_path\n"
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
