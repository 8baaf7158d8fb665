"""Issue 14 item 8: a forced rerun of a stage gives the same bytes, so it never makes DVC
rerun what comes after it; wall times live in metrics/timing/ (not a DVC output, not in git)."""

import json
import subprocess

import pytest

from helpers import ROOT

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
    assert timing["seconds"] > 0 and timing["durations"]["metrics"]["train_seconds"] > 0
    assert all(r["seconds"] >= 0 for r in timing["durations"]["checks"]["train"]["history"])
    assert "seconds" not in (proj / "plots/phase1_train.csv").read_text().splitlines()[0]
    assert "seconds" not in (proj / "metrics/phase1.json").read_text()
    assert "metrics/timing" not in (proj / "dvc.yaml").read_text()


def test_timing_files_are_not_tracked_by_git():
    ignored = subprocess.run(["git", "check-ignore", "-q", "metrics/timing/phase1.json"], cwd=ROOT)
    tracked = subprocess.run(
        ["git", "ls-files", "metrics/timing"], cwd=ROOT, capture_output=True, text=True
    )
    assert ignored.returncode == 0 and tracked.stdout == ""


def test_split_and_merge_durations_round_trip():
    from tasks.common import merge_durations, split_durations

    obj = {
        "a": 1,
        "train_seconds": 2.5,
        "history": [{"i": 0, "seconds": 0.1}, {"i": 1, "seconds": 0.2}],
        "nested": {"x": [1, 2], "seconds": 3.0},
    }
    clean, removed = split_durations(obj)
    assert clean == {"a": 1, "history": [{"i": 0}, {"i": 1}], "nested": {"x": [1, 2]}}
    assert removed == {
        "train_seconds": 2.5,
        "history": [{"seconds": 0.1}, {"seconds": 0.2}],
        "nested": {"seconds": 3.0},
    }
    assert merge_durations(clean, removed) == obj
    assert split_durations({"a": [1, 2]}) == ({"a": [1, 2]}, {})
