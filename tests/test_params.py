import pytest
from conftest import ROOT
from conftest import write_params as write

from cvfp.params import ParamsError, load_params


def test_defaults_load_with_seed_algorithm_values():
    p = load_params(ROOT / "params.yaml")
    assert p.model.layer_structure == [1] * 6 and p.seed == 42
    assert (p.phase1.dist_reg_weight, p.phase1.lr, p.phase1.convergence_threshold) == (
        0.9,
        0.002,
        0.1,
    )
    assert (p.phase1.min_converged_ratio, p.phase1.max_iterations, p.model.layernorm_mix) == (
        0.95,
        10,
        1.0,
    )


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
            lambda r: r["model"].update(hidden_dim=100),
            r"model: .*hidden_dim=100 must equal context_dim \+ embed_dim = 64 \+ 64 = 128",
        ),
        (
            lambda r: r["data"].update(source="web"),
            r"data\.source = 'web': Input should be 'chatterbot', 'ultrachat' or 'local'",
        ),
        (
            lambda r: r["phase2"].update(heads="per_block", block_weights=[1.0]),
            r"block_weights has 1 weights but .* 6 blocks",
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


def test_overrides_are_validated():
    p = load_params(ROOT / "params.yaml", {"phase1.lr": 0.01})
    assert p.phase1.lr == 0.01
    with pytest.raises(ParamsError, match=r"phase1\.lr = -1"):
        load_params(ROOT / "params.yaml", {"phase1.lr": -1})
