"""Generate text with the trained Phase 2 model (not a DVC stage: it writes nothing).

    python -m tasks.generate --prompt "Hello" --max-new-tokens 40 --temperature 1.0 --top-k 50 --seed 42

Defaults: max_new_tokens, temperature and top_k from `generate:` in params.yaml, the seed
from `seed`; the model from cache/phase2/model.pt, the tokenizer from data/tokenizer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError

from cvfp.analysis.generate import generate_text, load_model
from cvfp.params import GenerateParams, load_params

from .env import set_env_defaults
from .layout import PARAMS, PHASE2_MODEL, TOKENIZER

set_env_defaults()


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--params", default=str(PARAMS), help="defaults for the options below")
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
    parser.add_argument("--checkpoint", default=str(PHASE2_MODEL))
    parser.add_argument("--tokenizer", default=str(TOKENIZER))
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
                f"--{str(e['loc'][0]).replace('_', '-')} {e['input']!r}: {e['msg']}"
                for e in err.errors()
            )
        )
    from .tokens import load_tokenizer

    if not Path(args.tokenizer).exists():
        parser.error(f"tokenizer not found: {args.tokenizer}")
    tok = load_tokenizer(args.tokenizer)
    model = load_model(args.checkpoint, len(tok))
    text = generate_text(model, tok, args.prompt, **opts, seed=pick(args.seed, lambda q: q.seed))
    print(text)
    return text


if __name__ == "__main__":
    main()
