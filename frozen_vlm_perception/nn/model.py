"""SceneModel: the trainable path from encoder outputs to scene latents and activity logits.

    vision tokens/pooled (frozen encoder) ─┐
                                           ├─ ModalityFusion ─ PerceiverResampler ─┬─ latents (B, L, H)
    IMU window ─ ImuEncoder (trainable) ───┘   (or pooled ─ LinearAdapter)         └─ ActivityHead ─ logits

An optional question reader (nn/reader.py) writes M more pseudo-tokens from the latents and a
question, when the question is asked. The frozen vision encoder and the frozen LM are not part of
it: the vision encoder runs before it (its outputs can be cached for training) and the LM reads its
latents as pseudo-tokens (width H).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from frozen_vlm_perception.config import ModelConfig
from frozen_vlm_perception.nn.adapter import LinearAdapter
from frozen_vlm_perception.nn.fusion import ModalityFusion
from frozen_vlm_perception.nn.heads import ActivityHead
from frozen_vlm_perception.nn.imu import ImuEncoder
from frozen_vlm_perception.nn.reader import QuestionReader
from frozen_vlm_perception.nn.resampler import PerceiverResampler


@dataclass
class SceneOutput:
    latents: Tensor  # (B, L, H) pseudo-tokens in the LM's embedding width
    logits: Tensor  # (B, num_labels) activity logits
    pooled: Tensor  # (B, D) fused pooled embedding in the vision space
    imu_pooled: Tensor | None  # (B, D) IMU embedding (for the alignment loss), None without IMU
    vision_weight: Tensor  # (B,) the share of vision in the fusion (1: vision only, 0: IMU only)


class SceneModel(nn.Module):
    def __init__(self, *, config: ModelConfig, vision_dim: int, vision_tokens: int, lm_dim: int):
        super().__init__()
        self.config = config
        self.vision_dim = vision_dim
        self.vision_tokens = vision_tokens
        self.lm_dim = lm_dim
        self.imu_encoder = ImuEncoder(config=config.imu, out_dim=vision_dim)
        gate_hidden = config.fusion.gate_hidden if config.fusion.weighting == "gate" else 0
        self.fusion = ModalityFusion(dim=vision_dim, alpha=config.fusion.alpha, gate_hidden=gate_hidden)
        if config.adapter.kind == "resampler":
            self.adapter = PerceiverResampler(config=config.adapter, media_dim=vision_dim, out_dim=lm_dim)
        else:
            self.adapter = LinearAdapter(
                in_dim=vision_dim, out_dim=lm_dim, num_tokens=config.adapter.num_tokens
            )
        self.head = ActivityHead(dim=lm_dim, num_labels=len(config.labels))
        # Not part of forward: it reads the question too, so it runs when a question is answered.
        self.reader = (
            QuestionReader(config=config.reader, lm_dim=lm_dim, num_labels=len(config.labels))
            if config.reader.num_tokens > 0
            else None
        )

    @property
    def num_scene_tokens(self) -> int:
        """K: pseudo-tokens per scene that the LM reads (latents of the resampler, or the linear
        adapter's tokens)."""
        if self.config.adapter.kind == "resampler":
            return self.config.adapter.num_latents
        return self.config.adapter.num_tokens

    @property
    def dims(self) -> dict[str, int]:
        """The dimensions a checkpoint must agree with."""
        return {
            "vision_dim": self.vision_dim,
            "vision_tokens": self.vision_tokens,
            "lm_dim": self.lm_dim,
            "num_labels": len(self.config.labels),
        }

    def forward(
        self,
        *,
        vision_tokens: Tensor | None,
        vision_pooled: Tensor | None,
        imu_windows: Tensor | None,
        has_vision: Tensor | None = None,
        has_imu: Tensor | None = None,
        alpha: float | None = None,
        stage: Callable[[str], AbstractContextManager] = lambda name: nullcontext(),
    ) -> SceneOutput:
        """vision_tokens (B, N, D), vision_pooled (B, D), imu_windows (B, T, C); a whole modality may
        be None, and has_vision / has_imu (B,) bool mask single samples out of a batch.

        ``stage(name)`` wraps each step ("imu", "fusion_resampler", "head"), for per-stage timing."""
        batch = _batch_size(vision_pooled, imu_windows)
        ref = vision_pooled if vision_pooled is not None else imu_windows
        device, dtype = ref.device, torch.float32
        if vision_pooled is None:
            vision_tokens = torch.zeros(
                batch, self.vision_tokens, self.vision_dim, device=device, dtype=dtype
            )
            vision_pooled = torch.zeros(batch, self.vision_dim, device=device, dtype=dtype)
            has_vision = torch.zeros(batch, dtype=torch.bool, device=device)
        imu_pooled = None
        if imu_windows is None:
            patches = self.config.imu.num_patches
            imu_tokens = torch.zeros(batch, patches, self.vision_dim, device=device, dtype=dtype)
            imu_pool_in = torch.zeros(batch, self.vision_dim, device=device, dtype=dtype)
            has_imu = torch.zeros(batch, dtype=torch.bool, device=device)
        else:
            with stage("imu"):
                imu_tokens, imu_pooled = self.imu_encoder(imu_windows)
            imu_pool_in = imu_pooled
        if has_vision is None:
            has_vision = torch.ones(batch, dtype=torch.bool, device=device)
        if has_imu is None:
            has_imu = torch.ones(batch, dtype=torch.bool, device=device)

        with stage("fusion_resampler"):
            tokens, log_weights, pooled, vision_weight = self.fusion(
                vision_tokens=vision_tokens,
                vision_pooled=vision_pooled,
                imu_tokens=imu_tokens,
                imu_pooled=imu_pool_in,
                has_vision=has_vision,
                has_imu=has_imu,
                alpha=alpha,
            )
            if isinstance(self.adapter, PerceiverResampler):
                latents = self.adapter(tokens, log_weights)
            else:
                latents = self.adapter(pooled)
        with stage("head"):
            logits = self.head(latents)
        return SceneOutput(
            latents=latents, logits=logits, pooled=pooled, imu_pooled=imu_pooled, vision_weight=vision_weight
        )


def _batch_size(vision_pooled: Tensor | None, imu_windows: Tensor | None) -> int:
    if vision_pooled is None and imu_windows is None:
        raise ValueError("SceneModel needs at least one modality")
    if vision_pooled is not None and imu_windows is not None and len(vision_pooled) != len(imu_windows):
        raise ValueError(f"batch sizes differ: vision {len(vision_pooled)}, IMU {len(imu_windows)}")
    return len(vision_pooled) if vision_pooled is not None else len(imu_windows)
