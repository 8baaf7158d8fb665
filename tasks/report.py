"""Report stage: one self-contained HTML page and a Markdown twin describing the whole run.

Inputs: params (full), git revision, library versions, metrics/timing/<stage>.json,
metrics/data.json, data/split/gx/validation.json (+ data docs link), metrics/phase1.json,
cache/phase1/checks.json, metrics/phase2.json, plots/phase2_epochs.csv.
Outputs: reports/report.html (plots embedded as base64 PNG, inline CSS, no network needed),
reports/report.md (same tables, no images), metrics/summary.json (tasks/summary.py).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from itertools import zip_longest
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from cvfp.metrics.base import Metrics, parse
from cvfp.metrics.data import DataMetrics
from cvfp.metrics.phase1 import Phase1Checks, Phase1Metrics
from cvfp.metrics.phase2 import Phase2Epoch, Phase2Metrics
from cvfp.params import Params
from cvfp.report import ReportInputs, RunMeta, build_report
from cvfp.utils import atomic_path

from .common import cli, log, merge_durations
from .layout import (
    COMPARE_HTML,
    COMPARE_JSON,
    DATA_METRICS,
    GX_DOCS,
    GX_VALIDATION,
    PHASE1_CHECKS,
    PHASE1_METRICS,
    PHASE2_EPOCHS_CSV,
    PHASE2_METRICS,
    REPORT_HTML,
    REPORT_MD,
    REPORTS,
    TIMING,
    stage_names,
)
from .summary import write_summary

# Every required input and the stage that writes it, for a useful error when one is missing.
REQUIRED = {
    "data": (DATA_METRICS, "split"),
    "gx": (GX_VALIDATION, "split"),
    "phase1": (PHASE1_METRICS, "phase1"),
    "checks": (PHASE1_CHECKS, "phase1"),
    "phase2": (PHASE2_METRICS, "phase2"),
    "phase2_epochs": (PHASE2_EPOCHS_CSV, "phase2"),
}
LIBRARIES = (
    "torch",
    "prefect",
    "dvc",
    "great_expectations",
    "datasets",
    "transformers",
    "numpy",
    "pandas",
    "matplotlib",
)


M = TypeVar("M", bound=Metrics)


class MissingInputError(FileNotFoundError):
    pass


def _require(key: str) -> Path:
    path, stage = REQUIRED[key]
    if not path.exists():
        raise MissingInputError(
            f"report input missing: {path} (written by the '{stage}' stage; run "
            f"`python -m tasks.{stage}` or `dvc repro {stage}` first)"
        )
    return path


def _read_json(key: str) -> Any:
    path = _require(key)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"report input {path} is not valid JSON: {err}") from None


def _with_durations(model: type[M], obj: Any, durations: Any, where: str) -> M:
    """`obj` as `model`, with the wall times recorded in metrics/timing/ put back
    (tasks.common.split_durations took them out). Durations of another run that do not fit
    this file's shape are left out, with a warning."""
    if durations:
        try:
            return parse(model, merge_durations(copy.deepcopy(obj), durations), where)
        except ValueError:
            log.warning("report: ignoring recorded durations that do not fit %s", where)
    return parse(model, obj, where)


def _read_epochs(durations: list) -> list[Phase2Epoch]:
    path = _require("phase2_epochs")
    frame = pd.read_csv(path)
    # NaN (empty cells) -> None, so the formatters print "n/a".
    rows = [
        {k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.to_dict("records")
    ]
    return [
        _with_durations(Phase2Epoch, r, d, f"{path} row {i + 1}")
        for i, (r, d) in enumerate(zip_longest(rows, durations[: len(rows)]))
    ]


def _read(key: str, model: type[M], durations: Any = None) -> M:
    return _with_durations(model, _read_json(key), durations, str(REQUIRED[key][0]))


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> tuple[str, bool | None]:
    """(revision or "unknown", dirty or None). Read-only: --no-optional-locks keeps
    `git status` from refreshing the index while other processes use the tree."""
    rev = _git("rev-parse", "HEAD")
    if rev is None:
        return "unknown", None
    status = _git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    return rev, (None if status is None else bool(status))


def library_versions() -> dict[str, str]:
    # Distribution metadata only: importing torch/GX/prefect just for a version is slow.
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def read_timing(stages: Sequence[str]) -> dict[str, dict]:
    """metrics/timing/<stage>.json of the stages that recorded one (this machine's last run;
    not a DVC dependency, so the report never reruns for a timing change)."""
    out = {}
    for stage in stages:
        path = TIMING / f"{stage}.json"
        if path.exists():
            try:
                out[stage] = json.loads(path.read_text())
            except json.JSONDecodeError:
                log.warning("report: ignoring unreadable %s", path)
    return out


def load_inputs(params: Params) -> ReportInputs:
    rev, dirty = git_state()
    meta = RunMeta(
        git_revision=rev,
        git_dirty=dirty,
        generated_utc=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        versions=library_versions(),
    )
    docs = os.path.relpath(GX_DOCS, REPORTS) if GX_DOCS.exists() else None
    # A comparison (python -m flows.compare) is optional and not a DVC dep of this stage:
    # linked, and its computed verdicts shown, when present.
    compare = json.loads(COMPARE_JSON.read_text()) if COMPARE_JSON.exists() else None
    names = stage_names()
    stages = tuple(names[: names.index("report")])  # the stages before this one, in order
    timing = read_timing(stages)
    # Durations were kept out of the outputs (tasks.common.split_durations); put back the
    # recorded ones, which show when the timing files are there.
    d1, d2 = (timing.get(s, {}).get("durations", {}) for s in ("phase1", "phase2"))
    return ReportInputs(
        params=params,
        meta=meta,
        stages=stages,
        timing=timing,
        data=_read("data", DataMetrics),
        gx=_read_json("gx"),
        gx_docs_href=Path(docs).as_posix() if docs else None,
        phase1=_read("phase1", Phase1Metrics, d1.get("metrics")),
        checks=_read("checks", Phase1Checks, d1.get("checks")),
        phase2=_read("phase2", Phase2Metrics, d2.get("metrics")),
        phase2_epochs=_read_epochs(d2.get("epochs", [])),
        compare=compare,
        compare_href=os.path.relpath(COMPARE_HTML, REPORTS) if COMPARE_HTML.exists() else None,
    )


def run(params: Params) -> dict:
    report = build_report(load_inputs(params))
    for path, text in ((REPORT_HTML, report.html), (REPORT_MD, report.md)):
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    for f in report.findings:
        log.warning("report: %s %s: %s", f.area, f.check, f.message)
    log.info("report: %s and %s (%d warning(s))", REPORT_HTML, REPORT_MD, len(report.findings))
    # metrics/summary.json: the run's DVC metrics (tasks/summary.py)
    write_summary(warnings=len(report.findings))
    return {
        "html": str(REPORT_HTML.resolve()),
        "md": str(REPORT_MD.resolve()),
        "warnings": len(report.findings),
    }


def main() -> None:
    cli("report", run, __doc__)
    print(REPORT_HTML.resolve())


if __name__ == "__main__":
    main()
