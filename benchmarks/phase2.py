"""Phase 2 speed at the seeds' size: one epoch over 6400 positions, 768-d, 6 blocks, vocab 8000.

(a) reference, written here straight from seed 001: one position at a time through the
    stack (batch 1), all logits collected, one optimiser step per epoch;
(b) the library: cvfp.phase2.trainer.Trainer.train_epoch, shuffled mini-batches of positions
    (phase2.batch_size = 256) with C* read per batch from a memory-mapped .npy file.

Both train the head and the stack (freeze_context false). Printed: positions/s for each
and the ratio; target (b)/(a) >= 10x. The reference keeps the whole epoch's graph, so by
default it runs on a measured subset of positions and is extrapolated linearly (its cost
per position is constant); --ref-positions 0 runs it on all of them.

    python -m benchmarks.phase2 [--convs 50] [--tokens-per-conv 129] [--ref-positions 640]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cvfp.core.corpus import Corpus, sequential_pass
from cvfp.core.model import CVFPModel
from cvfp.core.training import optimizer_step
from cvfp.params import Phase2Params
from cvfp.phase2.data import PositionData
from cvfp.phase2.trainer import Trainer, configure_trainable


def reference_epoch(model, corpus: Corpus, cstar: torch.Tensor, limit: int | None) -> int:
    """Seed 001 Stage 2 literally: per conversation, per position, batch 1; one step."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.002)
    logits, targets, n = [], [], 0
    for c in range(corpus.n_conversations):
        ids = corpus.conversation(c)
        base = int(corpus.offsets[c])
        for i in range(len(ids) - 1):
            input_context = (
                cstar[base + i - 1 : base + i] if i > 0 else torch.zeros(1, model.context_dim)
            )
            _, token_out = model(input_context, model.embed(ids[i : i + 1]))
            fixed = cstar[base + i : base + i + 1].detach()
            logits.append(model.token_output(torch.cat([fixed, token_out], dim=-1)))
            targets.append(ids[i + 1 : i + 2])
            n += 1
            if limit and n >= limit:
                break
        if limit and n >= limit:
            break
    loss = F.cross_entropy(torch.cat(logits), torch.cat(targets))
    optimizer_step(opt, loss, params, 1.0)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--convs", type=int, default=50)
    ap.add_argument("--tokens-per-conv", type=int, default=129, help="129 -> 128 positions each")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument(
        "--ref-positions",
        type=int,
        default=640,
        help="positions timed for the reference (0 = all; extrapolated otherwise)",
    )
    args = ap.parse_args()

    torch.manual_seed(0)
    d, L = args.dim, args.blocks
    model = CVFPModel(args.vocab, d, d, 2 * d, [1] * L)
    ids = torch.randint(0, args.vocab, (args.convs, args.tokens_per_conv))
    corpus = Corpus.from_conversations(list(ids.numpy()), "conversation")
    model.eval()
    cstar, _ = sequential_pass(model, corpus)
    configure_trainable(model, freeze_context=False)
    model.token_output.weight.data.normal_(0, 0.02)  # as after some training: stack gets gradient
    state = {k: v.clone() for k, v in model.state_dict().items()}

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.npy"
        np.save(path, cstar.numpy())
        data = PositionData.from_corpus(corpus, np.load(path, mmap_mode="r"))
        n = len(data)
        cfg = Phase2Params(
            epochs=1,
            batch_size=args.batch_size,
            lr=0.002,
            grad_clip=1.0,
            patience=1,
            freeze_context=False,
            heads="single",
            block_weights=[1.0] * L,
            context="cstar",
        )
        trainer = Trainer(model, None, data, data, cfg, seed=0)
        trainer.train_epoch(0)  # warm-up (allocator, Adam state)
        model.load_state_dict(state)
        trainer = Trainer(model, None, data, data, cfg, seed=0)
        t0 = time.perf_counter()
        stats = trainer.train_epoch(1)
        t_b = time.perf_counter() - t0

    model.load_state_dict(state)
    model.train()
    limit = args.ref_positions if 0 < args.ref_positions < n else None
    t0 = time.perf_counter()
    n_ref = reference_epoch(model, corpus, cstar, limit)
    t_ref = time.perf_counter() - t0
    t_a = t_ref * n / n_ref

    print(
        f"Phase 2 benchmark: one epoch over {n} positions ({args.convs} x {args.tokens_per_conv - 1}), "
        f"{d}-d, hidden {2 * d}, {L} blocks, vocab {args.vocab}, {torch.get_num_threads()} threads"
    )
    how = (
        f"measured on {n_ref} positions in {t_ref:.1f}s, extrapolated x{n / n_ref:.2f}"
        if n_ref < n
        else "measured on all positions"
    )
    print(
        f"(a) reference, batch 1, one step/epoch  {t_a:8.2f} s  {n / t_a:9.1f} positions/s  ({how})"
    )
    print(
        f"(b) cvfp.phase2.trainer, batch {args.batch_size:<4d} shuffled   {t_b:8.2f} s  {n / t_b:9.1f} positions/s  "
        f"(train loss {stats.loss:.3f})"
    )
    ratio = t_a / t_b
    print(f"speed-up (b)/(a): {ratio:.1f}x  target >= 10x: {'MET' if ratio >= 10 else 'NOT MET'}")


if __name__ == "__main__":
    main()
