"""Prefect flows composing the stages in tasks/ (python -m flows.pipeline)."""
