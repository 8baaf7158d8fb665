"""Throughput of each heavy step at the full-size model, and what that means for the full
UltraChat set (time on this machine, and disk).

Measured here, at model 768-d (hidden 1536), 6 blocks, GPT-2's vocabulary size (50257;
random frozen embeddings compute the same as GPT-2's), on --convs conversations of
--conv-len tokens:

* tokenize: the pipeline's saved tokenizer (data/tokenizer) encoding long synthetic text
  (the estimate counts the kept tokens; whole conversations are encoded before
  max_seq_length cuts them, so scale it by the real text length);
* sequential pass (Phase 1 iteration 0, the val convergence trials, C*): zero_start_pass;
* Phase 1 parallel iteration (train), with --chunk-tokens < the tokens, so the two-pass
  chunked gradient (forward, then forward + backward per chunk) is what is timed;
* Phase 2: Trainer.train_epoch on --phase2-positions positions (batch 256).

The estimate multiplies those rates by the full set's token counts (--conversations x
--conv-len, split by --val-fraction) and the default iteration / epoch counts given; it
is for one process on this machine (2 cores): torchrun ranks or GPUs divide the Phase 1
and Phase 2 parts, Dask workers the tokenize and C* parts.

    python -m benchmarks.throughput [--convs 64] [--conv-len 128] [--conversations 200000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cvfp.core.contexts import ContextTensor
from cvfp.core.corpus import Corpus, zero_start_pass
from cvfp.core.model import CVFPModel
from cvfp.params import load_params
from cvfp.phase1.diversity import make_diversity
from cvfp.phase1.trainer import parallel_iteration
from cvfp.phase2.data import PositionData
from cvfp.phase2.trainer import Trainer, configure_trainable
from tasks.layout import TOKENIZER

GB = 1e9


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def tokenize_rate(seconds_target: float = 3.0) -> float | None:
    tok_dir = TOKENIZER
    if not tok_dir.exists():
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    rng = np.random.default_rng(0)
    words = [
        "the",
        "model",
        "context",
        "vector",
        "point",
        "fixed",
        "learning",
        "data",
        "token",
        "researcher",
        "question",
        "answer",
        "because",
        "would",
        "could",
        "about",
    ]
    texts = [" ".join(rng.choice(words, size=1000)) for _ in range(200)]
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds_target:
        n += sum(len(x) for x in tok(texts)["input_ids"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--convs", type=int, default=64)
    ap.add_argument("--conv-len", type=int, default=128)
    ap.add_argument("--chunk-tokens", type=int, default=4096)
    ap.add_argument("--phase2-positions", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--conversations", type=int, default=200_000, help="full set, for the estimate")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--phase1-iterations", type=int, default=10)
    ap.add_argument("--trials", type=int, default=10, help="checks.convergence_trials")
    ap.add_argument("--phase2-epochs", type=int, default=10)
    args = ap.parse_args()
    torch.manual_seed(0)
    d = args.dim
    params = load_params(
        "params.yaml",
        {
            "model.context_dim": d,
            "model.embed_dim": d,
            "model.hidden_dim": 2 * d,
            "phase1.chunk_tokens": args.chunk_tokens,
        },
    )
    model = CVFPModel.from_params(params.model, args.vocab)
    rng = np.random.default_rng(0)
    corpus = Corpus.from_conversations(
        [rng.integers(0, args.vocab, size=args.conv_len) for _ in range(args.convs)], "conversation"
    )
    n = corpus.n_tokens
    print(
        f"model {d}-d, {len(params.model.layer_structure)} blocks, vocab {args.vocab}; "
        f"{args.convs} conversations x {args.conv_len} tokens = {n}; torch threads {torch.get_num_threads()}"
    )

    rates = {"tokenize": tokenize_rate()}
    out = ContextTensor((n, d))
    model.eval()
    rates["sequential"] = n / timed(lambda: zero_start_pass(model, corpus, out, n))
    prev = out.data.clone()
    model.train()
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    div = make_diversity("global_mean")
    rates["parallel_train"] = n / timed(
        lambda: parallel_iteration(model, corpus, prev, params.phase1, div, opt)
    )
    model.eval()
    with torch.no_grad():
        rates["parallel_eval"] = n / timed(
            lambda: parallel_iteration(model, corpus, prev, params.phase1, div)
        )

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cstar.npy"
        np.save(path, out.data.numpy())
        data = PositionData.from_corpus(corpus, np.load(path, mmap_mode="r"))
        data.positions = data.positions[: args.phase2_positions]
        configure_trainable(model, False)
        trainer = Trainer(model, None, data, data, params.phase2, seed=0)
        rates["phase2_train"] = len(data) / timed(lambda: trainer.train_epoch(1))

    for k, v in rates.items():
        print(
            f"  {k:15s} {'n/a (run the tokenize stage first)' if v is None else f'{v:10.0f} tokens/s'}"
        )

    # ---- the full set
    total = args.conversations * args.conv_len
    val = int(total * args.val_fraction)
    train = total - val
    it = args.phase1_iterations
    hours = {
        "tokenize": total / rates["tokenize"] if rates["tokenize"] else float("nan"),
        "phase1 train (iteration 0 + iterations)": train / rates["sequential"]
        + it * train / rates["parallel_train"],
        "phase1 val (iteration 0 + iterations + trials)": val / rates["sequential"]
        + it * val / rates["parallel_eval"]
        + (args.trials + 1) * val / rates["sequential"],
        "materialize (C* train + val)": total / rates["sequential"],
        "phase2 (epochs x train positions)": args.phase2_epochs * train / rates["phase2_train"],
    }
    print(
        f"\nfull set: {args.conversations} conversations x {args.conv_len} tokens = {total / 1e6:.1f}M "
        f"tokens ({train / 1e6:.1f}M train / {val / 1e6:.1f}M val), {it} Phase 1 iterations, "
        f"{args.phase2_epochs} Phase 2 epochs; one process on this machine:"
    )
    for k, s in hours.items():
        print(f"  {k:48s} {s / 3600:8.2f} h")
    print(f"  {'total':48s} {sum(hours.values()) / 3600:8.2f} h")
    row = d * 4
    disk = {
        "data/tokenized (int32 ids)": total * 4,
        "cache/phase1-work (2 context files, train; while phase1 runs)": 2 * train * row,
        "cache/cstar (train + val)": total * row,
        "same again in .dvc/cache (cache.type copy; 0 with hardlink/symlink)": total * row,
    }
    print("disk:")
    for k, b in disk.items():
        print(f"  {k:66s} {b / GB:7.1f} GB")


if __name__ == "__main__":
    main()
