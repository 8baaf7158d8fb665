"""One experiment of a comparison: the project's source as an experiment sees it (`Source`),
its fingerprint for reuse, and `run_experiment`: `dvc exp run` in a private clone that shares
the DVC cache and run-cache, its ref pushed back (docs/compare.md). `tasks/compare.py` plans
the experiments and reads their results; `flows/compare.py` runs them as Prefect tasks."""

from __future__ import annotations

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
from pathlib import Path
from typing import Any

from cvfp.params import yaml_load

from .cli import log

ERROR_LINE = re.compile(r"^(ERROR|[\w.]*(Error|Exception)\b:?)")
# DVC's stage lines and the stages' epoch / finish logs, shown as the experiment goes.
RAN_STAGE = re.compile(r"^Running stage '(\w+)'")
CACHED_STAGE = re.compile(r"^Stage '(\w+)' is cached")
PROGRESS_LINE = re.compile(
    r"^Running stage|^Stage '|cvfp INFO (phase2 epoch|transformer epoch|"
    r"reconstruction epoch|stage \w+ finished)|^WARNING: run-cache"
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


def set_arg(key: str, value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return f"{key}={text}"


def git(*args: str, cwd: str | Path | None = None) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, check=True, cwd=cwd
    ).stdout


def exp_ref(name: str, baseline: str | None = None) -> str:
    """The experiment ref of `name` on `baseline` (default: the current HEAD)."""
    head = baseline or git("rev-parse", "HEAD").strip()
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
# How a clone's outputs link to the shared cache: DVC's default on ext4 is copy (reflink is
# not supported there); a hard link costs nothing (a copy: the data, the C* of each split).
CLONE_CACHE_TYPES = "reflink,hardlink,copy"


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
        baseline=git("rev-parse", "HEAD").strip(),
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


# dvc.lock is rewritten after every stage, each time parsed again with ruamel's round-trip
# loader (pure Python, ~0.14 s CPU for this project's dvc.lock; it keeps comments, which DVC
# never writes there); the safe loader (C) gives the same data in ~0.015 s, and DVC's dump of
# it the same bytes (tests/test_compare_runs.py). Other files (params.yaml for -S) keep it.
LOCKFILE_PARSER = """\
import os
from dvc.utils.serialize import _yaml
round_trip = _yaml.parse_yaml_for_update
_yaml.parse_yaml_for_update = lambda text, path: (
    _yaml.parse_yaml(text, path) if os.path.basename(path) == "dvc.lock"
    else round_trip(text, path)
)
"""


# The experiment's one DVC process (each start costs ~1-2 s of CPU): `dvc checkout` brings
# the outputs the baseline already has from the shared cache (a missing one is made by its
# stage), then `dvc exp run`, then every stage's run goes to the shared run-cache. DVC 3
# saves no run-cache entry for a stage with a plain `cache: false` output (metrics/phase1.json,
# plots/*.csv: git-tracked; only stage `metrics:`/`plots:` are exempt), but it restores one
# whatever the outputs (dvc/stage/cache.py); `StageCache.save` stores such files as copies
# (what DVC does for `metrics:` with `cache: false`). So an experiment whose phase1 has the
# same deps and params as a finished one (no_context and none, same seed) restores phase1
# and materialize instead of rerunning them. `run_cache=False` (--force): nothing restored.
_DVC_EXPERIMENT = (
    LOCKFILE_PARSER
    + """\
import sys
from dvc.cli import main
main(["checkout", "--quiet", "--allow-missing"])
if not {run_cache}:  # `dvc exp run` has no --no-run-cache flag; DVC's API takes run_cache
    from dvc.commands.experiments.run import CmdExperimentsRun as Run
    from dvc.commands.repro import CmdRepro
    common = CmdRepro._common_kwargs.fget
    Run._common_kwargs = property(lambda self: {{**common(self), "run_cache": False}})
rc = main(sys.argv[1:])
if rc == 0:
    from dvc.repo import Repo
    try:
        with Repo() as repo:
            for stage in repo.index.stages:
                if stage.cmd and all(out.exists for out in stage.outs):
                    repo.stage_cache.save(stage)
    except Exception as err:  # the experiment is done and committed all the same
        print(f"WARNING: run-cache not saved: {{type(err).__name__}}: {{err}}", flush=True)
sys.exit(rc)
"""
)


def run_experiment(
    exp: dict,
    source: Source,
    threads: int,
    on_line: Callable[[str], None] = log.info,
    workdir: str | Path | None = None,
    run_cache: bool = True,
) -> dict:
    """Run one experiment in a private clone of `source` and push its ref back; returns
    {"name", "seconds", "cpu_seconds", "stages", "cached"} (cpu_seconds: user + sys of the
    DVC process and its stages; stages / cached: those DVC ran / restored from the
    run-cache) or raises ExperimentFailed with DVC's error lines. Any machine with git, this project's environment and the shared DVC
    cache can run it (a Prefect task on threads or on Dask workers). Stages DVC ran before
    with the same deps and params are restored from the shared run-cache unless
    `run_cache` is False (--force); every stage run is saved there for later ones."""
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
        # The shared cache (and run-cache); outputs linked to it, not copied: DVC makes
        # linked cache files read-only, and every stage writes new files (atomic_path).
        (clone / ".dvc" / "config.local").write_text(
            f"[cache]\n    dir = {source.cache_dir}\n    type = {CLONE_CACHE_TYPES}\n"
        )
        args = ["exp", "run", "-n", exp["name"]]
        args += ["-m", f"{exp['name']}\n\n{FINGERPRINT}{fingerprint(exp, source)}"]
        for key, value in exp["sets"].items():
            args += ["-S", set_arg(key, value)]
        args += ["-S", f"runtime.threads={threads}"]
        cmd = [sys.executable, "-c", _DVC_EXPERIMENT.format(run_cache=run_cache), *args]
        tail: deque[str] = deque(maxlen=80)
        stages: list[str] = []
        cached: list[str] = []
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
                if hit := CACHED_STAGE.match(line):
                    cached.append(hit.group(1))
                if PROGRESS_LINE.search(line):
                    on_line(f"{exp['name']}: {line.split(' cvfp INFO ')[-1]}")
            # Reaped here for its CPU time: DVC's and its stage processes' (user + sys).
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            cpu = usage.ru_utime + usage.ru_stime
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
    return {
        "name": exp["name"],
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": cpu,
        "stages": stages,
        "cached": cached,
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
