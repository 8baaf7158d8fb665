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

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvfp.check_rules import TRIALS
from cvfp.formats import fmt_acc, fmt_er, fmt_int, fmt_num, fmt_ppl, fmt_seconds
from cvfp.params import Params, load_params
from cvfp.report.headline import headline_rows
from cvfp.report.rule_words import pass_text as rule_pass_text
from cvfp.utils import eta_text
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
    """The headline table: first what a researcher must read (cvfp/report/headline.py, the
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


def publish_results(
    metrics_dir: Path = METRICS,
    reports_dir: Path = REPORTS,
    params_path: str | Path = PARAMS,
    summary_id=None,
) -> list[str]:
    """The summary (updated in place when the flow created it at its start), then the
    details; returns the artifact keys."""
    publish_summary(metrics_dir, params_path, summary_id)
    return ["cvfp-summary", *publish_details(metrics_dir, reports_dir)]


LONG_STAGES = ("phase1", "materialize", "phase2")  # always get a progress artifact


@dataclass
class Loop:
    """One of a stage's loops: progress bars named `<bar> <k>` (one bar per epoch k) or, with
    `single`, one bar named `<bar>` whose position counts the iterations done."""

    bar: str
    unit: str  # the text says "<unit> k of N"
    n: int  # planned count (the most it runs: early stopping can end it sooner)
    single: bool = False
    n_like: str | None = None  # runs as many units as this earlier loop ran
    k: int = 0  # current unit, 1-based (0: not started)
    frac: float = 0.0  # the part of unit k done
    pace: float | None = None  # measured seconds per unit
    done: bool = False

    def unit_of(self, desc: str, position: int, total: int | None) -> tuple[int, float] | None:
        """(k, part of unit k done) when the bar `desc` is this loop's, else None."""
        if self.single:
            if desc != self.bar or not total:
                return None
            return (position, 1.0) if position >= total else (position + 1, 0.0)
        head, _, k = desc.rpartition(" ")
        if head != self.bar or not k.isdigit():
            return None
        return int(k), (position / total if total else 0.0)


def stage_loops(stage: str, params: Params) -> list[Loop]:
    """The loops a stage runs, in order, with their planned counts from the params."""
    p1 = params.phase1
    fixed_point = [
        Loop("phase1 train", "train iteration", p1.max_iterations, single=True),
        Loop("phase1 val", "val iteration", p1.max_iterations, single=True),
    ]
    if stage == "phase1" and p1.objective == "reconstruction":
        return [Loop("reconstruction epoch", "epoch", p1.reconstruction.epochs), *fixed_point]
    if stage == "phase1":
        return fixed_point
    if stage == "phase2":
        loops = [Loop("phase2 epoch", "epoch", params.phase2.epochs)]
        if params.baselines.transformer:  # as many epochs as Phase 2 ran
            loops.append(
                Loop(
                    "transformer epoch",
                    "transformer epoch",
                    params.phase2.epochs,
                    n_like="phase2 epoch",
                )
            )
        return loops
    return []


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class StagePlan:
    """A whole stage's position from its progress bars: which loop ("epoch k of N"), the
    stage's percent (an integer) and its ETA, the sum of the remaining loops: the rest of the
    current unit and the loop's remaining units at its measured pace, plus each later loop's
    units at its own pace once measured (before that, at the current loop's pace). Plain
    Python, no Prefect: StageProgress shows its text."""

    def __init__(self, stage: str, loops: list[Loop]):
        self.stage, self.loops = stage, loops
        self.current: Loop | None = None
        self.bar = ""  # the latest bar, e.g. "phase2 epoch 3: 40/120 (33%)"

    def see(self, desc: str, position: int, total: int | None, bar_elapsed: float) -> None:
        self.bar = f"{desc}: " + eta_text(position, total, bar_elapsed).split(", ")[0]
        for i, loop in enumerate(self.loops):
            hit = loop.unit_of(desc, position, total)
            if hit is None:
                continue
            for earlier in self.loops[:i]:  # a later loop started: the earlier ones are over
                earlier.done = True
            if loop.n_like:
                like = next(x for x in self.loops if x.bar == loop.n_like)
                loop.n = like.k or loop.n
            loop.k, loop.frac = hit
            if loop.single and position:
                loop.pace = bar_elapsed / position
            elif not loop.single and loop.frac > 0:
                loop.pace = bar_elapsed / loop.frac
            self.current = loop
            return

    def eta(self) -> float | None:
        cur = self.current
        if cur is None or cur.pace is None:
            return None
        seconds = (1.0 - cur.frac) * cur.pace + max(cur.n - cur.k, 0) * cur.pace
        for later in self.loops[self.loops.index(cur) + 1 :]:
            if not later.done:
                seconds += max(later.n - later.k, 0) * (later.pace or cur.pace)
        return seconds

    def status(self, elapsed: float) -> tuple[float, str]:
        """(stage percent rounded to an integer, the text) after `elapsed` stage seconds."""
        eta = self.eta()
        pct = (
            float(round(100.0 * elapsed / (elapsed + eta)))
            if eta is not None and elapsed + eta > 0
            else 0.0
        )
        text = f"{self.stage}:"
        cur = self.current
        if cur is not None:
            text += f" {cur.unit} {cur.k} of {cur.n}"
            later = [x for x in self.loops[self.loops.index(cur) + 1 :] if not x.done]
            if later:
                text += ", then " + ", ".join(f"{x.n} {x.unit}s" for x in later)
            text += ";"
        text += f" stage {pct:.0f}%, {hms(elapsed)} elapsed"
        text += f", ETA {hms(eta)}" if eta is not None else ""
        return pct, text + (f" ({self.bar})" if self.bar else "")


class StageProgress:
    """A cvfp.utils progress listener that keeps the progress artifact `<stage>-progress` at
    the whole stage's position (StagePlan: "epoch k of N", percent, elapsed, stage ETA). Never
    fails the stage: an API error just stops the updates."""

    def __init__(self, stage: str, params: Params | None = None):
        self.stage, self.artifact_id, self.broken = stage, None, False
        self.t0 = time.monotonic()
        self.plan = StagePlan(stage, stage_loops(stage, params) if params is not None else [])
        if stage in LONG_STAGES:
            # created now, in the stage's task run: a bar first reported from inside a subflow
            # (materialize's shards) would otherwise attach the artifact to that subflow's run
            self._show(0.0, f"{stage}: started")

    def __call__(self, desc: str, position: int, total: int | None, elapsed: float) -> None:
        self.plan.see(desc, position, total, elapsed)
        pct, text = self.plan.status(time.monotonic() - self.t0)
        if not self.plan.loops and total:  # a stage without planned loops: its bar's percent
            pct = float(round(min(100.0, 100.0 * position / total)))
        self._show(pct, text)

    def done(self) -> None:
        """The stage finished: 100% (a loop that stopped early, e.g. Phase 1 converging before
        max_iterations, would otherwise stay below)."""
        if self.artifact_id is not None:
            self._show(100.0, f"{self.stage}: done in {hms(time.monotonic() - self.t0)}")

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


class CompareProgress:
    """The progress artifact `compare-progress` of `python -m flows.compare`: "experiment k of
    n", percent (an integer), elapsed and ETA (the mean experiment's wall time so far times the
    experiments left, divided by the experiments running side by side). Thread-safe: parallel
    workers call `finished` as their experiments end."""

    def __init__(self, n: int, workers: int = 1):
        import threading

        self.n, self.workers, self.k = n, max(1, workers), 0
        self.seconds: list[float] = []
        self.t0, self.lock = time.monotonic(), threading.Lock()
        self.stage = StageProgress("compare")
        self.stage._show(0.0, f"compare: experiment 0 of {n} done; 0:00 elapsed")

    def text(self, name: str, outcome: str, elapsed: float) -> tuple[float, str]:
        left = self.n - self.k
        eta = sum(self.seconds) / len(self.seconds) * left / self.workers if self.seconds else None
        pct = float(round(100.0 * self.k / self.n)) if self.n else 100.0
        tail = f", ETA {hms(eta)}" if eta is not None and left else ""
        return pct, (
            f"compare: experiment {self.k} of {self.n} done ({name} {outcome}); "
            f"{pct:.0f}%, {hms(elapsed)} elapsed{tail}"
        )

    def finished(self, name: str, outcome: str, seconds: float) -> None:
        with self.lock:
            self.k += 1
            self.seconds.append(seconds)
            self.stage._show(*self.text(name, outcome, time.monotonic() - self.t0))


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
