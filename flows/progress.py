"""Progress in the Prefect UI: while a stage runs, `<stage>-progress` is a progress artifact
with the whole stage's position ("epoch k of N"), percent, elapsed time and ETA (`StagePlan`
from the stage's planned loops, fed by cvfp.runtime.utils' progress listeners); `python -m
flows.compare` keeps `compare-progress` at "experiment k of n".

StagePlan is plain Python (tested without Prefect); StageProgress and CompareProgress show its
text and never fail the run they watch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from cvfp.params import Params
from cvfp.runtime.utils import eta_text

LONG_STAGES = ("phase1", "materialize", "phase2")  # always get a progress artifact


@dataclass
class Loop:
    """One of a stage's loops: progress bars named `<bar> <k>` (one bar per epoch k) or, with
    `single`, one bar named `<bar>` whose position counts the iterations done."""

    bar: str
    unit: str  # the text says "<unit> k of N"
    n: int  # planned count (the most it runs: early stopping can end it sooner)
    single: bool = False
    n_like: str | None = None  # runs as many units as this earlier loop ran
    k: int = 0  # current unit, 1-based (0: not started)
    frac: float = 0.0  # the part of unit k done
    pace: float | None = None  # measured seconds per unit
    done: bool = False

    def unit_of(self, desc: str, position: int, total: int | None) -> tuple[int, float] | None:
        """(k, part of unit k done) when the bar `desc` is this loop's, else None."""
        if self.single:
            if desc != self.bar or not total:
                return None
            return (position, 1.0) if position >= total else (position + 1, 0.0)
        head, _, k = desc.rpartition(" ")
        if head != self.bar or not k.isdigit():
            return None
        return int(k), (position / total if total else 0.0)


def stage_loops(stage: str, params: Params) -> list[Loop]:
    """The loops a stage runs, in order, with their planned counts from the params."""
    p1 = params.phase1
    fixed_point = [
        Loop("phase1 train", "train iteration", p1.max_iterations, single=True),
        Loop("phase1 val", "val iteration", p1.max_iterations, single=True),
    ]
    if stage == "phase1" and p1.objective == "reconstruction":
        return [Loop("reconstruction epoch", "epoch", p1.reconstruction.epochs), *fixed_point]
    if stage == "phase1":
        return fixed_point
    if stage == "phase2":
        loops = [Loop("phase2 epoch", "epoch", params.phase2.epochs)]
        if params.baselines.transformer:  # as many epochs as Phase 2 ran
            loops.append(
                Loop(
                    "transformer epoch",
                    "transformer epoch",
                    params.phase2.epochs,
                    n_like="phase2 epoch",
                )
            )
        return loops
    return []


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class StagePlan:
    """A whole stage's position from its progress bars: which loop ("epoch k of N"), the
    stage's percent (an integer) and its ETA, the sum of the remaining loops: the rest of the
    current unit and the loop's remaining units at its measured pace, plus each later loop's
    units at its own pace once measured (before that, at the current loop's pace). Plain
    Python, no Prefect: StageProgress shows its text."""

    def __init__(self, stage: str, loops: list[Loop]):
        self.stage, self.loops = stage, loops
        self.current: Loop | None = None
        self.bar = ""  # the latest bar, e.g. "phase2 epoch 3: 40/120 (33%)"

    def see(self, desc: str, position: int, total: int | None, bar_elapsed: float) -> None:
        self.bar = f"{desc}: " + eta_text(position, total, bar_elapsed).split(", ")[0]
        for i, loop in enumerate(self.loops):
            hit = loop.unit_of(desc, position, total)
            if hit is None:
                continue
            for earlier in self.loops[:i]:  # a later loop started: the earlier ones are over
                earlier.done = True
            if loop.n_like:
                like = next(x for x in self.loops if x.bar == loop.n_like)
                loop.n = like.k or loop.n
            loop.k, loop.frac = hit
            if loop.single and position:
                loop.pace = bar_elapsed / position
            elif not loop.single and loop.frac > 0:
                loop.pace = bar_elapsed / loop.frac
            self.current = loop
            return

    def eta(self) -> float | None:
        cur = self.current
        if cur is None or cur.pace is None:
            return None
        seconds = (1.0 - cur.frac) * cur.pace + max(cur.n - cur.k, 0) * cur.pace
        for later in self.loops[self.loops.index(cur) + 1 :]:
            if not later.done:
                seconds += max(later.n - later.k, 0) * (later.pace or cur.pace)
        return seconds

    def status(self, elapsed: float) -> tuple[float, str]:
        """(stage percent rounded to an integer, the text) after `elapsed` stage seconds."""
        eta = self.eta()
        pct = (
            float(round(100.0 * elapsed / (elapsed + eta)))
            if eta is not None and elapsed + eta > 0
            else 0.0
        )
        text = f"{self.stage}:"
        cur = self.current
        if cur is not None:
            text += f" {cur.unit} {cur.k} of {cur.n}"
            later = [x for x in self.loops[self.loops.index(cur) + 1 :] if not x.done]
            if later:
                text += ", then " + ", ".join(f"{x.n} {x.unit}s" for x in later)
            text += ";"
        text += f" stage {pct:.0f}%, {hms(elapsed)} elapsed"
        text += f", ETA {hms(eta)}" if eta is not None else ""
        return pct, text + (f" ({self.bar})" if self.bar else "")


class StageProgress:
    """A cvfp.runtime.utils progress listener that keeps the progress artifact `<stage>-progress` at
    the whole stage's position (StagePlan: "epoch k of N", percent, elapsed, stage ETA). Never
    fails the stage: an API error just stops the updates."""

    def __init__(self, stage: str, params: Params | None = None):
        self.stage, self.broken = stage, False
        self.artifact_id: Any = None  # the progress artifact's id, once created
        self.t0 = time.monotonic()
        self.plan = StagePlan(stage, stage_loops(stage, params) if params is not None else [])
        if stage in LONG_STAGES:
            # created now, in the stage's task run: a bar first reported from inside a subflow
            # (materialize's shards) would otherwise attach the artifact to that subflow's run
            self._show(0.0, f"{stage}: started")

    def __call__(self, desc: str, position: int, total: int | None, elapsed: float) -> None:
        self.plan.see(desc, position, total, elapsed)
        pct, text = self.plan.status(time.monotonic() - self.t0)
        if not self.plan.loops and total:  # a stage without planned loops: its bar's percent
            pct = float(round(min(100.0, 100.0 * position / total)))
        self._show(pct, text)

    def done(self) -> None:
        """The stage finished: 100% (a loop that stopped early, e.g. Phase 1 converging before
        max_iterations, would otherwise stay below)."""
        if self.artifact_id is not None:
            self._show(100.0, f"{self.stage}: done in {hms(time.monotonic() - self.t0)}")

    def _show(self, pct: float, text: str) -> None:
        if self.broken:
            return
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(
                    pct, key=f"{self.stage}-progress", description=text
                )
            else:
                update_progress_artifact(self.artifact_id, pct, description=text)
        except Exception as err:  # monitoring must not kill a training run
            self.broken = True
            import logging

            logging.getLogger("cvfp").warning(
                "progress artifact for %s disabled: %s", self.stage, err
            )


class CompareProgress:
    """The progress artifact `compare-progress` of `python -m flows.compare`: "experiment k of
    n", percent (an integer), elapsed and ETA (the mean experiment's wall time so far times the
    experiments left, divided by the experiments running side by side). Thread-safe: parallel
    workers call `finished` as their experiments end."""

    def __init__(self, n: int, workers: int = 1):
        import threading

        self.n, self.workers, self.k = n, max(1, workers), 0
        self.seconds: list[float] = []
        self.t0, self.lock = time.monotonic(), threading.Lock()
        self.stage = StageProgress("compare")
        self.stage._show(0.0, f"compare: experiment 0 of {n} done; 0:00 elapsed")

    def text(self, name: str, outcome: str, elapsed: float) -> tuple[float, str]:
        left = self.n - self.k
        eta = sum(self.seconds) / len(self.seconds) * left / self.workers if self.seconds else None
        pct = float(round(100.0 * self.k / self.n)) if self.n else 100.0
        tail = f", ETA {hms(eta)}" if eta is not None and left else ""
        return pct, (
            f"compare: experiment {self.k} of {self.n} done ({name} {outcome}); "
            f"{pct:.0f}%, {hms(elapsed)} elapsed{tail}"
        )

    def finished(self, name: str, outcome: str, seconds: float) -> None:
        with self.lock:
            self.k += 1
            self.seconds.append(seconds)
            self.stage._show(*self.text(name, outcome, time.monotonic() - self.t0))
