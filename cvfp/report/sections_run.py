"""The sections about the run as a whole: summary, warnings and run metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from ..check_rules import TRIALS
from ..formats import fmt_acc, fmt_bool, fmt_count, fmt_int, fmt_ppl, fmt_seconds
from ..metrics.phase1 import IterationRow, SplitMetrics, Trials
from ..params import Params
from .document import Block, Code, Heading, Link, Para, Section, Table
from .findings import Finding
from .inputs import TITLES, ReportInputs


def convergence_text(m: SplitMetrics, history: Sequence[IterationRow]) -> str:
    """A split's Phase 1 convergence, labelled when the loop stopped on a rate that holds by
    construction (SPEC 3): the first parallel pass reproduces iteration 0 except at the segment
    starts, for any model. `m.convergence` is the saved model's own pass (phase1_guard), so
    the stopping iteration's rate comes from the history when the two differ."""
    conv = m.convergence
    if not m.converged_by_construction:
        return conv
    stop = fmt_count(history[-1].converged, history[-1].total) if history else conv
    text = (
        f"iteration 1 converged by construction: {stop} (the first parallel pass reproduces "
        f"iteration 0 except at the {fmt_int(m.segment_starts)} segment starts, for any model; "
        "not a result)"
    )
    return text if stop == conv else f"{text}; the saved model, after its step: {conv}"


def fixed_point_text(trials: Trials | None, params: Params) -> str:
    """The val convergence trials (SPEC 4.4), the real fixed-point check, in one line."""
    if trials is None:
        return "no convergence trials recorded"
    (rule,) = TRIALS.when
    return (
        f"{'PASSED' if trials.passed else 'NOT PASSED'}: final diff "
        f"{rule.fmt(trials.final_diff)} (pass if {rule.pass_text(params)}), verdict "
        f"{trials.verdict}"
    )


def section_summary(inp: ReportInputs, findings: list[Finding]) -> Section:
    p1, cv, bl = inp.phase1, inp.phase2.cvfp, inp.phase2.baselines
    recon = inp.objective == "reconstruction"
    tr, va = p1.train, p1.val
    rows = [
        ["Phase 1 objective", inp.objective],
        ["Phase 1 training" if recon else "Phase 1 iterations", p1.iterations_text],
        ["Phase 1 optimizer steps", fmt_int(tr.steps)],
        ["Fixed-point check (val convergence trials)", fixed_point_text(va.trials, inp.params)],
        ["Phase 1 train convergence", convergence_text(tr, inp.checks.train.history)],
        ["Phase 1 val convergence", convergence_text(va, inp.checks.val.history)],
        ["Effective rank train", tr.effective_rank_text],
        ["Effective rank val", va.effective_rank_text],
    ]
    if recon:
        rows.append(
            [
                "Phase 1 (reconstruction) val perplexity / accuracy",
                f"{fmt_ppl(va.ppl)} / {fmt_acc(va.acc)}",
            ]
        )
    rows += [
        ["Phase 2 CVFP val perplexity", f"{fmt_ppl(cv.val_ppl)} (best epoch {cv.best_epoch})"],
        ["Bigram val perplexity", fmt_ppl(bl.bigram.val_ppl)],
        ["Transformer val perplexity", fmt_ppl(bl.transformer.val_ppl if bl.transformer else None)],
        ["Warnings", str(len(findings))],
    ]
    s = Section("summary", TITLES["summary"]).add(Table(["quantity", "value"], rows))
    if inp.compare or inp.compare_href:
        s.add(*_comparison(inp.compare or {}, inp.compare_href))
    return s


def _comparison(compare: Mapping[str, Any], href: str | None) -> list[Block]:
    """The verdicts of `python -m flows.compare` (metrics/compare.json) and a link."""
    out: list[Block] = [Heading("Comparison over seeds (controls)")]
    rows = []  # metrics/compare.json: cvfp/metrics/compare.py
    level = f"{100 * (1 - compare.get('alpha', 0.05)):g}%"
    for arm, e in compare.get("arms", {}).items():
        d, ci = e.get("diff_mean"), e.get("ci95")
        diff = "" if d is None else f"{d:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")
        rows.append([arm, e.get("verdict") or e.get("role", ""), diff])
    if rows:
        out.append(
            Table(
                [
                    "arm",
                    "verdict (computed, cvfp/compare.py)",
                    f"test loss vs control [{level} CI]",
                ],
                rows,
            )
        )
    if href:
        out.append(
            Para(
                [
                    "Details: ",
                    Link("comparison report", href),
                    " (written by `python -m flows.compare`, not by this run).",
                ],
                "note",
            )
        )
    return out


def section_warnings(findings: list[Finding]) -> Section:
    s = Section("warnings", TITLES["warnings"])
    if not findings:
        return s.add(Para(["No check failed or warned."]))
    s.add(Para([f"{len(findings)} check(s) failed or warned:"]))
    return s.add(
        Table(["area", "check", "detail"], [[f.area, f.check, f.message] for f in findings])
    )


def _stage_rows(stages: Sequence[str], timing: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    rows, total = [], 0.0
    for stage in stages:
        t = timing.get(stage)
        if t is None:
            rows.append([stage, "not recorded", ""])
        else:
            total += float(t.get("seconds", 0.0))
            rows.append([stage, fmt_seconds(t.get("seconds")), t.get("finished_utc", "")])
    rows.append(["total (recorded)", fmt_seconds(total), ""])
    return rows


def section_metadata(inp: ReportInputs) -> Section:
    m, p = inp.meta, inp.params
    rev = m.git_revision + (" (working tree has uncommitted changes)" if m.git_dirty else "")
    rows = [
        ["git revision", rev],
        ["report generated (UTC)", m.generated_utc],
        ["seed", str(p.seed)],
        ["deterministic", fmt_bool(p.deterministic)],
        ["phase1.objective", inp.objective],
        ["phase1.mode / context_reset", f"{p.phase1.mode} / {p.phase1.context_reset}"],
    ]
    finished = sorted(t["finished_utc"] for t in inp.timing.values() if t.get("finished_utc"))
    if finished:
        rows.insert(2, ["last stage finished (UTC)", finished[-1]])
    params_yaml = yaml.safe_dump(
        p.model_dump(mode="json"), sort_keys=False, default_flow_style=None
    )
    return Section("metadata", TITLES["metadata"]).add(
        Table(["item", "value"], rows),
        Heading("Duration per stage"),
        Table(
            ["stage", "wall time", "finished (UTC)"],
            _stage_rows(inp.stages, inp.timing),
            "From metrics/timing/<stage>.json, written when a stage finishes.",
        ),
        Heading("Library versions"),
        Table(["library", "version"], [[k, str(v)] for k, v in m.versions.items()]),
        Heading("Parameters (effective, full)"),
        Code(params_yaml.rstrip(), "yaml"),
    )
