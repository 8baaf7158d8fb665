"""`data.source: local`: a file (JSONL/JSON or Parquet in one of the layouts of
cvfp/data/record_layouts.py, or plain text: one conversation per blank-line-separated block, one
turn per line, alternating user/assistant) or a directory of them (the hub's split naming)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from cvfp.data.chat_schema import DataError, make_record
from cvfp.data.collect_records import Loaded, collect, collect_schema_records
from cvfp.data.json_stream import Truncation, iter_json


def text_records(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read text file: {err}") from None
    blocks, cur = [], []
    for line in text.splitlines():
        if line.strip():
            cur.append(line.strip())
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    return [make_record(b, f"{path.name}:{i}") for i, b in enumerate(blocks)]


def iter_parquet(path: Path, name: str) -> Iterator[tuple[str, object]]:
    import pyarrow.parquet as pq

    try:
        # Column chunks read through a 64 KB buffer, not pre-buffered whole: a file of one row
        # group would otherwise be held at once (measured: +20 MB at 4 M tokens, issue 26).
        pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 16)
        n = 0
        for batch in pf.iter_batches(batch_size=100):
            for rec in batch.to_pylist():
                yield f"row {n}", rec
                n += 1
    except (OSError, pa.ArrowException, UnicodeDecodeError) as err:
        raise DataError(f"{name}: cannot read parquet file: {type(err).__name__}: {err}") from None


# Data file formats a local directory may hold.
DATA_SUFFIXES = {
    ".parquet": "parquet",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".arrow": "arrow",
    ".txt": "text",
    ".text": "text",
}
READABLE = {"parquet", "json"}


def directory_files(path: Path, split: str) -> list[Path]:
    """The files of `split` in a local directory (the hub's split naming, e.g.
    `data/train_sft-00000-of-00001.parquet`; files not named after a split are 'train'),
    all in one readable format."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    files = sorted(
        f
        for f in path.rglob("*")
        if f.is_file() and not any(p.startswith(".") for p in f.relative_to(path).parts)
    )
    by_kind: dict[str, list[str]] = {}
    for f in files:
        kind = DATA_SUFFIXES.get(f.suffix.lower())
        if kind:
            by_kind.setdefault(kind, []).append(str(f.relative_to(path)))
    if len(by_kind) > 1:
        listing = "; ".join(
            f"{k}: {', '.join(v[:5])}{' ...' if len(v) > 5 else ''}"
            for k, v in sorted(by_kind.items())
        )
        raise DataError(
            f"{path}: data files in {len(by_kind)} formats ({listing}); only one format per "
            f"directory is read, so the others would be silently skipped. Keep one format "
            f"(or point data.path at one file)"
        )
    if not by_kind:
        raise DataError(f"{path}: no data files (.jsonl, .json, .parquet)")
    kind = next(iter(by_kind))
    if kind not in READABLE:
        raise DataError(f"{path}: {kind} files; a directory may hold .jsonl, .json or .parquet")
    patterns = get_data_patterns(str(path))
    splits = {
        str(k): [Path(f) for f in v]
        for k, v in DataFilesDict.from_patterns(patterns, base_path=str(path)).items()
    }
    if split not in splits:
        raise DataError(
            f"{path} (split {split!r}): Unknown split {split!r}, the files name the split(s) "
            f"{sorted(splits)} (set data.split to one of them; files not named after a split "
            f"are the split 'train')"
        )
    return [f.resolve() for f in splits[split] if DATA_SUFFIXES.get(f.suffix.lower()) == kind]


def file_records(
    path: Path, name: str, on_truncated: str, truncations: list[Truncation]
) -> Iterator[tuple[str, object]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return iter_parquet(path, name)
    if suffix in (".jsonl", ".json"):
        return iter_json(path, on_truncated, truncations, name=name)
    raise DataError(
        f"{path}: unknown file type {suffix!r} (use .jsonl, .json, .parquet, .txt "
        f"or a directory of .jsonl/.json/.parquet files)"
    )


def load_local(
    path: str | Path,
    split: str = "train",
    num_samples: int | None = None,
    fmt: str = "auto",
    on_truncated: str = "error",
    out: Path | None = None,
) -> Loaded:
    """`data.source: local`: a file (JSONL/JSON, Parquet, plain text) or a directory of
    them (hub split naming), in any layout of LAYOUTS (`fmt` auto-detects or forces one),
    saved to the dataset directory `out` (a temporary one if None)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"data.path={str(path)!r}: no such file or directory")
    if path.is_file() and path.suffix.lower() in (".txt", ".text"):
        return collect_schema_records(text_records(path), "text", num_samples, out)
    files = directory_files(path, split) if path.is_dir() else [path]
    names = [
        str(path / f.relative_to(path.resolve())) if path.is_dir() else str(path) for f in files
    ]
    truncations: list[Truncation] = []
    loaded = collect(
        (
            (n, file_records(f, n, on_truncated, truncations))
            for f, n in zip(files, names, strict=True)
        ),
        fmt,
        num_samples,
        out,
    )
    if loaded.stats["conversations"] == 0 and not loaded.stats["dropped"]["empty"]:
        raise DataError(f"{path}: no conversations")
    loaded.stats["files"] = names
    loaded.stats["truncated"] = [t.__dict__ for t in truncations]
    return loaded
