"""The run report (SPEC section 4 reporting rules), built from already-loaded inputs.

`build_report(inputs)` turns the metrics (typed: cvfp/*/metrics.py) into one small document model
and renders it twice: a self-contained HTML page and a Markdown file with the same tables.
No file I/O and no Prefect/DVC/GX here: `tasks/report.py` reads the files.

    inputs.py          ReportInputs and the outline (section titles)
    document.py        the document model (Section, Table, Figure, ...)
    render.py          HTML and Markdown renderers
    plots.py           matplotlib figures as PNG bytes
    findings.py        the Warnings: every failed or warning check
    headline.py        the Summary's first rows (also the Prefect cvfp-summary artifact)
    sections_run.py    Summary, Warnings, Run metadata
    sections_data.py   Data
    sections_phase1.py Phase 1 (per objective); sections_checks.py its check tables and the
                       seeds' reference figures
    sections_phase2.py Phase 2
    rule_words.py      the check rules (cvfp/phase1/rules.py: numbers) in words
Number formats are cvfp/analysis/formats.py. Wording and formats live here and in cvfp/analysis/formats.py
only, so rewording a warning reruns the report stage alone.
"""
