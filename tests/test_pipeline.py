"""End to end on tiny params in temporary copies of the project: dvc repro, the Prefect
flow, and that both front doors share one DVC state."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

BIN = Path(sys.executable).parent
STAGES = ["download", "tokenize", "split", "phase1", "materialize", "phase2", "report"]
TINY = {
    "data.num_samples": 300, "tokenizer.vocab_size": 400, "tokenizer.max_seq_length": 48,
    "tokenizer.num_proc": 1,
    "model.context_dim": 16, "model.embed_dim": 16, "model.hidden_dim": 32,
    "model.layer_structure": [1, 1], "phase2.block_weights": [0.5, 1.0],
    "phase1.max_iterations": 3, "phase1.progress": False, "checks.convergence_trials": 3,
    "checks.probe_samples": 50, "phase2.epochs": 2, "phase2.batch_size": 128,
    "materialize.chunk_tokens": 1000,
}
pytestmark = pytest.mark.pipeline


def make_project(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("cvfp", "tasks", "flows"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    from cvfp.params import set_dotted
    for k, v in TINY.items():
        set_dotted(raw, k, v)
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run(["git", "init", "-q"], dest)
    run([str(BIN / "dvc"), "init", "-q"], dest)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], dest)
    return dest


def env():
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e["PYTHONPATH"] = ""  # stages import the copy's own code
    return e


def run(cmd, cwd) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    assert p.returncode == 0, f"{cmd} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


def repro(cwd) -> list[str]:
    out = run([str(BIN / "dvc"), "repro"], cwd)
    return re.findall(r"Running stage '(\w+)'", out)


def status_clean(cwd) -> bool:
    return "up to date" in run([str(BIN / "dvc"), "status"], cwd)


def metrics(cwd) -> dict:
    def strip(x):  # wall-clock numbers differ run to run; everything else must not
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if "second" not in k and "time" not in k}
        return x
    return {n: strip(json.loads((cwd / "metrics" / n).read_text()))
            for n in ("data.json", "phase1.json", "phase2.json")}


def test_dvc_repro_end_to_end_then_noop(dvc_project):
    proj, ran = dvc_project
    assert ran == STAGES
    for out in ("data/raw", "data/tokenizer", "data/tokenized", "data/split/train", "data/split/val",
                "data/split/gx/validation.json", "cache/phase1/model.pt", "cache/cstar",
                "cache/phase2", "metrics/data.json", "metrics/phase1.json", "metrics/phase2.json",
                "plots/phase1_train.csv", "plots/phase2_epochs.csv", "reports/report.html",
                "reports/report.md"):
        assert (proj / out).exists(), out
    assert json.loads((proj / "metrics/data.json").read_text())["val_subset_ok"] is True
    assert repro(proj) == []
    assert status_clean(proj)


def test_flow_matches_dvc_and_leaves_status_clean(dvc_project, tmp_path, monkeypatch, prefect_harness):
    from flows.pipeline import pipeline
    proj, _ = dvc_project
    other = make_project(tmp_path / "flowproj")
    monkeypatch.chdir(other)
    outcome = pipeline("params.yaml")
    assert outcome == {s: "ran" for s in STAGES}
    assert status_clean(other)
    assert repro(other) == []                       # DVC accepts what the flow produced
    assert metrics(other) == metrics(proj)          # same numbers from both front doors


def test_flow_skips_everything_after_dvc_repro(dvc_project, monkeypatch, prefect_harness):
    from flows.pipeline import pipeline
    proj, _ = dvc_project
    monkeypatch.chdir(proj)
    assert pipeline("params.yaml") == {s: "skipped" for s in STAGES}


def test_changing_a_phase1_param_reruns_only_downstream(dvc_project):
    proj, _ = dvc_project
    run([str(BIN / "dvc"), "params", "diff"], proj)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["phase1"]["lr"] = 0.001
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert repro(proj) == ["phase1", "materialize", "phase2", "report"]
    params["phase2"]["lr"] = 0.001
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert repro(proj) == ["phase2", "report"]


def test_switching_the_phase1_objective_reruns_only_phase1_and_downstream(dvc_project):
    proj, _ = dvc_project
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["phase1"]["objective"] = "reconstruction"
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert repro(proj) == ["phase1", "materialize", "phase2", "report"]
    p1 = json.loads((proj / "metrics/phase1.json").read_text())
    assert p1["objective"] == "reconstruction" and p1["val"]["ppl"] > 1 and "effective_rank" in p1["val"]
    cv = json.loads((proj / "metrics/phase2.json").read_text())["cvfp"]
    assert cv["head_init"] == "phase1" and cv["val_ppl"] <= p1["val"]["ppl"] * (1 + 1e-4)
    assert "context reconstruction learning" in (proj / "reports/report.md").read_text()
    assert repro(proj) == []
