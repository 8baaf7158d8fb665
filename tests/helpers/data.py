"""Tiny conversations as the data stages read them, and running those stages in a directory."""

import json
from pathlib import Path

import pandas as pd

from cvfp.params import load_params
from helpers import ROOT

CONVS = [
    [("user", "Hello there, how are you?"), ("assistant", "I am fine, thank you.")],
    [
        ("user", "What is a fixed point?"),
        ("assistant", "A point that a map sends to itself."),
        ("user", "Thanks!"),
        ("assistant", "You are welcome."),
    ],
    [("user", "Tell me a joke."), ("assistant", "I would, but I forgot it.")],
    [("user", "Bye."), ("assistant", "Goodbye, see you.")],
]


def params(**overrides):
    return load_params(
        ROOT / "params.yaml", {k.replace("__", "."): v for k, v in overrides.items()}
    )


def rows(convs=CONVS):
    return [
        {
            "prompt": c[0][1],
            "prompt_id": f"id{i}",
            "messages": [{"role": r, "content": t} for r, t in c],
        }
        for i, c in enumerate(convs)
    ]


def run_stages(tmp_path, monkeypatch, *stages, **overrides):
    from tasks import download, split, tokenize

    monkeypatch.chdir(tmp_path)
    p = params(**overrides)
    mods = {"download": download, "tokenize": tokenize, "split": split}
    return [mods[s].run(p) for s in stages]


def write_records(path: Path, records: list) -> Path:
    """`records` as .jsonl, .json (one array) or .parquet, by the suffix of `path`."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif path.suffix == ".json":
        path.write_text(json.dumps(records, indent=2))
    else:
        pd.DataFrame(records).to_parquet(path)
    return path
