"""metrics/phase1.json and cache/phase1/checks.json, written by the phase1 stage
(tasks/phase1.py) from cvfp.phase1.trainer / cvfp.phase1.reconstruction results and cvfp.phase1.checks.run_checks.

Numbers and flags only: the report words and formats them (cvfp/analysis/report/). Wall-clock seconds
are kept out of both files (metrics/timing/phase1.json instead), so they are Optional here."""

from __future__ import annotations

from cvfp.params import Objective
from cvfp.runtime.metrics_base import Metrics


class Degeneracy(Metrics):  # cvfp.phase1.checks.degeneracy
    mean_pairwise_l2: float
    mean_pairwise_cosine: float
    global_attractor: bool
    mean_norm: float
    zero_solution: bool
    norm_std: float
    norm_min: float
    norm_max: float
    sparsity: float


class Identity(Metrics):  # cvfp.phase1.checks.identity_probes
    mean_deviation_from_mean: float
    not_near_zero: bool
    input_output_cosine: float
    identity_warning: bool
    different_token_output_similarity: float
    ignores_tokens_warning: bool
    # None (checks.json) or left out (phase1.json) when context and embedding dims differ
    context_token_cosine: float | None = None
    context_equals_token_warning: bool | None = None


class Trials(Metrics):
    """The val convergence trials' outcome (SPEC 4.4) as phase1.json keeps it."""

    verdict: str  # CONVERGING | CONVERGED | DIVERGING | UNSTABLE (cvfp.phase1.checks.verdict)
    final_diff: float
    passed: bool
    initial_loss: float
    final_loss: float
    reduction_percent: float
    std: float
    slope: float


class SplitMetrics(Metrics):
    """One split of metrics/phase1.json (tasks.phase1.summary)."""

    converged: int
    total: int
    convergence_rate: float
    iterations: int
    stopped_early: bool
    steps: int  # optimizer steps taken
    converged_by_construction: bool  # the first parallel pass's rate (SPEC 3): not a result
    segment_starts: int
    cvfp_loss: float | None  # None: no pass with a loss
    diversity_loss: float | None
    total_loss: float | None
    skipped_steps: int
    effective_rank: float
    effective_rank_ratio: float
    actual_rank: int
    degeneracy: Degeneracy
    identity: Identity
    trials: Trials | None = None  # val only
    # objective reconstruction only: the zero-start pass after training
    token_loss: float | None = None
    recon_loss: float | None = None
    loss: float | None = None
    ppl: float | None = None
    acc: float | None = None


class Phase1Metrics(Metrics):
    objective: Objective
    max_iterations: int
    min_iterations: int
    train_seconds: float | None = None  # metrics/timing/phase1.json
    train: SplitMetrics
    val: SplitMetrics
    epochs: int | None = None  # objective reconstruction: epochs trained
    max_epochs: int | None = None  # objective reconstruction: phase1.reconstruction.epochs


# ---------------------------------------------------------------- cache/phase1/checks.json


class EffectiveRank(Metrics):  # cvfp.phase1.checks.effective_rank
    effective_rank: float
    dim: int
    ratio: float
    percent: float
    actual_rank: int
    singular_values: list[float]  # descending


class ConvergenceTrials(Metrics):  # cvfp.phase1.checks.convergence_trials
    initial_loss: float
    final_loss: float
    reduction_percent: float
    std: float
    slope: float
    verdict: str
    losses: list[float]  # MSE between repeated pass k and pass k-1
    trials: int
    final_diff: float
    passed: bool


class IterationRow(Metrics):  # cvfp.phase1.trainer.IterationStats
    iteration: int
    converged: int
    total: int
    convergence_rate: float
    cvfp_loss: float | None  # iteration 0: no loss
    diversity_loss: float | None
    total_loss: float | None
    steps: int
    skipped_steps: int
    seconds: float | None = None


class SplitChecks(Metrics):
    effective_rank: EffectiveRank
    degeneracy: Degeneracy
    identity: Identity
    convergence: ConvergenceTrials | None = None  # val only
    history: list[IterationRow]


class ReconstructionEpoch(Metrics):  # cvfp.phase1.reconstruction.HISTORY_COLUMNS
    epoch: int
    train_token_loss: float
    train_recon_loss: float
    train_loss: float
    train_ppl: float
    train_acc: float
    val_token_loss: float
    val_recon_loss: float
    val_loss: float
    val_ppl: float
    val_acc: float
    steps: int
    skipped_steps: int
    seconds: float | None = None


class ReconstructionFinal(Metrics):  # tasks.phase1.reconstruction_summary
    token_loss: float
    recon_loss: float
    loss: float
    ppl: float
    acc: float


class ReconstructionFinals(Metrics):
    train: ReconstructionFinal
    val: ReconstructionFinal


class ReconstructionChecks(Metrics):
    history: list[ReconstructionEpoch]
    recon_weight: float
    final: ReconstructionFinals


class Phase1Checks(Metrics):
    train: SplitChecks
    val: SplitChecks
    reconstruction: ReconstructionChecks | None = None  # objective reconstruction only
