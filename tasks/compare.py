"""A comparison's I/O: run one arm x seed as a DVC experiment, read its metrics back, and
write reports/compare.{html,md} + metrics/compare.json (docs/compare.md).

`flows/compare.py` composes these into the Prefect flow. Each experiment is
`dvc exp run -n <name> -S key=value ...` in a private clone of the project (the
workspace's params.yaml and outputs stay as they were) that shares the DVC cache and
run-cache; its commit is pushed back under refs/exps/, so `dvc exp show` lists it and its
metrics are read from that commit (`git show <ref>:metrics/...`). A finished experiment
with the same fingerprint (baseline, code, params) is reused instead of rerun.

    python -m tasks.compare      # rebuild the report from the experiments already run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cvfp.compare import check_consistent, experiment_values, parse_conversations, summarise
from cvfp.compare_report import build_compare_report, verdict_lines
from cvfp.params import Params, ParamsError, arm_params, load_params, yaml_load
from cvfp.utils import atomic_path, write_json

from .cli import log, setup_logging
from .layout import (
    COMPARE_HTML,
    COMPARE_JSON,
    COMPARE_MD,
    PHASE1_METRICS,
    PHASE2_METRICS,
    PHASE2_TEST_CSV,
)

PREFIX = "cmp"  # experiment names: cmp-<arm>-s<seed>
ERROR_LINE = re.compile(r"^(ERROR|[\w.]*(Error|Exception)\b:?)")
# DVC's stage lines and the stages' epoch / finish logs, shown as the experiment goes.
RAN_STAGE = re.compile(r"^Running stage '(\w+)'")
PROGRESS_LINE = re.compile(
    r"^Running stage|^Stage '|cvfp INFO (phase2 epoch|transformer epoch|"
    r"reconstruction epoch|stage \w+ finished)"
)


class ExperimentFailed(RuntimeError):
    """An experiment that could not finish; `seconds`: how long it ran (set by the task)."""

    def __init__(self, message: str, seconds: float | None = None) -> None:
        super().__init__(message)
        self.seconds = seconds

    def __reduce__(self):  # keeps `seconds` when a Dask worker sends it back
        return (type(self), (str(self), self.seconds))


class ExperimentMissing(ExperimentFailed):
    """No experiment of that name on this commit (not run yet, or it failed earlier)."""


def experiment_name(arm: str, seed: int) -> str:
    return f"{PREFIX}-{arm}-s{seed}"


def plan(
    params: Params,
    arms: list[str] | None = None,
    n_seeds: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[dict]:
    """The experiments of a comparison, validated before any runs: one dict per arm x seed
    with its name and the full -S overrides (shared ones, then the arm's, then the seed).
    Bad shared overrides raise; an arm whose values do not validate gets `invalid` (its
    error): it fails alone without running and the others go on."""
    c = params.compare
    arms = arms or c.run
    unknown = [a for a in arms if a not in c.arms]
    if unknown:
        raise ValueError(
            f"unknown arm(s) {unknown}; defined in params.yaml compare.arms: {list(c.arms)}"
        )
    n = len(c.seeds) if n_seeds is None else n_seeds
    if not 1 <= n <= len(c.seeds):
        raise ValueError(
            f"--seeds {n}: compare.seeds lists {len(c.seeds)} seed(s) {c.seeds}; "
            f"add seeds there to run more"
        )
    bad = [k for k in (overrides or {}) if k.split(".")[0] in ("seed", "compare", "runtime")]
    if bad:
        raise ValueError(
            f"-S {bad}: the comparison sets the seed and runtime.threads itself; pick seeds "
            f"in compare.seeds and threads with --threads (compare.threads)"
        )
    overrides = resolve_data_path(params, overrides)  # untracked data: made absolute
    arm_params(
        params, dict(overrides or {}), "-S"
    )  # shared overrides: wrong for every arm, stop now
    control = control_of(params, arms)
    out = []
    for seed in c.seeds[:n]:
        for arm in arms:
            sets = {**(overrides or {}), **c.arms[arm], "seed": seed}
            if c.transformer_in_control_only and arm != control:
                sets["baselines.transformer"] = False
            try:  # an arm's bad value fails that arm only
                arm_params(params, sets, f"arm {arm}, seed {seed}")
                invalid = None
            except ParamsError as err:
                invalid = str(err)
            out.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "name": experiment_name(arm, seed),
                    "sets": sets,
                    "invalid": invalid,
                }
            )
    return out


def resolve_data_path(
    params: Params, overrides: dict[str, Any] | None, root: Path | None = None
) -> dict[str, Any]:
    """The overrides with a relative local `data.path` that git and DVC do not track made
    absolute: each experiment runs in a temporary copy holding only tracked files, where
    the path would not exist. The absolute path lands in every experiment's params (and
    is logged). A path that does not exist is refused here, before any experiment runs."""
    sets = dict(overrides or {})
    if sets.get("data.source", params.data.source) != "local":
        return sets
    raw = str(sets.get("data.path", params.data.path))
    root = (root or Path.cwd()).resolve()
    path = Path(raw).expanduser()
    full = path if path.is_absolute() else root / path
    if not full.exists():
        raise ValueError(
            f"data.path={raw!r}: no such file or directory (in {root}); every experiment would "
            f"fail. Give an existing path"
        )
    if path.is_absolute():
        return sets
    listed = subprocess.run(
        ["git", "ls-files", "--", raw], cwd=root, capture_output=True, text=True
    ).stdout
    if listed.strip() or Path(f"{full}.dvc").exists():
        return sets  # in the experiments' copy (DVC-tracked data is checked out there)
    sets["data.path"] = str(full.resolve())
    log.warning(
        "data.path=%r is tracked by neither git nor DVC, so the experiments (run in a temporary "
        "copy of the tracked files) read it as %s; `dvc add %s` (and commit the .dvc file) to "
        "version the data with the comparison",
        raw,
        sets["data.path"],
        raw,
    )
    return sets


def control_of(params: Params, arms: list[str]) -> str:
    """The arm the others are paired with: compare.control if it runs, else the first arm."""
    return params.compare.control if params.compare.control in arms else arms[0]


def _set_arg(key: str, value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return f"{key}={text}"


def _git(*args: str, cwd: str | Path | None = None) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, check=True, cwd=cwd
    ).stdout


def exp_ref(name: str, baseline: str | None = None) -> str:
    """The experiment ref of `name` on `baseline` (default: the current HEAD)."""
    head = baseline or _git("rev-parse", "HEAD").strip()
    return f"refs/exps/{head[:2]}/{head[2:]}/{name}"


# ---------------------------------------------------------------- running experiments
#
# Each experiment runs in a private clone of the project (DVC's `--temp` does the same, but
# two `dvc exp run --temp` in one repository share its stash ref and its 3-second lock, so
# they cannot run side by side). The clone starts at the baseline commit plus the
# workspace's uncommitted changes to tracked files (what --temp takes too), uses the shared
# DVC cache (outputs and run-cache), runs `dvc exp run -n <name>`, and pushes the
# experiment's git ref back: `dvc exp show` in the project lists it like any other. A Dask
# worker on another machine does the same from its own clone (docs/scaling.md).

# Not inputs of an experiment: stage outputs tracked by git and the comparison's own files.
OUTPUT_PATHS = ("dvc.lock", "metrics", "plots", "reports")
# Sections no stage reads (the report prints params.yaml, but its research numbers do not
# depend on them): an experiment is reused when only these changed.
NOT_INPUTS = ("compare", "orchestration")
FINGERPRINT = "cvfp-compare fingerprint "  # + sha256, in the experiment's commit message


@dataclass(frozen=True)
class Source:
    """What a worker needs to run an experiment of this checkout, wherever it runs."""

    repo: str  # git URL or path of the project: cloned, and the experiment ref pushed back
    baseline: str  # the commit experiments start from (HEAD here)
    patch: bytes  # uncommitted changes to tracked files (git diff --binary HEAD)
    cache_dir: str  # the DVC cache all workers share (outputs, run-cache)
    params_text: str  # the workspace's params.yaml (for the fingerprint)


def workspace_source(repo: str | None = None, cache_dir: str | None = None) -> Source:
    """The current checkout as a Source: this directory unless `repo` names a URL or path
    that the workers reach (it must hold the baseline commit), and its DVC cache."""
    root = Path.cwd()
    if cache_dir is None:
        cache_dir = subprocess.run(
            ["dvc", "cache", "dir"], capture_output=True, text=True, check=True
        ).stdout.strip()
    patch = subprocess.run(
        ["git", "diff", "--binary", "HEAD"], capture_output=True, check=True
    ).stdout
    return Source(
        repo=repo or str(root),
        baseline=_git("rev-parse", "HEAD").strip(),
        patch=patch,
        cache_dir=str(Path(cache_dir).resolve()),
        params_text=(root / "params.yaml").read_text(),
    )


def fingerprint(exp: dict, source: Source) -> str:
    """What an experiment's results depend on: the baseline commit, the code and config
    changes on top of it (stage outputs aside), and its params after the overrides (the
    sections no stage reads aside, e.g. adding an arm reuses the others). Equal
    fingerprints, equal results: the thread count is one of the params (runtime.threads)."""
    from cvfp.params import set_dotted

    raw = yaml_load(source.params_text) or {}  # as load_params reads it
    for key, value in exp["sets"].items():
        set_dotted(raw, key, value)
    for key in NOT_INPUTS:
        raw.pop(key, None)
    changes = [
        part
        for part in re.split(rb"(?m)^(?=diff --git )", source.patch)
        if part
        and not any(
            part.startswith(f"diff --git a/{p}".encode())
            for p in ("params.yaml", *(f"{o}" for o in OUTPUT_PATHS))
        )
    ]
    doc = {
        "baseline": source.baseline,
        "params": raw,
        "changes": hashlib.sha256(b"".join(changes)).hexdigest(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def reusable(exp: dict, source: Source) -> str | None:
    """The commit of a finished experiment with this name and fingerprint on the baseline
    (then nothing needs to run), else None."""
    ref = exp_ref(exp["name"], source.baseline)
    found = subprocess.run(
        ["git", "log", "-1", "--format=%H%n%B", ref], capture_output=True, text=True
    )
    if found.returncode:
        return None
    commit, _, message = found.stdout.partition("\n")
    return commit if f"{FINGERPRINT}{fingerprint(exp, source)}" in message else None


def forget(exp: dict, source: Source) -> None:
    """Delete the experiment's ref before it reruns, so a failed rerun leaves no stale result
    (run in the flow, one at a time: git locks packed-refs while deleting)."""
    subprocess.run(
        ["git", "update-ref", "-d", exp_ref(exp["name"], source.baseline)], capture_output=True
    )


def fetch_result(exp: dict, source: Source) -> None:
    """Bring the experiment's ref here when the workers pushed it to another repository
    (`--repo`); a no-op for this checkout."""
    if Path(source.repo).resolve() == Path.cwd().resolve():
        return
    ref = exp_ref(exp["name"], source.baseline)
    subprocess.run(["git", "fetch", "--quiet", source.repo, f"+{ref}:{ref}"], capture_output=True)


def threads_per_experiment(workers: int, threads: int | None = None) -> int:
    """torch threads per experiment: `threads`, else this machine's cores // workers (>= 1)."""
    if threads:
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // workers)


def _run(cmd: list[str], cwd: Path, what: str, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, **kw)
    if p.returncode:
        err = p.stderr if isinstance(p.stderr, str) else p.stderr.decode(errors="replace")
        raise ExperimentFailed(f"{what}: `{' '.join(cmd[:4])}` failed: {err.strip()[-500:]}")
    return p


_DVC_CHECKOUT_THEN = (
    "import sys; from dvc.cli import main; "
    "main(['checkout', '--quiet', '--allow-missing']); sys.exit(main(sys.argv[1:]))"
)


def run_experiment(
    exp: dict,
    source: Source,
    threads: int,
    on_line: Callable[[str], None] = log.info,
    workdir: str | Path | None = None,
) -> dict:
    """Run one experiment in a private clone of `source` and push its ref back; returns
    {"name", "seconds", "stages"} (stages: those DVC ran) or raises ExperimentFailed with
    DVC's error lines. Any machine with git, this project's environment and the shared DVC
    cache can run it (a Prefect task on threads or on Dask workers)."""
    if exp.get("invalid"):
        raise ExperimentFailed(f"{exp['name']} not run: {exp['invalid']}")
    t0 = time.perf_counter()
    if workdir is None:
        local = Path(source.repo)
        workdir = local / ".dvc" / "tmp" / "compare" if local.is_dir() else None
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    ref = exp_ref(exp["name"], source.baseline)
    with tempfile.TemporaryDirectory(prefix=f"{exp['name']}-", dir=workdir) as tmp:
        clone = Path(tmp) / "repo"
        what = f"{exp['name']}: preparing its clone"
        _run(["git", "clone", "--quiet", "--no-checkout", source.repo, str(clone)], Path(tmp), what)
        if subprocess.run(
            ["git", "cat-file", "-e", f"{source.baseline}^{{commit}}"], cwd=clone
        ).returncode:
            _run(["git", "fetch", "--quiet", "origin", source.baseline], clone, what)
        _run(["git", "checkout", "--quiet", "--detach", source.baseline], clone, what)
        if source.patch:
            _run(["git", "apply", "--binary", "-"], clone, what, input=source.patch)
        (clone / ".dvc" / "config.local").write_text(
            f"[cache]\n    dir = {source.cache_dir}\n"  # the shared cache (and run-cache)
        )
        args = ["exp", "run", "-n", exp["name"]]
        args += ["-m", f"{exp['name']}\n\n{FINGERPRINT}{fingerprint(exp, source)}"]
        for key, value in exp["sets"].items():
            args += ["-S", _set_arg(key, value)]
        args += ["-S", f"runtime.threads={threads}"]
        # One DVC process (each start costs ~1-2 s of CPU): `dvc checkout` brings the
        # outputs the baseline already has from the shared cache (a missing one is made by
        # its stage), then `dvc exp run`.
        cmd = [sys.executable, "-c", _DVC_CHECKOUT_THEN, *args]
        tail: deque[str] = deque(maxlen=80)
        stages: list[str] = []
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",  # stage lines as they happen, not in blocks
            "OMP_NUM_THREADS": str(threads),  # numpy/BLAS too: no oversubscribed cores
            "MKL_NUM_THREADS": str(threads),
        }
        with subprocess.Popen(
            cmd, cwd=clone, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                tail.append(line)
                ran = RAN_STAGE.match(line)
                if ran:
                    stages.append(ran.group(1))
                if PROGRESS_LINE.search(line):
                    on_line(f"{exp['name']}: {line.split(' cvfp INFO ')[-1]}")
        if proc.returncode != 0:
            errors = [ln.strip() for ln in tail if ERROR_LINE.match(ln.strip())]
            raise ExperimentFailed(
                f"{exp['name']} failed after {time.perf_counter() - t0:.0f} s "
                f"(exit {proc.returncode}): "
                + (" | ".join(errors[-4:]) or " | ".join(list(tail)[-5:]))
            )
        _run(
            ["git", "push", "--quiet", "--force", source.repo, f"{ref}:{ref}"],
            clone,
            f"{exp['name']}: pushing its experiment ref",
        )
    return {"name": exp["name"], "seconds": time.perf_counter() - t0, "stages": stages}


def collect(exp: dict) -> dict:
    """The record of a finished experiment, read from its commit."""
    ref = exp_ref(exp["name"])
    if subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", ref], capture_output=True
    ).returncode:
        raise ExperimentMissing(
            f"{exp['name']}: no such experiment on this commit (not run, or it failed)"
        )
    where = f"{exp['name']} ({ref})"
    try:
        phase1, phase2 = (
            json.loads(_git("show", f"{ref}:{path.as_posix()}"))
            for path in (PHASE1_METRICS, PHASE2_METRICS)
        )
        table = _git("show", f"{ref}:{PHASE2_TEST_CSV.as_posix()}")
    except subprocess.CalledProcessError as err:
        raise ExperimentFailed(f"{where}: missing metrics: {err.stderr.strip()}") from None
    try:
        conversations = parse_conversations(table, f"{where}:{PHASE2_TEST_CSV.as_posix()}")
        values = experiment_values(phase1, phase2, conversations)
        check_consistent(values, conversations, where)
    except ValueError as err:
        raise ExperimentFailed(str(err)) from None
    return {
        "arm": exp["arm"],
        "seed": exp["seed"],
        "name": exp["name"],
        "status": "ok",
        "error": None,
        "values": values,
        "conversations": conversations,
    }


def failed(exp: dict, error: str, seconds: float | None = None, status: str = "failed") -> dict:
    return {
        "arm": exp["arm"],
        "seed": exp["seed"],
        "name": exp["name"],
        "status": status,
        "error": error,
        "seconds": seconds,
    }


def write_outputs(
    params: Params,
    experiments: list[dict],
    arms: list[str],
    overrides: dict[str, Any] | None = None,
) -> dict:
    """summarise -> metrics/compare.json, reports/compare.{html,md} (each written atomically).
    Returns the content of metrics/compare.json."""
    summary = summarise(experiments, params.compare, arms, control_of(params, arms))
    summary.overrides = dict(overrides or {})
    summary.generated_utc = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")  # not a DVC output
    try:
        summary.git_revision = _git("rev-parse", "HEAD").strip()
    except (OSError, subprocess.CalledProcessError):
        summary.git_revision = "unknown"
    shared = ", ".join(f"-S {_set_arg(k, v)}" for k, v in (overrides or {}).items()) or "none"
    html, md = build_compare_report(summary, f"Applied to every experiment: {shared}.")
    data = summary.to_dict()
    write_json(COMPARE_JSON, data)
    for path, text in ((COMPARE_HTML, html), (COMPARE_MD, md)):
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    for line in verdict_lines(summary):
        log.info("verdict: %s", line)
    return data


def main() -> None:
    """Rebuild the outputs from the experiments of this baseline (no experiment runs)."""
    ap = argparse.ArgumentParser(prog="python -m tasks.compare", description=main.__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--arms", nargs="+")
    ap.add_argument("--seeds", type=int)
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    setup_logging()
    params = load_params(args.params)
    overrides = dict(parse_sets(args.set))
    exps = plan(params, args.arms, args.seeds, overrides)
    records = []
    for e in exps:
        try:
            records.append(collect(e))
        except ExperimentMissing as err:
            records.append(failed(e, str(err), status="missing"))
        except ExperimentFailed as err:
            records.append(failed(e, str(err)))
    write_outputs(params, records, list(dict.fromkeys(e["arm"] for e in exps)), overrides)
    print(COMPARE_HTML.resolve())


def parse_sets(items: list[str]):
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"-S expects KEY=VALUE, got {item!r}")
        yield key, yaml_load(value)  # as params.yaml reads it (1e-3 a number)


if __name__ == "__main__":
    main()
