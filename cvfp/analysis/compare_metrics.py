"""metrics/compare.json, written by `python -m flows.compare` / `python -m tasks.compare`
(tasks/compare.py) from cvfp.analysis.compare.summarise; docs/compare.md explains every number.

All differences are "row minus reference" in test loss (nats per token; lower is better), paired
seed by seed. Numbers only: the words and formats of the report are
cvfp/analysis/compare_words.py and cvfp/analysis/compare_report.py."""

from __future__ import annotations

from typing import Any, Literal

from cvfp.runtime.metrics_base import Metrics

Verdict = Literal["better", "worse", "equivalent", "inconclusive", "not enough seeds"]
VERDICTS: tuple[Verdict, ...] = (
    "better",
    "worse",
    "equivalent",
    "inconclusive",
    "not enough seeds",
)
# control: the reference; confirmatory: a Phase 1 arm in the Holm family (gets a verdict word);
# interval only: paired with the control (e.g. the no-context arm), no verdict word.
Role = Literal["control", "confirmatory", "interval only"]
Pair = tuple[float, float]


class SeedValues(Metrics):
    """The numbers the comparison reads from one experiment (metrics/phase{1,2}.json)."""

    test_loss: float | None
    test_ppl: float | None
    test_acc: float | None
    val_loss: float | None  # the selection record (best epoch), never compared
    best_epoch: int | None
    phase1_steps: int | None
    converged_by_construction: bool | None
    trial_final_diff: float | None
    trial_verdict: str | None
    effective_rank_val: float | None
    effective_rank_train: float | None
    bigram_test_loss: float | None
    bigram_test_ppl: float | None
    bigram_test_acc: float | None
    transformer_test_loss: float | None
    transformer_test_ppl: float | None
    transformer_test_acc: float | None
    zero_context_test_loss: float | None
    zero_context_test_ppl: float | None
    shuffled_context_test_loss: float | None
    shuffled_context_test_ppl: float | None
    test_conversations: int | None  # rows of metrics/phase2_test_conversations.csv


class SeedInterval(Metrics):
    """One seed: the paired difference on the test set and its bootstrap interval over test
    conversations (data noise, with the seed fixed)."""

    diff: float
    ci95: Pair | None  # None: the bootstrap is degenerate (every resample gives one value)
    conversations: int


class PairedStats(Metrics):
    """A paired comparison over seeds (scipy.stats / statsmodels). Optional everywhere: the
    control arm leaves them all out."""

    reference: str | None = None  # what is subtracted (the control arm, or the arm's own C*)
    paired_seeds: list[int] | None = None  # the seeds both finished
    n_seeds: int | None = None
    diffs: list[float] | None = None  # per paired seed, in paired_seeds order
    diff_mean: float | None = None  # nats/token
    diff_std: float | None = None  # sample std (ddof 1) of the per-seed differences
    ci95: Pair | None = None  # t interval of the mean difference (paired t-test)
    t: float | None = None
    df: int | None = None
    p: float | None = None  # paired t-test, two-sided
    p_holm: float | None = None  # Holm over the confirmatory arms (confirmatory only)
    p_equiv: float | None = None  # TOST against +-delta
    delta: float | None = None  # nats/token: ln(1 + compare.delta)
    seeds_needed: int | None = None  # seeds to detect delta with compare.power at diff_std
    rank_p: float | None = None  # Wilcoxon signed-rank; None when it cannot reach p < alpha
    reference_ppl: float | None = None  # exp(mean reference loss over the paired seeds)
    ppl_diff: float | None = None  # exp(mean loss) - reference_ppl
    ppl_ci95: Pair | None = None  # ci95 at the reference's perplexity: ref_ppl * (exp(ci) - 1)
    rel_change: float | None = None  # exp(diff_mean) - 1: relative change of perplexity
    rel_ci95: Pair | None = None
    bootstrap: dict[str, SeedInterval] | None = None  # seed -> interval over conversations
    verdict: Verdict | None = None  # confirmatory arms only


class Arm(PairedStats):
    role: Role
    overrides: dict[str, Any]
    seeds: list[int]  # seeds this arm finished
    failed_seeds: list[int]
    test_loss_mean: float | None
    test_loss_std: float | None
    test_ppl: float | None  # exp(test_loss_mean): the seeds' geometric-mean perplexity
    test_acc_mean: float | None
    test_acc_std: float | None
    phase1_steps: list[int | None]
    converged_by_construction: list[bool | None]
    trial_final_diff_mean: float | None
    trial_final_diff_std: float | None
    effective_rank_val_mean: float | None
    effective_rank_val_std: float | None
    per_seed: dict[str, SeedValues]


class Baseline(PairedStats):
    """Bigram / Transformer, paired with the CVFP model of the same experiments."""

    source_arm: str
    seeds: list[int]
    test_loss_mean: float | None
    test_ppl: float | None
    test_acc_mean: float | None
    per_seed: dict[str, float]  # seed -> test loss


class Ablation(PairedStats):
    """Evaluation-time sanity check: the trained head with C* zeroed or shuffled, paired with
    the same head on the true C*."""

    test_loss_mean: float | None
    test_ppl: float | None


class Failed(Metrics):
    arm: str
    seed: int
    name: str
    error: str | None


class ExperimentRow(Metrics):
    name: str
    arm: str
    seed: int
    status: Literal["ok", "failed", "missing"]
    seconds: float | None


class CompareMetrics(Metrics):
    control: str
    metric: Literal["test_loss"]
    unit: Literal["nats/token"]
    alpha: float
    power: float
    delta: float  # nats/token
    delta_relative: float  # compare.delta: the relative perplexity change it stands for
    confirmatory: list[str]  # the Holm family as run
    seeds: list[int]
    arms: dict[str, Arm]
    baselines: dict[str, Baseline]
    ablations: dict[str, dict[str, Ablation]]  # arm -> zero_context / shuffled_context
    failed: list[Failed]
    missing: list[str]
    experiments: list[ExperimentRow]
    overrides: dict[str, Any] | None = None
    generated_utc: str | None = None
    git_revision: str | None = None
