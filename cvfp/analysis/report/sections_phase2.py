"""The Phase 2 section: the head's training per epoch, CVFP against the baselines, and the
ablations of the fixed contexts C*. Test numbers are the reported ones; val numbers are
shown as "val (selection)": they chose the epoch and the bigram's k (SPEC 9)."""

from __future__ import annotations

from cvfp.analysis.formats import (
    fmt_acc,
    fmt_bool,
    fmt_int,
    fmt_loss,
    fmt_num,
    fmt_ppl,
    fmt_seconds,
)
from cvfp.analysis.report.document import Figure, Heading, Para, Section, Table
from cvfp.analysis.report.inputs import TITLES, ReportInputs
from cvfp.analysis.report.plots import plot_phase2
from cvfp.phase2.metrics import Bigram, CvfpPhase2, Transformer

EPOCH_HEADERS = [
    "epoch",
    "train loss",
    "val loss",
    "train ppl",
    "val ppl",
    "train acc",
    "val acc",
    "seconds",
]


def section_phase2(inp: ReportInputs) -> Section:
    s = Section("phase2", TITLES["phase2"])
    _training(inp, s)
    _epochs(inp, s)
    _baselines(inp, s)
    _ablations(inp, s)
    return s


def _training(inp: ReportInputs, s: Section) -> None:
    cv = inp.phase2.cvfp
    rows = [
        [
            "best epoch (lowest val loss)",
            f"{cv.best_epoch} of {cv.epochs_run} run (stopped early: {fmt_bool(cv.stopped_early)})",
        ],
        [
            "test at best epoch (reported): loss / perplexity / accuracy",
            f"{fmt_loss(cv.test_loss)} / {fmt_ppl(cv.test_ppl)} / {fmt_acc(cv.test_acc)}",
        ],
        [
            "context C* (phase2.context)",
            "zero: the no-context control, C* zeroed in training and evaluation"
            if cv.context == "zero"
            else "cstar: the fixed contexts",
        ],
        ["heads / freeze_context", f"{cv.heads} / {fmt_bool(cv.freeze_context)}"],
        [
            "token head at the start",
            "reused from Phase 1 (objective reconstruction; epoch 0 = before any Phase 2 step)"
            if cv.head_init == "phase1"
            else "zero-initialised",
        ],
        [
            "val (selection) at best epoch: loss / perplexity / accuracy",
            f"{fmt_loss(cv.val_loss)} / {fmt_ppl(cv.val_ppl)} / {fmt_acc(cv.val_acc)}",
        ],
        [
            "train at best epoch: loss / perplexity / accuracy",
            f"{fmt_loss(cv.train_loss)} / {fmt_ppl(cv.train_ppl)} / {fmt_acc(cv.train_acc)}",
        ],
        [
            "positions train / val / test",
            f"{fmt_int(cv.train_positions)} / {fmt_int(cv.val_positions)} / "
            f"{fmt_int(cv.test_positions)}",
        ],
    ]
    # heads: per_block trains in two stages (single head, then cloned per-block heads).
    for name, st in cv.stages:
        if st is not None:
            rows.append(
                [
                    f"stage {name}",
                    f"epochs {st.first_epoch}-{st.last_epoch}, best epoch {st.best_epoch}, "
                    f"stopped early: {fmt_bool(st.stopped_early)}",
                ]
            )
    s.add(Table(["item", "value"], rows))


def _epochs(inp: ReportInputs, s: Section) -> None:
    cv, bl, epochs = inp.phase2.cvfp, inp.phase2.baselines, inp.phase2_epochs
    s.add(Heading("Loss, perplexity and accuracy per epoch"))
    if epochs:
        refs = {"bigram": bl.bigram.model_dump()}
        if bl.transformer is not None:
            refs["transformer"] = bl.transformer.model_dump()
        s.add(
            Figure(
                plot_phase2([r.model_dump() for r in epochs], cv.best_epoch, refs),
                "CVFP Phase 2 per epoch (train and val); dashed lines: baselines' val numbers; "
                "dotted: best epoch. Numbers in the table below.",
            ),
            Table(
                EPOCH_HEADERS,
                [
                    [
                        str(r.epoch),
                        fmt_loss(r.train_loss),
                        fmt_loss(r.val_loss),
                        fmt_ppl(r.train_ppl),
                        fmt_ppl(r.val_ppl),
                        fmt_acc(r.train_acc),
                        fmt_acc(r.val_acc),
                        fmt_seconds(r.seconds),
                    ]
                    for r in epochs
                ],
            ),
        )
    else:
        s.add(Para(["No epochs recorded."], "note"))
    if cv.val_loss_per_block:
        s.add(
            Table(
                ["block", "val loss"],
                [[str(k + 1), fmt_loss(v)] for k, v in enumerate(cv.val_loss_per_block)],
                "Per-block heads: val loss of each block's head at the best epoch.",
            )
        )


def _baselines(inp: ReportInputs, s: Section) -> None:
    cv, bl = inp.phase2.cvfp, inp.phase2.baselines
    models: list[tuple[str, CvfpPhase2 | Bigram | Transformer]] = [
        ("CVFP (Phase 2)", cv),
        (f"Bigram (add-k, k = {bl.bigram.k:g})", bl.bigram),
    ]
    if bl.transformer is not None:
        models.append(("Transformer (GPT-2)", bl.transformer))
    s.add(
        Heading("CVFP vs baselines"),
        Table(
            [
                "model",
                "test perplexity",
                "test accuracy",
                "test loss",
                "val perplexity (selection)",
                "trainable parameters",
                "training time",
            ],
            [
                [
                    name,
                    fmt_ppl(r.test_ppl),
                    fmt_acc(r.test_acc),
                    fmt_loss(r.test_loss),
                    fmt_ppl(r.val_ppl),
                    fmt_int(r.trainable_params),
                    fmt_seconds(r.train_seconds),
                ]
                for name, r in models
            ],
            "Same train/val/test tokens and next-token targets for every model. Test is scored "
            "once, with what val chose (best epoch, the bigram's k).",
        ),
    )
    notes = [
        f"bigram add-k = {bl.bigram.k:g}, chosen on val from "
        f"{', '.join(f'{k:g}' for k in bl.bigram.k_grid)}"
    ]
    tr = bl.transformer
    if tr is not None:
        notes.append(
            f"transformer n_embd {tr.n_embd}, n_layer {tr.n_layer}, n_head {tr.n_head}, best "
            f"epoch {tr.best_epoch}, parameter ratio to CVFP {fmt_num(tr.param_ratio)}"
        )
    s.add(Para(["; ".join(notes) + "."], "note"))


def _ablations(inp: ReportInputs, s: Section) -> None:
    cv, ab = inp.phase2.cvfp, inp.phase2.ablations
    rows = [["C* (as trained)", fmt_ppl(cv.test_ppl), fmt_acc(cv.test_acc), ""]]
    for label, a in (("zero C*", ab.zero_context), ("shuffled C*", ab.shuffled_context)):
        rows.append(
            [label, fmt_ppl(a.test_ppl), fmt_acc(a.test_acc), f"{a.test_ppl - cv.test_ppl:+.2f}"]
        )
    s.add(
        Heading("Sanity checks: C* replaced at evaluation (test)"),
        Table(
            [
                "context fed to the trained model",
                "test perplexity",
                "test accuracy",
                "perplexity change vs C*",
            ],
            rows,
            "Sanity checks, not controls: the head was trained with C*, so removing C* at "
            "evaluation measures a train/eval mismatch as much as the context. The control "
            "trained without any context is phase2.context: zero.",
        ),
    )
