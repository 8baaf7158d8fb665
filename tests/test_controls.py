"""Control arms (SPEC 9): phase1.objective none trains nothing, phase1.min_iterations forces
optimizer steps, and Phase 1 metrics say how many steps ran and when the convergence rate
holds by construction (SPEC 3)."""

import numpy as np
import torch

from cvfp.analysis.report.headline import iterations_words
from cvfp.core.corpus import Corpus
from cvfp.phase1.trainer import run_phase1
from helpers.phase1 import convs, tiny_model


def test_min_iterations_forces_steps_past_the_convergence_rule(tiny_params):
    corpus = Corpus.from_conversations(convs(n=6), "conversation")
    # 6 short conversations: their starts are ~15% of the tokens, so ask for 50%.
    base = tiny_params.phase1.model_copy(update={"max_iterations": 10, "min_converged_ratio": 0.5})
    r = run_phase1(tiny_model(), corpus, base)
    # The first parallel pass reproduces iteration 0 except at the 6 conversation starts.
    assert r.iterations == 1 and r.steps == 1 and r.converged_by_construction
    assert r.final.converged >= corpus.n_tokens - corpus.n_conversations and r.segments == 6
    forced = run_phase1(tiny_model(), corpus, base.model_copy(update={"min_iterations": 4}))
    assert forced.iterations >= 4 and forced.steps == forced.iterations
    assert [h.steps for h in forced.history[1:5]] == [1, 1, 1, 1]
    assert not forced.converged_by_construction
    # Passes without training ignore min_iterations (nothing changes between them).
    val = run_phase1(
        tiny_model(), corpus, base.model_copy(update={"min_iterations": 4}), train=False
    )
    assert val.iterations == 1 and val.steps == 0


def test_objective_none_trains_nothing_and_keeps_the_metric_keys(
    tiny_params, tmp_path, monkeypatch
):
    from datasets import Dataset

    import tasks.phase1 as stage
    from cvfp.core.checkpoint import read_checkpoint
    from cvfp.runtime.utils import seed_everything

    monkeypatch.chdir(tmp_path)
    for split, seed in (("train", 0), ("val", 1)):
        Dataset.from_dict({"input_ids": [c.tolist() for c in convs(seed, n=8)]}).save_to_disk(
            f"data/split/{split}"
        )
    monkeypatch.setattr(stage, "read_vocab_size", lambda _: 30)
    params = tiny_params.model_copy(deep=True)
    params.phase1.max_iterations = 3
    params.phase1.min_converged_ratio = 0.5  # short conversations (see above)
    params.checks.convergence_trials = 2
    params.checks.probe_samples = 20
    metrics = {}
    for objective in ("cvfp", "none"):
        params.phase1.objective = objective
        metrics[objective] = stage.run(params)
    cv, none = metrics["cvfp"], metrics["none"]
    assert cv["train"]["steps"] == 1 and cv["train"]["converged_by_construction"] is True
    assert none["train"]["steps"] == 0 and none["val"]["steps"] == 0
    assert none["objective"] == "none" and iterations_words(none).startswith("0/3 (objective none")
    # Same keys as cvfp (others read them), the checks included.
    assert set(none) == set(cv)
    for split in ("train", "val"):
        assert set(none[split]) == set(cv[split]), split
    assert none["val"]["trials"]["final_diff"] >= 0
    # The saved weights are the initialised stack's: build it again with the same seed.
    seed_everything(params.seed, params.deterministic)
    init = stage.build_model(params, 30)
    saved = read_checkpoint("cache/phase1/model.pt")
    assert saved["objective"] == "none"
    for k, v in init.state_dict().items():
        assert torch.equal(saved["state_dict"][k], v), k
    # ... while cvfp's one step did change them.
    assert np.isfinite(cv["train"]["total_loss"])


def test_transformer_off_skips_only_the_transformer(tmp_path, tiny_params, monkeypatch):
    """baselines.transformer=false (flows.compare's non-control arms): no GPT-2 key, every
    CVFP number unchanged."""
    import json

    from helpers.phase2 import cfg, tiny_project
    from tasks import materialize as mat_task
    from tasks import phase2 as p2_task

    tiny_project(tmp_path, tiny_params)
    monkeypatch.chdir(tmp_path)
    params = tiny_params.model_copy(
        update={
            "phase2": cfg(tiny_params, epochs=1),
            "baselines": tiny_params.baselines.model_copy(update={"transformer_n_positions": 8}),
        }
    )
    mat_task.run(params)
    out = {}
    for on in (True, False):
        params.baselines.transformer = on
        p2_task.run(params)
        out[on] = json.loads((tmp_path / "metrics/phase2.json").read_text())
    assert set(out[True]["baselines"]) == {"bigram", "transformer"} and set(
        out[False]["baselines"]
    ) == {"bigram"}
    assert out[False]["cvfp"] == out[True]["cvfp"]
    assert out[False]["ablations"] == out[True]["ablations"]
