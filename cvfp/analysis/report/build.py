"""`build_report`: the run report's sections, rendered to HTML and Markdown."""

from __future__ import annotations

from dataclasses import dataclass

from cvfp.analysis.formats import (
    fmt_acc,
    fmt_bool,
    fmt_count,
    fmt_er,
    fmt_int,
    fmt_loss,
    fmt_num,
    fmt_ppl,
    fmt_seconds,
)
from cvfp.analysis.report.document import Code, Figure, Heading, Link, Para, RunMeta, Section, Table
from cvfp.analysis.report.findings import Finding, collect_findings
from cvfp.analysis.report.inputs import NONE_TITLE, RECONSTRUCTION_TITLE, TITLES, ReportInputs
from cvfp.analysis.report.render import render_html, render_md
from cvfp.analysis.report.sections_checks import section_reference
from cvfp.analysis.report.sections_data import section_data
from cvfp.analysis.report.sections_phase1 import section_phase1
from cvfp.analysis.report.sections_phase2 import section_phase2
from cvfp.analysis.report.sections_run import section_metadata, section_summary, section_warnings

TITLE = "New-LLM / CVFP run report"


@dataclass
class Report:
    html: str
    md: str
    findings: list[Finding]
    sections: list[Section]


def build_report(inp: ReportInputs) -> Report:
    findings = collect_findings(inp)
    sections = [
        section_summary(inp, findings),
        section_warnings(findings),
        section_metadata(inp),
        section_data(inp),
        section_phase1(inp),
        section_reference(inp),
        section_phase2(inp),
    ]
    sections = [_without_unrecorded_times(s) for s in sections]
    return Report(
        render_html(TITLE, sections, inp.meta),
        render_md(TITLE, sections, inp.meta),
        findings,
        sections,
    )


TIME_COLUMNS = ("seconds", "training time")  # wall times: "n/a" unless recorded
TIME_ROWS = ("wall time",)


def _without_unrecorded_times(section: Section) -> Section:
    """Drop wall-time columns and rows that hold nothing but "n/a": the pipeline's report
    keeps wall times out of the page (tasks/report.py), and empty columns only add noise."""
    blocks = []
    for b in section.blocks:
        if isinstance(b, Table) and b.rows:
            drop = [
                i
                for i, h in enumerate(b.headers)
                if h in TIME_COLUMNS and all(r[i] == "n/a" for r in b.rows)
            ]
            rows = [
                r
                for r in b.rows
                if not (len(r) == 2 and any(t in r[0] for t in TIME_ROWS) and r[1] == "n/a")
            ]
            b = Table(
                [h for i, h in enumerate(b.headers) if i not in drop],
                [[c for i, c in enumerate(r) if i not in drop] for r in rows],
                b.caption,
            )
        blocks.append(b)
    return Section(section.key, section.title, blocks)


__all__ = [
    "NONE_TITLE",
    "RECONSTRUCTION_TITLE",
    "TITLES",
    "Code",
    "Figure",
    "Finding",
    "Heading",
    "Link",
    "Para",
    "Report",
    "ReportInputs",
    "RunMeta",
    "Section",
    "Table",
    "build_report",
    "fmt_acc",
    "fmt_bool",
    "fmt_count",
    "fmt_er",
    "fmt_int",
    "fmt_loss",
    "fmt_num",
    "fmt_ppl",
    "fmt_seconds",
    "render_html",
    "render_md",
]
