"""tasks/layout.py (the paths the code uses) and dvc.yaml (what DVC tracks) say the same."""

from pathlib import Path

import pytest
import yaml

from helpers import ROOT
from tasks.layout import COMPARE_JSON, PARAMS, STAGE_IO, stage_names

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _paths(items) -> set[Path]:
    """Paths of a dvc.yaml list whose entries are `path` or `{path: {options}}`."""
    return {Path(k) for item in items or [] for k in ([item] if isinstance(item, str) else item)}


def test_stage_names_are_dvc_yamls_in_order():
    assert stage_names() == tuple(DVC) == tuple(STAGE_IO)
    assert all(DVC[s]["cmd"] == f"python -m tasks.{s}" for s in DVC)  # what the flow runs


@pytest.mark.parametrize("stage", list(DVC))
def test_stage_files_equal_dvc_yaml(stage):
    spec = DVC[stage]
    data_deps = {d for d in _paths(spec.get("deps")) if d.suffix != ".py" and d.parts[0] != "cvfp"}
    outs = _paths(spec.get("outs")) | _paths(spec.get("metrics")) | _paths(spec.get("plots"))
    assert data_deps == set(STAGE_IO[stage].deps), f"{stage}: deps differ from tasks/layout.py"
    assert outs == set(STAGE_IO[stage].outs), f"{stage}: outs differ from tasks/layout.py"


def test_every_dep_comes_from_an_earlier_stage():
    # The flow runs the stages in dvc.yaml's order: each must find its inputs made.
    made: list[Path] = []
    for stage, io in STAGE_IO.items():
        for dep in io.deps:
            # params.yaml and metrics/compare.json are git-tracked inputs, not stage outputs
            assert dep in (PARAMS, COMPARE_JSON) or any(
                dep == o or o in dep.parents for o in made
            ), (stage, dep)
        made += io.outs


def test_stage_names_fail_clearly_without_dvc_yaml(tmp_path):
    with pytest.raises(RuntimeError, match=r"cannot read the stages from .*dvc\.yaml"):
        stage_names(tmp_path / "dvc.yaml")
