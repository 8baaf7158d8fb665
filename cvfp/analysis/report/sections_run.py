"""The sections about the run as a whole: summary, warnings and run metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from cvfp.analysis.formats import fmt_acc, fmt_bool, fmt_count, fmt_int, fmt_ppl, fmt_seconds
from cvfp.analysis.report.document import Code, Heading, Link, Para, Section, Table
from cvfp.analysis.report.findings import Finding
from cvfp.analysis.report.headline import headline_rows
from cvfp.analysis.report.inputs import TITLES, ReportInputs
from cvfp.analysis.report.rule_words import effective_rank_words, pass_text
from cvfp.phase1.metrics import IterationRow, SplitMetrics
from cvfp.phase1.rules import TRIALS


def convergence_text(m: SplitMetrics, history: Sequence[IterationRow]) -> str:
    """A split's Phase 1 convergence, labelled when the loop stopped on a rate that holds by
    construction (SPEC 3): the first parallel pass reproduces iteration 0 except at the segment
    starts, for any model. `m` is the saved model's own pass (cvfp.phase1.trainer.measure_saved_model),
    so the stopping iteration's rate comes from the history when the two differ."""
    conv = fmt_count(m.converged, m.total)
    if not m.converged_by_construction:
        return conv
    stop = fmt_count(history[-1].converged, history[-1].total) if history else conv
    text = (
        f"iteration 1 converged by construction: {stop} (the first parallel pass reproduces "
        f"iteration 0 except at the {fmt_int(m.segment_starts)} segment starts, for any model; "
        "not a result)"
    )
    return text if stop == conv else f"{text}; the saved model, after its step: {conv}"


def section_summary(inp: ReportInputs, findings: list[Finding]) -> Section:
    """The first screen: the headline rows (headline.py, the same as the Prefect summary
    artifact), then the rest of the Phase 1 / Phase 2 numbers, each labelled with its split."""
    p1, cv, bl = inp.phase1, inp.phase2.cvfp, inp.phase2.baselines
    recon = inp.objective == "reconstruction"
    tr, va = p1.train, p1.val
    (rule,) = TRIALS.when
    rows = [
        list(r)
        for r in headline_rows(
            p1.model_dump(mode="json"),
            inp.phase2.model_dump(mode="json"),
            inp.compare,
            len(findings),
            pass_text(rule, inp.params),
        )
    ]
    rows += [
        ["Phase 1 train convergence", convergence_text(tr, inp.checks.train.history)],
        ["Phase 1 val convergence", convergence_text(va, inp.checks.val.history)],
        ["Effective rank (train)", effective_rank_words(inp, "train")],
        ["Effective rank (val)", effective_rank_words(inp, "val")],
    ]
    if recon:
        rows.append(
            [
                "Phase 1 (reconstruction) val perplexity / accuracy",
                f"val: {fmt_ppl(va.ppl)} / {fmt_acc(va.acc)}",
            ]
        )
    rows += [
        [
            "Phase 2 CVFP val (selection) perplexity",
            f"val: {fmt_ppl(cv.val_ppl)} (epoch {cv.best_epoch} chosen on val)",
        ],
        ["Bigram val (selection) perplexity", f"val: {fmt_ppl(bl.bigram.val_ppl)}"],
        [
            "Transformer val (selection) perplexity",
            f"val: {fmt_ppl(bl.transformer.val_ppl)}" if bl.transformer else "not trained",
        ],
    ]
    s = Section("summary", TITLES["summary"]).add(Table(["quantity", "value"], rows))
    if inp.compare_href:
        s.add(
            Para(
                [
                    "Comparison details: ",
                    Link("comparison report", inp.compare_href),
                    " (written by `python -m flows.compare`, not by this run).",
                ],
                "note",
            )
        )
    return s


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
    rows = [
        ["seed", str(p.seed)],
        ["deterministic", fmt_bool(p.deterministic)],
        ["phase1.objective", inp.objective],
        ["phase1.mode / context_reset", f"{p.phase1.mode} / {p.phase1.context_reset}"],
    ]
    if m.generated_utc or m.git_revision != "unknown":
        rev = m.git_revision + (" (working tree has uncommitted changes)" if m.git_dirty else "")
        rows[:0] = [["git revision", rev], ["report generated (UTC)", m.generated_utc]]
    params_yaml = yaml.safe_dump(p.record(mode="json"), sort_keys=False, default_flow_style=None)
    s = Section("metadata", TITLES["metadata"]).add(Table(["item", "value"], rows))
    s.add(Heading("Duration per stage"))
    if inp.timing:
        s.add(
            Table(
                ["stage", "wall time", "finished (UTC)"],
                _stage_rows(inp.stages, inp.timing),
                "From metrics/timing/<stage>.json, written when a stage finishes.",
            )
        )
    else:
        s.add(
            Para(
                [
                    "Wall times are in metrics/timing/<stage>.json and the Prefect run, not "
                    "here: this page is a DVC output, the same bytes for the same inputs, so "
                    "`dvc exp apply` and the run-cache restore the page that goes with the "
                    "numbers (docs/report.md)."
                ],
                "note",
            )
        )
    return s.add(
        Heading("Library versions"),
        Table(["library", "version"], [[k, str(v)] for k, v in m.versions.items()]),
        Heading("Parameters (effective, full)"),
        Code(params_yaml.rstrip(), "yaml"),
    )
