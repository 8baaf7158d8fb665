"""metrics/data.json, written by the split stage (tasks/split.py)."""

from __future__ import annotations

from .base import Metrics


class DroppedConversations(Metrics):
    empty: int | None  # by the tokenize stage (None when its stats are missing)
    val_unseen_token: int  # val conversations with a token train never has


class DataMetrics(Metrics):
    # From the download/tokenize stats (None when data/tokenized has no stats.json).
    source: str | None
    raw_conversations: int | None
    tokenizer_kind: str | None
    vocab_size: int
    max_seq_length: int | None
    truncated_conversations: int | None
    # corpora (issue 21): the layout download read (cvfp.data.LAYOUTS, chatterbot, text) and
    # the tokens tokenizer.max_seq_length removed / tokens before truncation
    layout: str | None = None  # absent in files written before it
    truncated_token_share: float | None = None
    split_strategy: str
    val_fraction: float
    # cvfp.splitting.subset_stats
    train_conversations: int
    train_tokens: int
    val_conversations: int
    val_tokens: int
    train_unique_tokens: int
    val_unique_tokens: int
    unexpected_val_tokens: int
    val_subset_ok: bool
    dropped_conversations: DroppedConversations
    val_dropped_tokens: int
    # The Great Expectations suite on val (tasks/expectations.py)
    gx_success: bool
    gx_expectations_evaluated: int
    gx_expectations_successful: int
