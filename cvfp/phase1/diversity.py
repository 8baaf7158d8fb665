"""Diversity losses (SPEC section 3). Lower is better; all three have a real gradient.

The seeds computed `ema_variance` and `distribution` from detached running statistics,
which gives zero gradient. Here the current batch's statistics enter the EMA with
gradient while the old state is detached.

`global_mean` and `ema_variance` are functions of per-token sums: `stats(C)` returns
sum_i s(C_i) (float64) and `from_stats(S, n)` the loss. That is what lets Phase 1 split a
batch into chunks and ranks and still take the full-batch gradient (cvfp/phase1/trainer.py):
S is summed over chunks and ranks first, then dL/dS weights each chunk's sums.
`distribution` keeps its statistics inside the layers and has no such form.
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

    @staticmethod
    def stats(contexts: torch.Tensor) -> torch.Tensor:
        c = contexts.double()
        return torch.cat([c.sum(0), (c * c).sum().reshape(1)])  # [sum C_i, sum |C_i|^2]

    def from_stats(self, s: torch.Tensor, n: int) -> torch.Tensor:
        mean = s[:-1] / n
        with torch.no_grad():
            m = mean.float()
            self.mean = (
                m.clone()
                if self.mean is None
                else self.momentum * self.mean + (1 - self.momentum) * m
            )
        # ||C - mean||^2 = sum |C_i|^2 - n |mean|^2 (float64 sums keep the difference exact enough)
        spread = (s[-1] - n * (mean * mean).sum()).clamp_min(1e-30)
        return (-torch.sqrt(spread) / n).float()

    def __call__(self, contexts: torch.Tensor, model=None) -> torch.Tensor:
        if contexts.shape[0] > 1:
            return self.from_stats(self.stats(contexts), contexts.shape[0])
        ref = self.mean if self.mean is not None else torch.zeros_like(contexts[0])
        with torch.no_grad():
            self.mean = (
                contexts[0].clone()
                if self.mean is None
                else self.momentum * self.mean + (1 - self.momentum) * contexts[0]
            )
        return -torch.linalg.vector_norm(contexts - ref)


class EMAVariance:
    """Seed 002: per-dimension mean/variance tracked by EMA (O(Dc) memory); the loss
    1 / mean(var) penalises low variance."""

    def __init__(self, momentum: float = 0.99, eps: float = 1e-6):
        self.momentum, self.eps = momentum, eps
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None

    @staticmethod
    def stats(contexts: torch.Tensor) -> torch.Tensor:
        c = contexts.double()
        return torch.cat([c.sum(0), (c * c).sum(0)])  # [sum C_i, sum C_i^2]

    def from_stats(self, s: torch.Tensor, n: int) -> torch.Tensor:
        m, d = self.momentum, s.shape[0] // 2
        s1, s2 = s[:d], s[d:]
        if self.mean is None or self.var is None:  # first call: the EMA starts here, unit variance
            self.mean = (s1 / n).detach().float()
            self.var = torch.ones_like(self.mean)
        a = self.mean.detach().double()
        sq = (s2 - 2 * a * s1) / n + a * a  # mean_i (C_i - old_mean)^2
        mean = m * a + (1 - m) * s1 / n
        var = m * self.var.detach().double() + (1 - m) * sq
        self.mean, self.var = mean.detach().float(), var.detach().float()
        return (1.0 / (var.mean() + self.eps)).float()

    def __call__(self, contexts: torch.Tensor, model=None) -> torch.Tensor:
        return self.from_stats(self.stats(contexts), contexts.shape[0])


class Distribution:
    """Seed 000: running per-dimension mean/var kept as buffers inside each layer;
    loss mean(mean^2) + mean((var - 1)^2), averaged over layers."""

    def __init__(self, momentum: float = 0.99):
        self.momentum = momentum

    def __call__(self, contexts: torch.Tensor, model=None) -> torch.Tensor:
        loss = model.distribution_loss() if model is not None else None
        if loss is None:  # eval (no layer stats tracked): report the same formula on this batch
            var = (
                contexts.var(0, unbiased=False)
                if contexts.shape[0] > 1
                else torch.ones_like(contexts[0])
            )
            loss = (contexts.mean(0) ** 2).mean() + ((var - 1.0) ** 2).mean()
        return loss


KINDS = {"global_mean": GlobalMean, "ema_variance": EMAVariance, "distribution": Distribution}


def make_diversity(kind: str, momentum: float = 0.99):
    if kind not in KINDS:
        raise ValueError(f"diversity.kind={kind!r}: allowed {', '.join(KINDS)}")
    return KINDS[kind](momentum)
