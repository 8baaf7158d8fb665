"""Phase 2 evaluation: the model's logits on a `Batch` (C* replaces the context outputs),
loss and accuracy over a split (`evaluate`, also the trainer's val pass), and the held-out
test pass, run once after training with the model chosen on val: nats and top-1 hits per
target position and their sums per test conversation (the paired bootstrap's input,
metrics/phase2_test_conversations.csv)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cvfp.core.training import perplexity
from cvfp.phase2.data import Batch, PositionData
from cvfp.runtime.distributed import SINGLE, World


@dataclass
class Stats:
    loss: float
    acc: float
    n: int

    @property
    def ppl(self) -> float:
        return perplexity(self.loss)


def model_device(model) -> torch.device:
    return model.token_output.weight.device


def head_logits(model, heads, fixed: torch.Tensor, outs) -> list[torch.Tensor]:
    """Logits per head from the stack outputs; context outputs are discarded (C* replaces them)."""
    if heads is None:
        _, token_out = outs
        return [model.logits(fixed, token_out)]
    return [h(torch.cat([fixed, tok], dim=-1)) for h, (_, tok) in zip(heads, outs, strict=True)]


def forward_logits(model, heads, batch: Batch, freeze_context: bool = False) -> list[torch.Tensor]:
    # With a frozen stack no graph is built through it: only the head's backward remains.
    with torch.set_grad_enabled(torch.is_grad_enabled() and not freeze_context):
        outs = model(batch.prev_context, model.embed(batch.ids), all_blocks=heads is not None)
    return head_logits(model, heads, batch.fixed, outs)


# Inference batches hold up to this many logits (16 MB): larger than training batches, as
# nothing is kept for a backward pass, so fewer, fuller matrix products (docs/speed.md).
EVAL_LOGITS = 1 << 22


@torch.no_grad()
def evaluate(
    model, data: PositionData, batch_size: int, heads=None, world: World = SINGLE
) -> list[Stats]:
    """Loss/accuracy of every head over all positions (one Stats per head; single = one).
    Under torchrun every rank evaluates its share and the sums are all-reduced.
    batch_size: the training batch; inference runs larger batches (EVAL_LOGITS)."""
    model.eval()
    batch_size = max(batch_size, EVAL_LOGITS // model.vocab_size)
    n_heads = 1 if heads is None else len(heads)
    sums = torch.zeros(2, n_heads, dtype=torch.float64)  # loss sum, correct
    lo, hi = world.share(len(data))
    for s in range(lo, hi, batch_size):
        batch = data.batch(data.positions[s : min(s + batch_size, hi)]).to(model_device(model))
        for k, logits in enumerate(forward_logits(model, heads, batch)):
            sums[0, k] += F.cross_entropy(logits, batch.targets, reduction="sum").item()
            sums[1, k] += (logits.argmax(-1) == batch.targets).sum().item()
    world.all_reduce(sums)
    n = max(len(data), 1)
    return [Stats(float(sums[0, k] / n), float(sums[1, k] / n), len(data)) for k in range(n_heads)]


@torch.no_grad()
def position_nats(model, data: PositionData, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per position, in `data.positions` order: the model's nats on the next token (float64)
    and whether its top-1 guess is right. The model's own head (`token_output`; with
    per-block heads, the last block's). One process: the held-out test pass runs once."""
    model.eval()
    batch_size = max(batch_size, EVAL_LOGITS // model.vocab_size)
    nats = np.zeros(len(data), dtype=np.float64)
    correct = np.zeros(len(data), dtype=bool)
    for s in range(0, len(data), batch_size):
        e = min(s + batch_size, len(data))
        batch = data.batch(data.positions[s:e]).to(model_device(model))
        logits = forward_logits(model, None, batch)[0]
        nats[s:e] = F.cross_entropy(logits, batch.targets, reduction="none").double().cpu().numpy()
        correct[s:e] = (logits.argmax(-1) == batch.targets).cpu().numpy()
    return nats, correct


def nats_stats(nats: np.ndarray, correct: np.ndarray) -> Stats:
    n = int(nats.size)
    return Stats(float(nats.sum() / max(n, 1)), float(correct.sum() / max(n, 1)), n)


def per_conversation(
    positions: np.ndarray, row_offsets: np.ndarray, row_ids: list, nats: dict[str, np.ndarray]
) -> dict[str, list]:
    """Targets and summed nats per conversation, for the paired bootstrap over test
    conversations. `positions`: token indices of the scored targets (the same for every
    model); `row_offsets`: token offsets [R+1] of the rows (conversations or their pieces,
    whatever the corpus segments are); `row_ids`: each row's conversation id (pieces of one
    conversation share it). Rows of one id are summed; ids keep their first-seen order; an
    id with no target has targets 0. Returns columns conversation_id, targets, <name> per
    entry of `nats` (each aligned with `positions`)."""
    row = np.searchsorted(np.asarray(row_offsets), positions, side="right") - 1
    order = list(dict.fromkeys(row_ids))
    index = {cid: k for k, cid in enumerate(order)}
    conv = np.array([index[row_ids[r]] for r in range(len(row_ids))], dtype=np.int64)[row]
    out: dict[str, list] = {
        "conversation_id": order,
        "targets": np.bincount(conv, minlength=len(order)).tolist(),
    }
    for name, v in nats.items():
        if v.shape != positions.shape:
            raise ValueError(f"{name}: {v.shape[0]} nats for {positions.shape[0]} positions")
        out[name] = np.bincount(conv, weights=v, minlength=len(order)).tolist()
    return out
