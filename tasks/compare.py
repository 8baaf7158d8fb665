"""A comparison's I/O: plan arm x seed as DVC experiments (one experiment runs in
tasks/compare_experiment.py), read their metrics back, and write reports/compare.{html,md}
+ metrics/compare.json (docs/compare.md).

`flows/compare.py` composes these into the Prefect flow. Each experiment is
`dvc exp run -n <name> -S key=value ...` in a private clone of the project (the
workspace's params.yaml and outputs stay as they were) that shares the DVC cache and
run-cache; its commit is pushed back under refs/exps/, so `dvc exp show` lists it and its
metrics are read from that commit (`git show <ref>:metrics/...`). A finished experiment
with the same fingerprint (baseline, code, params) is reused instead of rerun.

    python -m tasks.compare      # rebuild the report from the experiments already run
"""

from __future__ import annotations

import argparse
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cvfp.analysis.compare import summarise
from cvfp.analysis.compare_inputs import check_consistent, experiment_values, parse_conversations
from cvfp.analysis.compare_report import build_compare_report
from cvfp.analysis.compare_words import verdict_lines
from cvfp.params import Params, ParamsError, arm_params, load_params, yaml_load
from cvfp.runtime.utils import atomic_path, write_json

from .cli import log, setup_logging
from .compare_experiment import (
    ExperimentFailed,
    ExperimentMissing,
    exp_ref,
    failed,
    git,
    set_arg,
)
from .layout import (
    COMPARE_HTML,
    COMPARE_JSON,
    COMPARE_MD,
    PHASE1_METRICS,
    PHASE2_METRICS,
    PHASE2_TEST_CSV,
)

PREFIX = "cmp"  # experiment names: cmp-<arm>-s<seed>


def experiment_name(arm: str, seed: int) -> str:
    return f"{PREFIX}-{arm}-s{seed}"


def plan(
    params: Params,
    arms: list[str] | None = None,
    n_seeds: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[dict]:
    """The experiments of a comparison, validated before any runs: one dict per arm x seed
    with its name and the full -S overrides (shared ones, then the arm's, then the seed).
    Bad shared overrides raise; an arm whose values do not validate gets `invalid` (its
    error): it fails alone without running and the others go on."""
    c = params.compare
    arms = arms or c.run
    unknown = [a for a in arms if a not in c.arms]
    if unknown:
        raise ValueError(
            f"unknown arm(s) {unknown}; defined in params.yaml compare.arms: {list(c.arms)}"
        )
    n = len(c.seeds) if n_seeds is None else n_seeds
    if not 1 <= n <= len(c.seeds):
        raise ValueError(
            f"--seeds {n}: compare.seeds lists {len(c.seeds)} seed(s) {c.seeds}; "
            f"add seeds there to run more"
        )
    bad = [k for k in (overrides or {}) if k.split(".")[0] in ("seed", "compare", "runtime")]
    if bad:
        raise ValueError(
            f"-S {bad}: the comparison sets the seed and runtime.threads itself; pick seeds "
            f"in compare.seeds and threads with --threads (compare.threads)"
        )
    overrides = resolve_data_path(params, overrides)  # untracked data: made absolute
    arm_params(
        params, dict(overrides or {}), "-S"
    )  # shared overrides: wrong for every arm, stop now
    control = control_of(params, arms)
    out = []
    for seed in c.seeds[:n]:
        for arm in arms:
            sets = {**(overrides or {}), **c.arms[arm], "seed": seed}
            if c.transformer_in_control_only and arm != control:
                sets["baselines.transformer"] = False
            try:  # an arm's bad value fails that arm only
                arm_params(params, sets, f"arm {arm}, seed {seed}")
                invalid = None
            except ParamsError as err:
                invalid = str(err)
            out.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "name": experiment_name(arm, seed),
                    "sets": sets,
                    "invalid": invalid,
                }
            )
    return out


# The params of dvc.yaml's phase1 stage (runtime.threads aside: one value per comparison).
PHASE1_PARAMS = ("seed", "deterministic", "model", "phase1", "checks")


def run_order(params: Params, exps: list[dict]) -> tuple[list[int], dict[int, int]]:
    """The order to start the experiments of `plan` in, longest first, so that no long one is
    left running alone at the end: those that train the Transformer baseline (the control,
    with compare.transformer_in_control_only: about twice as long) first, then the others in
    plan order, and last the experiments whose phase1 stage has the same params as an earlier
    one's (no_context and none, same seed): they restore phase1 and materialize from DVC's
    run-cache once that one has finished, so each waits for it (the second value: index ->
    index it waits for). Returns indices into `exps`; invalid experiments (nothing to run)
    first."""
    ranked: list[tuple[int, int]] = []
    first_with: dict[str, int] = {}
    waits_for: dict[int, int] = {}
    for i, exp in enumerate(exps):
        if exp["invalid"]:
            ranked.append((0, i))
            continue
        p = arm_params(params, exp["sets"])
        key = json.dumps(p.model_dump(include=set(PHASE1_PARAMS)), sort_keys=True, default=str)
        if key in first_with:
            waits_for[i] = first_with[key]
            ranked.append((3, i))
        else:
            first_with[key] = i
            ranked.append((1 if p.baselines.transformer else 2, i))
    # an experiment that others wait for starts before the rest of its rank
    ranked.sort(key=lambda r: (r[0], r[1] not in waits_for.values(), r[1]))
    return [i for _, i in ranked], waits_for


def resolve_data_path(
    params: Params, overrides: dict[str, Any] | None, root: Path | None = None
) -> dict[str, Any]:
    """The overrides with a relative local `data.path` that git and DVC do not track made
    absolute: each experiment runs in a temporary copy holding only tracked files, where
    the path would not exist. The absolute path lands in every experiment's params (and
    is logged). A path that does not exist is refused here, before any experiment runs."""
    sets = dict(overrides or {})
    if sets.get("data.source", params.data.source) != "local":
        return sets
    raw = str(sets.get("data.path", params.data.path))
    root = (root or Path.cwd()).resolve()
    path = Path(raw).expanduser()
    full = path if path.is_absolute() else root / path
    if not full.exists():
        raise ValueError(
            f"data.path={raw!r}: no such file or directory (in {root}); every experiment would "
            f"fail. Give an existing path"
        )
    if path.is_absolute():
        return sets
    listed = subprocess.run(
        ["git", "ls-files", "--", raw], cwd=root, capture_output=True, text=True
    ).stdout
    if listed.strip() or Path(f"{full}.dvc").exists():
        return sets  # in the experiments' copy (DVC-tracked data is checked out there)
    sets["data.path"] = str(full.resolve())
    log.warning(
        "data.path=%r is tracked by neither git nor DVC, so the experiments (run in a temporary "
        "copy of the tracked files) read it as %s; `dvc add %s` (and commit the .dvc file) to "
        "version the data with the comparison",
        raw,
        sets["data.path"],
        raw,
    )
    return sets


def control_of(params: Params, arms: list[str]) -> str:
    """The arm the others are paired with: compare.control if it runs, else the first arm."""
    return params.compare.control if params.compare.control in arms else arms[0]


def collect(exp: dict) -> dict:
    """The record of a finished experiment, read from its commit."""
    ref = exp_ref(exp["name"])
    if subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", ref], capture_output=True
    ).returncode:
        raise ExperimentMissing(
            f"{exp['name']}: no such experiment on this commit (not run, or it failed)"
        )
    where = f"{exp['name']} ({ref})"
    try:
        phase1, phase2 = (
            json.loads(git("show", f"{ref}:{path.as_posix()}"))
            for path in (PHASE1_METRICS, PHASE2_METRICS)
        )
        table = git("show", f"{ref}:{PHASE2_TEST_CSV.as_posix()}")
    except subprocess.CalledProcessError as err:
        raise ExperimentFailed(f"{where}: missing metrics: {err.stderr.strip()}") from None
    try:
        conversations = parse_conversations(table, f"{where}:{PHASE2_TEST_CSV.as_posix()}")
        values = experiment_values(phase1, phase2, conversations)
        check_consistent(values, conversations, where)
    except ValueError as err:
        raise ExperimentFailed(str(err)) from None
    return {
        "arm": exp["arm"],
        "seed": exp["seed"],
        "name": exp["name"],
        "status": "ok",
        "error": None,
        "values": values,
        "conversations": conversations,
    }


def write_outputs(
    params: Params,
    experiments: list[dict],
    arms: list[str],
    overrides: dict[str, Any] | None = None,
) -> dict:
    """summarise -> metrics/compare.json, reports/compare.{html,md} (each written atomically).
    Returns the content of metrics/compare.json."""
    summary = summarise(experiments, params.compare, arms, control_of(params, arms))
    summary.overrides = dict(overrides or {})
    summary.generated_utc = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")  # not a DVC output
    try:
        summary.git_revision = git("rev-parse", "HEAD").strip()
    except (OSError, subprocess.CalledProcessError):
        summary.git_revision = "unknown"
    shared = ", ".join(f"-S {set_arg(k, v)}" for k, v in (overrides or {}).items()) or "none"
    html, md = build_compare_report(summary, f"Applied to every experiment: {shared}.")
    data = summary.to_dict()
    write_json(COMPARE_JSON, data)
    for path, text in ((COMPARE_HTML, html), (COMPARE_MD, md)):
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    for line in verdict_lines(summary):
        log.info("verdict: %s", line)
    return data


def main() -> None:
    """Rebuild the outputs from the experiments of this baseline (no experiment runs)."""
    ap = argparse.ArgumentParser(prog="python -m tasks.compare", description=main.__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--arms", nargs="+")
    ap.add_argument("--seeds", type=int)
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    setup_logging()
    params = load_params(args.params)
    overrides = dict(parse_sets(args.set))
    exps = plan(params, args.arms, args.seeds, overrides)
    records = []
    for e in exps:
        try:
            records.append(collect(e))
        except ExperimentMissing as err:
            records.append(failed(e, str(err), status="missing"))
        except ExperimentFailed as err:
            records.append(failed(e, str(err)))
    write_outputs(params, records, list(dict.fromkeys(e["arm"] for e in exps)), overrides)
    print(COMPARE_HTML.resolve())


def parse_sets(items: list[str]):
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"-S expects KEY=VALUE, got {item!r}")
        yield key, yaml_load(value)  # as params.yaml reads it (1e-3 a number)


if __name__ == "__main__":
    main()
