"""What several test modules share (issue 25 item 6): no test module imports another, nor
conftest.py (tests/test_suite_layout.py checks it). Paths and the tiny params here; by topic:
`helpers.project` (copies of the project, dvc and git), `helpers.prefect` (a real server),
`helpers.phase1`, `helpers.phase2`, `helpers.data`, `helpers.report` (tiny inputs of those
stages), `helpers.outputs` (what a failed stage left behind), `helpers.jobs` (the session's
background jobs, started by conftest.py)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# The tiny model every test uses (2 blocks of 1 layer, dim 16).
TINY_MODEL = {
    "model.context_dim": 16,
    "model.embed_dim": 16,
    "model.hidden_dim": 32,
    "model.layer_structure": [1, 1],
    "phase2.block_weights": [0.5, 1.0],
    "phase1.progress": False,
}


def write_params(tmp_path, mutate):
    """A copy of the project's params.yaml, changed by `mutate(raw_dict)`; returns its path."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
