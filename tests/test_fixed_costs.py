"""Issue 24's per-process fixed costs, cut without changing a number: `cvfp.runtime.utils.adam` (no
torch._dynamo import), materialize without torch._inductor, `tasks.layout.read_yaml` (parsed
once while unchanged) and `orchestration.cstar_in_memory_mb` (memory only: the same bytes)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from cvfp.core.corpus import Corpus
from cvfp.materialize.cstar import CstarRows, open_cstar
from helpers import ROOT
from helpers.phase2 import CONVS, stage_params, tiny_model, tiny_project
from tasks.layout import read_yaml

TRAIN = """
import hashlib, sys
import torch
from cvfp.runtime.utils import adam


def train(make):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    h = hashlib.sha256()
    for fused in (True, False):
        opt = make(m.parameters(), lr=0.01, fused=fused)
        for _ in range(15):
            opt.zero_grad(set_to_none=True)
            m(torch.randn(4, 16)).pow(2).mean().backward()
            torch.nn.utils.clip_grad_norm_(list(m.parameters()), 0.5)
            opt.step()
        opt.load_state_dict(opt.state_dict())
        for st in opt.state_dict()["state"].values():
            h.update(b"".join(v.numpy().tobytes() for v in st.values()))
    h.update(b"".join(p.detach().numpy().tobytes() for p in m.parameters()))
    return h.hexdigest(), "torch._dynamo" in sys.modules, torch.is_grad_enabled()


# adam() first (dynamo not loaded: its own path), then torch's Adam (which loads dynamo),
# then adam() again (dynamo loaded: it takes torch's path)
for make in (adam, torch.optim.Adam, adam):
    print(*train(make))
"""


def _python(code: str, *args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_adam_trains_to_the_same_bits_without_importing_dynamo():
    out = _python(TRAIN)
    ours, theirs, ours_after = out[0:3], out[3:6], out[6:9]
    digest = theirs[0]
    assert theirs[1:] == ["True", "True"]  # torch's Adam imports dynamo: what adam() avoids
    assert ours == [digest, "False", "True"]
    assert ours_after == [digest, "True", "True"]


MATERIALIZE = """
import sys
import numpy as np, torch
from cvfp.core.checkpoint import save_checkpoint
from cvfp.materialize.cstar import materialize_shard
from helpers.phase2 import TINY_MODEL, V, tiny_model
save_checkpoint(sys.argv[1], tiny_model(), {}, vocab_size=V)
out, offsets = materialize_shard([[np.array([1, 2, 3]), np.array([4, 5])]], sys.argv[1],
                                 TINY_MODEL, V, chunk_tokens=2)
print(out.shape[0], "torch._inductor" in sys.modules, "torch._dynamo" in sys.modules)
"""


def test_materialize_imports_no_compiler(tmp_path):
    code = "import sys; sys.path.insert(0, 'tests')\n" + MATERIALIZE
    assert _python(code, str(tmp_path / "m.pt")) == ["5", "False", "False"]


def test_read_yaml_parses_once_and_again_when_the_file_changes(tmp_path):
    path = tmp_path / "dvc.lock"
    text = (ROOT / "dvc.lock").read_text()
    path.write_text(text)
    first = read_yaml(path)
    assert first == yaml.safe_load(text)
    assert read_yaml(path) is first  # unchanged: not parsed again
    path.write_text("stages: {}\n")  # the flow commits a stage between two reads
    assert read_yaml(path) == {"stages": {}}
    path.write_text("stages: [\n")
    with pytest.raises(yaml.YAMLError):
        read_yaml(path)
    with pytest.raises(OSError):
        read_yaml(tmp_path / "missing.yaml")


def _cstar(tmp_path):
    from cvfp.core.checkpoint import save_checkpoint
    from cvfp.materialize.cstar import materialize_sharded
    from helpers.phase2 import TINY_MODEL, V

    corpus = Corpus.from_conversations(CONVS)
    save_checkpoint(tmp_path / "m.pt", tiny_model(), {}, vocab_size=V)
    materialize_sharded(
        tmp_path / "m.pt", {"train": corpus}, tmp_path / "c", TINY_MODEL, V, 5, "conversation", 2
    )
    return corpus


def test_open_cstar_in_memory_gives_the_same_rows(tmp_path):
    corpus = _cstar(tmp_path)
    size = corpus.n_tokens * 16 * 4
    on_disk = open_cstar(tmp_path / "c", "train", corpus, 16)
    just_over = open_cstar(tmp_path / "c", "train", corpus, 16, size - 1)
    in_memory = open_cstar(tmp_path / "c", "train", corpus, 16, size)
    assert isinstance(on_disk, CstarRows) and isinstance(just_over, CstarRows)
    assert type(in_memory) is np.ndarray and in_memory.dtype == np.float32
    rows = np.array([5, 0, 6, 6, 2, -1, corpus.n_tokens - 1])
    assert np.asarray(on_disk).tobytes() == in_memory.tobytes()
    assert on_disk[rows].tobytes() == in_memory[rows].tobytes()


def _outputs(root) -> dict[str, bytes]:
    names = ["metrics/phase2.json", "metrics/phase2_test_conversations.csv"]
    names += ["plots/phase2_epochs.csv"]
    names += [str(p.relative_to(root)) for p in sorted((root / "cache/phase2").rglob("*"))]
    return {n: (root / n).read_bytes() for n in names if (root / n).is_file()}


def test_cstar_in_memory_is_memory_only(tmp_path, tiny_params, monkeypatch):
    """The phase2 stage writes the same bytes with C* read from disk (0) and from memory
    (the default, which holds a tiny project's C*)."""
    from tasks import materialize as mat_task
    from tasks import phase2 as p2_task

    assert tiny_params.orchestration.cstar_in_memory_mb > 0
    runs = []
    for mb in (0, tiny_params.orchestration.cstar_in_memory_mb):
        root = tmp_path / f"mb{mb}"
        root.mkdir()
        tiny_project(root, tiny_params)
        monkeypatch.chdir(root)
        params = stage_params(tiny_params)
        params = params.model_copy(
            update={
                "orchestration": params.orchestration.model_copy(update={"cstar_in_memory_mb": mb})
            }
        )
        mat_task.run(params)
        p2_task.run(params)
        runs.append(_outputs(root))
    assert "cache/phase2/model.pt" in runs[0] and len(runs[0]) >= 4
    assert runs[0] == runs[1]
    assert json.loads(runs[0]["metrics/phase2.json"])["cvfp"]["val_ppl"] > 1


def test_cstar_in_memory_mb_validated(tiny_params):
    from cvfp.params import ParamsError, load_params

    with pytest.raises(ParamsError, match=r"cstar_in_memory_mb"):
        load_params(ROOT / "params.yaml", {"orchestration.cstar_in_memory_mb": -1})
    assert load_params(ROOT / "params.yaml", {"orchestration.cstar_in_memory_mb": 0})
