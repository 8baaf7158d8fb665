"""Nothing runs that was not asked for: checkpoints load without unpickling code, other
torch files are named, an unusable option is named (issue 23 item 1)."""

import os
from pathlib import Path

import pytest
import torch

from helpers import ROOT

# ---------------------------------------------------------------- item 1: safe loading


class _Evil:
    """Unpickling this runs `touch <marker>` (what a hostile .pt on a shared remote does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_checkpoint(tmp_path: Path, name: str = "evil.pt") -> tuple[Path, Path]:
    from cvfp.core.model import CVFPModel
    from cvfp.params import load_params

    marker = tmp_path / "pwned"
    p = load_params(ROOT / "params.yaml")
    model = CVFPModel.from_params(p.model.model_copy(update={"layer_structure": [1]}), 300)
    path = tmp_path / name
    torch.save({"state_dict": model.state_dict(), "params": _Evil(marker)}, path)
    return path, marker


def test_a_malicious_checkpoint_runs_nothing_and_is_named(tmp_path):
    import pickle

    from cvfp.analysis.generate import load_model
    from cvfp.core.checkpoint import CheckpointError, read_checkpoint
    from cvfp.materialize.cstar import _shard_model
    from cvfp.params import load_params

    path, marker = _evil_checkpoint(tmp_path)
    with pytest.raises(pickle.UnpicklingError):  # the hostile pickle is real: torch refuses it
        torch.load(path, weights_only=True)
    p = load_params(ROOT / "params.yaml")
    for load in (
        lambda: read_checkpoint(path),
        lambda: load_model(path, 300),  # tasks.generate --checkpoint
        lambda: _shard_model(path, p.model, 300, 0.99),  # materialize
    ):
        with pytest.raises(CheckpointError, match=rf"{path} is not a safe checkpoint"):
            load()
        assert not marker.exists()


def test_checkpoints_are_plain_and_other_torch_files_are_named(tmp_path, tiny_params):
    import numpy as np

    from cvfp.core.checkpoint import CheckpointError, plain, read_checkpoint, save_checkpoint
    from cvfp.core.model import CVFPModel

    model = CVFPModel.from_params(tiny_params.model, 300)
    save_checkpoint(
        tmp_path / "m.pt",
        model,
        tiny_params.model_dump(),
        history={"train": [{"loss": np.float32(1.5), "step": np.int64(3)}]},
    )
    state = read_checkpoint(tmp_path / "m.pt")  # weights_only
    assert state["history"]["train"][0] == {"loss": 1.5, "step": 3}
    assert state["params"] == tiny_params.model_dump()
    with pytest.raises(TypeError, match=r"checkpoint\.x: a PosixPath cannot go into a checkpoint"):
        plain({"x": tmp_path})
    torch.save(7, tmp_path / "int.pt")
    with pytest.raises(CheckpointError, match=r"int\.pt is a torch file but not a checkpoint"):
        read_checkpoint(tmp_path / "int.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*cut\.pt.*truncated"):
        read_checkpoint(tmp_path / "cut.pt")


def test_a_tiny_temperature_names_the_option(tiny_params):
    from cvfp.analysis.generate import generate
    from cvfp.core.model import CVFPModel

    torch.manual_seed(0)
    model = CVFPModel.from_params(tiny_params.model, 50)
    with torch.no_grad():  # the output head starts at zero: give it real logits
        for w in model.parameters():
            w.normal_()
    assert len(generate(model, [1, 2], 3, temperature=1e-40, seed=0)) == 3  # float64: fine
    with pytest.raises(ValueError, match=r"temperature=1e-320 is too small.*--temperature"):
        generate(model, [1, 2], 3, temperature=1e-320, seed=0)
