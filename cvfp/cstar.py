"""C* materialization (SPEC section 5): the fixed contexts Phase 2 trains on.

After Phase 1, in eval mode without gradient, one sequential pass from a zero context
gives C*[i], the context after token i. They are written to NumPy `.npy` files through
`np.lib.format.open_memmap`: a plain float32 [N, Dc] array with a tiny header, so Phase 2
(and anyone with NumPy) maps it back with `np.load(..., mmap_mode="r")` and reads only
the rows of a batch.

Memory is bounded by the chunk, not the corpus: conversations are grouped into chunks of
whole conversations totalling <= chunk_tokens; a conversation longer than that (in
`stream` mode, the one stream) is run alone, in slices of chunk_tokens, each slice starting
from the previous slice's final context, which is exactly the recurrent definition.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_state
from .corpus import Corpus, sequential_pass, warn_if_large
from .model import CVFPModel
from .utils import atomic_path, progress

SPLITS = ("train", "val")


class CstarError(ValueError):
    """C* files that do not match the current data or params; names the file and shapes."""


def load_phase1_model(path: str | Path, model_params, vocab_size: int,
                      momentum: float = 0.99) -> CVFPModel:
    """Rebuild the model from params and load a checkpoint; a mismatch names the file and
    both shapes (checkpoint.load_state). Pretrained embeddings come from the checkpoint."""
    model = CVFPModel.from_params(model_params, vocab_size, momentum)
    load_state(path, model)
    return model


def chunks(corpus: Corpus, chunk_tokens: int):
    """Yield (row_start, row_end, sub_corpus, carry) in corpus order.

    carry=True means the slice continues the previous one's conversation (start from its
    final context); otherwise every conversation in the slice starts from zero."""
    offsets = corpus.offsets.tolist()
    c = 0
    while c < corpus.n_conversations:
        a = offsets[c]
        if offsets[c + 1] - a > chunk_tokens:          # one long conversation: slices with carry
            end = offsets[c + 1]
            for s in range(a, end, chunk_tokens):
                e = min(s + chunk_tokens, end)
                yield s, e, Corpus(corpus.ids[s:e], torch.tensor([0, e - s])), s > a
            c += 1
            continue
        d = c + 1                                       # whole conversations up to chunk_tokens
        while d < corpus.n_conversations and offsets[d + 1] - a <= chunk_tokens:
            d += 1
        b = offsets[d]
        yield a, b, Corpus(corpus.ids[a:b], corpus.offsets[c:d + 1] - a), False
        c = d


@torch.no_grad()
def write_cstar(model: CVFPModel, corpus: Corpus, path: Path, chunk_tokens: int,
                show_progress: bool = False, desc: str = "C*") -> None:
    """Sequential pass over `corpus` from a zero context, written chunk by chunk to `path`."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                    shape=(corpus.n_tokens, model.context_dim))
    final = None
    bar = progress(total=corpus.n_tokens, desc=desc, enabled=show_progress, unit="tok")
    for a, b, sub, carry in chunks(corpus, chunk_tokens):
        # `out` slices are views of the mapped file: the pass writes straight to disk pages.
        _, final = sequential_pass(model, sub, start=final if carry else None,
                                   out=torch.from_numpy(out[a:b]))
        bar.update(b - a)
    bar.close()
    out.flush()
    del out


def materialize(model: CVFPModel, corpora: dict[str, Corpus], out_dir: str | Path,
                chunk_tokens: int, context_reset: str, show_progress: bool = False,
                warn_tokens: int | None = None, source: str | None = None) -> dict:
    """Write <split>.npy, <split>_offsets.npy and meta.json into `out_dir`, atomically
    (everything goes to a temporary directory renamed onto out_dir at the end)."""
    model.eval()
    meta = {"format": "npy float32 [n_tokens, context_dim], row i = context after token i",
            "context_dim": model.context_dim, "embed_dim": model.embed_dim,
            "vocab_size": model.vocab_size, "context_reset": context_reset,
            "chunk_tokens": chunk_tokens, "phase1_checkpoint": source, "splits": {}}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name, corpus in corpora.items():
            if warn_tokens is not None:
                warn_if_large(corpus.n_tokens, warn_tokens, f"C* materialization ({name})")
            write_cstar(model, corpus, tmp / f"{name}.npy", chunk_tokens, show_progress, f"C* {name}")
            np.save(tmp / f"{name}_offsets.npy", corpus.offsets.numpy().astype(np.int64))
            meta["splits"][name] = {"shape": [corpus.n_tokens, model.context_dim],
                                    "n_conversations": corpus.n_conversations,
                                    "file": f"{name}.npy", "offsets": f"{name}_offsets.npy"}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def open_cstar(cstar_dir: str | Path, split: str, corpus: Corpus, context_dim: int) -> np.ndarray:
    """Memory-map C* of `split`, checked against the token data and params it must match."""
    cstar_dir = Path(cstar_dir)
    path, opath = cstar_dir / f"{split}.npy", cstar_dir / f"{split}_offsets.npy"
    for p in (path, opath):
        if not p.exists():
            raise FileNotFoundError(f"C* file not found: {p} (run the materialize stage first)")
    cstar = np.load(path, mmap_mode="r")
    expected = (corpus.n_tokens, context_dim)
    if cstar.shape != expected:
        raise CstarError(f"C* file {path} has shape {tuple(cstar.shape)}, but the current data and "
                         f"params expect (n_tokens, model.context_dim) = {expected}; "
                         f"re-run the materialize stage")
    offsets = np.load(opath)
    want = corpus.offsets.numpy()
    if offsets.shape != want.shape or not np.array_equal(offsets, want):
        raise CstarError(f"C* offsets {opath} have shape {tuple(offsets.shape)}, but the current data "
                         f"(phase1.context_reset) expect {tuple(want.shape)} with the same values; "
                         f"re-run the materialize stage")
    return cstar
