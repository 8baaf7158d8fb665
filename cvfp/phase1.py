"""Phase 1: CVFP fixed-point learning (SPEC section 3).

    iteration 0: sequential pass from a zero context, no gradient -> previous
    iteration k: contexts = f(previous shifted by one, embeds)  (parallel), or one
                 optimiser step per position (sequential); every pass starts from the
                 previous pass's final context (carryover; a zero reset destroys learning)
    loss = (1 - w) * MSE(contexts, previous) + w * diversity(contexts)

`run_phase1(..., train=False)` runs the same loop without optimiser steps: that is how
validation convergence is measured, so train and val share one implementation.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from .corpus import Corpus, PositionSchedule, sequential_pass, warn_if_large
from .diversity import make_diversity
from .utils import progress

log = logging.getLogger("cvfp")


@dataclass
class IterationStats:
    iteration: int
    converged: int
    total: int
    convergence_rate: float
    cvfp_loss: float | None
    diversity_loss: float | None
    total_loss: float | None
    steps: int
    skipped_steps: int
    seconds: float

    def line(self) -> str:
        loss = "" if self.total_loss is None else (
            f" cvfp={self.cvfp_loss:.6f} div={self.diversity_loss:.6f} total={self.total_loss:.6f}")
        return (f"iter {self.iteration}: converged {100 * self.convergence_rate:.1f}% "
                f"({self.converged}/{self.total}){loss} steps={self.steps} "
                f"skipped={self.skipped_steps} {self.seconds:.2f}s")


@dataclass
class Phase1Result:
    contexts: torch.Tensor            # [N, Dc] final contexts (detached)
    final_contexts: torch.Tensor      # [C, Dc] last context per conversation (carryover state)
    history: list[IterationStats] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def iterations(self) -> int:       # training iterations run (iteration 0 not counted)
        return len(self.history) - 1

    @property
    def final(self) -> IterationStats:
        return self.history[-1]

    def history_dicts(self) -> list[dict]:
        return [asdict(h) for h in self.history]


def converged_mask(contexts: torch.Tensor, previous: torch.Tensor, threshold: float) -> torch.Tensor:
    return ((contexts - previous) ** 2).mean(dim=1) < threshold


def _combine(cvfp, div, w):
    return (1 - w) * cvfp + w * div


def _step(loss, optimizer, params, clip) -> bool:
    """One optimiser step; NaN/Inf losses are skipped (returns False) instead of poisoning weights."""
    if not torch.isfinite(loss):
        return False
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    return True


def parallel_iteration(model, corpus: Corpus, previous: torch.Tensor, p, diversity,
                       optimizer=None, prev_index: torch.Tensor | None = None):
    """One parallel pass: token i gets previous[i-1] (its conversation's last for i = start)."""
    prev_index = corpus.prev_index() if prev_index is None else prev_index
    train = optimizer is not None
    with torch.set_grad_enabled(train):
        embeds = model.embed(corpus.ids)
        contexts, _ = model(previous[prev_index], embeds)
        cvfp = F.mse_loss(contexts, previous)  # raw MSE: normalising hid the signal (seed bug #1)
        div = diversity(contexts, model)
        loss = _combine(cvfp, div, p.dist_reg_weight)
    stepped = train and _step(loss, optimizer, [q for q in model.parameters() if q.requires_grad], p.grad_clip)
    skipped = int(train and not stepped)
    return contexts.detach(), (cvfp.item(), div.item(), loss.item()), int(stepped), skipped


def sequential_iteration(model, corpus: Corpus, previous: torch.Tensor, start: torch.Tensor, p,
                         diversity, optimizer=None, show_progress: bool = False):
    """One sequential pass with an optimiser step per position (seed 002). Contexts are
    detached between positions (seed bug #2: no backprop through the whole history)."""
    sched = PositionSchedule(corpus)
    state = start[sched.order].clone()
    contexts = torch.empty_like(previous)
    train = optimizer is not None
    params = [q for q in model.parameters() if q.requires_grad]
    sums, steps, skipped = [0.0, 0.0, 0.0], 0, 0
    for t in progress(range(len(sched)), desc="phase1 sequential", enabled=show_progress, unit="pos"):
        k, rows = sched.active[t], sched.rows(t)
        with torch.set_grad_enabled(train):
            new, _ = model(state[:k], model.embed(corpus.ids[rows]))
            cvfp = F.mse_loss(new, previous[rows])
            div = diversity(new, model)
            loss = _combine(cvfp, div, p.dist_reg_weight)
        if train:
            ok = _step(loss, optimizer, params, p.grad_clip)
            steps, skipped = steps + ok, skipped + (not ok)
        for i, v in enumerate((cvfp, div, loss)):
            sums[i] += v.item()
        new = new.detach()
        state[:k] = new
        contexts[rows] = new
    final = torch.empty_like(state)
    final[sched.order] = state
    return contexts, final, tuple(s / len(sched) for s in sums), steps, skipped


def run_phase1(model, corpus: Corpus, p, train: bool = True, show_progress: bool = False,
               log_fn=log.info) -> Phase1Result:
    """Phase 1 on `corpus` with phase1 params `p`. train=False measures convergence only."""
    warn_if_large(corpus.n_tokens, p.warn_tokens, "phase1 " + ("train" if train else "val"))
    diversity = make_diversity(p.diversity.kind, p.diversity.momentum)
    model.set_track_stats(train and p.diversity.kind == "distribution")
    model.train(train)
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.Adam(params, lr=p.lr) if train else None
    n = corpus.n_tokens

    t0 = time.perf_counter()
    previous, final = sequential_pass(model, corpus, show_progress=show_progress, desc="phase1 iter 0")
    result = Phase1Result(previous, final)
    result.history.append(IterationStats(0, 0, n, 0.0, None, None, None, 0, 0, time.perf_counter() - t0))
    log_fn(result.final.line())

    prev_index = corpus.prev_index()
    bar = progress(range(1, p.max_iterations + 1), desc="phase1 " + ("train" if train else "val"),
                   enabled=show_progress and p.mode == "parallel", unit="iter")
    for it in bar:
        t0 = time.perf_counter()
        if p.mode == "parallel":
            contexts, losses, steps, skipped = parallel_iteration(
                model, corpus, previous, p, diversity, optimizer, prev_index)
            final = contexts[corpus.last_index()]
        else:
            contexts, final, losses, steps, skipped = sequential_iteration(
                model, corpus, previous, final, p, diversity, optimizer, show_progress)
        mask = converged_mask(contexts, previous, p.convergence_threshold)
        conv = int(mask.sum())
        stats = IterationStats(it, conv, n, conv / n, *losses, steps, skipped, time.perf_counter() - t0)
        result.history.append(stats)
        log_fn(stats.line())
        if any(math.isnan(x) or math.isinf(x) for x in losses):
            log.warning("iteration %d: non-finite loss, %d step(s) skipped", it, skipped)
        previous = contexts
        result.contexts, result.final_contexts = contexts, final
        if stats.convergence_rate >= p.min_converged_ratio:
            result.stopped_early = it < p.max_iterations
            break
    model.set_track_stats(False)
    model.eval()
    return result
