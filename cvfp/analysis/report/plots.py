"""The report's plots as PNG bytes. Matplotlib is used through `matplotlib.figure.Figure`
(no pyplot), which draws with the Agg canvas and leaves the process-wide backend alone.
Rows are the metrics' per-iteration / per-epoch records as dicts (model_dump)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

Rows = Sequence[Mapping[str, Any]]


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    # No Software/date metadata: the same numbers give the same bytes.
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def figure_axes(ncols: int, width: float = 11.0, height: float = 3.4) -> tuple[Any, Any]:
    """(figure, its `ncols` axes side by side)."""
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height))
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    fig.set_layout_engine("constrained")
    return fig, axes


def _series(rows: Rows, key: str) -> tuple[list, list]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            xs.append(r.get("iteration", r.get("epoch")))
            ys.append(float(v))
    return xs, ys


def plot_phase1_history(
    train: Rows,
    val: Rows,
    min_ratio: float | None,
    by_construction: int | None = 1,
    trials: Sequence[float] = (),
    trials_limit: float | None = None,
) -> bytes:
    """Left: convergence per iteration, a curve only through real iterations: iteration 0
    (the zero-start pass) and `by_construction` (1 in parallel mode: it reproduces iteration 0
    except at the segment starts, for any model) are marked points, not drawn as learning.
    Middle: the fixed-point check, the val diff between repeated passes (the real test, for
    every objective). Right, when at least two iterations have losses: the raw losses."""
    learned = [r for r in train if r.get("iteration") not in (0, by_construction)]
    with_losses = len(_series(learned, "total_loss")[0]) >= 2
    fig, axes = figure_axes(3 if with_losses else 2, width=13.0 if with_losses else 11.0)
    ax_c, ax_t = axes[0], axes[1]
    last = max([r.get("iteration", 0) for r in [*train, *val]] or [1])
    for (name, rows, style), color in zip(
        (("train", train, "-o"), ("val", val, "--s")), ("C0", "C1"), strict=True
    ):
        real = [r for r in rows if r.get("iteration") not in (0, by_construction)]
        xs, ys = _series(real, "convergence_rate")
        if xs:
            ax_c.plot(xs, [100 * y for y in ys], style, color=color, label=f"{name} (iterations)")
        for it, marker, what in ((0, "s", "zero start"), (by_construction, "D", "by construction")):
            xs, ys = _series([r for r in rows if r.get("iteration") == it], "convergence_rate")
            if xs:
                ax_c.plot(
                    xs,
                    [100 * y for y in ys],
                    marker,
                    color=color,
                    mfc="none",
                    ms=8,
                    label=f"{name} iteration {it}: {what}",
                )
    if by_construction is not None and last >= by_construction:
        ax_c.annotate(
            "iteration 1: converged by construction\n(not learning)",
            (by_construction, 72),
            ha="center",
            fontsize=8,
            color="grey",
        )
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
        xlim=(-0.3, max(last, 1) + 0.3),
    )
    ax_c.legend(fontsize=7)
    if trials:
        ax_t.plot(
            range(1, len(trials) + 1),
            [max(float(t), 1e-12) for t in trials],
            "-o",
            color="C2",
            label="val diff",
        )
        ax_t.set_yscale("log")
        if trials_limit is not None:
            ax_t.axhline(
                trials_limit, color="grey", lw=0.8, ls=":", label=f"pass if < {trials_limit:g}"
            )
        ax_t.legend(fontsize=8)
    else:
        ax_t.text(0.5, 0.5, "no convergence trials recorded", ha="center", transform=ax_t.transAxes)
    ax_t.set(
        title="Fixed-point check (val): diff between repeated passes",
        xlabel="pass",
        ylabel="MSE to the previous pass (log)",
    )
    if with_losses:
        ax_l = axes[2]
        for key, color in (("cvfp_loss", "C0"), ("diversity_loss", "C1"), ("total_loss", "C2")):
            xs, ys = _series(learned, key)
            ax_l.plot(xs, ys, "-o", color=color, label=f"train {key}")
        ax_l.axhline(0, color="grey", lw=0.6)
        ax_l.set(title="Train losses per iteration (raw)", xlabel="iteration", ylabel="loss")
        ax_l.legend(fontsize=7)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    return png_bytes(fig)


def plot_reconstruction(epochs: Rows) -> bytes:
    """Phase 1 objective `reconstruction`: token and reconstruction loss, val perplexity and
    accuracy per epoch (train = running averages over the epoch, val = a full pass after it)."""
    fig, axes = figure_axes(3, width=12.0)
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
    return png_bytes(fig)


def plot_spectrum(spectra: Mapping[str, Sequence[float]]) -> bytes:
    fig, (ax,) = figure_axes(1, width=7.5, height=3.6)
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
    return png_bytes(fig)


def plot_phase2(epochs: Rows, best_epoch: int | None, refs: Mapping[str, Mapping]) -> bytes:
    """Loss, perplexity and accuracy per epoch; `refs`: baselines' val numbers as lines."""
    fig, axes = figure_axes(3, width=12.0)
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
    return png_bytes(fig)
