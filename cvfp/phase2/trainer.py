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
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cvfp.core.checkpoint import Checkpointer
from cvfp.core.training import BestEpoch, count_parameters, optimizer_step
from cvfp.params import Phase2Params
from cvfp.phase2.data import Batch, PositionData
from cvfp.phase2.evaluation import Stats, evaluate, forward_logits, model_device
from cvfp.runtime.distributed import SINGLE, World
from cvfp.runtime.utils import adam, progress

log = logging.getLogger("cvfp")


class NonFiniteLossError(RuntimeError):
    pass


# A mean next-token loss above this (nats) is a diverged run, not a bad model: no vocabulary
# has e^100 tokens, so uniform guessing stays far below. Also where exp(loss) would overflow.
DIVERGED_LOSS = 100.0


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


class Phase2Loss(NamedTuple):
    loss: torch.Tensor  # what the step differentiates
    head_sums: torch.Tensor  # [heads] CE summed over the batch, per head (last: the model's)
    logits: list[torch.Tensor]  # per head


def phase2_loss(
    model, heads, batch: Batch, weights: torch.Tensor, n: int, freeze_context: bool = False
) -> Phase2Loss:
    """The Phase 2 loss: sum_k weights[k] * CE(logits_k, token[i+1]), summed over the batch's
    positions and divided by `n`, the global batch size (under torchrun a rank holds a share
    of it). One head (`heads` None): weights [1]."""
    logits = forward_logits(model, heads, batch, freeze_context)
    sums = torch.stack([F.cross_entropy(lg, batch.targets, reduction="sum") for lg in logits])
    return Phase2Loss((weights * sums).sum() / n, sums, logits)


@dataclass
class Phase2Result:
    history: list[dict] = field(default_factory=list)  # one row per epoch (plots CSV columns)
    epoch_seconds: list[float] = field(default_factory=list)  # wall time of each history row
    best_epoch: int = 0
    best: dict = field(default_factory=dict)  # train/val metrics at best_epoch
    trainable_params: int = 0
    train_seconds: float = 0.0  # wall time of the training epochs (not epoch 0's pass)
    stopped_early: bool = False
    heads: nn.ModuleList | None = None
    stages: dict = field(default_factory=dict)


def epoch_row(epoch: int, tr: Stats, va: Stats) -> dict:
    """One row of the history (plots/phase2_epochs.csv; its wall time is kept apart, in
    Phase2Result.epoch_seconds)."""
    return {
        "epoch": epoch,
        "train_loss": tr.loss,
        "val_loss": va.loss,
        "train_ppl": tr.ppl,
        "val_ppl": va.ppl,
        "train_acc": tr.acc,
        "val_acc": va.acc,
    }


def log_epoch(row: dict, seconds: float, warm_start: bool = False) -> None:
    log.info(
        "phase2 epoch %d%s: train loss %.4f ppl %.2f acc %.4f | val loss %.4f ppl %.2f acc %.4f%s",
        row["epoch"],
        " (warm start, no step)" if warm_start else "",
        row["train_loss"],
        row["train_ppl"],
        row["train_acc"],
        row["val_loss"],
        row["val_ppl"],
        row["val_acc"],
        "" if warm_start else f" | {seconds:.1f}s",
    )


class Trainer:
    """One training stage (single head, or per-block heads) with early stopping.

    Under torchrun (`world`) every rank draws the same shuffled order, takes its share of
    each global batch of cfg.batch_size positions, and normalises its loss by the global
    batch size; the all-reduced gradient is then the single-process gradient, and every
    rank takes the same step. Each new best epoch goes to `checkpointer` (the stage hands
    one to rank 0 only)."""

    def __init__(
        self,
        model,
        heads,
        train: PositionData,
        val: PositionData,
        cfg: Phase2Params,
        seed: int,
        checkpointer: Checkpointer | None = None,
        show_progress: bool = False,
        world: World = SINGLE,
    ):
        self.model, self.heads, self.train, self.val, self.cfg = model, heads, train, val, cfg
        self.world = world
        self.gen = torch.Generator().manual_seed(seed)
        self.checkpointer = checkpointer
        self.show = show_progress
        n = 1 if heads is None else len(heads)
        w = [1.0] if heads is None else list(cfg.block_weights)
        self.weights = torch.tensor(w[:n], device=model_device(model))
        self.params = trainable_parameters(model, heads)
        # fused: one kernel per step instead of ~8 passes over every parameter (5x on CPU)
        self.optimizer = adam(self.params, lr=cfg.lr, fused=True)
        if heads is not None:
            heads.to(model_device(model))
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
            batch = self.train.batch(global_batch[lo:hi]).to(model_device(model))
            out = phase2_loss(
                model, self.heads, batch, self.weights, len(global_batch), cfg.freeze_context
            )
            total = world.all_reduce(out.loss.detach().clone())
            if not torch.isfinite(total):
                self._fail(total.item(), epoch, f"step {step + 1}/{n_steps}")
            optimizer_step(self.optimizer, out.loss, self.params, cfg.grad_clip, world)
            sums[0] += out.head_sums[-1].item()  # report the last head (the model's own)
            sums[1] += (out.logits[-1].argmax(-1) == batch.targets).sum().item()
            bar.set_postfix(loss=f"{total.item():.4f}", refresh=False)
        world.all_reduce(sums)
        return Stats(float(sums[0]) / len(order), float(sums[1]) / len(order), len(order))

    def _fail(self, value: float, epoch: int, where: str, why: str = ""):
        kept = (
            f"the last good checkpoint {self.checkpointer.path} is epoch {self.saved_epoch}"
            if self.checkpointer is not None and self.saved_epoch is not None
            else "no checkpoint was written by this run"
        )
        raise NonFiniteLossError(
            f"phase2: loss is {value} at epoch {epoch}, {where}{why}; training "
            f"stopped ({kept}); lower phase2.lr (now {self.cfg.lr}) or "
            f"phase2.grad_clip (now {self.cfg.grad_clip})"
        )

    def _check_finite(self, epoch: int, tr: Stats, val: list[Stats]) -> None:
        vocab = self.model.token_output.out_features
        for where, loss in (("train (epoch mean)", tr.loss), ("validation", val[-1].loss)):
            if not math.isfinite(loss):
                self._fail(loss, epoch, where)
            if loss > DIVERGED_LOSS:
                self._fail(
                    loss,
                    epoch,
                    where,
                    f" (> {DIVERGED_LOSS:g} nats: diverged; guessing uniformly over the "
                    f"{vocab} tokens gives {math.log(vocab):.2f})",
                )

    def _new_best(self, epoch: int, val: list[Stats]) -> None:
        """The model's head becomes the last block's; the checkpointer (if any) saves."""
        model, heads = self.model, self.heads
        if heads is not None:
            model.token_output.load_state_dict(heads[-1].state_dict())
        if self.checkpointer is not None:
            self.checkpointer.save(
                model,
                phase2={
                    "epoch": epoch,
                    "val_loss": val[-1].loss,
                    "heads": "single" if heads is None else "per_block",
                },
                block_heads=None if heads is None else [h.state_dict() for h in heads],
            )
        self.saved_epoch = epoch

    def snapshot(self):
        return self.model.state_dict(), None if self.heads is None else self.heads.state_dict()

    def restore(self, snap) -> None:
        self.model.load_state_dict(snap[0])
        if self.heads is not None:
            self.heads.load_state_dict(snap[1])

    def fit(self, first_epoch: int, result: Phase2Result, baseline: list[Stats] | None = None):
        """Train cfg.epochs epochs (numbered from first_epoch); keep the best val loss state.

        `baseline`: val stats of the starting state, which counts as a candidate (per-block
        stage: the clones are exactly the trained single head)."""
        cfg = self.cfg
        best, stopped = BestEpoch(), False
        if baseline is not None:
            best.update(result.best_epoch, baseline[-1].loss, self.snapshot)
            self._new_best(result.best_epoch, baseline)
        for epoch in range(first_epoch, first_epoch + cfg.epochs):
            t0 = time.perf_counter()
            tr = self.train_epoch(epoch)
            val = evaluate(self.model, self.val, cfg.batch_size, self.heads, self.world)
            seconds = time.perf_counter() - t0
            result.train_seconds += seconds
            self._check_finite(epoch, tr, val)
            row = epoch_row(epoch, tr, val[-1])
            result.history.append(row)
            result.epoch_seconds.append(seconds)
            log_epoch(row, seconds)
            if best.update(epoch, val[-1].loss, self.snapshot):
                result.best_epoch, result.best = epoch, dict(row)
                if len(val) > 1:
                    result.best["val_loss_per_block"] = [s.loss for s in val]
                self._new_best(epoch, val)
            elif best.bad >= cfg.patience:
                stopped = True
                log.info(
                    "phase2: early stop after epoch %d (no val improvement for %d epochs)",
                    epoch,
                    best.bad,
                )
                break
        self.restore(best.state)
        if self.heads is not None:
            self.model.token_output.load_state_dict(self.heads[-1].state_dict())
        return epoch, stopped


def starting_row(
    model, train: PositionData, val: PositionData, batch_size: int, world: World = SINGLE
) -> tuple[dict, Stats, float]:
    """Epoch 0: the model as it comes in (full passes over train and val, no step).
    Returns (row, val stats, seconds)."""
    t0 = time.perf_counter()
    tr = evaluate(model, train, batch_size, world=world)[0]
    va = evaluate(model, val, batch_size, world=world)[0]
    return epoch_row(0, tr, va), va, time.perf_counter() - t0


def train_phase2(
    model,
    train: PositionData,
    val: PositionData,
    cfg: Phase2Params,
    seed: int = 0,
    checkpointer: Checkpointer | None = None,
    show_progress: bool = False,
    warm_start: bool = False,
    world: World = SINGLE,
) -> Phase2Result:
    """Train the head (and the stack unless cfg.freeze_context) on fixed C*; with
    cfg.heads == per_block continue with cloned per-block heads. The model ends in its best
    state; every new best state went to `checkpointer` (if given).

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
    show = show_progress and world.is_main
    trainer = Trainer(model, None, train, val, cfg, seed, checkpointer, show, world)
    result.trainable_params = count_parameters(trainer.params)
    baseline = None
    if warm_start:
        row, start, seconds = starting_row(model, train, val, cfg.batch_size, world)
        log_epoch(row, seconds, warm_start=True)
        result.history.append(row)
        result.epoch_seconds.append(seconds)
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
        trainer = Trainer(model, heads, train, val, cfg, seed + 1, checkpointer, show, world)
        result.trainable_params = count_parameters(trainer.params)
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
