"""The New-LLM model (SPEC section 2): CVFPLayer -> CVFPBlock -> CVFPModel.

One context update is
    h = ReLU(W [context; token] + b),  dc, dt = split(h)
    context' = context + dc,  token' = token + dt
    then a LayerNorm mix with weight m (without it values explode, seed 000).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CVFPLayer(nn.Module):
    running_mean: torch.Tensor  # buffers (register_buffer), typed for the checker
    running_var: torch.Tensor

    def __init__(
        self,
        context_dim: int,
        embed_dim: int,
        hidden_dim: int,
        layernorm_mix: float = 1.0,
        init_std: float = 0.1,
        bias_init_std: float = 0.01,
        momentum: float = 0.99,
    ):
        super().__init__()
        if hidden_dim != context_dim + embed_dim:
            raise ValueError(
                f"hidden_dim ({hidden_dim}) must equal context_dim + embed_dim "
                f"({context_dim} + {embed_dim} = {context_dim + embed_dim})"
            )
        self.context_dim, self.embed_dim = context_dim, embed_dim
        self.layernorm_mix = layernorm_mix
        self.fnn = nn.Linear(context_dim + embed_dim, hidden_dim)
        nn.init.normal_(self.fnn.weight, 0.0, init_std)
        nn.init.normal_(self.fnn.bias, 0.0, bias_init_std)
        self.context_norm = nn.LayerNorm(context_dim)
        self.token_norm = nn.LayerNorm(embed_dim)
        # Running per-dimension statistics for the `distribution` diversity loss (seed 000):
        # kept inside the layer so callers never touch them.
        self.momentum = momentum
        self.track_stats = False
        self.register_buffer("running_mean", torch.zeros(context_dim))
        self.register_buffer("running_var", torch.ones(context_dim))
        self._stat_loss: torch.Tensor | None = None

    def forward(
        self, context: torch.Tensor, token: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if context.dim() == 2 and not (
            torch.is_grad_enabled() and self._needs_graph(context, token)
        ):
            new_context, new_token = self._forward_no_grad(context, token)
        else:
            h = F.relu(self.fnn(torch.cat([context, token], dim=-1)))
            new_context = self._mix(context + h[..., : self.context_dim], self.context_norm)
            new_token = self._mix(token + h[..., self.context_dim :], self.token_norm)
        if self.track_stats and self.training:
            self._update_stats(new_context)
        return new_context, new_token

    def _needs_graph(self, context: torch.Tensor, token: torch.Tensor) -> bool:
        return (
            context.requires_grad
            or token.requires_grad
            or any(p.requires_grad for p in self.parameters())
        )

    def _mix(self, x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        """(1 - m) x + m LN(x); m = 1 and m = 0 skip the arithmetic (exact: 0 x = 0, 1 y = y)."""
        m = self.layernorm_mix
        if m == 1:
            return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        if m <= 0:
            return x
        return (1 - m) * x + m * F.layer_norm(
            x, norm.normalized_shape, norm.weight, norm.bias, norm.eps
        )

    def _forward_no_grad(self, context: torch.Tensor, token: torch.Tensor):
        """The same update without building a graph, in fewer and in-place ops (the
        sequential passes run this once per position and layer). W [context; token] is
        Wc context + Wt token with W's column halves, so no concatenated copy is made;
        the residual adds go into h's halves."""
        dc, w = self.context_dim, self.fnn.weight
        h = torch.addmm(self.fnn.bias, context, w[:, :dc].t())
        h.addmm_(token, w[:, dc:].t()).relu_()
        new_context = h[:, :dc].add_(context)
        new_token = h[:, dc:].add_(token)
        return self._mix(new_context, self.context_norm), self._mix(new_token, self.token_norm)

    def _update_stats(self, context: torch.Tensor) -> None:
        # The batch statistics enter the EMA *with* gradient (old state detached), so the
        # loss below has a real gradient; the seeds computed it from detached state only.
        flat = context.reshape(-1, self.context_dim)
        m = self.momentum
        mean = m * self.running_mean + (1 - m) * flat.mean(0)
        var = m * self.running_var + (1 - m) * flat.var(0, unbiased=False)
        self._stat_loss = (mean**2).mean() + ((var - 1.0) ** 2).mean()
        self.running_mean.copy_(mean.detach())
        self.running_var.copy_(var.detach())

    def pop_distribution_loss(self) -> torch.Tensor | None:
        loss, self._stat_loss = self._stat_loss, None
        return loss


class CVFPBlock(nn.Module):
    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(CVFPLayer(**layer_kwargs) for _ in range(num_layers))

    def forward(self, context, token):
        for layer in self.layers:
            context, token = layer(context, token)
        return context, token


class CVFPModel(nn.Module):
    """Token embedding -> embed_norm -> blocks -> (context, token_out); head on concat."""

    def __init__(
        self,
        vocab_size: int,
        context_dim: int,
        embed_dim: int,
        hidden_dim: int,
        layer_structure: list[int],
        layernorm_mix: float = 1.0,
        init_std: float = 0.1,
        bias_init_std: float = 0.01,
        embedding: str = "random_frozen",
        embed_init_std: float = 0.02,
        momentum: float = 0.99,
        pretrained_weights: torch.Tensor | None = None,
    ):
        super().__init__()
        if embedding not in ("pretrained", "random_frozen", "learned"):
            raise ValueError(f"embedding={embedding!r}: allowed pretrained, random_frozen, learned")
        self.vocab_size, self.context_dim, self.embed_dim = vocab_size, context_dim, embed_dim
        self.embedding_kind = embedding
        self.token_embedding = nn.Embedding(vocab_size, embed_dim)
        if pretrained_weights is not None:  # None for 'pretrained' = weights come from a checkpoint
            if tuple(pretrained_weights.shape) != (vocab_size, embed_dim):
                raise ValueError(
                    f"pretrained embeddings have shape {tuple(pretrained_weights.shape)}, "
                    f"model expects (vocab_size, embed_dim) = {(vocab_size, embed_dim)}"
                )
            self.token_embedding.weight.data.copy_(pretrained_weights)
        else:
            nn.init.normal_(self.token_embedding.weight, 0.0, embed_init_std)
        self.token_embedding.weight.requires_grad_(embedding == "learned")
        self.embed_norm = nn.LayerNorm(embed_dim)
        layer_kwargs = dict(
            context_dim=context_dim,
            embed_dim=embed_dim,
            hidden_dim=hidden_dim,
            layernorm_mix=layernorm_mix,
            init_std=init_std,
            bias_init_std=bias_init_std,
            momentum=momentum,
        )
        self.blocks = nn.ModuleList(CVFPBlock(n, **layer_kwargs) for n in layer_structure)
        # Zero-initialised and frozen in Phase 1; Phase 2 unfreezes it.
        self.token_output = nn.Linear(context_dim + embed_dim, vocab_size)
        nn.init.zeros_(self.token_output.weight)
        nn.init.zeros_(self.token_output.bias)
        self.token_output.requires_grad_(False)

    @classmethod
    def from_params(
        cls,
        mp,
        vocab_size: int,
        momentum: float = 0.99,
        pretrained_weights: torch.Tensor | None = None,
    ) -> CVFPModel:
        return cls(
            vocab_size=vocab_size,
            context_dim=mp.context_dim,
            embed_dim=mp.embed_dim,
            hidden_dim=mp.hidden_dim,
            layer_structure=list(mp.layer_structure),
            layernorm_mix=mp.layernorm_mix,
            init_std=mp.init_std,
            bias_init_std=mp.bias_init_std,
            embedding=mp.embedding,
            embed_init_std=mp.embed_init_std,
            momentum=momentum,
            pretrained_weights=pretrained_weights,
        )

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings, on the model's device (token ids may live anywhere)."""
        return self.embed_norm(
            self.token_embedding(token_ids.to(self.token_embedding.weight.device))
        )

    def forward(self, context: torch.Tensor, embeds: torch.Tensor, all_blocks: bool = False):
        """Run the stack. Returns (context, token_out), or with all_blocks the list of
        per-block (context, token_out) pairs (Phase 2 per-block heads)."""
        outs = []
        token = embeds
        for block in self.blocks:
            context, token = block(context, token)
            outs.append((context, token))
        return outs if all_blocks else (context, token)

    def logits(self, context: torch.Tensor, token_out: torch.Tensor) -> torch.Tensor:
        return self.token_output(torch.cat([context, token_out], dim=-1))

    def layers(self):
        for block in self.blocks:
            yield from block.layers

    def set_track_stats(self, on: bool) -> None:
        for layer in self.layers():
            layer.track_stats = on

    def distribution_loss(self) -> torch.Tensor | None:
        """Mean over layers of the `distribution` diversity loss from the last forward."""
        losses = [
            x for x in (layer.pop_distribution_loss() for layer in self.layers()) if x is not None
        ]
        return torch.stack(losses).mean() if losses else None
