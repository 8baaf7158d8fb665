"""Sharded work: split a stage's input into shards, run a pure function per shard, combine.

A *shard function* takes one shard plus keyword arguments shared by all shards and returns
plain data (NumPy arrays, dicts); it depends on nothing but its arguments, so any worker
process (a Dask worker on another machine included) can run it. A *map_shards* callable
decides where the shards run:

    map_shards(fn, shards, consume, common)
        calls consume(i, fn(shards[i], **common)) for every i, in index order

`run_shards` below is the plain in-process loop (`python -m tasks.<stage>`, `dvc repro`;
`threaded(n)` the same on n threads);
`flows/shards.py` supplies one that maps the shards as Prefect tasks on the configured
task runner (threads or Dask). Both call the same shard function on the same shards, and
the combine step (`consume`) is the same code, so the outputs are identical.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol


class MapShards(Protocol):
    def __call__(
        self,
        fn: Callable[..., Any],
        shards: Sequence[Any],
        consume: Callable[[int, Any], None],
        common: dict[str, Any],
    ) -> None: ...


def run_shards(
    fn: Callable[..., Any],
    shards: Sequence[Any],
    consume: Callable[[int, Any], None],
    common: dict[str, Any],
) -> None:
    """The plain loop: one shard after another in this process."""
    for i, shard in enumerate(shards):
        consume(i, fn(shard, **common))


def threaded(workers: int) -> MapShards:
    """Shards on `workers` threads of this process (for code that releases the GIL, like
    the fast tokenizers), consumed in shard order; `workers=1` is `run_shards`. At most
    `workers + 1` shards are taken (`shards[i]`) and not yet consumed at any time, so a
    lazy sequence of shards is read as the work goes, and memory holds only those."""
    if workers <= 1:
        return run_shards

    def map_shards(fn, shards, consume, common) -> None:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="shard") as pool:
            pending: deque = deque()
            done = 0
            for i in range(len(shards)):
                pending.append(pool.submit(fn, shards[i], **common))
                if len(pending) > workers:
                    consume(done, pending.popleft().result())
                    done += 1
            while pending:
                consume(done, pending.popleft().result())
                done += 1

    return map_shards


def ranges(n: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) index ranges of at most `size` items covering range(n)."""
    if size < 1:
        raise ValueError(f"shard size must be >= 1, got {size}")
    return [(a, min(a + size, n)) for a in range(0, n, size)]
