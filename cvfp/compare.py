"""Statistics of a comparison over seeds (SPEC section 9): mean ± std per arm, paired
differences against the control arm, and the verdict rule. Plain Python, no Prefect/DVC:
`flows/compare.py` runs the experiments, `tasks/compare.py` reads their metrics and calls
`summarise`, `cvfp/compare_report.py` renders the result.

The design is paired: a seed fixes the split order, the initialisation and the data order
for every arm alike, so arm and control are compared seed by seed, d_s = arm_s - control_s.

Verdict rule (val perplexity, lower is better), over the n seeds both arms finished:
* n < 2: "not enough seeds" (no spread to compare against);
* |mean(d)| <= std(d) (sample std, ddof 1, the seed-to-seed spread of the paired
  difference): "no measurable effect", whatever the sign;
* otherwise "better" if mean(d) < 0, else "worse".
The rule is deliberately simple and lenient: |mean| > std is t = mean / (std / sqrt(n)) >
sqrt(n), i.e. t > 1.73 for 3 seeds, well short of a 95% test (t > 4.30). A "better" from 3
seeds says "worth more seeds", not "proven"; t and n are reported next to it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

BETTER, WORSE, NO_EFFECT, TOO_FEW = "better", "worse", "no measurable effect", "not enough seeds"
RULE = (
    "paired over seeds, d = arm - control (val perplexity, lower is better); "
    "|mean(d)| <= std(d) (sample std of the paired differences): no measurable effect; "
    "else better (mean(d) < 0) or worse; fewer than 2 seeds: not enough seeds"
)


def mean_std(values: Iterable[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1); (None, None) for no values, std None for one."""
    xs = [float(v) for v in values]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


@dataclass
class Paired:
    """arm - control per shared seed, summarised with the verdict."""

    arm: str
    control: str
    seeds: list
    diffs: list[float]
    mean: float | None
    std: float | None
    t: float | None  # mean / (std / sqrt(n)); None when std is 0 or undefined
    verdict: str
    text: str

    def asdict(self) -> dict:
        return asdict(self)


def verdict(mean: float | None, std: float | None, n: int) -> str:
    """The SPEC 9 rule on a paired difference of val perplexity (see the module doc)."""
    if n < 2 or mean is None or std is None:
        return TOO_FEW
    if abs(mean) <= std:
        return NO_EFFECT
    return BETTER if mean < 0 else WORSE


def paired(
    arm: str,
    values: Mapping[Any, float],
    control: str,
    control_values: Mapping[Any, float],
    unit: str = "val ppl",
) -> Paired:
    """Paired comparison over the seeds present in both mappings (seed -> value)."""
    seeds = [s for s in values if s in control_values]
    diffs = [float(values[s]) - float(control_values[s]) for s in seeds]
    m, sd = mean_std(diffs)
    v = verdict(m, sd, len(diffs))
    t = None if m is None or not sd else m / (sd / math.sqrt(len(diffs)))
    if m is None:
        text = f"{arm} vs {control}: no seed in common: {v}"
    else:
        spread = "n/a" if sd is None else f"{sd:.2f}"
        text = (
            f"{arm} vs {control}: {m:+.2f} ± {spread} {unit} (paired over {len(diffs)} "
            f"seed{'s' if len(diffs) != 1 else ''}): {v}"
        )
    return Paired(arm, control, seeds, diffs, m, sd, t, v, text)


# ---------------------------------------------------------------- one experiment's numbers


def _get(d: Mapping, *path, default=None):
    for k in path:
        if not isinstance(d, Mapping) or k not in d:
            return default
        d = d[k]
    return d


def experiment_values(phase1: Mapping, phase2: Mapping) -> dict:
    """The numbers a comparison uses from one experiment's metrics/phase{1,2}.json."""
    return {
        "val_ppl": _get(phase2, "cvfp", "val_ppl"),
        "val_acc": _get(phase2, "cvfp", "val_acc"),
        "best_epoch": _get(phase2, "cvfp", "best_epoch"),
        "phase1_steps": _get(phase1, "train", "steps"),
        "converged_by_construction": _get(phase1, "train", "converged_by_construction"),
        "train_convergence": _get(phase1, "train", "convergence"),
        "trial_final_diff": _get(phase1, "val", "trials", "final_diff"),
        "trial_verdict": _get(phase1, "val", "trials", "verdict"),
        "effective_rank_val": _get(phase1, "val", "effective_rank_ratio"),
        "effective_rank_train": _get(phase1, "train", "effective_rank_ratio"),
        "bigram_val_ppl": _get(phase2, "baselines", "bigram", "val_ppl"),
        "bigram_val_acc": _get(phase2, "baselines", "bigram", "val_acc"),
        "transformer_val_ppl": _get(phase2, "baselines", "transformer", "val_ppl"),
        "transformer_val_acc": _get(phase2, "baselines", "transformer", "val_acc"),
        "zero_context_val_ppl": _get(phase2, "ablations", "zero_context", "val_ppl"),
        "shuffled_context_val_ppl": _get(phase2, "ablations", "shuffled_context", "val_ppl"),
    }


# ---------------------------------------------------------------- the whole comparison

BASELINES = {"transformer": "transformer_val_ppl", "bigram": "bigram_val_ppl"}
ABLATIONS = {"zero_context": "zero_context_val_ppl", "shuffled_context": "shuffled_context_val_ppl"}


def _stat(per_seed: Mapping, key: str) -> tuple[float | None, float | None]:
    return mean_std(v[key] for v in per_seed.values() if v.get(key) is not None)


def _series(per_seed: Mapping, key: str) -> dict:
    return {s: v[key] for s, v in per_seed.items() if v.get(key) is not None}


def summarise(experiments: list[dict], arms: Mapping[str, Mapping], control: str) -> dict:
    """The content of metrics/compare.json.

    experiments: one dict per arm x seed: arm, seed, name, status ("ok" | "failed" | "missing":
    not found when rebuilding from existing experiments), error,
    seconds, and (when ok) values = experiment_values(...). arms: arm -> its param overrides,
    in report order. control: the arm every other is paired with."""
    ok = [e for e in experiments if e["status"] == "ok"]
    per_arm = {a: {str(e["seed"]): e["values"] for e in ok if e["arm"] == a} for a in arms}
    ctrl = per_arm.get(control, {})
    out_arms = {}
    for a, overrides in arms.items():
        ps = per_arm[a]
        ppl, ppl_sd = _stat(ps, "val_ppl")
        acc, acc_sd = _stat(ps, "val_acc")
        fd, fd_sd = _stat(ps, "trial_final_diff")
        er, er_sd = _stat(ps, "effective_rank_val")
        entry: dict[str, Any] = {
            "overrides": dict(overrides),
            "seeds": [int(s) for s in ps],
            "val_ppl_mean": ppl,
            "val_ppl_std": ppl_sd,
            "val_acc_mean": acc,
            "val_acc_std": acc_sd,
            "phase1_steps": [ps[s]["phase1_steps"] for s in ps],
            "converged_by_construction": [ps[s]["converged_by_construction"] for s in ps],
            "trial_final_diff_mean": fd,
            "trial_final_diff_std": fd_sd,
            "effective_rank_val_mean": er,
            "effective_rank_val_std": er_sd,
            "failed_seeds": [
                int(e["seed"]) for e in experiments if e["arm"] == a and e["status"] == "failed"
            ],
            "per_seed": ps,
        }
        if a == control:
            entry["paired"] = None
            entry["verdict"] = (
                f"{a}: the control ({pm(ppl, ppl_sd)} val ppl over {len(ps)} "
                f"seed{'s' if len(ps) != 1 else ''})"
            )
        else:
            p = paired(a, _series(ps, "val_ppl"), control, _series(ctrl, "val_ppl"))
            entry["paired"], entry["verdict"] = p.asdict(), p.text
        # Against the same-size Transformer of the same seeds: this arm's own when it trained
        # one, else the control's (compare.transformer_in_control_only).
        tr = _series(ps, "transformer_val_ppl") or _series(ctrl, "transformer_val_ppl")
        entry["vs_transformer"] = paired(a, _series(ps, "val_ppl"), "transformer", tr).asdict()
        out_arms[a] = entry

    # Baselines and ablations. The baselines do not depend on the Phase 1 arm except through
    # the Transformer's epoch budget (= the arm's Phase 2 epochs), so they are read from the
    # control arm's runs and paired with it.
    source = control if ctrl else next((a for a in arms if per_arm[a]), control)
    src = per_arm.get(source, {})
    baselines = {}
    for name, key in BASELINES.items():
        m, sd = _stat(src, key)
        p = paired(name, _series(src, key), source, _series(src, "val_ppl"))
        baselines[name] = {
            "source_arm": source,
            "seeds": [int(s) for s in _series(src, key)],
            "val_ppl_mean": m,
            "val_ppl_std": sd,
            "val_acc_mean": _stat(src, key.replace("ppl", "acc"))[0],
            "per_seed": _series(src, key),
            "paired": p.asdict(),
            "verdict": p.text,
        }
    ablations: dict[str, dict[str, dict]] = {}
    for a in arms:
        ps = per_arm[a]
        ablations[a] = {}
        for name, key in ABLATIONS.items():
            m, sd = _stat(ps, key)
            p = paired(f"{name} ({a})", _series(ps, key), f"C* ({a})", _series(ps, "val_ppl"))
            ablations[a][name] = {
                "val_ppl_mean": m,
                "val_ppl_std": sd,
                "paired": p.asdict(),
                "verdict": p.text,
            }
    seeds = sorted(
        {int(e["seed"]) for e in experiments}, key=[int(e["seed"]) for e in experiments].index
    )
    return {
        "control": control,
        "metric": "val_ppl",
        "rule": RULE,
        "seeds": seeds,
        "arms": out_arms,
        "baselines": baselines,
        "ablations": ablations,
        "failed": [
            {"arm": e["arm"], "seed": e["seed"], "name": e["name"], "error": e.get("error")}
            for e in experiments
            if e["status"] == "failed"
        ],
        "missing": [e["name"] for e in experiments if e["status"] == "missing"],
        "experiments": [
            {k: e.get(k) for k in ("name", "arm", "seed", "status", "seconds")} for e in experiments
        ],
    }


def pm(m: float | None, sd: float | None, digits: int = 2) -> str:
    if m is None:
        return "n/a"
    return f"{m:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")
