"""metrics/summary.json: a run's headline research numbers, the one file DVC reads as metrics.

The stage files (metrics/data.json, phase1.json, phase2.json) keep every number but are plain
outputs, so `dvc exp show` starts with these columns and `dvc metrics diff` lists only them
(`dvc metrics diff --targets metrics/phase2.json` still diffs a whole stage file). Written by
the report stage from the stage files; the Prefect summary artifact shows the same numbers
(flows/artifacts.py). A missing file or key is null ("n/a"), e.g. Phase 1 steps before the
phase1 stage records them, or the ablations of a run without Phase 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cvfp.analysis.metrics import SummaryMetrics
from cvfp.analysis.report.headline import get

from .layout import DATA_METRICS, METRICS, PHASE1_METRICS, PHASE2_METRICS, SUMMARY

STAGE_FILES = {
    "split": DATA_METRICS.name,
    "phase1": PHASE1_METRICS.name,
    "phase2": PHASE2_METRICS.name,
}


def read_stage_metrics(metrics_dir: str | Path = METRICS) -> dict[str, dict]:
    """{stage: metrics} for the stage metrics files that exist and parse."""
    out = {}
    for stage, name in STAGE_FILES.items():
        try:
            out[stage] = json.loads((Path(metrics_dir) / name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            pass
    return out


def _round(x: Any, digits: int) -> Any:
    return round(float(x), digits) if isinstance(x, (int, float)) and not isinstance(x, bool) else x


def summary_metrics(m: dict[str, dict], warnings: int | None = None) -> dict:
    """The headline numbers from the stage metrics `m` ({stage: metrics}), rounded (perplexity
    to 0.01, rates to 0.0001); every key is always present, None when not measured."""
    p1, p2 = m.get("phase1", {}), m.get("phase2", {})
    ppl = {
        "cvfp": "cvfp.val_ppl",
        "bigram": "baselines.bigram.val_ppl",
        "transformer": "baselines.transformer.val_ppl",
        "zero_c": "ablations.zero_context.val_ppl",
        "shuffled_c": "ablations.shuffled_context.val_ppl",
    }
    acc = {
        "cvfp": "cvfp.val_acc",
        "bigram": "baselines.bigram.val_acc",
        "transformer": "baselines.transformer.val_acc",
    }
    # Short names: they are `dvc exp show` column headers. test_ppl is on test, ppl/acc on val; zero_c and
    # shuffled_c are CVFP's Phase 2 head with zero / shuffled C* (the ablations).
    test = {
        "cvfp": "cvfp.test_ppl",
        "transformer": "baselines.transformer.test_ppl",
        "bigram": "baselines.bigram.test_ppl",
    }
    summary = {
        "test_ppl": {k: _round(get(p2, v), 2) for k, v in test.items()},
        "ppl": {k: _round(get(p2, v), 2) for k, v in ppl.items()},
        "acc": {k: _round(get(p2, v), 4) for k, v in acc.items()},
        "p2_best_epoch": get(p2, "cvfp.best_epoch"),
        "p1": {
            "objective": p1.get("objective"),
            "steps_train": get(p1, "train.steps"),
            "steps_val": get(p1, "val.steps"),
            "iterations": get(p1, "train.iterations"),
            "conv_train": _round(get(p1, "train.convergence_rate"), 4),
            "conv_val": _round(get(p1, "val.convergence_rate"), 4),
            "er_train": _round(get(p1, "train.effective_rank_ratio"), 4),
            "er_val": _round(get(p1, "val.effective_rank_ratio"), 4),
            "verdict": get(p1, "val.trials.verdict"),
        },
        "warnings": warnings,
    }
    return SummaryMetrics.model_validate(summary).to_dict()  # the keys of metrics/summary.json


def write_summary(
    metrics_dir: str | Path = METRICS, warnings: int | None = None, before_replace=None
) -> dict:
    from cvfp.runtime.utils import write_json

    summary = summary_metrics(read_stage_metrics(metrics_dir), warnings)
    write_json(Path(metrics_dir) / SUMMARY.name, summary, before_replace)
    return summary
