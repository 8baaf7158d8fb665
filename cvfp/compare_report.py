"""The comparison report (reports/compare.html + .md) from a `cvfp.compare.summarise` dict.

Reuses the run report's document model, plot helpers and renderers (cvfp/report/) and the
number formats (cvfp/formats.py), so both reports look and read alike. No Prefect/DVC imports.
"""

from __future__ import annotations

import math

from .check_rules import TRIALS
from .compare import RULE, pm
from .formats import fmt_acc, fmt_loss, fmt_ppl
from .report.document import Figure, Heading, Para, RunMeta, Section, Table
from .report.plots import figure_axes, png_bytes
from .report.render import render_html, render_md

TITLE = "CVFP comparison: control arms over seeds"
# The trials' pass rule by its params key: the arms may set different thresholds.
_TRIAL_PASS = TRIALS.when[0].pass_rule()


def _ppl_pm(m, sd) -> str:
    return pm(m, sd, 2)


def _acc_pm(m, sd) -> str:
    if m is None:
        return "n/a"
    return f"{100 * m:.2f}%" + ("" if sd is None else f" ± {100 * sd:.2f}%")


def _steps(xs: list) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    return str(xs[0]) if len(set(xs)) == 1 else ", ".join(str(x) for x in xs)


def plot_arms(summary: dict) -> bytes:
    """Val perplexity per arm (and the Transformer): seeds as points, mean ± std as a bar."""
    cols = [(a, e["per_seed"], "val_ppl") for a, e in summary["arms"].items()]
    tr = summary["baselines"].get("transformer")
    if tr and tr["per_seed"]:
        src = summary["arms"][tr["source_arm"]]["per_seed"]
        cols.append(("transformer", src, "transformer_val_ppl"))
    seeds = summary["seeds"]
    fig, (ax,) = figure_axes(1, width=1.6 * len(cols) + 3.5, height=3.8)
    for x, (_name, per_seed, key) in enumerate(cols):
        pts = [(int(s), v[key]) for s, v in per_seed.items() if v.get(key) is not None]
        for s, y in pts:
            k = seeds.index(s) if s in seeds else 0
            ax.plot(
                x + 0.08 * (k - (len(seeds) - 1) / 2),
                y,
                "o",
                color=f"C{k % 10}",
                label=f"seed {s}"
                if x == 0 or not ax.get_legend_handles_labels()[1].count(f"seed {s}")
                else None,
            )
        ys = [y for _, y in pts]
        if ys:
            m = sum(ys) / len(ys)
            sd = math.sqrt(sum((y - m) ** 2 for y in ys) / (len(ys) - 1)) if len(ys) > 1 else 0.0
            ax.errorbar(x + 0.3, m, yerr=sd, fmt="_", color="black", capsize=4, ms=14)
    ax.set_xticks(range(len(cols)), [c[0] for c in cols])
    ax.set(
        title="Phase 2 val perplexity per arm (points: seeds; black: mean ± std)",
        ylabel="val perplexity",
    )
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return png_bytes(fig)


def build_compare_report(summary: dict, params_text: str = "") -> tuple[str, str]:
    """(html, md) of the comparison. params_text: the shared params/overrides, shown verbatim."""
    arms, control = summary["arms"], summary["control"]
    seeds = summary["seeds"]

    s = Section("verdict", "Verdict")
    s.add(
        Para(
            [
                f"{len(arms)} arm(s) x {len(seeds)} seed(s) {seeds}; control arm: {control}. "
                "Computed from the numbers below by cvfp/compare.py, never typed by hand."
            ]
        )
    )
    s.add(
        Table(
            ["comparison", "verdict"],
            [[a, e["verdict"]] for a, e in arms.items()]
            + [[b, e["verdict"]] for b, e in summary["baselines"].items()],
        )
    )
    s.add(
        Para(
            [
                f"Rule: {RULE}. With 3 seeds |mean| > std means t > 1.73, a lenient bar: a "
                "'better' or 'worse' says 'run more seeds', not 'proven' (t is in the table below)."
            ],
            "note",
        )
    )
    if summary.get("missing"):
        s.add(
            Para(
                [f"Not run (yet), so not in the numbers: {', '.join(summary['missing'])}."], "note"
            )
        )
    if summary["failed"]:
        s.add(Heading("Failed experiments"))
        s.add(
            Table(
                ["experiment", "arm", "seed", "error"],
                [
                    [f["name"], f["arm"], str(f["seed"]), f.get("error") or ""]
                    for f in summary["failed"]
                ],
            )
        )

    t = Section("arms", "Arms: Phase 2 val perplexity and accuracy over seeds")
    rows = []
    for a, e in arms.items():
        p = e.get("paired") or {}
        vt = e.get("vs_transformer") or {}
        rows.append(
            [
                a,
                ", ".join(f"{k}={v}" for k, v in e["overrides"].items()) or "(defaults)",
                str(len(e["seeds"])),
                _ppl_pm(e["val_ppl_mean"], e["val_ppl_std"]),
                _acc_pm(e["val_acc_mean"], e["val_acc_std"]),
                "control" if not p else _ppl_pm(p.get("mean"), p.get("std")),
                "n/a" if not p or p.get("t") is None else f"{p['t']:.2f}",
                _ppl_pm(vt.get("mean"), vt.get("std")),
                _steps(e["phase1_steps"]),
            ]
        )
    t.add(
        Table(
            [
                "arm",
                "overrides",
                "seeds",
                "val ppl (mean ± std)",
                "val acc",
                f"paired diff vs {control}",
                "t",
                "paired diff vs Transformer",
                "Phase 1 steps",
            ],
            rows,
            "Differences are arm minus reference, per seed, then mean ± std over seeds "
            "(negative = lower perplexity = better).",
        )
    )
    t.add(
        Figure(
            plot_arms(summary),
            "Val perplexity per arm; each point one seed, black bar mean ± std. "
            "The bigram baseline is in the table below (off this scale).",
        )
    )
    t.add(Heading("Per seed"))
    per = []
    for a, e in arms.items():
        for sd, v in e["per_seed"].items():
            per.append(
                [
                    a,
                    sd,
                    fmt_ppl(v.get("val_ppl")),
                    fmt_acc(v.get("val_acc")),
                    str(v.get("phase1_steps")),
                    "yes" if v.get("converged_by_construction") else "no",
                    fmt_loss(v.get("trial_final_diff")),
                    str(v.get("trial_verdict")),
                    "n/a"
                    if v.get("effective_rank_val") is None
                    else f"{100 * v['effective_rank_val']:.1f}%",
                    fmt_ppl(v.get("transformer_val_ppl")),
                    fmt_ppl(v.get("bigram_val_ppl")),
                ]
            )
    t.add(
        Table(
            [
                "arm",
                "seed",
                "val ppl",
                "val acc",
                "Phase 1 steps",
                "converged by construction",
                "trial final diff (val)",
                "trial verdict",
                "effective rank (val)",
                "Transformer val ppl",
                "bigram val ppl",
            ],
            per,
        )
    )

    c = Section("checks", "Phase 1 checks per arm")
    c.add(
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
                    _steps(e["phase1_steps"]),
                    _steps(["yes" if x else "no" for x in e["converged_by_construction"]]),
                    pm(e["trial_final_diff_mean"], e["trial_final_diff_std"], 4),
                    "n/a"
                    if e["effective_rank_val_mean"] is None
                    else f"{100 * e['effective_rank_val_mean']:.1f}%"
                    + (
                        ""
                        if e["effective_rank_val_std"] is None
                        else f" ± {100 * e['effective_rank_val_std']:.1f}%"
                    ),
                ]
                for a, e in arms.items()
            ],
            f"The convergence trials are the fixed-point check (pass if {_TRIAL_PASS}); a first "
            "parallel pass that converges by construction is not a result (SPEC 3).",
        )
    )

    b = Section("baselines", "Baselines and ablations")
    b.add(
        Table(
            [
                "model",
                "from arm",
                "val ppl (mean ± std)",
                "val acc",
                "paired diff vs that arm's CVFP",
                "verdict",
            ],
            [
                [
                    name,
                    e["source_arm"],
                    _ppl_pm(e["val_ppl_mean"], e["val_ppl_std"]),
                    _acc_pm(e["val_acc_mean"], None),
                    _ppl_pm(e["paired"]["mean"], e["paired"]["std"]),
                    e["paired"]["verdict"],
                ]
                for name, e in summary["baselines"].items()
            ],
            "Bigram and Transformer on the same split and seeds (the Transformer trains as many "
            "epochs as that arm's Phase 2 ran).",
        )
    )
    b.add(
        Table(
            ["arm", "zero C* val ppl", "shuffled C* val ppl", "zero vs C*", "shuffled vs C*"],
            [
                [
                    a,
                    _ppl_pm(ab["zero_context"]["val_ppl_mean"], ab["zero_context"]["val_ppl_std"]),
                    _ppl_pm(
                        ab["shuffled_context"]["val_ppl_mean"],
                        ab["shuffled_context"]["val_ppl_std"],
                    ),
                    ab["zero_context"]["paired"]["verdict"].split(": ", 1)[-1],
                    ab["shuffled_context"]["paired"]["verdict"].split(": ", 1)[-1],
                ]
                for a, ab in summary["ablations"].items()
            ],
            "Ablations: the trained Phase 2 model with C* zeroed or shuffled; 'worse' means the "
            "model uses the contexts.",
        )
    )

    sections = [s, t, c, b]
    if summary.get("experiments"):
        x = Section("experiments", "Experiments")
        x.add(
            Table(
                ["DVC experiment", "arm", "seed", "status", "wall time"],
                [
                    [
                        e["name"],
                        e["arm"],
                        str(e["seed"]),
                        e["status"],
                        "n/a" if e.get("seconds") is None else f"{e['seconds']:.0f} s",
                    ]
                    for e in summary["experiments"]
                ],
                "Each row is a DVC experiment: `dvc exp show` lists them; `dvc exp apply <name>` "
                "restores one into the workspace.",
            )
        )
        if params_text:
            x.add(Heading("Shared overrides"))
            x.add(Para([params_text]))
        sections.append(x)
    meta = RunMeta(
        git_revision=summary.get("git_revision", "unknown"),
        generated_utc=summary.get("generated_utc", ""),
    )
    return render_html(TITLE, sections, meta), render_md(TITLE, sections, meta, "compare.html")
