"""Tokenizers (trained byte-level BPE or a pretrained AutoTokenizer) and the chat format.

Each conversation becomes one sequence ending with the end-of-text id:

    <|user|> What is AI?\n<|assistant|> A branch of science.\n<|endoftext|>

BPE has the markers and `<|endoftext|>` as special tokens (ids 0-3); a pretrained
vocabulary is kept as shipped (markers are plain text). Both are saved with
`save_pretrained` and load back with `AutoTokenizer.from_pretrained(dir)`. docs/data.md.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

import datasets
import numpy as np

from cvfp.utils import is_local, require_hub

EOS = "<|endoftext|>"
MARKERS = {"user": "<|user|>", "assistant": "<|assistant|>", "system": "<|system|>"}
SPECIAL_TOKENS = [EOS, MARKERS["user"], MARKERS["assistant"], MARKERS["system"]]
OUT_FEATURES = datasets.Features(
    {
        "conversation_id": datasets.Value("int64"),
        "input_ids": [datasets.Value("int32")],
        "n_tokens": datasets.Value("int32"),
    }
)


def turn_text(content: str | None) -> str:
    """What follows a marker: the same bytes the BPE is trained on."""
    return f" {(content or '').strip()}\n"


def format_chat(messages: list[dict]) -> str:
    """Conversation text without the end-of-text token (appended as an id when encoding)."""
    if not any((m.get("content") or "").strip() for m in messages):
        return ""  # empty / whitespace-only: dropped by tokenize_shard
    return "".join(
        MARKERS.get(m["role"], m["role"]) + turn_text(m.get("content")) for m in messages
    )


def iter_messages(ds: datasets.Dataset, batch_size: int = 1000) -> Iterable[list[dict]]:
    """Conversations' message lists in order, batch by batch (bounded memory)."""
    for batch in ds.select_columns(["messages"]).iter(batch_size=batch_size):
        yield from batch["messages"]


# ---------------------------------------------------------------- tokenizers


def train_bpe(conversations: Iterable[list[dict]], vocab_size: int):
    """Byte-level BPE on the turn texts; deterministic for the same input order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        # all 256 bytes, so any unseen text still encodes (no unknown token needed)
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # Markers are not in the training text: they are special tokens and must not eat merges.
    texts = (turn_text(m["content"]) for msgs in conversations for m in msgs)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, additional_special_tokens=SPECIAL_TOKENS[1:]
    )


def load_pretrained(name: str, timeout: float = 10.0):
    """AutoTokenizer by hub name or local path; adds an end-of-text token only if missing."""
    from transformers import AutoTokenizer

    if not is_local(name):
        require_hub("tokenizer.name", name, timeout=timeout)
    tok = AutoTokenizer.from_pretrained(name)
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": EOS})
    return tok


def save_tokenizer(tokenizer, path: str | Path) -> None:
    tokenizer.save_pretrained(str(path))
    if not (Path(path) / "tokenizer.json").exists():
        raise RuntimeError(
            f"{path}: tokenizer has no fast (tokenizers) backend, "
            f"so no tokenizer.json was written; pick another tokenizer.name"
        )


# ---------------------------------------------------------------- encoding
#
# The tokenize stage encodes in shards of whole conversations (cvfp/sharding.py):
# `tokenize_shard` is a pure function of its arguments (the tokenizer travels as the bytes
# of its saved files, so a worker on another machine needs no shared disk) and
# `combine_shards` builds the one output dataset. Encoding a conversation does not depend
# on its neighbours, so the ids are the same for any shard size and any engine (plain
# loop, threads, Dask).

TokenizerFiles = dict[str, bytes]
_LOADED: dict[tuple[int, str], object] = {}  # (thread, content hash or path) -> tokenizer
_LOAD_LOCK = threading.Lock()


def tokenizer_files(path: str | Path) -> TokenizerFiles:
    """The files of a saved tokenizer directory, by name (what `tokenize_shard` accepts)."""
    return {p.name: p.read_bytes() for p in sorted(Path(path).iterdir()) if p.is_file()}


def _tokenizer_from(tokenizer: str | Path | TokenizerFiles):
    """AutoTokenizer from a saved directory or its files' bytes, cached per thread (a fast
    tokenizer is not shared by concurrently encoding threads)."""
    from transformers import AutoTokenizer

    if isinstance(tokenizer, dict):
        h = hashlib.sha256()
        for name, data in sorted(tokenizer.items()):
            h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        key = (threading.get_ident(), h.hexdigest())
    else:
        key = (threading.get_ident(), str(Path(tokenizer).resolve()))
    with _LOAD_LOCK:
        if key in _LOADED:
            return _LOADED[key]
    if isinstance(tokenizer, dict):
        with tempfile.TemporaryDirectory(prefix="cvfp-tokenizer-") as tmp:
            for name, data in tokenizer.items():
                (Path(tmp) / name).write_bytes(data)
            tok = AutoTokenizer.from_pretrained(tmp)
    else:
        tok = AutoTokenizer.from_pretrained(str(tokenizer))
    with _LOAD_LOCK:
        while len(_LOADED) >= 16:  # a long-lived worker: drop the oldest
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = tok
    return tok


def tokenize_shard(
    shard: tuple[int, list[list[dict]]],
    tokenizer: str | Path | TokenizerFiles,
    max_seq_length: int | None,
) -> dict[str, np.ndarray]:
    """Encode one shard `(first_row, conversations)`: message lists of raw rows first_row, ...

    `tokenizer` is a saved tokenizer directory or its files (`tokenizer_files`). Returns
    flat arrays for the non-empty conversations: `conversation_id` (int64, row index in
    the raw data), `n_tokens` and `n_full` (int32, after/before truncation to
    `max_seq_length`), all their `ids` (int32) concatenated, and `n_in` (rows read)."""
    start, conversations = shard
    tok = _tokenizer_from(tokenizer)
    texts = [format_chat(m) for m in conversations]
    keep = [i for i, t in enumerate(texts) if t]
    enc = (
        tok([texts[i] for i in keep], add_special_tokens=False, verbose=False)["input_ids"]
        if keep
        else []
    )
    full = [e + [tok.eos_token_id] for e in enc]
    ids = [f[:max_seq_length] for f in full] if max_seq_length else full
    return {
        "conversation_id": np.asarray([start + i for i in keep], dtype=np.int64),
        "n_tokens": np.asarray([len(x) for x in ids], dtype=np.int32),
        "n_full": np.asarray([len(f) for f in full], dtype=np.int32),
        "ids": np.asarray([t for x in ids for t in x], dtype=np.int32),
        "n_in": np.asarray(len(conversations), dtype=np.int64),
    }


def shards_of(ds: datasets.Dataset, size: int) -> list[tuple[int, list[list[dict]]]]:
    """The raw dataset's conversations as tokenize shards of `size` rows, in row order."""
    from .sharding import ranges

    messages = ds.select_columns(["messages"])
    return [(a, messages[a:b]["messages"]) for a, b in ranges(len(ds), size)]


def combine_shards(
    results: list[dict[str, np.ndarray]], tokenizer
) -> tuple[datasets.Dataset, dict]:
    """Shard results in shard order -> (dataset conversation_id/input_ids/n_tokens, stats)."""
    import pyarrow as pa
    from datasets.table import InMemoryTable

    def cat(key, dtype):
        parts = [np.asarray(r[key], dtype=dtype) for r in results]
        return np.concatenate(parts) if parts else np.zeros(0, dtype)

    conv_id, ids = cat("conversation_id", np.int64), cat("ids", np.int32)
    n_tokens, n_full = cat("n_tokens", np.int64), cat("n_full", np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_tokens)])
    if offsets[-1] >= 2**31:
        raise ValueError(
            f"{offsets[-1]} tokens do not fit one Arrow list column (int32 offsets); "
            f"lower data.num_samples or tokenizer.max_seq_length"
        )
    table = pa.Table.from_arrays(
        [
            pa.array(conv_id, pa.int64()),
            pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(ids, pa.int32())),
            pa.array(n_tokens.astype(np.int32), pa.int32()),
        ],
        schema=OUT_FEATURES.arrow_schema,
    )
    ds = datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=OUT_FEATURES))
    n_in = int(sum(int(r["n_in"]) for r in results))
    stats = {
        "conversations_in": n_in,
        "conversations_out": len(ds),
        "dropped": {"empty": n_in - len(ds)},
        "truncated": int((n_full > n_tokens).sum()),
        "tokens_before_truncation": int(n_full.sum()),
        "tokens": int(n_tokens.sum()),
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
    }
    return ds, stats
