"""Conversations in the UltraChat schema, from any of the three `data.source`s.

Schema (HuggingFaceH4/ultrachat_200k): `prompt` (str), `prompt_id` (str) and `messages`
(list of `{role, content}`, user first, then alternating user/assistant).

* chatterbot: the English YAML files of the `chatterbot-corpus` package (offline default).
  Each entry of a file's `conversations:` list becomes one conversation, its lines the
  alternating user/assistant turns (2026 conversations in chatterbot-corpus 1.3.3).
* hub name or local directory laid out like the hub repo (`data/<split>-00000-of-0000N.parquet`):
  both go through `load_dataset`, so the UltraChat path is testable offline.
* local file: JSONL/JSON or Parquet in the same schema, or plain text (one conversation per
  blank-line-separated block, one turn per line, alternating user/assistant).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import yaml

REQUIRED = ("prompt", "prompt_id", "messages")
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
    """All English chatterbot dialogues, files in sorted order, entries in file order."""
    data_dir = Path(data_dir) if data_dir else chatterbot_dir()
    files = sorted(data_dir.glob("*.yml"))
    if not files:
        raise DataError(f"{data_dir}: no chatterbot *.yml files (is chatterbot-corpus installed?)")
    records = []
    for f in files:
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
            records.append(make_record(turns, f"{f.name}:{i}"))
    return records


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


# Data file formats a local directory may hold (the hub loader reads one format per directory).
DATA_SUFFIXES = {
    ".parquet": "parquet",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".arrow": "arrow",
    ".txt": "text",
    ".text": "text",
}


def check_text_file(path: Path) -> None:
    """Refuse, naming file:line, what the loaders would accept silently or fail on obscurely:
    an empty file, invalid UTF-8, a malformed JSON line (.jsonl, and .json in JSON lines)."""
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: empty file (no conversations)")
    whole_json = None
    if path.suffix.lower() == ".json":
        try:
            whole_json = json.loads(raw)  # one JSON document: fine as it is
        except (ValueError, UnicodeDecodeError):
            pass
    for n, line in enumerate(raw.splitlines(), 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"{path}:{n}: invalid UTF-8 (byte {line[err.start]:#04x} at column "
                f"{err.start + 1}); re-encode the file as UTF-8"
            ) from None
        if path.suffix.lower() in (".jsonl", ".json") and whole_json is None and text.strip():
            try:
                json.loads(text)
            except ValueError as err:
                raise DataError(f"{path}:{n}: not valid JSON ({err}): {text[:80]!r}") from None


def check_directory(path: Path, split: str) -> None:
    """A local directory must hold one data format, each file readable (check_text_file)."""
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
        raise DataError(f"{path}: no data files ({', '.join(sorted(DATA_SUFFIXES))})")
    for f in files:
        if f.suffix.lower() in (".jsonl", ".json", ".txt", ".text", ".csv"):
            check_text_file(f)


def load_local(path: str | Path, split: str, num_samples: int | None = None) -> datasets.Dataset:
    """`data.source: local`: hub-layout directory, JSONL/JSON, Parquet or plain text."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"data.path={str(path)!r}: no such file or directory")
    if path.is_dir():
        check_directory(path, split)
        return load_dataset(str(path), split=split, num_samples=num_samples)
    if path.suffix.lower() in (".jsonl", ".json", ".txt", ".text"):
        check_text_file(path)
    suffix = path.suffix.lower()
    if suffix in (".txt", ".text"):
        return take(datasets.Dataset.from_list(text_records(path)), num_samples)
    builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(suffix)
    if builder is None:
        raise DataError(
            f"{path}: unknown file type {suffix!r} (use .jsonl, .json, .parquet, .txt "
            f"or a directory in the hub layout)"
        )
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # corrupt file: the builders raise many different types
        raise DataError(
            f"{path}: cannot read {builder} file: {type(err).__name__}: {err}"
        ) from None
    return take(ds, num_samples)


def count_messages(ds: datasets.Dataset) -> int:
    return int(pc.sum(pc.list_value_length(ds.with_format("arrow")["messages"])).as_py() or 0)


def chatterbot_origin() -> str:
    from importlib.metadata import version

    return f"chatterbot-corpus {version('chatterbot-corpus')} (english)"


def take(ds: datasets.Dataset, num_samples: int | None) -> datasets.Dataset:
    return ds.select(range(min(num_samples, len(ds)))) if num_samples else ds


def validate(ds: datasets.Dataset, source: str) -> datasets.Dataset:
    """Check the UltraChat schema and cast to `FEATURES`; errors name `source` and the field."""
    missing = [c for c in REQUIRED if c not in ds.column_names]
    if missing:
        raise DataError(
            f"{source}: missing field(s) {missing}; found {ds.column_names}, need {list(REQUIRED)}"
        )
    msg = ds.features["messages"]
    inner = getattr(msg, "feature", msg[0] if isinstance(msg, list) else None)
    if not isinstance(inner, dict) or not {"role", "content"} <= set(inner):
        raise DataError(
            f"{source}: field 'messages' must be a list of {{role, content}}, got {msg}"
        )
    ds = ds.select_columns(list(REQUIRED))
    try:
        ds = ds.cast(FEATURES)
    except (ValueError, TypeError) as err:
        raise DataError(f"{source}: fields do not match the UltraChat schema: {err}") from None
    # Arrow compute: a Python loop over 200k UltraChat conversations would take minutes.
    table = ds.with_format("arrow")[:]
    try:
        table.validate(full=True)  # e.g. invalid UTF-8 in a string column (hub, parquet)
    except pa.ArrowInvalid as err:
        raise DataError(
            f"{source}: invalid data ({err}); fix or re-encode the source as UTF-8"
        ) from None
    roles = pc.struct_field(pc.list_flatten(table["messages"]), "role")
    bad = sorted(set(pc.unique(roles).to_pylist()) - {"system", *ROLES}, key=str)
    if bad:
        raise DataError(
            f"{source}: field 'messages.role' has value(s) {bad}; allowed: system, user, assistant"
        )
    return ds
