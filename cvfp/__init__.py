"""cvfp: the New-LLM / CVFP library (plain PyTorch; no Prefect, DVC or GX).

Packages: runtime, data, core, phase1, materialize, phase2, analysis (docs/code.md: what
each holds); params and params_sections (params.yaml's schema).
Import what you need from the submodule: `from cvfp.core.model import CVFPModel`.
"""
