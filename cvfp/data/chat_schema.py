"""The conversation schema every data source is mapped to (HuggingFaceH4/ultrachat_200k):
`prompt` (str), `prompt_id` (str) and `messages` (list of `{role, content}`, user first, then
alternating user/assistant), and `DataError`, the error every reader raises on unusable input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import datasets

ROLES = ("user", "assistant")
# Canonical column types: every source is cast to these so later stages see one schema.
FEATURES = datasets.Features(
    {
        "prompt": datasets.Value("string"),
        "prompt_id": datasets.Value("string"),
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
    }
)


class DataError(ValueError):
    """Unusable input data; the message names the file (or dataset) and the field."""


def prompt_id(prompt: str, origin: str) -> str:
    # UltraChat uses sha256(prompt); `origin` (file + index) keeps repeated prompts unique.
    return hashlib.sha256(f"{origin}\n{prompt}".encode()).hexdigest()


def make_record(turns: Iterable[str], origin: str) -> dict:
    """One conversation from its turns (user first, alternating)."""
    turns = ["" if t is None else str(t) for t in turns]
    messages = [{"role": ROLES[i % 2], "content": t} for i, t in enumerate(turns)]
    prompt = turns[0] if turns else ""
    return {"prompt": prompt, "prompt_id": prompt_id(prompt, origin), "messages": messages}
