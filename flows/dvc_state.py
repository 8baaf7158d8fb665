"""The flow's view of DVC: is a stage up to date, and record a stage that just ran.

This keeps one cache for both front doors: a stage DVC calls up to date is skipped by the
flow, and a stage the flow ran is committed into dvc.lock and the DVC cache, so a
following `dvc repro` runs nothing (and vice versa).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import yaml

_HELD: list = []  # the Repo whose DVC lock this process holds for a whole flow run


@contextlib.contextmanager
def _repo():
    """The workspace's DVC repo: the one whose lock the flow holds (hold_dvc_lock), its
    cached state reset as DVC itself does on taking the lock; else a fresh one."""
    if _HELD:
        repo = _HELD[-1]
        repo._reset()
        try:
            yield repo
        finally:
            repo._reset()
        return
    from dvc.repo import Repo

    with Repo(os.getcwd()) as repo:
        yield repo


@contextlib.contextmanager
def hold_dvc_lock(what: str = "flows.pipeline"):
    """Hold DVC's own repo lock (.dvc/tmp/lock) for the whole block, so `dvc repro` (or any
    DVC command that writes) is refused by DVC before it deletes a stage's outputs. This
    process's own status/commit calls go through the same Repo (re-entrant)."""
    from dvc.lock import LockError
    from dvc.repo import Repo, lock_repo

    from tasks.workspace import WorkspaceBusyError

    with Repo(os.getcwd()) as repo:
        held = lock_repo(repo)
        try:
            held.__enter__()
        except LockError as err:
            raise WorkspaceBusyError(
                f"{what} refused: DVC's lock ({repo.tmp_dir}/lock) is held by another DVC "
                f"command (a `dvc repro`, `dvc exp run` or `dvc commit` in this workspace): "
                f"wait for it to finish ({err})"
            ) from None
        _HELD.append(repo)
        try:
            yield repo
        finally:
            _HELD.remove(repo)
            held.__exit__(None, None, None)


def stage_status(stage: str) -> tuple[bool, str]:
    """(up_to_date, reason). The reason says what changed, params by key with their old and
    new values, e.g. 'changed params: phase2.epochs 10 -> 2; changed deps: data/split/train
    (modified)'. A stage whose committed outputs were made with other params than dvc.lock
    records is not up to date."""
    from tasks.provenance import provenance_changes

    with _repo() as repo:
        status = repo.status(targets=[stage])
    if not status:
        lies = provenance_changes(stage)
        if lies:
            return False, (
                f"dvc.lock records params its outputs were not made with ({', '.join(lies)})"
            )
        return True, "up to date in dvc.lock (deps, params and outs unchanged)"
    recorded, everything = _recorded_params(stage)
    return False, describe(status, recorded, everything, _current_params())


def _current_params(path: str = "params.yaml") -> dict | None:
    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        return None


def _recorded_params(stage: str, lock: str = "dvc.lock") -> tuple[dict, dict]:
    """(the params.yaml values dvc.lock records for `stage`, those of all stages merged)."""
    try:
        with open(lock) as f:
            stages = (yaml.safe_load(f) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        return {}, {}
    every: dict = {}
    for entry in stages.values():
        every.update(flatten((entry.get("params") or {}).get("params.yaml") or {}))
    own = flatten(((stages.get(stage) or {}).get("params") or {}).get("params.yaml") or {})
    return own, every


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}, "c.d": 2} -> {"a.b": 1, "c.d": 2} (dvc.lock mixes both forms)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def _value(x: Any) -> str:
    return "(unset)" if x is _UNSET else json.dumps(x) if isinstance(x, str) else str(x)


_UNSET = object()


def param_changes(old: dict, new: dict) -> list[str]:
    """Dotted keys whose value differs, as 'key old -> new', sorted."""
    return [
        f"{k} {_value(old.get(k, _UNSET))} -> {_value(new.get(k, _UNSET))}"
        for k in sorted(set(old) | set(new))
        if old.get(k, _UNSET) != new.get(k, _UNSET)
    ]


def _under(flat: dict, key: str) -> dict:
    """The entries of `flat` at `key` or below it."""
    return {k: v for k, v in flat.items() if k == key or k.startswith(key + ".")}


def describe(
    status: dict,
    recorded: dict | None = None,
    everything: dict | None = None,
    current: dict | None = None,
) -> str:
    """DVC's status of a stage as one line. With the params dvc.lock recorded (`recorded` for
    the stage, `everything` for all stages) and the current params.yaml, a changed params
    section names its keys with old -> new values instead of DVC's "{'phase2': 'modified'}";
    a stage that depends on the whole file (the report) gets the keys any stage records."""
    now = flatten(current) if current is not None else None
    parts = []
    for entries in status.values():
        for entry in entries:
            if isinstance(entry, str):  # e.g. "changed command", "always changed"
                parts.append(entry)
                continue
            for kind, changes in entry.items():
                if not isinstance(changes, dict):
                    parts.append(f"{kind}: {changes}")
                    continue
                items = []
                for path, what in changes.items():
                    if path != "params.yaml" or now is None:
                        items.append(f"{path} ({what})")
                        continue
                    if isinstance(what, dict):  # the stage's own keys
                        diffs = [
                            d
                            for key in what
                            for d in param_changes(_under(recorded or {}, key), _under(now, key))
                        ]
                    else:  # the whole file: the keys some stage records, and the rest
                        old = everything or {}
                        diffs = param_changes(old, {k: v for k, v in now.items() if k in old})
                        if not diffs:
                            diffs = ["keys no stage lists (e.g. orchestration, compare)"]
                    parts.append("changed params: " + ", ".join(diffs or [str(what)]))
                if items:
                    parts.append(f"{kind}: {', '.join(items)}")
    return "; ".join(parts) or "not in dvc.lock yet"


def commit_stage(stage: str) -> None:
    """Record the stage's current deps/params/outs in dvc.lock and its outs in the cache.
    Then check what DVC recorded against the params the outputs were made with (params.yaml
    may change between the stage's last check and DVC reading it): if they differ, dvc.lock
    goes back to what it was and ParamsChangedError names the keys."""
    from pathlib import Path

    from tasks.guard import ParamsChangedError
    from tasks.provenance import provenance_changes

    lock = Path("dvc.lock")
    before = lock.read_bytes() if lock.exists() else None
    with _repo() as repo:
        repo.commit(stage, force=True)
    changed = provenance_changes(stage)
    if changed:
        if before is None:
            lock.unlink()
        else:
            lock.write_bytes(before)
        raise ParamsChangedError(
            f"params.yaml changed while stage {stage} ran ({', '.join(changed)}): its outputs "
            f"were made with the values shown as 'outputs', so dvc.lock was not updated. Run "
            f"the stage again"
        )


def main() -> int:
    """`python -m flows.dvc_state`: check that dvc.lock records, for every stage, the params
    its committed outputs were made with (e.g. after `dvc commit` of a one-off run)."""
    from tasks.provenance import RECORDS, ProvenanceError, check_provenance

    try:
        check_provenance(list(RECORDS))
    except ProvenanceError as err:
        print(f"ProvenanceError: {err}")
        return 1
    print("dvc.lock: every stage's recorded params match its committed outputs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
