"""metrics/summary.json: a run's headline numbers (tasks/summary.py), the one file DVC reads
as metrics. Every key is always there; None when the run did not measure it."""

from __future__ import annotations

from cvfp.runtime.metrics_base import Metrics


class SummaryPpl(Metrics):  # val perplexity
    cvfp: float | None
    bigram: float | None
    transformer: float | None
    zero_c: float | None  # CVFP's Phase 2 head with zero C* (ablation)
    shuffled_c: float | None


class SummaryTestPpl(Metrics):  # test perplexity (null until Phase 2 records the test split)
    cvfp: float | None
    transformer: float | None
    bigram: float | None


class SummaryAcc(Metrics):  # val accuracy
    cvfp: float | None
    bigram: float | None
    transformer: float | None


class SummaryPhase1(Metrics):
    objective: str | None
    steps_train: int | None
    steps_val: int | None
    iterations: int | None
    conv_train: float | None
    conv_val: float | None
    er_train: float | None
    er_val: float | None
    verdict: str | None


class SummaryMetrics(Metrics):
    test_ppl: SummaryTestPpl  # first: the research view's columns (README)
    ppl: SummaryPpl
    acc: SummaryAcc
    p2_best_epoch: int | None
    p1: SummaryPhase1
    warnings: int | None  # the report's failed or warning checks
