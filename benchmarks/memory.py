"""Peak memory of every pipeline stage at N and 4N tokens of long conversations.

A synthetic corpus in the hub layout (`<dir>/data/train_sft-00000-of-00001.parquet`, the
UltraChat schema) of conversations of `--conv-tokens` words on average (lognormal
lengths up to 5x that, turns of ~150 words over a vocabulary of 300 made-up words of 2-5
letters, so the BPE tokenizer of 2000 entries makes about one token per word) is run
through the stages, each as its own process (`python -m tasks.<stage> -S ...` in a fresh project directory), with whole
conversations (`tokenizer.max_seq_length: null`). The peak RSS of each stage process comes
from `os.wait4` (the kernel's ru_maxrss of that child: everything, interpreter, torch and
the file pages it maps).

Printed: each stage's peak RSS at N and 4N tokens and the ratio (target: <= 1.2), then the
tokens/s of materialize (its C* pass, as the stage logs it) against Phase 1's
iteration-0 pass (train tokens over its logged seconds) at 4N (target: within 1.5x).
The run is cut down where the token count does not matter for memory: 2 blocks of one
layer (64-d), 1 Phase 1 iteration, 2 convergence trials, 1 Phase 2 epoch (and 1 of the
Transformer baseline, part of the phase2 stage); torch on `--threads` threads per stage
(default 1: on a shared machine two OpenMP threads spin-wait each other 4-20x slower;
memory does not depend on it).

    python -m benchmarks.memory [--tokens 1000000] [--factor 4] [--conv-tokens 2000]
    python -m benchmarks.memory --stages download          # stops after the last one named
    python -m benchmarks.memory --keep DIR                 # projects kept in DIR/memory-<N>
    python -m benchmarks.memory --keep DIR --reuse --stages phase2  # only phase2, again
    python -m benchmarks.memory --speed [--tokens 1000000]   # C* vs iteration 0, in process
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["download", "tokenize", "split", "phase1", "materialize", "phase2"]
TARGET_RSS = 1.2
TARGET_SPEED = 1.5
WORDS = 300
OVERRIDES = {
    "model.layer_structure": [1, 1],
    "phase2.block_weights": [0.5, 1.0],
    "data.source": "local",
    "data.split": "train_sft",
    "tokenizer.max_seq_length": None,
    "tokenizer.vocab_size": 2000,
    "phase1.max_iterations": 1,
    "phase1.warn_tokens": 10**12,
    "phase1.progress": False,
    "checks.convergence_trials": 2,
    "phase2.epochs": 1,
}


def write_corpus(path: Path, tokens: int, conv_tokens: int, seed: int = 0) -> int:
    """Conversations of about `tokens` words in total; returns the number of conversations."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = sorted(
        {"".join(rng.choice(letters, size=rng.integers(2, 6))) for _ in range(WORDS * 2)}
    )[:WORDS]
    rows, total = [], 0
    while total < tokens:
        n = int(np.clip(rng.lognormal(np.log(conv_tokens) - 0.32, 0.8), 50, 5 * conv_tokens))
        n = min(n, tokens - total) if tokens - total > 50 else n
        words = np.array(vocab)[rng.integers(0, WORDS, size=n)]
        turns = [" ".join(words[i : i + 150]) for i in range(0, n, 150)]
        messages = [
            {"role": "user" if k % 2 == 0 else "assistant", "content": t}
            for k, t in enumerate(turns)
        ]
        rows.append(
            {"prompt": turns[0], "prompt_id": f"synthetic-{len(rows)}", "messages": messages}
        )
        total += n
    path.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(path / "train_sft-00000-of-00001.parquet")
    return len(rows)


def overrides(project: Path, data: Path) -> dict:
    """OVERRIDES, data.path, and C* read from its file whatever the split size (the
    streaming path is the one whose memory is measured) where the params have that knob."""
    import yaml

    out = {**OVERRIDES, "data.path": str(data)}
    if "cstar_in_memory_mb" in yaml.safe_load((project / "params.yaml").read_text())["phase2"]:
        out["phase2.cstar_in_memory_mb"] = 0
    return out


def run_stage(stage: str, project: Path, data: Path, threads: int) -> dict:
    """The stage as its own process; its peak RSS (MB) from wait4, wall seconds, log."""
    cmd = [sys.executable, "-m", f"tasks.{stage}"]
    for k, v in overrides(project, data).items():
        cmd += ["-S", f"{k}={json.dumps(v)}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    env["MKL_NUM_THREADS"] = str(threads)
    log = project / f"{stage}.log"
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(
            f"{stage} failed ({proc.returncode}): see {log}\n{log.read_text()[-3000:]}"
        )
    return {"peak_mb": usage.ru_maxrss / 1024, "seconds": seconds, "log": log.read_text()}


def run_pipeline(
    tokens: int,
    conv_tokens: int,
    threads: int,
    stages: list[str],
    keep: Path | None,
    reuse: bool,
) -> dict:
    """The stages up to the last of `stages` on a fresh corpus and project (kept in
    `keep`/memory-<tokens> if given), or, with `reuse`, only `stages` on the kept one."""
    if keep is not None:
        work = keep / f"memory-{tokens}"
        if not reuse:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
    else:
        work = Path(tempfile.mkdtemp(prefix=f"cvfp-memory-{tokens}-"))
    try:
        project = work / "project"
        if reuse:
            n_conv = json.loads((work / "corpus.json").read_text())["conversations"]
            run = stages
        else:
            project.mkdir()
            shutil.copy(ROOT / "params.yaml", project / "params.yaml")
            n_conv = write_corpus(work / "hub" / "data", tokens, conv_tokens)
            (work / "corpus.json").write_text(json.dumps({"conversations": n_conv}))
            run = STAGES[: max(STAGES.index(s) for s in stages) + 1]
        out = {"conversations": n_conv, "stages": {}}
        for stage in run:
            out["stages"][stage] = r = run_stage(stage, project, work / "hub", threads)
            print(
                f"  {tokens:>9,} tokens: {stage:12s} {r['peak_mb']:7.0f} MB {r['seconds']:7.1f} s",
                flush=True,
            )
        split_file = project / "metrics" / "data.json"
        if split_file.exists():
            split = json.loads(split_file.read_text())
            out["train_tokens"] = split["train_tokens"]
            out["tokens"] = sum(split.get(f"{s}_tokens", 0) for s in ("train", "val", "test"))
        return out
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def iteration0_seconds(log: str) -> float:
    """Seconds of the first `iter 0:` line phase1 logs (the train split's zero-start pass)."""
    m = re.search(r"iter 0: .* (\d+\.\d+)s", log)
    if not m:
        raise RuntimeError("no 'iter 0:' line in the phase1 log")
    return float(m.group(1))


def speed(tokens: int, conv_tokens: int, rounds: int = 2) -> None:
    """C* (`materialize_sharded`, batches by length) against Phase 1 iteration 0
    (`zero_start_pass`, chunks of phase1.chunk_tokens) on the same conversations, in this
    process, one torch thread each, interleaved, best of `rounds`: load slows both alike."""
    import numpy as np
    import torch

    from cvfp.core.checkpoint import save_checkpoint
    from cvfp.core.contexts import ContextTensor
    from cvfp.core.corpus import Corpus, zero_start_pass
    from cvfp.core.model import CVFPModel
    from cvfp.materialize.cstar import materialize_sharded
    from cvfp.params import load_params

    params = load_params(ROOT / "params.yaml")
    rng = np.random.default_rng(0)
    convs, total = [], 0
    while total < tokens:
        n = int(np.clip(rng.lognormal(np.log(conv_tokens) - 0.32, 0.8), 50, 5 * conv_tokens))
        convs.append(rng.integers(0, 2000, size=n))
        total += n
    corpus = Corpus.from_conversations(convs)
    torch.manual_seed(0)
    model = CVFPModel.from_params(params.model, 2000).eval()
    torch.set_num_threads(1)
    best = {"phase1 iteration 0": np.inf, "materialize": np.inf}
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp) / "m.pt", model, params.model_dump(), vocab_size=2000)
        for _ in range(rounds):
            t0 = time.perf_counter()
            out = ContextTensor((corpus.n_tokens, model.context_dim))
            zero_start_pass(model, corpus, out, params.phase1.chunk_tokens)
            best["phase1 iteration 0"] = min(best["phase1 iteration 0"], time.perf_counter() - t0)
            del out
            t0 = time.perf_counter()
            materialize_sharded(
                Path(tmp) / "m.pt",
                {"train": corpus},
                Path(tmp) / "cstar",
                params.model,
                2000,
                params.materialize.chunk_tokens,
                "conversation",
                params.orchestration.shard_conversations,
                batch_tokens=params.materialize.batch_tokens,
            )
            best["materialize"] = min(best["materialize"], time.perf_counter() - t0)
    print(
        f"{corpus.n_tokens:,} tokens in {corpus.n_conversations} conversations, default model "
        f"({params.model.context_dim}-d, {len(params.model.layer_structure)} blocks), 1 thread, "
        f"best of {rounds}:"
    )
    for k, v in best.items():
        print(f"  {k:20s} {v:7.1f} s  {corpus.n_tokens / v:9,.0f} tokens/s")
    ratio = best["materialize"] / best["phase1 iteration 0"]
    verdict = "met" if ratio <= TARGET_SPEED else "MISSED"
    print(f"  materialize time / iteration 0 time: {ratio:.2f}x  {verdict} (<= {TARGET_SPEED}x)")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tokens", type=int, default=1_000_000, help="N (the second run: factor x N)")
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--conv-tokens", type=int, default=2000, help="mean conversation length")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per stage")
    ap.add_argument(
        "--speed", action="store_true", help="only the in-process C* vs iteration 0 timing"
    )
    ap.add_argument("--keep", type=Path, help="keep the projects under this directory")
    ap.add_argument(
        "--stages",
        default=",".join(STAGES),
        help="comma-separated stages to measure (the run stops after the last of them)",
    )
    ap.add_argument(
        "--reuse", action="store_true", help="run only --stages on the projects kept in --keep"
    )
    args = ap.parse_args()
    stages = [s for s in STAGES if s in args.stages.split(",")]
    if not stages or len(stages) != len(set(args.stages.split(","))):
        ap.error(f"--stages: a comma-separated subset of {','.join(STAGES)}")
    if args.reuse and args.keep is None:
        ap.error("--reuse needs --keep DIR (where an earlier run kept its projects)")
    if args.speed:
        print(f"load average before: {os.getloadavg()}", flush=True)
        speed(args.tokens, args.conv_tokens)
        print(f"load average after: {os.getloadavg()}")
        return

    print(f"load average before: {os.getloadavg()}", flush=True)
    sizes = [args.tokens, args.factor * args.tokens]
    runs = [
        run_pipeline(n, args.conv_tokens, args.threads, stages, args.keep, args.reuse)
        for n in sizes
    ]
    print(f"load average after: {os.getloadavg()}")
    a, b = runs
    print(f"\nconversations: {a['conversations']} / {b['conversations']}", end="")
    if "tokens" in a and "tokens" in b:
        print(f"; tokens in the splits {a['tokens']:,} / {b['tokens']:,}", end="")
    print(
        f"\n{'stage':12s} {'peak MB at N':>13s} {'at ' + str(args.factor) + 'N':>10s} "
        f"{'ratio':>6s} {'s (N / ' + str(args.factor) + 'N)':>16s}  target <= {TARGET_RSS}x"
    )
    ok = True
    for stage in stages:
        x, y = a["stages"][stage], b["stages"][stage]
        ratio = y["peak_mb"] / x["peak_mb"]
        ok &= ratio <= TARGET_RSS
        print(
            f"{stage:12s} {x['peak_mb']:13.0f} {y['peak_mb']:10.0f} {ratio:6.3f}x "
            f"{x['seconds']:8.1f} / {y['seconds']:6.1f}  {'met' if ratio <= TARGET_RSS else 'MISSED'}"
        )
    if not {"phase1", "materialize"} <= set(stages):
        sys.exit(0 if ok else 1)
    print(
        "\ntokens/s (materialize: the C* pass over all splits, as the stage logs it; phase1 "
        "iteration 0: train tokens / its logged seconds)"
    )
    for n, r in zip(sizes, runs, strict=True):
        it0 = r["train_tokens"] / iteration0_seconds(r["stages"]["phase1"]["log"])
        mat = float(re.findall(r"\((\d+) tokens/s\)", r["stages"]["materialize"]["log"])[-1])
        ratio = it0 / mat
        ok &= ratio <= TARGET_SPEED
        print(
            f"  {n:>9,} tokens: materialize {mat:9,.0f}  phase1 iteration 0 {it0:9,.0f}  "
            f"iteration 0 / materialize {ratio:.2f}x  "
            f"{'met' if ratio <= TARGET_SPEED else 'MISSED'} (<= {TARGET_SPEED}x)"
        )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
