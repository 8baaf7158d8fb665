"""Phase 1 guards: fail on a diverged run with the step and the numbers, and measure the
model that is saved (a training pass measures the model *before* its own step).

Thresholds and the choice to keep going are `phase1.divergence` in params.yaml.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from .check_rules import GLOBAL_ATTRACTOR, LOW_EFFECTIVE_RANK, ZERO_SOLUTION

log = logging.getLogger("cvfp")


class Phase1DivergedError(RuntimeError):
    """Phase 1 diverged and phase1.divergence.action is `fail`; nothing was saved."""


def max_abs_weight(model) -> float:
    """Largest |value| over the trainable parameters (inf/nan if any is not finite)."""
    worst = 0.0
    for q in model.parameters():
        if q.requires_grad and q.numel():
            m = float(q.detach().abs().max())
            if not math.isfinite(m):
                return m
            worst = max(worst, m)
    return worst


def iteration_problems(stats, model, d, train: bool) -> list[str]:
    """What looks diverged after one Phase 1 iteration (IterationStats), with the numbers."""
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


def collapse_problems(checks: dict, d) -> list[str]:
    """Contexts collapsed, per the SPEC 4 checks of one split (cvfp.checks.run_checks)."""
    er, deg = checks["effective_rank"], checks["degeneracy"]
    out = []
    (rank,) = LOW_EFFECTIVE_RANK.when
    limits = {rank.param: d.min_effective_rank_ratio}
    if rank.warns(er["ratio"], d.min_effective_rank_ratio):
        out.append(LOW_EFFECTIVE_RANK.message({rank.stat: er["text"]}, limits))
    for rule in (GLOBAL_ATTRACTOR, ZERO_SOLUTION):
        if deg[rule.check]:
            out.append(rule.message(deg))
    if not math.isfinite(deg["mean_norm"]):
        out.append(f"mean context norm is {deg['mean_norm']}")
    return out


def act(problems: list[str], where: str, p) -> None:
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


def check_iteration(stats, model, p, split: str, train: bool) -> None:
    """Called by run_phase1 after every iteration."""
    act(
        iteration_problems(stats, model, p.divergence, train),
        f"{split} iteration {stats.iteration} (after {stats.steps} step(s) in it)",
        p,
    )


def check_trained(model, checks: dict[str, dict], p) -> None:
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


@torch.no_grad()
def measure_saved_model(model, corpus, result, p, world=None, work_dir=None):
    """One more pass without a step after training: its convergence, losses and contexts are
    those of the model that is saved, and become result.final (result.saved); the history
    keeps the training passes. No-op when the last pass took no step."""
    from .contexts import rows_of
    from .distributed import SINGLE
    from .diversity import make_diversity
    from .phase1 import (
        IterationStats,
        _context_stores,
        converged_mask,
        parallel_iteration,
        sequential_iteration,
    )

    last = result.history[-1]
    if last.steps == 0:
        return result
    world = world or SINGLE
    model.eval()
    diversity = make_diversity(p.diversity.kind, p.diversity.momentum)
    n = corpus.n_tokens
    t0 = time.perf_counter()
    with _context_stores((n, model.context_dim), work_dir, world, "saved") as (_, out):
        if p.mode == "parallel":
            _, losses, _, _, conv = parallel_iteration(
                model, corpus, result.contexts, p, diversity, None, None, out, world
            )
            world.barrier()
        else:
            prev = result.contexts[0:n]
            contexts, losses, _, _ = sequential_iteration(
                model, corpus, prev, prev[corpus.last_index()], p, diversity, None
            )
            out[0:n] = contexts
            conv = int(converged_mask(contexts, prev, p.convergence_threshold).sum())
        result.contexts = rows_of(out)
    result.saved = IterationStats(
        last.iteration, conv, n, conv / n, *losses, 0, 0, time.perf_counter() - t0
    )
    log.info("phase1 saved model (pass without a step): %s", result.saved.line())
    act(
        iteration_problems(result.saved, model, p.divergence, train=True),
        "the end of training (the saved model, one pass without a step)",
        p,
    )
    return result
