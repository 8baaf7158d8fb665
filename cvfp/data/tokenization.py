"""Tokenizers (trained byte-level BPE or a pretrained AutoTokenizer) and the chat format.

Each conversation becomes one sequence ending with the end-of-text id:

    <|user|> What is AI?\n<|assistant|> A branch of science.\n<|endoftext|>

BPE has the markers and `<|endoftext|>` as special tokens (ids 0-3); a pretrained
vocabulary is kept as shipped (markers are plain text). Both are saved with
`save_pretrained` and load back with `AutoTokenizer.from_pretrained(dir)`. Markers and
end-of-text are inserted by id; conversation text is encoded with special-token splitting
off, so it never produces them (`encode_chats`). docs/data.md.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

import datasets
import numpy as np

from cvfp.runtime.utils import is_local, require_hub

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
# The tokenize stage encodes in shards of whole conversations (cvfp/runtime/sharding.py):
# `tokenize_shard` is a pure function of its arguments (the tokenizer travels as the bytes
# of its saved files, so a worker on another machine needs no shared disk);
# cvfp/data/token_shards.py reads the shards and builds the one output dataset from the results
# in shard order. Encoding a conversation does not depend on its neighbours, so the ids are
# the same for any shard size and any engine (plain loop, threads, Dask).

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


def marker_ids(tok) -> dict[str, list[int]]:
    """Role marker ids: the marker's own special-token id (BPE), else the marker encoded as
    plain text (a pretrained vocabulary)."""
    special = set(tok.all_special_tokens)
    out = {}
    for role, marker in MARKERS.items():
        if marker in special:
            out[role] = [tok.convert_tokens_to_ids(marker)]
        else:
            out[role] = encode_text(tok, [marker])[0]
    return out


def encode_text(tok, texts: list[str]) -> list[list[int]]:
    """Token ids of plain text: special-token strings in it (`<|endoftext|>`, `<|user|>`...)
    are encoded as the text they are, never as the special ids."""
    if not texts:
        return []
    return tok(texts, add_special_tokens=False, split_special_tokens=True, verbose=False)[
        "input_ids"
    ]


def encode_chats(
    tok, conversations: list[list[dict]], max_seq_length: int | None = None
) -> list[tuple[list[int], int, bool]]:
    """Each conversation as (ids, tokens before truncation, estimated).

    ids: per turn the role marker (by id) and the turn text (`turn_text`, encoded with
    `encode_text`), then the end-of-text id, cut to `max_seq_length`. Turns are encoded one
    round at a time (turn k of every conversation still under the limit), so turns wholly
    past the limit are never encoded: their tokens are estimated from their characters at
    the conversation's encoded tokens per character (`estimated` True). An empty
    conversation (format_chat gives "") is ([], 0, False). The ids as lists; the tokenize
    stage uses `encode_chat_arrays` (the same ids as int32 arrays, 4 bytes per token)."""
    return [
        (ids.tolist(), full, est)
        for ids, full, est in encode_chat_arrays(tok, conversations, max_seq_length)
    ]


def encode_chat_arrays(
    tok, conversations: list[list[dict]], max_seq_length: int | None = None
) -> list[tuple[np.ndarray, int, bool]]:
    """`encode_chats` with each conversation's ids as one int32 array: a Python int per
    token (~36 bytes) lives only for the turns of one encoding round."""
    markers = marker_ids(tok)
    parts: list[list[np.ndarray]] = [[] for _ in conversations]
    n_ids = [0] * len(conversations)
    done = [0] * len(conversations)  # turns encoded
    chars = [0] * len(conversations)
    text_tokens = [0] * len(conversations)
    active = [i for i, m in enumerate(conversations) if format_chat(m)]
    while active:
        texts = [turn_text(conversations[i][done[i]].get("content")) for i in active]
        for i, text, enc in zip(active, texts, encode_text(tok, texts), strict=True):
            role = conversations[i][done[i]]["role"]
            turn = (markers.get(role) or encode_text(tok, [role])[0]) + enc
            parts[i].append(np.asarray(turn, dtype=np.int32))
            n_ids[i] += len(turn)
            chars[i] += len(text)
            text_tokens[i] += len(enc)
            done[i] += 1
        active = [
            i
            for i in active
            if done[i] < len(conversations[i])
            and (max_seq_length is None or n_ids[i] < max_seq_length)
        ]
    eos = np.asarray([tok.eos_token_id], dtype=np.int32)
    out: list[tuple[np.ndarray, int, bool]] = []
    for i, msgs in enumerate(conversations):
        if not n_ids[i]:
            out.append((np.zeros(0, np.int32), 0, False))
            continue
        full = n_ids[i] + 1  # + end-of-text
        rest = msgs[done[i] :]
        if rest:
            per_char = text_tokens[i] / max(chars[i], 1)
            full += sum(
                len(markers.get(m["role"], [0]))
                + round(len(turn_text(m.get("content"))) * per_char)
                for m in rest
            )
        kept = np.concatenate([*parts[i], eos])
        parts[i] = []
        out.append((kept[:max_seq_length] if max_seq_length else kept, full, bool(rest)))
    return out


def tokenize_shard(
    shard: tuple[int, list[list[dict]]],
    tokenizer: str | Path | TokenizerFiles,
    max_seq_length: int | None,
) -> dict[str, np.ndarray]:
    """Encode one shard `(first_row, conversations)`: message lists of raw rows first_row, ...

    `tokenizer` is a saved tokenizer directory or its files (`tokenizer_files`). Returns
    flat arrays for the non-empty conversations: `conversation_id` (int64, row index in
    the raw data), `n_tokens` and `n_full` (int32, after/before truncation to
    `max_seq_length`; n_full estimated for turns past the limit, see `encode_chats`), all
    their `ids` (int32) concatenated, `n_in` (rows read) and `n_estimated` (conversations
    whose n_full is partly estimated)."""
    start, conversations = shard
    tok = _tokenizer_from(tokenizer)
    enc = encode_chat_arrays(tok, conversations, max_seq_length)
    keep = [i for i, (ids, _, _) in enumerate(enc) if len(ids)]
    return {
        "conversation_id": np.asarray([start + i for i in keep], dtype=np.int64),
        "n_tokens": np.asarray([len(enc[i][0]) for i in keep], dtype=np.int32),
        "n_full": np.asarray([enc[i][1] for i in keep], dtype=np.int32),
        "ids": np.concatenate([enc[i][0] for i in keep]) if keep else np.zeros(0, np.int32),
        "n_in": np.asarray(len(conversations), dtype=np.int64),
        "n_estimated": np.asarray(sum(enc[i][2] for i in keep), dtype=np.int64),
    }
