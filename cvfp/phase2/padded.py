"""The GPT-2 baseline's output layer and loss on the real positions of a padded batch.

A batch of windows (cvfp/phase2/baselines.py) is about half padding: each window is padded to
the longest of its batch (2.17 padded slots per target on the default data). The output
layer (vocab x n_embd, tied to the token embedding) and the softmax over the vocabulary are
the largest part of a step; here they run on the real rows only, with the same bits as on
the full padded batch, which GPT-2's blocks still see:

- the logits, the softmax and the output layer's input gradient are computed row by row:
  the same values on the real rows alone;
- the output layer's weight gradient is a sum over the batch's rows whose order follows
  the padded layout (a sum over the real rows alone differs in the last bits: measured),
  so it is taken on that layout, the padding rows' gradients zero, as autograd does;
- the mean loss: nll_loss sums in a cascade that follows the padded positions, so the
  real positions' nats go back to those positions before nll_loss sums them.

tests/test_baselines.py holds the parameters, after training steps, equal to the bit."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # the targets of padding positions (cvfp/phase2/baselines.py collate)


class HeadOnRealRows(torch.autograd.Function):
    """F.linear(hidden, weight)[keep] without computing the padding rows' logits."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor):
        ctx.save_for_backward(hidden, weight, keep)
        return F.linear(hidden[keep], weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        hidden, weight, keep = ctx.saved_tensors
        d_hidden = torch.zeros_like(hidden)
        d_hidden[keep] = grad.mm(weight)
        padded = grad.new_zeros(hidden.shape[0], grad.shape[1])
        padded[keep] = grad
        return d_hidden, padded.t().mm(hidden), None


def real_logits(model, inputs, mask, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """GPT2LMHeadModel's logits at the real positions, row-major (window by window, each in
    target order), and their targets. The model's own forward with the same arguments
    otherwise (use_cache left alone: use_cache=False changes the logits' last bits, measured)."""
    hidden = model.transformer(input_ids=inputs, attention_mask=mask).last_hidden_state
    keep = targets.flatten() != IGNORE
    logits = HeadOnRealRows.apply(hidden.flatten(0, 1), model.lm_head.weight, keep)
    return logits, targets.flatten()[keep]


def padded_mean(nats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(logits, targets, ignore_index=IGNORE) (the mean over real positions)
    from the real positions' nats, to the bit, gradient included."""
    keep = targets.flatten() != IGNORE
    padded = nats.new_zeros(keep.numel(), 1)
    padded[keep] = -nats[:, None]  # nll_loss negates its input: -(-nats) = nats, exactly
    return F.nll_loss(padded, torch.where(keep, 0, IGNORE), ignore_index=IGNORE)
