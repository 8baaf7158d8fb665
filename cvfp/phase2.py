"""Phase 2: context-fixed token prediction (SPEC section 6, seed 001 "v2.0 complete fixing").

For every position i with a next token in the same conversation:
    _, token_out = stack(C*[i-1] or 0 at a conversation start, embed[i])   # context_out discarded
    logits       = token_output(concat(C*[i], token_out))                  # C* is data, no grad
    loss         = CE(logits, token[i+1])
Given C* all positions are independent, so they are trained in shuffled mini-batches; C*
rows are read from the memory-mapped `.npy` per batch and never change.

`heads: per_block` (seed 002): after the single head is trained, every block gets a clone
of it, fed concat(C*[i], that block's token_out) (C* stays the only context, so gradients
still enter the stack through token outputs only); the loss is sum_k w_k * CE_k as in the
seed. The last block's head is what the model reports, saves as `token_output` and
generates with.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import save_checkpoint
from .corpus import Corpus
from .distributed import SINGLE, World
from .utils import progress

log = logging.getLogger("cvfp")


class NonFiniteLossError(RuntimeError):
    pass


class PositionData:
    """Phase 2 examples of one split: position i -> (C*[i-1] or 0, token[i], C*[i], token[i+1]).

    `offsets` are the corpus segments (conversations, or [0, N] for one stream): a segment's
    first token gets a zero input context, its last token has no target.
    """

    def __init__(self, ids, cstar: np.ndarray, offsets):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.cstar = cstar
        offsets = np.asarray(offsets, dtype=np.int64)
        self.prev = np.arange(self.ids.size) - 1
        self.prev[offsets[:-1]] = -1
        has_target = np.ones(self.ids.size, dtype=bool)
        has_target[offsets[1:] - 1] = False
        self.positions = np.flatnonzero(has_target)
        self.context = "cstar"  # ablations: "zero" or "shuffled"
        self.row_map: np.ndarray | None = None

    @classmethod
    def from_corpus(cls, corpus: Corpus, cstar: np.ndarray) -> PositionData:
        return cls(corpus.ids.numpy(), cstar, corpus.offsets.numpy())

    def __len__(self) -> int:
        return int(self.positions.size)

    def ablated(self, context: str, seed: int = 0) -> PositionData:
        """The same examples with C* replaced by zeros or permuted across positions."""
        out = copy.copy(self)
        out.context = context
        if self.context == "zero" and context in ("zero", "shuffled"):
            out.context = "zero"  # zeros shuffled are zeros (phase2.context: zero)
        elif context == "shuffled":
            out.row_map = np.random.default_rng(seed).permutation(self.ids.size)
        elif context != "zero":
            raise ValueError(f"context={context!r}: allowed zero, shuffled")
        return out

    def batch(self, idx: np.ndarray):
        """Tensors for positions `idx`: (input context, token ids, fixed context, targets)."""
        idx = np.sort(idx)  # ascending rows: sequential reads from the memmap
        first = self.prev[idx] < 0
        dc = self.cstar.shape[1]
        if self.context == "zero":
            prev_ctx = fixed = torch.zeros(idx.size, dc)
        else:
            rows = np.concatenate([np.where(first, idx, self.prev[idx]), idx])
            if self.row_map is not None:
                rows = self.row_map[rows]
            ctx = torch.from_numpy(np.asarray(self.cstar[rows], dtype=np.float32))
            prev_ctx, fixed = ctx[: idx.size], ctx[idx.size :]
            prev_ctx[torch.from_numpy(first)] = 0.0
        return prev_ctx, torch.from_numpy(self.ids[idx]), fixed, torch.from_numpy(self.ids[idx + 1])


# A mean next-token loss above this (nats) is a diverged run, not a bad model: no vocabulary
# has e^100 tokens, so uniform guessing stays far below. Also where exp(loss) would overflow.
DIVERGED_LOSS = 100.0


@dataclass
class Stats:
    loss: float
    acc: float
    n: int

    @property
    def ppl(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf  # exp overflows past ~709


def configure_trainable(model, freeze_context: bool) -> None:
    """Head always; stack (and embed_norm, trained with it in Phase 1) unless freeze_context;
    the embedding table only when model.embedding == learned."""
    model.requires_grad_(False)
    model.token_output.requires_grad_(True)
    if not freeze_context:
        model.blocks.requires_grad_(True)
        model.embed_norm.requires_grad_(True)
        if model.embedding_kind == "learned":
            model.token_embedding.requires_grad_(True)


def clone_heads(model, n: int) -> nn.ModuleList:
    """Per-block heads, each an exact copy of the trained single head (seed 002)."""
    return nn.ModuleList(copy.deepcopy(model.token_output) for _ in range(n))


def trainable_parameters(model, heads: nn.ModuleList | None = None) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if heads is not None:
        params += [p for p in heads.parameters() if p.requires_grad]
    return params


def head_logits(model, heads, fixed: torch.Tensor, outs) -> list[torch.Tensor]:
    """Logits per head from the stack outputs; context outputs are discarded (C* replaces them)."""
    if heads is None:
        _, token_out = outs
        return [model.logits(fixed, token_out)]
    return [h(torch.cat([fixed, tok], dim=-1)) for h, (_, tok) in zip(heads, outs, strict=True)]


def to_model_device(model, batch) -> tuple:
    dev = model.token_output.weight.device
    return tuple(t.to(dev) for t in batch)


def forward_logits(model, heads, batch, freeze_context: bool = False) -> list[torch.Tensor]:
    prev_ctx, ids, fixed, _ = batch
    # With a frozen stack no graph is built through it: only the head's backward remains.
    with torch.set_grad_enabled(torch.is_grad_enabled() and not freeze_context):
        outs = model(prev_ctx, model.embed(ids), all_blocks=heads is not None)
    return head_logits(model, heads, fixed, outs)


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
        batch = to_model_device(model, data.batch(data.positions[s : min(s + batch_size, hi)]))
        for k, logits in enumerate(forward_logits(model, heads, batch)):
            sums[0, k] += F.cross_entropy(logits, batch[3], reduction="sum").item()
            sums[1, k] += (logits.argmax(-1) == batch[3]).sum().item()
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
        batch = to_model_device(model, data.batch(data.positions[s:e]))
        logits = forward_logits(model, None, batch)[0]
        nats[s:e] = F.cross_entropy(logits, batch[3], reduction="none").double().cpu().numpy()
        correct[s:e] = (logits.argmax(-1) == batch[3]).cpu().numpy()
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


@dataclass
class Phase2Result:
    history: list[dict] = field(default_factory=list)  # one row per epoch (plots CSV columns)
    best_epoch: int = 0
    best: dict = field(default_factory=dict)  # train/val metrics at best_epoch
    trainable_params: int = 0
    train_seconds: float = 0.0
    stopped_early: bool = False
    heads: nn.ModuleList | None = None
    stages: dict = field(default_factory=dict)


class Trainer:
    """One training stage (single head, or per-block heads) with early stopping.

    Under torchrun (`world`) every rank draws the same shuffled order, takes its share of
    each global batch of cfg.batch_size positions, and normalises its loss by the global
    batch size; the all-reduced gradient is then the single-process gradient, and every
    rank takes the same step. Only rank 0 writes the checkpoint."""

    def __init__(
        self,
        model,
        heads,
        train: PositionData,
        val: PositionData,
        cfg,
        seed: int,
        checkpoint=None,
        params_dict=None,
        extra=None,
        show_progress=False,
        world: World = SINGLE,
    ):
        self.model, self.heads, self.train, self.val, self.cfg = model, heads, train, val, cfg
        self.world = world
        self.gen = torch.Generator().manual_seed(seed)
        self.checkpoint, self.params_dict, self.extra = checkpoint, params_dict or {}, extra or {}
        self.show = show_progress
        n = 1 if heads is None else len(heads)
        w = [1.0] if heads is None else list(cfg.block_weights)
        self.weights = torch.tensor(w[:n], device=model.token_output.weight.device)
        self.params = trainable_parameters(model, heads)
        # fused: one kernel per step instead of ~8 passes over every parameter (5x on CPU)
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr, fused=True)
        if heads is not None:
            heads.to(model.token_output.weight.device)
        self.saved_epoch: int | None = None

    def train_epoch(self, epoch: int) -> Stats:
        model, cfg = self.model, self.cfg
        model.train()
        order = self.train.positions[torch.randperm(len(self.train), generator=self.gen).numpy()]
        n_steps = math.ceil(len(order) / cfg.batch_size)
        world = self.world
        sums = torch.zeros(2, dtype=torch.float64)  # last head's loss sum, correct
        bar = progress(
            range(n_steps), desc=f"phase2 epoch {epoch}", enabled=self.show, unit="batch"
        )
        for step in bar:
            global_batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            lo, hi = world.share(len(global_batch))
            batch = to_model_device(model, self.train.batch(global_batch[lo:hi]))
            logits = forward_logits(model, self.heads, batch, cfg.freeze_context)
            losses = torch.stack([F.cross_entropy(lg, batch[3], reduction="sum") for lg in logits])
            loss = (self.weights * losses).sum() / len(global_batch)
            total = world.all_reduce(loss.detach().clone())
            if not torch.isfinite(total):
                self._fail(total.item(), epoch, f"step {step + 1}/{n_steps}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            world.all_reduce_grads(self.params)
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.optimizer.step()
            sums[0] += losses[-1].item()  # report the last head (the model's own)
            sums[1] += (logits[-1].argmax(-1) == batch[3]).sum().item()
            bar.set_postfix(loss=f"{total.item():.4f}", refresh=False)
        world.all_reduce(sums)
        return Stats(float(sums[0]) / len(order), float(sums[1]) / len(order), len(order))

    def _fail(self, value: float, epoch: int, where: str, why: str = ""):
        kept = (
            f"the last good checkpoint {self.checkpoint} is epoch {self.saved_epoch}"
            if self.saved_epoch is not None
            else "no checkpoint was written by this run"
        )
        raise NonFiniteLossError(
            f"phase2: loss is {value} at epoch {epoch}, {where}{why}; training "
            f"stopped ({kept}); lower phase2.lr (now {self.cfg.lr}) or "
            f"phase2.grad_clip (now {self.cfg.grad_clip})"
        )

    def save(self, epoch: int, val: list[Stats]) -> None:
        model, heads = self.model, self.heads
        if heads is not None:  # the last block's head is the model's head
            model.token_output.load_state_dict(heads[-1].state_dict())
        if self.checkpoint is not None and self.world.is_main:
            save_checkpoint(
                self.checkpoint,
                model,
                self.params_dict,
                **self.extra,
                phase2={
                    "epoch": epoch,
                    "val_loss": val[-1].loss,
                    "heads": "single" if heads is None else "per_block",
                },
                block_heads=None if heads is None else [h.state_dict() for h in heads],
            )
        self.saved_epoch = epoch

    def snapshot(self):
        return copy.deepcopy(
            (self.model.state_dict(), None if self.heads is None else self.heads.state_dict())
        )

    def restore(self, snap) -> None:
        self.model.load_state_dict(snap[0])
        if self.heads is not None:
            self.heads.load_state_dict(snap[1])

    def fit(self, first_epoch: int, result: Phase2Result, baseline: list[Stats] | None = None):
        """Train cfg.epochs epochs (numbered from first_epoch); keep the best val loss state.

        `baseline`: val stats of the starting state, which counts as a candidate (per-block
        stage: the clones are exactly the trained single head)."""
        cfg = self.cfg
        best_loss, best_snap, bad, stopped = math.inf, None, 0, False
        if baseline is not None:
            best_loss, best_snap = baseline[-1].loss, self.snapshot()
            self.save(result.best_epoch, baseline)
        for epoch in range(first_epoch, first_epoch + cfg.epochs):
            t0 = time.perf_counter()
            tr = self.train_epoch(epoch)
            val = evaluate(self.model, self.val, cfg.batch_size, self.heads, self.world)
            seconds = time.perf_counter() - t0
            result.train_seconds += seconds
            for where, loss in (("train (epoch mean)", tr.loss), ("validation", val[-1].loss)):
                if not math.isfinite(loss) or loss > DIVERGED_LOSS:
                    self._fail(
                        loss,
                        epoch,
                        where,
                        ""
                        if not math.isfinite(loss)
                        else f" (> {DIVERGED_LOSS:g} nats: diverged; guessing uniformly over the "
                        f"{self.model.token_output.out_features} tokens gives "
                        f"{math.log(self.model.token_output.out_features):.2f})",
                    )
            row = {
                "epoch": epoch,
                "train_loss": tr.loss,
                "val_loss": val[-1].loss,
                "train_ppl": tr.ppl,
                "val_ppl": val[-1].ppl,
                "train_acc": tr.acc,
                "val_acc": val[-1].acc,
                "seconds": seconds,
            }
            result.history.append(row)
            log.info(
                "phase2 epoch %d: train loss %.4f ppl %.2f acc %.4f | val loss %.4f ppl %.2f "
                "acc %.4f | %.1fs",
                epoch,
                tr.loss,
                tr.ppl,
                tr.acc,
                val[-1].loss,
                val[-1].ppl,
                val[-1].acc,
                seconds,
            )
            if val[-1].loss < best_loss:
                best_loss, best_snap, bad = val[-1].loss, self.snapshot(), 0
                result.best_epoch, result.best = epoch, dict(row)
                if len(val) > 1:
                    result.best["val_loss_per_block"] = [s.loss for s in val]
                self.save(epoch, val)
            else:
                bad += 1
                if bad >= cfg.patience:
                    stopped = True
                    log.info(
                        "phase2: early stop after epoch %d (no val improvement for %d epochs)",
                        epoch,
                        bad,
                    )
                    break
        self.restore(best_snap)
        if self.heads is not None:
            self.model.token_output.load_state_dict(self.heads[-1].state_dict())
        return epoch, stopped


def starting_row(
    model, train: PositionData, val: PositionData, batch_size: int, world: World = SINGLE
) -> tuple[dict, Stats]:
    """Epoch 0: the model as it comes in (full passes over train and val, no step)."""
    t0 = time.perf_counter()
    tr, va = (
        evaluate(model, train, batch_size, world=world)[0],
        evaluate(model, val, batch_size, world=world)[0],
    )
    return {
        "epoch": 0,
        "train_loss": tr.loss,
        "val_loss": va.loss,
        "train_ppl": tr.ppl,
        "val_ppl": va.ppl,
        "train_acc": tr.acc,
        "val_acc": va.acc,
        "seconds": time.perf_counter() - t0,
    }, va


def train_phase2(
    model,
    train: PositionData,
    val: PositionData,
    cfg,
    seed: int = 0,
    checkpoint=None,
    params_dict: dict | None = None,
    extra: dict | None = None,
    show_progress: bool = False,
    warm_start: bool = False,
    world: World = SINGLE,
) -> Phase2Result:
    """Train the head (and the stack unless cfg.freeze_context) on fixed C*; with
    cfg.heads == per_block continue with cloned per-block heads. The model ends in its best
    state; the best checkpoint is at `checkpoint` (if given).

    warm_start: the incoming head is already trained (Phase 1 objective `reconstruction`).
    Its state is then epoch 0 of the history, evaluated before any step, and counts as a
    candidate for the best epoch, so Phase 2 never reports worse than what it started from.

    world: under torchrun, every rank calls this with the same arguments (Trainer)."""
    for name, data in (("train", train), ("val", val)):
        if len(data) == 0:
            raise ValueError(
                f"phase2: the {name} split has no position with a next token "
                f"(every conversation is a single token)"
            )
    result = Phase2Result()
    configure_trainable(model, cfg.freeze_context)
    kw = dict(
        checkpoint=checkpoint,
        params_dict=params_dict,
        extra=extra,
        show_progress=show_progress and world.is_main,
        world=world,
    )
    trainer = Trainer(model, None, train, val, cfg, seed, **kw)
    result.trainable_params = sum(p.numel() for p in trainer.params)
    baseline = None
    if warm_start:
        row, start = starting_row(model, train, val, cfg.batch_size, world)
        log.info(
            "phase2 epoch 0 (warm start, no step): train loss %.4f ppl %.2f acc %.4f | val loss "
            "%.4f ppl %.2f acc %.4f",
            row["train_loss"],
            row["train_ppl"],
            row["train_acc"],
            row["val_loss"],
            row["val_ppl"],
            row["val_acc"],
        )
        result.history.append(row)
        result.best_epoch, result.best, baseline = 0, dict(row), [start]
    last, stopped = trainer.fit(1, result, baseline=baseline)
    result.stopped_early = stopped
    result.stages["single"] = {
        "first_epoch": 1,
        "last_epoch": last,
        "best_epoch": result.best_epoch,
        "stopped_early": stopped,
    }
    if cfg.heads == "per_block":
        # Epoch split: the single-head stage runs first (cfg.epochs, early stopping), then
        # the per-block stage runs up to cfg.epochs more, starting from the best single head.
        heads = clone_heads(model, len(model.blocks))
        heads.requires_grad_(True)
        model.token_output.requires_grad_(False)  # replaced by heads[-1] in this stage
        trainer = Trainer(model, heads, train, val, cfg, seed + 1, **kw)
        result.trainable_params = sum(p.numel() for p in trainer.params)
        cloned = evaluate(model, val, cfg.batch_size, heads, world)  # = the best single head
        end, stopped = trainer.fit(last + 1, result, baseline=cloned)
        result.stopped_early = stopped
        result.stages["per_block"] = {
            "first_epoch": last + 1,
            "last_epoch": end,
            "best_epoch": result.best_epoch,
            "stopped_early": stopped,
        }
        result.heads = heads
    return result
