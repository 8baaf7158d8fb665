"""Environment defaults for every entry point (stages, flows, tests, benchmarks), set once here.

Call `set_env_defaults()` before GX, Prefect, DVC or Hugging Face libraries are imported; a
value already in the environment wins.
"""

from __future__ import annotations

import os

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
