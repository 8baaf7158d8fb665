"""cvfp: the New-LLM / CVFP library (plain PyTorch; no Prefect, DVC or GX)."""
from .model import CVFPBlock, CVFPLayer, CVFPModel
from .params import Params, ParamsError, load_params

__all__ = ["CVFPBlock", "CVFPLayer", "CVFPModel", "Params", "ParamsError", "load_params"]
