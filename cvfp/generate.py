"""Text generation with a trained Phase 2 model.

The context is built token by token exactly as in the sequential pass (zero start): after
token t, (context_t, token_out_t) = model(context_{t-1}, embed(t)), and the next token is
sampled from model.logits(context_t, token_out_t), the same pairing Phase 2 trained on
(C*[i] with token_out from (C*[i-1], embed[i])).

    python -m cvfp.generate --prompt "Hello" --max-new-tokens 40 --temperature 1.0 --top-k 50 --seed 42
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from pydantic import ValidationError

from .checkpoint import load_state, read_checkpoint
from .model import CVFPModel
from .params import GenerateParams, ModelParams, load_params


def load_model(checkpoint: str | Path, vocab_size: int) -> CVFPModel:
    """Rebuild the model from the params stored in the checkpoint itself, so generation does
    not depend on params.yaml still matching; a tokenizer with a different vocabulary shows
    up as a shape mismatch naming the file and both shapes."""
    state = read_checkpoint(checkpoint)
    model = CVFPModel.from_params(ModelParams.model_validate(state["params"]["model"]), vocab_size)
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
    token = None
    for tok in prompt_ids:
        context, token = model(context, model.embed(torch.tensor([tok])))
    for _ in range(max_new_tokens):
        logits = model.logits(context, token)[0] / temperature
        if 0 < top_k < logits.numel():
            kth = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        new.append(nxt)
        if nxt == eos_id:
            break
        context, token = model(context, model.embed(torch.tensor([nxt])))
    return new


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m cvfp.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--params", default="params.yaml", help="defaults for the options below")
    parser.add_argument("--prompt", required=True)
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="default: generate.max_new_tokens"
    )
    parser.add_argument(
        "--temperature", type=float, default=None, help="default: generate.temperature"
    )
    parser.add_argument(
        "--top-k", type=int, default=None, help="0 = no top-k; default: generate.top_k"
    )
    parser.add_argument("--seed", type=int, default=None, help="default: seed")
    parser.add_argument("--checkpoint", default="cache/phase2/model.pt")
    parser.add_argument("--tokenizer", default="data/tokenizer")
    args = parser.parse_args(argv)
    p = load_params(args.params) if Path(args.params).exists() else None

    def pick(value, default):
        if value is not None:
            return value
        if p is None:
            parser.error(f"{args.params} not found: give the option explicitly")
        return default(p)

    opts = {
        "max_new_tokens": pick(args.max_new_tokens, lambda q: q.generate.max_new_tokens),
        "temperature": pick(args.temperature, lambda q: q.generate.temperature),
        "top_k": pick(args.top_k, lambda q: q.generate.top_k),
    }
    try:  # the options obey the generate section's own rules
        GenerateParams.model_validate(opts)
    except ValidationError as err:
        parser.error(
            "; ".join(
                f"--{e['loc'][0].replace('_', '-')} {e['input']!r}: {e['msg']}"
                for e in err.errors()
            )
        )
    from transformers import AutoTokenizer

    if not Path(args.tokenizer).exists():
        parser.error(f"tokenizer not found: {args.tokenizer}")
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    model = load_model(args.checkpoint, len(tok))
    ids = tok(args.prompt, add_special_tokens=False)["input_ids"]
    if not ids and tok.eos_token_id is not None:  # empty prompt: start as after a conversation
        ids = [tok.eos_token_id]
    new = generate(
        model,
        ids,
        opts["max_new_tokens"],
        opts["temperature"],
        opts["top_k"],
        pick(args.seed, lambda q: q.seed),
        tok.eos_token_id,
    )
    text = tok.decode(ids + new, skip_special_tokens=True)
    print(text)
    return text


if __name__ == "__main__":
    main()
