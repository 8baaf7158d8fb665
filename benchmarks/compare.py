"""Time to a verdict (issue 24): one small fixed comparison run three ways, in the same run,
in a private clone of this checkout (your workspace, refs and cache are not touched):

1. sequential: `--workers 1`, every experiment on --threads torch threads;
2. side by side: `--workers N` (default 2) with the same per-experiment thread count, every
   experiment forced to rerun; its metrics/compare.json numbers must equal run 1's;
3. again: the same comparison, nothing forced: every experiment is restored.

Printed: the wall times and their ratios (2 / 1, the issue's target <= 0.65 on 2 idle
cores; 3 / 1, target < 0.10), and for run 1 the share of the experiments' wall time spent
outside the stages' own work (process starts, imports, DVC's hashing and copies, the clone
each experiment runs in), from the stages' "stage X finished in N s" lines, and per arm the
mean wall and CPU time (user + sys of DVC and its stages) of an experiment. The load average
is printed before and after: on a shared machine the ratios are noise, re-run it idle.

    python -m benchmarks.compare                       # none, cvfp x 4 seeds, default data
    python -m benchmarks.compare --seeds 2 --data-set data.num_samples=300 -S phase2.epochs=1

The clone's pipeline (`dvc repro`, with the --data-set values committed first) runs before
the timings and is not part of them. Never a timed test: a benchmark.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE_DONE = re.compile(r"^(cmp-\S+): stage (\w+) finished in ([\d.]+) s")
EXP_DONE = re.compile(r"^experiment \d+ of \d+ (\S+) done in (\d+)m(\d+)s \(CPU (\d+)m(\d+)s\)")


class _Lines(logging.Handler):
    """The stages' own durations and the experiments' wall times, from the flow's logs."""

    def __init__(self) -> None:
        super().__init__()
        self.stages: dict[str, float] = {}
        self.walls: dict[str, float] = {}
        self.cpus: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if m := STAGE_DONE.match(text):
            self.stages[m.group(1)] = self.stages.get(m.group(1), 0.0) + float(m.group(3))
        elif m := EXP_DONE.match(text):
            self.walls[m.group(1)] = 60 * int(m.group(2)) + int(m.group(3))
            self.cpus[m.group(1)] = 60 * int(m.group(4)) + int(m.group(5))


def _sh(cmd: list[str], cwd: Path) -> str:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p.stdout


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _results(path: Path) -> dict:
    import json

    data = json.loads(path.read_text())
    return {k: data.get(k) for k in ("control", "metric", "seeds", "arms", "ablations")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    ap.add_argument("--arms", nargs="+", default=["none", "cvfp"])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per experiment")
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--data-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="written into the clone's params.yaml before its `dvc repro` (e.g. smaller data)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = ap.parse_args(argv)

    import yaml

    tmp = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    proj = tmp / "proj"
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        _sh(["git", "clone", "--quiet", str(ROOT), str(proj)], tmp)
        raw = yaml.safe_load((proj / "params.yaml").read_text())
        from cvfp.params import set_dotted

        for item in args.data_set:
            key, _, value = item.partition("=")
            set_dotted(raw, key, yaml.safe_load(value))
        (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        for cmd in (
            ["git", "config", "user.email", "bench@example.com"],
            ["git", "config", "user.name", "bench"],
            ["git", "commit", "--quiet", "--allow-empty", "-am", "benchmark params"],
        ):
            _sh(cmd, proj)
        print(f"clone: {proj}; load average before: {_load()}", flush=True)
        t = time.perf_counter()
        _sh(["dvc", "repro", "--quiet"], proj)
        _sh(["git", "add", "-A"], proj)
        _sh(["git", "commit", "--quiet", "--allow-empty", "-m", "benchmark repro"], proj)
        print(f"dvc repro in the clone: {time.perf_counter() - t:.0f} s (not timed below)")

        os.chdir(proj)
        sys.path.insert(0, str(proj))
        from flows.compare import run_comparison
        from tasks.compare import parse_sets

        overrides = dict(parse_sets(args.set))
        lines = _Lines()
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addHandler(lines)

        def run(workers: int, force: bool) -> float:
            t0 = time.perf_counter()
            summary = run_comparison(
                "params.yaml", args.arms, args.seeds, overrides, workers, args.threads, force
            )
            if summary["failed"]:
                raise SystemExit(f"failed experiments: {summary['failed']}")
            return time.perf_counter() - t0

        from prefect import flow

        flow(name="bench-warm-up")(lambda: None)()  # the temporary API starts here, untimed
        seq = run(1, force=True)
        seq_results = _results(proj / "metrics/compare.json")
        stage_seconds, walls = sum(lines.stages.values()), list(lines.walls.values())
        per_arm = {
            arm: [
                (lines.walls[e], lines.cpus[e])
                for e in lines.walls
                if e.rsplit("-s", 1)[0] == f"cmp-{arm}"
            ]
            for arm in args.arms
        }
        par = run(args.workers, force=True)
        same = _results(proj / "metrics/compare.json") == seq_results
        again = run(args.workers, force=False)
        n = len(args.arms) * args.seeds
        print(
            f"\n{n} experiments ({'/'.join(args.arms)} x {args.seeds} seeds), "
            f"{args.threads} torch thread(s) each, shared -S {overrides or 'none'}"
        )
        print(f"sequential (--workers 1):          {seq:7.1f} s")
        print(
            f"side by side (--workers {args.workers}):      {par:7.1f} s   "
            f"ratio {par / seq:.2f} (target <= 0.65)"
        )
        print(f"same numbers in metrics/compare.json: {same}")
        print(
            f"again, restored:                   {again:7.1f} s   ratio {again / seq:.3f} "
            f"(target < 0.10)"
        )
        if walls:
            outside = 1 - stage_seconds / sum(walls)
            print(
                f"sequential run: experiments' wall {sum(walls):.1f} s, stages' own work "
                f"{stage_seconds:.1f} s -> {outside:.0%} outside the stages (process starts, "
                f"imports, DVC, the clone)"
            )
        for arm, runs in per_arm.items():
            if runs:
                print(
                    f"sequential run, {arm}: mean wall {sum(w for w, _ in runs) / len(runs):.0f} s, "
                    f"mean CPU {sum(c for _, c in runs) / len(runs):.0f} s per experiment "
                    f"(DVC and its stage processes, user + sys)"
                )
        print(f"load average after: {_load()}")
        return 0 if same else 1
    finally:
        os.chdir(ROOT)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
