"""Faults while training (issue 14): Phase 2 failing after an epoch or diverging, a diverged
Phase 1, params edited while Phase 1 runs: the previous good outputs stay, the error names
the loss, the iteration or the param, and no temporary file is left."""

import shutil

import pytest

from cvfp.phase2.trainer import NonFiniteLossError, Trainer
from helpers.outputs import leftovers, snapshot
from helpers.phase2 import cfg, tiny_project

PHASE2_OUT = [
    "cache/phase2",
    "metrics/phase2.json",
    "metrics/phase2_test_conversations.csv",
    "plots/phase2_epochs.csv",
]


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
    from cvfp.core.corpus import Corpus
    from helpers.phase1 import convs

    return Corpus.from_conversations(convs(n=20), "conversation")


def test_diverged_phase1_fails_with_the_iteration_and_the_numbers(tiny_params):
    from cvfp.phase1.guard import Phase1DivergedError
    from cvfp.phase1.trainer import run_phase1
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
    from cvfp.phase1.trainer import run_phase1
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
    from cvfp.phase1.guard import Phase1DivergedError
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
