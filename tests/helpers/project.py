"""Tiny copies of the project, and the dvc/git commands the end-to-end tests run in them."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from helpers import BIN, ROOT, TINY_MODEL

TINY = {
    "data.num_samples": 300,
    "tokenizer.vocab_size": 400,
    "tokenizer.max_seq_length": 48,
    "tokenizer.num_proc": 1,
    **TINY_MODEL,
    "phase1.max_iterations": 3,
    "phase1.min_converged_ratio": 1.0,  # all 3 iterations run (test_distributed's reference)
    "checks.convergence_trials": 3,
    "checks.probe_samples": 50,
    "phase2.epochs": 2,
    "phase2.batch_size": 128,
    "materialize.chunk_tokens": 1000,
}


def make_project(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("cvfp", "tasks", "flows"):
        # with __pycache__: copytree keeps each source's mtime, so its .pyc stays valid and the
        # project's processes skip compiling the code again (.dvcignore leaves it out of deps)
        shutil.copytree(ROOT / name, dest / name)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    from cvfp.params import set_dotted

    for k, v in TINY.items():
        set_dotted(raw, k, v)
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    from tasks.report import write_compare_placeholder

    write_compare_placeholder(dest / "metrics" / "compare.json")  # git-tracked, a report dep
    run(["git", "init", "-q"], dest)
    run([str(BIN / "dvc"), "init", "-q"], dest)
    shutil.copy(ROOT / ".dvc" / "config", dest / ".dvc" / "config")  # analytics off, plots page
    shutil.copytree(ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")  # plot templates
    return dest


def commit(proj: Path, message: str) -> None:
    """Commit everything git sees (DVC's outputs are git-ignored; dvc.lock is not)."""
    for cmd in (
        ["git", "config", "user.email", "t@example.com"],
        ["git", "config", "user.name", "t"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", message],
    ):
        run(cmd, proj)


def env():
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e["PYTHONPATH"] = ""  # stages import the copy's own code
    return e


def run(cmd, cwd) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    assert p.returncode == 0, f"{cmd} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


def dvc_json(cwd, *args):
    """`dvc <args>` (a --json command) in cwd, parsed; fails the test on a non-zero exit."""
    p = subprocess.run(
        [str(BIN / "dvc"), *args], cwd=cwd, env=env(), capture_output=True, text=True
    )
    assert p.returncode == 0, f"dvc {args} failed:\n{p.stderr[-3000:]}"
    return json.loads(p.stdout)


def repro(cwd, *targets) -> list[str]:
    """The stages `dvc repro [targets]` ran."""
    out = run([str(BIN / "dvc"), "repro", *targets], cwd)
    return re.findall(r"Running stage '(\w+)'", out)


def status_clean(cwd) -> bool:
    return "up to date" in run([str(BIN / "dvc"), "status"], cwd)
