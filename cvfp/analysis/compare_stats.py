"""The statistics of a comparison over seeds (SPEC section 9), from scipy.stats and
statsmodels: no test is written by hand here. docs/compare.md explains each number.

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

The verdict word these numbers give is cvfp/analysis/compare_verdict.py.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired

from cvfp.analysis.compare_metrics import PairedStats, SeedInterval


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
