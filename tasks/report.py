"""Report stage: one self-contained HTML page and a Markdown twin describing the whole run.

Inputs: params (full), git revision, library versions, metrics/timing/<stage>.json,
metrics/data.json, data/split/gx/validation.json (+ data docs link), metrics/phase1.json,
cache/phase1/checks.json, metrics/phase2.json, plots/phase2_epochs.csv.
Outputs (DVC outputs: the same deps give the same bytes, so no time, git revision or wall
time on the page): reports/report.html (plots embedded as base64 PNG, inline CSS, no network
needed), reports/report.md (same tables, no images), metrics/summary.json (tasks/summary.py).
Also reads metrics/compare.json (a placeholder until `python -m flows.compare` runs).
"""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from cvfp.analysis.report.build import build_report
from cvfp.analysis.report.document import RunMeta
from cvfp.analysis.report.inputs import ReportInputs
from cvfp.data.metrics import DataMetrics
from cvfp.params import Params
from cvfp.phase1.metrics import Phase1Checks, Phase1Metrics
from cvfp.phase2.metrics import Phase2Epoch, Phase2Metrics
from cvfp.runtime.metrics_base import Metrics, parse
from cvfp.runtime.utils import atomic_path, write_json

from .cli import cli, log
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
    stage_names,
)
from .outputs import StageOutputs
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


def _read_epochs() -> list[Phase2Epoch]:
    path = _require("phase2_epochs")
    frame = pd.read_csv(path)
    # NaN (empty cells) -> None, so the formatters print "n/a".
    rows = [
        {k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.to_dict("records")
    ]
    return [parse(Phase2Epoch, r, f"{path} row {i + 1}") for i, r in enumerate(rows)]


def _read(key: str, model: type[M]) -> M:
    return parse(model, _read_json(key), str(REQUIRED[key][0]))


def library_versions() -> dict[str, str]:
    # Distribution metadata only: importing torch/GX/prefect just for a version is slow.
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def load_inputs(params: Params) -> ReportInputs:
    """The report's inputs: its DVC deps only, so the page is the same bytes for the same
    deps and can be a DVC output (restored from the run-cache, checked out by `dvc exp
    apply`). The volatile facts, the time, the git revision and the wall times
    (metrics/timing/), are not on the page."""
    meta = RunMeta(versions=library_versions())
    docs = os.path.relpath(GX_DOCS, REPORTS) if GX_DOCS.exists() else None
    compare = read_compare()
    names = stage_names()
    stages = tuple(names[: names.index("report")])  # the stages before this one, in order
    return ReportInputs(
        params=params,
        meta=meta,
        stages=stages,
        timing={},
        data=_read("data", DataMetrics),
        gx=_read_json("gx"),
        gx_docs_href=Path(docs).as_posix() if docs else None,
        phase1=_read("phase1", Phase1Metrics),
        checks=_read("checks", Phase1Checks),
        phase2=_read("phase2", Phase2Metrics),
        phase2_epochs=_read_epochs(),
        compare=compare,
        compare_href=os.path.relpath(COMPARE_HTML, REPORTS) if compare else None,
    )


# metrics/compare.json before any comparison: the report stage depends on the file (its
# verdicts are on the page), so it always exists; `python -m flows.compare` replaces it.
COMPARE_PLACEHOLDER = {"arms": {}, "note": "no comparison yet: python -m flows.compare"}


def write_compare_placeholder(path: Path = COMPARE_JSON) -> bool:
    """Write the placeholder when there is no metrics/compare.json; True if written."""
    if path.exists():
        return False
    write_json(path, COMPARE_PLACEHOLDER)
    return True


def read_compare(path: Path = COMPARE_JSON) -> dict | None:
    """metrics/compare.json's comparison, None for the placeholder. A missing file is the
    DVC dependency error's job; an unreadable one fails here, naming the file."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"report input {path} is not valid JSON: {err} (rerun `python -m flows.compare`, "
            "or delete it and run `make repro` for the no-comparison placeholder)"
        ) from None
    return data if isinstance(data, dict) and data.get("arms") else None


def run(params: Params) -> dict:
    check = StageOutputs("report", params).before_replace  # params.yaml now
    report = build_report(load_inputs(params))
    for path, text in ((REPORT_HTML, report.html), (REPORT_MD, report.md)):
        with atomic_path(path, check) as tmp:
            tmp.write_text(text, encoding="utf-8")
    for f in report.findings:
        log.warning("report: %s %s: %s", f.area, f.check, f.message)
    log.info("report: %s and %s (%d warning(s))", REPORT_HTML, REPORT_MD, len(report.findings))
    # metrics/summary.json: the run's DVC metrics (tasks/summary.py)
    write_summary(warnings=len(report.findings), before_replace=check)
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
