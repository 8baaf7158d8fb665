"""Stage split: data/tokenized -> data/split/{train,val,gx} + metrics/data.json.

Validation comes from the training data (split.strategy: holdout | tail, split.val_fraction;
see cvfp/splitting.py). A Great Expectations suite (tasks/expectations.py) checks val before
anything trains; on failure the stage raises and leaves no data/split behind.
"""

from __future__ import annotations

import json
from pathlib import Path

from cvfp.metrics.data import DataMetrics
from cvfp.params import Params
from cvfp.utils import atomic_path, write_json
from tasks.common import cli, log
from tasks.layout import (
    DATA_METRICS,
    GX_DIR,
    SPLIT,
    SPLIT_TRAIN,
    SPLIT_VAL,
    STATS,
    TOKENIZED,
    TOKENIZER,
)


def load_tokenized(path: Path = TOKENIZED):
    """(conversation ids, token arrays, stats of earlier stages) from the tokenize output."""
    import numpy as np
    from datasets import load_from_disk

    if not path.exists():
        raise FileNotFoundError(f"{path}: tokenized data not found (run the tokenize stage first)")
    try:
        ds = load_from_disk(str(path))
    except Exception as err:  # corrupt Arrow/state files raise assorted types
        raise ValueError(
            f"{path}: cannot load tokenized dataset: {type(err).__name__}: {err}"
        ) from None
    missing = {"conversation_id", "input_ids", "n_tokens"} - set(ds.column_names)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    stats_file = path / STATS
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    ids = [int(i) for i in ds["conversation_id"]]
    convs = [np.asarray(x, dtype=np.int64) for x in ds.with_format("numpy")["input_ids"]]
    return ids, convs, stats


def check_ids_fit(convs, vocab_size: int, made_by: str | None) -> None:
    """data/tokenized must come from the data/tokenizer beside it (same tokenize run)."""
    from cvfp.utils import dir_digest

    if made_by is not None and made_by != dir_digest(TOKENIZER):
        raise ValueError(
            f"{TOKENIZED} was not made with {TOKENIZER} (tokenizer digest differs: "
            f"they come from different tokenize runs); rerun the tokenize stage "
            f"(`dvc repro -f -s tokenize`)"
        )
    top = max((int(c.max()) for c in convs if len(c)), default=-1)
    if top >= vocab_size:
        raise ValueError(
            f"{TOKENIZED} has token id {top} but {TOKENIZER} has {vocab_size} tokens: "
            f"they come from different tokenize runs; rerun the tokenize stage "
            f"(`dvc repro -f -s tokenize`)"
        )


def to_dataset(ids, convs):
    from datasets import Dataset

    from cvfp.tokenization import OUT_FEATURES

    return Dataset.from_dict(
        {
            "conversation_id": ids,
            "input_ids": [c.astype("int32") for c in convs],
            "n_tokens": [len(c) for c in convs],
        },
        features=OUT_FEATURES,
    )


def run(params: Params) -> dict:
    from transformers import AutoTokenizer

    from cvfp import splitting
    from tasks.expectations import validate_val

    ids, convs, earlier = load_tokenized()
    if not TOKENIZER.exists():
        raise FileNotFoundError(f"{TOKENIZER}: tokenizer not found (run the tokenize stage first)")
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER))
    check_ids_fit(convs, len(tokenizer), earlier.get("tokenizer_sha256"))
    s = splitting.split(ids, convs, params.split.strategy, params.split.val_fraction)
    stats = splitting.subset_stats(s)
    with atomic_path(SPLIT) as tmp:
        gx = validate_val(
            s.val_ids,
            s.val,
            splitting.train_vocab(s.train),
            len(tokenizer),
            tmp / GX_DIR.name,
            decode=lambda i: tokenizer.decode([i]),
        )
        to_dataset(s.train_ids, s.train).save_to_disk(str(tmp / SPLIT_TRAIN.name))
        to_dataset(s.val_ids, s.val).save_to_disk(str(tmp / SPLIT_VAL.name))
    raw = earlier.get("raw", {})
    data = {
        "source": raw.get("source"),
        "raw_conversations": raw.get("conversations"),
        "tokenizer_kind": earlier.get("kind"),
        "vocab_size": len(tokenizer),
        "max_seq_length": params.tokenizer.max_seq_length,
        "truncated_conversations": earlier.get("truncated"),
        "layout": raw.get("layout"),
        "truncated_token_share": earlier.get("truncated_token_share"),
        "split_strategy": params.split.strategy,
        "val_fraction": params.split.val_fraction,
        **stats,
        "dropped_conversations": {
            "empty": earlier.get("dropped", {}).get("empty"),
            "val_unseen_token": s.stats["val_dropped_unseen_token"],
        },
        "val_dropped_tokens": s.stats["val_dropped_tokens"],
        "gx_success": gx["success"],
        "gx_expectations_evaluated": gx["expectations_evaluated"],
        "gx_expectations_successful": gx["expectations_successful"],
    }
    metrics = DataMetrics.model_validate(data).to_dict()  # a missing/unknown key fails here
    write_json(DATA_METRICS, metrics)
    log.info(
        "split (%s): train %d conv / %d tokens, val %d conv / %d tokens, val_subset_ok=%s, "
        "GX %d/%d expectations -> %s",
        params.split.strategy,
        stats["train_conversations"],
        stats["train_tokens"],
        stats["val_conversations"],
        stats["val_tokens"],
        stats["val_subset_ok"],
        gx["expectations_successful"],
        gx["expectations_evaluated"],
        SPLIT,
    )
    return {**metrics, "out": str(SPLIT), "metrics": str(DATA_METRICS)}


def main() -> None:
    cli("split", run, __doc__)


if __name__ == "__main__":
    main()
