"""A rerun's reason names the changed params by key, with old -> new values
(flows/dvc_state.py), from DVC's status, dvc.lock's recorded params and params.yaml. The
same on a real DVC project: tests/test_pipeline.py."""

from flows.dvc_state import describe, flatten, param_changes

RECORDED = {"phase2.epochs": 10, "phase2.lr": 0.002, "seed": 42}
EVERYTHING = {**RECORDED, "phase1.objective": "cvfp"}
CURRENT = {
    "seed": 42,
    "phase1": {"objective": "none"},
    "phase2": {"epochs": 2, "lr": 0.002, "heads": "single"},
    "orchestration": {"workers": 3},
}


def test_a_section_names_its_changed_keys_with_old_and_new_values():
    status = {
        "phase2": [
            {
                "changed deps": {
                    "params.yaml": {"phase2": "modified"},
                    "data/split/train": "modified",
                }
            }
        ]
    }
    assert describe(status, RECORDED, EVERYTHING, CURRENT) == (
        'changed params: phase2.epochs 10 -> 2, phase2.heads (unset) -> "single"; '
        "changed deps: data/split/train (modified)"
    )


def test_the_whole_file_dep_names_the_keys_any_stage_records():
    status = {"report": [{"changed deps": {"params.yaml": "modified"}}]}
    assert describe(status, {}, EVERYTHING, CURRENT) == (
        'changed params: phase1.objective "cvfp" -> "none", phase2.epochs 10 -> 2'
    )
    same = {**CURRENT, "phase1": {"objective": "cvfp"}, "phase2": {"epochs": 10, "lr": 0.002}}
    assert describe(status, {}, EVERYTHING, same) == (
        "changed params: keys no stage lists (e.g. orchestration, compare)"
    )


def test_without_params_the_reason_is_dvcs_own_and_strings_pass_through():
    status = {"x": ["always changed", {"changed outs": {"out": "deleted"}}]}
    assert describe(status) == "always changed; changed outs: out (deleted)"
    assert describe({}) == "not in dvc.lock yet"


def test_flatten_and_param_changes():
    assert flatten({"a": {"b": 1, "c": {}}, "d.e": [1, 2]}) == {"a.b": 1, "a.c": {}, "d.e": [1, 2]}
    assert param_changes({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == [
        "b 2 -> 3",
        "c (unset) -> 4",
    ]
