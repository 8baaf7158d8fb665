"""Pretrained input embeddings (e.g. GPT-2's wte, 768-d) copied from a Hugging Face model."""

from __future__ import annotations

import torch

from cvfp.runtime.utils import is_local, require_hub


def load_pretrained_embeddings(
    name: str, vocab_size: int, embed_dim: int, timeout: float = 5.0
) -> torch.Tensor:
    """Input-embedding matrix of `name` (hub id or local save_pretrained dir), checked
    against the tokenizer's vocab size and model.embed_dim."""
    from transformers import AutoModel

    if not is_local(name):
        require_hub("model.pretrained_name", name, timeout)
    weights = AutoModel.from_pretrained(name).get_input_embeddings().weight.detach().clone()
    rows, dim = weights.shape
    if dim != embed_dim:
        raise ValueError(
            f"model.pretrained_name={name!r} has {dim}-d embeddings but "
            f"model.embed_dim={embed_dim}; set model.embed_dim={dim}"
        )
    if rows < vocab_size:
        raise ValueError(
            f"model.pretrained_name={name!r} has {rows} embeddings but the tokenizer "
            f"has {vocab_size} tokens; use tokenizer.kind=pretrained with the same name"
        )
    return weights[:vocab_size]
