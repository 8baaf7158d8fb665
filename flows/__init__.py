"""Prefect flows composing the stages in tasks/ (python -m flows.pipeline)."""

from tasks.env import set_env_defaults

set_env_defaults()  # before any flow module imports Prefect, GX or DVC

from . import server_lifetime  # noqa: E402,F401  (temporary Prefect server dies with this process)
