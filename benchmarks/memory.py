"""Peak memory of C* materialization and of one Phase 1 iteration, at N and 10N tokens.

Each measurement runs in a fresh process (`--child`), on a synthetic corpus of
conversations of `--conv-len` random tokens, and reports the process's peak resident set
size (VmHWM: everything, including the interpreter, torch and file pages it maps).

* materialize: `cvfp.cstar.materialize_sharded` as the materialize stage runs it (shards
  of `orchestration.shard_conversations`, zero-start pass chunk by chunk, rows into .npy);
* phase1: `run_phase1` with max_iterations 1 = iteration 0 (zero-start pass into a
  context file) + one parallel training iteration (forward, backward, Adam step), with
  contexts in files under a work dir and `--chunk-tokens` tokens per chunk;
* phase1 in memory (reference, the way it worked before): contexts as tensors and one
  chunk for the whole split.

Printed: peak RSS at N and 10N and the ratio; target: ratio < 1.5 for materialize and the
file-backed phase1.

    python -m benchmarks.memory [--tokens 100000] [--dim 32] [--chunk-tokens 16384]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.5


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind: str, tokens: int, dim: int, conv_len: int, chunk_tokens: int) -> dict:
    import numpy as np
    import torch

    from cvfp.checkpoint import save_checkpoint
    from cvfp.corpus import Corpus
    from cvfp.cstar import materialize_sharded
    from cvfp.model import CVFPModel
    from cvfp.params import load_params
    from cvfp.phase1 import run_phase1

    params = load_params(
        "params.yaml",
        {
            "model.context_dim": dim,
            "model.embed_dim": dim,
            "model.hidden_dim": 2 * dim,
            "model.layer_structure": [1, 1],
            "phase2.block_weights": [0.5, 1.0],
            "phase1.max_iterations": 1,
            "phase1.min_converged_ratio": 1.0,
            "phase1.progress": False,
            "phase1.warn_tokens": 10**12,
            "phase1.chunk_tokens": chunk_tokens if kind == "phase1" else tokens,
        },
    )
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    vocab = 2000
    ids = rng.integers(0, vocab, size=tokens)
    corpus = Corpus.from_conversations(
        np.array_split(ids, max(1, tokens // conv_len)), "conversation"
    )
    del ids
    model = CVFPModel.from_params(params.model, vocab)
    base = peak_rss_mb()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        if kind == "materialize":  # what the materialize stage runs (plain loop)
            save_checkpoint(Path(tmp) / "model.pt", model, params.model_dump())
            materialize_sharded(
                Path(tmp) / "model.pt",
                {"train": corpus},
                Path(tmp) / "cstar",
                params.model,
                vocab,
                chunk_tokens,
                "conversation",
                params.orchestration.shard_conversations,
            )
        else:
            r = run_phase1(
                model,
                corpus,
                params.phase1,
                work_dir=Path(tmp) / "work" if kind == "phase1" else None,
            )
            assert r.history[1].steps == 1
    return {
        "kind": kind,
        "tokens": tokens,
        "seconds": time.perf_counter() - t0,
        "baseline_mb": base,
        "peak_mb": peak_rss_mb(),
    }


def measure(kind: str, tokens: int, args) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.memory",
        "--child",
        kind,
        "--tokens",
        str(tokens),
        "--dim",
        str(args.dim),
        "--conv-len",
        str(args.conv_len),
        "--chunk-tokens",
        str(args.chunk_tokens),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tokens", type=int, default=100_000, help="N (the second run uses 10N)")
    ap.add_argument("--dim", type=int, default=32, help="context and embedding dim")
    ap.add_argument("--conv-len", type=int, default=128)
    ap.add_argument("--chunk-tokens", type=int, default=16384)
    ap.add_argument("--skip-reference", action="store_true", help="skip the in-memory phase1 runs")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(
            json.dumps(child(args.child, args.tokens, args.dim, args.conv_len, args.chunk_tokens))
        )
        return

    kinds = ["materialize", "phase1"] + ([] if args.skip_reference else ["phase1-in-memory"])
    n = args.tokens
    print(
        f"dim {args.dim}, 2 layers, conversations of {args.conv_len} tokens, chunk_tokens "
        f"{args.chunk_tokens}; peak RSS of a fresh process (MB)"
    )
    print(
        f"{'':18s} {'N=' + str(n):>12s} {'10N=' + str(10 * n):>14s} {'ratio':>7s} "
        f"{'net growth':>11s} {'s (N / 10N)':>14s}  target"
    )
    ok = True
    for kind in kinds:
        a, b = measure(kind, n, args), measure(kind, 10 * n, args)
        ratio = b["peak_mb"] / a["peak_mb"]
        net = (b["peak_mb"] - b["baseline_mb"]) / max(a["peak_mb"] - a["baseline_mb"], 1e-9)
        gated = kind != "phase1-in-memory"
        ok &= (ratio < TARGET) or not gated
        verdict = (
            (("met" if ratio < TARGET else "MISSED") + f" (< {TARGET}x)") if gated else "reference"
        )
        print(
            f"{kind:18s} {a['peak_mb']:12.0f} {b['peak_mb']:14.0f} {ratio:6.2f}x {net:10.1f}x "
            f"{a['seconds']:6.1f} / {b['seconds']:5.1f}  {verdict}"
        )
    print("net growth = (peak - RSS before the work) at 10N over the same at N")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
