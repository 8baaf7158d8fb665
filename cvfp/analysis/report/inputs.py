"""What the run report is built from (typed: the metrics models of cvfp/*/metrics.py) and its
outline: the sections' keys and titles, in order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cvfp.analysis.report.document import RunMeta
from cvfp.data.metrics import DataMetrics
from cvfp.params import Params
from cvfp.phase1.metrics import Phase1Checks, Phase1Metrics
from cvfp.phase2.metrics import Phase2Epoch, Phase2Metrics

# Section titles, in order (tests check every one appears in both renderings).
TITLES = {
    "summary": "Summary",
    "warnings": "Warnings",
    "metadata": "Run metadata",
    "data": "Data",
    "phase1": "Phase 1: CVFP fixed-point learning",
    "reference": "Reference figures from the seeds",
    "phase2": "Phase 2: context-fixed token prediction",
}
# The Phase 1 section's title when phase1.objective is reconstruction (SPEC section 7).
RECONSTRUCTION_TITLE = "Phase 1: context reconstruction learning (v3)"
# ... and when it is none (SPEC 9's control arm: no Phase 1 training).
NONE_TITLE = "Phase 1: none (control: the initialised stack, no training)"


@dataclass
class ReportInputs:
    params: Params  # the full effective params
    meta: RunMeta
    stages: Sequence[str]  # the pipeline's stages in order (one timing row each)
    timing: Mapping[str, Mapping[str, Any]]  # stage -> metrics/timing/<stage>.json, if recorded
    data: DataMetrics  # metrics/data.json
    gx: Mapping[str, Any]  # data/split/gx/validation.json (Great Expectations' format)
    gx_docs_href: str | None  # relative link from reports/ to the data docs, if present
    phase1: Phase1Metrics  # metrics/phase1.json
    checks: Phase1Checks  # cache/phase1/checks.json
    phase2: Phase2Metrics  # metrics/phase2.json
    phase2_epochs: list[Phase2Epoch]  # plots/phase2_epochs.csv
    compare: Mapping[str, Any] | None = None  # metrics/compare.json, if a comparison exists
    compare_href: str | None = None  # relative link from reports/ to compare.html

    @property
    def objective(self) -> str:
        """The Phase 1 objective that ran."""
        return self.phase1.objective
