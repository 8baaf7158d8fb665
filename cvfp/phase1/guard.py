"""Phase 1 guards: fail on a diverged run with the step and the numbers. Pure checks of
numbers a pass or the checks produced (cvfp/phase1/trainer.py calls them; nothing here runs a pass).

Thresholds and the choice to keep going are `phase1.divergence` in params.yaml; the collapse
rules are cvfp/phase1/rules.py. The messages are error texts with plain numbers (the report
words the same rules in cvfp/analysis/report/rule_words.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Protocol

import torch

from cvfp.params import DivergenceParams, Phase1Params
from cvfp.phase1.rules import GLOBAL_ATTRACTOR, LOW_EFFECTIVE_RANK, ZERO_SOLUTION, Rule

log = logging.getLogger("cvfp")


class Phase1DivergedError(RuntimeError):
    """Phase 1 diverged and phase1.divergence.action is `fail`; nothing was saved."""


class PassNumbers(Protocol):
    """What the guard reads of one pass (cvfp.phase1.trainer.IterationStats)."""

    iteration: int
    cvfp_loss: float | None
    diversity_loss: float | None
    total_loss: float | None
    steps: int
    skipped_steps: int


def max_abs_weight(model: torch.nn.Module) -> float:
    """Largest |value| over the trainable parameters (inf/nan if any is not finite)."""
    worst = 0.0
    for q in model.parameters():
        if q.requires_grad and q.numel():
            m = float(q.detach().abs().max())
            if not math.isfinite(m):
                return m
            worst = max(worst, m)
    return worst


def iteration_problems(
    stats: PassNumbers, model: torch.nn.Module, d: DivergenceParams, train: bool
) -> list[str]:
    """What looks diverged after one Phase 1 iteration, with the numbers."""
    out = []
    for name in ("cvfp_loss", "diversity_loss", "total_loss"):
        v = getattr(stats, name)
        if v is None:
            continue
        if not math.isfinite(v):
            out.append(f"{name} is {v}")
        elif abs(v) > d.max_loss:
            out.append(f"|{name}| = {abs(v):.4g} > phase1.divergence.max_loss = {d.max_loss:g}")
    if stats.skipped_steps:
        out.append(f"{stats.skipped_steps} optimiser step(s) skipped on a non-finite loss")
    if train:
        w = max_abs_weight(model)
        if not math.isfinite(w) or w > d.max_weight:
            out.append(f"max |weight| = {w:.4g} > phase1.divergence.max_weight = {d.max_weight:g}")
    return out


def _rule_numbers(rule: Rule, values: Mapping[str, float], limits: Mapping[str, float]) -> str:
    """`global_attractor: mean_pairwise_l2 0.02 < 0.1 and ...` (the rule's ids and numbers)."""
    parts = [
        f"{c.stat} {values[c.stat]:.4g} {c.op} {c.limit_of(limits):g}"
        + (f" ({c.param})" if c.param else "")
        for c in rule.when
    ]
    return f"{rule.check}: {' and '.join(parts)}"


def collapse_problems(checks: Mapping[str, dict], d: DivergenceParams) -> list[str]:
    """Contexts collapsed, per the SPEC 4 checks of one split (cvfp.phase1.checks.run_checks)."""
    er, deg = checks["effective_rank"], checks["degeneracy"]
    out = []
    (rank,) = LOW_EFFECTIVE_RANK.when
    limits = {str(rank.param): d.min_effective_rank_ratio}
    if rank.warns(er["ratio"], d.min_effective_rank_ratio):
        out.append(_rule_numbers(LOW_EFFECTIVE_RANK, {rank.stat: er["ratio"]}, limits))
    for rule in (GLOBAL_ATTRACTOR, ZERO_SOLUTION):
        if deg[rule.check]:
            out.append(_rule_numbers(rule, deg, {}))
    if not math.isfinite(deg["mean_norm"]):
        out.append(f"mean context norm is {deg['mean_norm']}")
    return out


def act(problems: list[str], where: str, p: Phase1Params) -> None:
    """Raise Phase1DivergedError naming `where` and the numbers, or warn when
    phase1.divergence.action is `continue`."""
    if not problems:
        return
    msg = f"phase1 diverged at {where}: " + "; ".join(problems)
    if p.divergence.action == "fail":
        raise Phase1DivergedError(
            f"{msg}. Nothing was saved. Lower phase1.lr (now {p.lr:g}) or phase1.grad_clip (now "
            f"{p.grad_clip:g}), or set phase1.divergence.action=continue to keep the model anyway"
        )
    log.warning("%s (phase1.divergence.action=continue: keeping going)", msg)


def check_iteration(
    stats: PassNumbers, model: torch.nn.Module, p: Phase1Params, split: str, train: bool
) -> None:
    """Called by run_phase1 after every iteration."""
    act(
        iteration_problems(stats, model, p.divergence, train),
        f"{split} iteration {stats.iteration} (after {stats.steps} step(s) in it)",
        p,
    )


def check_saved(stats: PassNumbers, model: torch.nn.Module, p: Phase1Params) -> None:
    """Called by measure_saved_model after its pass without a step."""
    act(
        iteration_problems(stats, model, p.divergence, train=True),
        "the end of training (the saved model, one pass without a step)",
        p,
    )


def check_trained(model: torch.nn.Module, checks: Mapping[str, Mapping], p: Phase1Params) -> None:
    """Called by the phase1 stage after the checks, before anything is saved: weights and
    collapsed contexts of the trained model (any objective)."""
    w = max_abs_weight(model)
    if not math.isfinite(w) or w > p.divergence.max_weight:
        act(
            [
                f"max |weight| = {w:.4g} > phase1.divergence.max_weight = {p.divergence.max_weight:g}"
            ],
            "the end of training",
            p,
        )
    for split, c in checks.items():
        act(collapse_problems(c, p.divergence), f"the end of training ({split} contexts)", p)
