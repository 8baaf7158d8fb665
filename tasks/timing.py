"""Wall-clock times, kept out of the DVC outputs (they differ every run) in
metrics/timing/<stage>.json: not a DVC output and not in git.

A stage that measures durations of its own (training time, seconds per iteration) keeps them
apart from its outputs and records them with `record_durations`; `tasks.stage.run_stage`
writes the stage's wall time with them into metrics/timing/<stage>.json when it finishes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from cvfp.runtime.utils import write_json

from .layout import TIMING


def _timing_file(stage: str) -> Path:
    return TIMING / f"{stage}.json"


def _recorded(stage: str) -> dict:
    """Durations recorded since the stage's last finished run: the timing file before
    run_stage adds the wall time (a file with `seconds` is a finished run's)."""
    try:
        data = json.loads(_timing_file(stage).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or "seconds" in data:
        return {}
    return data.get("durations") or {}


def clear_durations(stage: str) -> None:
    """Forget durations that an unfinished run of the stage recorded."""
    if _recorded(stage):
        _timing_file(stage).unlink(missing_ok=True)


def record_durations(stage: str, **parts) -> None:
    """Record durations the stage measured, by output name (e.g. metrics=..., history=...),
    in metrics/timing/<stage>.json (run_stage adds the stage's wall time when it finishes)."""
    durations = {**_recorded(stage), **{k: v for k, v in parts.items() if v}}
    write_json(_timing_file(stage), {"stage": stage, "durations": durations})


def write_timing(stage: str, seconds: float) -> None:
    """metrics/timing/<stage>.json: the stage's wall time and the durations it recorded."""
    write_json(
        _timing_file(stage),
        {
            "stage": stage,
            "seconds": round(seconds, 3),
            "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "durations": _recorded(stage),
        },
    )
