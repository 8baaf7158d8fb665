"""Does CVFP work? Control arms x seeds as DVC experiments, then a comparison report.

    python -m flows.compare                                  # compare.run arms x compare.seeds
    python -m flows.compare --arms none cvfp --seeds 2 -S phase2.epochs=1

    python -m flows.compare --workers 2 --threads 1          # 2 at once, 1 torch thread each
    python -m flows.compare --task-runner dask --dask-address tcp://host:8786

A Prefect flow (temporary API if no server, like flows.pipeline) with one task run per arm
x seed, `compare.workers` at once on orchestration.task_runner (threads, or Dask workers).
Each task is `dvc exp run -n cmp-<arm>-s<seed> -S ...` in a private clone sharing the DVC
cache, its ref pushed back (tasks/compare_experiment.py): the workspace keeps its params and outputs,
and `dvc exp show` lists every experiment. An experiment already finished with the same
code and params (its fingerprint) is restored, not rerun (`--force` reruns).
A failed experiment is logged with its error and the sweep goes on; the report lists it.
Outputs: reports/compare.html, reports/compare.md, metrics/compare.json (docs/compare.md).
Exit status 1 when any experiment failed (the outputs are written all the same).
"""

from __future__ import annotations

import argparse
import json
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
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import as_completed  # noqa: E402

from cvfp.params import OrchestrationParams, load_params  # noqa: E402
from flows.artifacts import refresh_report  # noqa: E402
from flows.progress import CompareProgress  # noqa: E402
from flows.shards import task_runner  # noqa: E402
from tasks.compare import (  # noqa: E402
    COMPARE_HTML,
    COMPARE_JSON,
    COMPARE_MD,
    collect,
    parse_sets,
    plan,
    run_order,
    write_outputs,
)
from tasks.compare_experiment import (  # noqa: E402
    ExperimentFailed,
    Source,
    failed,
    fetch_result,
    forget,
    reusable,
    run_experiment,
    threads_per_experiment,
    workspace_source,
)
from tasks.workspace import holds_workspace  # noqa: E402


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}h{m % 60:02d}m{s:02d}s" if m >= 60 else f"{m}m{s:02d}s"


# Never cached by Prefect and never persisted: whether an experiment reruns is decided by
# its fingerprint (tasks.compare_experiment.reusable), and its results live in git and DVC.
@task(name="experiment", cache_policy=NO_CACHE, persist_result=False)
def experiment(
    spec: str, source: Source, threads: int, reuse: str | None, run_cache: bool = True
) -> dict:
    """One arm x seed as a DVC experiment in its own clone (on a thread or a Dask worker);
    fails (and the flow goes on) with DVC's error. `reuse`: the commit of the finished
    experiment with the same fingerprint, restored instead of run. `run_cache`: stages
    restored from DVC's run-cache (False: --force, every stage runs)."""
    logger = get_run_logger()
    exp = json.loads(spec)
    if reuse:
        logger.info(
            "%s: restored: experiment %s has the same code and params; nothing runs",
            exp["name"],
            reuse[:7],
        )
        return {"name": exp["name"], "seconds": 0.0, "stages": [], "cached": [], "reused": reuse}
    if exp["invalid"]:
        raise ExperimentFailed(f"{exp['name']} not run: {exp['invalid']}")
    logger.info("%s: running on %d torch thread(s)", exp["name"], threads)
    t0 = time.perf_counter()
    try:
        result = run_experiment(exp, source, threads, on_line=logger.info, run_cache=run_cache)
        return {**result, "reused": None}
    except ExperimentFailed as err:
        err.seconds = time.perf_counter() - t0
        raise


def experiment_runner(orch: OrchestrationParams, workers: int):
    """`workers` experiments at once on orchestration's engine: threads here (each runs
    its experiment in a subprocess), or Dask: a LocalCluster of `workers` processes when
    dask_address is null, else the cluster at dask_address."""
    return task_runner(orch.model_copy(update={"workers": workers}))


@flow(name="cvfp-compare", log_prints=True)
@holds_workspace("flows.compare")  # one runner per workspace (tasks.workspace.workspace_lock)
def compare(
    params_path: str = "params.yaml",
    arms: list[str] | None = None,
    seeds: int | None = None,
    overrides: dict | None = None,
    workers: int | None = None,
    threads: int | None = None,
    force: bool = False,
    repo: str | None = None,
) -> dict:
    """Run the experiments (`workers` at once on the flow's task runner; finished ones with
    the same fingerprint are restored), then write the comparison outputs."""
    logger = get_run_logger()
    params = load_params(params_path)
    exps = plan(params, arms, seeds, overrides)  # every arm x seed validated first
    arm_names = list(dict.fromkeys(e["arm"] for e in exps))
    workers = workers or params.compare.workers
    n_threads = threads_per_experiment(workers, threads or params.compare.threads)
    source = workspace_source(repo)  # what a worker clones and pushes the result to
    reuse = {e["name"]: None if force or e["invalid"] else reusable(e, source) for e in exps}
    for e in exps:
        if not reuse[e["name"]]:
            forget(e, source)  # a failed rerun must not leave the old result behind
    n, t0 = len(exps), time.perf_counter()
    logger.info(
        "compare: %d experiment(s): arms %s x seeds %s; %d at once, %d torch thread(s) each; "
        "%d restored from finished experiments",
        n,
        arm_names,
        list(dict.fromkeys(e["seed"] for e in exps)),
        min(workers, n),
        n_threads,
        sum(1 for r in reuse.values() if r),
    )
    progress = CompareProgress(n, min(workers, n))  # `compare-progress` (flows/progress.py)
    # Longest first (the control's Transformer), and an experiment that restores another's
    # phase1 from DVC's run-cache (no_context) only once that one has finished (run_order).
    order, waits_for = run_order(params, exps)
    runs = {i for i, e in enumerate(exps) if not (reuse[e["name"]] or e["invalid"])}
    waiting: dict[int, list[int]] = {}
    futures: dict = {}  # future -> index in exps

    def submit(i: int) -> None:
        exp = exps[i]
        # The experiment as JSON text, a new object: Prefect links a task argument to an
        # earlier task's result when they share an object (a name string the result repeats)
        # and draws a dependency arrow; quote() would avoid it but reaches Dask tasks wrapped.
        # Independent task runs: no future is passed to another task (no dependency arrows).
        name = f"{i + 1}of{n}-{exp['arm']}-seed{exp['seed']}"
        fut = experiment.with_options(task_run_name=name).submit(
            json.dumps(exp), source, n_threads, reuse[exp["name"]], not force
        )
        futures[fut] = i

    for i in order:
        if not force and i in runs and waits_for.get(i) in runs:  # --force: no run-cache
            waiting.setdefault(waits_for[i], []).append(i)
        else:
            submit(i)
    records: dict[int, dict] = {}
    while len(records) < n:
        fut = next(as_completed([f for f, i in futures.items() if i + 1 not in records]))
        i = futures[fut]
        for j in waiting.pop(i, []):  # its phase1 is in the run-cache now (or it failed)
            submit(j)
        k, exp = i + 1, exps[i]
        result = fut.result(raise_on_failure=False)
        if isinstance(result, dict):
            try:
                fetch_result(exp, source)
                rec = {**collect(exp), "seconds": result["seconds"], "reused": result["reused"]}
                outcome = (
                    f"restored ({result['reused'][:7]})"
                    if result["reused"]
                    else f"done in {_clock(result['seconds'])} "
                    f"(CPU {_clock(result['cpu_seconds'])})"
                )
                if result["cached"]:
                    outcome += f"; from DVC's run-cache: {', '.join(result['cached'])}"
            except ExperimentFailed as err:
                rec = failed(exp, str(err), result["seconds"])
                outcome = f"FAILED in {_clock(result['seconds'])}: {err}"
        else:
            known = isinstance(result, ExperimentFailed)
            msg = str(result) if known else f"{type(result).__name__}: {result}"
            seconds = getattr(result, "seconds", None) if known else None
            rec = failed(exp, msg, seconds)
            outcome = f"FAILED in {_clock(seconds or 0.0)}: {msg}"
        records[k] = rec
        progress.finished(
            exp["name"], outcome.split(" in ")[0].split(" (")[0], rec.get("seconds") or 0.0
        )
        if rec["status"] != "ok":
            logger.error("experiment %d of %d %s %s", k, n, exp["name"], outcome)
        elapsed, done = time.perf_counter() - t0, len(records)
        logger.info(
            "experiment %d of %d %s %s; %d of %d finished, elapsed %s, ETA %s",
            k,
            n,
            exp["name"],
            outcome,
            done,
            n,
            _clock(elapsed),
            _clock(elapsed / done * (n - done)),
        )
    summary = write_outputs(params, [records[k] for k in sorted(records)], arm_names, overrides)
    logger.info(refresh_report())  # report.html shows the verdicts (a dep of the report stage)
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


def run_comparison(
    params_path: str = "params.yaml",
    arms: list[str] | None = None,
    seeds: int | None = None,
    overrides: dict | None = None,
    workers: int | None = None,
    threads: int | None = None,
    force: bool = False,
    task_runner_kind: str | None = None,
    dask_address: str | None = None,
    repo: str | None = None,
) -> dict:
    """The flow on the task runner params.yaml's `orchestration` names (or the arguments')."""
    params = load_params(params_path)
    orch = params.orchestration
    if task_runner_kind:
        orch = orch.model_copy(update={"task_runner": task_runner_kind})
    if dask_address:
        orch = orch.model_copy(update={"dask_address": dask_address})
    runner = experiment_runner(orch, workers or params.compare.workers)
    return compare.with_options(task_runner=runner)(
        params_path, arms, seeds, overrides, workers, threads, force, repo
    )


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
    ap.add_argument("--workers", type=int, help="experiments at once (default: compare.workers)")
    ap.add_argument(
        "--threads",
        type=int,
        help="torch threads per experiment (default: compare.threads, else cores // workers)",
    )
    ap.add_argument(
        "--task-runner",
        choices=["thread", "dask"],
        help="where experiments run (default: orchestration.task_runner)",
    )
    ap.add_argument("--dask-address", help="a Dask scheduler, e.g. tcp://host:8786")
    ap.add_argument(
        "--repo",
        help="git URL or path the workers clone and push experiment refs to (default: here)",
    )
    ap.add_argument(
        "--force",
        action="store_true",
        help="rerun every experiment, even one finished with the same code and params",
    )
    args = ap.parse_args(argv)
    if not Path("dvc.yaml").exists():
        ap.error("run from the project root (dvc.yaml not found)")
    for flag in ("workers", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            ap.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    summary = run_comparison(
        args.params,
        args.arms,
        args.seeds,
        dict(parse_sets(args.set)),
        args.workers,
        args.threads,
        args.force,
        args.task_runner,
        args.dask_address,
        args.repo,
    )
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
