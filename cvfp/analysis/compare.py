"""metrics/compare.json from the experiments of a comparison over seeds (SPEC section 9):
`summarise` pairs every arm with the control seed by seed, the baselines with the control's
CVFP and each arm's context ablations with its C*, and assembles the table. Plain Python, no
Prefect/DVC: `flows/compare.py` runs the experiments, `tasks/compare.py` reads their metrics
(cvfp/analysis/compare_inputs.py) and calls `summarise`; the statistics are cvfp/analysis/compare_stats.py
(scipy.stats, statsmodels), the verdict word cvfp/analysis/compare_verdict.py, and
cvfp/analysis/compare_report.py puts the numbers into words. docs/compare.md explains each number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cvfp.analysis.compare_inputs import ConversationLosses, check_aligned
from cvfp.analysis.compare_metrics import (
    Ablation,
    Arm,
    Baseline,
    CompareMetrics,
    ExperimentRow,
    Failed,
    SeedInterval,
    SeedValues,
)
from cvfp.analysis.compare_stats import bootstrap_diff, delta_nats, holm, paired_stats
from cvfp.analysis.compare_verdict import verdict
from cvfp.params import CompareParams

BASELINES = ("bigram", "transformer")
ABLATIONS = ("zero_context", "shuffled_context")


def _mean_std(xs: Sequence[float | None]) -> tuple[float | None, float | None]:
    v = np.array([x for x in xs if x is not None], dtype=float)
    if not len(v):
        return None, None
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def _exp(x: float | None) -> float | None:
    return None if x is None else math.exp(x)


def summarise(
    experiments: list[dict],
    cfg: CompareParams,
    arms: Sequence[str],
    control: str,
) -> CompareMetrics:
    """The content of metrics/compare.json.

    experiments: one dict per arm x seed: arm, seed, name, status ("ok" | "failed" |
    "missing": not found when rebuilding from existing experiments), error, seconds, and when
    ok `values` (SeedValues) and `conversations` (ConversationLosses). cfg: params `compare`
    (the arms' overrides, the confirmatory family, delta, alpha, power, bootstrap). arms: the
    arms run, in report order. control: the arm every other is paired with."""
    delta = delta_nats(cfg.delta)
    ok = [e for e in experiments if e["status"] == "ok"]
    vals: dict[str, dict[str, SeedValues]] = {
        a: {str(e["seed"]): e["values"] for e in ok if e["arm"] == a} for a in arms
    }
    convs: dict[str, dict[str, ConversationLosses]] = {
        a: {str(e["seed"]): e["conversations"] for e in ok if e["arm"] == a} for a in arms
    }
    ctrl = vals.get(control, {})

    def series(a_vals: Mapping[str, SeedValues], key: str) -> dict[str, float | None]:
        return {s: getattr(v, key) for s, v in a_vals.items()}

    def paired(values, reference, ref_name):
        return paired_stats(values, reference, ref_name, delta, cfg.alpha, cfg.power)

    def boot(arm_conv, ref_conv, model, ref_model, what) -> dict[str, SeedInterval]:
        out = {}
        for s, c in arm_conv.items():
            r = ref_conv.get(s)
            nats = getattr(c, model)
            if r is None or nats is None or getattr(r, ref_model) is None:
                continue
            check_aligned(c, r, f"{what}, seed {s}")
            out[s] = bootstrap_diff(
                c.targets,
                nats,
                getattr(r, ref_model),
                cfg.bootstrap_resamples,
                cfg.bootstrap_seed,
                cfg.alpha,
            )
        return out

    family = [a for a in arms if a in cfg.confirmatory and a != control]
    out_arms: dict[str, Arm] = {}
    for a in arms:
        av = vals[a]
        loss_m, loss_sd = _mean_std([v.test_loss for v in av.values()])
        acc_m, acc_sd = _mean_std([v.test_acc for v in av.values()])
        fd_m, fd_sd = _mean_std([v.trial_final_diff for v in av.values()])
        er_m, er_sd = _mean_std([v.effective_rank_val for v in av.values()])
        fields: dict[str, Any] = {
            "role": "control"
            if a == control
            else ("confirmatory" if a in family else "interval only"),
            "overrides": dict(cfg.arms[a]),
            "seeds": [int(s) for s in av],
            "failed_seeds": [
                int(e["seed"]) for e in experiments if e["arm"] == a and e["status"] == "failed"
            ],
            "test_loss_mean": loss_m,
            "test_loss_std": loss_sd,
            "test_ppl": _exp(loss_m),
            "test_acc_mean": acc_m,
            "test_acc_std": acc_sd,
            "phase1_steps": [v.phase1_steps for v in av.values()],
            "converged_by_construction": [v.converged_by_construction for v in av.values()],
            "trial_final_diff_mean": fd_m,
            "trial_final_diff_std": fd_sd,
            "effective_rank_val_mean": er_m,
            "effective_rank_val_std": er_sd,
            "per_seed": av,
        }
        if a == control:
            fields["n_seeds"] = sum(v.test_loss is not None for v in av.values())
        else:
            ps = paired(series(av, "test_loss"), series(ctrl, "test_loss"), control)
            ps.bootstrap = boot(
                convs[a], convs.get(control, {}), "cvfp", "cvfp", f"{a} vs {control}"
            )
            fields.update(ps.model_dump(exclude_unset=True))
        out_arms[a] = Arm(**fields)

    for a, p in zip(family, holm([out_arms[a].p for a in family]), strict=True):
        e = out_arms[a]
        e.p_holm = p
        e.verdict = verdict(e.n_seeds or 0, e.diff_mean, p, e.p_equiv, cfg.alpha)

    # Baselines: trained on the same split and seeds, independent of the Phase 1 arm except
    # through the Transformer's epoch budget; read from the control arm's experiments and paired
    # with that arm's CVFP (per seed, and per conversation within each experiment).
    source = control if ctrl else next((a for a in arms if vals[a]), control)
    src, src_conv = vals.get(source, {}), convs.get(source, {})
    baselines: dict[str, Baseline] = {}
    for name in BASELINES:
        losses = {s: v for s, v in series(src, f"{name}_test_loss").items() if v is not None}
        m, _ = _mean_std(list(losses.values()))
        ps = paired(losses, series(src, "test_loss"), f"CVFP ({source})")
        ps.bootstrap = boot(src_conv, src_conv, name, "cvfp", f"{name} vs {source}")
        baselines[name] = Baseline(
            source_arm=source,
            seeds=[int(s) for s in losses],
            test_loss_mean=m,
            test_ppl=_exp(m),
            test_acc_mean=_mean_std([v for v in series(src, f"{name}_test_acc").values()])[0],
            per_seed=losses,
            **ps.model_dump(exclude_unset=True),
        )

    ablations: dict[str, dict[str, Ablation]] = {}
    for a in arms:
        ablations[a] = {}
        for name in ABLATIONS:
            ab_losses = series(vals[a], f"{name}_test_loss")
            m, _ = _mean_std(list(ab_losses.values()))
            ps = paired(ab_losses, series(vals[a], "test_loss"), f"C* ({a})")
            ablations[a][name] = Ablation(
                test_loss_mean=m, test_ppl=_exp(m), **ps.model_dump(exclude_unset=True)
            )

    seeds = list(dict.fromkeys(int(e["seed"]) for e in experiments))
    return CompareMetrics(
        control=control,
        metric="test_loss",
        unit="nats/token",
        alpha=cfg.alpha,
        power=cfg.power,
        delta=delta,
        delta_relative=cfg.delta,
        confirmatory=family,
        seeds=seeds,
        arms=out_arms,
        baselines=baselines,
        ablations=ablations,
        failed=[
            Failed(arm=e["arm"], seed=e["seed"], name=e["name"], error=e.get("error"))
            for e in experiments
            if e["status"] == "failed"
        ],
        missing=[e["name"] for e in experiments if e["status"] == "missing"],
        experiments=[
            ExperimentRow(
                name=e["name"],
                arm=e["arm"],
                seed=e["seed"],
                status=e["status"],
                seconds=e.get("seconds"),
            )
            for e in experiments
        ],
    )
