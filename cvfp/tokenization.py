"""Tokenizers (trained byte-level BPE or a pretrained AutoTokenizer) and the chat format.

Chat format: each turn is rendered as `<marker> <content>\n` with the marker `<|user|>`,
`<|assistant|>` or `<|system|>` (content stripped), the turns are concatenated, and the
end-of-text token (`tokenizer.eos_token_id`, `<|endoftext|>` for BPE and GPT-2) is appended
as an id, so every conversation is one sequence that ends with it:

    <|user|> What is AI?\n<|assistant|> A branch of science.\n<|endoftext|>

`max_seq_length` keeps the first N tokens (the end-of-text token is then cut too).

* bpe: the markers and `<|endoftext|>` are special tokens (one id each, ids 0-3).
* pretrained: the vocabulary is kept as shipped so pretrained embeddings line up row for
  row; the markers are plain text (several tokens each). Only a missing end-of-text
  token is added.
Both kinds are saved with `save_pretrained` (tokenizer.json + tokenizer_config.json) and
load back with `AutoTokenizer.from_pretrained(dir)`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import datasets

from cvfp.utils import is_local, require_hub

# Forked datasets.map workers deadlock/warn if the Rust thread pool was used before fork.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EOS = "<|endoftext|>"
MARKERS = {"user": "<|user|>", "assistant": "<|assistant|>", "system": "<|system|>"}
SPECIAL_TOKENS = [EOS, MARKERS["user"], MARKERS["assistant"], MARKERS["system"]]
OUT_FEATURES = datasets.Features({
    "conversation_id": datasets.Value("int64"),
    "input_ids": [datasets.Value("int32")],
    "n_tokens": datasets.Value("int32"),
})


def turn_text(content: str | None) -> str:
    """What follows a marker: the same bytes the BPE is trained on."""
    return f" {(content or '').strip()}\n"


def format_chat(messages: list[dict]) -> str:
    """Conversation text without the end-of-text token (appended as an id when encoding)."""
    if not any((m.get("content") or "").strip() for m in messages):
        return ""  # empty / whitespace-only: dropped by tokenize_dataset
    return "".join(MARKERS.get(m["role"], m["role"]) + turn_text(m.get("content")) for m in messages)


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
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        # all 256 bytes, so any unseen text still encodes (no unknown token needed)
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Markers are not in the training text: they are special tokens and must not eat merges.
    texts = (turn_text(m["content"]) for msgs in conversations for m in msgs)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS,
                                   additional_special_tokens=SPECIAL_TOKENS[1:])


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
        raise RuntimeError(f"{path}: tokenizer has no fast (tokenizers) backend, "
                           f"so no tokenizer.json was written; pick another tokenizer.name")


# ---------------------------------------------------------------- encoding

def _encode(batch, indices, tokenizer, eos_id, max_len):
    texts = [format_chat(m) for m in batch["messages"]]
    enc = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    full = [e + [eos_id] if t else [] for e, t in zip(enc, texts)]
    ids = [f[:max_len] for f in full] if max_len else full
    return {"conversation_id": indices, "input_ids": ids, "n_tokens": [len(x) for x in ids],
            "n_full": [len(f) for f in full]}


def tokenize_dataset(ds: datasets.Dataset, tokenizer, max_seq_length: int | None,
                     num_proc: int, cache_dir: str | Path) -> tuple[datasets.Dataset, dict]:
    """Conversations -> (conversation_id, input_ids, n_tokens), empty ones dropped and counted.

    `conversation_id` is the row index in `ds`. Intermediate Arrow files go to `cache_dir`,
    never next to the input dataset (a DVC output that must not change).
    """
    eos_id = tokenizer.eos_token_id
    # Each worker pays a fork + tokenizer pickle; never start more workers than rows.
    num_proc = max(1, min(num_proc, len(ds)))
    cache_dir = Path(cache_dir)
    out = ds.map(
        _encode, batched=True, with_indices=True, num_proc=num_proc if num_proc > 1 else None,
        fn_kwargs={"tokenizer": tokenizer, "eos_id": eos_id, "max_len": max_seq_length},
        remove_columns=ds.column_names,
        features=datasets.Features({**OUT_FEATURES, "n_full": datasets.Value("int32")}),
        cache_file_name=str(cache_dir / "encoded.arrow"), desc="tokenize")
    kept = out.filter(lambda n: [x > 0 for x in n], input_columns="n_tokens", batched=True,
                      cache_file_name=str(cache_dir / "kept.arrow"), desc="drop empty")
    cols = kept.with_format("numpy")
    n_tokens, n_full = cols["n_tokens"][:], cols["n_full"][:]  # [:] materialises the lazy Column
    stats = {
        "conversations_in": len(ds),
        "conversations_out": len(kept),
        "dropped": {"empty": len(ds) - len(kept)},
        "truncated": int((n_full > n_tokens).sum()),
        "tokens_before_truncation": int(n_full.sum()),
        "tokens": int(n_tokens.sum()),
        "vocab_size": len(tokenizer),
        "eos_token_id": eos_id,
    }
    return kept.remove_columns("n_full"), stats
