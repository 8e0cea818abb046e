"""Weighted linear combination of vision and IMU, with a per-sample modality mask.

Two outputs, both weighted by ``alpha`` (vision) and ``1 - alpha`` (IMU):

- pooled: ``alpha * v + (1 - alpha) * i`` over the modalities a sample has, renormalised, so a
  vision-only sample gets ``v`` and an IMU-only sample gets ``i`` (the linear adapter reads this);
- tokens: the two token sets side by side with an additive log-weight per token, ``log alpha`` on
  vision tokens and ``log(1 - alpha)`` on IMU tokens (``-inf`` for a missing modality). Attention
  that adds these to its logits (the Perceiver Resampler does) reads each modality with a share of
  its attention mass scaled by that modality's weight: the token-level form of the same mixture.
  A learned modality embedding tells the two sets apart.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ModalityFusion(nn.Module):
    def __init__(self, *, dim: int, alpha: float):
        super().__init__()
        self.alpha = alpha
        self.modality_embed = nn.Parameter(torch.zeros(2, dim))  # 0: vision, 1: IMU

    def forward(
        self,
        *,
        vision_tokens: Tensor,
        vision_pooled: Tensor,
        imu_tokens: Tensor,
        imu_pooled: Tensor,
        has_vision: Tensor,
        has_imu: Tensor,
        alpha: float | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Fuse one batch.

        vision_tokens (B, N, D), vision_pooled (B, D), imu_tokens (B, M, D), imu_pooled (B, D),
        has_vision / has_imu (B,) bool (at least one true per sample); a missing modality's
        tensors may hold anything (zeros), they are masked out.

        Returns tokens (B, N + M, D), token_log_weights (B, N + M), pooled (B, D).
        """
        alpha = self.alpha if alpha is None else alpha
        if not bool(torch.all(has_vision | has_imu)):
            raise ValueError("every sample needs at least one modality")
        w_vision = has_vision.to(vision_pooled.dtype) * alpha
        w_imu = has_imu.to(imu_pooled.dtype) * (1.0 - alpha)
        total = w_vision + w_imu
        # alpha = 0 with only vision present (or 1 with only IMU): use what there is, unweighted.
        degenerate = total <= 0
        w_vision = torch.where(degenerate, has_vision.to(w_vision.dtype), w_vision)
        w_imu = torch.where(degenerate, has_imu.to(w_imu.dtype), w_imu)
        total = w_vision + w_imu
        pooled = (w_vision[:, None] * vision_pooled + w_imu[:, None] * imu_pooled) / total[:, None]

        tokens = torch.cat(
            [vision_tokens + self.modality_embed[0], imu_tokens + self.modality_embed[1]], dim=1
        )
        log_w = torch.cat(
            [
                _log_weight(w_vision / total).expand(-1, vision_tokens.shape[1]),
                _log_weight(w_imu / total).expand(-1, imu_tokens.shape[1]),
            ],
            dim=1,
        )
        return tokens, log_w, pooled


def _log_weight(weight: Tensor) -> Tensor:
    """(B,) weights in [0, 1] -> (B, 1) log-weights, -inf where the weight is zero."""
    return torch.where(weight > 0, weight.clamp_min(1e-12).log(), torch.full_like(weight, -math.inf))[:, None]
