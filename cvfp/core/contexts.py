"""Phase 1 contexts [N, Dc] in a `.npy` file, read and written a row range at a time.

Every access maps the file, copies the rows and unmaps again, so a pass over the file
keeps only a chunk of it in the process (a long-lived map would count every touched page
in the process's RSS, growing with N). The pages stay in the OS page cache, so on one
machine this costs little more than memory, and several processes (torchrun ranks) see
each other's writes through the same file.

A `ContextFile` keeps its file open, so it stays readable after the file is unlinked (the
disk space is freed when the last holder closes it, or the process dies). `scratch_dir`
makes the directory such files live in and removes it on exit, on an exception and on
SIGTERM (`sigterm_raises`), so a stopped run leaves no work files behind.

`ContextTensor` is the same interface over a tensor, for small corpora and tests.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    from cvfp.runtime.distributed import World


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
    """Rows of a float32 [N, Dc] `.npy`, read and written through an open file descriptor:
    every access maps the file, copies the rows and unmaps again."""

    def __init__(
        self,
        path: str | Path,
        shape: tuple[int, int],
        create: bool = False,
        readonly: bool = False,
    ):
        self.path, self.shape = Path(path), (int(shape[0]), int(shape[1]))
        if create:
            reserve_npy(self.path, self.shape)
        # readonly: a file DVC may have linked read-only from its cache (C*)
        self._file = open(self.path, "rb" if readonly else "r+b")  # noqa: SIM115
        fmt = np.lib.format
        read = (
            fmt.read_array_header_1_0
            if fmt.read_magic(self._file) == (1, 0)
            else fmt.read_array_header_2_0
        )
        found, _, dtype = read(self._file)  # (shape, fortran order, dtype)
        if tuple(found) != self.shape or dtype != np.float32:
            self._file.close()
            raise ValueError(f"{self.path}: expected float32 {self.shape}, found {dtype} {found}")
        self._offset = self._file.tell()

    def _map(self, mode: Literal["r", "r+", "c"]) -> np.ndarray:
        return np.memmap(
            self._file, dtype=np.float32, mode=mode, offset=self._offset, shape=self.shape
        )

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice) and index.step in (None, 1):  # rows a:b: one pread
            a, b, _ = index.indices(self.shape[0])
            return torch.from_numpy(self.read_rows(a, max(b - a, 0)))
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        m = self._map("r")
        rows = np.array(m[index], dtype=np.float32)  # a copy: the map closes below
        del m
        return torch.from_numpy(rows)

    def __setitem__(self, index, value: torch.Tensor | np.ndarray) -> None:
        if isinstance(index, slice) and index.step in (None, 1):  # rows a:b: one pwrite
            a, b, _ = index.indices(self.shape[0])
            data = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
            data = np.ascontiguousarray(data, dtype=np.float32)
            if data.shape != (b - a, self.shape[1]):
                raise ValueError(f"{self.path}: rows {a}:{b} given {data.shape}")
            self.write_rows(a, data)
            return
        m = self._map("r+")
        m[index] = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        del m

    def read_rows(self, start: int, count: int) -> np.ndarray:
        """Rows start:start+count with pread. A map, even closed right after, raises the
        peak RSS by every page (or large page-cache folio, up to 2 MB) it touched."""
        out = np.empty((count, self.shape[1]), dtype=np.float32)
        view = out.data.cast("B")
        at = self._offset + start * self.shape[1] * 4
        while view.nbytes:
            done = os.preadv(self._file.fileno(), [view], at)
            if done == 0:
                raise EOFError(f"{self.path}: rows {start}:{start + count} past the end")
            view, at = view[done:], at + done
        return out

    def write_rows(self, start: int, rows: np.ndarray) -> None:
        """Rows start:start+len(rows) with pwrite: through the page cache, never mapped into
        this process (a mapped write counts every page it touches in the RSS)."""
        view = memoryview(np.ascontiguousarray(rows, dtype=np.float32).tobytes())
        at = self._offset + start * self.shape[1] * 4
        while view.nbytes:
            done = os.pwrite(self._file.fileno(), view, at)
            view, at = view[done:], at + done

    def tensor(self) -> torch.Tensor:
        """All rows as a tensor backed by a copy-on-write map (pages read when used; every
        page touched counts in the process's RSS while the tensor lives: prefer row ranges)."""
        return torch.from_numpy(self._map("c"))

    def close(self) -> None:
        self._file.close()

    def __del__(self) -> None:
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()


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


def rows_of(store: ContextFile | ContextTensor) -> ContextFile | torch.Tensor:
    """What a finished pass hands on: the file itself (read a row range at a time, even after
    its directory is gone) or the in-memory tensor."""
    return store.data if isinstance(store, ContextTensor) else store


class Terminated(SystemExit):
    """SIGTERM arrived (raised by `sigterm_raises`): unwinds like any exception, so the
    `finally` blocks and context managers on the way clean up; exit status 143."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` in the main thread (other threads: no-op,
    Python delivers signals to the main thread only). The previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise Terminated(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def scratch_dir(work_dir: str | Path, prefix: str) -> Iterator[Path]:
    """A fresh directory under `work_dir`, removed on exit, on an exception and on SIGTERM."""
    with sigterm_raises():
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=work_dir))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def row_store(shape: tuple[int, int], work_dir: str | Path | None, prefix: str = "rows-"):
    """A [N, Dc] row store: a `ContextFile` in a scratch directory under `work_dir`, removed
    on exit (and on SIGTERM), or a `ContextTensor` when `work_dir` is None."""
    if work_dir is None:
        yield ContextTensor(shape)
        return
    with scratch_dir(work_dir, prefix) as d:
        store = ContextFile(d / "rows.npy", shape, create=True)
        try:
            yield store
        finally:
            store.close()


class context_stores:
    """Two [N, Dc] row stores: files in a fresh directory under work_dir (shared by all
    ranks: rank 0 names it), removed on exit, on an exception and on SIGTERM; or tensors
    when work_dir is None. The files are unlinked at exit, but a `ContextFile` keeps its
    file open, so `result.contexts` stays readable (the space is freed with it)."""

    def __init__(self, shape: tuple[int, int], work_dir, world: World, name: str):
        self.shape, self.work_dir, self.world, self.name = shape, work_dir, world, name
        self.dir: Path | None = None
        self.signals = sigterm_raises()

    def __enter__(self):
        if self.work_dir is None:
            return ContextTensor(self.shape), ContextTensor(self.shape)
        self.signals.__enter__()
        made = None
        if self.world.is_main:
            Path(self.work_dir).mkdir(parents=True, exist_ok=True)
            # the pid tells a later run whether the writer is gone (tasks.stage.clean_leftovers)
            made = tempfile.mkdtemp(prefix=f"{self.name}-{os.getpid()}-", dir=self.work_dir)
        self.dir = Path(self.world.broadcast_object(made))
        stores = [None, None]
        if self.world.is_main:
            try:
                stores = [
                    ContextFile(self.dir / f"contexts_{k}.npy", self.shape, create=True)
                    for k in "ab"
                ]
            except BaseException:  # disk full (DiskSpaceError): no empty scratch left behind
                shutil.rmtree(self.dir, ignore_errors=True)
                raise
        self.world.barrier()
        if not self.world.is_main:
            stores = [ContextFile(self.dir / f"contexts_{k}.npy", self.shape) for k in "ab"]
        return tuple(stores)

    def __exit__(self, exc_type, *exc):
        if self.dir is not None:
            try:
                if exc_type is None:
                    self.world.barrier()  # no rank still reads the files
            finally:
                if self.world.is_main:
                    shutil.rmtree(self.dir, ignore_errors=True)
                self.signals.__exit__(exc_type, *exc)
        return False
