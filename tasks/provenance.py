"""Provenance: each stage writes the params it ran with (its dvc.yaml keys, as dvc.lock
records them) into its main directory output, so dvc.lock can be checked against the outputs
it commits; and dataset fingerprints pinned to their bytes."""

from __future__ import annotations

import json
from pathlib import Path

from cvfp.params import Params

from .guard import dotted, leaf_changes, stage_param_keys
from .layout import (
    CSTAR_DIR,
    DVC_LOCK,
    PHASE1_DIR,
    PHASE2_DIR,
    RAW,
    SPLIT,
    STAGE_IO,
    TOKENIZED,
    read_yaml,
)

# Each stage writes the params it ran with (its dvc.yaml keys, as dvc.lock records them) into
# its main directory output. dvc.lock can then be checked against the outputs it commits:
# params.yaml edited while the stage ran (DVC reads it after the stage exits), or `dvc commit`
# after a one-off `-S` run, would record params the outputs were not made with.

RECORD_NAME = "params.json"
RECORDS = {
    "download": RAW,
    "tokenize": TOKENIZED,
    "split": SPLIT,
    "phase1": PHASE1_DIR,
    "materialize": CSTAR_DIR,
    "phase2": PHASE2_DIR,
}


class ProvenanceError(RuntimeError):
    """dvc.lock records params that a stage's committed outputs were not made with."""


def params_record(stage: str, params: Params) -> dict | None:
    """{dvc.yaml params key: value the stage runs with}; None for a stage with no key list."""
    keys = stage_param_keys(stage)
    if keys is None or stage not in RECORDS:
        return None
    used = params.record(mode="json")
    return {k: dotted(used, k) for k in keys}


def upstream_stages(stage: str) -> list[str]:
    """The stages whose outputs this stage reads."""
    deps = STAGE_IO[stage].deps if stage in STAGE_IO else ()
    return [
        s
        for s, io in STAGE_IO.items()
        if s != stage and any(d == o or o in d.parents for d in deps for o in io.outs)
    ]


def _dvc_cache_dir() -> Path:
    import configparser

    cache = Path(".dvc/cache")
    for name in (".dvc/config", ".dvc/config.local"):
        cfg = configparser.ConfigParser()
        try:
            cfg.read(name)
        except configparser.Error:
            continue
        if cfg.has_option("cache", "dir"):
            cache = Path(".dvc") / cfg.get("cache", "dir")
    return cache


def _cached(md5: str) -> Path:
    return _dvc_cache_dir() / "files" / "md5" / md5[:2] / md5[2:]


def committed_record(stage: str, lock: dict) -> dict | None:
    """The params record inside the outputs dvc.lock commits for `stage` (read from the DVC
    cache by the hashes dvc.lock records); None when not available (no record, not cached)."""
    target = RECORDS.get(stage)
    entry = (lock.get("stages") or {}).get(stage) or {}
    out = next((o for o in entry.get("outs") or [] if o.get("path") == str(target)), None)
    if out is None or not str(out.get("md5", "")).endswith(".dir"):
        return None
    try:
        manifest = json.loads(_cached(out["md5"]).read_text())
        md5 = next(f["md5"] for f in manifest if f.get("relpath") == RECORD_NAME)
        return json.loads(_cached(md5).read_text())
    except (OSError, ValueError, StopIteration, KeyError, TypeError):
        return None


def provenance_changes(stage: str, lock: dict | None = None) -> list[str]:
    """Keys whose value dvc.lock records for `stage` differs from the one its committed
    outputs were made with: ['phase1.lr: dvc.lock 0.002, outputs 0.01', ...]."""
    import yaml

    if lock is None:
        try:
            lock = read_yaml(DVC_LOCK) or {}
        except (OSError, yaml.YAMLError):
            return []
    record = committed_record(stage, lock)
    if record is None:
        return []
    recorded = (((lock.get("stages") or {}).get(stage) or {}).get("params") or {}).get(
        "params.yaml"
    ) or {}
    return [
        f"{k}: dvc.lock {b!r}, outputs {a!r}"
        for key in sorted(set(record) & set(recorded))
        for k, a, b in leaf_changes(key, record[key], recorded[key], both_only=True)
    ]


def check_provenance(stages) -> None:
    """Refuse (naming stage, keys and the fix) when dvc.lock records, for any of `stages`,
    params its committed outputs were not made with."""
    problems = {s: c for s in stages if (c := provenance_changes(s))}
    if problems:
        raise ProvenanceError(
            "dvc.lock records params that these outputs were not made with: "
            + "; ".join(
                f"stage {s} ({RECORDS[s]}/{RECORD_NAME}): {', '.join(c)}"
                for s, c in problems.items()
            )
            + ". params.yaml changed while the stage ran, or `dvc commit` recorded a one-off "
            "-S/--params run. Rerun it: `dvc repro -f -s <stage>` (or `python -m flows.pipeline`, "
            "which reruns it), or set params.yaml to the outputs' values and `dvc commit <stage>`"
        )


def pin_fingerprint(path: str | Path) -> str:
    """Set a saved dataset's `_fingerprint` (state.json) to a hash of its Arrow files.
    `datasets` derives it from in-memory objects and the modification times of the files a
    dataset was loaded from, which differ between the flow and `dvc repro` (or two clones)
    though the rows are the same: the same data would give other output bytes and rerun
    every later stage. run_stage pins every dataset a stage writes."""
    import hashlib

    path = Path(path)
    h = hashlib.sha256()
    for f in sorted(path.glob("*.arrow")):
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    state_file = path / "state.json"
    state = json.loads(state_file.read_text())
    state["_fingerprint"] = h.hexdigest()[:16]
    state_file.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    return state["_fingerprint"]
