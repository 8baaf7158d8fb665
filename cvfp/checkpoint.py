"""Checkpoints that carry the params they were trained with, and shape-checked loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .utils import atomic_path


class CheckpointError(ValueError):
    pass


def save_checkpoint(
    path: str | Path, model: nn.Module, params: dict[str, Any], **extra: Any
) -> None:
    state = {"state_dict": model.state_dict(), "params": params, **extra}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint not found: {path} (run the stage that writes it first, e.g. `dvc repro`)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # corrupt or not a torch file
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None


def load_state(
    path: str | Path, model: nn.Module, state: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Load a checkpoint into `model`; any shape disagreement names the file and both shapes."""
    state = state if state is not None else read_checkpoint(path)
    saved = state["state_dict"]
    expected = model.state_dict()
    problems = []
    for key, tensor in expected.items():
        if key not in saved:
            problems.append(f"{key}: missing in checkpoint (params expect {tuple(tensor.shape)})")
        elif tuple(saved[key].shape) != tuple(tensor.shape):
            problems.append(
                f"{key}: checkpoint has shape {tuple(saved[key].shape)}, "
                f"current params expect {tuple(tensor.shape)}"
            )
    problems += [
        f"{k}: in checkpoint but not in the model built from params"
        for k in saved
        if k not in expected
    ]
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not match the current params:\n  " + "\n  ".join(problems[:10])
        )
    model.load_state_dict(saved)
    return state
