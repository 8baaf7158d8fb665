"""Reading the token data and the tokenizer a stage needs, and the error a truncated or
corrupt input gives (naming the file, the stage that makes it and the fix)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .layout import STAGE_IO, TOKENIZER


class BrokenInputError(ValueError):
    """An input file that is truncated or corrupt; names the file and how to get it back."""


def producer(path: str | Path) -> str | None:
    """The stage whose output holds `path`."""
    p = Path(path)
    for stage, io in STAGE_IO.items():
        if any(p == o or o in p.parents for o in io.outs):
            return stage
    return None


def broken(path: str | Path, err: BaseException, what: str = "") -> BrokenInputError:
    stage = producer(path)
    fix = (
        f"restore it (`dvc checkout --force {stage}`) or rerun that stage "
        f"(`dvc repro -f -s {stage}`)"
        if stage
        else "restore or recreate it"
    )
    detail = f"{type(err).__name__}: {str(err)[:300]}"
    return BrokenInputError(f"{path}{what}: truncated or corrupt ({detail}); {fix}")


def load_conversations(path: str | Path) -> list[np.ndarray]:
    """Token ids per conversation (int64 arrays) from an Arrow dataset with `input_ids`.
    A dataset saved by `save_to_disk` (its Arrow files listed in state.json, no indices
    mapping) is read with pyarrow alone: importing `datasets` and converting row by row cost
    each training stage ~3 s (measured, default data); other layouts go through datasets.
    A truncated or corrupt dataset (Arrow files, state.json) names the folder and the fix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"token data not found: {path} (run the earlier stages first)")
    try:
        table = _saved_arrow_table(path)
        if table is None:
            from datasets import load_from_disk

            ds = load_from_disk(str(path)).with_format("numpy")
            if "input_ids" not in ds.column_names:
                raise ValueError(f"{path}: no input_ids column (columns: {ds.column_names})")
            return [np.asarray(x, dtype=np.int64) for x in ds["input_ids"]]
        if "input_ids" not in table.column_names:
            raise ValueError(f"{path}: no input_ids column (columns: {table.column_names})")
        ids = table.column("input_ids").combine_chunks()
        offsets = ids.offsets.to_numpy()
        values = ids.values.to_numpy(zero_copy_only=False).astype(np.int64)
        return np.split(values[offsets[0] : offsets[-1]], offsets[1:-1] - offsets[0])
    except ValueError as err:
        if "no input_ids column" in str(err):
            raise
        raise broken(path, err) from None
    except Exception as err:  # OSError / ArrowInvalid (short Arrow file), JSONDecodeError...
        raise broken(path, err) from None


def load_conversation_ids(path: str | Path) -> list:
    """The conversation_id column, one value per row of `load_conversations(path)` (the
    pieces of a held-out conversation cut at an unseen id repeat it); read the same way."""
    path = Path(path)
    table = _saved_arrow_table(path)
    if table is None:
        from datasets import load_from_disk

        return list(load_from_disk(str(path))["conversation_id"])
    return table.column("conversation_id").to_pylist()


def _saved_arrow_table(path: Path):
    """The pyarrow Table of a `save_to_disk` directory, or None for any other layout."""
    import json

    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError):
        return None
    files = [path / f.get("filename", "") for f in state.get("_data_files") or []]
    if not files or state.get("_indices_data_files") or not all(f.is_file() for f in files):
        return None
    import pyarrow as pa

    tables = []
    for f in files:
        with pa.memory_map(str(f)) as src:
            tables.append(pa.ipc.open_stream(src).read_all())
    return pa.concat_tables(tables)


def _require_tokenizer_dir(tokenizer_dir: str | Path) -> None:
    if not Path(tokenizer_dir).is_dir():  # else transformers takes it for a hub name
        raise FileNotFoundError(
            f"{tokenizer_dir}: tokenizer not found (run the earlier stages first: "
            f"`dvc repro` or `dvc pull`)"
        )


def load_tokenizer(tokenizer_dir: str | Path = TOKENIZER):
    """AutoTokenizer from a local folder; a missing one says to run the earlier stages, a
    broken one (tokenizer.json, config) names the folder and the fix."""
    from transformers import AutoTokenizer

    _require_tokenizer_dir(tokenizer_dir)
    try:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception as err:
        raise broken(tokenizer_dir, err, " (tokenizer.json / tokenizer_config.json)") from None


def read_vocab_size(tokenizer_dir: str | Path = TOKENIZER) -> int:
    """Embedding rows needed for this tokenizer (len(tokenizer), includes added specials).
    A saved fast tokenizer is read with `tokenizers` alone: len() of transformers' fast
    tokenizer is its backend's size with added tokens, and importing transformers cost every
    training stage ~2.7 s of CPU (measured); tokens only tokenizer_config.json adds are
    counted too. Without tokenizer.json (a slow tokenizer), transformers loads it. A broken
    tokenizer names the folder and the fix."""
    _require_tokenizer_dir(tokenizer_dir)
    fast, config = (
        Path(tokenizer_dir) / "tokenizer.json",
        Path(tokenizer_dir) / "tokenizer_config.json",
    )
    if not fast.exists():
        return len(load_tokenizer(tokenizer_dir))
    try:
        from tokenizers import Tokenizer

        n = Tokenizer.from_file(str(fast)).get_vocab_size(with_added_tokens=True)
        extra = (
            json.loads(config.read_text()).get("added_tokens_decoder", {})
            if config.exists()
            else {}
        )
    except Exception as err:
        raise broken(tokenizer_dir, err, " (tokenizer.json / tokenizer_config.json)") from None
    return max([n, *(int(i) + 1 for i in extra)])
