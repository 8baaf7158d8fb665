"""The metrics models (cvfp/*/metrics.py): the committed files parse and are written back byte for
byte; a missing, renamed or unknown key is an error that names it."""

import json

import pytest

from cvfp.analysis.metrics import SummaryMetrics
from cvfp.data.metrics import DataMetrics
from cvfp.phase1.metrics import Phase1Metrics
from cvfp.phase2.metrics import Phase2Metrics
from cvfp.runtime.metrics_base import MetricsFileError, parse, read
from cvfp.runtime.utils import write_json
from helpers import ROOT

FILES = {
    "data.json": DataMetrics,
    "phase1.json": Phase1Metrics,
    "phase2.json": Phase2Metrics,
    "summary.json": SummaryMetrics,
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_committed_metrics_parse_and_are_written_back_byte_for_byte(name, tmp_path):
    path = ROOT / "metrics" / name
    m = read(FILES[name], path)
    write_json(tmp_path / name, m.to_dict())  # the stages' writer
    assert (tmp_path / name).read_bytes() == path.read_bytes()


def test_typed_values_from_the_committed_files():
    p1 = read(Phase1Metrics, ROOT / "metrics/phase1.json")
    p2 = read(Phase2Metrics, ROOT / "metrics/phase2.json")
    raw = json.loads((ROOT / "metrics/phase1.json").read_text())
    assert p1.val.trials is not None and p1.val.trials.verdict == raw["val"]["trials"]["verdict"]
    assert p1.train.trials is None  # val only
    assert p1.train.token_loss is None  # objective cvfp: no reconstruction numbers
    assert p2.baselines.bigram.train_seconds is None  # durations are in metrics/timing/


def _data() -> dict:
    return json.loads((ROOT / "metrics/data.json").read_text())


def test_a_missing_key_is_an_error_naming_it():
    d = _data()
    del d["val_tokens"]
    with pytest.raises(MetricsFileError, match=r"metrics/data\.json does not match DataMetrics"):
        parse(DataMetrics, d, "metrics/data.json")
    with pytest.raises(MetricsFileError, match=r"val_tokens: Field required"):
        parse(DataMetrics, d, "metrics/data.json")


def test_a_renamed_key_names_both_the_missing_and_the_unknown_key():
    p2 = json.loads((ROOT / "metrics/phase2.json").read_text())
    p2["cvfp"]["val_perplexity"] = p2["cvfp"].pop("val_ppl")
    with pytest.raises(MetricsFileError) as err:
        parse(Phase2Metrics, p2, "phase2")
    assert "cvfp.val_ppl: Field required" in str(err.value)
    assert "cvfp.val_perplexity: Extra inputs are not permitted" in str(err.value)


def test_a_required_key_may_not_be_null_but_an_optional_one_may_be_absent():
    d = _data()
    d["vocab_size"] = None
    with pytest.raises(MetricsFileError, match="vocab_size"):
        parse(DataMetrics, d, "data")
    d = _data()
    d["source"] = None  # no download stats: written as null, kept
    assert '"source": null' in json.dumps(parse(DataMetrics, d, "data").to_dict())
    p2 = json.loads((ROOT / "metrics/phase2.json").read_text())
    del p2["baselines"]["transformer"]  # baselines.transformer: false
    out = parse(Phase2Metrics, p2, "phase2").to_dict()
    assert "transformer" not in out["baselines"] and list(out) == ["cvfp", "baselines", "ablations"]


def test_read_names_the_file_that_is_not_json(tmp_path):
    (tmp_path / "phase1.json").write_text("{broken")
    with pytest.raises(MetricsFileError, match=r"phase1\.json is not valid JSON"):
        read(Phase1Metrics, tmp_path / "phase1.json")


def test_the_summary_is_written_through_its_model(tmp_path):
    """tasks.summary builds metrics/summary.json through SummaryMetrics: the committed stage
    files give the committed summary, byte for byte; a wrong type fails before writing."""
    import shutil

    from tasks.summary import summary_metrics, write_summary

    for name in ("data.json", "phase1.json", "phase2.json"):
        shutil.copy(ROOT / "metrics" / name, tmp_path / name)
    committed = json.loads((ROOT / "metrics/summary.json").read_text())
    write_summary(tmp_path, committed["warnings"])  # the report stage passes its count
    assert (tmp_path / "summary.json").read_bytes() == (ROOT / "metrics/summary.json").read_bytes()
    with pytest.raises(ValueError, match="p2_best_epoch"):
        summary_metrics({"phase2": {"cvfp": {"best_epoch": "two"}}})
