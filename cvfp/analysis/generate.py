"""Text generation with a trained Phase 2 model (the CLI: `python -m tasks.generate`).

The context is built token by token exactly as in the sequential pass (zero start): after
token t, (context_t, token_out_t) = model(context_{t-1}, embed(t)), and the next token is
sampled from model.logits(context_t, token_out_t), the same pairing Phase 2 trained on
(C*[i] with token_out from (C*[i-1], embed[i])).
"""

from __future__ import annotations

from pathlib import Path

import torch

from cvfp.core.checkpoint import CheckpointError, load_state, read_checkpoint
from cvfp.core.model import CVFPModel
from cvfp.params import ModelParams


def load_model(checkpoint: str | Path, vocab_size: int) -> CVFPModel:
    """Rebuild the model from the params stored in the checkpoint itself, so generation does
    not depend on params.yaml still matching; a tokenizer with a different vocabulary shows
    up as a shape mismatch naming the file and both shapes."""
    state = read_checkpoint(checkpoint)
    try:
        model_params = ModelParams.model_validate(state["params"]["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{checkpoint}: no valid `params.model` in the checkpoint ({type(err).__name__}: "
            f"{str(err)[:200]}); pass a model.pt written by the phase2 stage"
        ) from None
    model = CVFPModel.from_params(model_params, vocab_size)
    load_state(checkpoint, model, state)
    return model.eval()


@torch.no_grad()
def generate(
    model: CVFPModel,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    eos_id: int | None = None,
) -> list[int]:
    """Sample up to max_new_tokens ids after prompt_ids; stops after eos_id. Deterministic
    for a seed (own torch.Generator, not the global RNG)."""
    if not prompt_ids:
        raise ValueError("prompt is empty: give at least one token to start from")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    gen = torch.Generator().manual_seed(seed)
    context = torch.zeros(1, model.context_dim)
    new: list[int] = []
    token = torch.zeros(0)  # replaced below: the prompt is not empty
    for tok in prompt_ids:
        context, token = model(context, model.embed(torch.tensor([tok])))
    for _ in range(max_new_tokens):
        # float64: a tiny temperature (1e-40) is still a number there; beyond that, say so
        logits = model.logits(context, token)[0].double() / temperature
        if not torch.isfinite(logits).all():
            raise ValueError(
                f"temperature={temperature} is too small: logits / temperature overflow to "
                f"inf; use a temperature >= 1e-3 (--temperature / generate.temperature), or "
                f"top_k=1 for greedy decoding"
            )
        if 0 < top_k < logits.numel():
            kth = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        new.append(nxt)
        if nxt == eos_id:
            break
        context, token = model(context, model.embed(torch.tensor([nxt])))
    return new


def generate_text(
    model: CVFPModel,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
) -> str:
    """The prompt and its continuation as text. `tokenizer` is a transformers tokenizer of
    the model's vocabulary; an empty prompt starts from eos (as after a conversation). The
    prompt is plain text: `<|endoftext|>` or `<|user|>` in it are encoded as that text, never
    as the special ids (as in training, cvfp.data.tokenization.encode_text)."""
    ids = tokenizer(prompt, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    if not ids and tokenizer.eos_token_id is not None:
        ids = [tokenizer.eos_token_id]
    new = generate(model, ids, max_new_tokens, temperature, top_k, seed, tokenizer.eos_token_id)
    return tokenizer.decode(ids + new, skip_special_tokens=True)
