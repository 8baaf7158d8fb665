"""`python -m tasks.<stage>`: the command line every stage shares (--params, -S, --replace),
logging, and the torch.distributed world under torchrun."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable

from cvfp.params import Params, load_params, yaml_load

from .env import set_env_defaults
from .guard import differs_from_tracked
from .stage import run_stage
from .workspace import (
    SCRATCH_RUNS,
    WorkspaceBusyError,
    exit_with_parent,
    scratch_workspace,
    workspace_lock,
)

log = logging.getLogger("cvfp")


def setup_logging() -> None:
    """The library's INFO lines (per-iteration / per-epoch metrics) on: the level is set on the
    `cvfp` logger itself, since a process that imported Prefect already has a root handler at
    WARNING (which used to leave `cvfp` at WARNING under the flow). A console handler is added
    only when nobody configured one."""
    rank = os.environ.get("RANK")  # set by torchrun: other ranks log warnings only
    level = logging.INFO if rank in (None, "0") else logging.WARNING
    log.setLevel(level)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=level,
            format=f"%(asctime)s %(name)s{'' if rank is None else '[' + rank + ']'} "
            f"%(levelname)s %(message)s",
        )


def current_world():
    """The torch.distributed world when started by torchrun (joined on first use), else one
    process. Stages that train (phase1, phase2) split their work over it."""
    from cvfp.runtime.distributed import init_world

    return init_world()


def cli(stage: str, run: Callable[[Params], object], doc: str | None = None) -> None:
    """Standard `python -m tasks.<stage>` entry point: --params, then run(params). Sets the
    environment defaults (tasks/env.py) first, as every entry point does. When `run` comes
    from the program's main module (`python -m tasks.<stage>`, a stage script), this is the
    process's entry point and it ends the process when the stage is done (`end_process`);
    called from anything else (a test calling a stage's main()), it returns or raises."""
    if getattr(run, "__module__", None) != "__main__":
        _cli(stage, run, doc)
        return
    try:
        _cli(stage, run, doc)
    except Exception:
        if not can_end_process():
            raise
        sys.excepthook(*sys.exc_info())  # the traceback the interpreter would print
        end_process(1)  # and its exit status
    end_process(0)


def can_end_process() -> bool:
    """Whether `end_process` can end this process now: not under torchrun (WORLD_SIZE > 1:
    torch.distributed's own shutdown), no non-daemon thread still running (a normal exit
    waits for it), and this Python has atexit._run_exitfuncs."""
    import atexit
    import threading

    main = threading.main_thread()
    return (
        int(os.environ.get("WORLD_SIZE", "1")) <= 1
        and all(t.daemon for t in threading.enumerate() if t is not main)
        and hasattr(atexit, "_run_exitfuncs")
    )


def end_process(code: int) -> None:
    """Exit now with `code`, after everything a normal exit does that matters: the atexit
    handlers (logging's flush, multiprocessing's children, weakref finalizers such as
    temporary directories, anything a caller registered), then the std streams flushed.
    Skipped: the interpreter's teardown of every module and object, 0.4-0.5 s of CPU after
    `import torch` and ~1 s with torch._dynamo or transformers loaded, in every stage
    process (docs/compare.md). Returns (a normal exit follows) when `can_end_process` says
    no."""
    import atexit

    if not can_end_process():
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _cli(stage: str, run: Callable[[Params], object], doc: str | None) -> None:
    set_env_defaults()
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage}", description=doc)
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: params.yaml)"
    )
    parser.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one param for this run, e.g. -S phase1.lr=0.001 (YAML value)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="with -S / --params values that differ from params.yaml for this stage: replace "
        "the DVC-tracked outputs anyway (default: write them under scratch/<stage>/)",
    )
    args = parser.parse_args()
    setup_logging()
    if os.environ.get("DVC_STAGE"):  # started by `dvc repro`: end with it
        exit_with_parent()
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = yaml_load(value)
    params = load_params(args.params, overrides)
    differs = differs_from_tracked(stage, params)
    if differs and not args.replace and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        parser.error(
            f"params differ from params.yaml ({'; '.join(differs)}): under torchrun add "
            f"--replace to replace the tracked outputs (a scratch run is one process only)"
        )
    rank0 = os.environ.get("RANK", "0") == "0"
    try:
        with workspace_lock(f"stage {stage}") if rank0 else contextlib.nullcontext():
            _run_cli(stage, run, params, differs, args.replace)
    except WorkspaceBusyError as err:  # what to do is the whole message: no traceback
        parser.exit(1, f"WorkspaceBusyError: {err}\n")
    if "cvfp.runtime.distributed" in sys.modules:  # a stage that joined a world (else: no torch)
        from cvfp.runtime.distributed import close_world

        close_world(current_world())  # on error the process exits and torchrun stops the rest


def _run_cli(stage: str, run: Callable[[Params], object], params: Params, differs, replace):
    if differs and not replace:
        where = SCRATCH_RUNS / stage
        log.warning(
            "stage %s runs with params that differ from params.yaml (%s): its DVC-tracked "
            "outputs stay as dvc.lock records them; this run's outputs go to %s/ "
            "(--replace to replace the tracked outputs)",
            stage,
            "; ".join(differs),
            where,
        )
        with scratch_workspace(stage, where):
            run_stage(stage, run, params)
    else:
        run_stage(stage, run, params)
