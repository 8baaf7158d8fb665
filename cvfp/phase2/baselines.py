"""Baselines for Phase 2, on the same train/val tokens and the same targets.

Targets everywhere are token[i+1] for every position i that has a next token in its
segment (conversation, or the whole stream), exactly the Phase 2 positions.

- bigram: add-k smoothed P(b | a) = (c(a,b) + k) / (c(a) + k V), counted on train; k is
  the value of baselines.bigram_k_grid with the lowest val loss.
- transformer: a GPT-2 (Hugging Face `transformers`) trained from scratch, its width chosen
  so its trainable parameters are within a tolerance of CVFP's Phase 2 trainable count.
- ablations (sanity checks): the trained CVFP model on val and test with C* zeroed or
  shuffled across positions at evaluation only; if the context carries information, both
  must hurt. The control trained without any context is `phase2.context: zero`.

Val chooses (the bigram's k, the Transformer's epoch), test reports: each baseline scores
test once, with what val chose, and returns its per-target test nats (Phase 2 position
order) for the per-conversation file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from cvfp.core.corpus import Corpus
from cvfp.core.training import BestEpoch, count_parameters, optimizer_step, perplexity
from cvfp.params import BaselineParams, Phase2Params
from cvfp.phase2.data import PositionData
from cvfp.phase2.evaluation import Stats, evaluate, position_nats
from cvfp.phase2.padded import IGNORE, padded_mean, real_logits
from cvfp.runtime.utils import adam, progress

log = logging.getLogger("cvfp")


class BaselineResult(NamedTuple):
    """What a baseline returns: its metrics (numbers for metrics/phase2.json), its test nats
    per target position, and its training wall time (metrics/timing/phase2.json)."""

    metrics: dict
    test_nats: np.ndarray
    train_seconds: float


def _metrics(loss: float, acc: float, **extra) -> dict:
    return {"val_loss": loss, "val_ppl": perplexity(loss), "val_acc": acc, **extra}


def _test(nats: np.ndarray, correct: np.ndarray) -> dict:
    """test_loss / test_ppl / test_acc from per-target nats and top-1 hits."""
    loss = float(nats.sum() / max(nats.size, 1))
    return {
        "test_loss": loss,
        "test_ppl": perplexity(loss),
        "test_acc": float(correct.sum() / max(correct.size, 1)),
    }


# ---------------------------------------------------------------- bigram


PAIR_CHUNK = 1 << 20  # positions per chunk: the bigram holds no per-token array of a split


def bigram_pairs(
    corpus: Corpus, chunk: int = PAIR_CHUNK
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(token[i], token[i+1]) for every position with a next token in its segment, in
    ascending i, `chunk` positions of the corpus at a time."""
    ids = corpus.ids.numpy()
    ends = corpus.offsets[1:].numpy() - 1  # ascending: a segment's last token has no next
    for s in range(0, ids.size, chunk):
        e = min(s + chunk, ids.size)
        keep = np.ones(e - s, dtype=bool)
        lo, hi = np.searchsorted(ends, [s, e])
        keep[ends[lo:hi] - s] = False
        pos = np.flatnonzero(keep) + s
        yield ids[pos], ids[pos + 1]


class Bigram:
    """Add-k bigram counted on train. Counts are kept sparse (distinct pairs only), so
    V = 50k is fine; counted and scored in chunks of positions (exact: integer counts)."""

    def __init__(self, train: Corpus, vocab_size: int, chunk: int = PAIR_CHUNK):
        self.vocab_size, self.chunk = vocab_size, chunk
        codes, counts = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        self.row_total = np.zeros(vocab_size, dtype=np.int64)
        for a, b in bigram_pairs(train, chunk):
            new, n = np.unique(a * vocab_size + b, return_counts=True)
            codes, at = np.unique(np.concatenate([codes, new]), return_inverse=True)
            merged = np.zeros(codes.size, dtype=np.int64)
            np.add.at(merged, at, np.concatenate([counts, n]))
            counts = merged
            self.row_total += np.bincount(a, minlength=vocab_size)
        self.codes, self.counts = codes, counts  # sorted
        # Most frequent successor per row (ties -> smallest id); unseen rows predict id 0.
        order = np.lexsort((codes, -counts, codes // vocab_size))
        rows = codes[order] // vocab_size
        first = np.r_[True, rows[1:] != rows[:-1]][: rows.size]  # no pair in train: none
        self.argmax = np.zeros(vocab_size, dtype=np.int64)
        self.argmax[rows[first]] = codes[order][first] % vocab_size

    def score(self, corpus: Corpus, k: float) -> tuple[np.ndarray, np.ndarray]:
        """Per target position (Phase 2 order): nats of -log P(b | a) and top-1 correct."""
        codes, v = self.codes, self.vocab_size
        nats, hits = [np.zeros(0)], [np.zeros(0, dtype=bool)]
        for va, vb in bigram_pairs(corpus, self.chunk):
            q = va * v + vb
            at = np.clip(np.searchsorted(codes, q), 0, max(codes.size - 1, 0))
            c_ab = np.where(codes[at] == q, self.counts[at], 0) if codes.size else np.zeros(q.size)
            nats.append(-np.log((c_ab + k) / (self.row_total[va] + k * v)))
            hits.append(self.argmax[va] == vb)
        return np.concatenate(nats), np.concatenate(hits)


def bigram_baseline(
    train: Corpus, val: Corpus, test: Corpus, vocab_size: int, k_grid: list[float]
) -> BaselineResult:
    """Add-k bigram whose k is the one of `k_grid` with the lowest val loss (val chooses);
    test is scored once, with that k."""
    t0 = time.perf_counter()
    model = Bigram(train, vocab_size)
    seconds = time.perf_counter() - t0
    val_loss = {k: float(model.score(val, k)[0].mean()) for k in k_grid}
    k = min(k_grid, key=lambda x: (val_loss[x], x))  # ties: the smaller k
    _, val_correct = model.score(val, k)
    test_nats, test_correct = model.score(test, k)
    metrics = _metrics(
        val_loss[k],
        float(val_correct.mean()),
        **_test(test_nats, test_correct),
        trainable_params=vocab_size * vocab_size,
        k=k,
        k_grid=list(k_grid),
        val_loss_by_k=[val_loss[x] for x in k_grid],
        distinct_pairs=int(model.codes.size),
    )
    return BaselineResult(metrics, test_nats, seconds)


# ---------------------------------------------------------------- GPT-2 baseline


def gpt2_param_count(n_embd: int, vocab_size: int, n_layer: int, n_positions: int) -> int:
    """Trainable parameters of GPT2LMHeadModel (tied lm_head): wte + wpe + blocks + ln_f;
    a block is ln_1, c_attn, c_proj, ln_2, mlp (4x) = 12 d^2 + 13 d."""
    d = n_embd
    return (vocab_size + n_positions) * d + n_layer * (12 * d * d + 13 * d) + 2 * d


def choose_n_embd(
    target: int, vocab_size: int, n_layer: int, n_head: int, n_positions: int, tolerance: float
) -> int:
    """Width (a multiple of n_head) whose parameter count is closest to `target`."""

    def count(d):
        return gpt2_param_count(d, vocab_size, n_layer, n_positions)

    d = n_head
    while count(d + n_head) <= target:  # count is increasing in d
        d += n_head
    best = min((d, d + n_head), key=lambda x: abs(count(x) - target))
    err = abs(count(best) - target) / target
    if err > tolerance:
        raise ValueError(
            f"no GPT-2 width fits: CVFP Phase 2 has {target:,} trainable params, the closest "
            f"GPT-2 (n_embd={best}, n_layer={n_layer}, n_head={n_head}, n_positions={n_positions}, "
            f"vocab {vocab_size}) has {count(best):,} ({100 * err:.1f}% off, allowed "
            f"{100 * tolerance:.0f}%); change baselines.transformer_n_layer/_n_head/_n_positions "
            f"or baselines.param_tolerance"
        )
    return best


def build_transformer(vocab_size: int, n_embd: int, n_layer: int, n_head: int, n_positions: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    # No dropout: CVFP Phase 2 has none, so neither model gets a regulariser the other lacks.
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    return GPT2LMHeadModel(cfg)


def windows(corpus: Corpus, n_positions: int) -> list[np.ndarray]:
    """Cut each segment into windows of <= n_positions + 1 tokens overlapping by one, so
    every Phase 2 target is predicted exactly once (inputs w[:-1], targets w[1:])."""
    ids, out = corpus.ids.numpy(), []
    for s, e in zip(corpus.offsets[:-1].tolist(), corpus.offsets[1:].tolist(), strict=True):
        for a in range(s, e - 1, n_positions):
            out.append(ids[a : min(a + n_positions + 1, e)])
    return out


def pack(order: np.ndarray, n_targets: np.ndarray, batch_tokens: int) -> list[list[int]]:
    """Group windows (in `order`) into batches of <= batch_tokens targets (a longer window
    alone), so a step sees about as many targets as a CVFP Phase 2 step."""
    batches: list[list[int]] = []
    cur: list[int] = []
    size = 0
    for w in order.tolist():
        if cur and size + n_targets[w] > batch_tokens:
            batches.append(cur)
            cur, size = [], 0
        cur.append(w)
        size += int(n_targets[w])
    return batches + ([cur] if cur else [])


def collate(wins: list[np.ndarray]):
    t = max(len(w) - 1 for w in wins)
    inputs = torch.zeros(len(wins), t, dtype=torch.long)
    mask = torch.zeros(len(wins), t, dtype=torch.long)
    targets = torch.full((len(wins), t), IGNORE, dtype=torch.long)  # padding, ignored
    for r, w in enumerate(wins):
        n = len(w) - 1
        inputs[r, :n] = torch.from_numpy(w[:-1])
        targets[r, :n] = torch.from_numpy(w[1:])
        mask[r, :n] = 1
    return inputs, mask, targets


@torch.no_grad()
def transformer_nats(
    model, wins: list[np.ndarray], batch_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per target, in window order (= Phase 2 position order): nats (float64), top-1 hit.

    The outputs are allocated once and filled batch by batch: a small array kept per batch
    between each batch's large, varying-size temporaries fragments glibc's heap, which then
    grows with the split (+0.96 GB over 480k val targets, measured; issue 26)."""
    model.eval()
    n_targets = np.array([len(w) - 1 for w in wins], dtype=np.int64)
    nats = np.zeros(int(n_targets.sum()), dtype=np.float64)
    hits = np.zeros(nats.size, dtype=bool)
    at = 0
    for batch in pack(np.arange(len(wins)), n_targets, batch_tokens):
        logits, real = real_logits(model, *collate([wins[i] for i in batch]))
        end = at + real.numel()
        nats[at:end] = F.cross_entropy(logits, real, reduction="none").double().numpy()
        hits[at:end] = (logits.argmax(-1) == real).numpy()
        at = end
    return nats, hits


def evaluate_transformer(model, wins: list[np.ndarray], batch_tokens: int) -> Stats:
    nats, hits = transformer_nats(model, wins, batch_tokens)
    n = int(nats.size)
    return Stats(float(nats.sum() / n), float(hits.sum() / n), n)


def transformer_baseline(
    train: Corpus,
    val: Corpus,
    test: Corpus,
    vocab_size: int,
    bp: BaselineParams,
    cfg: Phase2Params,
    target_params: int,
    epochs: int,
    seed: int = 0,
    show_progress: bool = False,
) -> BaselineResult:
    """Train GPT-2 for `epochs` with Phase 2's batch size (in target tokens), lr and clip;
    keep the epoch with the best val loss, as for CVFP, and score test once with it."""
    n_embd = choose_n_embd(
        target_params,
        vocab_size,
        bp.transformer_n_layer,
        bp.transformer_n_head,
        bp.transformer_n_positions,
        bp.param_tolerance,
    )
    torch.manual_seed(seed)
    model = build_transformer(
        vocab_size,
        n_embd,
        bp.transformer_n_layer,
        bp.transformer_n_head,
        bp.transformer_n_positions,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = count_parameters(params)
    train_w, val_w = (
        windows(train, bp.transformer_n_positions),
        windows(val, bp.transformer_n_positions),
    )
    n_targets = np.array([len(w) - 1 for w in train_w])
    optimizer = adam(params, lr=cfg.lr, fused=True)  # as Phase 2
    gen = torch.Generator().manual_seed(seed)
    best: dict[str, Any] = {}  # the row of the epoch with the lowest val loss so far
    tracker = BestEpoch()
    history: list[dict[str, Any]] = []
    seconds = 0.0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_w), generator=gen).numpy()
        loss_sum = 0.0
        for batch in progress(
            pack(order, n_targets, cfg.batch_size),
            desc=f"transformer epoch {epoch}",
            enabled=show_progress,
            unit="batch",
        ):
            inputs, mask, targets = collate([train_w[i] for i in batch])
            logits, real = real_logits(model, inputs, mask, targets)  # cvfp/phase2/padded.py
            loss = padded_mean(F.cross_entropy(logits, real, reduction="none"), targets)
            optimizer_step(optimizer, loss, params, cfg.grad_clip)
            loss_sum += loss.item() * real.numel()
        seconds += time.perf_counter() - t0
        scores = evaluate_transformer(model, val_w, cfg.batch_size)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / n_targets.sum(),
            "val_loss": scores.loss,
            "val_acc": scores.acc,
        }
        history.append(row)
        log.info(
            "transformer epoch %d: train loss %.4f | val loss %.4f ppl %.2f acc %.4f",
            epoch,
            row["train_loss"],
            scores.loss,
            scores.ppl,
            scores.acc,
        )
        if tracker.update(epoch, scores.loss, model.state_dict):
            best = row
    model.load_state_dict(tracker.state)
    test_nats, test_hits = transformer_nats(
        model, windows(test, bp.transformer_n_positions), cfg.batch_size
    )
    metrics = _metrics(
        best["val_loss"],
        best["val_acc"],
        **_test(test_nats, test_hits),
        best_epoch=best["epoch"],
        train_loss=best["train_loss"],
        train_ppl=perplexity(best["train_loss"]),
        trainable_params=n_params,
        target_params=target_params,
        param_ratio=n_params / target_params,
        epochs=epochs,
        n_embd=n_embd,
        n_layer=bp.transformer_n_layer,
        n_head=bp.transformer_n_head,
        n_positions=bp.transformer_n_positions,
        train_targets=int(n_targets.sum()),
    )
    return BaselineResult(metrics, test_nats, seconds)


# ---------------------------------------------------------------- context ablations


def context_ablations(
    model, val: PositionData, test: PositionData, batch_size: int, seed: int = 0
) -> dict:
    """Sanity checks, not controls: the trained model on val and test with C* replaced by
    zeros / shuffled rows at evaluation only (a head trained with C* loses its input, so
    these measure a train/eval mismatch as much as the context; the control trained
    without context is `phase2.context: zero`)."""
    out = {}
    for name, kind in (("zero_context", "zero"), ("shuffled_context", "shuffled")):
        s = evaluate(model, val.ablated(kind, seed), batch_size)[-1]
        out[name] = _metrics(
            s.loss, s.acc, **_test(*position_nats(model, test.ablated(kind, seed), batch_size))
        )
    return out
