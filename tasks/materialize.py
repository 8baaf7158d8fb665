"""Materialize stage: C* = contexts of a zero-start sequential pass of the Phase 1 model.

Inputs: cache/phase1/model.pt, data/split/{train,val,test}, data/tokenizer (vocab size).
Output: cache/cstar/ with <split>.npy and <split>_offsets.npy for train, val and test, meta.json
(float32 [N, context_dim] .npy files, memory-mappable; written shard by shard, atomically).

The conversations run in batches of similar length (materialize.batch_tokens), whole
batches in shards (orchestration.shard_conversations; `cvfp.materialize.cstar.materialize_shard`), one after another here; under the Prefect flow the shards
are mapped tasks on the configured task runner (threads or Dask). C* is bitwise the same
either way; phase1.context_reset=stream has a single sequence and so a single shard.
"""

from __future__ import annotations

import time

from cvfp.core.corpus import Corpus
from cvfp.materialize.cstar import SPLITS, materialize_sharded
from cvfp.params import Params
from cvfp.runtime.sharding import MapShards
from cvfp.runtime.utils import seed_everything

from .cli import cli, log
from .layout import CSTAR_DIR, PHASE1_MODEL, SPLIT, TOKENIZER
from .outputs import StageOutputs
from .tokens import load_conversations, read_vocab_size


def run(params: Params, map_shards: MapShards | None = None) -> dict:
    """`map_shards` runs the shards (default: a plain loop in this process)."""
    out = StageOutputs("materialize", params)  # params.yaml now
    seed_everything(params.seed, params.deterministic)
    p1 = params.phase1
    corpora = {
        s: Corpus.from_conversations(load_conversations(SPLIT / s), p1.context_reset)
        for s in SPLITS
    }
    t0 = time.perf_counter()
    meta = materialize_sharded(
        PHASE1_MODEL,
        corpora,
        CSTAR_DIR,
        params.model,
        read_vocab_size(TOKENIZER),
        params.materialize.chunk_tokens,
        p1.context_reset,
        params.orchestration.shard_conversations,
        momentum=p1.diversity.momentum,
        deterministic=params.deterministic,
        map_shards=map_shards,
        show_progress=p1.progress,
        warn_tokens=p1.warn_tokens,
        batch_tokens=params.materialize.batch_tokens,
        before_replace=out.before_replace,
    )
    seconds = time.perf_counter() - t0
    tokens = sum(c.n_tokens for c in corpora.values())
    log.info(
        "materialize: C* of %d tokens in %.2fs (%.0f tokens/s)", tokens, seconds, tokens / seconds
    )
    for s, m in meta["splits"].items():
        log.info(
            "materialize %s: C* %s in %d conversations -> %s",
            s,
            m["shape"],
            m["n_conversations"],
            CSTAR_DIR / m["file"],
        )
    return meta


def main() -> None:
    cli("materialize", run, __doc__)


if __name__ == "__main__":
    main()
