"""A tiny Phase 1 setting: a model over 30 tokens and random conversations."""

import numpy as np
import torch

from cvfp.core.model import CVFPModel


def tiny_model(seed=0, vocab=30, **kw):
    torch.manual_seed(seed)
    return CVFPModel(vocab, 16, 16, 32, [1, 1], **kw)


def convs(seed=0, n=5, vocab=30):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=rng.integers(3, 12)) for _ in range(n)]
