"""What every stage shares: the CLI, logging, timing, the params guard, reading token data.
The file layout is tasks/layout.py."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from datetime import UTC
from pathlib import Path

import numpy as np

from cvfp.params import Params, load_params, yaml_load

from .env import set_env_defaults
from .layout import (
    COMPARE_HTML,
    COMPARE_JSON,
    COMPARE_MD,
    CSTAR_DIR,
    PHASE1_DIR,
    PHASE1_WORK,
    PHASE2_DIR,
    RAW,
    REPORT_HTML,
    REPORT_MD,
    SPLIT,
    STAGE_IO,
    TIMING,
    TOKENIZED,
    TOKENIZER,
)

set_env_defaults()

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
    from cvfp.distributed import init_world

    return init_world()


def cli(stage: str, run: Callable[[Params], object], doc: str | None = None) -> None:
    """Standard `python -m tasks.<stage>` entry point: --params, then run(params)."""
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
    if "cvfp.distributed" in sys.modules:  # a stage that joined a world (else: no torch)
        from cvfp.distributed import close_world

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


# Wall-clock durations of the stage running in each thread's flow task, keyed by stage (see
# split_durations); run_stage moves them into metrics/timing/<stage>.json.
_DURATIONS: dict[str, dict] = {}


def run_stage(stage: str, run: Callable[[Params], object], params: Params):
    """Run one stage and record its wall time (and the durations the stage set aside with
    record_durations) in metrics/timing/<stage>.json for the report. That file is not a DVC
    output and not tracked by git, so outputs stay bitwise identical across reruns.
    Used by the CLI and by the Prefect flow alike. Holds the workspace lock (rank 0)."""
    _DURATIONS.pop(stage, None)
    lock = workspace_lock(f"stage {stage}") if os.environ.get("RANK", "0") == "0" else None
    with lock or contextlib.nullcontext():
        return _run_stage_locked(stage, run, params)


def _run_stage_locked(stage: str, run: Callable[[Params], object], params: Params):
    import time
    from datetime import datetime

    from cvfp.utils import BEFORE_REPLACE, write_json

    if os.environ.get("RANK", "0") == "0":
        clean_leftovers(stage)  # only after the lock: no other runner's scratch
    check_provenance(upstream_stages(stage))  # inputs dvc.lock lies about: refuse
    guard = params_guard(stage, params)
    record = params_record(stage, params)

    def before_replace(final: Path, new: Path) -> None:
        if guard is not None:
            guard(final)
        if new.is_dir():  # datasets saved in it: fingerprints from their bytes
            for state in sorted(new.rglob("state.json")):
                if any(state.parent.glob("*.arrow")):
                    pin_fingerprint(state.parent)
        target = RECORDS.get(stage)
        if record is not None and target is not None and final == target and new.is_dir():
            (new / RECORD_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")

    token = BEFORE_REPLACE.set(before_replace)  # every output replacement checks params first
    t0 = time.perf_counter()
    try:
        result = run(params)
    finally:
        BEFORE_REPLACE.reset(token)
    if guard is not None:
        guard()  # once more right before dvc.lock / the flow commits
    seconds = time.perf_counter() - t0
    details = _DURATIONS.pop(stage, {})
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 writes every output
        return result
    write_json(
        TIMING / f"{stage}.json",
        {
            "stage": stage,
            "seconds": round(seconds, 3),
            "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "durations": details,
        },
    )
    log.info("stage %s finished in %.1f s", stage, seconds)
    return result


# Scratch space of a stage that a killed run may leave behind (besides atomic_path temps):
# each entry's name carries its writer's pid (`<split>-<pid>-*`, `.tokenize-<pid>-*`).
SCRATCH = {"phase1": [PHASE1_WORK / "*"], "tokenize": [TOKENIZED.parent / ".tokenize-*"]}
# Outputs written with atomic_path that are not a stage's DVC outs (their temporaries too
# are cleaned at every stage start).
OTHER_OUTPUTS = (REPORT_HTML, REPORT_MD, COMPARE_JSON, COMPARE_HTML, COMPARE_MD)


def _dvc_stage(stage: str) -> dict:
    import yaml

    try:
        return yaml.safe_load(Path("dvc.yaml").read_text())["stages"][stage] or {}
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return {}


def writer_pid(name: str) -> int | None:
    """The pid in a scratch or temporary name (`train-1234-abc`, `.cstar.1234.xyz`)."""
    for part in re.split(r"[.-]", name):
        if part.isdigit():
            return int(part)
    return None


def clean_leftovers(stage: str) -> list[Path]:
    """Remove what killed earlier runs left behind, only where the writing process is gone:
    temporary siblings of every output (of any stage: a stage DVC restores from its run cache
    never runs to clean its own; a killed replacement's old output is put back first), and
    this stage's scratch files."""
    import glob
    import shutil

    from cvfp.utils import clean_stale_temps, pid_alive

    outs = [out for io in STAGE_IO.values() for out in io.outs] + list(OTHER_OUTPUTS)
    removed = [t for out in outs for t in clean_stale_temps(out)]
    for pattern in SCRATCH.get(stage, []):
        for p in map(Path, glob.glob(str(pattern), include_hidden=True)):
            pid = writer_pid(p.name)
            if pid is not None and pid_alive(pid):
                continue  # a running process's scratch (another runner would hold the lock)
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    for p in removed:
        log.warning("stage %s: removed %s, left by an interrupted run", stage, p)
    return removed


class ParamsChangedError(RuntimeError):
    """The params file changed while a stage ran; its outputs were not replaced."""


def stage_param_keys(stage: str) -> list[str] | None:
    """The params keys a stage depends on, from dvc.yaml (one source for that fact);
    None (= every key) when dvc.yaml or the stage's list is not there."""
    spec = _dvc_stage(stage)
    if not spec:
        return None
    keys = []
    for item in spec.get("params") or []:
        if isinstance(item, str):
            keys.append(item)
        elif isinstance(item, dict):  # {params.yaml: [keys]}
            for name, sub in item.items():
                if Path(name).name == "params.yaml":
                    keys += list(sub or [])
    # a stage with `params.yaml` as a plain dependency (report) reads all of it
    deps = [str(d) for d in spec.get("deps") or []]
    return None if "params.yaml" in deps or not keys else keys


def _dotted(d, key: str):
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _leaf_changes(key: str, a, b, both_only: bool = False):
    """(dotted key, old, new) for every leaf that differs between a and b; `both_only`: only
    leaves both have (dvc.lock lacks a key params.yaml leaves to its default)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if both_only and (k not in a or k not in b):
                continue
            yield from _leaf_changes(f"{key}.{k}", a.get(k), b.get(k), both_only)
    elif a != b:
        yield key, a, b


def params_guard(stage: str, params: Params) -> Callable[..., None] | None:
    """A check that the params file still says, for the keys the stage depends on, what
    the stage runs with (the checkpoint and dvc.lock must agree with what trained). Raises
    ParamsChangedError naming each changed key; None if params came from no file."""
    from cvfp.params import ParamsError

    source = getattr(params, "_source", None)
    if source is None:
        return None
    path, overrides = source
    used = params.model_dump(mode="json")
    keys = stage_param_keys(stage) or [k for k in used if k != "orchestration"]

    def check(final: Path | None = None) -> None:
        what = f"{final} was not replaced" if final is not None else "its outputs stay uncommitted"
        try:
            now = load_params(path, overrides).model_dump(mode="json")
        except (ParamsError, OSError) as err:
            raise ParamsChangedError(
                f"{path} changed while stage {stage} ran and no longer loads "
                f"({err}); {what}. Fix it and run the stage again"
            ) from None
        changed = [
            f"{k}: {a!r} -> {b!r}"
            for key in keys
            for k, a, b in _leaf_changes(key, _dotted(used, key), _dotted(now, key))
        ]
        if changed:
            raise ParamsChangedError(
                f"{path} changed while stage {stage} ran ({'; '.join(changed)}); the stage ran with "
                f"the old values, so {what} and dvc.lock is not updated. Run the stage again"
            )

    return check


# ---------------------------------------------------------------- provenance
# Each stage writes the params it ran with (its dvc.yaml keys, as dvc.lock records them) into
# its main directory output. dvc.lock can then be checked against the outputs it commits:
# params.yaml edited while the stage ran (DVC reads it after the stage exits), or `dvc commit`
# after a one-off `-S` run, would record params the outputs were not made with.

RECORD_NAME = "params.json"
RECORDS = {
    "download": RAW,
    "tokenize": TOKENIZED,
    "split": SPLIT,
    "phase1": PHASE1_DIR,
    "materialize": CSTAR_DIR,
    "phase2": PHASE2_DIR,
}
SCRATCH_RUNS = Path("scratch")  # where a one-off `-S` run of a tracked stage writes


class ProvenanceError(RuntimeError):
    """dvc.lock records params that a stage's committed outputs were not made with."""


def params_record(stage: str, params: Params) -> dict | None:
    """{dvc.yaml params key: value the stage runs with}; None for a stage with no key list."""
    keys = stage_param_keys(stage)
    if keys is None or stage not in RECORDS:
        return None
    used = params.model_dump(mode="json")
    return {k: _dotted(used, k) for k in keys}


def upstream_stages(stage: str) -> list[str]:
    """The stages whose outputs this stage reads."""
    deps = STAGE_IO[stage].deps if stage in STAGE_IO else ()
    return [
        s
        for s, io in STAGE_IO.items()
        if s != stage and any(d == o or o in d.parents for d in deps for o in io.outs)
    ]


def _dvc_cache_dir() -> Path:
    import configparser

    cache = Path(".dvc/cache")
    for name in (".dvc/config", ".dvc/config.local"):
        cfg = configparser.ConfigParser()
        try:
            cfg.read(name)
        except configparser.Error:
            continue
        if cfg.has_option("cache", "dir"):
            cache = Path(".dvc") / cfg.get("cache", "dir")
    return cache


def _cached(md5: str) -> Path:
    return _dvc_cache_dir() / "files" / "md5" / md5[:2] / md5[2:]


def committed_record(stage: str, lock: dict) -> dict | None:
    """The params record inside the outputs dvc.lock commits for `stage` (read from the DVC
    cache by the hashes dvc.lock records); None when not available (no record, not cached)."""
    target = RECORDS.get(stage)
    entry = (lock.get("stages") or {}).get(stage) or {}
    out = next((o for o in entry.get("outs") or [] if o.get("path") == str(target)), None)
    if out is None or not str(out.get("md5", "")).endswith(".dir"):
        return None
    try:
        manifest = json.loads(_cached(out["md5"]).read_text())
        md5 = next(f["md5"] for f in manifest if f.get("relpath") == RECORD_NAME)
        return json.loads(_cached(md5).read_text())
    except (OSError, ValueError, StopIteration, KeyError, TypeError):
        return None


def provenance_changes(stage: str, lock: dict | None = None) -> list[str]:
    """Keys whose value dvc.lock records for `stage` differs from the one its committed
    outputs were made with: ['phase1.lr: dvc.lock 0.002, outputs 0.01', ...]."""
    import yaml

    if lock is None:
        try:
            lock = yaml.safe_load(Path("dvc.lock").read_text()) or {}
        except (OSError, yaml.YAMLError):
            return []
    record = committed_record(stage, lock)
    if record is None:
        return []
    recorded = (((lock.get("stages") or {}).get(stage) or {}).get("params") or {}).get(
        "params.yaml"
    ) or {}
    return [
        f"{k}: dvc.lock {b!r}, outputs {a!r}"
        for key in sorted(set(record) & set(recorded))
        for k, a, b in _leaf_changes(key, record[key], recorded[key], both_only=True)
    ]


def check_provenance(stages) -> None:
    """Refuse (naming stage, keys and the fix) when dvc.lock records, for any of `stages`,
    params its committed outputs were not made with."""
    problems = {s: c for s in stages if (c := provenance_changes(s))}
    if problems:
        raise ProvenanceError(
            "dvc.lock records params that these outputs were not made with: "
            + "; ".join(
                f"stage {s} ({RECORDS[s]}/{RECORD_NAME}): {', '.join(c)}"
                for s, c in problems.items()
            )
            + ". params.yaml changed while the stage ran, or `dvc commit` recorded a one-off "
            "-S/--params run. Rerun it: `dvc repro -f -s <stage>` (or `python -m flows.pipeline`, "
            "which reruns it), or set params.yaml to the outputs' values and `dvc commit <stage>`"
        )


def differs_from_tracked(stage: str, params: Params) -> list[str]:
    """The stage's dvc.yaml keys whose value differs from the workspace params.yaml (the file
    DVC reads): a run with these would make outputs dvc.lock cannot describe."""
    from cvfp.params import ParamsError

    if not _dvc_stage(stage) or not Path("params.yaml").exists():
        return []
    try:
        tracked = load_params("params.yaml").model_dump(mode="json")
    except ParamsError:
        return ["params.yaml does not load"]
    used = params.model_dump(mode="json")
    keys = stage_param_keys(stage) or [k for k in used if k != "orchestration"]
    return [
        f"{k}: params.yaml {b!r}, this run {a!r}"
        for key in keys
        for k, a, b in _leaf_changes(key, _dotted(used, key), _dotted(tracked, key))
    ]


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


def holds_workspace(what: str):
    """Decorator: the function runs holding the workspace lock (flows.compare's flow)."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*a, **kw):
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

        from cvfp.utils import pid_alive

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


def _is_duration(key) -> bool:
    return isinstance(key, str) and "seconds" in key


def split_durations(obj):
    """(obj without wall-clock durations, the durations in obj's shape). A duration is any
    dict key containing "seconds"; lists of dicts keep their rows aligned."""
    if isinstance(obj, dict):
        clean, removed = {}, {}
        for k, v in obj.items():
            if _is_duration(k):
                removed[k] = v
                continue
            clean[k], sub = split_durations(v)
            if sub:
                removed[k] = sub
        return clean, removed
    if isinstance(obj, list) and any(isinstance(x, (dict, list)) for x in obj):
        pairs = [split_durations(x) for x in obj]
        removed = [r for _, r in pairs]
        return [c for c, _ in pairs], (removed if any(removed) else [])
    return obj, {}


def merge_durations(obj, durations):
    """Inverse of split_durations: put recorded durations back into obj (for the report)."""
    if isinstance(obj, dict) and isinstance(durations, dict):
        for k, v in durations.items():
            obj[k] = merge_durations(obj[k], v) if k in obj else v
    elif isinstance(obj, list) and isinstance(durations, list):
        for x, d in zip(obj, durations, strict=False):
            merge_durations(x, d)
    return obj


def record_durations(stage: str, **parts) -> None:
    """Set aside durations removed from the stage's outputs (split_durations), by output name."""
    _DURATIONS.setdefault(stage, {}).update({k: v for k, v in parts.items() if v})


class BrokenInputError(ValueError):
    """An input file that is truncated or corrupt; names the file and how to get it back."""


def producer(path: str | Path) -> str | None:
    """The stage whose output holds `path`."""
    p = Path(path)
    for stage, io in STAGE_IO.items():
        if any(p == o or o in p.parents for o in io.outs):
            return stage
    return None


def broken(path: str | Path, err: BaseException, what: str = "") -> BrokenInputError:
    stage = producer(path)
    fix = (
        f"restore it (`dvc checkout --force {stage}`) or rerun that stage "
        f"(`dvc repro -f -s {stage}`)"
        if stage
        else "restore or recreate it"
    )
    detail = f"{type(err).__name__}: {str(err)[:300]}"
    return BrokenInputError(f"{path}{what}: truncated or corrupt ({detail}); {fix}")


def pin_fingerprint(path: str | Path) -> str:
    """Set a saved dataset's `_fingerprint` (state.json) to a hash of its Arrow files.
    `datasets` derives it from in-memory objects and the modification times of the files a
    dataset was loaded from, which differ between the flow and `dvc repro` (or two clones)
    though the rows are the same: the same data would give other output bytes and rerun
    every later stage. run_stage pins every dataset a stage writes."""
    import hashlib

    path = Path(path)
    h = hashlib.sha256()
    for f in sorted(path.glob("*.arrow")):
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    state_file = path / "state.json"
    state = json.loads(state_file.read_text())
    state["_fingerprint"] = h.hexdigest()[:16]
    state_file.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    return state["_fingerprint"]


def load_conversations(path: str | Path) -> list[np.ndarray]:
    """Token ids per conversation (int64 arrays) from an Arrow dataset with `input_ids`.
    A dataset saved by `save_to_disk` (its Arrow files listed in state.json, no indices
    mapping) is read with pyarrow alone: importing `datasets` and converting row by row cost
    each training stage ~3 s (measured, default data); other layouts go through datasets.
    A truncated or corrupt dataset (Arrow files, state.json) names the folder and the fix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"token data not found: {path} (run the earlier stages first)")
    try:
        table = _saved_arrow_table(path)
        if table is None:
            from datasets import load_from_disk

            ds = load_from_disk(str(path)).with_format("numpy")
            if "input_ids" not in ds.column_names:
                raise ValueError(f"{path}: no input_ids column (columns: {ds.column_names})")
            return [np.asarray(x, dtype=np.int64) for x in ds["input_ids"]]
        if "input_ids" not in table.column_names:
            raise ValueError(f"{path}: no input_ids column (columns: {table.column_names})")
        ids = table.column("input_ids").combine_chunks()
        offsets = ids.offsets.to_numpy()
        values = ids.values.to_numpy(zero_copy_only=False).astype(np.int64)
        return np.split(values[offsets[0] : offsets[-1]], offsets[1:-1] - offsets[0])
    except ValueError as err:
        if "no input_ids column" in str(err):
            raise
        raise broken(path, err) from None
    except Exception as err:  # OSError / ArrowInvalid (short Arrow file), JSONDecodeError...
        raise broken(path, err) from None


def load_conversation_ids(path: str | Path) -> list:
    """The conversation_id column, one value per row of `load_conversations(path)` (the
    pieces of a held-out conversation cut at an unseen id repeat it); read the same way."""
    path = Path(path)
    table = _saved_arrow_table(path)
    if table is None:
        from datasets import load_from_disk

        return list(load_from_disk(str(path))["conversation_id"])
    return table.column("conversation_id").to_pylist()


def _saved_arrow_table(path: Path):
    """The pyarrow Table of a `save_to_disk` directory, or None for any other layout."""
    import json

    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError):
        return None
    files = [path / f.get("filename", "") for f in state.get("_data_files") or []]
    if not files or state.get("_indices_data_files") or not all(f.is_file() for f in files):
        return None
    import pyarrow as pa

    tables = []
    for f in files:
        with pa.memory_map(str(f)) as src:
            tables.append(pa.ipc.open_stream(src).read_all())
    return pa.concat_tables(tables)


def _require_tokenizer_dir(tokenizer_dir: str | Path) -> None:
    if not Path(tokenizer_dir).is_dir():  # else transformers takes it for a hub name
        raise FileNotFoundError(
            f"{tokenizer_dir}: tokenizer not found (run the earlier stages first: "
            f"`dvc repro` or `dvc pull`)"
        )


def load_tokenizer(tokenizer_dir: str | Path = TOKENIZER):
    """AutoTokenizer from a local folder; a missing one says to run the earlier stages, a
    broken one (tokenizer.json, config) names the folder and the fix."""
    from transformers import AutoTokenizer

    _require_tokenizer_dir(tokenizer_dir)
    try:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception as err:
        raise broken(tokenizer_dir, err, " (tokenizer.json / tokenizer_config.json)") from None


def read_vocab_size(tokenizer_dir: str | Path = TOKENIZER) -> int:
    """Embedding rows needed for this tokenizer (len(tokenizer), includes added specials).
    A saved fast tokenizer is read with `tokenizers` alone: len() of transformers' fast
    tokenizer is its backend's size with added tokens, and importing transformers cost every
    training stage ~2.7 s of CPU (measured); tokens only tokenizer_config.json adds are
    counted too. Without tokenizer.json (a slow tokenizer), transformers loads it. A broken
    tokenizer names the folder and the fix."""
    _require_tokenizer_dir(tokenizer_dir)
    fast, config = (
        Path(tokenizer_dir) / "tokenizer.json",
        Path(tokenizer_dir) / "tokenizer_config.json",
    )
    if not fast.exists():
        return len(load_tokenizer(tokenizer_dir))
    try:
        from tokenizers import Tokenizer

        n = Tokenizer.from_file(str(fast)).get_vocab_size(with_added_tokens=True)
        extra = (
            json.loads(config.read_text()).get("added_tokens_decoder", {})
            if config.exists()
            else {}
        )
    except Exception as err:
        raise broken(tokenizer_dir, err, " (tokenizer.json / tokenizer_config.json)") from None
    return max([n, *(int(i) + 1 for i in extra)])
