"""Stage tokenize: data/raw -> data/tokenizer + data/tokenized.

tokenizer.kind=bpe trains a byte-level BPE (tokenizer.vocab_size) on the train conversations
only: `cvfp.data.splitting.partition` (the rule the split stage cuts by, from the `split` params)
says which non-empty conversations are train, so val and test text never shapes the
vocabulary (SPEC 9). tokenizer.kind=pretrained loads AutoTokenizer tokenizer.name (hub
name or local path).
Each conversation becomes one token sequence in the chat format of cvfp/data/tokenization.py
(`<|user|> ...\\n<|assistant|> ...\\n<|endoftext|>`; markers and end-of-text inserted by
id, so text never becomes a special token), cut to tokenizer.max_seq_length (turns past the
limit are not encoded). A warning names the share of tokens dropped when above 10%
(`truncated_token_share` in data/tokenized/stats.json). Empty conversations are dropped
and counted.

Encoding runs in shards of orchestration.shard_conversations raw rows
(`cvfp.data.tokenization.tokenize_shard`), here on tokenizer.num_proc threads (1: a plain
loop); under the Prefect flow the shards are mapped tasks on the configured task runner
(threads or Dask). Neither the shard size nor the engine changes the output. Run here,
memory holds the shards in flight (at most num_proc + 1), not the corpus: shards are read
from data/raw when taken and their ids go to a work file (`cvfp.data.token_shards.ShardCombiner`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from cvfp.data import splitting
from cvfp.params import Params
from cvfp.runtime.sharding import MapShards, threaded
from cvfp.runtime.utils import atomic_path, dir_digest
from tasks.cli import cli, log
from tasks.layout import RAW, STATS, TOKENIZED, TOKENIZER
from tasks.outputs import StageOutputs


def load_raw(path: Path = RAW):
    from datasets import load_from_disk

    if not path.exists():
        raise FileNotFoundError(
            f"{path}: raw conversations not found (run the download stage first)"
        )
    try:
        return load_from_disk(str(path))
    except Exception as err:  # corrupt Arrow/state files raise assorted types
        raise ValueError(f"{path}: cannot load raw dataset: {type(err).__name__}: {err}") from None


def read_stats(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def empty_data_message(n: int, params: Params | None = None) -> str:
    where = f" ({params.data.source}: {params.data.path})" if params is not None else ""
    return (
        f"no non-empty conversations in data.path{where}: all {n} conversations are empty "
        f"(only empty turns); check the data, or data.source / data.path"
    )


def train_rows(raw, split_params) -> list[int]:
    """Raw row indices of the train conversations: `partition` over the non-empty ones (the
    conversations tokenize_shard keeps, in order), as the split stage will cut them."""
    from cvfp.data import tokenization as tk

    nonempty = [i for i, msgs in enumerate(tk.iter_messages(raw)) if tk.format_chat(msgs)]
    if not nonempty:
        raise ValueError(empty_data_message(len(raw)))
    parts = splitting.partition(len(nonempty), split_params)
    return [nonempty[i] for i in parts.train]


def run(params: Params, map_shards: MapShards | None = None) -> dict:
    """`map_shards` runs the encoding shards (default: in this process, on
    tokenizer.num_proc threads; 1 = a plain loop)."""
    check = StageOutputs("tokenize", params).before_replace  # params.yaml now
    from cvfp.data import token_shards
    from cvfp.data import tokenization as tk

    t = params.tokenizer
    raw = load_raw()
    trained_on = None
    if t.kind == "bpe":
        rows = train_rows(raw, params.split)
        tokenizer = tk.train_bpe(tk.iter_messages(raw.select(rows)), t.vocab_size)
        trained_on = {"conversations": len(rows), "ids_sha256": splitting.ids_digest(rows)}
    else:
        tokenizer = tk.load_pretrained(t.name, timeout=params.data.timeout_s)
    TOKENIZED.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        prefix=f".tokenize-{os.getpid()}-", dir=TOKENIZED.parent
    ) as tmp:
        # Shards encode with the saved tokenizer (as file bytes: no shared disk needed), so
        # the ids are exactly what AutoTokenizer.from_pretrained(data/tokenizer) gives.
        tk.save_tokenizer(tokenizer, Path(tmp) / "tokenizer")
        files = tk.tokenizer_files(Path(tmp) / "tokenizer")
        # Shards are read from data/raw as they are encoded and their ids appended to a
        # file in tmp as they come back (in order): memory holds the shards in flight, not
        # the corpus (docs/scaling.md).
        combine = token_shards.ShardCombiner(tmp)
        (map_shards or threaded(t.num_proc))(
            tk.tokenize_shard,
            token_shards.shards_of(raw, params.orchestration.shard_conversations),
            combine,
            {"tokenizer": files, "max_seq_length": t.max_seq_length},
        )
        ds, stats = combine.finish(tokenizer)
        if len(ds) == 0:  # would save a dataset that split cannot use
            raise ValueError(empty_data_message(stats["conversations_in"], params))
        stats = {
            "kind": t.kind,
            "name": t.name if t.kind == "pretrained" else "bpe",
            **stats,
            "raw": read_stats(RAW / STATS),
            # the train conversations the BPE learned from (split checks it cuts the same)
            "tokenizer_trained_on": trained_on,
        }  # carried on so split needs only this stage
        # Tokenizer and token ids must match: both are written in full before either
        # replaces the old one (a failed write, e.g. disk full, replaces neither), and the ids
        # record which tokenizer made them (split checks it).
        with (
            atomic_path(TOKENIZER, check) as tok_out,
            atomic_path(TOKENIZED, check) as out,
        ):
            tk.save_tokenizer(tokenizer, tok_out)
            stats["tokenizer_sha256"] = dir_digest(tok_out)
            ds.save_to_disk(str(out))
            (out / STATS).write_text(json.dumps(stats, indent=2) + "\n")
    warn_truncation(stats, t.max_seq_length)
    log.info(
        "tokenize: %d conversations, %d tokens (vocab %d, %d empty dropped, %d truncated) -> %s",
        stats["conversations_out"],
        stats["tokens"],
        stats["vocab_size"],
        stats["dropped"]["empty"],
        stats["truncated"],
        TOKENIZED,
    )
    return {**stats, "tokenizer": str(TOKENIZER), "out": str(TOKENIZED)}


TRUNCATION_WARN_SHARE = 0.10  # warn when max_seq_length drops more of the tokens than this


def warn_truncation(stats: dict, max_seq_length: int | None) -> str | None:
    """A warning (logged and returned) when tokenizer.max_seq_length drops more than 10% of
    the tokens: multi-turn data would otherwise be mostly discarded without a word."""
    share = stats["truncated_token_share"]
    if share <= TRUNCATION_WARN_SHARE:
        return None
    msg = (
        f"{stats['truncated']}/{stats['conversations_out']} conversations truncated, "
        f"{share:.0%} of tokens dropped by tokenizer.max_seq_length={max_seq_length}: "
        f"raise tokenizer.max_seq_length or set null"
    )
    log.warning("tokenize: %s", msg)
    return msg


def main() -> None:
    cli("tokenize", run, __doc__)


if __name__ == "__main__":
    main()
