"""The single fully-connected adapter: pooled embedding -> k pseudo-tokens in the LM's width.

The cheap alternative to the Perceiver Resampler ("Combining Pre-Trained Unimodal Models with a
Single Fully-Connected Layer"): one ``nn.Linear(D, k * H)`` whose output is read as k tokens.
"""

from __future__ import annotations

from torch import Tensor, nn


class LinearAdapter(nn.Module):
    def __init__(self, *, in_dim: int, out_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = nn.Linear(in_dim, num_tokens * out_dim)

    def forward(self, pooled: Tensor) -> Tensor:
        """pooled (B, D) -> pseudo-tokens (B, k, out_dim)."""
        return self.proj(pooled).unflatten(-1, (self.num_tokens, -1))
