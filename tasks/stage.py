"""Running one stage: the workspace lock, leftovers of killed runs, the provenance of its
inputs, the params guard at the end, and its wall time in metrics/timing/<stage>.json."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from cvfp.params import Params
from cvfp.runtime.utils import clean_stale_temps, pid_alive

from .guard import params_guard
from .layout import (
    COMPARE_HTML,
    COMPARE_JSON,
    COMPARE_MD,
    PHASE1_WORK,
    REPORT_HTML,
    REPORT_MD,
    STAGE_IO,
    TOKENIZED,
)
from .provenance import check_provenance, upstream_stages
from .timing import clear_durations, write_timing
from .workspace import workspace_lock

log = logging.getLogger("cvfp")


def run_stage(stage: str, run: Callable[[Params], object], params: Params):
    """Run one stage and record its wall time (and the durations the stage recorded with
    tasks.timing.record_durations) in metrics/timing/<stage>.json for the report. That file
    is not a DVC output and not tracked by git, so outputs stay bitwise identical across
    reruns. Used by the CLI and by the Prefect flow alike. Holds the workspace lock (rank 0).
    The stage checks its params before replacing each output (tasks.outputs.StageOutputs);
    this checks them once more at the end, before dvc.lock or the flow commits."""
    lock = workspace_lock(f"stage {stage}") if os.environ.get("RANK", "0") == "0" else None
    with lock or contextlib.nullcontext():
        return _run_stage_locked(stage, run, params)


def _run_stage_locked(stage: str, run: Callable[[Params], object], params: Params):
    rank0 = os.environ.get("RANK", "0") == "0"
    if rank0:
        clean_leftovers(stage)  # only after the lock: no other runner's scratch
        clear_durations(stage)
    check_provenance(upstream_stages(stage))  # inputs dvc.lock lies about: refuse
    guard = params_guard(stage, params)
    t0 = time.perf_counter()
    result = run(params)
    if guard is not None:
        guard()  # once more right before dvc.lock / the flow commits
    seconds = time.perf_counter() - t0
    if rank0:  # torchrun: rank 0 writes every output
        write_timing(stage, seconds)
        log.info("stage %s finished in %.1f s", stage, seconds)
    return result


# Scratch space of a stage that a killed run may leave behind (besides atomic_path temps):
# each entry's name carries its writer's pid (`<split>-<pid>-*`, `.tokenize-<pid>-*`).
SCRATCH = {"phase1": [PHASE1_WORK / "*"], "tokenize": [TOKENIZED.parent / ".tokenize-*"]}
# Outputs written with atomic_path that are not a stage's DVC outs (their temporaries too
# are cleaned at every stage start).
OTHER_OUTPUTS = (REPORT_HTML, REPORT_MD, COMPARE_JSON, COMPARE_HTML, COMPARE_MD)


def writer_pid(name: str) -> int | None:
    """The pid in a scratch or temporary name (`train-1234-abc`, `.cstar.1234.xyz`)."""
    for part in re.split(r"[.-]", name):
        if part.isdigit():
            return int(part)
    return None


def clean_leftovers(stage: str) -> list[Path]:
    """Remove what killed earlier runs left behind, only where the writing process is gone:
    temporary siblings of every output (of any stage: a stage DVC restores from its run cache
    never runs to clean its own; a killed replacement's old output is put back first), and
    this stage's scratch files."""
    outs = [out for io in STAGE_IO.values() for out in io.outs] + list(OTHER_OUTPUTS)
    removed = [t for out in outs for t in clean_stale_temps(out)]
    for pattern in SCRATCH.get(stage, []):
        for p in map(Path, glob.glob(str(pattern), include_hidden=True)):
            pid = writer_pid(p.name)
            if pid is not None and pid_alive(pid):
                continue  # a running process's scratch (another runner would hold the lock)
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    for p in removed:
        log.warning("stage %s: removed %s, left by an interrupted run", stage, p)
    return removed
