"""Records of (name, row iterator) sources -> one schema dataset directory (`Loaded`: the
`save_to_disk` directory plus what the reading found, data/raw/stats.json), written batch by
batch as the records come (memory bounded by one batch, not the corpus), stopping after
data.num_samples conversations; empty conversations are dropped and counted."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter
from datasets.utils.py_utils import asdict

from cvfp.data.chat_schema import FEATURES, DataError
from cvfp.data.record_layouts import FORMATS, MAPPINGS, Normalizer, detect_layout

# Records go to Arrow in pieces of PIECE_ROWS (or PIECE_BYTES of text); pieces make a group
# of GROUP_ROWS records (or GROUP_BYTES), written as one table: record batches of 1000 rows
# (save_to_disk's writer batch size), a new shard file past SHARD_BYTES (its max_shard_size).
PIECE_ROWS, PIECE_BYTES = 100, 2**20
GROUP_ROWS, GROUP_BYTES = 2000, 4 * 2**20
SHARD_BYTES = 500 * 10**6


@dataclass
class Loaded:
    """The schema conversations, saved in `path` (the layout of `Dataset.save_to_disk`,
    read with `datasets.load_from_disk`), plus what the reading found (stats.json)."""

    path: Path
    stats: dict = field(default_factory=dict)
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def dataset(self) -> datasets.Dataset:
        """The saved conversations, memory-mapped."""
        return datasets.load_from_disk(str(self.path))

    def __len__(self) -> int:
        return int(self.stats["conversations"])


class Collector:
    """Schema records -> a dataset directory in the layout of `Dataset.save_to_disk`,
    written as the records come: in memory one group of records at most (2000 records or
    4 MB of text, as Arrow), never the corpus.

    The bytes are those the in-memory collector wrote (one table of 2000-record chunks,
    then `save_to_disk`; tests/test_collect.py compares them) as long as every 2000
    consecutive conversations hold under 4 MB of text (the default chatterbot data: 0.5 MB
    in all): the groups are then those chunks. Why 2000, not save_to_disk's 1000-row record
    batches: Arrow's IPC writer, given the first 1000 rows of a longer array, writes each
    buffer up to the next multiple of 64 bytes from the array (the following rows' offsets
    and text) where a 1000-row array gets zero padding, so the old file depends on its
    2000-record chunks. Longer conversations (over ~2 KB on average) end a group at 4 MB,
    so the record batches hold fewer rows than save_to_disk's 1000 and the file differs in
    those boundaries and paddings; the rows, their order, the schema and what
    `load_from_disk` reads are the same. A shard file ends once it holds 500 MB
    (save_to_disk, holding the whole dataset, splits it into equal shards instead)."""

    def __init__(self, num_samples: int | None, out: Path, shard_bytes: int = SHARD_BYTES):
        self.num_samples, self.out, self.shard_bytes_max = num_samples, Path(out), shard_bytes
        self.out.mkdir(parents=True, exist_ok=True)
        self.piece: list[dict] = []
        self.piece_bytes = 0
        self.group: list[pa.Table] = []
        self.group_rows = self.group_bytes = 0
        self.n = 0
        self.messages = 0
        self.hash = hashlib.sha256()
        self.shards: list[Path] = []
        self.writer: ArrowWriter | None = None
        self.shard_bytes = 0

    @property
    def full(self) -> bool:
        return self.num_samples is not None and self.n >= self.num_samples

    def add(self, record: dict) -> None:
        # The dataset's fingerprint (saved in data/raw): the same records give the same bytes.
        parts = [f"{record['prompt_id']}\0{record['prompt']}\0".encode()]
        parts += [f"{m['role']}\0{m['content']}\0".encode() for m in record["messages"]]
        for part in parts:
            self.hash.update(part)
        self.hash.update(b"\1")
        self.piece.append(record)
        self.piece_bytes += sum(map(len, parts))
        self.n += 1
        self.messages += len(record["messages"])
        if len(self.piece) >= PIECE_ROWS or self.piece_bytes >= PIECE_BYTES:
            self.to_arrow()
        if (
            self.group_rows + len(self.piece) >= GROUP_ROWS
            or self.group_bytes + self.piece_bytes >= GROUP_BYTES
        ):
            self.flush()

    def to_arrow(self) -> None:
        if self.piece:
            table = pa.Table.from_pylist(self.piece, schema=FEATURES.arrow_schema)
            self.group.append(table)
            self.group_rows += table.num_rows
            self.group_bytes += table.nbytes
            self.piece, self.piece_bytes = [], 0

    def flush(self) -> None:
        """The group as one table (one chunk, as `pa.Table.from_pylist` of its records
        makes), appended to the current shard."""
        self.to_arrow()
        if not self.group:
            return
        table = pa.concat_tables(self.group).combine_chunks()
        self.group, self.group_rows, self.group_bytes = [], 0, 0
        if self.writer is not None and self.shard_bytes + table.nbytes > self.shard_bytes_max:
            self.close_shard()
        if self.writer is None:
            self.writer = self.open_shard()
        self.writer.write_table(table)  # record batches of writer_batch_size = 1000 rows
        self.shard_bytes += table.nbytes

    def open_shard(self) -> ArrowWriter:
        self.shards.append(self.out / f"shard-{len(self.shards)}.arrow")
        # As save_to_disk builds it: the features in the schema metadata, no fingerprint.
        return ArrowWriter(features=FEATURES, path=str(self.shards[-1]), embed_local_files=True)

    def close_shard(self) -> None:
        if self.writer is not None:
            self.writer.finalize()
            self.writer.close()
            self.writer, self.shard_bytes = None, 0

    def finish(self) -> None:
        """The last batch, the shard files' final names and save_to_disk's two JSON files."""
        self.flush()
        if not self.shards:  # no records: one empty shard (save_to_disk writes none), readable
            self.writer = self.open_shard()
        self.close_shard()
        names = [f"data-{i:05d}-of-{len(self.shards):05d}.arrow" for i in range(len(self.shards))]
        for shard, name in zip(self.shards, names, strict=True):
            shard.rename(self.out / name)
        state: dict[str, object] = {
            "_data_files": [{"filename": name} for name in names],
            "_fingerprint": self.hash.hexdigest()[:16],
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        with open(self.out / datasets.config.DATASET_STATE_JSON_FILENAME, "w") as f:
            json.dump(state, f, indent=2, sort_keys=True)
        info = asdict(datasets.DatasetInfo(features=FEATURES))
        with open(self.out / datasets.config.DATASET_INFO_FILENAME, "w") as f:
            json.dump({k: info[k] for k in sorted(info)}, f, indent=2)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def output(out: Path | None) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """`out`, or a temporary directory kept (and removed) with the `Loaded`."""
    if out is not None:
        return Path(out), None
    tmp = tempfile.TemporaryDirectory(prefix="cvfp-collect-")
    return Path(tmp.name) / "dataset", tmp


def collect(
    sources: Iterable[tuple[str, Iterable[tuple[str, object]]]],
    fmt: str,
    num_samples: int | None,
    out: Path | None = None,
) -> Loaded:
    """Normalise records of (name, (row, record) iterator) sources, stopping after
    `num_samples` conversations, into the dataset directory `out` (a temporary one if None).
    One layout for all (detected from the first record of each source unless `fmt` forces
    it; sources of different layouts are refused)."""
    if fmt not in FORMATS:
        raise DataError(f"data.format={fmt!r}: not one of {list(FORMATS)}")
    path, tmp = output(out)
    coll = Collector(num_samples, path)
    norm: Normalizer | None = None
    layouts: dict[str, str] = {}
    try:
        for name, records in sources:
            if coll.full:
                break
            for row, rec in records:
                where = f"{name}: {row}"
                if name not in layouts:
                    layouts[name] = fmt if fmt != "auto" else detect_layout(rec, where)
                    if norm is None:
                        norm = Normalizer(layouts[name])
                    elif layouts[name] != norm.layout:
                        raise DataError(
                            f"{name}: layout {layouts[name]}, but {next(iter(layouts))} is "
                            f"{norm.layout}; keep one layout per data.path (or set data.format)"
                        )
                assert norm is not None
                schema_rec = norm(rec, where)
                if schema_rec is not None:
                    coll.add(schema_rec)
                    if coll.full:
                        break
        coll.finish()
    finally:
        coll.abort()
    layout = norm.layout if norm else (fmt if fmt != "auto" else None)
    stats = {
        "layout": layout,
        "mapping": MAPPINGS.get(layout or "", {}),
        "conversations": coll.n,
        "messages": coll.messages,
        "dropped": {"empty": norm.empty if norm else 0},
        "roles": dict(sorted(norm.roles.items())) if norm else {},
    }
    if norm and norm.skipped_parts:
        stats["skipped_content_parts"] = norm.skipped_parts
    return Loaded(path, stats, tmp)


def collect_schema_records(
    records: Iterable[dict], layout: str, num_samples: int | None, out: Path | None = None
) -> Loaded:
    """Records already in the schema (chatterbot, plain text): empties dropped and counted."""
    path, tmp = output(out)
    coll = Collector(num_samples, path)
    empty = 0
    roles: dict[str, int] = {}
    try:
        for rec in records:
            if coll.full:
                break
            if not any(m["content"].strip() for m in rec["messages"]):
                empty += 1
                continue
            for m in rec["messages"]:
                roles[m["role"]] = roles.get(m["role"], 0) + 1
            coll.add(rec)
        coll.finish()
    finally:
        coll.abort()
    stats = {
        "layout": layout,
        "mapping": MAPPINGS[layout],
        "conversations": coll.n,
        "messages": coll.messages,
        "dropped": {"empty": empty},
        "roles": dict(sorted(roles.items())),
    }
    return Loaded(path, stats, tmp)
