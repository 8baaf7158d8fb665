"""Issue 14 item 8: a forced rerun of a stage gives the same bytes, so it never makes DVC
rerun what comes after it; wall times live in metrics/timing/ (not a DVC output, not in git)."""

import json
import subprocess

import pytest

from helpers import BIN, ROOT
from helpers.project import status_clean

pytestmark = pytest.mark.pipeline


def test_forced_reruns_of_split_and_phase1_are_bitwise_identical(reruns_run):
    proj, digests, clean = reruns_run
    for stage, (before, after) in digests.items():
        assert len(before) >= (5 if stage == "phase1" else 10)
        assert after == before, stage
    assert clean  # dvc.lock unchanged: nothing downstream would rerun
    # The GX run is stamped with a fixed time: one data docs folder, same name every run.
    runs = list((proj / "data/split/gx/data_docs/validations").rglob("*.html"))
    assert [p.parent.name for p in runs] == ["19700101T000000.000000Z"]
    # Durations moved out of the outputs into the timing file the report reads.
    timing = json.loads((proj / "metrics/timing/phase1.json").read_text())
    assert timing["seconds"] > 0 and timing["durations"]["train_seconds"] > 0
    assert all(s >= 0 for s in timing["durations"]["iteration_seconds"]["train"])
    assert "seconds" not in (proj / "plots/phase1_train.csv").read_text().splitlines()[0]
    assert "seconds" not in (proj / "metrics/phase1.json").read_text()
    assert "metrics/timing" not in (proj / "dvc.yaml").read_text()


def test_timing_files_are_not_tracked_by_git():
    ignored = subprocess.run(["git", "check-ignore", "-q", "metrics/timing/phase1.json"], cwd=ROOT)
    tracked = subprocess.run(
        ["git", "ls-files", "metrics/timing"], cwd=ROOT, capture_output=True, text=True
    )
    assert ignored.returncode == 0 and tracked.stdout == ""


@pytest.mark.parametrize(
    "path, old, new",
    [  # a warning's wording, and a number format
        ("cvfp/analysis/report/rule_words.py", '"collapsed contexts"', '"contexts collapsed"'),
        ("cvfp/analysis/formats.py", 'f"{100 * float(x):.1f}%"', 'f"{100 * float(x):.2f}%"'),
    ],
)
def test_rewording_a_warning_or_a_format_reruns_only_the_report(dvc_copy, path, old, new):
    """Wording and number formats live in the report: Phase 1 (hours at full scale),
    materialize and Phase 2 stay up to date when they change."""
    assert status_clean(dvc_copy)
    f = dvc_copy / path
    text = f.read_text()
    assert text.count(old) == 1
    f.write_text(text.replace(old, new))
    out = subprocess.run(
        [str(BIN / "dvc"), "status", "--json"], cwd=dvc_copy, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert set(status) == {"report"}, status
    package = "/".join(path.split("/")[:2])  # dvc.yaml lists cvfp/<package>
    assert {"changed deps": {package: "modified"}} in status["report"]
