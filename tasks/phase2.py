"""Phase 2 stage: context-fixed token prediction on C*, baselines and context ablations.

Inputs: cache/phase1/model.pt, cache/cstar/, data/split/{train,val}, data/tokenizer.
Under `torchrun --nproc_per_node=N -m tasks.phase2` the ranks split every batch
(cvfp/phase2.py Trainer); rank 0 then runs the ablations and baselines and writes outputs.

Outputs: cache/phase2/model.pt (best val checkpoint; per-block heads under `block_heads`),
metrics/phase2.json (cvfp, baselines.{bigram,transformer}, ablations), plots/phase2_epochs.csv.

The Phase 1 checkpoint says which objective trained it. After `reconstruction` the token
head is already trained together with these contexts, so Phase 2 starts from it (warm
start: epoch 0 is that model, evaluated before any step, and counts as a candidate for the
best epoch; docs/reconstruction.md). After `cvfp` the head is the zero-initialised one.
"""

from __future__ import annotations

import contextlib

import pandas as pd

from cvfp.baselines import bigram_baseline, context_ablations, transformer_baseline
from cvfp.checkpoint import read_checkpoint
from cvfp.corpus import Corpus
from cvfp.cstar import SPLITS, load_phase1_model, open_cstar
from cvfp.metrics.phase2 import Phase2Epoch, Phase2Metrics
from cvfp.params import Params
from cvfp.phase2 import PositionData, train_phase2
from cvfp.utils import atomic_path, seed_everything, write_json

from .common import (
    cli,
    current_world,
    load_conversations,
    log,
    read_vocab_size,
    record_durations,
    split_durations,
)
from .layout import (
    CSTAR_DIR,
    PHASE1_MODEL,
    PHASE2_DIR,
    PHASE2_EPOCHS_CSV,
    PHASE2_METRICS,
    PHASE2_MODEL,
    SPLIT,
    TOKENIZER,
)

EPOCH_COLUMNS = list(Phase2Epoch.model_fields)  # plots/phase2_epochs.csv (+ seconds)


def run(params: Params) -> dict | None:
    """Returns the metrics (None on torchrun ranks other than 0, which write nothing)."""
    seed_everything(params.seed, params.deterministic, params.runtime.threads)
    world = current_world()
    p2, show = params.phase2, params.phase1.progress
    vocab_size = read_vocab_size(TOKENIZER)
    model = load_phase1_model(
        PHASE1_MODEL, params.model, vocab_size, params.phase1.diversity.momentum
    ).to(world.device)
    objective = read_checkpoint(PHASE1_MODEL).get("objective", "cvfp")
    warm_start = objective == "reconstruction"  # its head was trained with these contexts
    corpora = {
        s: Corpus.from_conversations(load_conversations(SPLIT / s), params.phase1.context_reset)
        for s in SPLITS
    }
    data = {
        s: PositionData.from_corpus(c, open_cstar(CSTAR_DIR, s, c, params.model.context_dim))
        for s, c in corpora.items()
    }
    log.info(
        "phase2: %d train / %d val positions, heads=%s, freeze_context=%s, phase1 objective=%s "
        "(head: %s)",
        len(data["train"]),
        len(data["val"]),
        p2.heads,
        p2.freeze_context,
        objective,
        "reused from phase1" if warm_start else "zero-initialised",
    )

    # Best-so-far checkpoints go to a temporary directory that replaces cache/phase2 only when
    # the stage succeeds: a failed or killed run leaves the previous model and its metrics.
    with atomic_path(PHASE2_DIR) if world.is_main else contextlib.nullcontext() as out:
        if out is not None:
            out.mkdir()
        result = train_phase2(
            model,
            data["train"],
            data["val"],
            p2,
            seed=params.seed,
            checkpoint=None if out is None else out / PHASE2_MODEL.name,
            params_dict=params.model_dump(),
            extra={"vocab_size": vocab_size},
            show_progress=show,
            warm_start=warm_start,
            world=world,
        )
        if out is None:  # torchrun rank > 0: rank 0 writes
            return None
        model.cpu()
        best = result.best
        epochs_run = sum(
            1 for r in result.history if r["epoch"] > 0
        )  # epoch 0 = warm start, no step
        cvfp = {
            "best_epoch": result.best_epoch,
            "epochs_run": epochs_run,
            "stopped_early": result.stopped_early,
            "heads": p2.heads,
            "freeze_context": p2.freeze_context,
            "phase1_objective": objective,
            "head_init": "phase1" if warm_start else "zero",
            **{k: best[k] for k in EPOCH_COLUMNS[1:-1]},
            "trainable_params": result.trainable_params,
            "train_seconds": result.train_seconds,
            "train_positions": len(data["train"]),
            "val_positions": len(data["val"]),
            "stages": result.stages,
        }
        if "val_loss_per_block" in best:
            cvfp["val_loss_per_block"] = best["val_loss_per_block"]

        ablations = context_ablations(model, data["val"], p2.batch_size, params.seed)
        bp = params.baselines
        baselines = {
            "bigram": bigram_baseline(corpora["train"], corpora["val"], vocab_size, bp.bigram_k)
        }
        if bp.transformer:  # false: flows.compare's non-control arms (the control's is reused)
            baselines["transformer"] = transformer_baseline(
                corpora["train"],
                corpora["val"],
                vocab_size,
                bp,
                p2,
                result.trainable_params,
                epochs_run,
                params.seed,
                show,
            )
        # A missing/unknown key fails here. Wall-clock seconds go to
        # metrics/timing/phase2.json, so reruns give the same bytes.
        metrics, t_metrics = split_durations(
            Phase2Metrics.model_validate(
                {"cvfp": cvfp, "baselines": baselines, "ablations": ablations}
            ).to_dict()
        )
        epochs, t_epochs = split_durations(
            [Phase2Epoch.model_validate(r).to_dict() for r in result.history]
        )
        record_durations("phase2", metrics=t_metrics, epochs=t_epochs)
    write_json(PHASE2_METRICS, metrics)
    with atomic_path(PHASE2_EPOCHS_CSV) as tmp:
        pd.DataFrame(epochs, columns=[c for c in EPOCH_COLUMNS if c != "seconds"]).to_csv(
            tmp, index=False
        )
    log.info(
        "phase2: val ppl cvfp %.2f (epoch %d) | bigram %.2f | transformer %s | "
        "zero C* %.2f | shuffled C* %.2f",
        cvfp["val_ppl"],
        cvfp["best_epoch"],
        baselines["bigram"]["val_ppl"],
        f"{baselines['transformer']['val_ppl']:.2f}" if "transformer" in baselines else "skipped",
        ablations["zero_context"]["val_ppl"],
        ablations["shuffled_context"]["val_ppl"],
    )
    return metrics


def main() -> None:
    cli("phase2", run, __doc__)


if __name__ == "__main__":
    main()
