"""What Phase 1 passes and runs return (cvfp/phase1/trainer.py): named numbers, no text."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch

from cvfp.core.contexts import ContextFile


class Losses(NamedTuple):
    cvfp: float  # raw MSE between a pass and the previous one
    diversity: float
    total: float  # phase1_loss(cvfp, diversity, w)


class PassResult(NamedTuple):
    """What one pass over the split gives (`_run_pass`)."""

    contexts: object  # the row store the pass wrote ([N, Dc])
    losses: Losses
    steps: int  # optimiser steps taken
    skipped: int  # steps skipped on a non-finite loss
    converged: int  # tokens for which converged_mask holds


@dataclass
class IterationStats:
    iteration: int
    converged: int
    total: int
    convergence_rate: float
    cvfp_loss: float | None
    diversity_loss: float | None
    total_loss: float | None
    steps: int
    skipped_steps: int
    seconds: float  # wall clock: kept out of the outputs (`numbers()`)

    @classmethod
    def of(cls, iteration: int, n: int, r: PassResult, seconds: float) -> IterationStats:
        c, lo = r.converged, r.losses
        return cls(
            iteration=iteration,
            converged=c,
            total=n,
            convergence_rate=c / n,
            cvfp_loss=lo.cvfp,
            diversity_loss=lo.diversity,
            total_loss=lo.total,
            steps=r.steps,
            skipped_steps=r.skipped,
            seconds=seconds,
        )

    @classmethod
    def zero_start(cls, n: int, seconds: float) -> IterationStats:
        """Iteration 0, the pass from zero contexts: nothing to converge to, no loss."""
        return cls(
            iteration=0,
            converged=0,
            total=n,
            convergence_rate=0.0,
            cvfp_loss=None,
            diversity_loss=None,
            total_loss=None,
            steps=0,
            skipped_steps=0,
            seconds=seconds,
        )

    def numbers(self) -> dict:
        """The row as the outputs keep it: every field but the wall-clock `seconds`."""
        out = asdict(self)
        del out["seconds"]
        return out

    def line(self) -> str:
        loss = (
            ""
            if self.total_loss is None
            else (
                f" cvfp={self.cvfp_loss:.6f} div={self.diversity_loss:.6f} total={self.total_loss:.6f}"
            )
        )
        return (
            f"iter {self.iteration}: converged {100 * self.convergence_rate:.1f}% "
            f"({self.converged}/{self.total}){loss} steps={self.steps} "
            f"skipped={self.skipped_steps} {self.seconds:.2f}s"
        )


@dataclass
class Phase1Result:
    # [N, Dc] final contexts: a tensor, or with work_dir the ContextFile (read row ranges;
    # it stays readable after the work directory is removed)
    contexts: torch.Tensor | ContextFile
    history: list[IterationStats] = field(default_factory=list)
    stopped_early: bool = False
    met_ratio: bool = False  # the final iteration reached min_converged_ratio
    parallel: bool = True  # phase1.mode == parallel
    segments: int = 1  # segment starts C (conversations, or 1 for a stream)
    saved: IterationStats | None = None  # the trained model itself (measure_saved_model)

    @property
    def iterations(self) -> int:  # training iterations run (iteration 0 not counted)
        return len(self.history) - 1

    @property
    def steps(self) -> int:  # optimizer steps actually taken
        return sum(h.steps for h in self.history)

    @property
    def converged_by_construction(self) -> bool:
        """The reported convergence is that of the first parallel iteration, which feeds token
        i the context iteration 0 computed for token i-1 with the same weights: it reproduces
        iteration 0 for all N - C tokens that are not a segment start, for any model (SPEC 3).
        Such a rate says nothing about fixed points; the convergence trials do."""
        return self.parallel and self.iterations == 1 and self.met_ratio

    @property
    def final(self) -> IterationStats:
        return self.saved or self.history[-1]

    def history_dicts(self) -> list[dict]:
        """The per-iteration rows without wall-clock seconds (those: `history_seconds`)."""
        return [h.numbers() for h in self.history]

    def history_seconds(self) -> list[float]:
        return [h.seconds for h in self.history]
