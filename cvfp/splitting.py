"""Validation data taken from the training data (SPEC section 8: no random split).

Strategies, both deterministic (order of the tokenized conversations):

* holdout: the last `val_fraction` of the conversations become val and leave train. A val
  conversation holding a token id that never occurs in train is dropped (and counted), so
  every val id is a train id.
* tail (the seeds' rule): val is the last `val_fraction` of the training token stream and
  stays in train. The slice is cut at conversation boundaries into pieces, each keeping
  the id of the conversation it came from (the first piece is usually a conversation's end).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Split:
    train_ids: list[int]
    train: list[np.ndarray]
    val_ids: list[int]
    val: list[np.ndarray]
    stats: dict = field(default_factory=dict)


def _count(n: int, fraction: float, what: str) -> int:
    """round(n * fraction), but at least 1 and leaving at least 1 for train."""
    if n < 2:
        raise ValueError(f"need at least 2 {what} to split off a validation part, got {n}")
    return min(max(1, round(n * fraction)), n - 1)


def holdout(ids: list[int], convs: list[np.ndarray], val_fraction: float) -> Split:
    n_val = _count(len(convs), val_fraction, "conversations")
    cut = len(convs) - n_val
    train, val = convs[:cut], convs[cut:]
    # One vectorised pass: per val conversation, does every token occur in train?
    seen = np.isin(np.concatenate(val), train_vocab(train))
    owner = np.repeat(np.arange(len(val)), [len(c) for c in val])
    bad = set(np.unique(owner[~seen]).tolist())
    keep = [i for i in range(len(val)) if i not in bad]
    dropped = sorted(bad)
    return Split(
        train_ids=list(ids[:cut]),
        train=train,
        val_ids=[ids[cut + i] for i in keep],
        val=[val[i] for i in keep],
        stats={
            "val_dropped_unseen_token": len(dropped),
            "val_dropped_tokens": int(sum(len(val[i]) for i in dropped)),
        },
    )


def tail(ids: list[int], convs: list[np.ndarray], val_fraction: float) -> Split:
    lengths = np.array([len(c) for c in convs], dtype=np.int64)
    n_val = _count(int(lengths.sum()), val_fraction, "tokens")
    ends = np.cumsum(lengths)
    start = int(ends[-1]) - n_val  # stream position where val begins
    first = int(np.searchsorted(ends, start, side="right"))  # conversation holding `start`
    val_ids, val = [], []
    for k in range(first, len(convs)):
        offset = max(0, start - (int(ends[k]) - len(convs[k])))
        if offset < len(convs[k]):
            val_ids.append(ids[k])
            val.append(convs[k][offset:])
    return Split(
        train_ids=list(ids),
        train=list(convs),
        val_ids=val_ids,
        val=val,
        stats={"val_dropped_unseen_token": 0, "val_dropped_tokens": 0},
    )


STRATEGIES = {"holdout": holdout, "tail": tail}


def split(ids: list[int], convs: list[np.ndarray], strategy: str, val_fraction: float) -> Split:
    if strategy not in STRATEGIES:
        raise ValueError(f"split.strategy={strategy!r}: expected one of {sorted(STRATEGIES)}")
    return STRATEGIES[strategy](ids, convs, val_fraction)


def train_vocab(train: list[np.ndarray]) -> np.ndarray:
    return np.unique(np.concatenate(train)) if train else np.array([], dtype=np.int64)


def unseen(train: list[np.ndarray], val: list[np.ndarray]) -> np.ndarray:
    """Val token occurrences (in order) whose id never occurs in train."""
    flat = np.concatenate(val) if val else np.array([], dtype=np.int64)
    return flat[~np.isin(flat, train_vocab(train))]


def subset_stats(s: Split) -> dict:
    """Sizes of both parts and how far val is a subset of train (by token id)."""
    bad = unseen(s.train, s.val)
    return {
        "train_conversations": len(s.train),
        "train_tokens": int(sum(len(c) for c in s.train)),
        "val_conversations": len(s.val),
        "val_tokens": int(sum(len(c) for c in s.val)),
        "train_unique_tokens": int(len(train_vocab(s.train))),
        "val_unique_tokens": int(len(np.unique(np.concatenate(s.val)))) if s.val else 0,
        "unexpected_val_tokens": int(len(bad)),
        "val_subset_ok": bool(len(bad) == 0),
    }
