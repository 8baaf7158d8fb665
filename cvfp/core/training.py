"""Pieces every training loop here shares: one optimiser step, the count of trainable
parameters, perplexity with its overflow guard, and the best-epoch tracker.

Used by Phase 1 (cvfp/phase1/trainer.py), Phase 2 (cvfp/phase2/trainer.py), the reconstruction objective
(cvfp/phase1/reconstruction.py) and the Transformer baseline (cvfp/phase2/baselines.py)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from cvfp.runtime.distributed import SINGLE, World


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor | Callable[[], None],
    params: list[nn.Parameter],
    grad_clip: float,
    world: World = SINGLE,
) -> None:
    """zero_grad, backward, the gradients summed over torchrun ranks (a no-op in one
    process), clip to `grad_clip` (global norm), step.

    `loss`: the loss tensor, or a function that runs the backward passes itself (Phase 1's
    parallel step accumulates the full-batch gradient chunk by chunk)."""
    optimizer.zero_grad(set_to_none=True)
    if isinstance(loss, torch.Tensor):
        loss.backward()
    else:
        loss()
    world.all_reduce_grads(params)
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


def count_parameters(params: Iterable[nn.Parameter]) -> int:
    """How many numbers `params` hold (pass the trainable ones to count those)."""
    return sum(p.numel() for p in params)


def perplexity(loss: float) -> float:
    """exp(mean nats); inf for a diverged loss instead of OverflowError (exp overflows past
    ~709)."""
    return math.exp(loss) if loss < 700 else math.inf


class BestEpoch:
    """The epoch with the lowest validation loss so far, with a copy of the state then.

    `update` takes the epoch's val loss and a function returning the state to keep (called
    only when the epoch is the best so far); the first update always counts. `bad` is the
    number of epochs since the last improvement (early stopping)."""

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.loss = math.inf
        self.state: Any = None
        self.bad = 0

    def update(self, epoch: int, loss: float, state: Callable[[], Any]) -> bool:
        if self.epoch is not None and not loss < self.loss:
            self.bad += 1
            return False
        self.epoch, self.loss, self.state, self.bad = epoch, loss, copy.deepcopy(state()), 0
        return True
