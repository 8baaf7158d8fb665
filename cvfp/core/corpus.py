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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cvfp.runtime.distributed import SINGLE, World
from cvfp.runtime.utils import progress

log = logging.getLogger("cvfp")


@dataclass
class Corpus:
    ids: torch.Tensor  # [N] int64
    offsets: torch.Tensor  # [C+1] int64, offsets[0] = 0, offsets[-1] = N

    @classmethod
    def from_conversations(
        cls, conversations: Sequence, context_reset: str = "conversation"
    ) -> Corpus:
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
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def subset(self, conv_ids: Sequence[int]) -> Corpus:
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
        log.warning(
            "%s over %d tokens (more than %d): this pass may take a while", what, n_tokens, limit
        )


@torch.no_grad()
def sequential_pass(
    model,
    corpus: Corpus,
    start: torch.Tensor | None = None,
    show_progress: bool = False,
    desc: str = "sequential pass",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contexts after every token, fed one position at a time (the recurrent definition).

    start: [C, Dc] context per conversation (None = zeros, as at iteration 0).
    Returns (contexts [N, Dc] in corpus order, final context per conversation [C, Dc]).
    `windowed_pass` with one window: the same numbers, all rows in memory.
    """
    dev = model.token_embedding.weight.device
    contexts = torch.empty(corpus.n_tokens, model.context_dim, device=dev)

    def write(index: torch.Tensor, rows: torch.Tensor) -> None:
        contexts[index.to(dev)] = rows

    final = windowed_pass(
        model, corpus, write, corpus.n_tokens, start, show_progress=show_progress, desc=desc
    )
    return contexts, final


@torch.no_grad()
def windowed_pass(
    model,
    corpus: Corpus,
    write: Callable[[torch.Tensor, torch.Tensor], None],
    window_tokens: int,
    start: torch.Tensor | None = None,
    show_progress: bool = False,
    desc: str = "sequential pass",
) -> torch.Tensor:
    """The sequential pass over all conversations side by side, holding at most
    `window_tokens` rows (or one position's) at a time: for each window of consecutive
    positions, `write(index, contexts)` gets the corpus indices [r] of its rows and their
    contexts [r, Dc]. Returns the final context per conversation [C, Dc].

    The rows are laid out position-major (all active conversations' t-th tokens, then the
    (t+1)-th, ...), so each position reads its embeddings and writes its contexts as one
    contiguous slice, and the output of position t is directly the state of position t+1
    (the active conversations are a prefix). Every position sees the same batch whatever
    the window, so `window_tokens` never changes a bit of the result.
    """
    sched = PositionSchedule(corpus)
    dc, n_conv = model.context_dim, corpus.n_conversations
    active = torch.tensor(sched.active)
    at = torch.cat([torch.zeros(1, dtype=torch.long), active.cumsum(0)])  # first row of each t
    dev = model.token_embedding.weight.device
    state = torch.zeros(n_conv, dc, device=dev) if start is None else start[sched.order.to(dev)]
    final = torch.empty(n_conv, dc, device=dev)
    ends = sched.active[1:] + [0]  # conversations [ends[t], active[t]) end at position t
    bar = progress(total=corpus.n_tokens, desc=desc, enabled=show_progress, unit="tok", smoothing=0)
    t, n_pos = 0, len(sched)
    while t < n_pos:
        u = max(int(torch.searchsorted(at, at[t] + window_tokens, right=True)) - 1, t + 1)
        u = min(u, n_pos)  # positions [t, u): at most window_tokens rows, at least one position
        lo = int(at[t])
        pos = torch.repeat_interleave(torch.arange(t, u), active[t:u])  # row -> position
        index = sched.starts[torch.arange(lo, int(at[u])) - at[pos]] + pos  # row -> corpus
        embeds = model.embed(corpus.ids[index])
        out = torch.empty(len(index), dc, dtype=embeds.dtype, device=dev)
        for p in range(t, u):
            a, b = int(at[p]) - lo, int(at[p + 1]) - lo
            state, _ = model(state[: b - a], embeds[a:b])
            out[a:b] = state
            if ends[p] < sched.active[p]:
                final[sched.order[ends[p] : sched.active[p]].to(dev)] = state[ends[p] :]
        write(index, out)
        bar.update(len(index))
        t = u
    bar.close()
    return final


def chunk_groups(offsets: list[int], chunk_tokens: int) -> Iterator[tuple[int, int]]:
    """Conversation ranges [c, d) of the chunks: whole conversations totalling <= chunk_tokens,
    or one longer conversation alone (d = c + 1). Greedy from the first conversation, so the
    groups of a corpus that starts at a group boundary are the same groups."""
    c, n = 0, len(offsets) - 1
    while c < n:
        a = offsets[c]
        d = c + 1
        while d < n and offsets[d + 1] - a <= chunk_tokens:
            d += 1
        yield c, d
        c = d


def chunks(corpus: Corpus, chunk_tokens: int):
    """Yield (row_start, row_end, sub_corpus, carry) in corpus order.

    carry=True means the slice continues the previous one's conversation (start from its
    final context); otherwise every conversation in the slice starts from zero."""
    offsets = corpus.offsets.tolist()
    for c, d in chunk_groups(offsets, chunk_tokens):
        a, b = offsets[c], offsets[d]
        if b - a > chunk_tokens:  # one long conversation: slices with carry
            for s in range(a, b, chunk_tokens):
                e = min(s + chunk_tokens, b)
                yield s, e, Corpus(corpus.ids[s:e], torch.tensor([0, e - s])), s > a
        else:  # whole conversations up to chunk_tokens
            yield a, b, Corpus(corpus.ids[a:b], corpus.offsets[c : d + 1] - a), False


def chunk_chains(corpus: Corpus, chunk_tokens: int) -> list[list[tuple]]:
    """`chunks` grouped into chains: a chunk of whole conversations alone, or the slices of
    one conversation longer than a chunk (each slice carries on from the one before)."""
    out: list[list[tuple]] = []
    for part in chunks(corpus, chunk_tokens):
        if part[3]:
            out[-1].append(part)
        else:
            out.append([part])
    return out


@torch.no_grad()
def zero_start_pass(
    model,
    corpus: Corpus,
    out,
    chunk_tokens: int,
    world: World = SINGLE,
    show_progress: bool = False,
    desc: str = "sequential pass",
) -> None:
    """The sequential pass from zero contexts (Phase 1 iteration 0), chunk by chunk
    (`chunks`), each chunk's rows written to `out[a:b]` (a tensor, or a `ContextFile`), so
    memory holds one chunk. With a torch.distributed `world`, the chunks are dealt out to
    the ranks; a chunk that carries on a long conversation stays with the rank of its start."""
    chains = chunk_chains(corpus, chunk_tokens)[world.rank :: world.size]
    bar = progress(
        total=sum(p[1] - p[0] for chain in chains for p in chain),
        desc=desc,
        enabled=show_progress,
        unit="tok",
        smoothing=0,  # the rate over the whole pass: chunks differ in speed, the ETA holds
    )
    for k, chain in enumerate(chains):
        bar.set_postfix_str(f"chunk {k + 1}/{len(chains)}", refresh=False)
        final = None
        for a, b, sub, carry in chain:
            ctx, final = sequential_pass(model, sub, start=final if carry else None)
            out[a:b] = ctx
            bar.update(b - a)
    bar.close()
    world.barrier()
