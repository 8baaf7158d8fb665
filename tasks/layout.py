"""The pipeline's files, one place: every path a stage reads or writes, and each stage's DVC
deps and outs. tests/test_layout.py holds STAGE_IO equal to dvc.yaml; the stage names and
their order come from dvc.yaml itself (`stage_names`). Paths are relative to the project root.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

PARAMS = Path("params.yaml")
STATS = "stats.json"  # side file in RAW (download -> tokenize) and TOKENIZED (tokenize -> split)

RAW = Path("data/raw")  # Arrow dataset (UltraChat schema)
TOKENIZER = Path("data/tokenizer")  # AutoTokenizer.from_pretrained(TOKENIZER)
TOKENIZED = Path("data/tokenized")  # conversation_id, input_ids, n_tokens
SPLIT = Path("data/split")
SPLIT_TRAIN, SPLIT_VAL, GX_DIR = SPLIT / "train", SPLIT / "val", SPLIT / "gx"
SPLIT_TEST = SPLIT / "test"  # read once, for the reported numbers (materialize, phase2)
GX_VALIDATION, GX_DOCS = GX_DIR / "validation.json", GX_DIR / "data_docs" / "index.html"
PHASE1_DIR = Path("cache/phase1")
PHASE1_MODEL, PHASE1_CHECKS = PHASE1_DIR / "model.pt", PHASE1_DIR / "checks.json"
PHASE1_WORK = Path("cache/phase1-work")  # scratch context files while phase1 runs (not an output)
CSTAR_DIR = Path("cache/cstar")  # C* memmaps + offsets
PHASE2_DIR = Path("cache/phase2")
PHASE2_MODEL = PHASE2_DIR / "model.pt"

METRICS = Path("metrics")
DATA_METRICS = METRICS / "data.json"
PHASE1_METRICS = METRICS / "phase1.json"
PHASE2_METRICS = METRICS / "phase2.json"
# one row per test conversation: targets and summed nats per model (the paired bootstrap)
PHASE2_TEST_CSV = METRICS / "phase2_test_conversations.csv"
SUMMARY = METRICS / "summary.json"  # the only DVC `metrics:` file
TIMING = METRICS / "timing"  # <stage>.json: not a DVC output and not in git (differs every run)

PLOTS = Path("plots")
PHASE1_TRAIN_CSV = PLOTS / "phase1_train.csv"
PHASE1_VAL_CSV = PLOTS / "phase1_val.csv"
PHASE1_SPECTRUM_CSV = PLOTS / "phase1_spectrum.csv"
PHASE1_TRIALS_CSV = PLOTS / "phase1_trials.csv"  # the val convergence trials: diff per pass
PHASE2_EPOCHS_CSV = PLOTS / "phase2_epochs.csv"

REPORTS = Path("reports")  # report.{html,md}: the report stage's outputs; compare.*: flows.compare
REPORT_HTML, REPORT_MD = REPORTS / "report.html", REPORTS / "report.md"
# flows.compare (tasks/compare.py) writes these; the run report shows the verdicts and links
# them. COMPARE_JSON is a dep of the report stage, git-tracked, a placeholder until then.
COMPARE_JSON, COMPARE_HTML, COMPARE_MD = (
    METRICS / "compare.json",
    REPORTS / "compare.html",
    REPORTS / "compare.md",
)


class StageIO(NamedTuple):
    deps: tuple[Path, ...]  # data deps; the code deps are the import closure (test_dvc_deps)
    outs: tuple[Path, ...]  # outs, metrics and plots


STAGE_IO = {
    "download": StageIO((), (RAW,)),
    "tokenize": StageIO((RAW,), (TOKENIZER, TOKENIZED)),
    "split": StageIO((TOKENIZED, TOKENIZER), (SPLIT, DATA_METRICS)),
    "phase1": StageIO(
        (SPLIT_TRAIN, SPLIT_VAL, TOKENIZER),
        (
            PHASE1_DIR,
            PHASE1_METRICS,
            PHASE1_TRAIN_CSV,
            PHASE1_VAL_CSV,
            PHASE1_SPECTRUM_CSV,
            PHASE1_TRIALS_CSV,
        ),
    ),
    "materialize": StageIO(
        (PHASE1_DIR, SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST, TOKENIZER), (CSTAR_DIR,)
    ),
    "phase2": StageIO(
        (PHASE1_DIR, CSTAR_DIR, SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST, TOKENIZER),
        (PHASE2_DIR, PHASE2_METRICS, PHASE2_TEST_CSV, PHASE2_EPOCHS_CSV),
    ),
    "report": StageIO(
        (
            PARAMS,
            DATA_METRICS,
            GX_DIR,
            PHASE1_METRICS,
            PHASE1_DIR,
            PHASE2_METRICS,
            PHASE2_EPOCHS_CSV,
            COMPARE_JSON,
        ),
        (REPORT_HTML, REPORT_MD, SUMMARY),
    ),
}

DVC_YAML = Path(__file__).resolve().parents[1] / "dvc.yaml"  # the one beside this code
DVC_LOCK = Path("dvc.lock")

_YAML_FILES: dict[Path, tuple[tuple[int, int, int], Any]] = {}


def read_yaml(path: str | Path) -> Any:
    """A pipeline YAML file's data (dvc.yaml, dvc.lock): parsed once per process while the
    file stays the same (inode, size and mtime checked on every call; the flows rewrite
    dvc.lock between stages), with libyaml's C parser when PyYAML has it (the same values,
    5-10x faster; a stage read dvc.lock up to 4 times and dvc.yaml several). Callers read
    the result, never modify it. Raises OSError / yaml.YAMLError as the file does."""
    import yaml

    path = Path(path).resolve()
    st = path.stat()
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    hit = _YAML_FILES.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data = yaml.load(path.read_text(), Loader=loader)  # a safe loader: plain values only
    _YAML_FILES[path] = (key, data)
    return data


@cache
def stage_names(dvc_yaml: Path = DVC_YAML) -> tuple[str, ...]:
    """The stages in dvc.yaml's order, which is the order they run in (test_layout checks
    that each one's deps come from the stages before it)."""
    import yaml

    try:
        stages = read_yaml(dvc_yaml)["stages"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as err:
        raise RuntimeError(f"cannot read the stages from {dvc_yaml}: {err}") from None
    return tuple(stages)
