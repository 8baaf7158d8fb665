"""Stage split: data/tokenized -> data/split/{train,val,test,gx} + metrics/data.json.

Val and test come from the training data (split.strategy: holdout | tail,
split.val_fraction, split.test_fraction; the rule is `cvfp.data.splitting.partition`, which the
tokenize stage also used to train the BPE on the train conversations only). A Great
Expectations suite (tasks/expectations.py) checks val and test before anything trains; on
failure, or when a held-out part is empty, the stage raises and leaves no data/split behind.
"""

from __future__ import annotations

import json
from pathlib import Path

from cvfp.data.metrics import DataMetrics
from cvfp.params import Params
from cvfp.runtime.utils import atomic_path, write_json
from tasks.cli import cli, log
from tasks.layout import (
    DATA_METRICS,
    GX_DIR,
    SPLIT,
    SPLIT_TEST,
    SPLIT_TRAIN,
    SPLIT_VAL,
    STATS,
    TOKENIZED,
    TOKENIZER,
)
from tasks.outputs import StageOutputs
from tasks.tokens import broken, load_tokenizer


def load_tokenized(path: Path = TOKENIZED):
    """(conversation ids, token arrays, stats of earlier stages) from the tokenize output.
    The token arrays are int32 views into the memory-mapped Arrow file (4 bytes per token,
    file pages; nothing copied)."""
    import numpy as np
    from datasets import load_from_disk

    if not path.exists():
        raise FileNotFoundError(f"{path}: tokenized data not found (run the tokenize stage first)")
    try:
        ds = load_from_disk(str(path))
        missing = {"conversation_id", "input_ids", "n_tokens"} - set(ds.column_names)
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        stats_file = path / STATS
        stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
        table = ds.data.table  # memory-mapped: no Python object per token
        ids = table.column("conversation_id").to_numpy().tolist()
        convs = []
        for chunk in table.column("input_ids").chunks:  # int32 views into the file
            if len(chunk) == 0:
                continue
            values = chunk.flatten().to_numpy()
            offsets = chunk.offsets.to_numpy() - chunk.offsets[0].as_py()
            convs += np.split(values, offsets[1:-1])
    except Exception as err:  # corrupt Arrow/state files raise assorted types
        if "missing column" in str(err):
            raise
        raise broken(path, err) from None
    return ids, convs, stats


def check_ids_fit(convs, vocab_size: int, made_by: str | None) -> None:
    """data/tokenized must come from the data/tokenizer beside it (same tokenize run)."""
    from cvfp.runtime.utils import dir_digest

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


def check_tokenizer_train(trained_on: dict | None, train_ids: list[int]) -> None:
    """The BPE in data/tokenizer learned from exactly this split's train conversations."""
    from cvfp.data.splitting import ids_digest

    if trained_on is None:  # a pretrained tokenizer (or stats from before this check)
        return
    if trained_on.get("ids_sha256") != ids_digest(train_ids):
        raise ValueError(
            f"{TOKENIZER} was trained on {trained_on.get('conversations')} conversations that "
            f"are not this split's {len(train_ids)} train conversations (the split params "
            f"changed since the tokenize stage ran); rerun it (`dvc repro -s tokenize`)"
        )


def to_dataset(ids, convs):
    """The part as a dataset (conversation_id, input_ids int32, n_tokens), its Arrow table
    built from the arrays (no Python object per token; `Dataset.from_dict` took ~50 bytes
    per token). The fingerprint hashes the arrays (run_stage then pins every saved
    dataset's fingerprint to its file bytes)."""
    import hashlib

    import numpy as np
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo
    from datasets.table import InMemoryTable

    from cvfp.data.tokenization import OUT_FEATURES

    lengths = np.fromiter(map(len, convs), np.int64, len(convs))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    if offsets[-1] >= 2**31:
        raise ValueError(f"{offsets[-1]} tokens do not fit one Arrow list column (int32 offsets)")
    values = np.concatenate(convs).astype(np.int32) if convs else np.zeros(0, np.int32)
    conv_id = np.asarray(ids, dtype=np.int64)
    table = pa.Table.from_arrays(
        [
            pa.array(conv_id, pa.int64()),
            pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values)),
            pa.array(lengths.astype(np.int32), pa.int32()),
        ],
        schema=OUT_FEATURES.arrow_schema,
    )
    h = hashlib.sha256()
    for part in (conv_id, offsets, values):
        h.update(memoryview(np.ascontiguousarray(part)).cast("B"))
    return Dataset(
        InMemoryTable(table),
        info=DatasetInfo(features=OUT_FEATURES),
        fingerprint=h.hexdigest()[:16],
    )


def run(params: Params) -> dict:
    from cvfp.data import splitting
    from tasks.expectations import validate_heldout

    out = StageOutputs("split", params)  # params.yaml now
    ids, convs, earlier = load_tokenized()
    if not TOKENIZER.exists():
        raise FileNotFoundError(f"{TOKENIZER}: tokenizer not found (run the tokenize stage first)")
    tokenizer = load_tokenizer(TOKENIZER)
    check_ids_fit(convs, len(tokenizer), earlier.get("tokenizer_sha256"))
    s = splitting.split(ids, convs, params.split)
    check_tokenizer_train(earlier.get("tokenizer_trained_on"), s.train_ids)
    stats = splitting.subset_stats(s)
    with atomic_path(SPLIT, out.before_replace) as tmp:
        gx = validate_heldout(
            {name: s.part(name) for name in splitting.HELDOUT},
            splitting.train_vocab(s.train),
            len(tokenizer),
            tmp / GX_DIR.name,
            decode=lambda i: tokenizer.decode([i]),
        )
        for path, name in ((SPLIT_TRAIN, "train"), (SPLIT_VAL, "val"), (SPLIT_TEST, "test")):
            to_dataset(*s.part(name)).save_to_disk(str(tmp / path.name))
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
        "test_fraction": params.split.test_fraction,
        **stats,
        "dropped_conversations": {
            "empty": earlier.get("dropped", {}).get("empty"),
            "val_unseen_token": s.stats["val"]["dropped_conversations"],
            "test_unseen_token": s.stats["test"]["dropped_conversations"],
        },
        "val_dropped_tokens": s.stats["val"]["dropped_tokens"],
        "test_dropped_tokens": s.stats["test"]["dropped_tokens"],
        "val_cut_conversations": s.stats["val"]["cut_conversations"],
        "test_cut_conversations": s.stats["test"]["cut_conversations"],
        "gx_success": gx["success"],
        "gx_expectations_evaluated": gx["expectations_evaluated"],
        "gx_expectations_successful": gx["expectations_successful"],
    }
    metrics = DataMetrics.model_validate(data).to_dict()  # a missing/unknown key fails here
    write_json(DATA_METRICS, metrics, out.before_replace)
    log.info(
        "split (%s): train %d conv / %d tokens, val %d conv / %d tokens, test %d conv / %d "
        "tokens, held-out tokens dropped for unseen ids %.2f%%, GX %d/%d expectations -> %s",
        params.split.strategy,
        stats["train_conversations"],
        stats["train_tokens"],
        stats["val_conversations"],
        stats["val_tokens"],
        stats["test_conversations"],
        stats["test_tokens"],
        100 * stats["heldout_dropped_share"],
        gx["expectations_successful"],
        gx["expectations_evaluated"],
        SPLIT,
    )
    return {**metrics, "out": str(SPLIT), "metrics": str(DATA_METRICS)}


def main() -> None:
    cli("split", run, __doc__)


if __name__ == "__main__":
    main()
