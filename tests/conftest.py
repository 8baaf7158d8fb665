import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tasks.env import set_env_defaults  # noqa: E402

set_env_defaults()


def write_params(tmp_path, mutate):
    """A copy of the project's params.yaml, changed by `mutate(raw_dict)`; returns its path."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def tiny_params():
    """The project's params.yaml with a tiny model (2 blocks, dim 16)."""
    from cvfp.params import load_params

    return load_params(
        ROOT / "params.yaml",
        {
            "model.context_dim": 16,
            "model.embed_dim": 16,
            "model.hidden_dim": 32,
            "model.layer_structure": [1, 1],
            "phase2.block_weights": [0.5, 1.0],
            "phase1.progress": False,
        },
    )


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (starting one costs ~15-20 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def dvc_project(tmp_path_factory):
    """A tiny copy of the project after a full `dvc repro`: (path, stages that ran).
    test_pipeline changes it in order; others copy what they need (test_distributed)."""
    from test_pipeline import make_project, repro

    proj = make_project(tmp_path_factory.mktemp("dvc") / "proj")
    ran = repro(proj)
    return proj, ran
