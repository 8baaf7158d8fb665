"""What a researcher must read first, in one place for the report's Summary and the Prefect
`cvfp-summary` artifact (flows/artifacts.py): the comparison verdicts with their intervals,
CVFP vs Transformer vs bigram on the reported split, the fixed-point check as PASSED / NOT
PASSED with its number, Phase 1's steps (and "converged by construction"), the warnings count.
Every number says its split (train / val / test).

Plain functions of the metrics as dicts (metrics/phase1.json, phase2.json, compare.json), so
both callers use the same text; a missing key shows as "n/a".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cvfp.analysis.formats import fmt_int, fmt_ppl, interval_words

NA = "n/a"
NO_COMPARISON = "no comparison yet: python -m flows.compare"


def get(d: Any, path: str) -> Any:
    """d["a"]["b"] for path "a.b", None when any level is missing."""
    for key in path.split("."):
        if not isinstance(d, Mapping) or key not in d:
            return None
        d = d[key]
    return d


def reported_split(phase2: Mapping[str, Any]) -> str:
    """The split the models are compared on: test once Phase 2 records it, else val."""
    return "test" if get(phase2, "cvfp.test_ppl") is not None else "val"


def _num(x: Any, spec: str) -> str:
    return NA if not isinstance(x, (int, float)) or isinstance(x, bool) else format(x, spec)


def comparison_rows(compare: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """One row per compared arm: its verdict, the difference to the control and its 95%
    interval (metrics/compare.json, `python -m flows.compare`)."""
    arms = (compare or {}).get("arms") or {}
    control = (compare or {}).get("control")
    if not arms:
        return [("Comparison (over seeds)", NO_COMPARISON)]
    metric = str((compare or {}).get("metric") or "test_loss").replace("_", " ")
    rows = []
    for arm, a in arms.items():
        if arm == control or not isinstance(a, Mapping):
            continue
        verdict = a.get("verdict")
        ci = a.get("ci95")
        n = a.get("n_seeds", len(a.get("seeds") or []))
        parts = []
        if a.get("diff_mean") is not None:
            parts.append(f"{metric} {arm} - {control}: {_num(a['diff_mean'], '+.4f')}")
        if isinstance(ci, (list, tuple)) and len(ci) == 2:
            parts.append(f"95% CI [{_num(ci[0], '+.4f')}, {_num(ci[1], '+.4f')}]")
        if a.get("p_holm") is not None:
            parts.append(f"p (Holm) {_num(a['p_holm'], '.3g')}")
        word = verdict if verdict else "interval only (no verdict)"
        if verdict == "inconclusive" and isinstance(a.get("ppl_ci95"), (list, tuple)):
            word += f" ({interval_words(a['ppl_ci95'])} in test perplexity)"
        text = f"{word}: " + ", ".join(parts) if parts else str(word)
        rows.append((f"Comparison: {arm} vs {control} ({n} seeds)", text))
    return rows or [("Comparison (over seeds)", NO_COMPARISON)]


def models_row(phase2: Mapping[str, Any]) -> tuple[str, str]:
    split = reported_split(phase2)
    cvfp = get(phase2, f"cvfp.{split}_ppl")
    tr = get(phase2, f"baselines.transformer.{split}_ppl")
    bigram = get(phase2, f"baselines.bigram.{split}_ppl")
    tr_text = "not trained" if get(phase2, "baselines.transformer") is None else fmt_ppl(tr)
    value = (
        f"{split}: CVFP {fmt_ppl(cvfp) if cvfp is not None else NA}, Transformer {tr_text}, "
        f"bigram {fmt_ppl(bigram) if bigram is not None else NA}"
    )
    if split == "val":
        value += " (no test numbers yet: val is the selection split)"
    return (f"Perplexity on {split}: CVFP / Transformer / bigram", value)


def fixed_point_row(phase1: Mapping[str, Any], pass_text: str | None) -> tuple[str, str]:
    trials = get(phase1, "val.trials")
    name = "Fixed-point check (val convergence trials)"
    if not isinstance(trials, Mapping) or trials.get("passed") is None:
        return (name, NA)
    word = "PASSED" if trials["passed"] else "NOT PASSED"
    rule = f" (pass if {pass_text})" if pass_text else ""
    return (
        name,
        f"{word}: val final diff {_num(trials.get('final_diff'), '.4g')}{rule}, "
        f"trial verdict {trials.get('verdict', NA)}",
    )


def iterations_words(phase1: Mapping[str, Any]) -> str:
    """How long Phase 1 trained, from metrics/phase1.json's numbers: "3/10" (iterations of
    max_iterations), "4/4 epochs" (objective reconstruction), "0/10 (objective none: ...)"."""
    objective, most = phase1.get("objective"), phase1.get("max_iterations", NA)
    if objective == "reconstruction":
        return f"{phase1.get('epochs', NA)}/{phase1.get('max_epochs', NA)} epochs"
    if objective == "none":
        return f"0/{most} (objective none: no Phase 1 training)"
    done = get(phase1, "train.iterations")
    return f"{NA if done is None else done}/{most}"


def phase1_row(phase1: Mapping[str, Any]) -> tuple[str, str]:
    if not phase1:
        return ("Phase 1", NA)
    steps = get(phase1, "train.steps")
    text = (
        f"objective {phase1.get('objective', NA)}: train "
        f"{fmt_int(steps) if steps is not None else NA} optimizer step(s), "
        f"iterations {iterations_words(phase1)}"
    )
    by_construction = [s for s in ("train", "val") if get(phase1, f"{s}.converged_by_construction")]
    if by_construction:
        text += (
            f"; {' and '.join(by_construction)} converged by construction (iteration 1 "
            "reproduces iteration 0 except at the segment starts, for any model: not a result)"
        )
    return ("Phase 1", text)


def warnings_row(warnings: int | None) -> tuple[str, str]:
    return ("Warnings (failed or warning checks)", NA if warnings is None else str(warnings))


def headline_rows(
    phase1: Mapping[str, Any],
    phase2: Mapping[str, Any],
    compare: Mapping[str, Any] | None,
    warnings: int | None,
    pass_text: str | None = None,
) -> list[tuple[str, str]]:
    """The rows a researcher reads first, in order."""
    return [
        *comparison_rows(compare),
        models_row(phase2),
        fixed_point_row(phase1, pass_text),
        phase1_row(phase1),
        warnings_row(warnings),
    ]
