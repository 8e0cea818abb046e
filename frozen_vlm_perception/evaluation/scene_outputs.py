"""The trainable part of a pipeline run over cached embeddings (what fvp eval scores and asks about)."""

from __future__ import annotations

import torch

from frozen_vlm_perception.data.embeddings import EmbeddingSet
from frozen_vlm_perception.pipeline import PerceptionPipeline


@torch.inference_mode()
def run_scene_model(
    pipeline: PerceptionPipeline,
    samples: EmbeddingSet,
    mode: str,
    *,
    alpha: float | None = None,
    batch_size: int = 128,
) -> dict[str, torch.Tensor]:
    """Logits (M, C), latents (M, L, H), pooled (M, D) and the vision weight (M,) of the trainable
    part in one mode."""
    model, device = pipeline.scene_model, pipeline.device
    logits, pooled, latents, weights = [], [], [], []
    for start in range(0, len(samples), batch_size):
        chunk = slice(start, start + batch_size)
        n = len(samples.vision_pooled[chunk])
        use_vision = torch.full((n,), mode != "imu", device=device)
        use_imu = torch.full((n,), mode != "vision", device=device)
        out = model(
            vision_tokens=samples.vision_tokens[chunk].to(device, torch.float32),
            vision_pooled=samples.vision_pooled[chunk].to(device),
            imu_windows=samples.imu[chunk].to(device),
            has_vision=use_vision,
            has_imu=use_imu,
            alpha=alpha,
        )
        logits.append(out.logits.float().cpu())
        pooled.append(out.pooled.float().cpu())
        latents.append(out.latents.float().cpu())
        weights.append(out.vision_weight.float().cpu())
    return {
        "logits": torch.cat(logits),
        "pooled": torch.cat(pooled),
        "latents": torch.cat(latents),
        "vision_weight": torch.cat(weights),
    }
