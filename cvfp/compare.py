"""Statistics of a comparison over seeds (SPEC section 9), from scipy.stats and statsmodels:
no test is written by hand here. Plain Python, no Prefect/DVC: `flows/compare.py` runs the
experiments, `tasks/compare.py` reads their metrics and calls `summarise`,
`cvfp/compare_report.py` puts the numbers into words. docs/compare.md explains each number.

The metric is test loss (nats per token, lower is better). The design is paired: a seed fixes
the initialisation, the data order and the sampling for every arm alike (the split is fixed),
so an arm and its reference are compared seed by seed, d_s = loss(arm, s) - loss(ref, s), over
the seeds both finished. For each arm against the control:

* paired t-test and its (1 - alpha) interval of mean(d) (`scipy.stats.ttest_rel`);
* Holm-adjusted p over the confirmatory arms (`statsmodels ... multipletests(method="holm")`);
* equivalence within +-delta, two one-sided tests (`statsmodels ... ttost_paired`), where
  delta = ln(1 + compare.delta) nats/token: compare.delta is the smallest effect of interest
  as a relative change of test perplexity (0.01: 1%), whatever the control's level;
* seeds needed to detect delta with compare.power at the observed std(d)
  (`statsmodels.stats.power.TTestPower`);
* Wilcoxon signed-rank p only when n lets it reach p < alpha (exact two-sided minimum p is
  2 / 2**n: n >= 6 at alpha 0.05), else None;
* per seed, a paired bootstrap interval over test conversations (`scipy.stats.bootstrap`,
  fixed random_state) of the difference in test loss (sum of nats / sum of targets).

Verdict (confirmatory arms only), computed in this order: n < 2: "not enough seeds"; Holm p <
alpha: "better" (mean(d) < 0) or "worse"; TOST p < alpha: "equivalent"; else "inconclusive".
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired

from .metrics.compare import (
    Ablation,
    Arm,
    Baseline,
    CompareMetrics,
    ExperimentRow,
    Failed,
    PairedStats,
    SeedInterval,
    SeedValues,
    Verdict,
)
from .params import CompareParams

BETTER: Verdict = "better"
WORSE: Verdict = "worse"
EQUIVALENT: Verdict = "equivalent"
INCONCLUSIVE: Verdict = "inconclusive"
TOO_FEW: Verdict = "not enough seeds"

CONVERSATION_COLUMNS = (
    "conversation_id",
    "targets",
    "cvfp_nats",
    "bigram_nats",
    "transformer_nats",
)


def _num(x: Any) -> float | None:
    """A finite float, or None (scipy/statsmodels give nan or inf where a number is undefined)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _pair(lo: Any, hi: Any) -> tuple[float, float] | None:
    lo, hi = _num(lo), _num(hi)
    return None if lo is None or hi is None else (lo, hi)


def delta_nats(relative: float) -> float:
    """compare.delta (a relative change of perplexity) as a bound on test loss, nats/token."""
    return math.log1p(relative)


def rank_test_possible(n: int, alpha: float) -> bool:
    """Whether a two-sided Wilcoxon signed-rank test on n pairs can reach p < alpha at all
    (its smallest exact p is 2 / 2**n: all differences of one sign)."""
    return n >= 1 and 2.0 / 2**n < alpha


def seeds_needed(delta: float, std: float | None, alpha: float, power: float) -> int | None:
    """The fewest seeds (>= 2) for a two-sided paired t-test at level alpha to detect a true
    difference of delta with the given power, at the observed std of the per-seed differences
    (statsmodels TTestPower; its continuous solution rounded to the first whole n whose power
    reaches the target). None when std is unknown or zero (no spread observed)."""
    if std is None or not std > 0:
        return None
    effect = delta / std
    tp = TTestPower()

    def enough(n: int) -> bool:
        return tp.power(effect_size=effect, nobs=n, alpha=alpha, alternative="two-sided") >= power

    with warnings.catch_warnings():  # the solver fails (nan) when the answer is below 2
        warnings.simplefilter("ignore")
        solved = _num(tp.solve_power(effect_size=effect, alpha=alpha, power=power))
    n = 2 if solved is None else max(2, math.ceil(solved))
    while n > 2 and enough(n - 1):
        n -= 1
    for _ in range(1000):  # the rounded solution is at most a step or two off
        if enough(n):
            return n
        n += 1
    return None


def paired_stats(
    values: Mapping[Any, float | None],
    reference: Mapping[Any, float | None],
    reference_name: str,
    delta: float,
    alpha: float,
    power: float,
) -> PairedStats:
    """Paired comparison over the seeds present (not None) in both mappings (seed -> loss,
    nats/token), in `values`' order. No Holm p and no verdict (see `summarise`)."""
    seeds = [s for s, v in values.items() if v is not None and reference.get(s) is not None]
    x = np.array([float(values[s]) for s in seeds])  # type: ignore[arg-type]
    y = np.array([float(reference[s]) for s in seeds])  # type: ignore[arg-type]
    d = x - y
    n = len(d)
    # Every key is set (None where undefined), so each paired entry of compare.json has them all.
    f: dict[str, Any] = dict.fromkeys(PairedStats.model_fields)
    f.update(
        reference=reference_name,
        paired_seeds=[int(s) for s in seeds],
        n_seeds=n,
        diffs=[float(v) for v in d],
        delta=delta,
    )
    if n:
        ref_ppl = math.exp(float(y.mean()))
        f.update(
            diff_mean=float(d.mean()),
            reference_ppl=ref_ppl,
            ppl_diff=math.exp(float(x.mean())) - ref_ppl,
            rel_change=math.expm1(float(d.mean())),
        )
    if n >= 2:
        with warnings.catch_warnings():  # constant differences: t = +-inf or nan, kept as None
            warnings.simplefilter("ignore")
            tt = stats.ttest_rel(x, y)
            ci = tt.confidence_interval(confidence_level=1 - alpha)
            p_equiv = ttost_paired(x, y, -delta, delta)[0]
        std = float(d.std(ddof=1))
        ci95 = _pair(ci.low, ci.high)
        f.update(
            diff_std=std,
            t=_num(tt.statistic),
            df=int(tt.df),
            p=_num(tt.pvalue),
            ci95=ci95,
            p_equiv=_num(p_equiv),
            seeds_needed=seeds_needed(delta, std, alpha, power),
        )
        if rank_test_possible(n, alpha) and np.any(d != 0):
            f["rank_p"] = _num(stats.wilcoxon(x, y).pvalue)
        if ci95 is not None:
            lo, hi = ci95
            f["ppl_ci95"] = (ref_ppl * math.expm1(lo), ref_ppl * math.expm1(hi))
            f["rel_ci95"] = (math.expm1(lo), math.expm1(hi))
    return PairedStats(**f)


def holm(ps: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values over the given p-values; None stays None (not in the family)."""
    idx = [i for i, p in enumerate(ps) if p is not None]
    out: list[float | None] = [None] * len(ps)
    if idx:
        adjusted = multipletests([ps[i] for i in idx], method="holm")[1]
        for i, p in zip(idx, adjusted, strict=True):
            out[i] = float(p)
    return out


def verdict(
    n: int, diff_mean: float | None, p_holm: float | None, p_equiv: float | None, alpha: float
) -> Verdict:
    """The SPEC 9 verdict word (see the module doc)."""
    if n < 2 or diff_mean is None:
        return TOO_FEW
    if p_holm is not None and p_holm < alpha:
        return BETTER if diff_mean < 0 else WORSE
    if p_equiv is not None and p_equiv < alpha:
        return EQUIVALENT
    return INCONCLUSIVE


# ---------------------------------------------------------------- per-conversation test losses


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


def _statistic(targets, nats, ref_nats, axis=-1):
    return (nats.sum(axis=axis) - ref_nats.sum(axis=axis)) / targets.sum(axis=axis)


def bootstrap_diff(
    targets: np.ndarray,
    nats: np.ndarray,
    ref_nats: np.ndarray,
    resamples: int,
    seed: int,
    alpha: float,
) -> SeedInterval:
    """Paired bootstrap over conversations (BCa, scipy.stats.bootstrap) of the difference in
    test loss, (sum nats - sum ref_nats) / sum targets: the same conversations resampled for
    both models. ci95 None for a single conversation or when the interval is undefined."""
    point = float(_statistic(targets, nats, ref_nats))
    if len(targets) < 2:  # one conversation: nothing to resample
        return SeedInterval(diff=point, ci95=None, conversations=len(targets))
    with warnings.catch_warnings():  # degenerate data: nan interval, kept as None
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            (targets, nats, ref_nats),
            _statistic,
            paired=True,
            vectorized=True,
            n_resamples=resamples,
            confidence_level=1 - alpha,
            random_state=np.random.default_rng(seed),
        )
    ci = res.confidence_interval
    return SeedInterval(diff=point, ci95=_pair(ci.low, ci.high), conversations=len(targets))


def _aligned(a: ConversationLosses, b: ConversationLosses, what: str) -> None:
    if a.ids != b.ids or not np.array_equal(a.targets, b.targets):
        raise ValueError(
            f"{what}: the test conversations or their target counts differ, so they are "
            f"not on the same test split; rerun both on one baseline commit"
        )


# ---------------------------------------------------------------- one experiment's numbers


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


# ---------------------------------------------------------------- the whole comparison

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
            _aligned(c, r, f"{what}, seed {s}")
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
