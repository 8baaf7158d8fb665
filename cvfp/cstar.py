"""C* materialization (SPEC section 5): the fixed contexts Phase 2 trains on.

C*[i] is the context after token i of a zero-start sequential pass of the Phase 1 model,
written chunk by chunk to float32 `.npy` files that Phase 2 memory-maps (`open_cstar`).
`materialize_sharded` (the materialize stage) runs whole chunks in shards
(`materialize_shard`, a pure function any worker can run); C* is bitwise the same for any
shard size and engine. Format, chunks and shards: docs/phase2.md, docs/scaling.md.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .checkpoint import CheckpointError, load_state, read_checkpoint
from .contexts import ContextFile, ContextTensor
from .corpus import Corpus, chunk_groups, warn_if_large, zero_start_pass
from .model import CVFPModel
from .utils import atomic_path, one_intraop_thread, progress

if TYPE_CHECKING:  # imported where used: phase2 reads C* without the sharding code
    from .sharding import MapShards

SPLITS = ("train", "val", "test")  # test: read once, for the reported numbers (phase2)


class CstarError(ValueError):
    """C* files that do not match the current data or params; names the file and shapes."""


def load_phase1_model(
    path: str | Path, model_params, vocab_size: int, momentum: float = 0.99
) -> CVFPModel:
    """Rebuild the model from params and load a checkpoint; a mismatch names the file and
    both shapes (checkpoint.load_state). Pretrained embeddings come from the checkpoint."""
    model = CVFPModel.from_params(model_params, vocab_size, momentum)
    load_state(path, model)
    return model


def shard_plan(
    corpus: Corpus, chunk_tokens: int, shard_conversations: int
) -> list[tuple[int, int]]:
    """Conversation ranges [c, d) of the shards: consecutive whole chunks, at most
    `shard_conversations` conversations each unless a single chunk holds more."""
    if shard_conversations < 1:
        raise ValueError(f"shard_conversations must be >= 1, got {shard_conversations}")
    plan: list[tuple[int, int]] = []
    for c, d in chunk_groups(corpus.offsets.tolist(), chunk_tokens):
        if plan and d - plan[-1][0] <= shard_conversations:
            plan[-1] = (plan[-1][0], d)
        else:
            plan.append((c, d))
    return plan


def _warn(name: str, corpus: Corpus, warn_tokens: int | None) -> None:
    if warn_tokens is not None:
        warn_if_large(corpus.n_tokens, warn_tokens, f"C* materialization ({name})")


def _write_index(
    tmp: Path,
    corpora: dict[str, Corpus],
    context_dim: int,
    embed_dim: int,
    vocab_size: int,
    context_reset: str,
    chunk_tokens: int,
    source,
) -> dict:
    """Next to the <split>.npy files: <split>_offsets.npy and meta.json (returned)."""
    meta = {
        "format": "npy float32 [n_tokens, context_dim], row i = context after token i",
        "context_dim": context_dim,
        "embed_dim": embed_dim,
        "vocab_size": vocab_size,
        "context_reset": context_reset,
        "chunk_tokens": chunk_tokens,
        "phase1_checkpoint": source,
        "splits": {},
    }
    for name, corpus in corpora.items():
        np.save(tmp / f"{name}_offsets.npy", corpus.offsets.numpy().astype(np.int64))
        meta["splits"][name] = {
            "shape": [corpus.n_tokens, context_dim],
            "n_conversations": corpus.n_conversations,
            "file": f"{name}.npy",
            "offsets": f"{name}_offsets.npy",
        }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# ---------------------------------------------------------------- sharded

_MODELS: dict[str, CVFPModel] = {}  # checkpoint + model params hash -> model (per process)
_MODELS_LOCK = threading.Lock()


def _shard_model(
    checkpoint: str | Path | bytes, model_params, vocab_size: int, momentum: float
) -> CVFPModel:
    """The Phase 1 model in eval mode, loaded once per process per checkpoint content."""
    data = checkpoint if isinstance(checkpoint, bytes) else Path(checkpoint).read_bytes()
    spec = json.dumps([model_params.model_dump(), vocab_size, momentum], sort_keys=True)
    key = hashlib.sha256(data + spec.encode()).hexdigest()
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            name = checkpoint if not isinstance(checkpoint, bytes) else "<checkpoint bytes>"
            state = read_checkpoint(data, name)  # weights_only: runs no code
            model = CVFPModel.from_params(model_params, vocab_size, momentum)
            load_state(name, model, state)
            model.eval()
            _MODELS.clear()  # a worker keeps only the latest model
            _MODELS[key] = model
    return model


@torch.no_grad()
def materialize_shard(
    shard: list[np.ndarray],
    checkpoint: str | Path | bytes,
    model_params,
    vocab_size: int,
    chunk_tokens: int,
    momentum: float = 0.99,
    deterministic: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """C* of one shard: `shard` is a list of token sequences, each starting from a zero
    context; `checkpoint` the Phase 1 model.pt (path or its bytes), `model_params` the
    `model` params section. Returns (contexts float32 [n_tokens, Dc], offsets int64 [C+1]).

    A pure function of its arguments: any process can run it, and the result does not depend
    on which shard holds a chunk (one torch thread, see `one_intraop_thread`)."""
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    model = _shard_model(checkpoint, model_params, vocab_size, momentum)
    corpus = Corpus.from_conversations(shard, "conversation")
    out = ContextTensor((corpus.n_tokens, model.context_dim))
    with one_intraop_thread():
        zero_start_pass(model, corpus, out, chunk_tokens)
    return out.data.numpy(), corpus.offsets.numpy().astype(np.int64)


def materialize_sharded(
    checkpoint: str | Path,
    corpora: dict[str, Corpus],
    out_dir: str | Path,
    model_params,
    vocab_size: int,
    chunk_tokens: int,
    context_reset: str,
    shard_conversations: int,
    momentum: float = 0.99,
    deterministic: bool = True,
    map_shards: MapShards | None = None,
    show_progress: bool = False,
    warn_tokens: int | None = None,
) -> dict:
    """Write <split>.npy, <split>_offsets.npy and meta.json into `out_dir`, atomically (a
    temporary directory renamed onto out_dir at the end): the same bytes for any shard size
    and any `map_shards` (default: a plain loop here; the Prefect flow maps them as tasks).
    Each shard's rows are written into the output file as soon as they arrive."""
    from .sharding import run_shards

    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise CheckpointError(f"checkpoint not found: {checkpoint} (run the phase1 stage first)")
    # Load here first: a checkpoint that does not match the params fails naming the file
    # and both shapes, before any shard is sent out (and the plain loop reuses this model).
    _shard_model(checkpoint, model_params, vocab_size, momentum)
    data = checkpoint.read_bytes()  # shards get the bytes: no shared disk needed
    common = {
        "checkpoint": data,
        "model_params": model_params,
        "vocab_size": vocab_size,
        "chunk_tokens": chunk_tokens,
        "momentum": momentum,
        "deterministic": deterministic,
    }
    dc = model_params.context_dim
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        # One job for all splits: every shard of train and val is mapped at once.
        outs, shards, where = {}, [], []
        for name, corpus in corpora.items():
            _warn(name, corpus, warn_tokens)
            outs[name] = ContextFile(tmp / f"{name}.npy", (corpus.n_tokens, dc), create=True)
            offsets = corpus.offsets.numpy()
            for c, d in shard_plan(corpus, chunk_tokens, shard_conversations):
                shards.append(
                    [corpus.ids[offsets[i] : offsets[i + 1]].numpy() for i in range(c, d)]
                )
                where.append((name, c, d))
        bar = progress(
            total=sum(c.n_tokens for c in corpora.values()),
            desc="C*",
            enabled=show_progress,
            unit="tok",
        )

        def consume(i: int, result: tuple[np.ndarray, np.ndarray]) -> None:
            contexts, shard_offsets = result
            name, c, d = where[i]
            offsets = corpora[name].offsets.numpy()
            a, b = int(offsets[c]), int(offsets[d])
            if contexts.shape != (b - a, dc) or not np.array_equal(
                shard_offsets, offsets[c : d + 1] - a
            ):
                raise CstarError(
                    f"C* {name} shard {i}: got {contexts.shape} rows for conversations "
                    f"{c}..{d - 1}, expected {(b - a, dc)}"
                )
            outs[name][a:b] = torch.from_numpy(contexts)
            bar.update(b - a)

        (map_shards or run_shards)(materialize_shard, shards, consume, common)
        bar.close()
        return _write_index(
            tmp,
            corpora,
            dc,
            model_params.embed_dim,
            vocab_size,
            context_reset,
            chunk_tokens,
            str(checkpoint),
        )


def open_cstar(cstar_dir: str | Path, split: str, corpus: Corpus, context_dim: int) -> np.ndarray:
    """Memory-map C* of `split`, checked against the token data and params it must match."""
    cstar_dir = Path(cstar_dir)
    path, opath = cstar_dir / f"{split}.npy", cstar_dir / f"{split}_offsets.npy"
    for p in (path, opath):
        if not p.exists():
            raise FileNotFoundError(f"C* file not found: {p} (run the materialize stage first)")
    cstar = _load(path, mmap_mode="r")
    expected = (corpus.n_tokens, context_dim)
    if cstar.shape != expected:
        raise CstarError(
            f"C* file {path} has shape {tuple(cstar.shape)}, but the current data and "
            f"params expect (n_tokens, model.context_dim) = {expected}; "
            f"re-run the materialize stage"
        )
    offsets = _load(opath)
    want = corpus.offsets.numpy()
    if offsets.shape != want.shape or not np.array_equal(offsets, want):
        raise CstarError(
            f"C* offsets {opath} have shape {tuple(offsets.shape)}, but the current data "
            f"(phase1.context_reset) expect {tuple(want.shape)} with the same values; "
            f"re-run the materialize stage"
        )
    return cstar


def _load(path: Path, **kw) -> np.ndarray:
    """np.load naming the file when it is truncated or not a .npy file."""
    try:
        return np.load(path, **kw)
    except (ValueError, OSError, EOFError) as err:
        raise CstarError(
            f"C* file {path} cannot be read ({type(err).__name__}: {err}); it is truncated "
            f"or corrupt: re-run the materialize stage (`dvc repro -f -s materialize`)"
        ) from None
