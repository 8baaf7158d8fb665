"""Checkpoints that carry the params they were trained with, the writer a trainer is handed
(`Checkpointer`), and loading that names the file on any mismatch.

A checkpoint holds only tensors and plain values (dict, list, str, int, float, bool, None),
and is always read with `torch.load(weights_only=True)`: a `.pt` from `--checkpoint` or a
shared DVC remote cannot run code when loaded (a pickle that asks for anything else is
refused, naming the file)."""

from __future__ import annotations

import errno
import io
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cvfp.runtime.utils import atomic_path


class CheckpointError(ValueError):
    pass


def plain(obj: Any, where: str = "checkpoint") -> Any:
    """`obj` with numpy scalars/arrays turned into Python values/tensors; anything else that
    is not a tensor or plain value raises TypeError (it would not load with weights_only)."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, OrderedDict):  # a state_dict
        return OrderedDict((k, plain(v, f"{where}.{k}")) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(
        f"{where}: a {type(obj).__name__} cannot go into a checkpoint (only tensors and "
        f"plain values load with weights_only=True)"
    )


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def require_space(path: str | Path, state_or_model: Any, copies: int = 1) -> None:
    """DiskSpaceError naming `path`, the space needed and free, when `copies` checkpoints of
    this size (a model or a state dict) do not fit: checked before training writes any, so a
    full disk fails at once instead of after an epoch inside torch.save."""
    import shutil

    from cvfp.core.contexts import DiskSpaceError

    state = state_or_model.state_dict() if isinstance(state_or_model, nn.Module) else state_or_model
    need = copies * (_tensor_bytes(state) + 2**20)  # + pickled params and zip headers
    where = Path(path).parent
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < need:
        raise DiskSpaceError(
            errno.ENOSPC,
            f"not enough disk space for {path}: needs {need / 2**20:.1f} MiB "
            f"({copies} checkpoint(s)), {free / 2**20:.1f} MiB free; free some space "
            f"(or move the cache)",
        )


def save_checkpoint(
    path: str | Path, model: nn.Module, params: dict[str, Any], **extra: Any
) -> None:
    state = plain({"state_dict": model.state_dict(), "params": params, **extra})
    require_space(path, state)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


@dataclass
class Checkpointer:
    """Writes a trainer's best-so-far model to `path`, with the params it was trained with and
    the plain values in `extra` (e.g. the vocabulary size). The stage makes one and hands it to
    the trainer (only on the process that writes), which calls `save` at each new best."""

    path: Path
    params: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, model: nn.Module, **extra: Any) -> None:
        save_checkpoint(self.path, model, self.params, **self.extra, **extra)


def load_torch(source: str | Path | bytes, name: str | Path | None = None) -> Any:
    """`torch.load(weights_only=True)` of a path or bytes; any failure is a CheckpointError
    naming the file (`name` for bytes) and what to do."""
    name = name if name is not None else source if not isinstance(source, bytes) else "<bytes>"
    if not isinstance(source, bytes) and not Path(source).exists():
        raise CheckpointError(
            f"checkpoint not found: {name} (run the stage that writes it first, e.g. `dvc repro`)"
        )
    try:
        f = io.BytesIO(source) if isinstance(source, bytes) else source
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as err:
        if "weights only load failed" not in str(err).lower():
            raise CheckpointError(
                f"cannot read checkpoint {name} ({type(err).__name__}: {str(err)[:200]}); it is "
                f"truncated or not a torch file: rerun the stage that writes it "
                f"(`dvc repro -f -s <stage>`) or restore it (`dvc checkout --force <stage>`)"
            ) from None
        raise CheckpointError(
            f"{name} is not a safe checkpoint: it asks to run code or build objects other than "
            f"tensors and plain values, and was not loaded ({_reason(err)}). "
            f"Use a checkpoint written by this project's stages (`dvc repro` or `dvc pull`)"
        ) from None


def read_checkpoint(path: str | Path | bytes, name: str | Path | None = None) -> dict[str, Any]:
    """A checkpoint's dict (state_dict, params, ...), loaded without running code."""
    name = name if name is not None else path if not isinstance(path, bytes) else "<bytes>"
    state = load_torch(path, name)
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        got = type(state).__name__ if not isinstance(state, dict) else f"keys {sorted(state)[:10]}"
        raise CheckpointError(
            f"{name} is a torch file but not a checkpoint of this project (got {got}, expected "
            f"a dict with 'state_dict' and 'params'); pass a model.pt written by phase1 or phase2"
        )
    return state


def load_state(
    path: str | Path, model: nn.Module, state: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Load a checkpoint into `model` (strict); a missing, extra or differently shaped tensor
    is a CheckpointError naming the file and, from torch, the keys and both shapes."""
    state = state if state is not None else read_checkpoint(path)
    try:
        model.load_state_dict(state["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint {path} does not match the current params: {err}"
        ) from None
    return state


def _reason(err: BaseException) -> str:
    """The line of torch's weights_only refusal that names what the pickle asked for."""
    lines = [x.strip() for x in str(err).splitlines() if x.strip()]
    named = [x for x in lines if "GLOBAL" in x or "Unsupported" in x or "not an allowed" in x]
    return (named or lines or ["refused"])[0][:200]
