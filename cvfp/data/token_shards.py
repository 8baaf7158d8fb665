"""The tokenize stage's shards around `cvfp.data.tokenization.tokenize_shard`: the raw
conversations read as shards when a worker takes them (`RawShards`), and the one output
dataset built from the shard results in shard order, the token ids in a work file
(`ShardCombiner`). docs/scaling.md."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import overload

import datasets
import numpy as np

from cvfp.data.tokenization import OUT_FEATURES


class RawShards(Sequence):
    """The raw dataset's conversations as tokenize shards `(first_row, message lists)` of
    `size` rows, in row order; a shard's rows are read from the (memory-mapped) dataset when
    it is taken, so only the shards in flight are Python objects."""

    def __init__(self, ds: datasets.Dataset, size: int) -> None:
        from cvfp.runtime.sharding import ranges

        self._messages = ds.select_columns(["messages"])
        self._ranges = ranges(len(ds), size)

    def __len__(self) -> int:
        return len(self._ranges)

    @overload
    def __getitem__(self, i: int) -> tuple[int, list[list[dict]]]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[int, list[list[dict]]]]: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        a, b = self._ranges[i]  # IndexError past the end ends iteration
        return (a, self._messages[a:b]["messages"])


def shards_of(ds: datasets.Dataset, size: int) -> RawShards:
    """The raw dataset's conversations as tokenize shards of `size` rows, in row order."""
    return RawShards(ds, size)


IDS_FILE = "ids.int32"
_HASH_READ = 1 << 24  # bytes per read when hashing the ids file


class ShardCombiner:
    """Builds the one output dataset from the shard results, consumed in shard order
    (`consume(i, result)`, the `map_shards` callback): the token ids are appended to a file
    in `work_dir` (kept until the dataset is saved), only per-conversation numbers stay in
    memory. `finish` gives the same dataset (same saved bytes, same fingerprint) as holding
    every shard's ids in memory and concatenating them."""

    def __init__(self, work_dir: str | Path) -> None:
        self._path = Path(work_dir) / IDS_FILE
        self._file = open(self._path, "wb")  # noqa: SIM115 (closed by finish)
        self._next = 0
        self._conv_id: list[np.ndarray] = []
        self._n_tokens: list[np.ndarray] = []
        self._n_full: list[np.ndarray] = []
        self._n_in = 0
        self._n_estimated = 0

    def __call__(self, i: int, result: dict[str, np.ndarray]) -> None:
        if i != self._next:
            raise RuntimeError(f"tokenize shard {i} arrived before shard {self._next}")
        self._next += 1
        self._conv_id.append(np.asarray(result["conversation_id"], dtype=np.int64))
        self._n_tokens.append(np.asarray(result["n_tokens"], dtype=np.int64))
        self._n_full.append(np.asarray(result["n_full"], dtype=np.int64))
        self._n_in += int(result["n_in"])
        self._n_estimated += int(result.get("n_estimated", 0))
        np.ascontiguousarray(result["ids"], dtype=np.int32).tofile(self._file)

    def finish(self, tokenizer) -> tuple[datasets.Dataset, dict]:
        """(dataset conversation_id/input_ids/n_tokens, stats); the ids are read from the
        file through a memory map (save the dataset before work_dir goes)."""
        import pyarrow as pa
        from datasets.table import InMemoryTable

        self._file.close()

        def cat(parts, dtype):
            return np.concatenate(parts) if parts else np.zeros(0, dtype)

        conv_id = cat(self._conv_id, np.int64)
        n_tokens, n_full = cat(self._n_tokens, np.int64), cat(self._n_full, np.int64)
        offsets = np.concatenate([[0], np.cumsum(n_tokens)]).astype(np.int64)
        if offsets[-1] >= 2**31:
            raise ValueError(
                f"{offsets[-1]} tokens do not fit one Arrow list column (int32 offsets); "
                f"lower data.num_samples or tokenizer.max_seq_length"
            )
        n_ids = int(offsets[-1])
        if self._path.stat().st_size != 4 * n_ids:
            raise RuntimeError(f"{self._path}: {self._path.stat().st_size} bytes, not {4 * n_ids}")
        if n_ids:
            values = pa.Array.from_buffers(
                pa.int32(), n_ids, [None, pa.memory_map(str(self._path)).read_buffer()]
            )
        else:
            values = pa.array(np.zeros(0, np.int32), pa.int32())
        table = pa.Table.from_arrays(
            [
                pa.array(conv_id, pa.int64()),
                pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values),
                pa.array(n_tokens.astype(np.int32), pa.int32()),
            ],
            schema=OUT_FEATURES.arrow_schema,
        )
        # The fingerprint (saved in state.json) from the arrays themselves: datasets would
        # compute one by pickling the table, a copy of every token id. The ids are hashed
        # from the file in reads of 16 MB (the same digest as hashing them in one piece).
        h = hashlib.sha256()
        h.update(conv_id.tobytes())
        h.update(offsets.tobytes())
        with open(self._path, "rb") as f:
            while block := f.read(_HASH_READ):
                h.update(block)
        ds = datasets.Dataset(
            InMemoryTable(table),
            info=datasets.DatasetInfo(features=OUT_FEATURES),
            fingerprint=h.hexdigest()[:16],
        )
        n_in = self._n_in
        stats = {
            "conversations_in": n_in,
            "conversations_out": len(ds),
            "dropped": {"empty": n_in - len(ds)},
            "truncated": int((n_full > n_tokens).sum()),
            "tokens_before_truncation": int(n_full.sum()),
            # conversations whose tokens past max_seq_length were estimated, not encoded
            "tokens_before_truncation_estimated": self._n_estimated,
            "tokens": int(n_tokens.sum()),
            "truncated_token_share": (
                float(1 - n_tokens.sum() / n_full.sum()) if n_full.sum() else 0.0
            ),
            "vocab_size": len(tokenizer),
            "eos_token_id": tokenizer.eos_token_id,
        }
        return ds, stats
