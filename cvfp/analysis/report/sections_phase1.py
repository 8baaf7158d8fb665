"""The Phase 1 section: how the objective trained (cvfp / none: per-iteration convergence and
losses; reconstruction: per-epoch losses, then the fixed-point convergence of the trained
model), followed by the checks' tables (sections_checks.py)."""

from __future__ import annotations

from collections.abc import Sequence

from cvfp.analysis.formats import fmt_acc, fmt_bool, fmt_count, fmt_loss, fmt_ppl, fmt_seconds
from cvfp.analysis.report.document import Figure, Heading, Para, Section, Table
from cvfp.analysis.report.headline import iterations_words
from cvfp.analysis.report.inputs import NONE_TITLE, RECONSTRUCTION_TITLE, TITLES, ReportInputs
from cvfp.analysis.report.plots import plot_phase1_history, plot_reconstruction
from cvfp.analysis.report.rule_words import convergence_words, limit_text
from cvfp.analysis.report.sections_checks import add_check_tables
from cvfp.analysis.report.sections_run import convergence_text
from cvfp.phase1.metrics import IterationRow, ReconstructionEpoch
from cvfp.phase1.rules import LOW_CONVERGENCE

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
EPOCH_HEADERS = [
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
]


def section_phase1(inp: ReportInputs) -> Section:
    title = {"reconstruction": RECONSTRUCTION_TITLE, "none": NONE_TITLE}
    s = Section("phase1", title.get(inp.objective, TITLES["phase1"]))
    if inp.objective == "reconstruction":
        _reconstruction(inp, s)
    else:
        _fixed_point_learning(inp, s)
    add_check_tables(inp, s)
    return s


def _min_ratio_text(inp: ReportInputs) -> str:
    return limit_text(LOW_CONVERGENCE.when[0], inp.params)


def _history_rows(rows: Sequence[IterationRow]) -> list[list[str]]:
    return [
        [
            str(r.iteration),
            fmt_count(r.converged, r.total),
            fmt_loss(r.cvfp_loss),
            fmt_loss(r.diversity_loss),
            fmt_loss(r.total_loss),
            str(r.steps),
            str(r.skipped_steps),
            fmt_seconds(r.seconds),
        ]
        for r in rows
    ]


def _history_figure(inp: ReportInputs, caption: str) -> Figure:
    train, val = inp.checks.train.history, inp.checks.val.history
    trials = inp.checks.val.convergence
    return Figure(
        plot_phase1_history(
            [r.model_dump() for r in train],
            [r.model_dump() for r in val],
            inp.params.phase1.min_converged_ratio,
            by_construction=1 if inp.params.phase1.mode == "parallel" else None,
            trials=trials.losses if trials is not None else (),
            trials_limit=inp.params.checks.convergence_final_diff,
        ),
        caption,
    )


def _fixed_point_learning(inp: ReportInputs, s: Section) -> None:
    """Objective cvfp (or none: the same passes without steps), per iteration."""
    p1, pp = inp.phase1, inp.params.phase1
    tr, va = p1.train, p1.val
    hist = inp.checks.train.history, inp.checks.val.history
    s.add(
        Table(
            ["item", "value"],
            [
                ["objective", inp.objective],
                ["mode / context_reset", f"{pp.mode} / {pp.context_reset}"],
                [
                    "iterations completed",
                    f"{iterations_words(p1.model_dump())} (stopped early: "
                    f"{fmt_bool(tr.stopped_early)})",
                ],
                ["optimizer steps (train)", str(tr.steps)],
                [
                    "min_converged_ratio / min_iterations",
                    f"{_min_ratio_text(inp)} / {pp.min_iterations}",
                ],
                ["final train convergence", convergence_text(tr, hist[0])],
                ["final val convergence", convergence_text(va, hist[1])],
                [
                    "final train losses (CVFP / diversity / total)",
                    f"{fmt_loss(tr.cvfp_loss)} / {fmt_loss(tr.diversity_loss)} / "
                    f"{fmt_loss(tr.total_loss)}",
                ],
                ["skipped optimizer steps (train)", str(tr.skipped_steps)],
                ["train wall time", fmt_seconds(p1.train_seconds)],
            ],
        ),
        Heading("Convergence and losses per iteration"),
        _history_figure(
            inp,
            "Left: converged tokens per iteration; iteration 0 (zero start) and iteration 1 "
            "(converged by construction in parallel mode) are marked points, not a learning "
            "curve. Middle: the fixed-point check, the val diff between repeated passes. Right "
            "(with two or more iterations): the raw losses. Numbers in the tables below.",
        ),
        Table(HISTORY_HEADERS, _history_rows(hist[0]), "train"),
        Table(
            HISTORY_HEADERS,
            _history_rows(hist[1]),
            "val (no optimizer steps: passes with carryover only)",
        ),
    )


def _reconstruction(inp: ReportInputs, s: Section) -> None:
    """Objective reconstruction: the training per epoch, then the fixed-point convergence of
    the trained model (passes without steps)."""
    p1, rp = inp.phase1, inp.params.phase1.reconstruction
    tr, va = p1.train, p1.val
    s.add(
        Table(
            ["item", "value"],
            [
                ["objective", inp.objective],
                [
                    "loss",
                    f"CE(next token) + {rp.recon_weight} * MSE(decoder(new context), "
                    "concat(previous context, token embedding))",
                ],
                ["epochs completed", iterations_words(p1.model_dump())],
                [
                    "truncated BPTT chunk / conversations per batch / lr",
                    f"{rp.chunk_length} positions / {rp.batch_conversations} / {rp.lr}",
                ],
                [
                    "final train token loss / reconstruction loss / total",
                    f"{fmt_loss(tr.token_loss)} / {fmt_loss(tr.recon_loss)} / {fmt_loss(tr.loss)}",
                ],
                [
                    "final val token loss / reconstruction loss / total",
                    f"{fmt_loss(va.token_loss)} / {fmt_loss(va.recon_loss)} / {fmt_loss(va.loss)}",
                ],
                ["final train perplexity / accuracy", f"{fmt_ppl(tr.ppl)} / {fmt_acc(tr.acc)}"],
                ["final val perplexity / accuracy", f"{fmt_ppl(va.ppl)} / {fmt_acc(va.acc)}"],
                ["skipped optimizer steps (train)", str(tr.skipped_steps)],
                ["train wall time", fmt_seconds(p1.train_seconds)],
            ],
        ),
        Para(
            [
                "Final numbers: one pass per split from a zero context per conversation after "
                "training (the contexts are C*). Seed 003's success criterion is a perplexity "
                "below 100 (for its own 256-d setup)."
            ],
            "note",
        ),
        Heading("Reconstruction training per epoch"),
    )
    rc = inp.checks.reconstruction
    epochs = rc.history if rc is not None else []
    if epochs:
        s.add(
            Figure(
                plot_reconstruction([r.model_dump() for r in epochs]),
                "Train: running averages over the epoch's chunks; val: a full pass after the "
                "epoch. Numbers in the table below.",
            ),
            Table(EPOCH_HEADERS, _epoch_rows(epochs)),
        )
    else:
        s.add(Para(["No epochs recorded."], "note"))
    hist = inp.checks.train.history, inp.checks.val.history
    s.add(
        Heading("Fixed-point convergence of the trained model"),
        Para(
            [
                "Measured as for the cvfp objective's val split: passes with carryover, no "
                "optimizer steps (the objective does not train for it). "
                f"Train {convergence_words(inp, 'train')}, val {convergence_words(inp, 'val')} "
                f"(min_converged_ratio {_min_ratio_text(inp)})."
            ]
        ),
        _history_figure(
            inp,
            "Left: converged tokens per pass (0: zero start, 1: by construction). Middle: the "
            "fixed-point check, the val diff between repeated passes. Numbers in the tables "
            "below.",
        ),
        Table(HISTORY_HEADERS, _history_rows(hist[0]), "train (no optimizer steps)"),
        Table(HISTORY_HEADERS, _history_rows(hist[1]), "val (no optimizer steps)"),
    )


def _epoch_rows(epochs: Sequence[ReconstructionEpoch]) -> list[list[str]]:
    return [
        [
            str(r.epoch),
            fmt_loss(r.train_token_loss),
            fmt_loss(r.train_recon_loss),
            fmt_ppl(r.train_ppl),
            fmt_acc(r.train_acc),
            fmt_loss(r.val_token_loss),
            fmt_loss(r.val_recon_loss),
            fmt_ppl(r.val_ppl),
            fmt_acc(r.val_acc),
            str(r.steps),
            fmt_seconds(r.seconds),
        ]
        for r in epochs
    ]
