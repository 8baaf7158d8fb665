"""params.yaml is strict: every key refuses wrong types, infinities and empty strings;
ranges, duplicates, paths and long values (issue 23 item 3)."""

import pytest

from helpers import ROOT

# ---------------------------------------------------------------- item 3: strict params


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            if prefix == "compare." and k == "arms":
                continue  # free-form overrides, validated per arm (arm_params)
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], node


def _raw():
    import yaml

    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _kind(key: str):
    """The type params.py declares for a dotted key (int, float, bool, str, list[...])."""
    import types
    import typing

    from pydantic import BaseModel

    from cvfp.params import Params

    model: typing.Any = Params
    for part in key.split("."):
        ann = model.model_fields[part].annotation
        model = ann
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        ann = args[0]
    if typing.get_origin(ann) is list:
        inner = typing.get_args(ann)[0]
        inner = typing.get_args(inner)[0] if typing.get_origin(inner) is typing.Annotated else inner
        return ("list", inner)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return None
    return ann


def _wrong_values(key, value):
    """Values YAML gives that are the wrong type (or not finite / empty) for this key."""
    kind = _kind(key)
    if kind is bool:
        return ["yes", 1]
    if kind is int:
        return ["3", True, 2.5]
    if kind is float:
        return ["0.5", True, float("inf"), float("nan")]
    if kind is str:
        return ["", 3]
    if isinstance(kind, tuple) and kind[1] in (int, float) and value:
        return [[str(value[0])] + value[1:]] + (
            [[float("nan")] + value[1:]] if kind[1] is float else []
        )
    return []


CASES = [(k, bad) for k, v in _leaves(_raw()) for bad in _wrong_values(k, v)]


@pytest.mark.parametrize("key, bad", CASES, ids=[f"{k}={b!r}" for k, b in CASES])
def test_every_key_refuses_wrong_types_infinities_and_empty_strings(tmp_path, key, bad):
    """Generated from params.yaml's own leaves: a key added to any section later is held to
    the same rules (strict types, finite numbers, no empty strings) without a new test."""
    import re

    from cvfp.params import ParamsError, load_params, set_dotted
    from helpers import write_params

    with pytest.raises(ParamsError, match=rf"(?m)^  {re.escape(key)}[ .=:]"):
        load_params(write_params(tmp_path, lambda r: set_dotted(r, key, bad)))


@pytest.mark.parametrize(
    "key, text, expected",
    [
        ("phase2.epochs", "'3'", r"phase2\.epochs = '3': .* integer \(write it without quotes\)"),
        ("phase2.epochs", "true", r"phase2\.epochs = True: .* integer \(a number, not true"),
        ("deterministic", "'yes'", r"deterministic = 'yes': Input should be a valid boolean"),
        ("phase2.lr", ".inf", r"phase2\.lr = inf: Input should be a finite number"),
        ("phase2.block_weights", "[.nan, 1.0]", r"phase2\.block_weights\.0 = nan: .* finite"),
        ("phase2.block_weights", "[-1.0, 1.0]", r"block_weights\.0 = -1\.0: .* greater than or"),
    ],
)
def test_the_issues_yaml_values_are_refused(tmp_path, key, text, expected):
    from cvfp.params import ParamsError, load_params, set_dotted
    from helpers import write_params

    value = yaml_load(f"v: {text}")["v"]
    with pytest.raises(ParamsError, match=expected):
        load_params(write_params(tmp_path, lambda r: set_dotted(r, key, value)))


def test_seed_range_duplicates_empty_paths_and_long_values(tmp_path):
    from cvfp.params import ParamsError, load_params
    from helpers import write_params

    with pytest.raises(
        ParamsError, match=r"seed = 4294967296: Input should be less than 4294967296"
    ):
        load_params(write_params(tmp_path, lambda r: r.update(seed=2**32)))
    with pytest.raises(ParamsError, match=r"compare\.seeds\.1 = 4294967296"):
        load_params(write_params(tmp_path, lambda r: r["compare"].update(seeds=[1, 2**32])))
    assert load_params(write_params(tmp_path, lambda r: r.update(seed=2**32 - 1))).seed == 2**32 - 1
    with pytest.raises(ParamsError, match=r"data\.path = '': String should have at least 1"):
        load_params(write_params(tmp_path, lambda r: r["data"].update(path="")))
    with pytest.raises(ParamsError, match=r"divergence\.max_loss = inf: Input should be a finite"):
        load_params(
            write_params(
                tmp_path, lambda r: r["phase1"]["divergence"].update(max_loss=float("inf"))
            )
        )
    text = (ROOT / "params.yaml").read_text()
    dup = tmp_path / "dup.yaml"
    dup.write_text(text + "seed: 7\n")  # the last would win silently
    with pytest.raises(
        ParamsError,
        match=rf"(?s)duplicate key 'seed' \(first on line \d+\).*line {len(text.splitlines()) + 1}",
    ):
        load_params(dup)
    bomb = tmp_path / "bomb.yaml"  # an anchor expanding to a large value under an unknown key
    bomb.write_text(
        text
        + "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        + "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nbomb: [*c, *c, *c, *c, *c, *c, *c, *c]\n"
    )
    with pytest.raises(ParamsError) as err:
        load_params(bomb)
    assert "bomb: unknown key" in str(err.value) and len(str(err.value)) < 2000
    # YAML 1.2 numbers: 1e-3 is a float (YAML 1.1 would read text, which strict refuses)
    assert load_params(ROOT / "params.yaml", {"phase1.lr": yaml_load("1e-3")}).phase1.lr == 1e-3


def yaml_load(text):
    from cvfp.params import yaml_load as load

    return load(text)
