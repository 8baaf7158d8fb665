"""Train / val / test, all taken from the training source (SPEC sections 8 and 9).

`partition` is the one rule that says which conversations go where. The tokenize stage
calls it (the BPE tokenizer learns from the train conversations only) and the split stage
calls it through `split` (to cut), so both see the same parts. Deterministic: the order of
the non-empty conversations, no randomness.

* test: the last `test_fraction` of the conversations, held out (both strategies). It is
  read once, for the reported numbers; val chooses (early stopping, best epoch, smoothing).
* holdout (default): the `val_fraction` of the conversations before test become val and
  leave train.
* tail (the seeds' rule for val): val is the last `val_fraction` of the train token stream
  (the conversations before test) and stays in train. The slice is cut at conversation
  boundaries into pieces, each keeping the id of the conversation it came from (the first
  piece is usually a conversation's end). Test is held out as with holdout: a reported
  number must come from text no model trained on.

A held-out (val or test) token whose id never occurs in train is dropped and counted
(SPEC 8: every held-out id is a train id), and its conversation is cut there into pieces
that keep the conversation id (`cut_unseen`). Dropping whole conversations instead lost 24%
of the held-out tokens on the default data, leaning the held-out text to common tokens;
cutting loses under 1% (docs/data.md). A held-out part left without a next-token target
fails with `SplitError`, naming the part and what to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cvfp.params import SplitParams

HELDOUT = ("val", "test")


class SplitError(ValueError):
    """The data cannot give non-empty train, val and test parts; says what to change."""


@dataclass(frozen=True)
class Parts:
    """Positions (in the list of non-empty conversations, in data order) of each part.
    With strategy tail, val has no conversations of its own: it is the token tail of train."""

    train: range
    val: range
    test: range


def _count(n: int, fraction: float) -> int:
    """round(n * fraction), at least 1."""
    return max(1, round(n * fraction))


def partition(n: int, cfg: SplitParams) -> Parts:
    """Which of `n` conversations (in order) are train, val and test."""
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"split.strategy={cfg.strategy!r}: expected one of {sorted(STRATEGIES)}")
    need = 3 if cfg.strategy == "holdout" else 2
    if n < need:
        raise SplitError(
            f"split: {n} non-empty conversation(s), but strategy {cfg.strategy} needs at least "
            f"{need} (train, {'val, ' if need == 3 else ''}test: whole conversations); use more "
            f"data (data.num_samples, or another data.source/data.path)"
        )
    n_test = _count(n, cfg.test_fraction)
    n_val = _count(n, cfg.val_fraction)
    held = n_test + (n_val if cfg.strategy == "holdout" else 0)
    if held >= n:
        raise SplitError(
            f"split: val_fraction {cfg.val_fraction} and test_fraction {cfg.test_fraction} of "
            f"{n} conversations hold out {held}, leaving no train conversation; lower "
            f"split.val_fraction / split.test_fraction or use more data (data.num_samples)"
        )
    test_start = n - n_test
    val_start = test_start - n_val if cfg.strategy == "holdout" else test_start
    return Parts(range(0, val_start), range(val_start, test_start), range(test_start, n))


@dataclass
class Split:
    train_ids: list[int]
    train: list[np.ndarray]
    val_ids: list[int]
    val: list[np.ndarray]
    test_ids: list[int] = field(default_factory=list)
    test: list[np.ndarray] = field(default_factory=list)
    # per held-out part: conversations and tokens dropped for ids unseen in train
    stats: dict = field(default_factory=dict)

    def part(self, name: str) -> tuple[list[int], list[np.ndarray]]:
        return getattr(self, f"{name}_ids"), getattr(self, name)


def cut_unseen(
    ids: list[int], convs: list[np.ndarray], vocab: np.ndarray
) -> tuple[list[int], list[np.ndarray], dict]:
    """Held-out conversations without the token ids that `vocab` (train's ids) lacks: each
    such token is dropped and its conversation cut there into pieces that keep the
    conversation's id (no target spans a dropped token; a piece starts from a zero context,
    as a tail val piece does). Returns (ids, pieces, counts)."""
    out_ids: list[int] = []
    out: list[np.ndarray] = []
    counts = {"dropped_tokens": 0, "cut_conversations": 0, "dropped_conversations": 0}
    if not convs:
        return out_ids, out, counts
    seen = iter(_isin_batches(convs, vocab))  # vectorised over batches of conversations
    for cid, conv in zip(ids, convs, strict=True):
        ok = next(seen)
        if ok.all():
            out_ids.append(cid)
            out.append(conv)
            continue
        counts["dropped_tokens"] += int((~ok).sum())
        counts["cut_conversations"] += 1
        # runs of seen tokens between the unseen ones
        bounds = np.flatnonzero(np.diff(np.r_[False, ok, False].astype(np.int8)))
        pieces = [conv[a:b] for a, b in zip(bounds[::2], bounds[1::2], strict=True)]
        if not pieces:
            counts["dropped_conversations"] += 1
        out_ids += [cid] * len(pieces)
        out += pieces
    return out_ids, out, counts


def tail_slice(
    ids: list[int], convs: list[np.ndarray], val_fraction: float
) -> tuple[list[int], list[np.ndarray]]:
    """The last `val_fraction` of the token stream of `convs`, in conversation pieces."""
    lengths = np.array([len(c) for c in convs], dtype=np.int64)
    total = int(lengths.sum())
    n_val = min(max(1, round(total * val_fraction)), total)
    ends = np.cumsum(lengths)
    start = total - n_val  # stream position where val begins
    first = int(np.searchsorted(ends, start, side="right"))  # conversation holding `start`
    val_ids, val = [], []
    for k in range(first, len(convs)):
        offset = max(0, start - (int(ends[k]) - len(convs[k])))
        if offset < len(convs[k]):
            val_ids.append(ids[k])
            val.append(convs[k][offset:])
    return val_ids, val


def split(ids: list[int], convs: list[np.ndarray], cfg: SplitParams) -> Split:
    """Cut the tokenized conversations (`ids` their conversation ids) into train/val/test by
    `partition`, drop held-out conversations with ids unseen in train, and fail when a
    held-out part ends up empty."""
    parts = partition(len(convs), cfg)

    def take(r: range) -> tuple[list[int], list[np.ndarray]]:
        return [ids[i] for i in r], [convs[i] for i in r]

    train_ids, train = take(parts.train)
    raw = {"test": take(parts.test)}
    if cfg.strategy == "holdout":
        raw["val"] = take(parts.val)
    else:
        raw["val"] = tail_slice(train_ids, train, cfg.val_fraction)
    vocab = train_vocab(train)
    out = Split(train_ids, train, [], [])
    for name in HELDOUT:
        kept_ids, kept, counts = cut_unseen(*raw[name], vocab)
        setattr(out, f"{name}_ids", kept_ids)
        setattr(out, name, kept)
        n_conv = len(raw[name][1])
        out.stats[name] = {
            "conversations_before": n_conv,
            "tokens_before": int(sum(len(c) for c in raw[name][1])),
            **counts,
        }
        if not any(len(c) >= 2 for c in kept):
            raise SplitError(
                f"split: the {name} part has no next-token target left: its {n_conv} "
                f"conversation(s) hold {out.stats[name]['tokens_before']} tokens, "
                f"{counts['dropped_tokens']} of them with ids that never occur in train (SPEC 8 "
                f"needs every {name} id in train), and no piece of 2 or more tokens remains; "
                f"raise split.{name}_fraction (now {getattr(cfg, f'{name}_fraction')}) or use "
                f"more data (data.num_samples), so that train covers the held-out vocabulary"
            )
    return out


STRATEGIES = ("holdout", "tail")


def ids_digest(ids) -> str:
    """sha256 of conversation ids in order (tokenize records the BPE's train part, split
    checks that it cuts the same one)."""
    import hashlib

    return hashlib.sha256(np.asarray(list(ids), dtype=np.int64).tobytes()).hexdigest()


# Whole-split arrays are never built: the functions below work on batches of conversations
# of about this many tokens (exact results; a transient copy of a batch, not of the split).
BATCH_TOKENS = 1 << 20


def batches(convs: list[np.ndarray], batch_tokens: int = BATCH_TOKENS):
    """Consecutive runs of `convs` of at least `batch_tokens` tokens (the last: the rest)."""
    start, n = 0, 0
    for k, c in enumerate(convs):
        n += len(c)
        if n >= batch_tokens:
            yield convs[start : k + 1]
            start, n = k + 1, 0
    if start < len(convs):
        yield convs[start:]


def _isin_batches(convs: list[np.ndarray], vocab: np.ndarray):
    """np.isin(conv, vocab) for each conversation, computed a batch at a time."""
    for batch in batches(convs):
        flat = np.isin(np.concatenate(batch), vocab)
        start = 0
        for c in batch:
            yield flat[start : start + len(c)]
            start += len(c)


def unique_ids(convs: list[np.ndarray], batch_tokens: int = BATCH_TOKENS) -> np.ndarray:
    """np.unique over all the conversations' ids, a batch at a time (the same array)."""
    out = None
    for batch in batches(convs, batch_tokens):
        u = np.unique(np.concatenate(batch))
        out = u if out is None else np.union1d(out, u)
    return out if out is not None else np.array([], dtype=np.int64)


def train_vocab(train: list[np.ndarray]) -> np.ndarray:
    return unique_ids(train)


def unseen(train: list[np.ndarray], val: list[np.ndarray]) -> np.ndarray:
    """Held-out token occurrences (in order) whose id never occurs in train."""
    vocab = train_vocab(train)
    parts = [np.concatenate(b)[~np.isin(np.concatenate(b), vocab)] for b in batches(val)]
    return np.concatenate(parts) if parts else np.array([], dtype=np.int64)


def subset_stats(s: Split) -> dict:
    """Sizes of the parts, how far each held-out part is a subset of train (by token id),
    and what the unseen-id rule dropped (`heldout_dropped_share`: dropped held-out tokens /
    all held-out tokens before dropping, val and test together)."""
    out: dict[str, int | float | bool] = {
        "train_conversations": len(s.train),
        "train_tokens": int(sum(len(c) for c in s.train)),
        "train_unique_tokens": int(len(train_vocab(s.train))),
    }
    for name in HELDOUT:
        ids, convs = s.part(name)
        bad = unseen(s.train, convs)
        out |= {
            f"{name}_conversations": len(set(ids)),  # a cut conversation counts once
            f"{name}_tokens": int(sum(len(c) for c in convs)),
            f"{name}_unique_tokens": int(len(unique_ids(convs))),
            f"unexpected_{name}_tokens": int(len(bad)),
            f"{name}_subset_ok": bool(len(bad) == 0),
        }
    before = sum(s.stats[n]["tokens_before"] for n in HELDOUT)
    dropped = sum(s.stats[n]["dropped_tokens"] for n in HELDOUT)
    out["heldout_dropped_share"] = dropped / before if before else 0.0
    return out
