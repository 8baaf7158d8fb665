"""Records of (name, row iterator) sources -> one schema dataset (`Loaded`: the Arrow
dataset plus what the reading found, data/raw/stats.json), built in batches, stopping after
data.num_samples conversations; empty conversations are dropped and counted."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import datasets
import pyarrow as pa

from .chat_schema import FEATURES, DataError
from .record_layouts import FORMATS, MAPPINGS, Normalizer, detect_layout


@dataclass
class Loaded:
    """Schema conversations plus what the reading found (data/raw/stats.json)."""

    dataset: datasets.Dataset
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.dataset)


class Collector:
    """Schema records -> one Arrow dataset, built in batches (no list of all records)."""

    def __init__(self, num_samples: int | None, batch: int = 2000):
        self.num_samples, self.batch_size = num_samples, batch
        self.tables: list[pa.Table] = []
        self.batch: list[dict] = []
        self.n = 0
        self.messages = 0
        self.hash = hashlib.sha256()

    @property
    def full(self) -> bool:
        return self.num_samples is not None and self.n >= self.num_samples

    def add(self, record: dict) -> None:
        # The dataset's fingerprint (saved in data/raw): the same records give the same bytes.
        h = self.hash
        h.update(f"{record['prompt_id']}\0{record['prompt']}\0".encode())
        for m in record["messages"]:
            h.update(f"{m['role']}\0{m['content']}\0".encode())
        h.update(b"\1")
        self.batch.append(record)
        self.n += 1
        self.messages += len(record["messages"])
        if len(self.batch) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self.batch:
            self.tables.append(pa.Table.from_pylist(self.batch, schema=FEATURES.arrow_schema))
            self.batch = []

    def dataset(self) -> datasets.Dataset:
        from datasets.table import InMemoryTable

        self.flush()
        table = (
            pa.concat_tables(self.tables) if self.tables else FEATURES.arrow_schema.empty_table()
        )
        # A given fingerprint: datasets computing one would pickle (copy) the whole table.
        return datasets.Dataset(
            InMemoryTable(table),
            info=datasets.DatasetInfo(features=FEATURES),
            fingerprint=self.hash.hexdigest()[:16],
        )


def collect(
    sources: Iterable[tuple[str, Iterable[tuple[str, object]]]],
    fmt: str,
    num_samples: int | None,
) -> Loaded:
    """Normalise records of (name, (row, record) iterator) sources, stopping after
    `num_samples` conversations. One layout for all (detected from the first record of
    each source unless `fmt` forces it; sources of different layouts are refused)."""
    if fmt not in FORMATS:
        raise DataError(f"data.format={fmt!r}: not one of {list(FORMATS)}")
    out = Collector(num_samples)
    norm: Normalizer | None = None
    layouts: dict[str, str] = {}
    for name, records in sources:
        if out.full:
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
                out.add(schema_rec)
                if out.full:
                    break
    layout = norm.layout if norm else (fmt if fmt != "auto" else None)
    stats = {
        "layout": layout,
        "mapping": MAPPINGS.get(layout or "", {}),
        "conversations": out.n,
        "messages": out.messages,
        "dropped": {"empty": norm.empty if norm else 0},
        "roles": dict(sorted(norm.roles.items())) if norm else {},
    }
    if norm and norm.skipped_parts:
        stats["skipped_content_parts"] = norm.skipped_parts
    return Loaded(out.dataset(), stats)


def collect_schema_records(records: Iterable[dict], layout: str, num_samples: int | None) -> Loaded:
    """Records already in the schema (chatterbot, plain text): empties dropped and counted."""
    out = Collector(num_samples)
    empty = 0
    roles: dict[str, int] = {}
    for rec in records:
        if out.full:
            break
        if not any(m["content"].strip() for m in rec["messages"]):
            empty += 1
            continue
        for m in rec["messages"]:
            roles[m["role"]] = roles.get(m["role"], 0) + 1
        out.add(rec)
    stats = {
        "layout": layout,
        "mapping": MAPPINGS[layout],
        "conversations": out.n,
        "messages": out.messages,
        "dropped": {"empty": empty},
        "roles": dict(sorted(roles.items())),
    }
    return Loaded(out.dataset(), stats)
