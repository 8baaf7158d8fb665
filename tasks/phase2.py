"""Phase 2 stage: context-fixed token prediction on C*, baselines and context ablations.

Inputs: cache/phase1/model.pt, cache/cstar/, data/split/{train,val,test}, data/tokenizer.
Under `torchrun --nproc_per_node=N -m tasks.phase2` the ranks split every batch
(cvfp/phase2/trainer.py Trainer); rank 0 then runs the test pass, ablations and baselines and
writes outputs.

Val chooses, test reports (SPEC 9): the best epoch (CVFP, Transformer) and the bigram's k
are chosen on val; training never sees test. Test is scored once, after training, with
the chosen model, and its per-target nats are summed per test conversation.

Outputs: cache/phase2/model.pt (best val checkpoint; per-block heads under `block_heads`),
metrics/phase2.json (cvfp, baselines.{bigram,transformer}, ablations: val_* = selection
records, test_* = the reported numbers), metrics/phase2_test_conversations.csv (one row
per test conversation: targets and summed nats per model), plots/phase2_epochs.csv.

phase2.context: zero is the no-context control (SPEC 9): C* is replaced by zeros in
training and evaluation, and the head starts from zero even after objective
reconstruction.

The Phase 1 checkpoint says which objective trained it. After `reconstruction` the token
head is already trained together with these contexts, so Phase 2 starts from it (warm
start: epoch 0 is that model, evaluated before any step, and counts as a candidate for the
best epoch; docs/reconstruction.md). After `cvfp` the head is the zero-initialised one.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from cvfp.core.checkpoint import Checkpointer, read_checkpoint, require_space
from cvfp.core.corpus import Corpus
from cvfp.materialize.cstar import SPLITS, load_phase1_model, open_cstar
from cvfp.params import Params
from cvfp.phase2.baselines import bigram_baseline, context_ablations, transformer_baseline
from cvfp.phase2.data import PositionData
from cvfp.phase2.evaluation import nats_stats, per_conversation, position_nats
from cvfp.phase2.metrics import Phase2Epoch, Phase2Metrics
from cvfp.phase2.trainer import train_phase2
from cvfp.runtime.csv_table import rows_to_columns, write_csv
from cvfp.runtime.utils import atomic_path, seed_everything, write_json

from .cli import cli, current_world, log
from .layout import (
    CSTAR_DIR,
    PHASE1_MODEL,
    PHASE2_DIR,
    PHASE2_EPOCHS_CSV,
    PHASE2_METRICS,
    PHASE2_MODEL,
    PHASE2_TEST_CSV,
    SPLIT,
    TOKENIZER,
)
from .outputs import StageOutputs
from .timing import record_durations
from .tokens import load_conversation_ids, load_conversations, read_vocab_size

EPOCH_COLUMNS = list(Phase2Epoch.model_fields)  # plots/phase2_epochs.csv (+ seconds)
# metrics/phase2_test_conversations.csv: one row per test conversation (docs/phase2.md)
TEST_CSV_COLUMNS = ["conversation_id", "targets", "cvfp_nats", "bigram_nats", "transformer_nats"]


def run(params: Params) -> dict | None:
    """Returns the metrics (None on torchrun ranks other than 0, which write nothing)."""
    check = StageOutputs("phase2", params).before_replace  # params.yaml now
    seed_everything(params.seed, params.deterministic, params.runtime.threads)
    world = current_world()
    p2, show = params.phase2, params.phase1.progress
    vocab_size = read_vocab_size(TOKENIZER)
    model = load_phase1_model(
        PHASE1_MODEL, params.model, vocab_size, params.phase1.diversity.momentum
    ).to(world.device)
    objective = read_checkpoint(PHASE1_MODEL).get("objective", "cvfp")
    # After reconstruction the head was trained with these contexts: reuse it, unless this is
    # the no-context control, which starts from a zero head like any model trained from scratch.
    warm_start = objective == "reconstruction" and p2.context == "cstar"
    if p2.context == "zero":
        torch.nn.init.zeros_(model.token_output.weight)
        torch.nn.init.zeros_(model.token_output.bias)
    corpora = {}
    for s in SPLITS:
        convs = load_conversations(SPLIT / s)
        corpora[s] = Corpus.from_conversations(convs, params.phase1.context_reset)
        if s == "test":  # the per-conversation table's rows; the other splits' arrays go now
            test_lengths = [len(c) for c in convs]
        del convs  # 8 bytes per token while training (issue 26)
    in_memory = params.orchestration.cstar_in_memory_mb << 20  # memory only: the same bytes
    data = {
        s: PositionData.from_corpus(
            c, open_cstar(CSTAR_DIR, s, c, params.model.context_dim, in_memory)
        )
        for s, c in corpora.items()
    }
    if p2.context == "zero":
        data = {s: d.ablated("zero") for s, d in data.items()}
    log.info(
        "phase2: %d train / %d val / %d test positions, context=%s, heads=%s, "
        "freeze_context=%s, phase1 objective=%s (head: %s)",
        len(data["train"]),
        len(data["val"]),
        len(data["test"]),
        p2.context,
        p2.heads,
        p2.freeze_context,
        objective,
        "reused from phase1" if warm_start else "zero-initialised",
    )

    # Best-so-far checkpoints go to a temporary directory that replaces cache/phase2 only when
    # the stage succeeds: a failed or killed run leaves the previous model and its metrics.
    with atomic_path(PHASE2_DIR, check) if world.is_main else contextlib.nullcontext() as out:
        if out is not None:
            out.mkdir()
            # the best-so-far checkpoint, and its replacement while it is written
            require_space(out / PHASE2_MODEL.name, model, copies=2 + (p2.heads == "per_block"))
        # Rank 0 writes each new best state (the trainer calls the checkpointer).
        checkpointer = (
            None
            if out is None
            else Checkpointer(out / PHASE2_MODEL.name, params.record(), {"vocab_size": vocab_size})
        )
        result = train_phase2(
            model,
            data["train"],
            data["val"],
            p2,
            seed=params.seed,
            checkpointer=checkpointer,
            show_progress=show,
            warm_start=warm_start,
            world=world,
        )
        if out is None:  # torchrun rank > 0: rank 0 writes
            return None
        model.cpu()
        # Test, once, with the model of the epoch chosen on val.
        test_nats, test_hits = position_nats(model, data["test"], p2.batch_size)
        test = nats_stats(test_nats, test_hits)
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
            "context": p2.context,
            **{k: best[k] for k in EPOCH_COLUMNS[1:-1]},
            "test_loss": test.loss,
            "test_ppl": test.ppl,
            "test_acc": test.acc,
            "trainable_params": result.trainable_params,
            "train_positions": len(data["train"]),
            "val_positions": len(data["val"]),
            "test_positions": len(data["test"]),
            "stages": result.stages,
        }
        if "val_loss_per_block" in best:
            cvfp["val_loss_per_block"] = best["val_loss_per_block"]

        ablations = context_ablations(model, data["val"], data["test"], p2.batch_size, params.seed)
        bp = params.baselines
        runs = {
            "bigram": bigram_baseline(
                corpora["train"], corpora["val"], corpora["test"], vocab_size, bp.bigram_k_grid
            )
        }
        if bp.transformer:  # false: flows.compare's non-control arms (the control's is reused)
            runs["transformer"] = transformer_baseline(
                corpora["train"],
                corpora["val"],
                corpora["test"],
                vocab_size,
                bp,
                p2,
                result.trainable_params,
                epochs_run,
                params.seed,
                show,
            )
        baselines = {name: r.metrics for name, r in runs.items()}
        nats = {"cvfp_nats": test_nats, **{f"{n}_nats": r.test_nats for n, r in runs.items()}}
        # A missing/unknown key fails here.
        metrics = Phase2Metrics.model_validate(
            {"cvfp": cvfp, "baselines": baselines, "ablations": ablations}
        ).to_dict()
        epochs = [Phase2Epoch.model_validate(r).to_dict() for r in result.history]
        # Wall-clock seconds, returned apart by the trainers, go to metrics/timing/phase2.json
        # (in the files' shape), so reruns give the same bytes.
        record_durations(
            "phase2",
            metrics={
                "cvfp": {"train_seconds": result.train_seconds},
                "baselines": {n: {"train_seconds": r.train_seconds} for n, r in runs.items()},
            },
            epochs=[{"seconds": s} for s in result.epoch_seconds],
        )
        lengths = [n for n in test_lengths if n]  # Corpus keeps the non-empty rows
        per_conv = per_conversation(
            data["test"].positions,
            np.concatenate([[0], np.cumsum(lengths)]),
            [
                i
                for i, n in zip(load_conversation_ids(SPLIT / "test"), test_lengths, strict=True)
                if n
            ],
            nats,
        )
    write_json(PHASE2_METRICS, metrics, check)
    write_test_conversations(per_conv, check)
    columns = [c for c in EPOCH_COLUMNS if c != "seconds"]
    write_csv(PHASE2_EPOCHS_CSV, rows_to_columns(epochs, columns), check)
    log.info(
        "phase2: test ppl cvfp %.2f (epoch %d chosen on val, val ppl %.2f) | bigram %.2f (k %g) "
        "| transformer %s | sanity checks: zero C* %.2f, shuffled C* %.2f",
        cvfp["test_ppl"],
        cvfp["best_epoch"],
        cvfp["val_ppl"],
        baselines["bigram"]["test_ppl"],
        baselines["bigram"]["k"],
        f"{baselines['transformer']['test_ppl']:.2f}" if "transformer" in baselines else "skipped",
        ablations["zero_context"]["test_ppl"],
        ablations["shuffled_context"]["test_ppl"],
    )
    return metrics


def write_test_conversations(columns: dict[str, list], before_replace=None) -> None:
    """metrics/phase2_test_conversations.csv: one row per test conversation; a model that did
    not run (transformer with baselines.transformer: false) has an empty column."""
    n = len(columns["conversation_id"])
    write_csv(
        PHASE2_TEST_CSV, {c: columns.get(c, [None] * n) for c in TEST_CSV_COLUMNS}, before_replace
    )


def main() -> None:
    cli("phase2", run, __doc__)


if __name__ == "__main__":
    main()
