"""Phase 1, objective `reconstruction`: v3 context reconstruction learning (SPEC section 7, seed 003).

The context update is trained with next-token prediction, and the new context must encode
what it was computed from: with `prev` the context before token t,

    new, token_out = model(prev, embed[t])
    loss = CE(model.logits(new, token_out), token[t+1])
           + recon_weight * MSE(decoder(new), concat(prev, embed[t]).detach())

by truncated BPTT over batches of conversations (no gradient crosses a `chunk_length`
chunk), on one intra-op thread. `evaluate` runs the same forward without gradient from a
zero context per conversation, so its contexts are C*. Why each choice: docs/reconstruction.md.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cvfp.core.corpus import Corpus, PositionSchedule, warn_if_large
from cvfp.core.training import optimizer_step, perplexity
from cvfp.params import Phase1Params, ReconstructionParams
from cvfp.phase1.metrics import ReconstructionEpoch
from cvfp.runtime.utils import adam, one_intraop_thread, progress

log = logging.getLogger("cvfp")


class ContextDecoder(nn.Module):
    """Reconstructs concat(previous context, token embedding) from the new context."""

    def __init__(self, context_dim: int, embed_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(context_dim, 2 * context_dim),
            nn.ReLU(),
            nn.Linear(2 * context_dim, context_dim + embed_dim),
        )

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.net(context)


def reconstruction_target(prev_context: torch.Tensor, token_embed: torch.Tensor) -> torch.Tensor:
    """concat(previous context, token embedding), detached: a fixed regression target."""
    return torch.cat([prev_context, token_embed], dim=-1).detach()


class ConversationBatch:
    """Conversations `conv_ids` of `full`, trained side by side.

    `corpus` is the sub-corpus of these conversations, `schedule` its position walk, and
    `index` maps its token rows back to rows of `full`. `next_ids[i]` is the token
    after row i; `has_next[i]` is False for the last token of each conversation."""

    def __init__(self, full: Corpus, conv_ids: list[int]):
        self.corpus = full.subset(conv_ids)
        self.schedule = PositionSchedule(self.corpus)
        self.index = torch.cat(
            [torch.arange(int(full.offsets[c]), int(full.offsets[c + 1])) for c in conv_ids]
        )
        ids = self.corpus.ids
        self.next_ids = torch.cat([ids[1:], ids[:1]])
        self.has_next = torch.ones(ids.numel(), dtype=torch.bool)
        self.has_next[self.corpus.offsets[1:] - 1] = False


def conversation_batches(
    corpus: Corpus, size: int, generator: torch.Generator | None = None
) -> list[ConversationBatch]:
    """Batches of `size` conversations of similar length (few idle rows in the walk).

    With a generator: ties in length are broken at random and the batch order is shuffled
    (training); without: longest first, in a fixed order (evaluation)."""
    n = corpus.n_conversations
    order = torch.arange(n) if generator is None else torch.randperm(n, generator=generator)
    order = order[torch.argsort(corpus.lengths[order], descending=True, stable=True)]
    groups = [order[i : i + size].tolist() for i in range(0, n, size)]
    if generator is not None:
        groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
    return [ConversationBatch(corpus, g) for g in groups]


@dataclass
class ChunkOutput:
    state: torch.Tensor  # [C, Dc] contexts after the chunk (schedule order, with graph)
    token_loss: torch.Tensor  # sum of CE over positions with a next token
    n_tokens: int
    recon_loss: torch.Tensor  # sum over positions of the per-position MSE
    n_positions: int
    correct: int  # next-token argmax hits


def chunk_forward(
    model,
    decoder,
    batch: ConversationBatch,
    state: torch.Tensor,
    t0: int,
    t1: int,
    out: torch.Tensor | None = None,
) -> ChunkOutput:
    """Positions t0..t1-1 of `batch`, starting from `state` ([C, Dc], schedule order).

    `state` is detached first: truncated BPTT, no gradient reaches the previous chunk. The
    recurrence runs position by position; the head and the decoder then run once on all of
    the chunk's positions. `out` ([N_full, Dc]) receives the contexts, by full-corpus row."""
    sched, ids = batch.schedule, batch.corpus.ids
    state = state.detach()
    row_parts, prevs, embeds, news, token_outs = [], [], [], [], []
    for t in range(t0, t1):
        k, r = sched.active[t], sched.rows(t)
        emb = model.embed(ids[r])
        new, tok = model(state[:k], emb)
        row_parts.append(r)
        prevs.append(state[:k])
        embeds.append(emb)
        news.append(new)
        token_outs.append(tok)
        state = torch.cat([new, state[k:]])  # active conversations are a prefix
    rows, new, tok = torch.cat(row_parts), torch.cat(news), torch.cat(token_outs)
    if out is not None:
        out[batch.index[rows]] = new.detach()

    target = reconstruction_target(torch.cat(prevs), torch.cat(embeds))
    recon = ((decoder(new) - target) ** 2).mean(dim=1)
    has = batch.has_next[rows]
    logits = model.logits(new[has], tok[has])
    targets = batch.next_ids[rows][has]
    ce = F.cross_entropy(logits, targets, reduction="sum")
    correct = int((logits.argmax(-1) == targets).sum())
    return ChunkOutput(state, ce, int(has.sum()), recon.sum(), int(rows.numel()), correct)


@dataclass
class SplitStats:
    token_loss: float  # mean CE over positions with a next token
    recon_loss: float  # mean MSE over all positions
    loss: float  # token_loss + recon_weight * recon_loss
    ppl: float  # exp(token_loss)
    acc: float  # next-token accuracy
    n_tokens: int
    n_positions: int


class _Sums:
    """Running sums of a pass, turned into SplitStats."""

    def __init__(self):
        self.ce = self.recon = 0.0
        self.n_tokens = self.n_positions = self.correct = 0

    def add(self, o: ChunkOutput) -> None:
        self.ce += o.token_loss.item()
        self.recon += o.recon_loss.item()
        self.n_tokens += o.n_tokens
        self.n_positions += o.n_positions
        self.correct += o.correct

    def stats(self, recon_weight: float) -> SplitStats:
        tl = self.ce / max(self.n_tokens, 1)
        rl = self.recon / max(self.n_positions, 1)
        return SplitStats(
            tl,
            rl,
            tl + recon_weight * rl,
            perplexity(tl),
            self.correct / max(self.n_tokens, 1),
            self.n_tokens,
            self.n_positions,
        )


def _chunk_bounds(n_positions: int, chunk_length: int):
    for t0 in range(0, n_positions, chunk_length):
        yield t0, min(t0 + chunk_length, n_positions)


@torch.no_grad()
def evaluate(
    model,
    decoder,
    corpus: Corpus,
    r: ReconstructionParams,
    show_progress: bool = False,
    desc: str = "evaluate",
) -> tuple[SplitStats, torch.Tensor]:
    """Losses, perplexity and accuracy over `corpus` from a zero context per conversation,
    with reconstruction params `r`. Returns (stats, contexts [N, Dc] = C*)."""
    with one_intraop_thread():
        return _evaluate(model, decoder, corpus, r, show_progress, desc)


def _evaluate(
    model, decoder, corpus: Corpus, r: ReconstructionParams, show_progress: bool, desc: str
) -> tuple[SplitStats, torch.Tensor]:
    model.eval(), decoder.eval()
    contexts = torch.empty(corpus.n_tokens, model.context_dim)
    sums = _Sums()
    for batch in progress(
        conversation_batches(corpus, r.batch_conversations),
        desc=desc,
        enabled=show_progress,
        unit="batch",
    ):
        state = torch.zeros(batch.corpus.n_conversations, model.context_dim)
        for t0, t1 in _chunk_bounds(len(batch.schedule), r.chunk_length):
            o = chunk_forward(model, decoder, batch, state, t0, t1, out=contexts)
            state = o.state
            sums.add(o)
    return sums.stats(r.recon_weight), contexts


@dataclass
class ReconstructionResult:
    decoder: ContextDecoder
    history: list[dict] = field(default_factory=list)  # one row per epoch (plots/phase1_train.csv)
    epoch_seconds: list[float] = field(default_factory=list)  # wall time of each epoch
    train_seconds: float = 0.0
    final: dict[str, SplitStats] = field(default_factory=dict)  # train/val after training
    contexts: dict[str, torch.Tensor] = field(default_factory=dict)  # train/val C* after training


HISTORY_COLUMNS = list(ReconstructionEpoch.model_fields)  # one row per epoch


def train_reconstruction(
    model,
    train: Corpus,
    val: Corpus,
    p: Phase1Params,
    seed: int = 0,
    show_progress: bool = False,
    log_fn=log.info,
) -> ReconstructionResult:
    """Phase 1 with objective `reconstruction` and phase1 params `p` (settings in
    p.reconstruction). Trains `model` in place (stack, embed_norm, token_output; the embedding
    table only if model.embedding == learned) and a new ContextDecoder."""
    with one_intraop_thread():
        return _train(model, train, val, p, seed, show_progress, log_fn)


def _train(
    model, train: Corpus, val: Corpus, p: Phase1Params, seed: int, show_progress: bool, log_fn
) -> ReconstructionResult:
    r = p.reconstruction
    warn_if_large(train.n_tokens, p.warn_tokens, "phase1 reconstruction train")
    model.set_track_stats(False)
    model.token_output.requires_grad_(True)  # frozen for the cvfp objective, trained here
    decoder = ContextDecoder(model.context_dim, model.embed_dim)
    params = [q for q in model.parameters() if q.requires_grad] + list(decoder.parameters())
    optimizer = adam(params, lr=r.lr)
    gen = torch.Generator().manual_seed(seed)
    result = ReconstructionResult(decoder)

    for epoch in range(1, r.epochs + 1):
        t_start = time.perf_counter()
        model.train(), decoder.train()
        sums, steps, skipped = _Sums(), 0, 0
        batches = conversation_batches(train, r.batch_conversations, gen)
        for batch in progress(
            batches, desc=f"reconstruction epoch {epoch}", enabled=show_progress, unit="batch"
        ):
            state = torch.zeros(batch.corpus.n_conversations, model.context_dim)
            for t0, t1 in _chunk_bounds(len(batch.schedule), r.chunk_length):
                o = chunk_forward(model, decoder, batch, state, t0, t1)
                state = o.state
                loss = (
                    o.token_loss / max(o.n_tokens, 1)
                    + r.recon_weight * o.recon_loss / o.n_positions
                )
                if torch.isfinite(loss):
                    optimizer_step(optimizer, loss, params, p.grad_clip)
                    steps += 1
                else:  # as in Phase 1: skip, never poison the weights
                    skipped += 1
                sums.add(o)
        tr = sums.stats(r.recon_weight)  # running averages over the epoch
        va, _ = evaluate(model, decoder, val, r)
        seconds = time.perf_counter() - t_start
        result.train_seconds += seconds
        row = {
            "epoch": epoch,
            **{f"train_{k}": v for k, v in _row(tr).items()},
            **{f"val_{k}": v for k, v in _row(va).items()},
            "steps": steps,
            "skipped_steps": skipped,
        }
        result.history.append(row)
        result.epoch_seconds.append(seconds)
        log_fn(
            f"reconstruction epoch {epoch}/{r.epochs}: train token {tr.token_loss:.4f} recon "
            f"{tr.recon_loss:.4f} ppl {tr.ppl:.2f} acc {tr.acc:.4f} | val token {va.token_loss:.4f} "
            f"recon {va.recon_loss:.4f} ppl {va.ppl:.2f} acc {va.acc:.4f} | steps {steps} "
            f"skipped {skipped} | {seconds:.1f}s"
        )
        if skipped:
            log.warning(
                "reconstruction epoch %d: %d step(s) skipped (non-finite loss)", epoch, skipped
            )

    for name, corpus in (("train", train), ("val", val)):
        result.final[name], result.contexts[name] = evaluate(
            model, decoder, corpus, r, show_progress, desc=f"reconstruction eval {name}"
        )
    model.eval(), decoder.eval()
    return result


def _row(s: SplitStats) -> dict:
    d = asdict(s)
    return {k: d[k] for k in ("token_loss", "recon_loss", "loss", "ppl", "acc")}
