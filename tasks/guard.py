"""The params guard: a stage refuses to replace its outputs when params.yaml changed, for
the keys it depends on (dvc.yaml), while it ran. A stage calls it explicitly before each
output it replaces (tasks/outputs.py); `run_stage` calls it once more at the end, before
dvc.lock or the flow commits. Also: which keys differ from the tracked params.yaml."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cvfp.params import Params, load_params

from .layout import read_yaml


def _dvc_stage(stage: str) -> dict:
    import yaml

    try:
        return read_yaml("dvc.yaml")["stages"][stage] or {}
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return {}


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


def dotted(d, key: str):
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def leaf_changes(key: str, a, b, both_only: bool = False):
    """(dotted key, old, new) for every leaf that differs between a and b; `both_only`: only
    leaves both have (dvc.lock lacks a key params.yaml leaves to its default)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if both_only and (k not in a or k not in b):
                continue
            yield from leaf_changes(f"{key}.{k}", a.get(k), b.get(k), both_only)
    elif a != b:
        yield key, a, b


def params_guard(stage: str, params: Params) -> Callable[..., None] | None:
    """A check that the params file still says, for the keys the stage depends on, what it
    said when the guard was made (at the stage's start: the checkpoint and dvc.lock must agree
    with what trained). Raises ParamsChangedError naming each changed key; None if params
    came from no file. A caller that edits `params` in memory runs with its own values: only
    the file changing under the stage counts."""
    from cvfp.params import ParamsError

    source = getattr(params, "_source", None)
    if source is None:
        return None
    path, overrides = source
    try:
        used = load_params(path, overrides).model_dump(mode="json")
    except (ParamsError, OSError):  # already changed since it was loaded: compare with that
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
            for k, a, b in leaf_changes(key, dotted(used, key), dotted(now, key))
        ]
        if changed:
            raise ParamsChangedError(
                f"{path} changed while stage {stage} ran ({'; '.join(changed)}); the stage ran with "
                f"the old values, so {what} and dvc.lock is not updated. Run the stage again"
            )

    return check


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
        for k, a, b in leaf_changes(key, dotted(used, key), dotted(tracked, key))
    ]
