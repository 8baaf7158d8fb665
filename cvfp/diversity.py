"""Diversity losses (SPEC section 3). Lower is better; all three have a real gradient.

The seeds computed `ema_variance` and `distribution` from detached running statistics,
which gives zero gradient. Here the current batch's statistics enter the EMA with
gradient while the old state is detached.
"""
from __future__ import annotations

import torch


class GlobalMean:
    """Seed 001 (parallel standard): -||C - mean(C)||_2 / N.

    A single row (sequential mode on one stream) has no batch mean, so it is compared with
    a running mean instead (detached), otherwise the loss would be identically zero.
    """

    def __init__(self, momentum: float = 0.99):
        self.momentum = momentum
        self.mean: torch.Tensor | None = None

    def __call__(self, contexts: torch.Tensor, model=None) -> torch.Tensor:
        if contexts.shape[0] > 1:
            ref = contexts.mean(0)
        else:
            ref = self.mean if self.mean is not None else torch.zeros_like(contexts[0])
        with torch.no_grad():
            batch_mean = contexts.mean(0)
            self.mean = batch_mean.clone() if self.mean is None else \
                self.momentum * self.mean + (1 - self.momentum) * batch_mean
        return -torch.linalg.vector_norm(contexts - ref) / contexts.shape[0]


class EMAVariance:
    """Seed 002: per-dimension mean/variance tracked by EMA (O(Dc) memory); the loss
    1 / mean(var) penalises low variance."""

    def __init__(self, momentum: float = 0.99, eps: float = 1e-6):
        self.momentum, self.eps = momentum, eps
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None

    def __call__(self, contexts: torch.Tensor, model=None) -> torch.Tensor:
        m = self.momentum
        if self.mean is None:  # first call: start the EMA at this batch, unit variance
            self.mean = contexts.detach().mean(0)
            self.var = torch.ones_like(self.mean)
        old_mean, old_var = self.mean.detach(), self.var.detach()
        mean = m * old_mean + (1 - m) * contexts.mean(0)
        var = m * old_var + (1 - m) * ((contexts - old_mean) ** 2).mean(0)
        self.mean, self.var = mean.detach(), var.detach()
        return 1.0 / (var.mean() + self.eps)


class Distribution:
    """Seed 000: running per-dimension mean/var kept as buffers inside each layer;
    loss mean(mean^2) + mean((var - 1)^2), averaged over layers."""

    def __init__(self, momentum: float = 0.99):
        self.momentum = momentum

    def __call__(self, contexts: torch.Tensor, model=None) -> torch.Tensor:
        loss = model.distribution_loss() if model is not None else None
        if loss is None:  # eval (no layer stats tracked): report the same formula on this batch
            var = contexts.var(0, unbiased=False) if contexts.shape[0] > 1 else torch.ones_like(contexts[0])
            loss = (contexts.mean(0) ** 2).mean() + ((var - 1.0) ** 2).mean()
        return loss


KINDS = {"global_mean": GlobalMean, "ema_variance": EMAVariance, "distribution": Distribution}


def make_diversity(kind: str, momentum: float = 0.99):
    if kind not in KINDS:
        raise ValueError(f"diversity.kind={kind!r}: allowed {', '.join(KINDS)}")
    return KINDS[kind](momentum)
