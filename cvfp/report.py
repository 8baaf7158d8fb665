"""The run report (SPEC section 4 reporting rules), built from already-loaded inputs.

`build_report(inputs)` turns the metrics dicts and epoch table into one small document
model (sections of paragraphs, tables, figures, code blocks) and renders it twice: a
self-contained HTML page (inline CSS, plots as base64 PNG, no scripts, no URLs) and a
Markdown file with the same tables (no images). Rendering both from one model keeps the
numbers in the two files identical.

No Prefect/DVC/GX imports here: `tasks/report.py` does all file and process I/O.
Matplotlib is used through `matplotlib.figure.Figure` (no pyplot), which draws with the
Agg canvas and leaves the process-wide backend alone.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

STAGES = ("download", "tokenize", "split", "phase1", "materialize", "phase2")

# Section titles, in order (tests check every one appears in both renderings).
TITLES = {
    "summary": "Summary",
    "warnings": "Warnings",
    "metadata": "Run metadata",
    "data": "Data",
    "phase1": "Phase 1: CVFP fixed-point learning",
    "reference": "Reference figures from the seeds",
    "phase2": "Phase 2: context-fixed token prediction",
}
# The Phase 1 section's title when phase1.objective is reconstruction (SPEC section 7).
RECONSTRUCTION_TITLE = "Phase 1: context reconstruction learning (v3)"
# ... and when it is none (SPEC 9's control arm: no Phase 1 training).
NONE_TITLE = "Phase 1: none (control: the initialised stack, no training)"

# The seeds' published effective-rank results (SPEC section 4.1). They come from the
# 768-d GPT-2 configuration on 6400 UltraChat train tokens, so they are context for our
# numbers, not a target this run claims to reach.
SEED_REFERENCE = [
    ("val", "parallel", "429/768 = 55.9%", 55.9),
    ("val", "sequential (EMA variance)", "79.4%", 79.4),
    ("train", "parallel", "~60%", 60.0),
    ("train", "sequential (EMA variance)", "89.3%", 89.3),
]


# ------------------------------------------------------------------ number formats
# One formatter per kind of number, shared by the HTML, the Markdown and the tests.


def fmt_count(converged: int, total: int) -> str:
    """Convergence as percent and count, e.g. `27.2% (1741/6400)` (same as metrics/phase1.json)."""
    pct = 100 * converged / total if total else 0.0
    return f"{pct:.1f}% ({converged}/{total})"


def fmt_er(er: float, dim: int) -> str:
    """Effective rank as `627.29/768 = 81.7%`."""
    return f"{er:.2f}/{dim} = {100 * er / dim:.1f}%" if dim else f"{er:.2f}/0"


def fmt_loss(x: Any) -> str:
    """Losses as raw numbers (no normalisation), 6 significant digits."""
    return "n/a" if x is None else f"{float(x):.6g}"


def fmt_num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    return f"{float(x):.{digits}g}"


def fmt_ppl(x: Any) -> str:
    if x is None:
        return "n/a"
    x = float(x)
    return f"{x:.2f}" if math.isfinite(x) else str(x)


def fmt_acc(x: Any) -> str:
    """Accuracy (a fraction in the metrics) as a percent."""
    return "n/a" if x is None else f"{100 * float(x):.2f}%"


def fmt_int(x: Any) -> str:
    return "n/a" if x is None else f"{int(x):,}"


def fmt_seconds(x: Any) -> str:
    if x is None:
        return "n/a"
    x = float(x)
    if x < 1:  # e.g. the bigram fit (milliseconds): keep 3 digits
        return f"{x:.3g} s"
    return f"{x:.2f} s" if x < 10 else f"{x:.1f} s"


def fmt_bool(x: Any) -> str:
    return "n/a" if x is None else ("yes" if x else "no")


# ------------------------------------------------------------------ document model


@dataclass
class Link:
    text: str
    href: str  # local relative paths or #anchors only


@dataclass
class Para:
    parts: list  # str | Link
    kind: str = ""  # "", "note" or "ref" (styling only)


@dataclass
class Heading:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    png: bytes
    caption: str


@dataclass
class Code:
    text: str
    lang: str = ""


@dataclass
class Section:
    key: str
    blocks: list = field(default_factory=list)
    name: str = ""  # overrides TITLES[key] (e.g. Phase 1 of another objective)

    @property
    def title(self) -> str:
        return self.name or TITLES[self.key]

    def add(self, *blocks) -> Section:
        self.blocks.extend(blocks)
        return self


@dataclass
class Finding:
    """One failed or warning check, with the number that triggered it."""

    area: str
    check: str
    message: str


@dataclass
class ReportInputs:
    params: dict  # full effective params (Params.model_dump())
    meta: dict  # git_revision, git_dirty, generated_utc, versions, ...
    timing: dict  # stage -> {"seconds", "finished_utc"} (missing = not recorded)
    data: dict  # metrics/data.json
    gx: dict  # data/split/gx/validation.json
    gx_docs_href: str | None  # relative link from reports/ to the data docs, if present
    phase1: dict  # metrics/phase1.json
    checks: dict  # cache/phase1/checks.json
    phase2: dict  # metrics/phase2.json
    phase2_epochs: list[dict]  # plots/phase2_epochs.csv rows
    compare: dict | None = None  # metrics/compare.json when a comparison exists (cvfp/compare.py)
    compare_href: str | None = None  # relative link from reports/ to compare.html


@dataclass
class Report:
    html: str
    md: str
    findings: list[Finding]
    sections: list[Section]


# ------------------------------------------------------------------ plots


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # No Software/date metadata: the same numbers give the same bytes.
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _figure(ncols: int, width: float = 11.0, height: float = 3.4):
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height))
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    fig.set_layout_engine("constrained")
    return fig, axes


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            xs.append(r.get("iteration", r.get("epoch")))
            ys.append(float(v))
    return xs, ys


def plot_phase1_history(train: list[dict], val: list[dict], min_ratio: float | None) -> bytes:
    fig, (ax_c, ax_l) = _figure(2)
    for name, rows, style in (("train", train, "-o"), ("val", val, "--s")):
        xs, ys = _series(rows, "convergence_rate")
        ax_c.plot(xs, [100 * y for y in ys], style, label=name)
    if min_ratio is not None:
        ax_c.axhline(
            100 * min_ratio,
            color="grey",
            lw=0.8,
            ls=":",
            label=f"min_converged_ratio {100 * min_ratio:.0f}%",
        )
    ax_c.set(
        title="Convergence rate per iteration",
        xlabel="iteration",
        ylabel="converged tokens (%)",
        ylim=(-2, 102),
    )
    ax_c.legend(fontsize=8)
    for key, color in (("cvfp_loss", "C0"), ("diversity_loss", "C1"), ("total_loss", "C2")):
        xs, ys = _series(train, key)
        ax_l.plot(xs, ys, "-o", color=color, label=f"train {key}")
        xs, ys = _series(val, key)
        ax_l.plot(xs, ys, "--s", color=color, alpha=0.6, label=f"val {key}")
    ax_l.axhline(0, color="grey", lw=0.6)
    # Same iteration axis on both panels (a single loss point would otherwise get a 0.96..1.04 axis).
    last = max([r.get("iteration", 0) for r in train + val] or [1])
    for ax in (ax_c, ax_l):
        ax.set_xlim(-0.3, max(last, 1) + 0.3)
    ax_l.set(title="Phase 1 losses per iteration (raw)", xlabel="iteration", ylabel="loss")
    ax_l.legend(fontsize=7, ncol=2)
    for ax in (ax_c, ax_l):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    return _png(fig)


def plot_reconstruction(epochs: list[dict]) -> bytes:
    """Phase 1 objective `reconstruction`: token and reconstruction loss, val perplexity and
    accuracy per epoch (train = running averages over the epoch, val = a full pass after it)."""
    fig, axes = _figure(3, width=12.0)
    ax_l, ax_p, ax_a = axes
    for key, color in (("token_loss", "C0"), ("recon_loss", "C1")):
        for split, style in (("train", "-o"), ("val", "--s")):
            xs, ys = _series(epochs, f"{split}_{key}")
            ax_l.plot(
                xs,
                ys,
                style,
                color=color,
                alpha=1.0 if split == "train" else 0.7,
                label=f"{split} {key}",
            )
    ax_l.set(title="Token (CE) and reconstruction (MSE) loss", xlabel="epoch", ylabel="loss")
    for split, style in (("train", "-o"), ("val", "-s")):
        xs, ys = _series(epochs, f"{split}_ppl")
        ax_p.plot(xs, ys, style, label=split)
        xs, ys = _series(epochs, f"{split}_acc")
        ax_a.plot(xs, [100 * y for y in ys], style, label=split)
    ax_p.set_yscale("log")
    ax_p.set(title="perplexity (log)", xlabel="epoch")
    ax_a.set(title="next-token accuracy (%)", xlabel="epoch")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


def plot_spectrum(spectra: dict[str, list[float]]) -> bytes:
    fig, (ax,) = _figure(1, width=7.5, height=3.6)
    for name, sv in spectra.items():
        if sv and sv[0] > 0:
            ax.plot(range(1, len(sv) + 1), [max(s / sv[0], 1e-12) for s in sv], label=name)
    ax.set_yscale("log")
    ax.set(
        title="Singular value spectrum of the contexts",
        xlabel="index i",
        ylabel="sigma_i / sigma_1 (log)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_phase2(epochs: list[dict], best_epoch: int | None, refs: dict[str, dict]) -> bytes:
    fig, axes = _figure(3, width=12.0)
    panels = (
        ("loss", "cross-entropy", False),
        ("ppl", "perplexity (log)", True),
        ("acc", "next-token accuracy (%)", False),
    )
    for ax, (key, label, logy) in zip(axes, panels, strict=True):
        scale = 100.0 if key == "acc" else 1.0
        for split, style in (("train", "-o"), ("val", "-s")):
            xs, ys = _series(epochs, f"{split}_{key}")
            ax.plot(xs, [scale * y for y in ys], style, label=f"CVFP {split}")
        # Baselines' val numbers as horizontal lines, so the curve reads against them.
        for (name, r), color in zip(refs.items(), ("C3", "C4", "C5", "C6"), strict=False):
            v = r.get(f"val_{key}")
            if v is not None and math.isfinite(float(v)):
                ax.axhline(scale * float(v), color=color, ls="--", lw=1, label=f"{name} val")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls=":", lw=1, label=f"best epoch {best_epoch}")
        if logy:
            ax.set_yscale("log")
        ax.set(title=label, xlabel="epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


# ------------------------------------------------------------------ findings (warnings)


def collect_findings(inp: ReportInputs) -> list[Finding]:
    """Every failed or warning check, each message carrying its number and threshold."""
    out: list[Finding] = []
    p = inp.params
    c = p.get("checks", {})
    add = lambda area, check, msg: out.append(Finding(area, check, msg))  # noqa: E731

    d = inp.data
    if d.get("val_subset_ok") is False:
        add(
            "data",
            "val_subset_ok",
            f"val_subset_ok is false: {d.get('unexpected_val_tokens', 'n/a')} "
            f"val token(s) do not occur in train",
        )
    elif d.get("unexpected_val_tokens"):
        add(
            "data",
            "unexpected_val_tokens",
            f"{d['unexpected_val_tokens']} val token(s) not in train",
        )
    gx_stats = inp.gx.get("statistics", {})
    if inp.gx.get("success") is False or d.get("gx_success") is False:
        failed = [
            r.get("expectation_config", {}).get("type", "?")
            for r in inp.gx.get("results", [])
            if not r.get("success", True)
        ]
        add(
            "data",
            "great_expectations",
            f"Great Expectations suite failed: {gx_stats.get('successful_expectations', '?')}/"
            f"{gx_stats.get('evaluated_expectations', '?')} expectations passed"
            + (f" (failed: {', '.join(failed)})" if failed else ""),
        )

    min_ratio = p.get("phase1", {}).get("min_converged_ratio")
    recon = _objective(inp) == "reconstruction"
    for split in ("train", "val"):
        m = inp.phase1.get(split, {})
        area = f"phase1 {split}"
        rate = m.get("convergence_rate")
        if min_ratio is not None and rate is not None and rate < min_ratio:
            after = (
                f"after {m.get('iterations', '?')} passes without training (objective reconstruction)"
                if recon
                else f"after {inp.phase1.get('iterations_text', '?')} iterations"
            )
            add(
                area,
                "min_converged_ratio",
                f"convergence {m.get('convergence', fmt_num(rate))} is below min_converged_ratio "
                f"{100 * min_ratio:.1f}% {after}",
            )
        if m.get("skipped_steps"):
            add(
                area,
                "skipped_steps",
                f"{m['skipped_steps']} optimizer step(s) skipped (NaN/Inf loss)",
            )
        for k in ("cvfp_loss", "diversity_loss", "total_loss") + (
            ("token_loss", "recon_loss") if recon else ()
        ):
            v = m.get(k)
            if v is not None and not math.isfinite(float(v)):
                add(area, k, f"final {k} is {v}")
        g = m.get("degeneracy", {})
        if g.get("global_attractor"):
            add(
                area,
                "global_attractor",
                f"global attractor: mean pairwise L2 {fmt_num(g.get('mean_pairwise_l2'))} < 0.1 and "
                f"mean cosine {fmt_num(g.get('mean_pairwise_cosine'))} > 0.99",
            )
        if g.get("zero_solution"):
            add(
                area,
                "zero_solution",
                f"zero solution: mean context norm {fmt_num(g.get('mean_norm'))} < 0.1",
            )
        i = m.get("identity", {})
        if i.get("not_near_zero") is False:
            add(
                area,
                "not_near_zero",
                f"contexts near their mean: mean deviation "
                f"{fmt_num(i.get('mean_deviation_from_mean'))} <= 0.1",
            )
        if i.get("identity_warning"):
            add(
                area,
                "identity_warning",
                f"identity mapping: input/output context cosine "
                f"{fmt_num(i.get('input_output_cosine'))} > {c.get('identity_warn', 0.95)}",
            )
        if i.get("ignores_tokens_warning"):
            add(
                area,
                "ignores_tokens_warning",
                f"ignores tokens: different-token output similarity "
                f"{fmt_num(i.get('different_token_output_similarity'))} > {c.get('ignores_tokens_warn', 0.999)}",
            )
        if i.get("context_equals_token_warning"):
            add(
                area,
                "context_equals_token_warning",
                f"context equals token embedding: cosine "
                f"{fmt_num(i.get('context_token_cosine'))} >= 0.95",
            )
        t = m.get("trials")
        if t:
            if t.get("passed") is False:
                add(
                    area,
                    "convergence_trials",
                    f"convergence trials not passed: final diff "
                    f"{fmt_loss(t.get('final_diff'))} >= {c.get('convergence_final_diff', 'threshold')} "
                    f"(verdict {t.get('verdict', '?')})",
                )
            if t.get("verdict") in ("DIVERGING", "UNSTABLE"):
                add(
                    area,
                    "verdict",
                    f"trial verdict {t['verdict']}: slope {fmt_num(t.get('slope'))}, "
                    f"std {fmt_num(t.get('std'))}",
                )

    cv, bl = inp.phase2.get("cvfp", {}), inp.phase2.get("baselines", {})
    ppl = cv.get("val_ppl")
    if ppl is not None and not math.isfinite(float(ppl)):
        add("phase2", "val_ppl", f"CVFP val perplexity is {ppl}")
    big = bl.get("bigram", {}).get("val_ppl")
    if ppl is not None and big is not None and float(ppl) > float(big):
        add(
            "phase2",
            "worse_than_bigram",
            f"CVFP val perplexity {fmt_ppl(ppl)} is worse than the "
            f"bigram baseline's {fmt_ppl(big)}",
        )
    # If removing C* does not hurt, the head is not using the fixed contexts.
    for name, label in (("zero_context", "zero C*"), ("shuffled_context", "shuffled C*")):
        a = inp.phase2.get("ablations", {}).get(name, {}).get("val_ppl")
        if ppl is not None and a is not None and float(a) <= float(ppl):
            add(
                "phase2",
                f"ablation_{name}",
                f"{label} val perplexity {fmt_ppl(a)} is not worse than "
                f"with C* ({fmt_ppl(ppl)}): the model does not use the fixed contexts",
            )
    tr = bl.get("transformer", {})
    tol = p.get("baselines", {}).get("param_tolerance")
    ratio = tr.get("param_ratio")
    if ratio is None and tr.get("trainable_params") and cv.get("trainable_params"):
        ratio = tr["trainable_params"] / cv["trainable_params"]
    if tol is not None and ratio is not None and abs(ratio - 1) > tol:
        add(
            "phase2",
            "param_tolerance",
            f"Transformer baseline has {fmt_int(tr.get('trainable_params'))} "
            f"trainable parameters vs CVFP's {fmt_int(cv.get('trainable_params'))} (ratio {ratio:.3f}, "
            f"tolerance {tol:.0%})",
        )
    return out


# ------------------------------------------------------------------ sections


def _objective(inp: ReportInputs) -> str:
    """Which Phase 1 objective ran (`phase1.objective` once the schema has it, else cvfp)."""
    return inp.meta.get("phase1_objective") or (inp.params.get("phase1") or {}).get(
        "objective", "cvfp"
    )


def _stage_rows(timing: dict) -> list[list[str]]:
    rows, total = [], 0.0
    for stage in STAGES:
        t = timing.get(stage)
        if t is None:
            rows.append([stage, "not recorded", ""])
        else:
            total += float(t.get("seconds", 0.0))
            rows.append([stage, fmt_seconds(t.get("seconds")), t.get("finished_utc", "")])
    rows.append(["total (recorded)", fmt_seconds(total), ""])
    return rows


def _history_rows(rows: list[dict]) -> list[list[str]]:
    return [
        [
            str(r.get("iteration")),
            fmt_count(r.get("converged", 0), r.get("total", 0)),
            fmt_loss(r.get("cvfp_loss")),
            fmt_loss(r.get("diversity_loss")),
            fmt_loss(r.get("total_loss")),
            str(r.get("steps", "")),
            str(r.get("skipped_steps", "")),
            fmt_seconds(r.get("seconds")),
        ]
        for r in rows
    ]


HISTORY_HEADERS = [
    "iteration",
    "converged",
    "CVFP loss",
    "diversity loss",
    "total loss",
    "steps",
    "skipped steps",
    "seconds",
]


def _er_text(m: dict, chk: dict) -> str:
    er = chk.get("effective_rank", {})
    if m.get("effective_rank_text"):
        return m["effective_rank_text"]
    if er.get("text"):
        return er["text"]
    if "effective_rank" in er and "dim" in er:
        return fmt_er(er["effective_rank"], er["dim"])
    return "n/a"


def convergence_text(m: dict, history: list[dict] | None = None) -> str:
    """A split's Phase 1 convergence, labelled when the loop stopped on a rate that holds by
    construction (SPEC 3): the first parallel pass reproduces iteration 0 except at the segment
    starts, for any model. `m["convergence"]` is the saved model's own pass (phase1_guard), so
    the stopping iteration's rate comes from the history when the two differ."""
    conv = m.get("convergence", "n/a")
    if not m.get("converged_by_construction"):
        return conv
    starts = m.get("segment_starts")
    where = "the segment starts" if starts is None else f"the {fmt_int(starts)} segment starts"
    last = (history or [{}])[-1]
    stop = (
        f"{100 * last['convergence_rate']:.1f}% ({last['converged']}/{last['total']})"
        if "convergence_rate" in last
        else conv
    )
    text = (
        f"iteration 1 converged by construction: {stop} (the first parallel pass reproduces "
        f"iteration 0 except at {where}, for any model; not a result)"
    )
    return text if stop == conv else f"{text}; the saved model, after its step: {conv}"


def fixed_point_text(trials: dict | None, threshold: Any) -> str:
    """The val convergence trials (SPEC 4.4), the real fixed-point check, in one line."""
    if not trials:
        return "no convergence trials recorded"
    ok = trials.get("passed")
    return (
        f"{'PASSED' if ok else 'NOT PASSED' if ok is False else 'n/a'}: final diff "
        f"{fmt_loss(trials.get('final_diff'))} (pass if < {threshold}), verdict "
        f"{trials.get('verdict', 'n/a')}"
    )


def section_summary(inp: ReportInputs, findings: list[Finding]) -> Section:
    p1, cv, bl = inp.phase1, inp.phase2.get("cvfp", {}), inp.phase2.get("baselines", {})
    recon = _objective(inp) == "reconstruction"
    tr, va = p1.get("train", {}), p1.get("val", {})
    steps = tr.get("steps")
    rows = [
        ["Phase 1 objective", _objective(inp)],
        ["Phase 1 training" if recon else "Phase 1 iterations", p1.get("iterations_text", "n/a")],
        ["Phase 1 optimizer steps", "not recorded" if steps is None else fmt_int(steps)],
        [
            "Fixed-point check (val convergence trials)",
            fixed_point_text(
                va.get("trials"), inp.params.get("checks", {}).get("convergence_final_diff", "n/a")
            ),
        ],
        [
            "Phase 1 train convergence",
            convergence_text(tr, inp.checks.get("train", {}).get("history")),
        ],
        ["Phase 1 val convergence", convergence_text(va, inp.checks.get("val", {}).get("history"))],
        ["Effective rank train", _er_text(tr, inp.checks.get("train", {}))],
        ["Effective rank val", _er_text(va, inp.checks.get("val", {}))],
    ]
    if recon:
        va = p1.get("val", {})
        rows.append(
            [
                "Phase 1 (reconstruction) val perplexity / accuracy",
                f"{fmt_ppl(va.get('ppl'))} / {fmt_acc(va.get('acc'))}",
            ]
        )
    rows += [
        [
            "Phase 2 CVFP val perplexity",
            f"{fmt_ppl(cv.get('val_ppl'))} (best epoch {cv.get('best_epoch', 'n/a')})",
        ],
        ["Bigram val perplexity", fmt_ppl(bl.get("bigram", {}).get("val_ppl"))],
        ["Transformer val perplexity", fmt_ppl(bl.get("transformer", {}).get("val_ppl"))],
        ["Warnings", str(len(findings))],
    ]
    s = Section("summary").add(Table(["quantity", "value"], rows))
    if inp.compare or inp.compare_href:
        s.add(Heading("Comparison over seeds (controls)"))
        verdicts = [
            a["verdict"] for a in (inp.compare or {}).get("arms", {}).values() if a.get("verdict")
        ]
        if verdicts:
            s.add(Table(["verdict (computed, cvfp/compare.py)"], [[v] for v in verdicts]))
        if inp.compare_href:
            s.add(
                Para(
                    [
                        "Details: ",
                        Link("comparison report", inp.compare_href),
                        " (written by `python -m flows.compare`, not by this run).",
                    ],
                    "note",
                )
            )
    return s


def section_warnings(findings: list[Finding]) -> Section:
    s = Section("warnings")
    if not findings:
        return s.add(Para(["No check failed or warned."]))
    s.add(Para([f"{len(findings)} check(s) failed or warned:"]))
    return s.add(
        Table(["area", "check", "detail"], [[f.area, f.check, f.message] for f in findings])
    )


def section_metadata(inp: ReportInputs) -> Section:
    m, p = inp.meta, inp.params
    rev = m.get("git_revision", "unknown")
    if m.get("git_dirty"):
        rev += " (working tree has uncommitted changes)"
    rows = [
        ["git revision", rev],
        ["report generated (UTC)", m.get("generated_utc", "n/a")],
        ["seed", str(p.get("seed", "n/a"))],
        ["deterministic", fmt_bool(p.get("deterministic"))],
        ["phase1.objective", _objective(inp)],
        [
            "phase1.mode / context_reset",
            f"{p.get('phase1', {}).get('mode', 'n/a')} / {p.get('phase1', {}).get('context_reset', 'n/a')}",
        ],
    ]
    finished = sorted(t["finished_utc"] for t in inp.timing.values() if t.get("finished_utc"))
    if finished:
        rows.insert(2, ["last stage finished (UTC)", finished[-1]])
    versions = m.get("versions", {})
    return Section("metadata").add(
        Table(["item", "value"], rows),
        Heading("Duration per stage"),
        Table(
            ["stage", "wall time", "finished (UTC)"],
            _stage_rows(inp.timing),
            "From metrics/timing/<stage>.json, written when a stage finishes.",
        ),
        Heading("Library versions"),
        Table(["library", "version"], [[k, str(v)] for k, v in versions.items()]),
        Heading("Parameters (effective, full)"),
        Code(yaml.safe_dump(p, sort_keys=False, default_flow_style=None).rstrip(), "yaml"),
    )


def section_data(inp: ReportInputs) -> Section:
    d, gx = inp.data, inp.gx
    s = Section("data")
    s.add(
        Para(
            [
                f"Source {d.get('source', 'n/a')}, {fmt_int(d.get('raw_conversations'))} raw conversations, "
                f"tokenizer {d.get('tokenizer_kind', 'n/a')}, max_seq_length {d.get('max_seq_length', 'n/a')} "
                f"({fmt_int(d.get('truncated_conversations'))} conversations truncated), split strategy "
                f"{d.get('split_strategy', 'n/a')} with val_fraction {d.get('val_fraction', 'n/a')}."
            ]
        )
    )
    s.add(
        Table(
            ["split", "conversations", "tokens", "unique tokens"],
            [
                [
                    sp,
                    fmt_int(d.get(f"{sp}_conversations")),
                    fmt_int(d.get(f"{sp}_tokens")),
                    fmt_int(d.get(f"{sp}_unique_tokens")),
                ]
                for sp in ("train", "val")
            ],
        )
    )
    s.add(
        Table(
            ["item", "value"],
            [
                ["vocabulary size", fmt_int(d.get("vocab_size"))],
                [
                    "val tokens not in train (unexpected_val_tokens)",
                    fmt_int(d.get("unexpected_val_tokens")),
                ],
                [
                    "val token set is a subset of train (val_subset_ok)",
                    fmt_bool(d.get("val_subset_ok")),
                ],
                [
                    "val tokens dropped with their conversations",
                    fmt_int(d.get("val_dropped_tokens")),
                ],
            ],
        )
    )
    dropped = d.get("dropped_conversations") or {}
    s.add(Heading("Dropped conversations by reason"))
    if dropped:
        s.add(
            Table(
                ["reason", "conversations"],
                [[k, fmt_int(v)] for k, v in dropped.items()]
                + [["total", fmt_int(sum(dropped.values()))]],
            )
        )
    else:
        s.add(Para(["None recorded."]))

    s.add(Heading("Great Expectations"))
    st = gx.get("statistics", {})
    ok = gx.get("success", d.get("gx_success"))
    s.add(
        Para(
            [
                f"Suite {gx.get('suite_name', 'n/a')}: {'PASSED' if ok else 'FAILED'}, "
                f"{st.get('successful_expectations', d.get('gx_expectations_successful', 'n/a'))}/"
                f"{st.get('evaluated_expectations', d.get('gx_expectations_evaluated', 'n/a'))} "
                f"expectations successful."
            ]
        )
    )
    rows = []
    for r in gx.get("results", []):
        cfg, res = r.get("expectation_config", {}), r.get("result", {})
        column = cfg.get("kwargs", {}).get("column") or "(table)"
        observed = res.get("observed_value", res.get("element_count"))
        rows.append(
            [
                cfg.get("type", "?"),
                str(column),
                "pass" if r.get("success") else "FAIL",
                fmt_int(observed) if isinstance(observed, (int, float)) else str(observed),
                fmt_int(res.get("unexpected_count")) if "unexpected_count" in res else "n/a",
            ]
        )
    if rows:
        s.add(Table(["expectation", "column", "result", "observed / rows", "unexpected"], rows))
    if inp.gx_docs_href:
        s.add(Para(["Data docs: ", Link("Great Expectations data docs (local)", inp.gx_docs_href)]))
    else:
        s.add(Para(["Data docs were not found next to the validation result."], "note"))
    return s


def section_phase1(inp: ReportInputs) -> Section:
    p1, chk, params = inp.phase1, inp.checks, inp.params
    pp = params.get("phase1", {})
    hist = {sp: chk.get(sp, {}).get("history", []) for sp in ("train", "val")}
    recon = _objective(inp) == "reconstruction"
    s = Section(
        "phase1",
        name=RECONSTRUCTION_TITLE if recon else (NONE_TITLE if _objective(inp) == "none" else ""),
    )
    mr = pp.get("min_converged_ratio")
    tr, va = p1.get("train", {}), p1.get("val", {})
    if recon:
        rp = pp.get("reconstruction", {})
        s.add(
            Table(
                ["item", "value"],
                [
                    ["objective", _objective(inp)],
                    [
                        "loss",
                        f"CE(next token) + {rp.get('recon_weight', 'lambda')} * MSE(decoder(new context), "
                        "concat(previous context, token embedding))",
                    ],
                    ["epochs completed", p1.get("iterations_text", "n/a")],
                    [
                        "truncated BPTT chunk / conversations per batch / lr",
                        f"{rp.get('chunk_length', 'n/a')} positions / {rp.get('batch_conversations', 'n/a')} / "
                        f"{rp.get('lr', 'n/a')}",
                    ],
                    [
                        "final train token loss / reconstruction loss / total",
                        f"{fmt_loss(tr.get('token_loss'))} / {fmt_loss(tr.get('recon_loss'))} / {fmt_loss(tr.get('loss'))}",
                    ],
                    [
                        "final val token loss / reconstruction loss / total",
                        f"{fmt_loss(va.get('token_loss'))} / {fmt_loss(va.get('recon_loss'))} / {fmt_loss(va.get('loss'))}",
                    ],
                    [
                        "final train perplexity / accuracy",
                        f"{fmt_ppl(tr.get('ppl'))} / {fmt_acc(tr.get('acc'))}",
                    ],
                    [
                        "final val perplexity / accuracy",
                        f"{fmt_ppl(va.get('ppl'))} / {fmt_acc(va.get('acc'))}",
                    ],
                    ["skipped optimizer steps (train)", str(tr.get("skipped_steps", "n/a"))],
                    ["train wall time", fmt_seconds(p1.get("train_seconds"))],
                ],
            )
        )
        s.add(
            Para(
                [
                    "Final numbers: one pass per split from a zero context per conversation after "
                    "training (the contexts are C*). Seed 003's success criterion is a perplexity "
                    "below 100 (for its own 256-d setup)."
                ],
                "note",
            )
        )
        epochs = chk.get("reconstruction", {}).get("history", [])
        s.add(Heading("Reconstruction training per epoch"))
        if epochs:
            s.add(
                Figure(
                    plot_reconstruction(epochs),
                    "Train: running averages over the epoch's chunks; val: a full pass after the "
                    "epoch. Numbers in the table below.",
                )
            )
            s.add(
                Table(
                    [
                        "epoch",
                        "train token loss",
                        "train recon loss",
                        "train ppl",
                        "train acc",
                        "val token loss",
                        "val recon loss",
                        "val ppl",
                        "val acc",
                        "steps",
                        "seconds",
                    ],
                    [
                        [
                            str(r.get("epoch")),
                            fmt_loss(r.get("train_token_loss")),
                            fmt_loss(r.get("train_recon_loss")),
                            fmt_ppl(r.get("train_ppl")),
                            fmt_acc(r.get("train_acc")),
                            fmt_loss(r.get("val_token_loss")),
                            fmt_loss(r.get("val_recon_loss")),
                            fmt_ppl(r.get("val_ppl")),
                            fmt_acc(r.get("val_acc")),
                            str(r.get("steps", "")),
                            fmt_seconds(r.get("seconds")),
                        ]
                        for r in epochs
                    ],
                )
            )
        else:
            s.add(Para(["No epochs recorded."], "note"))
        s.add(Heading("Fixed-point convergence of the trained model"))
        s.add(
            Para(
                [
                    "Measured as for the cvfp objective's val split: passes with carryover, no "
                    "optimizer steps (the objective does not train for it). "
                    f"Train {tr.get('convergence', 'n/a')}, val {va.get('convergence', 'n/a')} "
                    f"(min_converged_ratio {'n/a' if mr is None else f'{100 * mr:.1f}%'})."
                ]
            )
        )
        s.add(
            Figure(
                plot_phase1_history(hist["train"], hist["val"], mr),
                "Left: converged tokens per pass. Right: raw CVFP, diversity and total losses of "
                "those passes (pass 0 has no loss). Numbers in the tables below.",
            )
        )
        s.add(Table(HISTORY_HEADERS, _history_rows(hist["train"]), "train (no optimizer steps)"))
        s.add(Table(HISTORY_HEADERS, _history_rows(hist["val"]), "val (no optimizer steps)"))
    else:
        s.add(
            Table(
                ["item", "value"],
                [
                    ["objective", _objective(inp)],
                    [
                        "mode / context_reset",
                        f"{pp.get('mode', 'n/a')} / {pp.get('context_reset', 'n/a')}",
                    ],
                    [
                        "iterations completed",
                        f"{p1.get('iterations_text', 'n/a')} (stopped early: "
                        f"{fmt_bool(tr.get('stopped_early'))})",
                    ],
                    ["optimizer steps (train)", str(tr.get("steps", "n/a"))],
                    [
                        "min_converged_ratio / min_iterations",
                        ("n/a" if mr is None else f"{100 * mr:.1f}%")
                        + f" / {pp.get('min_iterations', 0)}",
                    ],
                    ["final train convergence", convergence_text(tr, hist["train"])],
                    ["final val convergence", convergence_text(va, hist["val"])],
                    [
                        "final train losses (CVFP / diversity / total)",
                        f"{fmt_loss(tr.get('cvfp_loss'))} / {fmt_loss(tr.get('diversity_loss'))} / {fmt_loss(tr.get('total_loss'))}",
                    ],
                    ["skipped optimizer steps (train)", str(tr.get("skipped_steps", "n/a"))],
                    ["train wall time", fmt_seconds(p1.get("train_seconds"))],
                ],
            )
        )

        s.add(Heading("Convergence and losses per iteration"))
        s.add(
            Figure(
                plot_phase1_history(hist["train"], hist["val"], mr),
                "Left: converged tokens per iteration. Right: raw CVFP, diversity and total losses "
                "(iteration 0 is the no-gradient initial pass and has no loss). Numbers in the tables below.",
            )
        )
        s.add(Table(HISTORY_HEADERS, _history_rows(hist["train"]), "train"))
        s.add(
            Table(
                HISTORY_HEADERS,
                _history_rows(hist["val"]),
                "val (no optimizer steps: passes with carryover only)",
            )
        )

    s.add(Heading("Effective rank"))
    er_rows = []
    for sp in ("train", "val"):
        er = chk.get(sp, {}).get("effective_rank", {})
        actual = p1.get(sp, {}).get("actual_rank", er.get("actual_rank", "n/a"))
        er_rows.append(
            [sp, _er_text(p1.get(sp, {}), chk.get(sp, {})), f"{actual}/{er.get('dim', '?')}"]
        )
    s.add(Table(["split", "effective rank", "actual rank (S > 1e-6)"], er_rows))
    spectra = {
        sp: chk.get(sp, {}).get("effective_rank", {}).get("singular_values") or []
        for sp in ("train", "val")
    }
    if any(spectra.values()):
        s.add(
            Figure(
                plot_spectrum(spectra),
                "Singular values of the contexts, normalised by the largest (log scale).",
            )
        )
        s.add(
            Table(
                [
                    "split",
                    "sigma_1",
                    "sigma at 25%",
                    "sigma at 50%",
                    "sigma at 75%",
                    "sigma_last",
                    "sigma_last / sigma_1",
                ],
                [[sp] + _spectrum_points(sv) for sp, sv in spectra.items() if sv],
            )
        )

    s.add(Heading("Degeneracy"))
    dg = {
        sp: p1.get(sp, {}).get("degeneracy", chk.get(sp, {}).get("degeneracy", {}))
        for sp in ("train", "val")
    }
    rows = [
        ["mean pairwise L2", "global attractor if < 0.1 (and cosine > 0.99)", "mean_pairwise_l2"],
        [
            "mean pairwise cosine",
            "global attractor if > 0.99 (and L2 < 0.1)",
            "mean_pairwise_cosine",
        ],
        ["global attractor", "", "global_attractor"],
        ["mean norm", "zero solution if < 0.1", "mean_norm"],
        ["zero solution", "", "zero_solution"],
        ["norm std", "", "norm_std"],
        ["norm min", "", "norm_min"],
        ["norm max", "", "norm_max"],
        ["sparsity (share of |x| < 0.01)", "", "sparsity"],
    ]
    s.add(
        Table(
            ["statistic", "rule", "train", "val"],
            [
                [label, rule, fmt_num(dg["train"].get(k), 6), fmt_num(dg["val"].get(k), 6)]
                for label, rule, k in rows
            ],
        )
    )

    s.add(Heading("Identity-mapping probes"))
    c = params.get("checks", {})
    probes = [
        (
            "mean deviation from the mean",
            "mean_deviation_from_mean",
            "not_near_zero",
            "> 0.1",
            True,
        ),
        (
            "cosine(input context, output context)",
            "input_output_cosine",
            "identity_warning",
            f"<= {c.get('identity_warn', 0.95)}",
            False,
        ),
        (
            "similarity of outputs for different tokens",
            "different_token_output_similarity",
            "ignores_tokens_warning",
            f"<= {c.get('ignores_tokens_warn', 0.999)}",
            False,
        ),
        (
            "cosine(context, token embedding)",
            "context_token_cosine",
            "context_equals_token_warning",
            "< 0.95",
            False,
        ),
    ]
    idn = {
        sp: p1.get(sp, {}).get("identity", chk.get(sp, {}).get("identity", {}))
        for sp in ("train", "val")
    }
    prow = []
    for label, key, flag, rule, good_when_true in probes:
        cells = [label, rule]
        for sp in ("train", "val"):
            v, f = idn[sp].get(key), idn[sp].get(flag)
            if v is None:
                cells.append("n/a (dims differ)" if key == "context_token_cosine" else "n/a")
            else:
                bad = (f is False) if good_when_true else bool(f)
                cells.append(f"{fmt_num(v)} {'WARN' if bad else 'pass'}")
        prow.append(cells)
    s.add(Table(["probe", "pass if", "train", "val"], prow))

    s.add(Heading("Convergence trials (val)"))
    conv = chk.get("val", {}).get("convergence", {})
    t = va.get("trials", conv)
    losses = conv.get("losses", [])
    if losses:
        s.add(
            Table(
                ["trial", "MSE vs previous pass"],
                [[str(k + 1), fmt_loss(v)] for k, v in enumerate(losses)],
                "Trial k: MSE between the contexts of repeated pass k and pass k-1 (with carryover).",
            )
        )
    if t:
        s.add(
            Table(
                ["item", "value"],
                [
                    ["initial loss", fmt_loss(t.get("initial_loss"))],
                    ["final loss", fmt_loss(t.get("final_loss"))],
                    [
                        "reduction",
                        "n/a"
                        if t.get("reduction_percent") is None
                        else f"{t['reduction_percent']:.1f}%",
                    ],
                    ["std", fmt_loss(t.get("std"))],
                    ["linear-fit slope", fmt_loss(t.get("slope"))],
                    [
                        "final diff",
                        f"{fmt_loss(t.get('final_diff'))} (pass if < {c.get('convergence_final_diff', 'n/a')})",
                    ],
                    ["passed", fmt_bool(t.get("passed"))],
                    ["verdict", str(t.get("verdict", "n/a"))],
                ],
            )
        )
    else:
        s.add(Para(["No convergence trials were recorded."], "note"))
    return s


def _spectrum_points(sv: Sequence[float]) -> list[str]:
    n = len(sv)
    pts = [
        sv[0],
        sv[min(n - 1, n // 4)],
        sv[min(n - 1, n // 2)],
        sv[min(n - 1, 3 * n // 4)],
        sv[-1],
    ]
    return [fmt_num(v) for v in pts] + [fmt_num(sv[-1] / sv[0]) if sv[0] else "n/a"]


def section_reference(inp: ReportInputs) -> Section:
    p, p1, chk = inp.params, inp.phase1, inp.checks
    m = p.get("model", {})
    ours = {sp: _er_text(p1.get(sp, {}), chk.get(sp, {})) for sp in ("train", "val")}
    s = Section("reference")
    s.add(
        Para(
            [
                "Reference only: these effective-rank figures are reported in the seed design notes "
                "for their 768-d GPT-2 configuration (6400 UltraChat train tokens, 1280 val tokens). "
                "They are shown for orientation, not as a target this run claims to reach. This "
                f"run: context_dim {m.get('context_dim', '?')}, embedding "
                f"{m.get('embedding', '?')}, data {p.get('data', {}).get('source', '?')}, "
                f"mode {p.get('phase1', {}).get('mode', '?')})."
            ],
            "ref",
        )
    )
    same = _objective(inp) == "cvfp"  # the seeds' figures are for CVFP fixed-point learning
    rows = [
        [
            split,
            mode,
            ref,
            ours[split] if same and mode.split()[0] == p.get("phase1", {}).get("mode") else "",
        ]
        for split, mode, ref, _ in SEED_REFERENCE
    ]
    if not same:
        s.add(
            Para(
                [
                    f"This run's objective is {_objective(inp)}, not CVFP fixed-point learning, so no "
                    f"row is paired; its effective rank is train {ours['train']}, val {ours['val']}."
                ],
                "note",
            )
        )
    s.add(
        Table(
            ["split", "seed mode", "seed effective rank (reference)", "this run (same mode)"], rows
        )
    )
    return s


def section_phase2(inp: ReportInputs) -> Section:
    p2, epochs = inp.phase2, inp.phase2_epochs
    cv, bl, ab = p2.get("cvfp", {}), p2.get("baselines", {}), p2.get("ablations", {})
    s = Section("phase2")
    s.add(
        Table(
            ["item", "value"],
            [
                [
                    "best epoch (lowest val loss)",
                    f"{cv.get('best_epoch', 'n/a')} of {cv.get('epochs_run', len(epochs))} run"
                    f" (stopped early: {fmt_bool(cv.get('stopped_early'))})",
                ],
                [
                    "heads / freeze_context",
                    f"{cv.get('heads', 'n/a')} / {fmt_bool(cv.get('freeze_context'))}",
                ],
                [
                    "token head at the start",
                    "reused from Phase 1 (objective reconstruction; epoch 0 = before any "
                    "Phase 2 step)"
                    if cv.get("head_init") == "phase1"
                    else "zero-initialised",
                ],
                [
                    "val at best epoch: loss / perplexity / accuracy",
                    f"{fmt_loss(cv.get('val_loss'))} / {fmt_ppl(cv.get('val_ppl'))} / {fmt_acc(cv.get('val_acc'))}",
                ],
                [
                    "train at best epoch: loss / perplexity / accuracy",
                    f"{fmt_loss(cv.get('train_loss'))} / {fmt_ppl(cv.get('train_ppl'))} / {fmt_acc(cv.get('train_acc'))}",
                ],
                [
                    "positions train / val",
                    f"{fmt_int(cv.get('train_positions'))} / {fmt_int(cv.get('val_positions'))}",
                ],
            ]
            # heads: per_block trains in two stages (single head, then cloned per-block heads).
            + [
                [
                    f"stage {name}",
                    f"epochs {st.get('first_epoch', '?')}-{st.get('last_epoch', '?')}, best epoch "
                    f"{st.get('best_epoch', '?')}, stopped early: {fmt_bool(st.get('stopped_early'))}",
                ]
                for name, st in (cv.get("stages") or {}).items()
            ],
        )
    )

    s.add(Heading("Loss, perplexity and accuracy per epoch"))
    if epochs:
        s.add(
            Figure(
                plot_phase2(
                    epochs,
                    cv.get("best_epoch"),
                    {k: bl[k] for k in ("bigram", "transformer") if k in bl},
                ),
                "CVFP Phase 2 per epoch (train and val); dashed lines: baselines' val numbers; "
                "dotted: best epoch. Numbers in the table below.",
            )
        )
        s.add(
            Table(
                [
                    "epoch",
                    "train loss",
                    "val loss",
                    "train ppl",
                    "val ppl",
                    "train acc",
                    "val acc",
                    "seconds",
                ],
                [
                    [
                        str(r.get("epoch")),
                        fmt_loss(r.get("train_loss")),
                        fmt_loss(r.get("val_loss")),
                        fmt_ppl(r.get("train_ppl")),
                        fmt_ppl(r.get("val_ppl")),
                        fmt_acc(r.get("train_acc")),
                        fmt_acc(r.get("val_acc")),
                        fmt_seconds(r.get("seconds")),
                    ]
                    for r in epochs
                ],
            )
        )
    else:
        s.add(Para(["No epochs recorded."], "note"))
    if cv.get("val_loss_per_block"):
        s.add(
            Table(
                ["block", "val loss"],
                [[str(k + 1), fmt_loss(v)] for k, v in enumerate(cv["val_loss_per_block"])],
                "Per-block heads: val loss of each block's head at the best epoch.",
            )
        )

    s.add(Heading("CVFP vs baselines"))
    models = [("CVFP (Phase 2)", cv)] + [
        (label, bl[k])
        for k, label in (("bigram", "Bigram (add-k)"), ("transformer", "Transformer (GPT-2)"))
        if k in bl
    ]
    s.add(
        Table(
            [
                "model",
                "val perplexity",
                "val accuracy",
                "val loss",
                "trainable parameters",
                "training time",
            ],
            [
                [
                    name,
                    fmt_ppl(r.get("val_ppl")),
                    fmt_acc(r.get("val_acc")),
                    fmt_loss(r.get("val_loss")),
                    fmt_int(r.get("trainable_params")),
                    fmt_seconds(r.get("train_seconds")),
                ]
                for name, r in models
            ],
            "Same train/val tokens and next-token targets for every model.",
        )
    )
    notes = []
    if "bigram" in bl:
        notes.append(f"bigram add-k = {bl['bigram'].get('k', 'n/a')}")
    tr = bl.get("transformer", {})
    if tr:
        notes.append(
            f"transformer n_embd {tr.get('n_embd', '?')}, n_layer {tr.get('n_layer', '?')}, "
            f"n_head {tr.get('n_head', '?')}, best epoch {tr.get('best_epoch', '?')}, "
            f"parameter ratio to CVFP {fmt_num(tr.get('param_ratio'))}"
        )
    if notes:
        s.add(Para(["; ".join(notes) + "."], "note"))

    s.add(Heading("Ablations of the fixed contexts C* (val)"))
    ppl = cv.get("val_ppl")
    rows = [["C* (as trained)", fmt_ppl(ppl), fmt_acc(cv.get("val_acc")), ""]]
    for key, label in (("zero_context", "zero C*"), ("shuffled_context", "shuffled C*")):
        a = ab.get(key)
        if a is None:
            rows.append([label, "not recorded", "", ""])
            continue
        delta = (
            "n/a"
            if ppl is None or a.get("val_ppl") is None
            else f"{float(a['val_ppl']) - float(ppl):+.2f}"
        )
        rows.append([label, fmt_ppl(a.get("val_ppl")), fmt_acc(a.get("val_acc")), delta])
    s.add(
        Table(
            [
                "context fed to the trained model",
                "val perplexity",
                "val accuracy",
                "perplexity change vs C*",
            ],
            rows,
        )
    )
    return s


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
    title = "New-LLM / CVFP run report"
    return Report(
        render_html(title, sections, inp.meta),
        render_md(title, sections, inp.meta),
        findings,
        sections,
    )


# ------------------------------------------------------------------ renderers

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1180px;margin:24px auto;
padding:0 16px;color:#1d232a;line-height:1.45}
h1{font-size:1.7em;margin-bottom:4px}h2{border-bottom:2px solid #d0d7de;padding-bottom:4px;margin-top:36px}
h3{margin-top:22px;font-size:1.1em}
table{border-collapse:collapse;margin:8px 0 14px;font-size:0.9em}
th,td{border:1px solid #d0d7de;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#f3f5f7}tr:nth-child(even) td{background:#fafbfc}
p.caption{color:#57606a;font-size:0.9em;margin:10px 0 2px}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:10px;overflow-x:auto;font-size:0.82em}
figure{margin:10px 0}figure img{max-width:100%;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:0.88em}
.note{color:#57606a}.ref{background:#fff8c5;border-left:4px solid #d4a72c;padding:6px 10px}
nav a{margin-right:14px}.sub{color:#57606a;margin-top:0}
#warnings table td:first-child{white-space:nowrap}
""".strip()


def _inline_html(parts: Iterable) -> str:
    out = []
    for p in parts:
        if isinstance(p, Link):
            out.append(f'<a href="{html.escape(p.href, quote=True)}">{html.escape(p.text)}</a>')
        else:
            out.append(html.escape(str(p)))
    return "".join(out)


def _block_html(b) -> str:
    e = html.escape
    if isinstance(b, Heading):
        return f"<h3>{e(b.text)}</h3>"
    if isinstance(b, Para):
        cls = f' class="{b.kind}"' if b.kind else ""
        return f"<p{cls}>{_inline_html(b.parts)}</p>"
    if isinstance(b, Table):
        # Caption as a paragraph: a <caption> wraps to the width of a narrow table.
        cap = f'<p class="caption">{e(b.caption)}</p>' if b.caption else ""
        head = "".join(f"<th>{e(h)}</th>" for h in b.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in b.rows
        )
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(b, Figure):
        data = base64.b64encode(b.png).decode("ascii")
        return (
            f'<figure><img alt="{e(b.caption, quote=True)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{e(b.caption)}</figcaption></figure>"
        )
    if isinstance(b, Code):
        return f"<pre><code>{e(b.text)}</code></pre>"
    raise TypeError(f"unknown block {type(b).__name__}")


def render_html(title: str, sections: list[Section], meta: dict) -> str:
    nav = "".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{s.key}">\n<h2>{html.escape(s.title)}</h2>\n'
        + "\n".join(_block_html(b) for b in s.blocks)
        + "\n</section>"
        for s in sections
    )
    sub = (
        f"git {meta.get('git_revision', 'unknown')}{' (dirty)' if meta.get('git_dirty') else ''}"
        f" &middot; generated {html.escape(str(meta.get('generated_utc', '')))} UTC"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1>\n<p class="sub">{sub}</p>\n<nav>{nav}</nav>\n'
        f"{body}\n</body>\n</html>\n"
    )


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _inline_md(parts: Iterable) -> str:
    return "".join(f"[{p.text}]({p.href})" if isinstance(p, Link) else str(p) for p in parts)


def _block_md(b) -> str:
    if isinstance(b, Heading):
        return f"### {b.text}"
    if isinstance(b, Para):
        text = _inline_md(b.parts)
        return f"> {text}" if b.kind == "ref" else (f"_{text}_" if b.kind == "note" else text)
    if isinstance(b, Table):
        lines = [f"_{b.caption}_", ""] if b.caption else []
        lines.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
        lines.append("|" + "|".join("---" for _ in b.headers) + "|")
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
        return "\n".join(lines)
    if isinstance(b, Figure):
        # Images stay out of the Markdown (readable as text); the numbers are in the tables.
        return f"_Figure (in report.html): {b.caption}_"
    if isinstance(b, Code):
        return f"```{b.lang}\n{b.text}\n```"
    raise TypeError(f"unknown block {type(b).__name__}")


def render_md(title: str, sections: list[Section], meta: dict) -> str:
    out = [
        f"# {title}",
        "",
        f"git {meta.get('git_revision', 'unknown')}{' (dirty)' if meta.get('git_dirty') else ''}, "
        f"generated {meta.get('generated_utc', '')} UTC. Plots are in report.html; every plotted "
        "number is in the tables here.",
        "",
    ]
    for s in sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            out += [_block_md(b), ""]
    return "\n".join(out).rstrip() + "\n"
