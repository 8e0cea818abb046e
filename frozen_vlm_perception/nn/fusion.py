"""Weighted linear combination of vision and IMU, with a per-sample modality mask.

Two outputs, both weighted by ``alpha`` (vision) and ``1 - alpha`` (IMU):

- pooled: ``alpha * v + (1 - alpha) * i`` over the modalities a sample has, renormalised, so a
  vision-only sample gets ``v`` and an IMU-only sample gets ``i`` (the linear adapter reads this);
- tokens: the two token sets side by side with an additive log-weight per token, ``log alpha`` on
  vision tokens and ``log(1 - alpha)`` on IMU tokens (``-inf`` for a missing modality). Attention
  that adds these to its logits (the Perceiver Resampler does) reads each modality with a share of
  its attention mass scaled by that modality's weight: the token-level form of the same mixture.
  A learned modality embedding tells the two sets apart.

The vision weight is a fixed ``alpha`` (chosen on validation data at the end of stage 2), or, with a
``ModalityGate``, one weight per sample computed from the two pooled embeddings, so a frame that says
little can get less weight than a clear one. An explicit ``alpha`` passed to ``forward`` overrides the
gate (the node's ``fusion.alpha`` parameter does this).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# The fusion weights tried when alpha is chosen on validation data (training/fusion.py) and swept by
# ``fvp eval``: vision weight 0.0 (IMU only) to 1.0 (vision only) in steps of 0.1.
ALPHA_GRID: tuple[float, ...] = tuple(i / 10 for i in range(11))

# The gate's weight stays inside (GATE_MIN, 1 - GATE_MIN): a saturated gate would switch a modality off
# completely and stop the gradient that could switch it back on.
GATE_MIN = 0.02


class ModalityGate(nn.Module):
    """Per-sample vision weight from the two pooled embeddings: a small MLP, about 2 * dim * hidden
    parameters. Starts at ``alpha`` for every sample (zero last layer, bias logit(alpha))."""

    def __init__(self, *, dim: int, hidden: int, alpha: float):
        super().__init__()
        self.norm_vision = nn.LayerNorm(dim)
        self.norm_imu = nn.LayerNorm(dim)
        self.hidden = nn.Linear(2 * dim, hidden)
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        start = min(max(alpha, GATE_MIN + 1e-3), 1 - GATE_MIN - 1e-3)
        p = (start - GATE_MIN) / (1 - 2 * GATE_MIN)
        nn.init.constant_(self.out.bias, math.log(p / (1 - p)))

    def forward(self, vision_pooled: Tensor, imu_pooled: Tensor) -> Tensor:
        """vision_pooled (B, D), imu_pooled (B, D) -> vision weight (B,) in (GATE_MIN, 1 - GATE_MIN)."""
        x = torch.cat([self.norm_vision(vision_pooled), self.norm_imu(imu_pooled)], dim=-1)
        logit = self.out(nn.functional.gelu(self.hidden(x))).squeeze(-1)
        return GATE_MIN + (1 - 2 * GATE_MIN) * torch.sigmoid(logit)


class ModalityFusion(nn.Module):
    def __init__(self, *, dim: int, alpha: float, gate_hidden: int = 0):
        """``gate_hidden`` > 0 adds a ModalityGate of that width (``fusion.weighting: gate``)."""
        super().__init__()
        self.alpha = alpha
        self.modality_embed = nn.Parameter(torch.zeros(2, dim))  # 0: vision, 1: IMU
        self.gate = ModalityGate(dim=dim, hidden=gate_hidden, alpha=alpha) if gate_hidden > 0 else None

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
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Fuse one batch.

        vision_tokens (B, N, D), vision_pooled (B, D), imu_tokens (B, M, D), imu_pooled (B, D),
        has_vision / has_imu (B,) bool (at least one true per sample); a missing modality's
        tensors may hold anything (zeros), they are masked out. ``alpha``: a fixed vision weight for
        the whole batch, overriding the gate and the configured alpha.

        Returns tokens (B, N + M, D), token_log_weights (B, N + M), pooled (B, D) and the vision
        weight each sample got (B,) (1 for vision-only, 0 for IMU-only samples).
        """
        if not bool(torch.all(has_vision | has_imu)):
            raise ValueError("every sample needs at least one modality")
        weight = self.vision_weight(vision_pooled, imu_pooled, alpha)
        w_vision = has_vision.to(vision_pooled.dtype) * weight
        w_imu = has_imu.to(imu_pooled.dtype) * (1.0 - weight)
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
        return tokens, log_w, pooled, w_vision / total

    def vision_weight(self, vision_pooled: Tensor, imu_pooled: Tensor, alpha: float | None = None) -> Tensor:
        """The vision weight before masking, (B,): ``alpha`` if given, else the gate's, else the
        configured alpha."""
        if alpha is None and self.gate is not None:
            return self.gate(vision_pooled, imu_pooled)
        alpha = self.alpha if alpha is None else alpha
        return torch.full(vision_pooled.shape[:1], float(alpha), device=vision_pooled.device,
                          dtype=vision_pooled.dtype)


def _log_weight(weight: Tensor) -> Tensor:
    """(B,) weights in [0, 1] -> (B, 1) log-weights, -inf where the weight is zero."""
    return torch.where(weight > 0, weight.clamp_min(1e-12).log(), torch.full_like(weight, -math.inf))[:, None]
