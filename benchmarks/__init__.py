"""Benchmarks: `python -m benchmarks.<name>` (make bench)."""

from tasks.env import set_env_defaults

set_env_defaults()  # the stages' environment (tokenizer threads off, no telemetry)
