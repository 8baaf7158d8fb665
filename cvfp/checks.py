"""Checks run after Phase 1 (SPEC section 4). Every check returns numbers, not words only;
the thresholds and their wording are the rules in cvfp/check_rules.py."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .check_rules import (
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
from .corpus import Corpus, sequential_pass
from .formats import fmt_er

# --- 1. effective rank ---------------------------------------------------------------------


def singular_values(contexts: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Singular values of C [N, D] from the D x D Gram matrix, accumulated in float64 chunks:
    exact (eigenvalues of C^T C are S^2) and O(N D^2) time, O(D^2) memory for any N."""
    d = contexts.shape[1]
    gram = torch.zeros(d, d, dtype=torch.float64)
    for i in range(0, contexts.shape[0], chunk):
        block = torch.as_tensor(contexts[i : i + chunk]).to(torch.float64)
        gram += block.T @ block
    eig = torch.linalg.eigvalsh(gram).clamp_min(0.0)
    return eig.sqrt().flip(0)  # descending


def effective_rank(contexts: torch.Tensor) -> dict:
    s = singular_values(contexts)
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
        "text": fmt_er(er, d),
    }


# --- 2. degeneracy -------------------------------------------------------------------------


def _sample_rows(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if x.shape[0] <= n:
        return x
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=g)[:n]]


def degeneracy(contexts: torch.Tensor, samples: int = 200, seed: int = 0) -> dict:
    """Global attractor (all contexts alike), zero solution, norms and sparsity."""
    sub = _sample_rows(contexts, samples, seed)
    iu = torch.triu_indices(sub.shape[0], sub.shape[0], offset=1)
    pair_l2 = torch.cdist(sub, sub)[iu[0], iu[1]]
    normed = F.normalize(sub, dim=1)
    pair_cos = (normed @ normed.T)[iu[0], iu[1]]
    norms = contexts.norm(dim=1)
    mean_l2, mean_cos = float(pair_l2.mean()), float(pair_cos.mean())
    mean_norm = float(norms.mean())
    pairs = {"mean_pairwise_l2": mean_l2, "mean_pairwise_cosine": mean_cos}
    return {
        **pairs,
        "global_attractor": GLOBAL_ATTRACTOR.warns(pairs),
        "mean_norm": mean_norm,
        "zero_solution": ZERO_SOLUTION.warns({"mean_norm": mean_norm}),
        "norm_std": float(norms.std()) if norms.numel() > 1 else 0.0,
        "norm_min": float(norms.min()),
        "norm_max": float(norms.max()),
        "sparsity": float((contexts.abs() < SPARSITY_ABS).float().mean()),
    }


# --- 3. identity mapping -------------------------------------------------------------------


@torch.no_grad()
def identity_probes(
    model,
    corpus: Corpus,
    contexts: torch.Tensor,
    samples: int = 200,
    identity_warn: float = 0.95,
    ignores_warn: float = 0.999,
    seed: int = 0,
) -> dict:
    """Seed-000 probes. Input vs output context for the same token (near 1 = the layer
    copies its input), and outputs of different tokens from one context (near 1 = the
    model ignores the token)."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    n = corpus.n_tokens
    pos = torch.randperm(n, generator=g)[:samples]
    embeds = model.embed(corpus.ids)
    inp = contexts[corpus.prev_index()[pos]]
    out, _ = model(inp, embeds[pos])
    io_cos = float(F.cosine_similarity(inp, out, dim=1).mean())

    ctx = contexts[pos[:1]].expand(min(samples, model.vocab_size), -1)
    toks = torch.randperm(model.vocab_size, generator=g)[: ctx.shape[0]]
    outs, _ = model(ctx, model.embed(toks))
    normed = F.normalize(outs, dim=1)
    iu = torch.triu_indices(outs.shape[0], outs.shape[0], offset=1)
    tok_sim = float((normed @ normed.T)[iu[0], iu[1]].mean())

    deviation = float((contexts - contexts.mean(0)).norm(dim=1).mean())
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
    if contexts.shape[1] == embeds.shape[1]:
        ct = float(F.cosine_similarity(contexts, embeds, dim=1).mean())
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
) -> dict:
    """Repeat sequential passes over the same tokens with carryover; MSE between successive
    passes per trial. Passes if the last MSE is below `final_diff`."""
    model.eval()
    prev, final = sequential_pass(model, corpus, show_progress=show_progress, desc="trial 0")
    losses = []
    for k in range(trials):
        cur, final = sequential_pass(
            model, corpus, start=final, show_progress=show_progress, desc=f"trial {k + 1}"
        )
        losses.append(float(F.mse_loss(cur, prev)))
        prev = cur
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
    model,
    corpus: Corpus,
    contexts: torch.Tensor,
    c,
    trials: bool = True,
    show_progress: bool = False,
) -> dict:
    """All checks for one split with checks params `c`."""
    out = {
        "effective_rank": effective_rank(contexts),
        "degeneracy": degeneracy(contexts, c.probe_samples),
        "identity": identity_probes(
            model, corpus, contexts, c.probe_samples, c.identity_warn, c.ignores_tokens_warn
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
        )
    return out
