"""tasks/env.py: the environment every entry point sets (telemetry off, the venv's tools)."""

import os
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

SHOW = (
    "import os, shutil; from tasks.env import set_env_defaults; set_env_defaults(); "
    "print(shutil.which('dvc')); print(os.environ['DO_NOT_TRACK'])"
)


def _run(path: str) -> list[str]:
    env = {**os.environ, "PATH": path}
    env.pop("DO_NOT_TRACK", None)
    out = subprocess.run(
        [sys.executable, "-c", SHOW], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_the_venvs_dvc_is_found_without_activating_the_venv():
    # `.venv/bin/python -m flows.compare` with the venv not on PATH: the flows start `dvc`
    venv_dvc = str(Path(sys.executable).parent / "dvc")
    assert _run("/usr/bin:/bin") == [venv_dvc, "1"]


def test_a_dvc_already_on_path_is_kept(tmp_path):
    fake = tmp_path / "dvc"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert _run(f"{tmp_path}:/usr/bin:/bin") == [str(fake), "1"]
