"""Phase 1 stage: train on data/split/train with `phase1.objective`, then the SPEC section 4
checks on train and val.

`cvfp` (SPEC 3): fixed-point learning (cvfp/phase1/trainer.py); `none` (SPEC 9, the control): no
optimizer step, the checks run on the initialised stack; `reconstruction` (SPEC 7):
cvfp/phase1/reconstruction.py, checks on its C*. metrics/phase1.json has the same keys for all
three. Under `torchrun -m tasks.phase1` (objective cvfp) the ranks split each iteration.
Outputs: cache/phase1/{model.pt,checks.json}, metrics/phase1.json, plots/phase1_*.csv
(train / val per iteration with each iteration's `kind`, the val convergence trials, spectrum)
(docs/reconstruction.md "What the stage writes", docs/scaling.md for torchrun).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cvfp.core.checkpoint import save_checkpoint
from cvfp.core.contexts import sigterm_raises
from cvfp.core.corpus import Corpus
from cvfp.core.model import CVFPModel
from cvfp.params import Params
from cvfp.phase1.checks import run_checks
from cvfp.phase1.embeddings import load_pretrained_embeddings
from cvfp.phase1.guard import check_trained
from cvfp.phase1.metrics import Phase1Checks, Phase1Metrics, Trials
from cvfp.phase1.reconstruction import HISTORY_COLUMNS, SplitStats, train_reconstruction
from cvfp.phase1.results import Phase1Result
from cvfp.phase1.trainer import run_phase1
from cvfp.runtime.csv_table import rows_to_columns, write_csv
from cvfp.runtime.utils import atomic_path, seed_everything, write_json

from .cli import cli, current_world, log
from .layout import (
    PHASE1_CHECKS,
    PHASE1_DIR,
    PHASE1_METRICS,
    PHASE1_MODEL,
    PHASE1_SPECTRUM_CSV,
    PHASE1_TRAIN_CSV,
    PHASE1_TRIALS_CSV,
    PHASE1_VAL_CSV,
    PHASE1_WORK,
    SPLIT,
    TOKENIZER,
)
from .outputs import StageOutputs
from .timing import record_durations
from .tokens import load_conversations, read_vocab_size


def build_model(params: Params, vocab_size: int) -> CVFPModel:
    mp = params.model
    weights = None
    if mp.embedding == "pretrained":
        weights = load_pretrained_embeddings(mp.pretrained_name, vocab_size, mp.embed_dim)
    return CVFPModel.from_params(mp, vocab_size, params.phase1.diversity.momentum, weights)


def summary(result: Phase1Result, checks: dict) -> dict:
    f = result.final
    er = checks["effective_rank"]
    out = {
        "converged": f.converged,
        "total": f.total,
        "convergence_rate": f.convergence_rate,
        "iterations": result.iterations,
        "stopped_early": result.stopped_early,
        # Optimizer steps actually taken, and whether the rate above is the structural one
        # of the first parallel pass (N - C tokens reproduce iteration 0; SPEC 3).
        "steps": result.steps,
        "converged_by_construction": result.converged_by_construction,
        "segment_starts": result.segments,
        "cvfp_loss": f.cvfp_loss,
        "diversity_loss": f.diversity_loss,
        "total_loss": f.total_loss,
        "skipped_steps": sum(h.skipped_steps for h in result.history),
        "effective_rank": er["effective_rank"],
        "effective_rank_ratio": er["ratio"],
        "actual_rank": er["actual_rank"],
        "degeneracy": checks["degeneracy"],
        "identity": {k: v for k, v in checks["identity"].items() if v is not None},
    }
    if "convergence" in checks:
        c = checks["convergence"]
        out["trials"] = {k: c[k] for k in Trials.model_fields}  # the keys phase1.json keeps
    return out


def run(params: Params) -> dict | None:
    """Returns the metrics (None on torchrun ranks other than 0, which write nothing).
    SIGTERM unwinds it like an error: work files and temporary outputs are removed."""
    with sigterm_raises():
        return _run(params)


def _run(params: Params) -> dict | None:
    out = StageOutputs("phase1", params)  # params.yaml now
    seed_everything(params.seed, params.deterministic, params.runtime.threads)
    world = current_world()
    p1, show = params.phase1, params.phase1.progress and world.is_main
    if world.distributed and p1.objective != "cvfp":
        raise ValueError(
            f"phase1.objective={p1.objective!r} runs in one process; under torchrun "
            f"use phase1.objective=cvfp, or run `python -m tasks.phase1`"
        )
    vocab_size = read_vocab_size(TOKENIZER)
    corpora = {
        s: Corpus.from_conversations(load_conversations(SPLIT / s), p1.context_reset)
        for s in ("train", "val")
    }
    model = build_model(params, vocab_size).to(world.device)
    world.broadcast_module(model)
    log.info(
        "phase1: %d train / %d val tokens in %d / %d conversations, objective=%s, mode=%s, reset=%s",
        corpora["train"].n_tokens,
        corpora["val"].n_tokens,
        corpora["train"].n_conversations,
        corpora["val"].n_conversations,
        p1.objective,
        p1.mode,
        p1.context_reset,
    )

    def measure(split: str):
        """A pass without a step over one split: the control's contexts, or the fixed-point
        convergence of the reconstruction-trained update (measured as for cvfp's val split)."""
        return run_phase1(
            model,
            corpora[split],
            p1,
            train=False,
            show_progress=show,
            work_dir=PHASE1_WORK,
            split=split,
        )

    recon = None
    t0 = time.perf_counter()
    if p1.objective == "cvfp":
        kw = dict(show_progress=show, world=world, work_dir=PHASE1_WORK)
        # training ends with a pass without a step: the saved model's own numbers
        results = {
            "train": run_phase1(model, corpora["train"], p1, train=True, split="train", **kw)
        }
        train_seconds = time.perf_counter() - t0
        results["val"] = run_phase1(model, corpora["val"], p1, train=False, split="val", **kw)
        if not world.is_main:
            return None
        model.cpu()  # the checks run on rank 0's CPU
        contexts: dict[str, Any] = {s: r.contexts for s, r in results.items()}
    elif p1.objective == "none":
        # The control arm (SPEC 9): no optimizer step; C* and the checks come from the
        # initialised stack, measured by the same passes as cvfp's val split.
        train_seconds = 0.0
        results = {s: measure(s) for s in ("train", "val")}
        contexts = {s: r.contexts for s, r in results.items()}
    else:
        recon = train_reconstruction(
            model, corpora["train"], corpora["val"], p1, seed=params.seed, show_progress=show
        )
        train_seconds = time.perf_counter() - t0
        contexts = recon.contexts  # zero-start sequential pass = C*
        # Fixed-point convergence of the trained update, measured as for cvfp's val split.
        results = {s: measure(s) for s in ("train", "val")}
    checks = {
        s: run_checks(
            model,
            corpora[s],
            contexts[s],
            params.checks,
            trials=(s == "val"),
            show_progress=show,
            chunk_tokens=p1.chunk_tokens,
            work_dir=PHASE1_WORK,
        )
        for s in results
    }
    check_trained(model, checks, p1)  # diverged or collapsed: fail before saving

    metrics: dict[str, Any] = {
        "objective": p1.objective,
        "max_iterations": p1.max_iterations,
        "min_iterations": p1.min_iterations,
        **{s: summary(results[s], checks[s]) for s in results},
    }
    extra: dict[str, Any] = {
        "objective": p1.objective,
        "history": {s: r.history_dicts() for s, r in results.items()},
    }
    checks_out = {s: {**checks[s], "history": results[s].history_dicts()} for s in results}
    # Wall-clock seconds are kept apart (metrics/timing/phase1.json): reruns give the same bytes.
    durations: dict = {
        "train_seconds": train_seconds,
        "iteration_seconds": {s: r.history_seconds() for s, r in results.items()},
    }
    if recon is not None:
        epochs = recon.history
        durations["epoch_seconds"] = recon.epoch_seconds
        metrics["epochs"] = len(recon.history)
        metrics["max_epochs"] = p1.reconstruction.epochs
        for s, st in recon.final.items():
            metrics[s].update(reconstruction_summary(st))
        metrics["train"]["skipped_steps"] = sum(h["skipped_steps"] for h in epochs)
        metrics["train"]["steps"] = sum(h["steps"] for h in epochs)
        extra["context_decoder"] = recon.decoder.state_dict()
        extra["history"]["reconstruction"] = epochs
        checks_out["reconstruction"] = {
            "history": epochs,
            "recon_weight": p1.reconstruction.recon_weight,
            "final": {s: reconstruction_summary(st) for s, st in recon.final.items()},
        }
    # A missing/unknown key fails here.
    metrics = Phase1Metrics.model_validate(metrics).to_dict()
    checks_out = Phase1Checks.model_validate(checks_out).to_dict()
    with atomic_path(PHASE1_DIR, out.before_replace) as tmp:
        tmp.mkdir()
        save_checkpoint(
            tmp / PHASE1_MODEL.name, model, params.record(), vocab_size=vocab_size, **extra
        )
        write_json(tmp / PHASE1_CHECKS.name, checks_out)
    write_json(PHASE1_METRICS, metrics, out.before_replace)
    record_durations("phase1", **durations)
    if recon is None:
        train_rows = _history_frame(results["train"], params.phase1.mode)
    else:
        train_rows = rows_to_columns(epochs, [c for c in HISTORY_COLUMNS if c != "seconds"])
    write_csv(PHASE1_TRAIN_CSV, train_rows, out.before_replace)
    write_csv(
        PHASE1_VAL_CSV, _history_frame(results["val"], params.phase1.mode), out.before_replace
    )
    losses = checks["val"].get("convergence", {}).get("losses", [])
    trials = {"pass": range(1, len(losses) + 1), "val_diff": losses}
    write_csv(PHASE1_TRIALS_CSV, trials, out.before_replace)
    spectrum: dict[str, Sequence] = {"index": range(params.model.context_dim)}
    for s in results:
        sv = checks[s]["effective_rank"]["singular_values"]
        spectrum[f"{s}_singular_value"] = [v / sv[0] if sv[0] else 0.0 for v in sv]
    write_csv(PHASE1_SPECTRUM_CSV, spectrum, out.before_replace)
    for s in results:
        ppl = (
            f", ppl {metrics[s]['ppl']:.2f}, acc {metrics[s]['acc']:.4f}"
            if recon is not None
            else ""
        )
        m = metrics[s]
        log.info(
            "phase1 %s: convergence %.1f%% (%d/%d), effective rank %.2f/%d%s",
            s,
            100 * m["convergence_rate"],
            m["converged"],
            m["total"],
            m["effective_rank"],
            params.model.context_dim,
            ppl,
        )
    return metrics


def reconstruction_summary(st: SplitStats) -> dict:
    """Per-split numbers of the reconstruction objective (zero-start pass after training)."""
    return {
        "token_loss": st.token_loss,
        "recon_loss": st.recon_loss,
        "loss": st.loss,
        "ppl": st.ppl,
        "acc": st.acc,
    }


def _history_frame(result, mode: str) -> dict[str, list]:
    """Per-iteration rows for the plots, with `kind`: what each iteration is (dvc plots and
    the report draw only `iteration` rows as a curve): 0 is the zero-start pass (nothing to
    converge to), and in parallel mode 1 reproduces iteration 0 except at the segment
    starts, for any model (converged by construction, SPEC 3)."""
    frame = rows_to_columns(result.history_dicts())
    by_construction = 1 if mode == "parallel" else None
    frame["kind"] = [
        "zero start" if it == 0 else "by construction" if it == by_construction else "iteration"
        for it in frame["iteration"]
    ]
    return frame


def main() -> None:
    cli("phase1", run, __doc__)


if __name__ == "__main__":
    main()
