"""C* materialization (SPEC section 5): the fixed contexts Phase 2 trains on.

C*[i] is the context after token i of a zero-start sequential pass of the Phase 1 model,
written chunk by chunk to float32 `.npy` files that Phase 2 memory-maps (`open_cstar`).
`materialize_sharded` (the materialize stage) runs conversations in batches of similar
length (`batch_plan`), whole batches in shards (`materialize_shard`, a pure function any
worker can run); C* is bitwise the same for any shard size, engine and
`materialize.chunk_tokens`. Format, batches and shards: docs/phase2.md, docs/scaling.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cvfp.core.checkpoint import CheckpointError, load_state, read_checkpoint
from cvfp.core.contexts import ContextFile
from cvfp.core.corpus import Corpus, warn_if_large, windowed_pass
from cvfp.core.model import CVFPModel
from cvfp.params import ModelParams
from cvfp.runtime.utils import (
    BeforeReplace,
    atomic_path,
    one_intraop_thread,
    progress,
    set_deterministic,
)

if TYPE_CHECKING:  # imported where used: phase2 reads C* without the sharding code
    from cvfp.runtime.sharding import MapShards

SPLITS = ("train", "val", "test")  # test: read once, for the reported numbers (phase2)


class CstarError(ValueError):
    """C* files that do not match the current data or params; names the file and shapes."""


def load_phase1_model(
    path: str | Path, model_params: ModelParams, vocab_size: int, momentum: float = 0.99
) -> CVFPModel:
    """Rebuild the model from params and load a checkpoint; a mismatch names the file and
    both shapes (checkpoint.load_state). Pretrained embeddings come from the checkpoint."""
    model = CVFPModel.from_params(model_params, vocab_size, momentum)
    load_state(path, model)
    return model


def batch_plan(corpus: Corpus, batch_tokens: int) -> list[np.ndarray]:
    """The conversations run side by side, as arrays of conversation indices: sorted by
    length (longest first, ties in corpus order), then whole conversations totalling at most
    `batch_tokens`, or one longer conversation alone. A function of the lengths and
    `batch_tokens` only: every position of a batch is the same matrix product whatever the
    shards and `materialize.chunk_tokens`, so neither changes a bit of C*."""
    if batch_tokens < 1:
        raise ValueError(f"materialize.batch_tokens must be >= 1, got {batch_tokens}")
    lengths = corpus.lengths.numpy()
    order = np.argsort(-lengths, kind="stable")
    batches, i = [], 0
    while i < len(order):
        j, total = i + 1, int(lengths[order[i]])
        while j < len(order) and total + int(lengths[order[j]]) <= batch_tokens:
            total += int(lengths[order[j]])
            j += 1
        batches.append(order[i:j])
        i = j
    return batches


def shard_plan(
    corpus: Corpus, batch_tokens: int, shard_conversations: int
) -> list[list[np.ndarray]]:
    """The shards: whole batches (`batch_plan`), at most `shard_conversations` conversations
    and `batch_tokens` tokens each unless a single batch holds more (a shard's contexts are
    held in memory until written: this bounds them for any corpus). The batches are dealt out in a fixed shuffled
    order (seed 0), so long and short conversations alternate and the rate, hence the ETA,
    holds over the whole pass (the order changes no byte: batches are independent)."""
    if shard_conversations < 1:
        raise ValueError(f"shard_conversations must be >= 1, got {shard_conversations}")
    batches = batch_plan(corpus, batch_tokens)
    order = np.random.default_rng(0).permutation(len(batches))
    lengths = corpus.lengths.numpy()
    plan: list[list[np.ndarray]] = []
    size = tokens = 0
    for k in order:
        b = batches[k]
        n = int(lengths[b].sum())
        if plan and size + len(b) <= shard_conversations and tokens + n <= batch_tokens:
            plan[-1].append(b)
            size, tokens = size + len(b), tokens + n
        else:
            plan.append([b])
            size, tokens = len(b), n
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
    batch_tokens: int,
    source,
) -> dict:
    """Next to the <split>.npy files: <split>_offsets.npy and meta.json (returned)."""
    meta = {
        "format": "npy float32 [n_tokens, context_dim], row i = context after token i",
        "context_dim": context_dim,
        "embed_dim": embed_dim,
        "vocab_size": vocab_size,
        "context_reset": context_reset,
        "batch_tokens": batch_tokens,
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
    checkpoint: str | Path | bytes, model_params: ModelParams, vocab_size: int, momentum: float
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
    shard: list[list[np.ndarray]],
    checkpoint: str | Path | bytes,
    model_params: ModelParams,
    vocab_size: int,
    chunk_tokens: int,
    momentum: float = 0.99,
    deterministic: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """C* of one shard: `shard` is a list of batches, each a list of token sequences run
    side by side from zero contexts (`cvfp.core.corpus.windowed_pass`, `chunk_tokens` rows at a
    time); `checkpoint` the Phase 1 model.pt (path or its bytes), `model_params` the `model`
    params section. Returns (contexts float32 [n_tokens, Dc], offsets int64 [C+1]) of the
    sequences in shard order.

    A pure function of its arguments: any process can run it, and the result does not depend
    on which shard holds a batch nor on `chunk_tokens` (one torch thread, see
    `one_intraop_thread`)."""
    set_deterministic(deterministic)  # without importing torch._inductor (cvfp.runtime.utils)
    model = _shard_model(checkpoint, model_params, vocab_size, momentum)
    lengths = [len(seq) for batch in shard for seq in batch]
    offsets = np.cumsum([0] + lengths, dtype=np.int64)
    out = np.empty((int(offsets[-1]), model.context_dim), dtype=np.float32)
    row = 0
    with one_intraop_thread():
        for batch in shard:
            corpus = Corpus.from_conversations(batch, "conversation")
            if corpus.n_conversations != len(batch):
                raise CstarError("C* shard: a batch holds an empty sequence")
            base = row

            def write(index: torch.Tensor, rows: torch.Tensor, base: int = base) -> None:
                out[base + index.numpy()] = rows.cpu().numpy()

            windowed_pass(model, corpus, write, chunk_tokens)
            row += corpus.n_tokens
    return out, offsets


def materialize_sharded(
    checkpoint: str | Path,
    corpora: dict[str, Corpus],
    out_dir: str | Path,
    model_params: ModelParams,
    vocab_size: int,
    chunk_tokens: int,
    context_reset: str,
    shard_conversations: int,
    momentum: float = 0.99,
    deterministic: bool = True,
    map_shards: MapShards | None = None,
    show_progress: bool = False,
    warn_tokens: int | None = None,
    batch_tokens: int = 65536,
    before_replace: BeforeReplace | None = None,
) -> dict:
    """Write <split>.npy, <split>_offsets.npy and meta.json into `out_dir`, atomically (a
    temporary directory renamed onto out_dir at the end): the same bytes for any shard size,
    any `chunk_tokens` (memory only) and any `map_shards` (default: a plain loop here; the
    Prefect flow maps them as tasks). `batch_tokens` sets the batches (`batch_plan`).
    Each shard's rows are written into the output file as soon as they arrive.
    `before_replace(out_dir, new)` runs before out_dir is replaced and can refuse."""
    from cvfp.runtime.sharding import run_shards

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
    with atomic_path(out_dir, before_replace) as tmp:
        tmp.mkdir()
        # One job for all splits: every shard of every split is mapped at once.
        outs, shards, where = {}, [], []
        for name, corpus in corpora.items():
            _warn(name, corpus, warn_tokens)
            outs[name] = ContextFile(tmp / f"{name}.npy", (corpus.n_tokens, dc), create=True)
            offsets = corpus.offsets.numpy()
            for plan in shard_plan(corpus, batch_tokens, shard_conversations):
                shards.append(
                    [[corpus.ids[offsets[i] : offsets[i + 1]].numpy() for i in b] for b in plan]
                )
                where.append((name, np.concatenate(plan)))
        bar = progress(
            total=sum(c.n_tokens for c in corpora.values()),
            desc="C*",
            enabled=show_progress,
            unit="tok",
            smoothing=0,  # the rate over the whole pass: an ETA that holds
        )

        done: list[int] = []

        def consume(i: int, result: tuple[np.ndarray, np.ndarray]) -> None:
            contexts, shard_offsets = result
            name, convs = where[i]
            offsets = corpora[name].offsets.numpy()
            starts, lengths = offsets[convs], offsets[convs + 1] - offsets[convs]
            want = np.cumsum(np.concatenate([[0], lengths]))
            if contexts.shape != (int(want[-1]), dc) or not np.array_equal(shard_offsets, want):
                raise CstarError(
                    f"C* {name} shard {i}: got {contexts.shape} rows for {len(convs)} "
                    f"conversations, expected {(int(want[-1]), dc)}"
                )
            bounds = want.tolist()
            for j, start in enumerate(starts.tolist()):  # each conversation's rows
                outs[name].write_rows(start, contexts[bounds[j] : bounds[j + 1]])
            done.append(i)
            bar.set_postfix_str(f"shard {len(done)}/{len(shards)}", refresh=False)
            bar.update(int(want[-1]))

        (map_shards or run_shards)(materialize_shard, shards, consume, common)
        bar.close()
        for f in outs.values():
            f.close()
        return _write_index(
            tmp,
            corpora,
            dc,
            model_params.embed_dim,
            vocab_size,
            context_reset,
            batch_tokens,
            str(checkpoint),
        )


class CstarRows(ContextFile):
    """C* of one split, read-only; `rows[index]` gives float32 NumPy rows read with pread,
    one call per run of consecutive rows. A memory map (even one closed after each read)
    raised the peak RSS by every page-cache folio an epoch touched: 256 bytes per token at
    64-d (docs/scaling.md). `np.asarray(rows)` reads everything."""

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, path: str | Path, shape: tuple[int, int]):
        super().__init__(path, shape, readonly=True)

    def __getitem__(self, index) -> np.ndarray:  # type: ignore[override]
        if isinstance(index, slice) and index.step in (None, 1):
            a, b, _ = index.indices(self.shape[0])
            return self.read_rows(a, max(b - a, 0))
        idx = np.asarray(index.numpy() if isinstance(index, torch.Tensor) else index)
        flat = idx.reshape(-1).astype(np.int64)
        if flat.size and (flat.min() < -self.shape[0] or flat.max() >= self.shape[0]):
            raise IndexError(f"{self.path}: row index out of range for {self.shape[0]} rows")
        flat = np.where(flat < 0, flat + self.shape[0], flat)
        order = np.argsort(flat, kind="stable")
        rows = flat[order]
        cut = np.flatnonzero(np.diff(rows) != 1) + 1  # runs of consecutive rows
        out = np.empty((rows.size, self.shape[1]), dtype=np.float32)
        for a, b in zip(np.r_[0, cut].tolist(), np.r_[cut, rows.size].tolist(), strict=True):
            out[order[a:b]] = self.read_rows(int(rows[a]), b - a)
        return out.reshape(*idx.shape, self.shape[1])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype)


def open_cstar(
    cstar_dir: str | Path, split: str, corpus: Corpus, context_dim: int, in_memory_bytes: int = 0
) -> CstarRows | np.ndarray:
    """C* of `split`, checked against the token data and params it must match: `CstarRows`
    (rows read from disk when used), or, when the split's C* takes at most `in_memory_bytes`
    (orchestration.cstar_in_memory_mb), all of it read into a NumPy array once (the same
    float32 values: memory only; a training epoch indexes it without one pread per row)."""
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
    shape = (int(cstar.shape[0]), int(cstar.shape[1]))
    del cstar  # the header check's map: rows are read with pread
    rows = CstarRows(path, shape)
    if shape[0] * shape[1] * rows.dtype.itemsize <= in_memory_bytes:
        with contextlib.closing(rows):
            return rows[:]  # one pread loop over the file, no map
    return rows


def _load(path: Path, **kw) -> np.ndarray:
    """np.load naming the file when it is truncated or not a .npy file."""
    try:
        return np.load(path, **kw)
    except (ValueError, OSError, EOFError) as err:
        raise CstarError(
            f"C* file {path} cannot be read ({type(err).__name__}: {err}); it is truncated "
            f"or corrupt: re-run the materialize stage (`dvc repro -f -s materialize`)"
        ) from None
