"""Stage tokenize: data/raw -> data/tokenizer + data/tokenized.

tokenizer.kind=bpe trains a byte-level BPE (tokenizer.vocab_size) on the conversations;
tokenizer.kind=pretrained loads AutoTokenizer tokenizer.name (hub name or local path).
Each conversation becomes one token sequence in the chat format of cvfp/tokenization.py
(`<|user|> ...\\n<|assistant|> ...\\n<|endoftext|>`), cut to tokenizer.max_seq_length.
Empty conversations are dropped and counted in data/tokenized/stats.json.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from cvfp.params import Params
from cvfp.utils import atomic_path
from tasks.common import RAW, TOKENIZED, TOKENIZER, cli, log

STATS = "stats.json"


def load_raw(path: Path = RAW):
    from datasets import load_from_disk
    if not path.exists():
        raise FileNotFoundError(f"{path}: raw conversations not found (run the download stage first)")
    try:
        return load_from_disk(str(path))
    except Exception as err:  # corrupt Arrow/state files raise assorted types
        raise ValueError(f"{path}: cannot load raw dataset: {type(err).__name__}: {err}") from None


def read_stats(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def run(params: Params) -> dict:
    from cvfp import tokenization as tk
    t = params.tokenizer
    raw = load_raw()
    if t.kind == "bpe":
        tokenizer = tk.train_bpe(tk.iter_messages(raw), t.vocab_size)
    else:
        tokenizer = tk.load_pretrained(t.name, timeout=params.data.timeout_s)
    TOKENIZED.parent.mkdir(parents=True, exist_ok=True)
    # map() cache files go here, not into data/raw (another stage's output)
    with tempfile.TemporaryDirectory(prefix=".tokenize-", dir=TOKENIZED.parent) as cache:
        ds, stats = tk.tokenize_dataset(raw, tokenizer, t.max_seq_length, t.num_proc, cache)
        stats = {"kind": t.kind, "name": t.name if t.kind == "pretrained" else "bpe", **stats,
                 "raw": read_stats(RAW / STATS)}  # carried on so split needs only this stage
        # Tokenizer and token ids must match: write both, tokenizer first.
        with atomic_path(TOKENIZER) as tmp:
            tk.save_tokenizer(tokenizer, tmp)
        with atomic_path(TOKENIZED) as tmp:
            ds.save_to_disk(str(tmp))
            (tmp / STATS).write_text(json.dumps(stats, indent=2) + "\n")
    log.info("tokenize: %d conversations, %d tokens (vocab %d, %d empty dropped, %d truncated) -> %s",
             stats["conversations_out"], stats["tokens"], stats["vocab_size"],
             stats["dropped"]["empty"], stats["truncated"], TOKENIZED)
    return {**stats, "tokenizer": str(TOKENIZER), "out": str(TOKENIZED)}


def main() -> None:
    cli("tokenize", run, __doc__)


if __name__ == "__main__":
    main()
