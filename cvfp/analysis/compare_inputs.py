"""What a comparison reads from one experiment: the numbers of its metrics/phase{1,2}.json
(`experiment_values`) and its per-conversation test losses
(metrics/phase2_test_conversations.csv: `parse_conversations`), checked against each other."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cvfp.analysis.compare_metrics import SeedValues

CONVERSATION_COLUMNS = (
    "conversation_id",
    "targets",
    "cvfp_nats",
    "bigram_nats",
    "transformer_nats",
)


@dataclass
class ConversationLosses:
    """metrics/phase2_test_conversations.csv of one experiment: per test conversation the
    scored targets and the summed nats of each model (transformer None when not trained)."""

    ids: list[str]
    targets: np.ndarray
    cvfp: np.ndarray
    bigram: np.ndarray
    transformer: np.ndarray | None

    def loss(self, model: str) -> float | None:
        nats = getattr(self, model)
        return None if nats is None else float(nats.sum() / self.targets.sum())


def parse_conversations(text: str, where: str) -> ConversationLosses:
    """The CSV text of metrics/phase2_test_conversations.csv; `where` names it in errors."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(rows[0]) != CONVERSATION_COLUMNS:
        raise ValueError(
            f"{where}: header {rows[0] if rows else '(empty file)'}; expected "
            f"{','.join(CONVERSATION_COLUMNS)} (written by the phase2 stage: rerun it)"
        )
    if len(rows) < 2:
        raise ValueError(f"{where}: no test conversation rows (is the test split empty?)")
    ids: list[str] = []
    cols: dict[str, list[float | None]] = {c: [] for c in CONVERSATION_COLUMNS[1:]}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(CONVERSATION_COLUMNS):
            raise ValueError(
                f"{where} line {line}: {len(row)} fields, expected {len(CONVERSATION_COLUMNS)}"
            )
        ids.append(row[0])
        for name, cell in zip(CONVERSATION_COLUMNS[1:], row[1:], strict=True):
            if cell == "" and name == "transformer_nats":
                cols[name].append(None)
                continue
            try:
                v = float(cell)
            except ValueError:
                v = math.nan
            if not math.isfinite(v) or v < 0 or (name == "targets" and v < 1):
                raise ValueError(
                    f"{where} line {line} ({row[0]}): {name}={cell!r} is not a "
                    f"{'count >= 1' if name == 'targets' else 'finite number >= 0'}; "
                    f"rerun the phase2 stage"
                )
            cols[name].append(v)
    tr = cols["transformer_nats"]
    if any(v is None for v in tr) and any(v is not None for v in tr):
        raise ValueError(
            f"{where}: transformer_nats is empty on some rows only; it is empty on every row "
            f"(no Transformer trained) or on none: rerun the phase2 stage"
        )
    return ConversationLosses(
        ids=ids,
        targets=np.array(cols["targets"], dtype=float),
        cvfp=np.array(cols["cvfp_nats"], dtype=float),
        bigram=np.array(cols["bigram_nats"], dtype=float),
        transformer=None if tr[0] is None else np.array(tr, dtype=float),
    )


def check_consistent(values: SeedValues, conv: ConversationLosses, where: str) -> None:
    """The per-conversation table must add up to metrics/phase2.json's cvfp.test_loss (to 1e-4
    relative: float32 sums; two runs differ by far more)."""
    if values.test_loss is None:
        return
    loss = conv.loss("cvfp")
    if loss is None or not math.isclose(loss, values.test_loss, rel_tol=1e-4, abs_tol=1e-7):
        raise ValueError(
            f"{where}: sum(cvfp_nats) / sum(targets) = {loss} but metrics/phase2.json has "
            f"cvfp.test_loss = {values.test_loss}: the two files are from different runs"
        )


def check_aligned(a: ConversationLosses, b: ConversationLosses, what: str) -> None:
    """`a` and `b` score the same test conversations (the same split); `what` names them."""
    if a.ids != b.ids or not np.array_equal(a.targets, b.targets):
        raise ValueError(
            f"{what}: the test conversations or their target counts differ, so they are "
            f"not on the same test split; rerun both on one baseline commit"
        )


def _get(d: Mapping, *path, default=None):
    for k in path:
        if not isinstance(d, Mapping) or k not in d:
            return default
        d = d[k]
    return d


def experiment_values(
    phase1: Mapping, phase2: Mapping, conversations: ConversationLosses | None = None
) -> SeedValues:
    """The numbers a comparison uses from one experiment's metrics/phase{1,2}.json."""
    p2 = {
        f"{prefix}test_{k}": _get(phase2, *path, f"test_{k}")
        for prefix, path in (
            ("", ("cvfp",)),
            ("bigram_", ("baselines", "bigram")),
            ("transformer_", ("baselines", "transformer")),
            ("zero_context_", ("ablations", "zero_context")),
            ("shuffled_context_", ("ablations", "shuffled_context")),
        )
        for k in ("loss", "ppl", "acc")
        if not (prefix.endswith("context_") and k == "acc")
    }
    return SeedValues(
        **p2,
        val_loss=_get(phase2, "cvfp", "val_loss"),
        best_epoch=_get(phase2, "cvfp", "best_epoch"),
        phase1_steps=_get(phase1, "train", "steps"),
        converged_by_construction=_get(phase1, "train", "converged_by_construction"),
        trial_final_diff=_get(phase1, "val", "trials", "final_diff"),
        trial_verdict=_get(phase1, "val", "trials", "verdict"),
        effective_rank_val=_get(phase1, "val", "effective_rank_ratio"),
        effective_rank_train=_get(phase1, "train", "effective_rank_ratio"),
        test_conversations=None if conversations is None else len(conversations.ids),
    )
