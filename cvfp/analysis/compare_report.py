"""The comparison report (reports/compare.html + .md) from `cvfp.analysis.compare.summarise`'s numbers:
its sections and tables. The words and number formats are cvfp/analysis/compare_words.py, the forest
plot cvfp/analysis/compare_plot.py.

Reuses the run report's document model and renderers (cvfp/analysis/report/) and the number formats
(cvfp/analysis/formats.py), so both reports look and read alike. No Prefect/DVC imports.
"""

from __future__ import annotations

from cvfp.analysis.compare_metrics import Arm, CompareMetrics, PairedStats, SeedInterval
from cvfp.analysis.compare_plot import plot_forest
from cvfp.analysis.compare_words import (
    fmt_ci,
    fmt_diff,
    fmt_level,
    fmt_p,
    fmt_rel,
    fmt_with_ci,
    verdict_lines,
)
from cvfp.analysis.formats import NA, fmt_acc, fmt_loss, fmt_ppl, interval_words
from cvfp.analysis.report.document import Figure, Heading, Para, RunMeta, Section, Table
from cvfp.analysis.report.render import render_html, render_md
from cvfp.analysis.report.rule_words import pass_rule
from cvfp.phase1.rules import TRIALS

TITLE = "CVFP comparison: control arms over seeds, on the test split"
# The trials' pass rule by its params key: the arms may set different thresholds.
_TRIAL_PASS = pass_rule(TRIALS.when[0])


def _row(name: str, role: str, e: PairedStats, ppl: float | None, c: CompareMetrics) -> list[str]:
    return [
        name,
        role,
        str(e.n_seeds or 0),
        fmt_ppl(ppl),
        fmt_with_ci(fmt_diff(e.diff_mean), fmt_ci(e.ci95, fmt_diff)),
        fmt_with_ci(NA if e.ppl_diff is None else _ppl_d(e.ppl_diff), fmt_ci(e.ppl_ci95, _ppl_d)),
        fmt_with_ci(fmt_rel(e.rel_change), fmt_ci(e.rel_ci95, fmt_rel)),
        fmt_p(e.p),
        fmt_p(e.p_holm),
        fmt_p(e.p_equiv),
        fmt_p(e.rank_p),
        NA if e.seeds_needed is None else str(e.seeds_needed),
        e.verdict or f"({interval_words(e.ppl_ci95)})",
    ]


def _ppl_d(x: float) -> str:
    return f"{x:+.2f}"


def _boot(b: SeedInterval | None) -> str:
    if b is None:
        return NA
    ci = "n/a" if b.ci95 is None else f"[{fmt_diff(b.ci95[0])}, {fmt_diff(b.ci95[1])}]"
    return f"{fmt_diff(b.diff)} {ci} ({b.conversations} conv.)"


def _steps(xs: list) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return NA
    return str(xs[0]) if len(set(xs)) == 1 else ", ".join(str(x) for x in xs)


def _pm(m: float | None, sd: float | None, digits: int = 4) -> str:
    if m is None:
        return NA
    return f"{m:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def _verdict_section(c: CompareMetrics) -> Section:
    arms, control = c.arms, c.control
    ctrl: Arm | None = arms.get(control)
    s = Section("verdict", "Verdict")
    s.add(
        Para(
            [
                f"{len(arms)} arm(s) x {len(c.seeds)} seed(s) {c.seeds}; control: {control} "
                f"(test perplexity {fmt_ppl(ctrl.test_ppl if ctrl else None)}). Metric: test "
                "loss in nats/token, paired seed by seed (arm minus control; negative = better). "
                "Computed by cvfp/analysis/compare.py (scipy.stats, statsmodels), never typed by hand."
            ]
        )
    )
    rows = [_row(a, e.role, e, e.test_ppl, c) for a, e in arms.items() if e.role != "control"] + [
        _row(b, "baseline", e, e.test_ppl, c) for b, e in c.baselines.items() if e.n_seeds
    ]
    level = fmt_level(c.alpha)
    s.add(
        Table(
            [
                "arm",
                "role",
                "seeds",
                "test ppl",
                f"Δ loss, nats/token [{level} CI]",
                f"Δ ppl [{level} CI]",
                f"relative change of ppl [{level} CI]",
                "p (paired t)",
                "p Holm",
                f"p equivalence (±{100 * c.delta_relative:g}%)",
                "p Wilcoxon",
                f"seeds for {100 * c.power:g}% power",
                "verdict",
            ],
            rows,
            f"Confirmatory arms (the Holm family: {', '.join(c.confirmatory) or 'none run'}) get "
            "a verdict word; other arms and the baselines get intervals only (in brackets, "
            "in perplexity). Baselines are paired with the CVFP model of the "
            f"{c.baselines['bigram'].source_arm if c.baselines else control} arm's experiments.",
        )
    )
    png = plot_forest(c)
    if png is not None:
        s.add(
            Figure(
                png,
                f"Per arm: mean paired difference of test loss vs {control} with its {level} "
                f"t interval over seeds (black), and each seed's {level} bootstrap interval "
                "over test conversations (colour: data noise at a fixed seed). Shaded: "
                f"±delta = ±{c.delta:.5f} nats/token (±{100 * c.delta_relative:g}% perplexity).",
            )
        )
    s.add(Table(["verdict (computed)"], [[line] for line in verdict_lines(c)]))
    s.add(
        Para(
            [
                f"Rule: better / worse: Holm-adjusted paired t-test p < {c.alpha:g} (by the sign "
                f"of the difference); equivalent: two one-sided tests p < {c.alpha:g} against "
                f"±delta, delta = ln(1 + {c.delta_relative:g}) = {c.delta:.5f} nats/token "
                f"(a {100 * c.delta_relative:g}% change of perplexity); otherwise inconclusive; "
                "fewer than 2 paired seeds: not enough seeds. 'Inconclusive' says the data "
                "allow anything in the interval, not that there is no effect. The Wilcoxon "
                "signed-rank p is shown only when the seed count lets it go below "
                f"{c.alpha:g}. docs/compare.md explains each number."
            ],
            "note",
        )
    )
    if c.missing:
        s.add(Para([f"Not run (yet), so not in the numbers: {', '.join(c.missing)}."], "note"))
    if c.failed:
        s.add(Heading("Failed experiments"))
        s.add(
            Table(
                ["experiment", "arm", "seed", "error"],
                [[f.name, f.arm, str(f.seed), f.error or ""] for f in c.failed],
            )
        )
    return s


def _per_seed_section(c: CompareMetrics) -> Section:
    t = Section("seeds", "Per seed: test numbers and bootstrap intervals over test conversations")
    rows = []
    for a, e in c.arms.items():
        boot = e.bootstrap or {}
        diffs = dict(zip([str(s) for s in e.paired_seeds or []], e.diffs or [], strict=True))
        for sd, v in e.per_seed.items():
            rows.append(
                [
                    a,
                    sd,
                    fmt_loss(v.test_loss),
                    fmt_ppl(v.test_ppl),
                    fmt_acc(v.test_acc),
                    "control" if e.role == "control" else fmt_diff(diffs.get(sd)),
                    "control" if e.role == "control" else _boot(boot.get(sd)),
                    fmt_loss(v.val_loss),
                    NA if v.best_epoch is None else str(v.best_epoch),
                    fmt_ppl(v.transformer_test_ppl),
                    fmt_ppl(v.bigram_test_ppl),
                ]
            )
    level = fmt_level(c.alpha)
    t.add(
        Table(
            [
                "arm",
                "seed",
                "test loss",
                "test ppl",
                "test acc",
                f"Δ loss vs {c.control}",
                f"bootstrap {level} CI of Δ (conversations)",
                "val loss (selection)",
                "best epoch (on val)",
                "Transformer test ppl",
                "bigram test ppl",
            ],
            rows,
            "Val chooses the epoch; every compared number is on test. The bootstrap resamples "
            "test conversations (the same ones for both models) at a fixed seed: its width is "
            "the data noise; the spread of Δ over seeds is the seed noise.",
        )
    )
    return t


def _checks_section(c: CompareMetrics) -> Section:
    s = Section("checks", "Phase 1 checks per arm")
    s.add(
        Table(
            [
                "arm",
                "Phase 1 optimizer steps",
                "first pass converged by construction",
                "convergence-trial final diff (val)",
                "effective rank (val)",
            ],
            [
                [
                    a,
                    _steps(e.phase1_steps),
                    _steps(
                        [
                            None if x is None else ("yes" if x else "no")
                            for x in e.converged_by_construction
                        ]
                    ),
                    _pm(e.trial_final_diff_mean, e.trial_final_diff_std),
                    NA
                    if e.effective_rank_val_mean is None
                    else f"{100 * e.effective_rank_val_mean:.1f}%"
                    + (
                        ""
                        if e.effective_rank_val_std is None
                        else f" ± {100 * e.effective_rank_val_std:.1f}%"
                    ),
                ]
                for a, e in c.arms.items()
            ],
            f"The convergence trials are the fixed-point check (pass if {_TRIAL_PASS}); a first "
            "parallel pass that converges by construction is not a result (SPEC 3).",
        )
    )
    return s


def _baselines_section(c: CompareMetrics) -> Section:
    b = Section("baselines", "Baselines and sanity checks")
    level = fmt_level(c.alpha)
    b.add(
        Table(
            [
                "model",
                "from arm",
                "test ppl",
                "test acc",
                f"Δ loss vs that arm's CVFP [{level} CI]",
                f"Δ ppl [{level} CI]",
                "per seed: Δ loss, bootstrap CI",
            ],
            [
                [
                    name,
                    e.source_arm,
                    fmt_ppl(e.test_ppl),
                    fmt_acc(e.test_acc_mean),
                    fmt_with_ci(fmt_diff(e.diff_mean), fmt_ci(e.ci95, fmt_diff)),
                    fmt_with_ci(
                        NA if e.ppl_diff is None else _ppl_d(e.ppl_diff), fmt_ci(e.ppl_ci95, _ppl_d)
                    ),
                    "; ".join(f"{s}: {_boot(v)}" for s, v in (e.bootstrap or {}).items()) or NA,
                ]
                for name, e in c.baselines.items()
            ],
            "Bigram and Transformer on the same split and seeds (the Transformer trains as many "
            "epochs as that arm's Phase 2 ran). Intervals only, no verdict words.",
        )
    )
    b.add(
        Table(
            [
                "arm",
                "zero C* test ppl",
                "shuffled C* test ppl",
                f"Δ loss zero vs C* [{level} CI]",
                f"Δ loss shuffled vs C* [{level} CI]",
            ],
            [
                [
                    a,
                    fmt_ppl(ab["zero_context"].test_ppl),
                    fmt_ppl(ab["shuffled_context"].test_ppl),
                    fmt_with_ci(
                        fmt_diff(ab["zero_context"].diff_mean),
                        fmt_ci(ab["zero_context"].ci95, fmt_diff),
                    ),
                    fmt_with_ci(
                        fmt_diff(ab["shuffled_context"].diff_mean),
                        fmt_ci(ab["shuffled_context"].ci95, fmt_diff),
                    ),
                ]
                for a, ab in c.ablations.items()
            ],
            "Sanity checks, not controls: the head trained with C* evaluated with C* zeroed or "
            "shuffled. A large loss rise shows the head reads C*, but also a train/eval "
            "mismatch; the context control is an arm trained without C* (no_context).",
        )
    )
    return b


def _experiments_section(c: CompareMetrics, params_text: str) -> Section:
    x = Section("experiments", "Experiments")
    x.add(
        Table(
            ["DVC experiment", "arm", "seed", "status", "wall time"],
            [
                [
                    e.name,
                    e.arm,
                    str(e.seed),
                    e.status,
                    NA if e.seconds is None else f"{e.seconds:.0f} s",
                ]
                for e in c.experiments
            ],
            "Each row is a DVC experiment: `dvc exp show` lists them; `dvc exp apply <name>` "
            "restores one into the workspace.",
        )
    )
    if params_text:
        x.add(Heading("Shared overrides"))
        x.add(Para([params_text]))
    return x


def build_compare_report(c: CompareMetrics, params_text: str = "") -> tuple[str, str]:
    """(html, md) of the comparison. params_text: the shared params/overrides, shown verbatim."""
    sections = [
        _verdict_section(c),
        _per_seed_section(c),
        _checks_section(c),
        _baselines_section(c),
    ]
    if c.experiments:
        sections.append(_experiments_section(c, params_text))
    meta = RunMeta(git_revision=c.git_revision or "unknown", generated_utc=c.generated_utc or "")
    return render_html(TITLE, sections, meta), render_md(TITLE, sections, meta, "compare.html")
