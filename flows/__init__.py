"""Prefect flows composing the stages in tasks/ (python -m flows.pipeline)."""

from . import server_lifetime  # noqa: E402,F401  (temporary Prefect server dies with this process)
