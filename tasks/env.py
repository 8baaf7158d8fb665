"""Environment defaults for every entry point (stages, flows, tests, benchmarks), set once here.

Call `set_env_defaults()` before GX, Prefect, DVC or Hugging Face libraries are imported; a
value already in the environment wins.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

DEFAULTS = {
    # no usage reports from the libraries (the pipeline runs offline by default)
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # tokenizers' Rust thread pool warns (and can deadlock) in a process forked after it ran;
    # encoding runs on our own threads (tokenizer.num_proc) or shard workers instead
    "TOKENIZERS_PARALLELISM": "false",
}


def set_env_defaults() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    # The flows and stages start `dvc`, `git` and `python -m tasks.<stage>` processes: with the
    # venv not activated (`.venv/bin/python -m flows.compare`), find them beside this
    # interpreter instead of failing with "No such file or directory: 'dvc'".
    bin_dir = str(Path(sys.executable).parent)
    if shutil.which("dvc") is None and (Path(bin_dir) / "dvc").exists():
        os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
