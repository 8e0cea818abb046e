"""The trainable IMU encoder: a 1-D ViT whose outputs live in the frozen vision encoder's space.

As in arXiv 2308.16493: Conv1d patches (kernel = stride = patch_size) over the resampled window,
a learned position embedding and a class token, a pre-norm transformer, then linear projections of
the class token (pooled embedding) and of the patch tokens to the vision width D, so the IMU can
stand in for (or be mixed with) the image in everything downstream.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from frozen_vlm_perception.config import STANDARD_GRAVITY, ImuConfig


class ImuEncoder(nn.Module):
    def __init__(self, *, config: ImuConfig, out_dim: int):
        super().__init__()
        self.config = config
        self.out_dim = out_dim
        width = config.width
        self.patch_embed = nn.Conv1d(
            config.channels, width, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, config.num_patches + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=width,
            nhead=config.heads,
            dim_feedforward=int(width * config.mlp_ratio),
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers=config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj_pooled = nn.Linear(width, out_dim)
        self.proj_tokens = nn.Linear(width, out_dim)

    def forward(self, windows: Tensor) -> tuple[Tensor, Tensor]:
        """windows (B, T, C) float, T = window_samples -> tokens (B, P, D), pooled (B, D)."""
        batch, samples, channels = windows.shape
        if samples != self.config.window_samples or channels != self.config.channels:
            raise ValueError(
                f"IMU window must be (B, {self.config.window_samples}, {self.config.channels}), "
                f"got {tuple(windows.shape)}"
            )
        x = normalise_window(windows)
        x = self.patch_embed(x.transpose(1, 2)).transpose(1, 2)  # (B, P, W)
        x = torch.cat([self.cls_token.expand(batch, -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.transformer(x))
        return self.proj_tokens(x[:, 1:]), self.proj_pooled(x[:, 0])


def normalise_window(windows: Tensor) -> Tensor:
    """(B, T, C) -> (B, T, C): a fixed physical scale, accel in g, everything else as given.

    No per-window centring: the mean of the accelerometer is gravity, which tells posture
    (lying vs standing) and must survive. Accel in g and gyro in rad/s both lie in about [-3, 3].
    """
    scale = torch.ones(windows.shape[-1], dtype=windows.dtype, device=windows.device)
    scale[:3] = STANDARD_GRAVITY
    return windows / scale
