"""metrics/phase2.json and the rows of plots/phase2_epochs.csv, written by the phase2 stage
(tasks/phase2.py) from cvfp.phase2.trainer.train_phase2 and cvfp.phase2.baselines.

val_* are selection records (val chose the epoch, the bigram's k); test_* are the reported
numbers, scored once with what val chose (SPEC 9).

Wall-clock seconds are kept out of the files: the trainers return them apart
(Phase2Result.train_seconds/epoch_seconds, BaselineResult.train_seconds) and the stage records
them in metrics/timing/phase2.json, so they are Optional here."""

from __future__ import annotations

from typing import Literal

from cvfp.params import Heads
from cvfp.runtime.metrics_base import Metrics


class StageRun(Metrics):
    first_epoch: int
    last_epoch: int
    best_epoch: int
    stopped_early: bool


class Stages(Metrics):
    single: StageRun
    per_block: StageRun | None = None  # heads: per_block continues after the single head


class CvfpPhase2(Metrics):
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    heads: Heads
    freeze_context: bool
    phase1_objective: str
    head_init: str  # "phase1" (reused, objective reconstruction) | "zero"
    context: Literal["cstar", "zero"]  # phase2.context (zero: the no-context control)
    # at the best epoch (chosen on val)
    train_loss: float
    val_loss: float
    train_ppl: float
    val_ppl: float
    train_acc: float
    val_acc: float
    # the reported numbers: test, once, at the best epoch
    test_loss: float
    test_ppl: float
    test_acc: float
    trainable_params: int
    train_seconds: float | None = None
    train_positions: int
    val_positions: int
    test_positions: int
    stages: Stages
    val_loss_per_block: list[float] | None = None  # heads: per_block


class Scores(Metrics):  # cvfp.phase2.baselines._metrics + _test; also the ablations
    val_loss: float  # selection record
    val_ppl: float
    val_acc: float
    test_loss: float  # reported
    test_ppl: float
    test_acc: float


class Bigram(Scores):
    trainable_params: int
    train_seconds: float | None = None
    k: float  # chosen on val from k_grid
    k_grid: list[float]
    val_loss_by_k: list[float]
    distinct_pairs: int


class Transformer(Scores):
    best_epoch: int
    train_loss: float
    train_ppl: float
    trainable_params: int
    target_params: int
    param_ratio: float
    train_seconds: float | None = None
    epochs: int
    n_embd: int
    n_layer: int
    n_head: int
    n_positions: int
    train_targets: int


class Baselines(Metrics):
    bigram: Bigram
    transformer: Transformer | None = None  # left out with baselines.transformer: false


class Ablations(Metrics):  # sanity checks: the trained model with C* replaced at evaluation
    zero_context: Scores
    shuffled_context: Scores


class Phase2Metrics(Metrics):
    cvfp: CvfpPhase2
    baselines: Baselines
    ablations: Ablations


class Phase2Epoch(Metrics):
    """One row of plots/phase2_epochs.csv (epoch 0: the reused head before any step)."""

    epoch: int
    train_loss: float | None
    val_loss: float | None
    train_ppl: float | None
    val_ppl: float | None
    train_acc: float | None
    val_acc: float | None
    seconds: float | None = None  # metrics/timing/phase2.json
