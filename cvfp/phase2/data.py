"""Phase 2 examples: every position with a next token, its inputs and target (`PositionData`),
and a mini-batch of them (`Batch`), as cvfp/phase2/trainer.py trains and evaluates on them."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from cvfp.core.corpus import Corpus

if TYPE_CHECKING:
    from cvfp.core.contexts import ContextFile


class Batch(NamedTuple):
    """Positions i of one mini-batch: the stack's inputs and the head's context and target."""

    prev_context: torch.Tensor  # [B, Dc] C*[i-1], zeros at a segment's first token
    ids: torch.Tensor  # [B] token[i]
    fixed: torch.Tensor  # [B, Dc] C*[i], concatenated to the token output before the head
    targets: torch.Tensor  # [B] token[i+1]

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device) for t in self))


class PositionData:
    """Phase 2 examples of one split: position i -> (C*[i-1] or 0, token[i], C*[i], token[i+1]).

    `offsets` are the corpus segments (conversations, or [0, N] for one stream): a segment's
    first token gets a zero input context, its last token has no target.
    """

    def __init__(self, ids, cstar: np.ndarray | ContextFile, offsets):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.cstar = cstar
        offsets = np.asarray(offsets, dtype=np.int64)
        # int32 where it fits: 4 bytes per token less on a long corpus, the same rows
        index = np.int32 if self.ids.size < 2**31 else np.int64
        self.prev = np.arange(-1, self.ids.size - 1, dtype=index)
        self.prev[offsets[:-1]] = -1
        has_target = np.ones(self.ids.size, dtype=bool)
        has_target[offsets[1:] - 1] = False
        # int32 too: the train order (a permutation of these) is 4 bytes per token less
        self.positions = np.flatnonzero(has_target).astype(index)
        self.context = "cstar"  # ablations: "zero" or "shuffled"
        self.row_map: np.ndarray | None = None

    @classmethod
    def from_corpus(cls, corpus: Corpus, cstar: np.ndarray | ContextFile) -> PositionData:
        return cls(corpus.ids.numpy(), cstar, corpus.offsets.numpy())

    def __len__(self) -> int:
        return int(self.positions.size)

    def ablated(self, context: str, seed: int = 0) -> PositionData:
        """The same examples with C* replaced by zeros or permuted across positions."""
        out = copy.copy(self)
        out.context = context
        if self.context == "zero" and context in ("zero", "shuffled"):
            out.context = "zero"  # zeros shuffled are zeros (phase2.context: zero)
        elif context == "shuffled":
            out.row_map = np.random.default_rng(seed).permutation(self.ids.size)
        elif context != "zero":
            raise ValueError(f"context={context!r}: allowed zero, shuffled")
        return out

    def batch(self, idx: np.ndarray) -> Batch:
        """The examples at positions `idx` (in ascending order)."""
        idx = np.sort(idx)  # ascending rows: sequential reads from the memmap
        first = self.prev[idx] < 0
        dc = self.cstar.shape[1]
        if self.context == "zero":
            prev_ctx = fixed = torch.zeros(idx.size, dc)
        else:
            rows = np.concatenate([np.where(first, idx, self.prev[idx]).astype(np.int64), idx])
            if self.row_map is not None:
                rows = self.row_map[rows]
            ctx = torch.from_numpy(np.asarray(self.cstar[rows], dtype=np.float32))
            prev_ctx, fixed = ctx[: idx.size], ctx[idx.size :]
            prev_ctx[torch.from_numpy(first)] = 0.0
        return Batch(
            prev_ctx, torch.from_numpy(self.ids[idx]), fixed, torch.from_numpy(self.ids[idx + 1])
        )
