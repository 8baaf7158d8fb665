"""What every stage shares: the file layout, the CLI, logging, reading token data."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from cvfp.params import Params, load_params

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One place for the on-disk layout; dvc.yaml mirrors these paths.
RAW = Path("data/raw")                    # download: Arrow dataset (UltraChat schema)
TOKENIZER = Path("data/tokenizer")        # tokenize: AutoTokenizer.from_pretrained(TOKENIZER)
TOKENIZED = Path("data/tokenized")        # tokenize: conversation_id, input_ids, n_tokens
SPLIT = Path("data/split")                # split: train/ and val/ Arrow datasets + gx/
PHASE1_DIR = Path("cache/phase1")         # phase1: model.pt
PHASE1_WORK = Path("cache/phase1-work")   # phase1: scratch context files while it runs (not an output)
CSTAR_DIR = Path("cache/cstar")           # materialize: C* memmaps + offsets
PHASE2_DIR = Path("cache/phase2")         # phase2: model.pt, baselines
METRICS = Path("metrics")
PLOTS = Path("plots")
REPORTS = Path("reports")

log = logging.getLogger("cvfp")


def setup_logging() -> None:
    """The library's INFO lines (per-iteration / per-epoch metrics) on: the level is set on the
    `cvfp` logger itself, since a process that imported Prefect already has a root handler at
    WARNING (which used to leave `cvfp` at WARNING under the flow). A console handler is added
    only when nobody configured one."""
    rank = os.environ.get("RANK")                # set by torchrun: other ranks log warnings only
    level = logging.INFO if rank in (None, "0") else logging.WARNING
    log.setLevel(level)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level,
                            format=f"%(asctime)s %(name)s{'' if rank is None else '[' + rank + ']'} "
                                   f"%(levelname)s %(message)s")


def current_world():
    """The torch.distributed world when started by torchrun (joined on first use), else one
    process. Stages that train (phase1, phase2) split their work over it."""
    from cvfp.distributed import init_world
    return init_world()


def cli(stage: str, run: Callable[[Params], object], doc: str | None = None) -> None:
    """Standard `python -m tasks.<stage>` entry point: --params, then run(params)."""
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage}", description=doc)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one param for this run, e.g. -S phase1.lr=0.001 (YAML value)")
    args = parser.parse_args()
    setup_logging()
    import yaml
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    params = load_params(args.params, overrides)
    run_stage(stage, run, params)
    from cvfp.distributed import close_world
    close_world(current_world())            # on error the process exits and torchrun stops the rest


def run_stage(stage: str, run: Callable[[Params], object], params: Params):
    """Run one stage and record its wall time in metrics/timing/<stage>.json (the report's
    per-stage durations). Used by the CLI and by the Prefect flow alike."""
    import time
    from datetime import datetime, timezone
    from cvfp.utils import write_json
    t0 = time.perf_counter()
    result = run(params)
    seconds = time.perf_counter() - t0
    if not current_world().is_main:         # torchrun: rank 0 writes every output
        return result
    write_json(METRICS / "timing" / f"{stage}.json",
               {"stage": stage, "seconds": round(seconds, 3),
                "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    log.info("stage %s finished in %.1f s", stage, seconds)
    return result


def load_conversations(path: str | Path) -> list[np.ndarray]:
    """Token ids per conversation (int64 arrays) from an Arrow dataset with `input_ids`."""
    from datasets import load_from_disk
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"token data not found: {path} (run the earlier stages first)")
    ds = load_from_disk(str(path)).with_format("numpy")
    if "input_ids" not in ds.column_names:
        raise ValueError(f"{path}: no input_ids column (columns: {ds.column_names})")
    return [np.asarray(x, dtype=np.int64) for x in ds["input_ids"]]


def read_vocab_size(tokenizer_dir: str | Path = TOKENIZER) -> int:
    """Embedding rows needed for this tokenizer (len(tokenizer), includes added specials)."""
    from transformers import AutoTokenizer
    return len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
