"""Phase 1 contexts [N, Dc] in a `.npy` file, read and written a row range at a time.

Every access maps the file, copies the rows and unmaps again, so a pass over the file
keeps only a chunk of it in the process (a long-lived map would count every touched page
in the process's RSS, growing with N). The pages stay in the OS page cache, so on one
machine this costs little more than memory, and several processes (torchrun ranks) see
each other's writes through the same file.

`ContextTensor` is the same interface over a tensor, for small corpora and tests.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class ContextFile:
    def __init__(self, path: str | Path, shape: tuple[int, int], create: bool = False):
        self.path, self.shape = Path(path), tuple(shape)
        if create:
            np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32, shape=self.shape)

    def _map(self, mode: str) -> np.ndarray:
        return np.load(self.path, mmap_mode=mode)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        m = self._map("r")
        rows = np.array(m[index], dtype=np.float32)      # a copy: the map closes below
        del m
        return torch.from_numpy(rows)

    def __setitem__(self, index: slice, value: torch.Tensor) -> None:
        m = self._map("r+")
        m[index] = value.detach().cpu().numpy()
        del m

    def tensor(self) -> torch.Tensor:
        """All rows as a tensor backed by a copy-on-write map (pages read when used)."""
        return torch.from_numpy(self._map("c"))


class ContextTensor:
    def __init__(self, shape: tuple[int, int]):
        self.data = torch.empty(shape)
        self.shape = tuple(shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        return self.data[index]

    def __setitem__(self, index, value: torch.Tensor) -> None:
        self.data[index] = value.detach().cpu()

    def tensor(self) -> torch.Tensor:
        return self.data
