"""The session's background jobs (conftest.py starts them as soon as the tests are collected,
the modules that use them run last): each takes one waiter per job it needs (calling it
returns that job's result) and a fresh directory of its own."""

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from helpers import BIN
from helpers.outputs import snapshot
from helpers.prefect import start_prefect_server
from helpers.project import commit, env, make_project, repro, run, status_clean

# test_compare_flow's sweep; reconstruction before none: the flow starts the control first all
# the same (longest first)
ARMS = ["broken", "reconstruction", "none", "invalid", "no_context"]


def prefect_server(tmp: Path):
    return start_prefect_server(tmp)


def dvc_project(tmp: Path):
    """The one full `dvc repro` of the session on a tiny copy of the project: (path, stages
    that ran), committed to git."""
    proj = make_project(tmp / "proj")
    ran = repro(proj)
    commit(proj, "tiny run")
    return proj, ran


# ---------------------------------------------------------------- test_reruns


OUTPUTS = {
    "split": ["data/split", "metrics/data.json"],
    "phase1": [
        "cache/phase1",
        "metrics/phase1.json",
        "plots/phase1_train.csv",
        "plots/phase1_val.csv",
        "plots/phase1_spectrum.csv",
    ],
}


def run_reruns(project, tmp: Path):
    """`dvc repro -f -s split phase1` in a copy of the session's tiny project
    (`project()` waits for it): (copy, stage -> output digests before and after, whether
    `dvc status` is clean after). A session job (conftest.py): it runs in the background."""
    proj = tmp / "proj"
    shutil.copytree(project()[0], proj, symlinks=True)
    before = {stage: snapshot(proj, rels) for stage, rels in OUTPUTS.items()}
    out = run([str(BIN / "dvc"), "repro", "-f", "-s", *OUTPUTS], proj)  # one dvc process
    assert re.findall(r"Running stage '(\w+)'", out) == list(OUTPUTS), out
    digests = {stage: (before[stage], snapshot(proj, rels)) for stage, rels in OUTPUTS.items()}
    return proj, digests, status_clean(proj)


# ---------------------------------------------------------------- test_compare_flow


@dataclass
class CompareRuns:
    proj: Path
    first: subprocess.CompletedProcess  # 5 experiments, 2 at once
    first_json: dict  # metrics/compare.json after it
    first_md: str  # reports/compare.md after it
    first_report: str  # reports/report.md after it (the report stage reran)
    first_report_status: str  # `dvc status report` after it
    none_phase2: str  # metrics/phase2.json of cmp-none-s7 as the first run committed it
    again: subprocess.CompletedProcess  # the same command again: every experiment restored
    again_json: dict
    dask: subprocess.CompletedProcess  # --force --arms none on a Dask LocalCluster
    dask_json: dict
    dask_none_phase2: str


def run_compare(project, server, tmp: Path) -> CompareRuns:
    """`python -m flows.compare` in a copy of the session's tiny project (`project()` waits
    for it), reporting to the session's Prefect server, three times (CompareRuns): the sweep,
    2 experiments at once on threads; the same command again (every finished experiment
    restored); the control alone, forced to rerun, on a 2-process Dask LocalCluster. The copy
    gets two arms that fail: one at run time (distribution diversity cannot be split into
    chunks: phase1 raises), one at validation (a negative learning rate); compare.seeds
    starts at 7, not the workspace's seed 42, so the experiments' seed shows it came from the
    comparison."""
    proj = tmp / "proj"
    shutil.copytree(project()[0], proj, symlinks=True)
    raw = yaml.safe_load((proj / "params.yaml").read_text())
    raw["compare"]["arms"]["broken"] = {
        "phase1.diversity.kind": "distribution",
        "phase1.chunk_tokens": 7,
    }
    raw["compare"]["arms"]["invalid"] = {"phase1.lr": -1.0}
    raw["compare"]["seeds"] = [7, 42]
    (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    commit(proj, "compare arms")
    cmd = [str(BIN / "python"), "-m", "flows.compare", "--seeds", "1", "-S", "phase2.epochs=1"]
    cmd += ["--threads", "1"]  # every run: the same per-experiment thread count
    e = {**env(), "PREFECT_API_URL": server().url}

    def compare(*args: str) -> tuple[subprocess.CompletedProcess, dict]:
        done = subprocess.run([*cmd, *args], cwd=proj, env=e, capture_output=True, text=True)
        out = proj / "metrics/compare.json"
        return done, json.loads(out.read_text()) if out.exists() else {}

    first, first_json = compare("--arms", *ARMS, "--workers", "2")
    first_md = (proj / "reports/compare.md").read_text()
    first_report = (proj / "reports/report.md").read_text()
    first_report_status = run([str(BIN / "dvc"), "status", "report"], proj)
    none_phase2 = exp_file(proj, "cmp-none-s7", "metrics/phase2.json")
    again, again_json = compare("--arms", *ARMS, "--workers", "2")
    dask, dask_json = compare("--arms", "none", "--force", "--task-runner", "dask")
    return CompareRuns(
        proj,
        first,
        first_json,
        first_md,
        first_report,
        first_report_status,
        none_phase2,
        again,
        again_json,
        dask,
        dask_json,
        exp_file(proj, "cmp-none-s7", "metrics/phase2.json"),
    )


def exp_refname(proj, name: str) -> str:
    """The git ref of the experiment `name`."""
    (ref,) = [
        r
        for r in run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], proj).split()
        if r.endswith(f"/{name}")
    ]
    return ref


def exp_file(proj, name: str, path: str) -> str:
    """A file as committed by the experiment `name`."""
    return run(["git", "show", f"{exp_refname(proj, name)}:{path}"], proj)
