"""The report's warnings: every failed or warning check, each message carrying its number
and threshold. The Phase 1 check rules come from cvfp/phase1/rules.py, their words from
rule_words.py."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from cvfp.analysis.formats import fmt_int, fmt_num, fmt_ppl
from cvfp.analysis.report.headline import iterations_words
from cvfp.analysis.report.inputs import ReportInputs
from cvfp.analysis.report.rule_words import convergence_words, effective_rank_words, message
from cvfp.phase1.rules import (
    GLOBAL_ATTRACTOR,
    IDENTITY_PROBES,
    LOW_CONVERGENCE,
    LOW_EFFECTIVE_RANK,
    TRIALS,
    ZERO_SOLUTION,
)


@dataclass
class Finding:
    """One failed or warning check, with the number that triggered it."""

    area: str
    check: str
    message: str


def collect_findings(inp: ReportInputs) -> list[Finding]:
    return [
        *_data(inp),
        *_phase1_split(inp, "train"),
        *_phase1_split(inp, "val"),
        *_phase2(inp),
    ]


def _data(inp: ReportInputs) -> Iterator[Finding]:
    d = inp.data
    for sp in ("val", "test"):  # the held-out splits
        ok, unexpected = getattr(d, f"{sp}_subset_ok"), getattr(d, f"unexpected_{sp}_tokens")
        if not ok:
            yield Finding(
                "data",
                f"{sp}_subset_ok",
                f"{sp}_subset_ok is false: {unexpected} {sp} token(s) do not occur in train",
            )
        elif unexpected:
            yield Finding(
                "data", f"unexpected_{sp}_tokens", f"{unexpected} {sp} token(s) not in train"
            )
    gx_stats = inp.gx.get("statistics", {})
    if inp.gx.get("success") is False or not d.gx_success:
        failed = [
            r.get("expectation_config", {}).get("type", "?")
            for r in inp.gx.get("results", [])
            if not r.get("success", True)
        ]
        yield Finding(
            "data",
            "great_expectations",
            f"Great Expectations suite failed: {gx_stats.get('successful_expectations', '?')}/"
            f"{gx_stats.get('evaluated_expectations', '?')} expectations passed"
            + (f" (failed: {', '.join(failed)})" if failed else ""),
        )


def _phase1_split(inp: ReportInputs, split: str) -> Iterator[Finding]:
    m, params = getattr(inp.phase1, split), inp.params
    area = f"phase1 {split}"
    recon = inp.objective == "reconstruction"
    if LOW_CONVERGENCE.warns({"convergence_rate": m.convergence_rate}, params):
        after = (
            f"after {m.iterations} passes without training (objective reconstruction)"
            if recon
            else f"after {iterations_words(inp.phase1.model_dump())} iterations"
        )
        conv = convergence_words(inp, split)
        text = message(LOW_CONVERGENCE, {"convergence_rate": conv}, params)
        yield Finding(area, LOW_CONVERGENCE.check, f"{text} {after}")
    if LOW_EFFECTIVE_RANK.warns({"effective_rank_ratio": m.effective_rank_ratio}, params):
        er = effective_rank_words(inp, split)
        text = message(LOW_EFFECTIVE_RANK, {"effective_rank_ratio": er}, params)
        yield Finding(area, LOW_EFFECTIVE_RANK.check, text)
    if m.skipped_steps:
        yield Finding(
            area, "skipped_steps", f"{m.skipped_steps} optimizer step(s) skipped (NaN/Inf loss)"
        )
    losses = ("cvfp_loss", "diversity_loss", "total_loss")
    for k in losses + (("token_loss", "recon_loss") if recon else ()):
        v = getattr(m, k)
        if v is not None and not math.isfinite(v):
            yield Finding(area, k, f"final {k} is {v}")
    for rule, stats in (
        (GLOBAL_ATTRACTOR, m.degeneracy.model_dump()),
        (ZERO_SOLUTION, m.degeneracy.model_dump()),
        *((r, m.identity.model_dump()) for r in IDENTITY_PROBES),
    ):
        if rule.flagged(stats[rule.check]):
            yield Finding(area, rule.check, message(rule, stats, params))
    t = m.trials
    if t is not None:
        if not t.passed:
            text = message(TRIALS, {"final_diff": t.final_diff}, params)
            yield Finding(area, TRIALS.check, f"{text} (verdict {t.verdict})")
        if t.verdict in ("DIVERGING", "UNSTABLE"):
            yield Finding(
                area,
                "verdict",
                f"trial verdict {t.verdict}: slope {fmt_num(t.slope)}, std {fmt_num(t.std)}",
            )


def _phase2(inp: ReportInputs) -> Iterator[Finding]:
    cv, bl = inp.phase2.cvfp, inp.phase2.baselines
    ppl = cv.val_ppl
    if not math.isfinite(ppl):
        yield Finding("phase2", "val_ppl", f"CVFP val perplexity is {ppl}")
    big = bl.bigram.val_ppl
    if ppl > big:
        yield Finding(
            "phase2",
            "worse_than_bigram",
            f"CVFP val perplexity {fmt_ppl(ppl)} is worse than the bigram baseline's "
            f"{fmt_ppl(big)}",
        )
    # If removing C* does not hurt, the head is not using the fixed contexts.
    ab = inp.phase2.ablations
    for name, label, a in (
        ("zero_context", "zero C*", ab.zero_context.val_ppl),
        ("shuffled_context", "shuffled C*", ab.shuffled_context.val_ppl),
    ):
        if a <= ppl:
            yield Finding(
                "phase2",
                f"ablation_{name}",
                f"{label} val perplexity {fmt_ppl(a)} is not worse than with C* "
                f"({fmt_ppl(ppl)}): the model does not use the fixed contexts",
            )
    tr, tol = bl.transformer, inp.params.baselines.param_tolerance
    if tr is not None and abs(tr.param_ratio - 1) > tol:
        yield Finding(
            "phase2",
            "param_tolerance",
            f"Transformer baseline has {fmt_int(tr.trainable_params)} trainable parameters vs "
            f"CVFP's {fmt_int(cv.trainable_params)} (ratio {tr.param_ratio:.3f}, tolerance "
            f"{tol:.0%})",
        )
