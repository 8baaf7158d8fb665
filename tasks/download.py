"""Stage download: conversations (UltraChat schema) from `data.source` -> data/raw.

chatterbot: the embedded offline corpus; ultrachat: `data.path` on the Hugging Face hub
(fails within `data.timeout_s` when offline); local: `data.path` as a hub-layout directory,
JSONL/Parquet file or plain text. Writes an Arrow dataset plus data/raw/stats.json.
"""

from __future__ import annotations

import json

from cvfp.params import Params
from cvfp.utils import atomic_path, require_hub
from tasks.common import cli, log
from tasks.layout import RAW, STATS  # STATS: read by tokenize, which passes it on to split


def fetch(params: Params):
    import datasets

    from cvfp import data

    d = params.data
    if d.source == "chatterbot":
        ds = data.take(datasets.Dataset.from_list(data.chatterbot_records()), d.num_samples)
        origin = data.chatterbot_origin()
    elif d.source == "ultrachat":
        try:
            require_hub("data.path", d.path, timeout=d.timeout_s)
        except RuntimeError as err:
            raise RuntimeError(f"data.source=ultrachat: {err}") from None
        ds = data.load_dataset(
            d.path, split=d.split, num_samples=d.num_samples, streaming=d.streaming
        )
        origin = f"{d.path} [{d.split}]"
    else:
        ds = data.load_local(d.path, split=d.split, num_samples=d.num_samples)
        origin = d.path
    return data.validate(ds, origin), origin


def run(params: Params) -> dict:
    from cvfp.data import count_messages

    ds, origin = fetch(params)
    if len(ds) == 0:
        raise ValueError(f"data.source={params.data.source}: {origin} has no conversations")
    n_messages = count_messages(ds)
    stats = {
        "source": params.data.source,
        "origin": origin,
        "conversations": len(ds),
        "messages": n_messages,
    }
    with atomic_path(RAW) as tmp:
        ds.save_to_disk(str(tmp))
        (tmp / STATS).write_text(json.dumps(stats, indent=2) + "\n")
    log.info(
        "download: %d conversations (%d messages) from %s -> %s", len(ds), n_messages, origin, RAW
    )
    return {**stats, "out": str(RAW)}


def main() -> None:
    cli("download", run, __doc__)


if __name__ == "__main__":
    main()
