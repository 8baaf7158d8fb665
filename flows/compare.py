"""Does CVFP work? Control arms x seeds as DVC experiments, then a comparison report.

    python -m flows.compare                                  # compare.run arms x compare.seeds
    python -m flows.compare --arms none cvfp --seeds 2 -S phase2.epochs=1

A Prefect flow (temporary API if no server, like flows.pipeline) with one task run per arm
x seed. Each task is `dvc exp run --temp -n cmp-<arm>-s<seed> -S ...` (tasks/compare.py):
the workspace keeps its params and outputs, and `dvc exp show` lists every experiment.
A failed experiment is logged with its error and the sweep goes on; the report lists it.
Outputs: reports/compare.html, reports/compare.md, metrics/compare.json (docs/compare.md).
Exit status 1 when any experiment failed (the outputs are written all the same).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "cvfp")
# Without a server a temporary one starts; on a busy machine it can need more than the
# default 20 s, and a sweep of many minutes can afford the wait.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402

from cvfp.params import load_params  # noqa: E402
from tasks.compare import (
    COMPARE_HTML,
    COMPARE_JSON,
    COMPARE_MD,
    ExperimentFailed,
    failed,  # noqa: E402
    parse_sets,
    plan,
    run_experiment,
    write_outputs,
)


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}h{m % 60:02d}m{s:02d}s" if m >= 60 else f"{m}m{s:02d}s"


@task(
    name="experiment",
    task_run_name="{exp[arm]}-seed{exp[seed]}",
    cache_policy=None,
    persist_result=False,
)
def experiment(exp: dict) -> dict:
    """One arm x seed as a DVC experiment; fails (and the flow goes on) with DVC's error."""
    logger = get_run_logger()
    return run_experiment(exp, on_line=logger.info)


@flow(name="cvfp-compare", log_prints=True)
def compare(
    params_path: str = "params.yaml",
    arms: list[str] | None = None,
    seeds: int | None = None,
    overrides: dict | None = None,
) -> dict:
    """Run the experiments one after another, then write the comparison outputs."""
    logger = get_run_logger()
    params = load_params(params_path)
    exps = plan(params, arms, seeds, overrides)  # every arm x seed validated first
    arm_names = list(dict.fromkeys(e["arm"] for e in exps))
    n, t0, records = len(exps), time.perf_counter(), []
    logger.info(
        "compare: %d experiment(s): arms %s x seeds %s",
        n,
        arm_names,
        list(dict.fromkeys(e["seed"] for e in exps)),
    )
    for k, exp in enumerate(exps, 1):
        logger.info(
            "experiment %d of %d: %s (arm %s, seed %d)", k, n, exp["name"], exp["arm"], exp["seed"]
        )
        start = time.perf_counter()
        state = experiment.with_options(task_run_name=f"{k}of{n}-{exp['arm']}-seed{exp['seed']}")(
            exp, return_state=True
        )
        seconds = time.perf_counter() - start
        if state.is_completed():
            records.append(state.result())
            outcome = f"done in {_clock(seconds)}"
        else:
            err = state.result(raise_on_failure=False)
            msg = str(err) if isinstance(err, ExperimentFailed) else f"{type(err).__name__}: {err}"
            records.append(failed(exp, msg, seconds))
            outcome = f"FAILED in {_clock(seconds)}: {msg}"
            logger.error("experiment %d of %d %s", k, n, outcome)
        elapsed = time.perf_counter() - t0
        eta = elapsed / k * (n - k)
        logger.info(
            "experiment %d of %d %s %s; elapsed %s, ETA %s",
            k,
            n,
            exp["name"],
            outcome,
            _clock(elapsed),
            _clock(eta) if k < n else "0m00s",
        )
    summary = write_outputs(params, records, arm_names, overrides)  # logs the verdicts
    create_markdown_artifact(
        COMPARE_MD.read_text(), key="cvfp-compare", description=str(COMPARE_MD)
    )
    logger.info(
        "compare: %d of %d experiment(s) ok in %s; %s, %s, %s",
        n - len(summary["failed"]),
        n,
        _clock(time.perf_counter() - t0),
        COMPARE_HTML,
        COMPARE_MD,
        COMPARE_JSON,
    )
    print(f"Comparison report: {COMPARE_HTML.resolve()}")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m flows.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--arms", nargs="+", help="arms from compare.arms (default: compare.run)")
    ap.add_argument("--seeds", type=int, help="how many of compare.seeds (default: all)")
    ap.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param in every experiment, e.g. -S phase2.epochs=1",
    )
    args = ap.parse_args(argv)
    if not Path("dvc.yaml").exists():
        ap.error("run from the project root (dvc.yaml not found)")
    summary = compare(args.params, args.arms, args.seeds, dict(parse_sets(args.set)))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
