"""What every stage shares: the CLI, logging, timing, the params guard, reading token data.
The file layout is tasks/layout.py."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC
from pathlib import Path

import numpy as np

from cvfp.params import Params, load_params

from .env import set_env_defaults
from .layout import PHASE1_WORK, STAGE_IO, TIMING, TOKENIZED, TOKENIZER

set_env_defaults()

log = logging.getLogger("cvfp")


def setup_logging() -> None:
    """The library's INFO lines (per-iteration / per-epoch metrics) on: the level is set on the
    `cvfp` logger itself, since a process that imported Prefect already has a root handler at
    WARNING (which used to leave `cvfp` at WARNING under the flow). A console handler is added
    only when nobody configured one."""
    rank = os.environ.get("RANK")  # set by torchrun: other ranks log warnings only
    level = logging.INFO if rank in (None, "0") else logging.WARNING
    log.setLevel(level)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=level,
            format=f"%(asctime)s %(name)s{'' if rank is None else '[' + rank + ']'} "
            f"%(levelname)s %(message)s",
        )


def current_world():
    """The torch.distributed world when started by torchrun (joined on first use), else one
    process. Stages that train (phase1, phase2) split their work over it."""
    from cvfp.distributed import init_world

    return init_world()


def cli(stage: str, run: Callable[[Params], object], doc: str | None = None) -> None:
    """Standard `python -m tasks.<stage>` entry point: --params, then run(params)."""
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage}", description=doc)
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: params.yaml)"
    )
    parser.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one param for this run, e.g. -S phase1.lr=0.001 (YAML value)",
    )
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
    if "cvfp.distributed" in sys.modules:  # a stage that joined a world (else: no torch)
        from cvfp.distributed import close_world

        close_world(current_world())  # on error the process exits and torchrun stops the rest


# Wall-clock durations of the stage running in each thread's flow task, keyed by stage (see
# split_durations); run_stage moves them into metrics/timing/<stage>.json.
_DURATIONS: dict[str, dict] = {}


def run_stage(stage: str, run: Callable[[Params], object], params: Params):
    """Run one stage and record its wall time (and the durations the stage set aside with
    record_durations) in metrics/timing/<stage>.json for the report. That file is not a DVC
    output and not tracked by git, so outputs stay bitwise identical across reruns.
    Used by the CLI and by the Prefect flow alike."""
    import time
    from datetime import datetime

    from cvfp.utils import BEFORE_REPLACE, write_json

    _DURATIONS.pop(stage, None)
    if os.environ.get("RANK", "0") == "0":
        clean_leftovers(stage)
    guard = params_guard(stage, params)
    token = BEFORE_REPLACE.set(guard)  # every output replacement checks params first
    t0 = time.perf_counter()
    try:
        result = run(params)
    finally:
        BEFORE_REPLACE.reset(token)
    if guard is not None:
        guard()  # once more right before dvc.lock / the flow commits
    seconds = time.perf_counter() - t0
    details = _DURATIONS.pop(stage, {})
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 writes every output
        return result
    write_json(
        TIMING / f"{stage}.json",
        {
            "stage": stage,
            "seconds": round(seconds, 3),
            "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "durations": details,
        },
    )
    log.info("stage %s finished in %.1f s", stage, seconds)
    return result


# Scratch space of a stage that a killed run may leave behind (besides atomic_path temps).
SCRATCH = {"phase1": [PHASE1_WORK / "*"], "tokenize": [TOKENIZED.parent / ".tokenize-*"]}


def _dvc_stage(stage: str) -> dict:
    import yaml

    try:
        return yaml.safe_load(Path("dvc.yaml").read_text())["stages"][stage] or {}
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return {}


def clean_leftovers(stage: str) -> None:
    """Remove what a killed earlier run of this stage left: temporary siblings of its outputs
    (whose writer is gone) and its scratch files (a run of one stage at a time: DVC's lock)."""
    import glob
    import shutil

    from cvfp.utils import clean_stale_temps

    removed = [t for out in STAGE_IO[stage].outs for t in clean_stale_temps(out)]
    for pattern in SCRATCH.get(stage, []):
        for p in map(Path, glob.glob(str(pattern), include_hidden=True)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    for p in removed:
        log.warning("stage %s: removed %s, left by an interrupted run", stage, p)


class ParamsChangedError(RuntimeError):
    """The params file changed while a stage ran; its outputs were not replaced."""


def stage_param_keys(stage: str) -> list[str] | None:
    """The params keys a stage depends on, from dvc.yaml (one source for that fact);
    None (= every key) when dvc.yaml or the stage's list is not there."""
    spec = _dvc_stage(stage)
    if not spec:
        return None
    keys = []
    for item in spec.get("params") or []:
        if isinstance(item, str):
            keys.append(item)
        elif isinstance(item, dict):  # {params.yaml: [keys]}
            for name, sub in item.items():
                if Path(name).name == "params.yaml":
                    keys += list(sub or [])
    # a stage with `params.yaml` as a plain dependency (report) reads all of it
    deps = [str(d) for d in spec.get("deps") or []]
    return None if "params.yaml" in deps or not keys else keys


def _dotted(d, key: str):
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _leaf_changes(key: str, a, b):
    """(dotted key, old, new) for every leaf that differs between a and b."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            yield from _leaf_changes(f"{key}.{k}", a.get(k), b.get(k))
    elif a != b:
        yield key, a, b


def params_guard(stage: str, params: Params) -> Callable[..., None] | None:
    """A check that the params file still says, for the keys the stage depends on, what
    the stage runs with (the checkpoint and dvc.lock must agree with what trained). Raises
    ParamsChangedError naming each changed key; None if params came from no file."""
    from cvfp.params import ParamsError

    source = getattr(params, "_source", None)
    if source is None:
        return None
    path, overrides = source
    used = params.model_dump(mode="json")
    keys = stage_param_keys(stage) or [k for k in used if k != "orchestration"]

    def check(final: Path | None = None) -> None:
        what = f"{final} was not replaced" if final is not None else "its outputs stay uncommitted"
        try:
            now = load_params(path, overrides).model_dump(mode="json")
        except (ParamsError, OSError) as err:
            raise ParamsChangedError(
                f"{path} changed while stage {stage} ran and no longer loads "
                f"({err}); {what}. Fix it and run the stage again"
            ) from None
        changed = [
            f"{k}: {a!r} -> {b!r}"
            for key in keys
            for k, a, b in _leaf_changes(key, _dotted(used, key), _dotted(now, key))
        ]
        if changed:
            raise ParamsChangedError(
                f"{path} changed while stage {stage} ran ({'; '.join(changed)}); the stage ran with "
                f"the old values, so {what} and dvc.lock is not updated. Run the stage again"
            )

    return check


def _is_duration(key) -> bool:
    return isinstance(key, str) and "seconds" in key


def split_durations(obj):
    """(obj without wall-clock durations, the durations in obj's shape). A duration is any
    dict key containing "seconds"; lists of dicts keep their rows aligned."""
    if isinstance(obj, dict):
        clean, removed = {}, {}
        for k, v in obj.items():
            if _is_duration(k):
                removed[k] = v
                continue
            clean[k], sub = split_durations(v)
            if sub:
                removed[k] = sub
        return clean, removed
    if isinstance(obj, list) and any(isinstance(x, (dict, list)) for x in obj):
        pairs = [split_durations(x) for x in obj]
        removed = [r for _, r in pairs]
        return [c for c, _ in pairs], (removed if any(removed) else [])
    return obj, {}


def merge_durations(obj, durations):
    """Inverse of split_durations: put recorded durations back into obj (for the report)."""
    if isinstance(obj, dict) and isinstance(durations, dict):
        for k, v in durations.items():
            obj[k] = merge_durations(obj[k], v) if k in obj else v
    elif isinstance(obj, list) and isinstance(durations, list):
        for x, d in zip(obj, durations, strict=False):
            merge_durations(x, d)
    return obj


def record_durations(stage: str, **parts) -> None:
    """Set aside durations removed from the stage's outputs (split_durations), by output name."""
    _DURATIONS.setdefault(stage, {}).update({k: v for k, v in parts.items() if v})


def load_conversations(path: str | Path) -> list[np.ndarray]:
    """Token ids per conversation (int64 arrays) from an Arrow dataset with `input_ids`.
    A dataset saved by `save_to_disk` (its Arrow files listed in state.json, no indices
    mapping) is read with pyarrow alone: importing `datasets` and converting row by row cost
    each training stage ~3 s (measured, default data); other layouts go through datasets."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"token data not found: {path} (run the earlier stages first)")
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


def read_vocab_size(tokenizer_dir: str | Path = TOKENIZER) -> int:
    """Embedding rows needed for this tokenizer (len(tokenizer), includes added specials).
    A saved fast tokenizer is read with `tokenizers` alone: len() of transformers' fast
    tokenizer is its backend's size with added tokens, and importing transformers cost every
    training stage ~2.7 s of CPU (measured); tokens only tokenizer_config.json adds are
    counted too. Without tokenizer.json (a slow tokenizer), transformers loads it."""
    if not Path(
        tokenizer_dir
    ).is_dir():  # else transformers takes it for a hub name and goes online
        raise FileNotFoundError(
            f"{tokenizer_dir}: tokenizer not found (run the earlier stages first: "
            f"`dvc repro` or `dvc pull`)"
        )
    fast, config = (
        Path(tokenizer_dir) / "tokenizer.json",
        Path(tokenizer_dir) / "tokenizer_config.json",
    )
    if fast.exists():
        import json

        from tokenizers import Tokenizer

        n = Tokenizer.from_file(str(fast)).get_vocab_size(with_added_tokens=True)
        extra = (
            json.loads(config.read_text()).get("added_tokens_decoder", {})
            if config.exists()
            else {}
        )
        return max([n, *(int(i) + 1 for i in extra)])
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
