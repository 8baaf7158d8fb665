"""The flow's view of DVC: is a stage up to date, and record a stage that just ran.

This keeps one cache for both front doors: a stage DVC calls up to date is skipped by the
flow, and a stage the flow ran is committed into dvc.lock and the DVC cache, so a
following `dvc repro` runs nothing (and vice versa).
"""

from __future__ import annotations

import os


def _repo():
    from dvc.repo import Repo

    return Repo(os.getcwd())


def stage_status(stage: str) -> tuple[bool, str]:
    """(up_to_date, reason). The reason lists what DVC says changed, e.g.
    'changed deps: data/split/train; changed params: phase1.lr'."""
    with _repo() as repo:
        status = repo.status(targets=[stage])
    if not status:
        return True, "up to date in dvc.lock (deps, params and outs unchanged)"
    return False, describe(status)


def describe(status: dict) -> str:
    parts = []
    for entries in status.values():
        for entry in entries:
            if isinstance(entry, str):  # e.g. "changed command", "always changed"
                parts.append(entry)
                continue
            for kind, changes in entry.items():
                if isinstance(changes, dict):
                    items = ", ".join(f"{k} ({v})" for k, v in changes.items())
                else:
                    items = str(changes)
                parts.append(f"{kind}: {items}")
    return "; ".join(parts) or "not in dvc.lock yet"


def commit_stage(stage: str) -> None:
    """Record the stage's current deps/params/outs in dvc.lock and its outs in the cache."""
    with _repo() as repo:
        repo.commit(stage, force=True)
