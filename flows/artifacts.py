"""What the Prefect UI shows a researcher: the current results as artifacts, and stage progress.

After every flow run, whether its stages ran or were skipped (flows/pipeline.py):

* `cvfp-summary`  table: the headline numbers (val perplexity of CVFP, bigram, Transformer and
  the zero / shuffled C* ablations, Phase 1 steps, effective rank, convergence-trial verdict);
* `split-metrics`, `phase1-metrics`, `phase2-metrics`  Markdown: each metrics/*.json as one
  small table per section (`train`, `val.trials`, `baselines.bigram`, ...), rounded;
* `cvfp-report`  Markdown: reports/report.md.

While a stage runs, `<stage>-progress` is a progress artifact with the current bar's position,
total and ETA (fed by cvfp.utils' progress listeners).

The rows are built from the metrics files alone (plain functions, tested without Prefect); a
missing file or key shows as "n/a".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cvfp.formats import fmt_acc, fmt_int, fmt_num, fmt_ppl, fmt_seconds
from cvfp.utils import eta_text
from tasks.layout import METRICS, REPORT_MD, REPORTS
from tasks.summary import STAGE_FILES as METRIC_FILES
from tasks.summary import get, read_stage_metrics, summary_metrics

NA = "n/a"


def read_metrics(metrics_dir: Path = METRICS) -> dict[str, dict]:
    return read_stage_metrics(metrics_dir)


def _pair(a: Any, b: Any, fmt) -> str:
    return f"{fmt(a)} / {fmt(b)}" if a is not None or b is not None else NA


def summary_rows(m: dict[str, dict]) -> list[dict[str, str]]:
    """The headline table: metrics/summary.json's numbers (tasks/summary.py) as rounded
    strings, one row per quantity, "n/a" when not measured."""
    s = summary_metrics(m)
    ppl, p1 = s["ppl"], s["p1"]
    best = s["p2_best_epoch"]

    def text(x):
        return NA if x is None else str(x)

    rows = [
        (
            "Val perplexity: CVFP (Phase 2)",
            NA
            if ppl["cvfp"] is None
            else fmt_ppl(ppl["cvfp"]) + (f" (best epoch {best})" if best else ""),
        ),
        ("Val perplexity: bigram", fmt_ppl(ppl["bigram"])),
        ("Val perplexity: Transformer (same params)", fmt_ppl(ppl["transformer"])),
        ("Val perplexity: CVFP with zero C* (ablation)", fmt_ppl(ppl["zero_c"])),
        ("Val perplexity: CVFP with shuffled C* (ablation)", fmt_ppl(ppl["shuffled_c"])),
        (
            "Val accuracy: CVFP / Transformer",
            _pair(s["acc"]["cvfp"], s["acc"]["transformer"], fmt_acc),
        ),
        ("Phase 1 objective", text(p1["objective"])),
        ("Phase 1 steps (train / val)", _pair(p1["steps_train"], p1["steps_val"], fmt_int)),
        ("Phase 1 iterations", text(get(m.get("phase1"), "iterations_text"))),
        ("Phase 1 convergence (train / val)", _pair(p1["conv_train"], p1["conv_val"], fmt_acc)),
        (
            "Effective rank (train / val)",
            _pair(
                get(m.get("phase1"), "train.effective_rank_text"),
                get(m.get("phase1"), "val.effective_rank_text"),
                text,
            ),
        ),
        ("Convergence-trial verdict (val)", text(p1["verdict"])),
    ]
    return [{"quantity": q, "value": v} for q, v in rows]


def _fmt_value(key: str, v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool) or v is None:
        return fmt_num(v)
    if isinstance(v, int):
        return fmt_int(v)
    if not math.isfinite(float(v)):
        return str(v)
    if "ppl" in key:
        return fmt_ppl(v)
    if key.endswith("acc") or key.endswith("_rate") or key == "sparsity":
        return fmt_acc(v)
    if "seconds" in key:
        return fmt_seconds(v)
    return fmt_num(v)


def sections(metrics: dict, prefix: str = "") -> dict[str, list[tuple[str, str]]]:
    """A metrics dict as {section: [(key, formatted value)]}: a section is a dict's path
    ("" = top level, "val.trials", "baselines.bigram"); lists are left out (plots hold them)."""
    out: dict[str, list[tuple[str, str]]] = {}
    rows = [(k, _fmt_value(k, v)) for k, v in metrics.items() if not isinstance(v, (dict, list))]
    if rows:
        out[prefix] = rows
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(sections(v, f"{prefix}.{k}" if prefix else k))
    return out


def sections_markdown(stage: str, metrics: dict) -> str:
    parts = [f"# {stage} metrics (metrics/{METRIC_FILES[stage]})"]
    for name, rows in sections(metrics).items():
        parts.append(f"\n### {name or stage}\n\n| metric | value |\n|---|---|")
        parts += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(parts) + "\n"


def publish_results(metrics_dir: Path = METRICS, reports_dir: Path = REPORTS) -> list[str]:
    """Create the result artifacts from what is on disk now; returns their keys."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    m = read_metrics(metrics_dir)
    create_table_artifact(
        summary_rows(m),
        key="cvfp-summary",
        description="Headline results (metrics/*.json after this run; n/a = not produced yet)",
    )
    keys = ["cvfp-summary"]
    for stage, metrics in m.items():
        create_markdown_artifact(
            sections_markdown(stage, metrics),
            key=f"{stage}-metrics",
            description=f"metrics/{METRIC_FILES[stage]}, by section",
        )
        keys.append(f"{stage}-metrics")
    report = Path(reports_dir) / REPORT_MD.name
    if report.exists():
        create_markdown_artifact(report.read_text(), key="cvfp-report", description=str(report))
        keys.append("cvfp-report")
    return keys


LONG_STAGES = ("phase1", "materialize", "phase2")  # always get a progress artifact


class StageProgress:
    """A cvfp.utils progress listener that mirrors the stage's current bar into the progress
    artifact `<stage>-progress` (percent of the bar; the description says which bar, the
    position/total and the ETA). Never fails the stage: an API error just stops the updates."""

    def __init__(self, stage: str):
        self.stage, self.artifact_id, self.broken = stage, None, False
        if stage in LONG_STAGES:
            # created now, in the stage's task run: a bar first reported from inside a subflow
            # (materialize's shards) would otherwise attach the artifact to that subflow's run
            self._show(0.0, f"{stage}: started")

    def __call__(self, desc: str, position: int, total: int | None, elapsed: float) -> None:
        pct = min(100.0, 100.0 * position / total) if total else 0.0
        self._show(pct, f"{self.stage}: {desc}: {eta_text(position, total, elapsed)}")

    def done(self) -> None:
        """The stage finished: 100% (a loop that stopped early, e.g. Phase 1 converging before
        max_iterations, would otherwise stay below)."""
        if self.artifact_id is not None:
            self._show(100.0, f"{self.stage}: done")

    def _show(self, pct: float, text: str) -> None:
        if self.broken:
            return
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(
                    pct, key=f"{self.stage}-progress", description=text
                )
            else:
                update_progress_artifact(self.artifact_id, pct, description=text)
        except Exception as err:  # monitoring must not kill a training run
            self.broken = True
            import logging

            logging.getLogger("cvfp").warning(
                "progress artifact for %s disabled: %s", self.stage, err
            )
