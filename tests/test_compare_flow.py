"""python -m flows.compare end to end on a tiny copy of the project: arms x seeds as DVC
experiments, a failing arm (at run time and at validation) that does not stop the sweep,
and the three outputs."""

import json
import shutil
import subprocess

import pytest
import yaml
from test_pipeline import BIN, TINY, run

pytestmark = pytest.mark.pipeline


@pytest.fixture
def compare_project(dvc_project, tmp_path):
    """A committed copy of the session's tiny project (fresh tiny params, data stages done)."""
    src, _ = dvc_project
    proj = tmp_path / "cmp"
    shutil.copytree(src, proj, symlinks=True)
    from conftest import ROOT

    from cvfp.params import set_dotted

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for k, v in TINY.items():
        set_dotted(raw, k, v)
    # Two arms that fail: one at run time (distribution diversity cannot be split into
    # chunks: phase1 raises), one at validation (a negative learning rate).
    raw["compare"]["arms"]["broken"] = {
        "phase1.diversity.kind": "distribution",
        "phase1.chunk_tokens": 7,
    }
    raw["compare"]["arms"]["invalid"] = {"phase1.lr": -1.0}
    (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for cmd in (
        ["git", "config", "user.email", "t@example.com"],
        ["git", "config", "user.name", "t"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "tiny"],
    ):
        run(cmd, proj)
    return proj


def test_compare_two_arms_two_seeds_with_failing_arms(
    compare_project, monkeypatch, prefect_harness
):
    from flows.compare import compare

    proj = compare_project
    monkeypatch.chdir(proj)
    monkeypatch.setenv("PATH", f"{BIN}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", "")  # stages import the copy's own code
    summary = compare("params.yaml", ["broken", "none", "cvfp", "invalid"], 2, {"phase2.epochs": 1})

    for out in ("reports/compare.html", "reports/compare.md", "metrics/compare.json"):
        assert (proj / out).exists(), out
    data = json.loads((proj / "metrics/compare.json").read_text())
    assert data == json.loads(json.dumps(summary))
    assert data["control"] == "none" and data["seeds"] == [42, 7]
    for arm in ("none", "cvfp", "broken", "invalid"):
        for key in ("val_ppl_mean", "val_ppl_std", "seeds", "phase1_steps", "verdict"):
            assert key in data["arms"][arm], (arm, key)
    none, cvfp = data["arms"]["none"], data["arms"]["cvfp"]
    assert none["seeds"] == [42, 7] and cvfp["seeds"] == [42, 7]
    assert none["phase1_steps"] == [0, 0] and cvfp["phase1_steps"] == [1, 1]
    assert none["val_ppl_mean"] > 1 and none["val_ppl_std"] >= 0
    assert (
        cvfp["verdict"].startswith("cvfp vs none: ") and "(paired over 2 seeds)" in cvfp["verdict"]
    )
    assert cvfp["verdict"].rsplit(": ", 1)[1] in ("better", "worse", "no measurable effect")
    tr = data["baselines"]["transformer"]
    assert tr["source_arm"] == "none" and tr["seeds"] == [42, 7]  # only the control trains it
    assert cvfp["per_seed"]["42"]["transformer_val_ppl"] is None and cvfp["vs_transformer"][
        "seeds"
    ] == ["42", "7"]
    # The failing arms: reported with their errors, every other experiment ran.
    failed = {(f["arm"], f["seed"]): f["error"] for f in data["failed"]}
    assert set(failed) == {("broken", 42), ("broken", 7), ("invalid", 42), ("invalid", 7)}
    assert "cannot be split into chunks" in failed[("broken", 42)]
    assert "phase1.lr = -1.0" in failed[("invalid", 7)]
    assert data["arms"]["broken"]["seeds"] == [] and data["arms"]["broken"]["failed_seeds"] == [
        42,
        7,
    ]
    md = (proj / "reports/compare.md").read_text()
    assert cvfp["verdict"] in md and "cmp-broken-s42" in md
    # The experiments are DVC experiments; the workspace keeps its params.
    names = run([str(BIN / "dvc"), "exp", "list", "--name-only"], proj).split()
    assert {"cmp-none-s42", "cmp-none-s7", "cmp-cvfp-s42", "cmp-cvfp-s7"} <= set(names)
    assert not any(n.startswith("cmp-broken") or n.startswith("cmp-invalid") for n in names)
    assert (
        subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "params.yaml"], cwd=proj).returncode
        == 0
    )
