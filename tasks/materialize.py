"""Materialize stage: C* = contexts of a zero-start sequential pass of the Phase 1 model.

Inputs: cache/phase1/model.pt, data/split/{train,val}, data/tokenizer (vocab size).
Output: cache/cstar/ with train.npy, train_offsets.npy, val.npy, val_offsets.npy, meta.json
(float32 [N, context_dim] .npy files, memory-mappable; written chunk by chunk, atomically).
"""
from __future__ import annotations

from cvfp.corpus import Corpus
from cvfp.cstar import SPLITS, load_phase1_model, materialize
from cvfp.params import Params
from cvfp.utils import seed_everything

from .common import CSTAR_DIR, PHASE1_DIR, SPLIT, TOKENIZER, cli, load_conversations, log, read_vocab_size


def run(params: Params) -> dict:
    seed_everything(params.seed, params.deterministic)
    p1 = params.phase1
    model = load_phase1_model(PHASE1_DIR / "model.pt", params.model, read_vocab_size(TOKENIZER),
                              p1.diversity.momentum)
    corpora = {s: Corpus.from_conversations(load_conversations(SPLIT / s), p1.context_reset)
               for s in SPLITS}
    meta = materialize(model, corpora, CSTAR_DIR, params.materialize.chunk_tokens, p1.context_reset,
                       show_progress=p1.progress, warn_tokens=p1.warn_tokens,
                       source=str(PHASE1_DIR / "model.pt"))
    for s, m in meta["splits"].items():
        log.info("materialize %s: C* %s in %d conversations -> %s", s, m["shape"],
                 m["n_conversations"], CSTAR_DIR / m["file"])
    return meta


def main() -> None:
    cli("materialize", run, __doc__)


if __name__ == "__main__":
    main()
