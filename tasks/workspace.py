"""One runner per workspace (the lock), a one-off run's scratch workspace, and a stage that
ends with the `dvc repro` that started it."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import ParamSpec, TypeVar

from .layout import STAGE_IO, TIMING

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("cvfp")
SCRATCH_RUNS = Path("scratch")  # where a one-off `-S` run of a tracked stage writes


@contextlib.contextmanager
def scratch_workspace(stage: str, where: Path):
    """Run in `where`: a mirror of this workspace (symlinks) in which the stage's outputs
    (and its timing file) are real paths of their own, so the tracked ones stay untouched."""
    root = Path.cwd()
    own = [root / p for p in STAGE_IO[stage].outs] + [root / TIMING]
    where = root / where
    if where.exists():
        import shutil

        shutil.rmtree(where)

    def mirror(src: Path, dst: Path) -> None:
        dst.mkdir(parents=True, exist_ok=True)
        for entry in src.iterdir():
            if entry == root / SCRATCH_RUNS or entry in own:
                continue
            if any(o.is_relative_to(entry) for o in own) and entry.is_dir():
                mirror(entry, dst / entry.name)
            else:
                (dst / entry.name).symlink_to(entry)

    mirror(root, where)
    os.chdir(where)
    try:
        yield where
    finally:
        os.chdir(root)


# ---------------------------------------------------------------- one runner per workspace
# flows.pipeline, flows.compare, `python -m tasks.<stage>` and the stages `dvc repro` runs
# take this lock (a flock, so a dead holder never blocks); the flow also holds DVC's own lock
# for its whole run (flows/dvc_state.hold_dvc_lock), so `dvc repro` is refused by DVC before
# it deletes anything. Workspaces without .dvc (tests, library use) are not locked.

WORKSPACE_LOCK = Path(".dvc/tmp/cvfp-workspace.lock")
# The holder's pid, in its environment: a process it starts (flows.compare's `dvc repro` of
# the report stage) runs under its lock instead of being refused.
LOCK_HOLDER_ENV = "CVFP_WORKSPACE_LOCK_HOLDER"
_LOCK_STATE = {"depth": 0, "fd": -1}
_LOCK_MUTEX = threading.Lock()


class WorkspaceBusyError(RuntimeError):
    """Another runner (flow, dvc repro stage, comparison) is using this workspace."""


def lock_holder(path: Path = WORKSPACE_LOCK) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def busy_message(what: str, holder: dict, path: Path = WORKSPACE_LOCK) -> str:
    who = (
        f"pid {holder.get('pid', '?')} ({holder.get('command', '?')}, since "
        f"{holder.get('started', '?')})"
        if holder
        else "another process"
    )
    return (
        f"{what} refused: this workspace is in use by {who}. One runner at a time "
        f"(flows.pipeline, dvc repro, flows.compare, python -m tasks.<stage> share {path}): "
        f"wait for it to finish, or stop it (kill {holder.get('pid', '<pid>')})"
    )


@contextlib.contextmanager
def workspace_lock(what: str):
    """Hold the workspace lock (re-entrant within this process: the flow's stages run in it);
    WorkspaceBusyError naming the holder's pid and command if another process has it."""
    import fcntl
    import sys
    from datetime import datetime

    with _LOCK_MUTEX:
        if not Path(".dvc").is_dir():
            mode = "none"
        elif _LOCK_STATE["depth"] > 0:  # this process holds it (the flow running a stage)
            mode = "nested"
            _LOCK_STATE["depth"] += 1
        else:
            mode = "owner"
            WORKSPACE_LOCK.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(WORKSPACE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = lock_holder()
                if str(holder.get("pid")) == os.environ.get(LOCK_HOLDER_ENV):
                    mode = "none"  # started by the holder (flows.compare's report refresh)
                else:
                    raise WorkspaceBusyError(busy_message(what, holder)) from None
        if mode == "owner":
            os.ftruncate(fd, 0)
            me = {
                "pid": os.getpid(),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
                "what": what,
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            os.write(fd, json.dumps(me).encode())
            _LOCK_STATE.update(depth=1, fd=fd)
            os.environ[LOCK_HOLDER_ENV] = str(os.getpid())  # inherited by its children only
    try:
        yield
    finally:
        with _LOCK_MUTEX:
            if mode == "nested":
                _LOCK_STATE["depth"] -= 1
            elif mode == "owner":
                fd = _LOCK_STATE["fd"]
                _LOCK_STATE.update(depth=0, fd=-1)
                os.environ.pop(LOCK_HOLDER_ENV, None)
                os.ftruncate(fd, 0)
                os.close(fd)  # releases the flock


def holds_workspace(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: the function runs holding the workspace lock (flows.compare's flow)."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*a: P.args, **kw: P.kwargs) -> R:
            with workspace_lock(what):
                return fn(*a, **kw)

        return inner

    return wrap


def exit_with_parent() -> None:
    """A stage that `dvc repro` started ends when dvc is killed (SIGTERM/SIGKILL), instead of
    running on re-parented to PID 1 beside a new `dvc repro`: Linux's parent-death signal,
    and a thread watching the parent (and dvc above a `sh -c`) for other cases."""
    import signal

    chain = _ancestors()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        import time

        from cvfp.runtime.utils import pid_alive

        while True:
            if os.getppid() != chain[0] or not all(pid_alive(p) for p in chain):
                log.error("the process that started this stage (%s) is gone: stopping", chain)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _ancestors() -> list[int]:
    """The parent, and its parents while they are shells (dvc runs `$SHELL -c cmd`)."""
    chain = [os.getppid()]
    while True:
        try:
            stat = Path(f"/proc/{chain[-1]}/stat").read_text()
        except OSError:
            return chain
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        if comm not in ("sh", "bash", "dash", "zsh", "fish", "ksh"):
            return chain
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent <= 1:
            return chain
        chain.append(parent)
