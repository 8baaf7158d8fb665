"""Checks run after Phase 1 (SPEC section 4). Every check returns numbers and flags, no
text; the thresholds are the rules in cvfp/phase1/rules.py, their wording the report's."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cvfp.core.contexts import row_store
from cvfp.core.corpus import Corpus, chunk_chains, sequential_pass
from cvfp.core.model import CVFPModel
from cvfp.params import ChecksParams
from cvfp.phase1.rules import (
    ACTUAL_RANK_TOL,
    CONTEXT_EQUALS_TOKEN,
    GLOBAL_ATTRACTOR,
    IDENTITY,
    IGNORES_TOKENS,
    NEAR_MEAN,
    SPARSITY_ABS,
    TRIALS,
    ZERO_SOLUTION,
)
from cvfp.runtime.utils import progress

CHUNK = 65536  # rows per block read (memory only: every check is exact for any chunk)


def blocks(contexts, chunk: int = CHUNK) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(a, b, rows a:b as float32) over C [N, D]: a tensor, or a `ContextFile` (each block
    read through a map that is closed again, so memory holds one block for any N)."""
    n = contexts.shape[0]
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        yield a, b, torch.as_tensor(contexts[a:b]).float()


def sample_index(n: int, samples: int, seed: int = 0) -> torch.Tensor:
    """`samples` distinct row indices out of n in random order (all n, in order, when n <=
    samples), drawn in O(samples) memory for large n (numpy's Generator.choice)."""
    if n <= samples:
        return torch.arange(n)
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.choice(n, size=samples, replace=False).astype(np.int64))


# --- 1. effective rank ---------------------------------------------------------------------


def singular_values(contexts, chunk: int = CHUNK) -> torch.Tensor:
    """Singular values of C [N, D] from the D x D Gram matrix, accumulated in float64 chunks:
    exact (eigenvalues of C^T C are S^2) and O(N D^2) time, O(D^2) memory for any N."""
    d = contexts.shape[1]
    gram = torch.zeros(d, d, dtype=torch.float64)
    for _, _, block in blocks(contexts, chunk):
        block = block.to(torch.float64)
        gram += block.T @ block
    eig = torch.linalg.eigvalsh(gram).clamp_min(0.0)
    return eig.sqrt().flip(0)  # descending


def effective_rank(contexts, chunk: int = CHUNK) -> dict:
    s = singular_values(contexts, chunk)
    d = contexts.shape[1]
    total = float(s.sum())
    if total == 0.0:
        er = 0.0
    else:
        p = s / total
        p = p[p > 0]
        er = float(torch.exp(-(p * p.log()).sum()))
    return {
        "effective_rank": er,
        "dim": d,
        "ratio": er / d,
        "percent": 100 * er / d,
        "actual_rank": int((s > ACTUAL_RANK_TOL).sum()),
        "singular_values": s.tolist(),
    }


# --- 2. degeneracy -------------------------------------------------------------------------


class _Moments:
    """Count, mean, M2, min and max of a stream of numbers, merged block by block in float64
    (Chan et al.'s pairwise update: no cancellation when the spread is small against the mean)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.min, self.max = math.inf, -math.inf

    def add(self, x: torch.Tensor) -> None:
        if not x.numel():
            return
        x = x.to(torch.float64)
        nb, mb = x.numel(), float(x.mean())
        m2b = float(((x - mb) ** 2).sum())
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n
        self.min, self.max = min(self.min, float(x.min())), max(self.max, float(x.max()))

    @property
    def std(self) -> float:  # unbiased, as torch.std
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0


def degeneracy(contexts, samples: int = 200, seed: int = 0, chunk: int = CHUNK) -> dict:
    """Global attractor (all contexts alike), zero solution, norms and sparsity, streamed in
    blocks of `chunk` rows. Exact over all N rows: norm statistics, sparsity, and the mean
    cosine over all N(N-1)/2 pairs (from the sum of the unit vectors:
    sum_{i<j} u_i.u_j = (|sum u|^2 - sum |u|^2) / 2). The mean pairwise L2 distance has no
    such sum, so it is the mean over the pairs of a fixed sample of `samples` rows
    (`sample_index`, seed `seed`; all rows when N <= samples)."""
    n, d = contexts.shape
    norms = _Moments()
    unit_sum = torch.zeros(d, dtype=torch.float64)
    unit_sq = 0.0
    sparse = 0
    for _, _, block in blocks(contexts, chunk):
        nb = block.norm(dim=1)
        norms.add(nb)
        u = F.normalize(block, dim=1).to(torch.float64)
        unit_sum += u.sum(0)
        unit_sq += float((u * u).sum())
        sparse += int((block.abs() < SPARSITY_ABS).sum())
    pairs_n = n * (n - 1) / 2
    mean_cos = (float(unit_sum @ unit_sum) - unit_sq) / 2 / pairs_n if n > 1 else float("nan")
    sub = torch.as_tensor(contexts[sample_index(n, samples, seed)]).float()
    iu = torch.triu_indices(sub.shape[0], sub.shape[0], offset=1)
    mean_l2 = float(torch.cdist(sub, sub)[iu[0], iu[1]].mean())
    mean_norm = norms.mean
    pairs = {"mean_pairwise_l2": mean_l2, "mean_pairwise_cosine": mean_cos}
    return {
        **pairs,
        "global_attractor": GLOBAL_ATTRACTOR.warns(pairs),
        "mean_norm": mean_norm,
        "zero_solution": ZERO_SOLUTION.warns({"mean_norm": mean_norm}),
        "norm_std": norms.std,
        "norm_min": norms.min,
        "norm_max": norms.max,
        "sparsity": sparse / (n * d),
    }


# --- 3. identity mapping -------------------------------------------------------------------


def prev_of(corpus: Corpus, pos: torch.Tensor) -> torch.Tensor:
    """`corpus.prev_index()[pos]` without the [N] array: the previous token of the same
    conversation, or the conversation's last token for its first (carryover)."""
    conv = torch.searchsorted(corpus.offsets, pos, right=True) - 1
    first = pos == corpus.offsets[conv]
    return torch.where(first, corpus.offsets[conv + 1] - 1, pos - 1)


@torch.no_grad()
def identity_probes(
    model,
    corpus: Corpus,
    contexts,
    samples: int = 200,
    identity_warn: float = 0.95,
    ignores_warn: float = 0.999,
    seed: int = 0,
    chunk: int = CHUNK,
) -> dict:
    """Seed-000 probes on `samples` positions (`sample_index`, seed `seed`). Input vs output
    context for the same token (near 1 = the layer copies its input), and outputs of
    different tokens from one context (near 1 = the model ignores the token). Exact over all
    rows, in blocks of `chunk`: the mean deviation from the mean context (two passes) and the
    context-token cosine."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    n, d = contexts.shape
    pos = sample_index(n, samples, seed)
    inp = torch.as_tensor(contexts[prev_of(corpus, pos)]).float()
    out, _ = model(inp, model.embed(corpus.ids[pos]))
    io_cos = float(F.cosine_similarity(inp, out, dim=1).mean())

    ctx = torch.as_tensor(contexts[pos[:1]]).float().expand(min(samples, model.vocab_size), -1)
    toks = torch.randperm(model.vocab_size, generator=g)[: ctx.shape[0]]
    outs, _ = model(ctx, model.embed(toks))
    normed = F.normalize(outs, dim=1)
    iu = torch.triu_indices(outs.shape[0], outs.shape[0], offset=1)
    tok_sim = float((normed @ normed.T)[iu[0], iu[1]].mean())

    same_dims = d == model.embed_dim
    total, ct_sum = torch.zeros(d, dtype=torch.float64), 0.0
    for a, b, block in blocks(contexts, chunk):
        total += block.to(torch.float64).sum(0)
        if same_dims:
            ct_sum += float(
                F.cosine_similarity(block, model.embed(corpus.ids[a:b]), dim=1).double().sum()
            )
    mean = (total / n).float()
    deviation = (
        sum(
            float((block - mean).norm(dim=1).double().sum())
            for _, _, block in blocks(contexts, chunk)
        )
        / n
    )
    (near_mean,), (identity,), (ignores,) = NEAR_MEAN.when, IDENTITY.when, IGNORES_TOKENS.when
    result: dict[str, float | bool | None] = {
        "mean_deviation_from_mean": deviation,
        "not_near_zero": not near_mean.warns(deviation),
        "input_output_cosine": io_cos,
        "identity_warning": identity.warns(io_cos, identity_warn),
        "different_token_output_similarity": tok_sim,
        "ignores_tokens_warning": ignores.warns(tok_sim, ignores_warn),
        "context_token_cosine": None,
        "context_equals_token_warning": None,
    }
    if same_dims:
        ct = ct_sum / n
        result["context_token_cosine"] = ct
        result["context_equals_token_warning"] = CONTEXT_EQUALS_TOKEN.warns(
            {"context_token_cosine": ct}
        )
    return result


# --- 4. CVFP convergence trials ------------------------------------------------------------


def verdict(losses, slope_tol: float = 1e-3, std_tol: float = 1e-2) -> dict:
    """Linear-fit slope and std of a loss sequence -> CONVERGING / CONVERGED / DIVERGING / UNSTABLE."""
    y = np.asarray(losses, dtype=np.float64)
    slope = float(np.polyfit(np.arange(len(y)), y, 1)[0]) if len(y) > 1 else 0.0
    std = float(y.std())
    if slope < -slope_tol:
        v = "CONVERGING"
    elif abs(slope) < slope_tol and std < std_tol:
        v = "CONVERGED"
    elif slope > slope_tol:
        v = "DIVERGING"
    else:
        v = "UNSTABLE"
    initial, final = float(y[0]), float(y[-1])
    reduction = 100 * (initial - final) / initial if initial != 0 else 0.0
    return {
        "initial_loss": initial,
        "final_loss": final,
        "reduction_percent": reduction,
        "std": std,
        "slope": slope,
        "verdict": v,
    }


@torch.no_grad()
def convergence_trials(
    model,
    corpus: Corpus,
    trials: int = 10,
    final_diff: float = 1e-3,
    slope_tol: float = 1e-3,
    std_tol: float = 1e-2,
    show_progress: bool = False,
    chunk_tokens: int = CHUNK,
    work_dir: str | Path | None = None,
) -> dict:
    """Repeat sequential passes over the same tokens with carryover; MSE between successive
    passes per trial. Passes if the last MSE is below `final_diff`.

    Conversations never share state, so the trials run chunk by chunk (`chunk_chains`): all
    trials + 1 passes of a chunk's conversations, then the next chunk, summing each trial's
    squared differences in float64; memory holds one chunk. A conversation longer than
    `chunk_tokens` runs in slices, its previous pass's rows in a row store (a file under
    `work_dir` when given, removed at the end and on SIGTERM)."""
    model.eval()
    n, dc = corpus.n_tokens, model.context_dim
    parts = chunk_chains(corpus, chunk_tokens)
    sq = np.zeros(trials, dtype=np.float64)
    bar = progress(
        total=(trials + 1) * n,
        desc=f"convergence trials ({trials} + 1 passes)",
        enabled=show_progress,
        unit="tok",
        smoothing=0,  # the rate over the whole run: an ETA that holds
    )
    for k, chain in enumerate(parts):
        bar.set_postfix_str(f"chunk {k + 1}/{len(parts)}", refresh=False)
        lo, hi = chain[0][0], chain[-1][1]
        if len(chain) == 1:  # whole conversations: keep the previous pass in memory
            sub = chain[0][2]
            prev, final = sequential_pass(model, sub)
            bar.update(hi - lo)
            for t in range(trials):
                cur, final = sequential_pass(model, sub, start=final)
                sq[t] += float(((cur - prev) ** 2).sum(dtype=torch.float64))
                prev = cur
                bar.update(hi - lo)
            continue
        with row_store((hi - lo, dc), work_dir, "trials-") as store:
            start = None
            for t in range(trials + 1):
                state = start
                for a, b, sub, _ in chain:
                    ctx, state = sequential_pass(model, sub, start=state)
                    if t:
                        sq[t - 1] += float(
                            ((ctx - store[a - lo : b - lo]) ** 2).sum(dtype=torch.float64)
                        )
                    store[a - lo : b - lo] = ctx
                    bar.update(b - a)
                start = state
    bar.close()
    losses = [float(x) / (n * dc) for x in sq]
    out = verdict(losses, slope_tol, std_tol)
    out.update(
        {
            "losses": losses,
            "trials": trials,
            "final_diff": losses[-1],
            "passed": not TRIALS.when[0].warns(losses[-1], final_diff),
        }
    )
    return out


def run_checks(
    model: CVFPModel,
    corpus: Corpus,
    contexts,
    c: ChecksParams,
    trials: bool = True,
    show_progress: bool = False,
    chunk_tokens: int = CHUNK,
    work_dir: str | Path | None = None,
) -> dict:
    """All checks for one split with checks params `c`; `contexts` [N, Dc] a tensor or a
    `ContextFile`. Every check reads `chunk_tokens` rows at a time (memory only; the results
    do not depend on it beyond float rounding)."""
    out = {
        "effective_rank": effective_rank(contexts, chunk_tokens),
        "degeneracy": degeneracy(contexts, c.probe_samples, chunk=chunk_tokens),
        "identity": identity_probes(
            model,
            corpus,
            contexts,
            c.probe_samples,
            c.identity_warn,
            c.ignores_tokens_warn,
            chunk=chunk_tokens,
        ),
    }
    if trials:
        out["convergence"] = convergence_trials(
            model,
            corpus,
            c.convergence_trials,
            c.convergence_final_diff,
            c.slope_tol,
            c.std_tol,
            show_progress,
            chunk_tokens,
            work_dir,
        )
    return out
