"""cvfp: the New-LLM / CVFP library (plain PyTorch; no Prefect, DVC or GX).

Modules: model (CVFPLayer/Block/Model), corpus (conversations, sequential pass), phase1
(fixed-point trainer), diversity, checks, cstar (C* materialization), phase2, baselines,
generate, data / tokenization / splitting, params (params.yaml schema), metrics (the metrics
files' schemas), check_rules (the checks' thresholds and wording), formats, report.
Import what you need from the submodule: `from cvfp.model import CVFPModel`.
"""
