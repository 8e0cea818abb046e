"""Activity head on the scene latents (the fast by-product published as ActivityLabel)."""

from __future__ import annotations

from torch import Tensor, nn


class ActivityHead(nn.Module):
    def __init__(self, *, dim: int, num_labels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_labels)

    def forward(self, latents: Tensor) -> Tensor:
        """latents (B, L, dim) -> logits (B, num_labels), from the mean over latents."""
        return self.classifier(self.norm(latents.mean(dim=1)))
