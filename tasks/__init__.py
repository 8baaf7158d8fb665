"""Pipeline stages: each module turns params + input paths into cvfp/ calls and output paths.

Run one alone with `python -m tasks.<stage> [--params params.yaml]` (no Prefect, no DVC).
"""
