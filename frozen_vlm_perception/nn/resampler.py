"""Perceiver Resampler (Flamingo / OpenFlamingo): media tokens -> a fixed number of latents.

Learned latents attend to the concatenation of media and latents (so a latent can keep what it
had), followed by a feed-forward block, ``depth`` times. Media are projected to the working width
first, and the latents are projected to the language model's embedding width at the end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frozen_vlm_perception.config import AdapterConfig


class PerceiverAttention(nn.Module):
    def __init__(self, *, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: Tensor, latents: Tensor, media_log_weights: Tensor | None = None) -> Tensor:
        """media (B, T, dim), latents (B, L, dim), media_log_weights (B, T) or None -> (B, L, dim)."""
        batch, num_latents, _ = latents.shape
        media = self.norm_media(media)
        latents = self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B, h, n, d)
        mask = None
        if media_log_weights is not None:
            latent_bias = media_log_weights.new_zeros(batch, num_latents)
            mask = torch.cat([media_log_weights, latent_bias], dim=1)[:, None, None, :]  # (B, 1, 1, T + L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).flatten(2))


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


def perceiver_layers(*, dim: int, depth: int, heads: int, dim_head: int, ff_mult: int) -> nn.ModuleList:
    """``depth`` pairs [attention of queries over media + queries, feed-forward] (the resampler's and
    the question reader's blocks)."""
    return nn.ModuleList(
        nn.ModuleList(
            [PerceiverAttention(dim=dim, heads=heads, dim_head=dim_head), feed_forward(dim, ff_mult)]
        )
        for _ in range(depth)
    )


class PerceiverResampler(nn.Module):
    def __init__(self, *, config: AdapterConfig, media_dim: int, out_dim: int):
        super().__init__()
        dim = config.dim
        self.media_proj = nn.Linear(media_dim, dim)
        self.latents = nn.Parameter(torch.randn(config.num_latents, dim) * 0.02)
        self.layers = perceiver_layers(
            dim=dim, depth=config.depth, heads=config.heads, dim_head=config.dim_head, ff_mult=config.ff_mult
        )
        self.norm = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, out_dim)

    def forward(self, media: Tensor, media_log_weights: Tensor | None = None) -> Tensor:
        """media (B, T, media_dim), media_log_weights (B, T) -> latents (B, L, out_dim)."""
        media = self.media_proj(media)
        x = self.latents.expand(media.shape[0], -1, -1)
        for attn, ff in self.layers:
            x = attn(media, x, media_log_weights) + x
            x = ff(x) + x
        return self.out_proj(self.norm(x))
