import pytest
import yaml

from cvfp.params import ParamsError, load_params
from helpers import ROOT
from helpers import write_params as write


def test_the_file_loads_as_written():
    """Validation keeps every value of params.yaml (no default or coercion replaces one):
    what the file says is what the stages get."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = load_params(ROOT / "params.yaml")
    dump = params.model_dump(mode="json")
    assert dump == raw
    # memory-only keys are left out of what outputs record (checkpoints, params.json, report)
    record = params.record(mode="json")
    assert record["orchestration"] == {
        k: v for k, v in raw["orchestration"].items() if k != "cstar_in_memory_mb"
    }
    assert {k: v for k, v in record.items() if k != "orchestration"} == {
        k: v for k, v in raw.items() if k != "orchestration"
    }


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda r: r["phase1"].pop("lr"), r"phase1\.lr: missing"),
        (
            lambda r: r["phase1"].update(lrr=0.1),
            r"phase1\.lrr: unknown key \(typo\?\) with value 0\.1",
        ),
        (
            lambda r: r["phase1"].update(max_iterations="ten"),
            r"phase1\.max_iterations = 'ten': Input should be a valid integer",
        ),
        (
            lambda r: r["phase1"].update(dist_reg_weight=1.5),
            r"phase1\.dist_reg_weight = 1\.5: Input should be less than or equal to 1",
        ),
        (
            lambda r: r["phase1"].update(mode="fast"),
            r"phase1\.mode = 'fast': Input should be 'parallel' or 'sequential'",
        ),
        (
            lambda r: r["phase1"]["diversity"].update(kind="x"),
            r"phase1\.diversity\.kind = 'x': Input should be 'global_mean', 'ema_variance' or 'distribution'",
        ),
        (
            lambda r: r["model"].update(context_dim=24, embed_dim=40, hidden_dim=100),
            r"model: .*hidden_dim=100 must equal context_dim \+ embed_dim = 24 \+ 40 = 64",
        ),
        (
            lambda r: r["data"].update(source="web"),
            r"data\.source = 'web': Input should be 'chatterbot', 'ultrachat', 'local' or 'sharegpt'",
        ),
        (
            lambda r: (
                r["model"].update(layer_structure=[1, 2, 1]),
                r["phase2"].update(heads="per_block", block_weights=[1.0]),
            ),
            r"block_weights has 1 weights but .* 3 blocks",
        ),
        (
            lambda r: r["split"].update(val_fraction=0.5, test_fraction=0.5),
            r"split: val_fraction \+ test_fraction = 0\.5 \+ 0\.5 leaves nothing for train",
        ),
        (lambda r: r["split"].pop("test_fraction"), r"split\.test_fraction: missing"),
        (
            lambda r: r["phase2"].update(context="none"),
            r"phase2\.context = 'none': Input should be 'cstar' or 'zero'",
        ),
        (
            lambda r: r["baselines"].update(bigram_k_grid=[0.1, 0.0]),
            r"baselines: bigram_k_grid=\[0\.1, 0\.0\]: every k must be > 0",
        ),
    ],
)
def test_bad_params_name_key_value_and_allowed(tmp_path, mutate, expected):
    with pytest.raises(ParamsError, match=expected):
        load_params(write(tmp_path, mutate))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_overrides_set_that_key_only_and_are_validated():
    base = load_params(ROOT / "params.yaml")
    p = load_params(ROOT / "params.yaml", {"phase1.lr": base.phase1.lr * 5})
    assert p.phase1.lr == base.phase1.lr * 5
    changed = p.model_dump()
    changed["phase1"]["lr"] = base.phase1.lr
    assert changed == base.model_dump()  # nothing else changed
    with pytest.raises(ParamsError, match=r"phase1\.lr = -1"):
        load_params(ROOT / "params.yaml", {"phase1.lr": -1})
