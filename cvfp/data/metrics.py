"""metrics/data.json, written by the split stage (tasks/split.py)."""

from __future__ import annotations

from cvfp.runtime.metrics_base import Metrics


class DroppedConversations(Metrics):
    empty: int | None  # by the tokenize stage (None when its stats are missing)
    # held-out conversations whose every token has an id train never has (cvfp.data.splitting)
    val_unseen_token: int
    test_unseen_token: int


class DataMetrics(Metrics):
    # From the download/tokenize stats (None when data/tokenized has no stats.json).
    source: str | None
    raw_conversations: int | None
    tokenizer_kind: str | None
    vocab_size: int
    max_seq_length: int | None
    truncated_conversations: int | None
    # corpora (issue 21): the layout download read (cvfp.data.record_layouts.LAYOUTS, chatterbot, text) and
    # the tokens tokenizer.max_seq_length removed / tokens before truncation
    layout: str | None = None  # absent in files written before it
    truncated_token_share: float | None = None
    split_strategy: str
    val_fraction: float
    test_fraction: float
    # cvfp.data.splitting.subset_stats
    train_conversations: int
    train_tokens: int
    train_unique_tokens: int
    val_conversations: int
    val_tokens: int
    val_unique_tokens: int
    unexpected_val_tokens: int
    val_subset_ok: bool
    test_conversations: int
    test_tokens: int
    test_unique_tokens: int
    unexpected_test_tokens: int
    test_subset_ok: bool
    # held-out (val + test) tokens dropped for ids unseen in train / all held-out tokens
    heldout_dropped_share: float
    dropped_conversations: DroppedConversations
    # tokens with ids train never has, dropped (their conversations cut into pieces there)
    val_dropped_tokens: int
    test_dropped_tokens: int
    val_cut_conversations: int
    test_cut_conversations: int
    # The Great Expectations suite on val and test (tasks/expectations.py)
    gx_success: bool
    gx_expectations_evaluated: int
    gx_expectations_successful: int
