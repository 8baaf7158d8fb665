"""Phase 1: CVFP fixed-point learning (SPEC section 3).

    iteration 0: sequential pass from a zero context, no gradient -> previous
    iteration k: contexts = f(previous shifted by one, embeds)  (parallel), or one
                 optimiser step per position (sequential); every pass starts from the
                 previous pass's final context (carryover; a zero reset destroys learning)
    loss = (1 - w) * MSE(contexts, previous) + w * diversity(contexts)

`run_phase1(..., train=False)` runs the same loop without optimiser steps: that is how
validation convergence is measured, so train and val share one implementation. A parallel
iteration is one step on the whole split's gradient, computed in chunks of
`phase1.chunk_tokens` with contexts in files (`work_dir`) and, under torchrun, split over
ranks; how that stays exactly the full-batch step: docs/scaling.md.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .check_rules import LOW_CONVERGENCE
from .contexts import ContextFile, ContextTensor, rows_of, sigterm_raises
from .corpus import Corpus, PositionSchedule, warn_if_large, zero_start_pass
from .distributed import SINGLE, World
from .diversity import make_diversity
from .phase1_guard import check_iteration
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
        loss = (
            ""
            if self.total_loss is None
            else (
                f" cvfp={self.cvfp_loss:.6f} div={self.diversity_loss:.6f} total={self.total_loss:.6f}"
            )
        )
        return (
            f"iter {self.iteration}: converged {100 * self.convergence_rate:.1f}% "
            f"({self.converged}/{self.total}){loss} steps={self.steps} "
            f"skipped={self.skipped_steps} {self.seconds:.2f}s"
        )


@dataclass
class Phase1Result:
    # [N, Dc] final contexts: a tensor, or with work_dir the ContextFile (read row ranges;
    # it stays readable after the work directory is removed)
    contexts: torch.Tensor | ContextFile
    history: list[IterationStats] = field(default_factory=list)
    stopped_early: bool = False
    met_ratio: bool = False  # the final iteration reached min_converged_ratio
    parallel: bool = True  # phase1.mode == parallel
    segments: int = 1  # segment starts C (conversations, or 1 for a stream)
    saved: IterationStats | None = (
        None  # the trained model itself (phase1_guard.measure_saved_model)
    )

    @property
    def iterations(self) -> int:  # training iterations run (iteration 0 not counted)
        return len(self.history) - 1

    @property
    def steps(self) -> int:  # optimizer steps actually taken
        return sum(h.steps for h in self.history)

    @property
    def converged_by_construction(self) -> bool:
        """The reported convergence is that of the first parallel iteration, which feeds token
        i the context iteration 0 computed for token i-1 with the same weights: it reproduces
        iteration 0 for all N - C tokens that are not a segment start, for any model (SPEC 3).
        Such a rate says nothing about fixed points; the convergence trials do."""
        return self.parallel and self.iterations == 1 and self.met_ratio

    @property
    def final(self) -> IterationStats:
        return self.saved or self.history[-1]

    def history_dicts(self) -> list[dict]:
        return [asdict(h) for h in self.history]


def converged_mask(
    contexts: torch.Tensor, previous: torch.Tensor, threshold: float
) -> torch.Tensor:
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


def _trainable(model) -> list[torch.nn.Parameter]:
    return [q for q in model.parameters() if q.requires_grad]


def spans(lo: int, hi: int, chunk_tokens: int) -> list[tuple[int, int]]:
    return [(a, min(a + chunk_tokens, hi)) for a in range(lo, hi, chunk_tokens)]


def parallel_iteration(
    model,
    corpus: Corpus,
    previous,
    p,
    diversity,
    optimizer=None,
    prev_index: torch.Tensor | None = None,
    out=None,
    world: World = SINGLE,
):
    """One parallel pass: token i gets previous[i-1] (its conversation's last for i = start).

    previous/out: [N, Dc] row stores (tensor, ContextTensor or ContextFile); out=None
    allocates one. Returns (out, (cvfp, div, total), steps, skipped, converged)."""
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

    def forward(a: int, b: int):
        ctx, _ = model(previous[prev_index[a:b]].to(dev), model.embed(corpus.ids[a:b]))
        return ctx, previous[a:b].to(dev)

    # Pass 1: contexts, convergence, and the sums the losses are made of.
    sums = torch.zeros(2, dtype=torch.float64)  # squared difference to previous, converged
    stats = diversity.stats(torch.zeros(0, dc)) if decomposed else torch.zeros(0)  # unused
    kept = None
    for a, b in parts:
        with torch.set_grad_enabled(keep_graph):
            ctx, target = forward(a, b)
            st = diversity.stats(ctx) if decomposed else diversity(ctx, model)
        sq = (ctx.detach() - target) ** 2
        sums += torch.stack(
            [sq.sum().double(), (sq.mean(dim=1) < p.convergence_threshold).sum()]
        ).cpu()
        if decomposed:
            stats = stats + st.detach().cpu()
        out[a:b] = ctx.detach()
        if keep_graph:
            kept = (ctx, target, st)
    totals = world.all_reduce(torch.cat([sums, stats]) if decomposed else sums)
    cvfp = float(totals[0]) / (n * dc)  # raw MSE: normalising hid the signal (seed bug #1)
    converged = int(totals[1])
    if decomposed:
        s = totals[2:].clone().requires_grad_(train)
        div = diversity.from_stats(s, n)
    else:
        div = st
    loss = _combine(cvfp, div.item(), w)

    # Pass 2: the full-batch gradient, chunk by chunk (recomputed unless kept).
    steps = skipped = 0
    if train and math.isfinite(loss):
        params = _trainable(model)
        optimizer.zero_grad(set_to_none=True)
        g = torch.autograd.grad(div, s)[0].to(dev) if decomposed else None
        for a, b in parts:
            if kept is not None:
                ctx, target, st = kept
            else:
                ctx, target = forward(a, b)
                st = diversity.stats(ctx)
            part = (1 - w) * ((ctx - target) ** 2).sum() / (n * dc)
            part = part + w * ((g * st).sum() if decomposed else st)
            part.backward()
        world.all_reduce_grads(params)
        torch.nn.utils.clip_grad_norm_(params, p.grad_clip)
        optimizer.step()
        steps = 1
    elif train:
        skipped = 1
    return out, (cvfp, div.item(), loss), steps, skipped, converged


def sequential_iteration(
    model,
    corpus: Corpus,
    previous: torch.Tensor,
    start: torch.Tensor,
    p,
    diversity,
    optimizer=None,
    show_progress: bool = False,
):
    """One sequential pass with an optimiser step per position (seed 002). Contexts are
    detached between positions (seed bug #2: no backprop through the whole history)."""
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
            loss = _combine(cvfp, div, p.dist_reg_weight)
        if train:
            ok = _step(loss, optimizer, params, p.grad_clip)
            steps, skipped = steps + ok, skipped + (not ok)
        for i, v in enumerate((cvfp, div, loss)):
            sums[i] += v.item()
        new = new.detach()
        state[:k] = new
        contexts[rows] = new
    return contexts, tuple(s / len(sched) for s in sums), steps, skipped


def run_phase1(
    model,
    corpus: Corpus,
    p,
    train: bool = True,
    show_progress: bool = False,
    log_fn=log.info,
    world: World = SINGLE,
    work_dir: str | Path | None = None,
    split: str | None = None,
) -> Phase1Result:
    """Phase 1 on `corpus` with phase1 params `p`. train=False measures convergence only.
    `split` ("train" / "val") names the corpus in the log lines and the progress bar (default:
    "train" when training, else "val").

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
    optimizer = torch.optim.Adam(_trainable(model), lr=p.lr) if train else None
    n, shape = corpus.n_tokens, (corpus.n_tokens, model.context_dim)
    name = "train" if train else "val"
    label = split or name  # which split the log lines and the bar are about
    with _context_stores(shape, work_dir, world, name) as (previous, current):
        t0 = time.perf_counter()
        zero_start_pass(
            model, corpus, previous, p.chunk_tokens, world, show_progress, "phase1 iter 0"
        )
        result = Phase1Result(
            rows_of(previous), parallel=p.mode == "parallel", segments=corpus.n_conversations
        )
        result.history.append(
            IterationStats(0, 0, n, 0.0, None, None, None, 0, 0, time.perf_counter() - t0)
        )
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
            losses: tuple[float, float, float]  # cvfp, diversity, total
            if p.mode == "parallel":
                _, losses, steps, skipped, conv = parallel_iteration(
                    model, corpus, previous, p, diversity, optimizer, prev_index, current, world
                )
            else:
                prev = previous[0:n]
                contexts, losses, steps, skipped = sequential_iteration(
                    model,
                    corpus,
                    prev,
                    prev[corpus.last_index()],
                    p,
                    diversity,
                    optimizer,
                    show_progress,
                )
                current[0:n] = contexts
                conv = int(converged_mask(contexts, prev, p.convergence_threshold).sum())
            world.barrier()  # every rank's rows are in `current`
            stats = IterationStats(
                it, conv, n, conv / n, *losses, steps, skipped, time.perf_counter() - t0
            )
            result.history.append(stats)
            log_fn(f"phase1 {label} {stats.line()}")
            check_iteration(
                stats, model, p, name, train
            )  # phase1.divergence: fail with the numbers
            if any(math.isnan(x) or math.isinf(x) for x in losses):
                log.warning("iteration %d: non-finite loss, %d step(s) skipped", it, skipped)
            previous, current = current, previous
            # min_iterations forces more training past the convergence rule (train only:
            # passes without steps repeat themselves).
            if not LOW_CONVERGENCE.when[0].warns(
                stats.convergence_rate, p.min_converged_ratio
            ) and (not train or it >= p.min_iterations):
                result.stopped_early = it < p.max_iterations
                result.met_ratio = True
                break
        result.contexts = rows_of(previous)
    model.set_track_stats(False)
    model.eval()
    return result


class _context_stores:
    """Two [N, Dc] row stores: files in a fresh directory under work_dir (shared by all
    ranks: rank 0 names it), removed on exit, on an exception and on SIGTERM; or tensors
    when work_dir is None. The files are unlinked at exit, but a `ContextFile` keeps its
    file open, so `result.contexts` stays readable (the space is freed with it)."""

    def __init__(self, shape, work_dir, world: World, name: str):
        self.shape, self.work_dir, self.world, self.name = shape, work_dir, world, name
        self.dir: Path | None = None
        self.signals = sigterm_raises()

    def __enter__(self):
        if self.work_dir is None:
            return ContextTensor(self.shape), ContextTensor(self.shape)
        self.signals.__enter__()
        made = None
        if self.world.is_main:
            Path(self.work_dir).mkdir(parents=True, exist_ok=True)
            # the pid tells a later run whether the writer is gone (tasks.common.clean_leftovers)
            made = tempfile.mkdtemp(prefix=f"{self.name}-{os.getpid()}-", dir=self.work_dir)
        self.dir = Path(self.world.broadcast_object(made))
        stores = [None, None]
        if self.world.is_main:
            try:
                stores = [
                    ContextFile(self.dir / f"contexts_{k}.npy", self.shape, create=True)
                    for k in "ab"
                ]
            except BaseException:  # disk full (DiskSpaceError): no empty scratch left behind
                shutil.rmtree(self.dir, ignore_errors=True)
                raise
        self.world.barrier()
        if not self.world.is_main:
            stores = [ContextFile(self.dir / f"contexts_{k}.npy", self.shape) for k in "ab"]
        return tuple(stores)

    def __exit__(self, exc_type, *exc):
        if self.dir is not None:
            try:
                if exc_type is None:
                    self.world.barrier()  # no rank still reads the files
            finally:
                if self.world.is_main:
                    shutil.rmtree(self.dir, ignore_errors=True)
                self.signals.__exit__(exc_type, *exc)
        return False
