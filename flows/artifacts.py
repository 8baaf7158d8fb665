"""What the Prefect UI shows a researcher: the current results as artifacts.

After every flow run, whether its stages ran or were skipped (flows/pipeline.py):

* `cvfp-summary`  table: the headline numbers (val perplexity of CVFP, bigram, Transformer and
  the zero / shuffled C* ablations, Phase 1 steps, effective rank, convergence-trial verdict);
* `split-metrics`, `phase1-metrics`, `phase2-metrics`  Markdown: each metrics/*.json as one
  small table per section (`train`, `val.trials`, `baselines.bigram`, ...), rounded;
* `cvfp-report`  Markdown: reports/report.md.

After `python -m flows.compare`, `refresh_report` reruns the report stage. Progress while a
stage runs: flows/progress.py.

The rows are built from the metrics files alone (plain functions, tested without Prefect); a
missing file or key shows as "n/a".
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cvfp.analysis.formats import fmt_acc, fmt_er, fmt_int, fmt_num, fmt_ppl, fmt_seconds
from cvfp.analysis.report.headline import headline_rows
from cvfp.analysis.report.rule_words import pass_text as rule_pass_text
from cvfp.params import load_params
from cvfp.phase1.rules import TRIALS
from tasks.layout import COMPARE_JSON, METRICS, PARAMS, REPORT_MD, REPORTS, SUMMARY
from tasks.summary import STAGE_FILES as METRIC_FILES
from tasks.summary import get, read_stage_metrics, summary_metrics

NA = "n/a"


def read_metrics(metrics_dir: Path = METRICS) -> dict[str, dict]:
    return read_stage_metrics(metrics_dir)


def _pair(a: Any, b: Any, fmt, labels: tuple[str, str] = ("train", "val")) -> str:
    """Two numbers, each labelled with its split: 'train 1,200, val 300'."""
    if a is None and b is None:
        return NA
    return ", ".join(
        f"{lab} {NA if x is None else fmt(x)}" for lab, x in zip(labels, (a, b), strict=True)
    )


def read_compare(metrics_dir: Path = METRICS) -> dict | None:
    """metrics/compare.json (python -m flows.compare) or None when there is no comparison."""
    try:
        data = json.loads((Path(metrics_dir) / COMPARE_JSON.name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("arms") else None


def read_warnings(metrics_dir: Path = METRICS) -> int | None:
    """The report's warnings count, as recorded in metrics/summary.json."""
    try:
        return json.loads((Path(metrics_dir) / SUMMARY.name).read_text()).get("warnings")
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return None


def pass_text(params_path: str | Path = PARAMS) -> str | None:
    """The fixed-point check's pass rule with this workspace's threshold, e.g. '< 0.001'."""
    try:
        params = load_params(params_path)
    except Exception:  # a summary never fails on a params file the flow will reject anyway
        return None
    (rule,) = TRIALS.when
    return rule_pass_text(rule, params)


def summary_rows(
    m: dict[str, dict],
    compare: dict | None = None,
    warnings: int | None = None,
    pass_rule: str | None = None,
) -> list[dict[str, str]]:
    """The headline table: first what a researcher must read (cvfp/analysis/report/headline.py, the
    same rows as report.html's Summary: comparison verdicts, CVFP vs Transformer vs bigram,
    the fixed-point check, Phase 1 steps, warnings), then metrics/summary.json's numbers
    (tasks/summary.py) as rounded strings, each labelled with its split; "n/a" when not
    measured."""
    s = summary_metrics(m)
    ppl, p1 = s["ppl"], s["p1"]
    best = s["p2_best_epoch"]

    def val(x, fmt=fmt_ppl):
        return NA if x is None else f"val {fmt(x)}"

    rows = headline_rows(m.get("phase1", {}), m.get("phase2", {}), compare, warnings, pass_rule)
    rows += [
        (
            "Val perplexity: CVFP (Phase 2)",
            NA
            if ppl["cvfp"] is None
            else val(ppl["cvfp"]) + (f" (best epoch {best})" if best else ""),
        ),
        ("Val perplexity: bigram", val(ppl["bigram"])),
        ("Val perplexity: Transformer (same params)", val(ppl["transformer"])),
        ("Val perplexity: CVFP with zero C* (ablation)", val(ppl["zero_c"])),
        ("Val perplexity: CVFP with shuffled C* (ablation)", val(ppl["shuffled_c"])),
        (
            "Val accuracy: CVFP / Transformer",
            _pair(s["acc"]["cvfp"], s["acc"]["transformer"], fmt_acc, ("val CVFP", "Transformer")),
        ),
        ("Phase 1 steps (train / val)", _pair(p1["steps_train"], p1["steps_val"], fmt_int)),
        ("Phase 1 convergence (train / val)", _pair(p1["conv_train"], p1["conv_val"], fmt_acc)),
        (
            "Effective rank (train / val)",
            _pair(
                _effective_rank(m, "train"),
                _effective_rank(m, "val"),
                str,
            ),
        ),
        (
            "Convergence-trial verdict (val)",
            NA if p1["verdict"] is None else f"val {p1['verdict']}",
        ),
    ]
    return [{"quantity": q, "value": v} for q, v in rows]


def _effective_rank(m: dict[str, dict], split: str) -> str | None:
    """`627.29/768 = 81.7%` from metrics/phase1.json's numbers (dim = rank / ratio)."""
    er = get(m.get("phase1"), f"{split}.effective_rank")
    ratio = get(m.get("phase1"), f"{split}.effective_rank_ratio")
    if er is None or ratio is None:
        return None
    return fmt_er(er, round(er / ratio)) if ratio else f"{er:.2f}"


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


SUMMARY_DESCRIPTION = (
    "What to read first (metrics/*.json on disk{when}; n/a = not produced yet). "
    "Full report: reports/report.html"
)


def _summary_payload(metrics_dir: Path, params_path: str | Path) -> list[dict[str, str]]:
    return summary_rows(
        read_metrics(metrics_dir),
        read_compare(metrics_dir),
        read_warnings(metrics_dir),
        pass_text(params_path),
    )


def publish_summary(
    metrics_dir: Path = METRICS, params_path: str | Path = PARAMS, artifact_id=None
):
    """Create the `cvfp-summary` table artifact, or, given `artifact_id`, update it in place:
    the flow creates it first (so it is the run's first and only flow-level artifact, listed
    first in the UI) and updates it with the final numbers at the end. Returns its id."""
    from prefect.artifacts import create_table_artifact

    rows = _summary_payload(metrics_dir, params_path)
    if artifact_id is None:
        return create_table_artifact(
            rows,
            key="cvfp-summary",
            description=SUMMARY_DESCRIPTION.format(when=" before this run"),
        )
    from prefect import get_client
    from prefect.client.schemas.actions import ArtifactUpdate

    with get_client(sync_client=True) as client:
        client.update_artifact(
            artifact_id,
            ArtifactUpdate(
                data=json.dumps(rows),
                description=SUMMARY_DESCRIPTION.format(when=" after this run"),
            ),
        )
    return artifact_id


def publish_details(metrics_dir: Path = METRICS, reports_dir: Path = REPORTS) -> list[str]:
    """The stage metrics as Markdown tables and reports/report.md; returns their keys."""
    from prefect.artifacts import create_markdown_artifact

    keys = []
    for stage, metrics in read_metrics(metrics_dir).items():
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


def refresh_report() -> str:
    """After `python -m flows.compare` wrote metrics/compare.json: `dvc repro --single-item
    report` (the report stage depends on that file), so reports/report.{html,md} show the new
    verdicts and dvc.lock records them. Returns what happened, for the log; never raises (the
    comparison's own outputs are already written)."""
    import logging

    from dvc.repo import Repo

    try:
        with Repo(".") as repo:
            ran = repo.reproduce(targets=["report"], single_item=True)
    except Exception as err:
        logging.getLogger("cvfp").warning("report not refreshed: %s (run `dvc repro`)", err)
        return f"report not refreshed: {err} (run `dvc repro`)"
    return "report refreshed with the comparison" if ran else "report already up to date"
