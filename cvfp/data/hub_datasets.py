"""`data.source: ultrachat`: a Hugging Face hub dataset (or a local directory in the hub
layout, `data/<split>-00000-of-0000N.parquet`), both through `datasets.load_dataset`, so the
UltraChat path is testable offline; its rows are checked and mapped like any local file."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow as pa

from cvfp.data.chat_schema import DataError
from cvfp.data.collect_records import Loaded, collect


def load_dataset(
    name_or_path: str,
    split: str,
    num_samples: int | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """A hub dataset or a local directory in the hub layout: one code path for both.

    Streaming reads only the first `num_samples` rows (no full download) and materialises
    them, so callers always get an in-memory `Dataset`.
    """
    try:
        ds = datasets.load_dataset(
            name_or_path, split=split, streaming=streaming, cache_dir=cache_dir
        )
    except (FileNotFoundError, ValueError) as err:
        hint = (
            " (set data.split to one of the splits named here; files not named after a split "
            "are the split 'train')"
            if "Unknown split" in str(err)
            else ""
        )
        raise DataError(
            f"{name_or_path} (split {split!r}): cannot load dataset: {err}{hint}"
        ) from None
    if streaming:
        rows = itertools.islice(ds, num_samples) if num_samples else ds
        return datasets.Dataset.from_list(list(rows))
    return take(ds, num_samples)


def iter_dataset(ds: datasets.Dataset, batch_size: int = 1000) -> Iterator[tuple[str, object]]:
    """Rows of a (typed, hub) dataset as plain records."""
    n = 0
    for batch in ds.iter(batch_size=batch_size):
        cols = list(batch)
        for values in zip(*(batch[c] for c in cols), strict=True):
            yield f"row {n}", dict(zip(cols, values, strict=True))
            n += 1


def from_dataset(
    ds: datasets.Dataset,
    source: str,
    fmt: str,
    num_samples: int | None,
    out: Path | None = None,
) -> Loaded:
    """A hub dataset (already typed by Arrow) in any known layout -> schema dataset in
    `out` (a temporary directory if None)."""
    validate(ds, source)
    return collect([(source, iter_dataset(ds))], fmt, num_samples, out)


def take(ds: datasets.Dataset, num_samples: int | None) -> datasets.Dataset:
    return ds.select(range(min(num_samples, len(ds)))) if num_samples else ds


def validate(ds: datasets.Dataset, source: str) -> datasets.Dataset:
    """Refuse Arrow data that is invalid as stored (e.g. invalid UTF-8 in a string column of
    a hub or parquet shard), naming `source`. In batches: one whole-dataset table would
    hold every row at once."""
    try:
        for table in ds.with_format("arrow").iter(batch_size=1000):
            table.validate(full=True)
    except pa.ArrowInvalid as err:
        raise DataError(
            f"{source}: invalid data ({err}); fix or re-encode the source as UTF-8"
        ) from None
    return ds
