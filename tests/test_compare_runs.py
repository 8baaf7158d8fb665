"""How flows.compare runs experiments (tasks/compare.py): the thread count each gets, the
fingerprint that decides whether a finished experiment is restored, and the fixed costs cut
from every stage process (cvfp/runtime/utils.py). The experiments themselves run in
test_compare_flow.py's session job."""

import json
import os
import subprocess
import sys

import pytest

from cvfp.params import ParamsError, arm_params, load_params
from helpers import ROOT
from tasks.compare import plan, run_order
from tasks.compare_experiment import (
    FINGERPRINT,
    Source,
    exp_ref,
    fingerprint,
    reusable,
    threads_per_experiment,
)

CORES = len(os.sched_getaffinity(0))


def test_threads_per_experiment_split_the_cores_or_follow_the_setting():
    assert threads_per_experiment(1) == CORES
    assert threads_per_experiment(CORES) == 1
    assert threads_per_experiment(4 * CORES) == 1  # never 0
    assert threads_per_experiment(2, threads=3) == 3


def test_runtime_threads_is_a_param_the_comparison_owns():
    params = load_params(ROOT / "params.yaml")
    assert params.runtime.threads is None  # the pipeline alone: torch's default
    assert arm_params(params, {"runtime.threads": 2}).runtime.threads == 2
    with pytest.raises(ParamsError, match="runtime.threads"):
        arm_params(params, {"runtime.threads": 0})
    with pytest.raises(ValueError, match=r"sets the seed and runtime\.threads itself"):
        plan(params, ["none"], 1, {"runtime.threads": 1})
    with pytest.raises(ParamsError, match=r"'runtime.threads' cannot be set by an arm"):
        load_params(ROOT / "params.yaml", {"compare.arms.fast": {"runtime.threads": 1}})


def test_the_longest_experiments_start_first_and_phase1_twins_wait():
    params = load_params(ROOT / "params.yaml")
    exps = plan(params, None, 2)  # the default arms x 2 seeds, seed by seed
    names = [e["name"] for e in exps]
    order, waits_for = run_order(params, exps)
    assert sorted(order) == list(range(len(exps)))  # each once
    started = [names[i] for i in order]
    # the control trains the Transformer (transformer_in_control_only): twice as long, first
    assert started[:2] == ["cmp-none-s42", "cmp-none-s7"]
    assert [e["sets"].get("baselines.transformer", True) for e in exps[:2]] == [True, False]
    # then the other Phase 1 arms in plan order, then no_context: its phase1 stage has the
    # params of none's of the same seed, so it waits for that one and restores phase1 and
    # materialize from DVC's run-cache
    assert started[2:5] == ["cmp-cvfp-s42", "cmp-cvfp_min10-s42", "cmp-reconstruction-s42"]
    assert started[-2:] == ["cmp-no_context-s42", "cmp-no_context-s7"]
    assert {names[i]: names[j] for i, j in waits_for.items()} == {
        "cmp-no_context-s42": "cmp-none-s42",
        "cmp-no_context-s7": "cmp-none-s7",
    }
    # a param of the phase1 stage in the arm (not only phase2's) makes it a run of its own
    other = load_params(
        ROOT / "params.yaml",
        {"compare.arms.no_context": {"phase1.objective": "none", "checks.probe_samples": 50}},
    )
    assert run_order(other, plan(other, None, 2))[1] == {}
    # without the Transformer in the control only, every arm trains it: plan order
    same = load_params(ROOT / "params.yaml", {"compare.transformer_in_control_only": False})
    order, waits_for = run_order(same, plan(same, ["none", "cvfp"], 2))
    assert order == [0, 1, 2, 3] and waits_for == {}
    # an arm that does not validate runs nothing: reported first
    bad = load_params(ROOT / "params.yaml", {"compare.arms.bad": {"phase1.lr": -1.0}})
    order, _ = run_order(bad, plan(bad, ["none", "bad"], 1))
    assert order == [1, 0]


def _source(params_text: str, patch: bytes = b"", baseline: str = "a" * 40) -> Source:
    return Source("repo", baseline, patch, "/cache", params_text)


def _diff(path: str, body: str = "x") -> bytes:
    return f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-{body}\n+y\n".encode()


def test_fingerprint_follows_code_params_and_baseline_only():
    text = (ROOT / "params.yaml").read_text()
    params = load_params(ROOT / "params.yaml")
    exp = plan(params, ["none"], 1)[0]
    base = fingerprint(exp, _source(text))
    assert fingerprint(exp, _source(text)) == base  # deterministic
    # What the experiment computes from: its params, the code, the baseline commit.
    other_seed = {**exp, "sets": {**exp["sets"], "seed": exp["seed"] + 1}}
    assert fingerprint(other_seed, _source(text)) != base
    assert fingerprint(exp, _source(text.replace("lr: 0.002", "lr: 0.003", 1))) != base
    assert fingerprint(exp, _source(text, _diff("cvfp/core/model.py"))) != base
    assert fingerprint(exp, _source(text, baseline="b" * 40)) != base
    # Not inputs: the comparison's own section, how stages are orchestrated, and outputs.
    more_arms = text.replace("run: [none,", "run: [none, cvfp_min10,", 1)
    assert more_arms != text and fingerprint(exp, _source(more_arms)) == base
    for out in ("metrics/phase2.json", "plots/phase2_epochs.csv", "dvc.lock"):
        assert fingerprint(exp, _source(text, _diff(out))) == base, out
    # A params.yaml diff counts through the params it yields, not as text.
    assert fingerprint(exp, _source(text, _diff("params.yaml"))) == base


def _git(cwd, *args) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_a_finished_experiment_is_reused_only_with_the_same_fingerprint(tmp_path, monkeypatch):
    _git(tmp_path, "init", "-q")
    for k, v in (("user.email", "t@example.com"), ("user.name", "t")):
        _git(tmp_path, "config", k, v)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "baseline")
    monkeypatch.chdir(tmp_path)
    head = _git(tmp_path, "rev-parse", "HEAD")
    source = _source((tmp_path / "params.yaml").read_text(), baseline=head)
    exp = plan(load_params(tmp_path / "params.yaml"), ["none"], 1)[0]
    assert reusable(exp, source) is None  # never ran

    def finished(message: str) -> str:
        tree = _git(tmp_path, "rev-parse", "HEAD^{tree}")
        commit = _git(tmp_path, "commit-tree", tree, "-p", head, "-m", message)
        _git(tmp_path, "update-ref", exp_ref(exp["name"], head), commit)
        return commit

    done = finished(f"{exp['name']}\n\n{FINGERPRINT}{fingerprint(exp, source)}")
    assert reusable(exp, source) == done
    changed = {**exp, "sets": {**exp["sets"], "phase2.epochs": 1}}
    assert reusable(changed, source) is None  # same name, other params: runs again
    finished(f"{exp['name']}\n\n{FINGERPRINT}{'0' * 64}")  # made by other code or params
    assert reusable(exp, source) is None
    finished(exp["name"])  # an experiment run by hand, without a fingerprint
    assert reusable(exp, source) is None


def _fresh_python(code: str) -> dict:
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_stage_processes_skip_unused_imports():
    # A stage without tensors (download, tokenize, split, report) does not import torch.
    out = _fresh_python(
        "import json, sys; import tasks.report, tasks.split, tasks.tokenize, tasks.download; "
        "print(json.dumps({'torch': 'torch' in sys.modules}))"
    )
    assert out == {"torch": False}
    # The training stages write their CSV files without pandas (cvfp/runtime/csv_table.py).
    out = _fresh_python(
        "import json, sys; import tasks.phase1, tasks.phase2, tasks.materialize; "
        "print(json.dumps({'pandas': 'pandas' in sys.modules}))"
    )
    assert out == {"pandas": False}
    # Deterministic kernels without importing torch's compiler to set its flag; the stage's
    # thread count applies, and one-thread sections return to it.
    out = _fresh_python(
        "import json, sys, torch; from cvfp.runtime.utils import seed_everything, one_intraop_thread; "
        "seed_everything(0, True, threads=1); a = torch.get_num_threads(); "
        "d = torch.are_deterministic_algorithms_enabled(); "
        "ctx = one_intraop_thread(); ctx.__enter__(); ctx.__exit__(None, None, None); "
        "b = torch.get_num_threads(); seed_everything(0, False); "
        "print(json.dumps({'threads': [a, b], 'det': [d, torch.are_deterministic_algorithms_enabled()], "
        "'inductor': 'torch._inductor' in sys.modules}))"
    )
    assert out == {"threads": [1, 1], "det": [True, False], "inductor": False}


def test_vocab_size_without_transformers_equals_len_of_the_tokenizer(dvc_project):
    from transformers import AutoTokenizer

    from tasks.tokens import read_vocab_size

    tok = dvc_project[0] / "data" / "tokenizer"
    assert read_vocab_size(tok) == len(AutoTokenizer.from_pretrained(str(tok))) > 300
    out = _fresh_python(
        "import json, sys; from tasks.tokens import read_vocab_size; "
        f"n = read_vocab_size({str(tok)!r}); "
        "print(json.dumps({'n': n, 'transformers': 'transformers' in sys.modules}))"
    )
    assert out == {"n": read_vocab_size(tok), "transformers": False}


def test_conversations_read_without_datasets_equal_datasets_reading(dvc_project):
    import numpy as np
    from datasets import load_from_disk

    from tasks.tokens import load_conversations

    for rel in ("data/split/train", "data/split/val", "data/tokenized"):
        path = dvc_project[0] / rel
        ds = load_from_disk(str(path)).with_format("numpy")
        want = [np.asarray(x, dtype=np.int64) for x in ds["input_ids"]]
        got = load_conversations(path)
        assert len(got) == len(want) > 10, rel
        assert all(
            g.dtype == np.int64 and np.array_equal(g, w) for g, w in zip(got, want, strict=True)
        ), rel
    out = _fresh_python(
        "import json, sys; from tasks.tokens import load_conversations; "
        f"n = len(load_conversations({str(dvc_project[0] / 'data/split/train')!r})); "
        "print(json.dumps({'n': n, 'datasets': 'datasets' in sys.modules}))"
    )
    assert out["datasets"] is False and out["n"] > 10


def test_dvc_lock_read_with_the_safe_loader_is_written_the_same(tmp_path):
    """LOCKFILE_PARSER (each experiment's DVC process): DVC's rewrite of dvc.lock after a
    stage, its old entries read with the safe loader, gives the bytes of DVC's own rewrite,
    and params.yaml (comments kept on -S) is still read with the round-trip loader."""
    from tasks.compare_experiment import LOCKFILE_PARSER

    update = (
        "import sys\n"
        "from dvc.utils.serialize import _yaml, modify_yaml\n"
        "with modify_yaml(sys.argv[1]) as data:\n"
        "    kinds = [type(data).__name__, type(_yaml.parse_yaml_for_update('a: 1', 'params.yaml')).__name__]\n"
        "    data['stages']['phase2']['cmd'] = 'python -m tasks.phase2 --changed'\n"
        "    data['stages']['new'] = {'cmd': 'true', 'outs': [{'path': 'x', 'md5': '0123', 'size': 1}]}\n"
        "print(' '.join(kinds))\n"
    )
    lock = (ROOT / "dvc.lock").read_text()
    written, kinds = [], []
    for prefix in (LOCKFILE_PARSER, ""):
        path = tmp_path / ("fast" if prefix else "dvc") / "dvc.lock"
        path.parent.mkdir()
        path.write_text(lock)
        p = subprocess.run(
            [sys.executable, "-c", prefix + update, str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        kinds.append(p.stdout.split())
        written.append(path.read_bytes())
    assert kinds == [["dict", "CommentedMap"], ["CommentedMap", "CommentedMap"]]
    assert written[0] == written[1] and b"--changed" in written[0]
