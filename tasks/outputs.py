"""What a stage does, explicitly, right before it replaces one of its outputs: check that
params.yaml still says what it runs with (tasks/guard.py), pin the fingerprints of datasets
saved in it, and put the params record into its main directory output (tasks/provenance.py).

    out = StageOutputs("phase1", params)  # at the start: what params.yaml says now
    ...
    with atomic_path(PHASE1_DIR, before_replace=out.before_replace) as tmp:
        ...
    write_json(PHASE1_METRICS, metrics, before_replace=out.before_replace)
"""

from __future__ import annotations

import json
from pathlib import Path

from cvfp.params import Params

from .guard import params_guard
from .provenance import RECORD_NAME, RECORDS, params_record, pin_fingerprint


class StageOutputs:
    """Made at the start of a stage's run (the params file as it is then)."""

    def __init__(self, stage: str, params: Params) -> None:
        self.stage = stage
        self.guard = params_guard(stage, params)  # None: params from no file
        self.record = params_record(stage, params)

    def before_replace(self, final: Path, new: Path) -> None:
        """Called with the output's final path and the new output, before the one replaces
        the other; raises tasks.guard.ParamsChangedError (nothing replaced) if params.yaml
        changed for this stage's keys."""
        if self.guard is not None:
            self.guard(final)
        if new.is_dir():  # datasets saved in it: fingerprints from their bytes
            for state in sorted(new.rglob("state.json")):
                if any(state.parent.glob("*.arrow")):
                    pin_fingerprint(state.parent)
        target = RECORDS.get(self.stage)
        if self.record is not None and target is not None and final == target and new.is_dir():
            text = json.dumps(self.record, indent=2, sort_keys=True) + "\n"
            (new / RECORD_NAME).write_text(text)
