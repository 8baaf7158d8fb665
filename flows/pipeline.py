"""The whole pipeline as a Prefect 3 flow, in process, sharing DVC's cache.

    python -m flows.pipeline                          # run once (temporary Prefect API if no server)
    python -m flows.pipeline --serve --cron "0 3 * * *"   # deployment with a schedule
    python -m flows.pipeline --serve --interval 600      # ... or every 600 s; Ctrl-C stops

Each stage is a Prefect task that calls the same `tasks.<stage>.run` as `dvc repro`. A stage
DVC reports up to date is skipped: its task run is named `<stage> (skipped: up to date)` and
ends in the state "Skipped (DVC)" whose message is DVC's reason; a stage that runs is committed
into dvc.lock afterwards, so `dvc status` stays clean. tokenize and materialize map their
shards as tasks on `orchestration.task_runner` (flows/shards.py). The library's INFO lines go
to the run's logs, long loops update a `<stage>-progress` artifact, and every run ends by
publishing the current results (flows/artifacts.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # Ctrl-C while Prefect is still importing: exit quietly, no traceback
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "cvfp")  # library logs into Prefect

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.states import Completed  # noqa: E402

from cvfp.params import load_params  # noqa: E402
from cvfp.runtime.utils import progress_listener  # noqa: E402
from tasks.layout import REPORT_HTML, stage_names  # noqa: E402
from tasks.report import write_compare_placeholder  # noqa: E402
from tasks.stage import run_stage  # noqa: E402
from tasks.workspace import workspace_lock

from .artifacts import publish_details, publish_summary  # noqa: E402
from .dvc_state import commit_stage, hold_dvc_lock, stage_status  # noqa: E402
from .progress import StageProgress  # noqa: E402
from .shards import SHARDED_STAGES, shard_mapper  # noqa: E402

SKIPPED = "Skipped (DVC)"  # the state name of a stage DVC calls up to date


def _no_retry_on_config_errors(task, task_run, state) -> bool:
    """Retry transient failures (network hiccups) but not errors that say which param to
    change: retrying an offline hub for minutes helps nobody."""
    try:
        state.result()
    except (RuntimeError, ValueError, FileNotFoundError):
        return False
    except Exception:
        return True
    return False


@contextlib.contextmanager
def _library_logs_to_prefect():
    """`cvfp` INFO lines into the run's logs while a stage runs. PREFECT_LOGGING_EXTRA_LOGGERS
    only takes effect if set before Prefect was first imported in this process (not so under
    pytest or when another module imported Prefect first): then Prefect's API handler is
    attached here for the stage, and removed after it (outside a run it would only warn)."""
    import logging

    from prefect.logging.handlers import APILogHandler

    from tasks.cli import setup_logging

    setup_logging()
    lib = logging.getLogger("cvfp")
    added = None
    if not any(isinstance(h, APILogHandler) for h in lib.handlers):
        added = APILogHandler()
        lib.addHandler(added)
    try:
        yield
    finally:
        if added is not None:
            lib.removeHandler(added)


def _run_stage(stage: str, params_path: str, skip_reason: str | None = None):
    logger = get_run_logger()
    if skip_reason is not None:
        logger.info("stage %s skipped: %s", stage, skip_reason)
        # Prefect has no "skipped" state type: Completed, named and explained
        return Completed(name=SKIPPED, message=f"skipped, {skip_reason}")
    module = importlib.import_module(f"tasks.{stage}")
    params = load_params(params_path)
    run = module.run
    if stage in SHARDED_STAGES:  # shards as mapped tasks on orchestration.task_runner
        run = functools.partial(module.run, map_shards=shard_mapper(stage, params.orchestration))
    progress = StageProgress(stage, params)
    with _library_logs_to_prefect(), progress_listener(progress):
        result = run_stage(stage, run, params)
    progress.done()
    commit_stage(stage)
    logger.info("stage %s done and committed to dvc.lock", stage)
    return result


def require_tracked_params(params_path: str) -> None:
    """The flow commits what it runs into dvc.lock, whose params DVC reads from the
    workspace's params.yaml: another file would be recorded as params.yaml's values."""
    if Path(params_path).resolve() != Path("params.yaml").resolve():
        raise ValueError(
            f"--params {params_path}: the flow records its runs in dvc.lock, and DVC reads "
            f"params from params.yaml, so dvc.lock would record params.yaml's values for "
            f"outputs made with {params_path}'s. Copy it to params.yaml, or run an experiment "
            f"instead: `dvc exp run -S key=value`"
        )


@task(
    name="publish-results",
    task_run_name="publish-results",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def publish_details_task() -> list[str]:
    """The stage metrics tables and report.md, as artifacts of this task run: the flow run's
    own artifact list then holds cvfp-summary alone, first (flows/artifacts.py)."""
    return publish_details()


def stage_task(stage: str):
    opts: dict[str, Any] = dict(
        name=stage, task_run_name=stage, cache_policy=NO_CACHE, persist_result=False
    )
    if stage == "download":  # the only stage with a network: retry transient failures
        opts.update(
            retries=2, retry_delay_seconds=10, retry_condition_fn=_no_retry_on_config_errors
        )
    return task(**opts)(_run_stage)


@flow(name="cvfp-pipeline", log_prints=True)
def pipeline(params_path: str = "params.yaml", stages: list[str] | None = None) -> dict:
    """Run the stages in DVC order; returns {stage: 'ran' | 'skipped'}. Whatever happens, the
    current metrics and report are published as artifacts at the end (flows/artifacts.py)."""
    require_tracked_params(params_path)
    load_params(params_path)  # fail before any stage on a bad params file
    logger = get_run_logger()
    outcome: dict = {}
    # One runner at a time: the workspace lock (names this run to a second runner) and
    # DVC's own lock (a `dvc repro` meanwhile is refused before it deletes anything).
    with workspace_lock("flows.pipeline"), hold_dvc_lock("flows.pipeline"):
        _run_stages(stages, params_path, outcome, logger)
    logger.info("pipeline: %s", outcome)
    if REPORT_HTML.exists() and "report" in outcome:
        print(f"Report: {REPORT_HTML.resolve()}")
    return outcome


def _run_stages(stages, params_path: str, outcome: dict, logger) -> None:
    if write_compare_placeholder():  # the report stage's dep, git-tracked: recreate if deleted
        logger.info("wrote the no-comparison placeholder metrics/compare.json")
    summary_id = None
    try:  # first, so that it is listed first: the numbers on disk, updated at the end
        summary_id = publish_summary(params_path=params_path)
    except Exception as err:
        logger.warning("could not publish the summary artifact: %s", err)
    try:
        for stage in stages or stage_names():
            up_to_date, reason = stage_status(stage)
            if not up_to_date:
                logger.info("stage %s runs: %s", stage, reason)
            # a skipped stage says so in its name, so the timeline and task-run list show it
            name = f"{stage} (skipped: up to date)" if up_to_date else stage
            state = stage_task(stage).with_options(task_run_name=name)(
                stage, params_path, reason if up_to_date else None, return_state=True
            )
            if state.is_failed():
                state.result()  # re-raise with the stage's error
            outcome[stage] = "skipped" if state.name == SKIPPED else "ran"
    finally:
        try:
            publish_summary(params_path=params_path, artifact_id=summary_id)
            publish_details_task()
        except Exception as err:  # never hide the stage's own error behind an artifact error
            logger.warning("could not publish the result artifacts: %s", err)


async def serve(name: str, cron: str | None, interval: float | None, parameters: dict) -> None:
    """Create/update the deployment `cvfp-pipeline/<name>` and execute its runs (scheduled or
    triggered) until Ctrl-C. Async so that asyncio.run owns Ctrl-C: it cancels this task at an
    await and waits for the cleanup, instead of a KeyboardInterrupt leaving Prefect's
    sync-to-async bridge with a coroutine never awaited. One run at a time (`limit=1`): runs
    share this workspace's dvc.lock."""
    from prefect import aserve

    from .server_lifetime import crash_stale_pending

    for run_id in await crash_stale_pending(f"{pipeline.name}/{name}"):
        print(f"marked Crashed: run {run_id} left PENDING by an interrupted --serve")
    deployment = await pipeline.ato_deployment(
        name=name, cron=cron, interval=interval, parameters=parameters
    )
    await aserve(deployment, limit=1)


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m flows.pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--stages", nargs="+", choices=stage_names(), help="run only these stages")
    ap.add_argument(
        "--serve", action="store_true", help="serve a deployment (needs a Prefect server)"
    )
    when = ap.add_mutually_exclusive_group()
    when.add_argument("--cron", default=None, help='schedule for --serve, e.g. "0 3 * * *"')
    when.add_argument(
        "--interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="schedule for --serve: a run every SECONDS (cron's minimum is a minute)",
    )
    ap.add_argument("--name", default="cvfp-nightly", help="deployment name for --serve")
    args = ap.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # imports done: normal Ctrl-C
    if not Path("dvc.yaml").exists():
        ap.error("run from the project root (dvc.yaml not found)")
    try:
        require_tracked_params(args.params)
    except ValueError as err:
        ap.error(str(err))
    if args.serve:
        try:
            asyncio.run(
                serve(
                    args.name,
                    args.cron,
                    args.interval,
                    {"params_path": args.params, "stages": args.stages},
                )
            )
        except KeyboardInterrupt:  # asyncio.run has already cancelled and awaited everything
            print(
                f"stopped serving {pipeline.name}/{args.name} (its schedule is paused until the next --serve)"
            )
    else:
        pipeline(args.params, args.stages)


if __name__ == "__main__":
    main()
