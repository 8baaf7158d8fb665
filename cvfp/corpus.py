"""Token corpora as conversations, and the sequential (recurrent) pass over them.

A `Corpus` is a flat id tensor plus conversation offsets. `context_reset: stream` is a
corpus with one conversation (the seeds' single stream); `conversation` keeps each
conversation separate, so its passes start from its own context.

The sequential pass runs all conversations side by side: at position t it feeds the
t-th token of every conversation still active as one batch, i.e. one matrix product per
position instead of one per token. Conversations are sorted by length once so the
active ones at t are always a prefix of the batch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .utils import progress

log = logging.getLogger("cvfp")


@dataclass
class Corpus:
    ids: torch.Tensor      # [N] int64
    offsets: torch.Tensor  # [C+1] int64, offsets[0] = 0, offsets[-1] = N

    @classmethod
    def from_conversations(cls, conversations: Sequence, context_reset: str = "conversation") -> "Corpus":
        if context_reset not in ("stream", "conversation"):
            raise ValueError(f"context_reset={context_reset!r}: allowed stream, conversation")
        arrays = [np.asarray(c, dtype=np.int64).reshape(-1) for c in conversations]
        arrays = [a for a in arrays if a.size]
        if not arrays:
            raise ValueError("corpus is empty: no conversation has any token")
        ids = torch.from_numpy(np.concatenate(arrays))
        if context_reset == "stream":
            offsets = torch.tensor([0, ids.numel()])
        else:
            offsets = torch.from_numpy(np.cumsum([0] + [a.size for a in arrays]))
        return cls(ids, offsets.long())

    @property
    def n_tokens(self) -> int:
        return int(self.ids.numel())

    @property
    def n_conversations(self) -> int:
        return int(self.offsets.numel() - 1)

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def prev_index(self) -> torch.Tensor:
        """Index of each token's input context in the parallel pass: the previous token of
        its conversation; the first token takes its conversation's last (carryover)."""
        idx = torch.arange(self.n_tokens) - 1
        starts, ends = self.offsets[:-1], self.offsets[1:]
        idx[starts] = ends - 1
        return idx

    def last_index(self) -> torch.Tensor:
        return self.offsets[1:] - 1

    def conversation(self, i: int) -> torch.Tensor:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    def subset(self, conv_ids: Sequence[int]) -> "Corpus":
        return Corpus.from_conversations([self.conversation(i).numpy() for i in conv_ids])


class PositionSchedule:
    """Batched walk over positions: rows(t) are the token indices of the t-th token of each
    still-active conversation, in length-sorted conversation order."""

    def __init__(self, corpus: Corpus):
        lengths = corpus.lengths
        self.order = torch.argsort(lengths, descending=True, stable=True)
        self.sorted_lengths = lengths[self.order]
        self.starts = corpus.offsets[:-1][self.order]
        self.max_len = int(self.sorted_lengths[0])
        # active[t] = number of conversations with length > t
        counts = torch.bincount(self.sorted_lengths, minlength=self.max_len + 1)
        self.active = (corpus.n_conversations - torch.cumsum(counts, 0))[: self.max_len].tolist()

    def __len__(self) -> int:
        return self.max_len

    def rows(self, t: int) -> torch.Tensor:
        return self.starts[: self.active[t]] + t


def warn_if_large(n_tokens: int, limit: int, what: str) -> None:
    if n_tokens > limit:
        log.warning("%s over %d tokens (more than %d): this pass may take a while", what, n_tokens, limit)


@torch.no_grad()
def sequential_pass(model, corpus: Corpus, start: torch.Tensor | None = None,
                    show_progress: bool = False, desc: str = "sequential pass",
                    out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Contexts after every token, fed one position at a time (the recurrent definition).

    start: [C, Dc] context per conversation (None = zeros, as at iteration 0).
    Returns (contexts [N, Dc] in corpus order, final context per conversation [C, Dc]).
    `out` may be a preallocated (e.g. memory-mapped) [N, Dc] tensor to write into.
    """
    sched = PositionSchedule(corpus)
    dc = model.context_dim
    embeds = model.embed(corpus.ids)
    state = (torch.zeros(corpus.n_conversations, dc, dtype=embeds.dtype) if start is None
             else start[sched.order].clone())
    contexts = torch.empty(corpus.n_tokens, dc, dtype=embeds.dtype) if out is None else out
    for t in progress(range(len(sched)), desc=desc, enabled=show_progress, unit="pos"):
        k = sched.active[t]
        rows = sched.rows(t)
        new, _ = model(state[:k], embeds[rows])
        state[:k] = new
        contexts[rows] = new
    final = torch.empty_like(state)
    final[sched.order] = state
    return contexts, final
