"""Phase 1: CVFP fixed-point learning (SPEC section 3).

    iteration 0: sequential pass from a zero context, no gradient -> previous
    iteration k: contexts = f(previous shifted by one, embeds)  (parallel), or one
                 optimiser step per position (sequential); every pass starts from the
                 previous pass's final context (carryover; a zero reset destroys learning)
    loss = phase1_loss(...) = (1 - w) * MSE(contexts, previous) + w * diversity(contexts)
    a token has converged when `converged_mask` says so; the loop stops when
    `converged_enough(...)` does (both next to the loop, below)

`run_phase1(..., train=False)` runs the same loop without optimiser steps: that is how
validation convergence is measured, so train and val share one implementation; after
training, one more pass without a step measures the model that is saved (`result.saved`).
A parallel iteration is one step on the whole split's gradient, computed in chunks of
`phase1.chunk_tokens` with contexts in files (`work_dir`) and, under torchrun, split over
ranks; how that stays exactly the full-batch step: docs/scaling.md. The divergence checks
are cvfp/phase1/guard.py (pure functions of the numbers), the named results
cvfp/phase1/results.py.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from cvfp.core.contexts import ContextTensor, context_stores, rows_of
from cvfp.core.corpus import Corpus, PositionSchedule, warn_if_large, zero_start_pass
from cvfp.core.model import CVFPModel
from cvfp.core.training import optimizer_step
from cvfp.params import Phase1Params
from cvfp.phase1.diversity import make_diversity
from cvfp.phase1.guard import check_iteration, check_saved
from cvfp.phase1.results import IterationStats, Losses, PassResult, Phase1Result
from cvfp.runtime.distributed import SINGLE, World
from cvfp.runtime.utils import adam, progress

log = logging.getLogger("cvfp")


# --- one pass ------------------------------------------------------------------------------


def _step(loss, optimizer, params, clip) -> bool:
    """One optimiser step; NaN/Inf losses are skipped (returns False) instead of poisoning weights."""
    if not torch.isfinite(loss):
        return False
    optimizer_step(optimizer, loss, params, clip)
    return True


def _trainable(model) -> list[torch.nn.Parameter]:
    return [q for q in model.parameters() if q.requires_grad]


def spans(lo: int, hi: int, chunk_tokens: int) -> list[tuple[int, int]]:
    return [(a, min(a + chunk_tokens, hi)) for a in range(lo, hi, chunk_tokens)]


def parallel_iteration(
    model,
    corpus: Corpus,
    previous,
    p: Phase1Params,
    diversity,
    optimizer=None,
    prev_index: torch.Tensor | None = None,
    out=None,
    world: World = SINGLE,
    show_progress: bool = False,
    desc: str = "phase1 pass",
) -> PassResult:
    """One parallel pass: token i gets previous[i-1] (its conversation's last for i = start).

    previous/out: [N, Dc] row stores (tensor, ContextTensor or ContextFile); out=None
    allocates one. The bar `desc` counts the tokens of both passes over the chunks (on the
    full ShareGPT corpus one iteration is ~15 min: 2 x 511 chunks)."""
    n, dc, w = corpus.n_tokens, model.context_dim, p.dist_reg_weight
    prev_index = corpus.prev_index() if prev_index is None else prev_index
    out = ContextTensor((n, dc)) if out is None else out
    train = optimizer is not None
    parts = spans(*world.share(n), p.chunk_tokens)
    keep_graph = train and len(parts) <= 1  # one chunk: no second pass needed
    decomposed = hasattr(diversity, "stats")
    if not decomposed and (len(parts) > 1 or world.distributed):
        raise ValueError(
            f"phase1.diversity.kind={p.diversity.kind!r} keeps its statistics inside the "
            f"layers, so its gradient cannot be split into chunks or ranks; use global_mean "
            f"or ema_variance, or run one process with phase1.chunk_tokens >= {n}"
        )
    dev = world.device
    passes = 2 if train and not keep_graph else 1  # the step recomputes every chunk
    bar = progress(
        total=passes * sum(b - a for a, b in parts),
        desc=desc,
        enabled=show_progress,
        unit="tok",
        unit_scale=True,
        smoothing=0,  # the rate over the pass: the ETA holds
    )

    def advance(k: int, a: int, b: int, pass_k: int) -> None:
        bar.set_postfix_str(f"pass {pass_k} of {passes}, chunk {k + 1}/{len(parts)}", False)
        bar.update(b - a)

    def forward(a: int, b: int):
        ctx, _ = model(previous[prev_index[a:b]].to(dev), model.embed(corpus.ids[a:b]))
        return ctx, previous[a:b].to(dev)

    # Pass 1: contexts, convergence, and the sums the losses are made of.
    sums = torch.zeros(2, dtype=torch.float64)  # squared difference to previous, converged
    stats = diversity.stats(torch.zeros(0, dc)) if decomposed else torch.zeros(0)  # unused
    kept = None
    for k, (a, b) in enumerate(parts):
        with torch.set_grad_enabled(keep_graph):
            ctx, target = forward(a, b)
            st = diversity.stats(ctx) if decomposed else diversity(ctx, model)
        done = ctx.detach()
        sq_sum = ((done - target) ** 2).sum().double()
        conv = converged_mask(done, target, p.convergence_threshold).sum()
        sums += torch.stack([sq_sum, conv]).cpu()
        if decomposed:
            stats = stats + st.detach().cpu()
        out[a:b] = done
        if keep_graph:
            kept = (ctx, target, st)
        advance(k, a, b, 1)
    totals = world.all_reduce(torch.cat([sums, stats]) if decomposed else sums)
    cvfp = float(totals[0]) / (n * dc)  # raw MSE: normalising hid the signal (seed bug #1)
    if decomposed:
        s = totals[2:].clone().requires_grad_(train)
        div = diversity.from_stats(s, n)
    else:
        div = st
    loss = phase1_loss(cvfp, div.item(), w)

    # Pass 2: the full-batch gradient, chunk by chunk (recomputed unless kept): the
    # gradient of phase1_loss, the MSE part summed over chunks, the diversity part through
    # its statistics.
    steps = skipped = 0
    if train and math.isfinite(loss):
        g = torch.autograd.grad(div, s)[0].to(dev) if decomposed else None

        def backward() -> None:
            for k, (a, b) in enumerate(parts):
                if kept is not None:
                    ctx, target, st = kept
                else:
                    ctx, target = forward(a, b)
                    st = diversity.stats(ctx)
                part = (1 - w) * ((ctx - target) ** 2).sum() / (n * dc)  # phase1_loss's terms
                part = part + w * ((g * st).sum() if decomposed else st)
                part.backward()
                if passes == 2:
                    advance(k, a, b, 2)

        optimizer_step(optimizer, backward, _trainable(model), p.grad_clip, world)
        steps = 1
    elif train:
        skipped = 1
    bar.close()
    return PassResult(out, Losses(cvfp, div.item(), loss), steps, skipped, int(totals[1]))


def sequential_iteration(
    model,
    corpus: Corpus,
    previous: torch.Tensor,
    start: torch.Tensor,
    p: Phase1Params,
    diversity,
    optimizer=None,
    show_progress: bool = False,
) -> PassResult:
    """One sequential pass with an optimiser step per position (seed 002). Contexts are
    detached between positions (seed bug #2: no backprop through the whole history).
    The losses are the means over positions."""
    sched = PositionSchedule(corpus)
    state = start[sched.order].clone()
    contexts = torch.empty_like(previous)
    train = optimizer is not None
    params = _trainable(model)
    sums, steps, skipped = [0.0, 0.0, 0.0], 0, 0
    for t in progress(
        range(len(sched)), desc="phase1 sequential", enabled=show_progress, unit="pos"
    ):
        k, rows = sched.active[t], sched.rows(t)
        with torch.set_grad_enabled(train):
            new, _ = model(state[:k], model.embed(corpus.ids[rows]))
            cvfp = ((new - previous[rows]) ** 2).mean()
            div = diversity(new, model)
            loss = phase1_loss(cvfp, div, p.dist_reg_weight)
        if train:
            ok = _step(loss, optimizer, params, p.grad_clip)
            steps, skipped = steps + ok, skipped + (not ok)
        for i, v in enumerate((cvfp, div, loss)):
            sums[i] += v.item()
        new = new.detach()
        state[:k] = new
        contexts[rows] = new
    conv = int(converged_mask(contexts, previous, p.convergence_threshold).sum())
    losses = Losses(*(s / len(sched) for s in sums))
    return PassResult(contexts, losses, steps, skipped, conv)


def _run_pass(
    model,
    corpus: Corpus,
    previous,
    out,
    p: Phase1Params,
    diversity,
    optimizer=None,
    world: World = SINGLE,
    prev_index: torch.Tensor | None = None,
    show_progress: bool = False,
    desc: str = "phase1 pass",
) -> PassResult:
    """One pass in phase1.mode from the row store `previous` into `out` (with a step when
    `optimizer` is given); every rank's rows are in `out` when it returns."""
    if p.mode == "parallel":
        r = parallel_iteration(
            model,
            corpus,
            previous,
            p,
            diversity,
            optimizer,
            prev_index,
            out,
            world,
            show_progress=show_progress,
            desc=desc,
        )
    else:
        n = corpus.n_tokens
        prev = previous[0:n]
        r = sequential_iteration(
            model, corpus, prev, prev[corpus.last_index()], p, diversity, optimizer, show_progress
        )
        out[0:n] = r.contexts
    world.barrier()
    return r._replace(contexts=out)


# --- the rules: convergence, loss, stop --------------------------------------------------


def converged_mask(
    contexts: torch.Tensor, previous: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Per token: the mean squared change of its context since the previous pass is below
    phase1.convergence_threshold. The one convergence rule of Phase 1."""
    return ((contexts - previous) ** 2).mean(dim=1) < threshold


def phase1_loss(cvfp, diversity, dist_reg_weight: float):
    """The Phase 1 objective: (1 - w) * cvfp + w * diversity, w = phase1.dist_reg_weight."""
    return (1 - dist_reg_weight) * cvfp + dist_reg_weight * diversity


def converged_enough(stats: IterationStats, p: Phase1Params, train: bool) -> bool:
    """The stop rule: the pass converged at least phase1.min_converged_ratio of the tokens,
    and (training only: passes without steps repeat themselves) phase1.min_iterations ran."""
    return stats.convergence_rate >= p.min_converged_ratio and (
        not train or stats.iteration >= p.min_iterations
    )


# --- the loop ------------------------------------------------------------------------------


def run_phase1(
    model: CVFPModel,
    corpus: Corpus,
    p: Phase1Params,
    train: bool = True,
    show_progress: bool = False,
    log_fn=log.info,
    world: World = SINGLE,
    work_dir: str | Path | None = None,
    split: str | None = None,
) -> Phase1Result:
    """Phase 1 on `corpus`. train=False measures convergence only; train=True ends with
    `measure_saved_model` (the numbers of the model that is saved). `split` ("train" /
    "val") names the corpus in the log lines and the progress bar (default: "train" when
    training, else "val").

    work_dir: where the two context files (previous, current) go; None keeps them in
    memory (one process only). Under torchrun all ranks call this with the same arguments
    and get the same result."""
    if world.distributed and (work_dir is None or p.mode != "parallel"):
        raise ValueError(
            "phase1 under torchrun needs phase1.mode=parallel (sequential mode steps once "
            "per position) and a shared work_dir for the contexts"
        )
    warn_if_large(corpus.n_tokens, p.warn_tokens, "phase1 " + ("train" if train else "val"))
    diversity = make_diversity(p.diversity.kind, p.diversity.momentum)
    model.set_track_stats(train and p.diversity.kind == "distribution")
    model.train(train)
    optimizer = adam(_trainable(model), lr=p.lr) if train else None
    n, shape = corpus.n_tokens, (corpus.n_tokens, model.context_dim)
    name = "train" if train else "val"
    label = split or name  # which split the log lines and the bar are about
    show = show_progress
    with context_stores(shape, work_dir, world, name) as (previous, current):
        t0 = time.perf_counter()
        zero_start_pass(
            model, corpus, previous, p.chunk_tokens, world, show_progress, f"phase1 {label} iter 0"
        )
        result = Phase1Result(
            rows_of(previous), parallel=p.mode == "parallel", segments=corpus.n_conversations
        )
        result.history.append(IterationStats.zero_start(n, time.perf_counter() - t0))
        log_fn(f"phase1 {label} {result.final.line()}")

        prev_index = corpus.prev_index()
        bar = progress(
            range(1, p.max_iterations + 1),
            desc=f"phase1 {label}",
            enabled=show_progress and p.mode == "parallel",
            unit="iter",
            smoothing=0,  # the mean time per iteration so far
        )
        for it in bar:
            t0 = time.perf_counter()
            r = _run_pass(
                model,
                corpus,
                previous,
                current,
                p,
                diversity,
                optimizer,
                world,
                prev_index,
                show_progress=show,
                desc=f"phase1 {label} iter {it}",
            )
            stats = IterationStats.of(it, n, r, time.perf_counter() - t0)
            result.history.append(stats)
            log_fn(f"phase1 {label} {stats.line()}")
            check_iteration(stats, model, p, name, train)  # phase1.divergence: fail with numbers
            if not all(math.isfinite(x) for x in r.losses):
                log.warning("iteration %d: non-finite loss, %d step(s) skipped", it, r.skipped)
            previous, current = current, previous
            if converged_enough(stats, p, train):
                result.stopped_early = it < p.max_iterations
                result.met_ratio = True
                break
        result.contexts = rows_of(previous)
    model.set_track_stats(False)
    model.eval()
    if train:
        measure_saved_model(model, corpus, result, p, world, work_dir, show)
    return result


@torch.no_grad()
def measure_saved_model(
    model: CVFPModel,
    corpus: Corpus,
    result: Phase1Result,
    p: Phase1Params,
    world: World = SINGLE,
    work_dir: str | Path | None = None,
    show_progress: bool = False,
) -> Phase1Result:
    """One more pass without a step after training (a training pass measures the model
    *before* its own step): its convergence, losses and contexts are those of the model that
    is saved, and become result.final (result.saved); the history keeps the training passes.
    No-op when the last pass took no step."""
    last = result.history[-1]
    if last.steps == 0:
        return result
    model.eval()
    diversity = make_diversity(p.diversity.kind, p.diversity.momentum)
    n = corpus.n_tokens
    t0 = time.perf_counter()
    with context_stores((n, model.context_dim), work_dir, world, "saved") as (_, out):
        r = _run_pass(
            model,
            corpus,
            result.contexts,
            out,
            p,
            diversity,
            world=world,
            show_progress=show_progress,
            desc="phase1 saved model",
        )
        result.contexts = rows_of(out)
    result.saved = IterationStats.of(last.iteration, n, r, time.perf_counter() - t0)
    log.info("phase1 saved model (pass without a step): %s", result.saved.line())
    check_saved(result.saved, model, p)
    return result
