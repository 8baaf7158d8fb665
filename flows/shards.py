"""Sharded stages under the flow: their shards run as mapped Prefect tasks.

`tasks.tokenize.run` and `tasks.materialize.run` take a `map_shards` callable
(cvfp/runtime/sharding.py). Run alone they loop over the shards in-process; under the flow they get
`shard_mapper(stage, params.orchestration)`, which runs the shards in a subflow
`<stage>-shards` (one task run per shard, `<stage>-shard-<i>`) on the task runner chosen in
params.yaml:

* `orchestration.task_runner: thread` -> Prefect's ThreadPoolTaskRunner (`workers` threads);
* `orchestration.task_runner: dask`   -> prefect-dask's DaskTaskRunner: a temporary
  LocalCluster of `workers` processes (1 thread each) when `dask_address` is null, else the
  running scheduler at `dask_address` (its workers need this project installed, and the
  Prefect API reachable: docs/scaling.md).

The subflow's only parameter is a job key (the shards wait in this process), so no shard
data goes to the Prefect API or rides along with every task; on Dask the arguments all shards share (checkpoint or tokenizer bytes) are
scattered to the workers once. Results come back in shard order and are combined by the
stage exactly as in the plain loop, so both give the same bytes.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from cvfp.params import OrchestrationParams
from cvfp.runtime.sharding import MapShards

SHARDED_STAGES = ("tokenize", "materialize")


def task_runner(orch: OrchestrationParams):
    """The Prefect task runner `orchestration` asks for (a fresh one per use)."""
    if orch.task_runner == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=orch.workers)
    from prefect_dask import DaskTaskRunner

    if orch.dask_address:
        return DaskTaskRunner(address=orch.dask_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": orch.workers, "threads_per_worker": 1, "processes": True},
    )


def _run_shard(index: int, fn: Callable[..., Any], shard: Any, common: dict[str, Any]) -> Any:
    return fn(shard, **common)


# Results stay in memory (never persisted) and are never cached: a shard is recomputed
# whenever its stage runs, which DVC decides.
shard_task = task(name="shard", cache_policy=NO_CACHE, persist_result=False)(_run_shard)


def _scatter_on_dask(common: dict[str, Any]) -> Any:
    """On Dask, send the arguments all shards share (checkpoint or tokenizer bytes) to every
    worker once, instead of once per shard task; Dask hands the worker the value itself."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None:  # not inside a flow run: nothing to scatter to
        return common
    runner = ctx.task_runner
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        return common
    if not isinstance(runner, DaskTaskRunner):
        return common
    return runner.client.scatter([common], broadcast=True)[0]


# The running jobs' shards, by key. The subflow gets only the key as its parameter: Prefect
# sends a flow's parameters to the API and pickles the flow into every task it submits to
# Dask, so neither may hold the shard data (a closure would).
_JOBS: dict[str, tuple] = {}


def _map_job(job: str) -> int:
    """Submit the shards in order, at most `window` ahead of the one consumed next: a lazy
    sequence of shards (tokenize's) is read as the work goes, and only the shards in
    flight and their results are in memory."""
    run_one, fn, shards, consume, common, window = _JOBS[job]
    shared = _scatter_on_dask(common)
    pending: deque = deque()
    done = 0
    for i in range(len(shards)):
        pending.append(run_one.submit(index=i, shard=shards[i], fn=fn, common=shared))
        if len(pending) > window:
            consume(done, pending.popleft().result())  # the engine may drop its result
            done += 1
    while pending:
        consume(done, pending.popleft().result())
        done += 1
    return len(shards)


shards_flow = flow(name="shards", log_prints=True)(_map_job)


def shard_mapper(stage: str, orch: OrchestrationParams) -> MapShards:
    """A `map_shards` for `stage` that maps its shards as Prefect tasks on `orch`'s runner
    in a subflow `<stage>-shards` (nested under the stage's task run inside the pipeline)."""

    def map_shards(
        fn: Callable[..., Any],
        shards: Sequence[Any],
        consume: Callable[[int, Any], None],
        common: dict[str, Any],
    ) -> None:
        run_one = shard_task.with_options(
            name=f"{stage}-shard", task_run_name=f"{stage}-shard-{{index}}"
        )
        job = f"{stage}-{uuid.uuid4().hex[:12]}"
        _JOBS[job] = (run_one, fn, shards, consume, common, 2 * orch.workers)
        try:
            shards_flow.with_options(
                name=f"{stage}-shards",
                flow_run_name=f"{stage}-shards",
                task_runner=task_runner(orch),
            )(job)
        finally:
            _JOBS.pop(job, None)

    return map_shards
