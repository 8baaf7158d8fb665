"""A tiny Phase 2 setting: a 12-token vocabulary, its conversations and model, and a project
directory as the stages before materialize leave it (`tiny_project`), and C* of a model
as the materialize stage writes it (`materialize`, `make_cstar`)."""

import torch

from cvfp.core.checkpoint import save_checkpoint
from cvfp.core.model import CVFPModel
from cvfp.materialize.cstar import materialize_sharded, open_cstar
from cvfp.params import ModelParams
from cvfp.phase2.data import PositionData

V = 12
CONVS = [[1, 2, 3, 4, 5, 6, 7], [3, 3, 1], [5, 6, 7, 8, 9, 10, 11, 2, 3, 4, 1], [2, 9], [4]]


TINY_MODEL = ModelParams(
    context_dim=16,
    embed_dim=16,
    hidden_dim=32,
    layer_structure=[1, 1],
    layernorm_mix=1.0,
    init_std=0.1,
    bias_init_std=0.01,
    embedding="random_frozen",
    embed_init_std=0.02,
    pretrained_name="gpt2",
)


def tiny_model(seed=0, vocab=V):
    torch.manual_seed(seed)
    return CVFPModel.from_params(TINY_MODEL, vocab)


def cfg(tiny_params, **kw):
    base = {"epochs": 3, "batch_size": 8, "lr": 0.01, "patience": 3}
    return tiny_params.phase2.model_copy(update={**base, **kw})


TEST_IDS = ["t0", "t1", "t1", "t2"]  # t1 was cut in two pieces (an unseen id, cvfp.data.splitting)


def tiny_project(root, tiny_params, test=None, test_ids=None):
    """data/split, data/tokenizer and a Phase 1 checkpoint as the earlier stages write them."""
    test = [[2, 3, 4, 5, 1], [6, 7, 8], [9, 10, 11], [4]] if test is None else test
    test_ids = TEST_IDS if test_ids is None else test_ids
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<eos>"] + [f"w{i}" for i in range(1, V)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<eos>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>").save_pretrained(
        root / "data/tokenizer"
    )
    for name, convs in (("train", CONVS * 3), ("val", CONVS[:3]), ("test", test)):
        Dataset.from_dict(
            {
                "conversation_id": test_ids
                if name == "test"
                else [str(i) for i in range(len(convs))],
                "input_ids": convs,
                "n_tokens": [len(c) for c in convs],
            }
        ).save_to_disk(str(root / f"data/split/{name}"))
    save_checkpoint(
        root / "cache/phase1/model.pt", tiny_model(), tiny_params.model_dump(), vocab_size=V
    )


def stage_params(tiny_params):
    """tiny_params for running the materialize and phase2 stages on a tiny project."""
    return tiny_params.model_copy(
        update={
            "materialize": tiny_params.materialize.model_copy(update={"chunk_tokens": 10}),
            "phase2": cfg(tiny_params, epochs=2),
            "baselines": tiny_params.baselines.model_copy(update={"transformer_n_positions": 8}),
        }
    )


def materialize(model, corpora, out, chunk, reset):
    """C* of a tiny_model as the materialize stage writes it: from its checkpoint, in shards
    (of 2 conversations, so that several are combined)."""
    ckpt = out.parent / "phase1.pt"
    save_checkpoint(ckpt, model, {}, vocab_size=model.vocab_size)
    return materialize_sharded(ckpt, corpora, out, TINY_MODEL, model.vocab_size, chunk, reset, 2)


def make_cstar(model, corpus, tmp_path, chunk=5):
    """The train split's Phase 2 positions over C* of `model` on `corpus`."""
    materialize(model, {"train": corpus}, tmp_path / "cstar", chunk, "conversation")
    return PositionData.from_corpus(corpus, open_cstar(tmp_path / "cstar", "train", corpus, 16))
