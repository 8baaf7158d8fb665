"""Small shared helpers: seeding, atomic outputs, hub reachability, progress bars."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

HUB_HOST = ("huggingface.co", 443)

# torch's intra-op thread count belongs to each OS thread once set (it is OpenMP's per-thread
# setting), and a thread that has not used torch yet starts from the last value set anywhere.
# Float results depend on it, so a stage must not inherit whatever an earlier task left on its
# (pool) thread: seed_everything sets every stage's thread to the stage's count
# (runtime.threads, else this process default), and one_intraop_thread returns its thread to it.
# torch is imported on first use, not with this module: the stages that never touch a tensor
# (download, tokenize, split, report) start ~1.5 s of CPU faster without it.
_STAGE_THREADS = threading.local()  # .n: the count the stage running on this thread asked for


def __getattr__(name: str) -> Any:
    if name == "DEFAULT_THREADS":  # the process default, read once (before anyone sets it)
        import torch

        value = globals()["DEFAULT_THREADS"] = torch.get_num_threads()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _default_threads() -> int:
    return sys.modules[__name__].DEFAULT_THREADS


def set_deterministic(mode: bool) -> None:
    """torch.use_deterministic_algorithms(mode), without its import of torch._inductor (the
    compiler, never used here) only to set a flag of it: that import doubled the CPU time of
    `import torch` in every training stage (1.6 s -> 3.1-3.6 s measured). The public call
    runs when the compiler is already loaded (its flag must then follow) or torch lacks the
    private setter."""
    import torch

    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=False)
    else:
        setter(mode, warn_only=False)


def adam(params, **kwargs):
    """torch.optim.Adam(params, **kwargs) that leaves torch._dynamo unimported: the same
    optimizer and the same numbers, ~1.2 s less CPU per training process (and ~0.4 s less at
    its exit). This project never uses torch.compile. torch wraps Optimizer.add_param_group,
    zero_grad, state_dict and load_state_dict in torch._disable_dynamo, which imports
    torch._dynamo on the first call only to wrap the method in torch._dynamo.disable, a no-op
    for code dynamo is not tracing: the wrappers' cache (`__dynamo_disable`) is pre-set here
    to the plain method. Adam.step's wrapper imports it to call torch._dynamo.graph_break(),
    also a no-op outside tracing: this optimizer's `step` is torch's own step hook wrapper
    (profiler label, step hooks) around what that wrapper does (grad mode set to
    `differentiable` around Adam.step). Once torch._dynamo is loaded anyway, or when torch's
    wrappers are not the ones described (another torch version), torch's path is used."""
    import functools
    import types

    import torch
    from torch.optim import Optimizer
    from torch.optim import optimizer as optim_module

    eager = "torch._dynamo" not in sys.modules
    wrap = getattr(torch._compile, "_disable_dynamo", None)
    if eager and wrap is not None:
        code = wrap(lambda: None).__code__
        for fn in vars(Optimizer).values():
            if getattr(fn, "__code__", None) is code and hasattr(fn, "__wrapped__"):
                if getattr(fn.__wrapped__, "__dynamo_disable", None) is None:
                    setattr(fn.__wrapped__, "__dynamo_disable", fn.__wrapped__)
    opt = torch.optim.Adam(params, **kwargs)
    grad_wrap = getattr(optim_module, "_use_grad_for_differentiable", None)
    hooked = type(opt).step  # Optimizer.profile_hook_step(_use_grad(Adam.step))
    use_grad = getattr(hooked, "__wrapped__", None)
    raw = getattr(use_grad, "__wrapped__", None)
    if eager and grad_wrap is not None and raw is not None and "torch._dynamo" not in sys.modules:
        if getattr(use_grad, "__code__", None) is grad_wrap(lambda: None).__code__:

            @functools.wraps(raw)
            def step(self, *args, **kw):
                before = torch.is_grad_enabled()
                try:
                    torch.set_grad_enabled(self.defaults["differentiable"])
                    return raw(self, *args, **kw)
                finally:
                    torch.set_grad_enabled(before)

            opt.step = types.MethodType(Optimizer.profile_hook_step(step), opt)  # type: ignore[method-assign]
    return opt


def seed_everything(seed: int, deterministic: bool = True, threads: int | None = None) -> None:
    """Seed Python, NumPy and torch, set this thread's torch thread count to `threads`
    (params.runtime.threads; None: the process default); with `deterministic`, force
    deterministic kernels."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    _STAGE_THREADS.n = threads or _default_threads()
    torch.set_num_threads(_STAGE_THREADS.n)  # this thread's count: see DEFAULT_THREADS
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_deterministic(deterministic)


# A check before an output is replaced: (final path, new output) -> None, raising to refuse
# (a stage passes tasks.outputs.StageOutputs.before_replace).
BeforeReplace = Callable[[Path, Path], None]


ASIDE = "old"  # inside a temporary sibling: the previous output, while the new one moves in


@contextlib.contextmanager
def atomic_path(final: str | Path, before_replace: BeforeReplace | None = None) -> Iterator[Path]:
    """Yield a temporary sibling path; on success put it in place of `final` (file or directory).
    `before_replace(final, new)` runs first and can refuse (raise): nothing is replaced then.

    On any error the temporary path is removed and `final` is left as it was, so a failed
    stage never leaves a half-written output behind. The replacement never deletes before
    the new output is in place (`replace_output`): a file is renamed over the old one; a
    directory's old version is first renamed aside (into the temporary sibling), the new one
    renamed in, then the old one deleted. A process killed between those renames leaves the
    old version aside, and the next `atomic_path` or `clean_stale_temps` of `final` puts it
    back: there is always the old or the new output, never neither.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(final)  # a dead writer's old version goes back first
    # The pid in the name tells a later run whether the writer is gone (clean_stale_temps).
    tmp = (
        Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", dir=final.parent))
        / final.name
    )
    try:
        yield tmp
        if before_replace is not None:
            before_replace(final, tmp)
        replace_output(tmp, final)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def replace_output(new: Path, final: Path) -> None:
    """Put `new` (a path inside a temporary sibling directory of `final`) in place of `final`.
    Steps: `move_aside` (an old directory -> <tmpdir>/old), `move_in` (new -> final); the
    caller deletes the temporary directory, old version included."""
    if final.is_dir() and not final.is_symlink():
        move_aside(final, new.parent / ASIDE)
    move_in(new, final)


def move_aside(final: Path, aside: Path) -> None:
    os.rename(final, aside)


def move_in(new: Path, final: Path) -> None:
    if new.is_dir() and (final.is_file() or final.is_symlink()):
        final.unlink()  # a file replaced by a directory (never so for a stage's outputs)
    os.replace(new, final)  # a file over a file: atomic


def dir_digest(path: str | Path) -> str:
    """sha256 over a directory's file names and bytes (sorted): which tokenizer made the ids."""
    import hashlib

    h = hashlib.sha256()
    root = Path(path)
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def clean_stale_temps(final: str | Path) -> list[Path]:
    """Remove the temporary siblings atomic_path left for `final` when its process was killed
    (SIGKILL, SIGBUS on a full disk): those whose pid no longer runs, or has no pid. When
    `final` is missing and a dead writer had moved the old version aside, it is put back."""
    final = Path(final)
    removed = []
    for tmp in sorted(final.parent.glob(f".{final.name}.*")):
        pid = tmp.name[len(final.name) + 2 :].split(".")[0]
        if pid.isdigit() and pid_alive(int(pid)):
            continue
        aside = tmp / ASIDE
        if tmp.is_dir() and not (final.exists() or final.is_symlink()) and aside.exists():
            os.rename(aside, final)  # killed between move_aside and move_in: old comes back
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json(path: str | Path, obj: Any, before_replace: BeforeReplace | None = None) -> None:
    with atomic_path(path, before_replace) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    torch = sys.modules.get("torch")  # a tensor means torch is loaded
    if torch is not None and isinstance(x, torch.Tensor):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def is_local(name_or_path: str) -> bool:
    return Path(name_or_path).expanduser().exists()


def require_hub(param: str, value: str, timeout: float = 5.0) -> None:
    """Fail within `timeout` seconds, naming the param to change, if the hub is unreachable.

    Hub libraries retry for minutes when offline; a single TCP probe answers at once.
    """
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise RuntimeError(
            f"{param}={value!r} needs the Hugging Face hub but HF_HUB_OFFLINE=1; "
            f"set {param} to a local path"
        )
    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
    except OSError as err:
        raise RuntimeError(
            f"{param}={value!r} needs the Hugging Face hub, which is not reachable "
            f"({err}); set {param} to a local path (or use the offline default)"
        ) from None


# Callables (desc, position, total or None, elapsed seconds) told about every progress bar, even
# a disabled one, at most every PROGRESS_NOTIFY_S and when it closes. The Prefect flow registers
# one that updates a progress artifact; this library stays free of Prefect.
ProgressListener = Callable[[str, int, "int | None", float], None]
_PROGRESS_LISTENERS: list[ProgressListener] = []
PROGRESS_NOTIFY_S = 2.0


@contextlib.contextmanager
def progress_listener(fn: ProgressListener) -> Iterator[None]:
    """Tell `fn` about every `progress` bar opened while in this block."""
    _PROGRESS_LISTENERS.append(fn)
    try:
        yield
    finally:
        _PROGRESS_LISTENERS.remove(fn)


class Progress:
    """A tqdm bar (shown when enabled) whose position also goes to the progress listeners.
    Iterate it, or call update(n) and close(); `bar` is the tqdm bar itself."""

    def __init__(
        self, iterable=None, total: int | None = None, desc: str = "", enabled: bool = True, **kw
    ):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.n = iterable, total, desc, 0
        self.bar = tqdm(
            total=total, desc=desc, disable=not enabled, dynamic_ncols=True, mininterval=1.0, **kw
        )
        self._t0 = self._told = time.monotonic()
        self._closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        self.bar.update(n)
        if _PROGRESS_LISTENERS and time.monotonic() - self._told >= PROGRESS_NOTIFY_S:
            self._tell()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.bar.close()
            if _PROGRESS_LISTENERS:
                self._tell()

    def _tell(self) -> None:
        self._told = now = time.monotonic()
        for fn in list(_PROGRESS_LISTENERS):
            fn(self.desc, self.n, self.total, now - self._t0)

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.bar.set_postfix(refresh=refresh, **values)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.bar.set_postfix_str(text, refresh=refresh)


def progress(
    iterable=None, total: int | None = None, desc: str = "", enabled: bool = True, **kw
) -> Progress:
    """tqdm with position/total, rate and ETA (silent when disabled); listeners registered with
    `progress_listener` see its position either way."""
    return Progress(iterable, total=total, desc=desc, enabled=enabled, **kw)


def eta_text(position: int, total: int | None, elapsed: float) -> str:
    """Position, elapsed time and ETA of a bar: '40/120 (33%), 00:12 elapsed, ETA 00:24'."""
    hms = tqdm.format_interval
    if not total:
        return f"{position} done, {hms(elapsed)} elapsed"
    eta = elapsed / position * (total - position) if position else None
    return f"{position}/{total} ({100 * position / total:.0f}%), {hms(elapsed)} elapsed" + (
        f", ETA {hms(eta)}" if eta is not None else ""
    )


@contextlib.contextmanager
def one_intraop_thread():
    """Run torch ops on one intra-op thread, in this OS thread; back to the stage's count
    (seed_everything) or DEFAULT_THREADS after.

    Used by C* materialization and the reconstruction trainer.

    CPU kernels may split a matrix product differently with another thread count, which
    changes the last bits; every shard runs on one thread, as a Dask worker with
    `threads_per_worker=1` does anyway, so C* is the same bytes in-process, on threads
    and on any worker."""
    import torch

    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(getattr(_STAGE_THREADS, "n", None) or _default_threads())
