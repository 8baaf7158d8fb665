"""Tiny conversations as the data stages read them, and running those stages in a directory."""

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
