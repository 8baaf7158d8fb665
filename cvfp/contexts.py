"""Phase 1 contexts [N, Dc] in a `.npy` file, read and written a row range at a time.

Every access maps the file, copies the rows and unmaps again, so a pass over the file
keeps only a chunk of it in the process (a long-lived map would count every touched page
in the process's RSS, growing with N). The pages stay in the OS page cache, so on one
machine this costs little more than memory, and several processes (torchrun ranks) see
each other's writes through the same file.

`ContextTensor` is the same interface over a tensor, for small corpora and tests.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import torch


class DiskSpaceError(OSError):
    """Not enough free disk for a memory-mapped file; raised before anything is written."""


def reserve_npy(path: Path, shape: tuple[int, int]) -> None:
    """Create a float32 .npy of `shape` with its blocks allocated. A sparse memmap on a full
    disk dies with SIGBUS at the first write of a missing block; this fails first, saying how
    much is needed, and removes the file."""
    need = int(np.prod(shape)) * 4 + 128
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise DiskSpaceError(
            errno.ENOSPC,
            f"not enough disk space for {path}: needs {need / 2**20:.1f} MiB, "
            f"{free / 2**20:.1f} MiB free; free some space (or move the cache)",
        )
    np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    try:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            path.unlink(missing_ok=True)
            raise DiskSpaceError(
                errno.ENOSPC,
                f"not enough disk space for {path}: needs "
                f"{need / 2**20:.1f} MiB; free some space (or move the cache)",
            ) from None
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # fs without fallocate
            raise


class ContextFile:
    def __init__(self, path: str | Path, shape: tuple[int, int], create: bool = False):
        self.path, self.shape = Path(path), (int(shape[0]), int(shape[1]))
        if create:
            reserve_npy(self.path, self.shape)

    def _map(self, mode: Literal["r", "r+", "c"]) -> np.ndarray:
        return np.load(self.path, mmap_mode=mode)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        m = self._map("r")
        rows = np.array(m[index], dtype=np.float32)  # a copy: the map closes below
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
