"""Question reader: a few pseudo-tokens written from the scene and the question together.

The scene's pseudo-tokens (the resampler's latents) are computed when the frame arrives, before any
question, so they cannot decide a yes or a no: the frozen 135M LM then has to apply the question's
predicate to the activity itself, and it cannot (docs/ANSWERS.md, "What the frozen LM cannot do").
The reader's learned queries attend to the scene's pseudo-tokens *and* the question's token
embeddings (as InstructBLIP's instruction-aware queries do), and its tokens go right after the
question, where the LM only has to read the deciding word.

    scene (B, K, H) ─┐
                     ├─ project to dim, + kind embedding ─ [attention + feed-forward] x depth ─ (B, M, H)
    question (B, T, H) (the LM's own embeddings of the question's tokens; padding masked)

The output projection starts at zero, so a new reader adds tokens the LM barely notices (zero
vectors: no key, no value) and training starts from the answers of the model it is added to.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from frozen_vlm_perception.config import ReaderConfig
from frozen_vlm_perception.nn.resampler import perceiver_layers


class QuestionReader(nn.Module):
    def __init__(self, *, config: ReaderConfig, lm_dim: int):
        super().__init__()
        dim = config.dim
        self.in_proj = nn.Linear(lm_dim, dim)
        self.kind = nn.Parameter(torch.zeros(2, dim))  # 0: scene token, 1: question token
        self.queries = nn.Parameter(torch.randn(config.num_tokens, dim) * 0.02)
        self.layers = perceiver_layers(
            dim=dim, depth=config.depth, heads=config.heads, dim_head=config.dim_head, ff_mult=config.ff_mult
        )
        self.norm = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, lm_dim)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    @property
    def num_tokens(self) -> int:
        return self.queries.shape[0]

    def forward(self, scene: Tensor, question: Tensor, question_mask: Tensor | None = None) -> Tensor:
        """scene (B, K, H), question (B, T, H), question_mask (B, T) bool (True: a real token; None:
        all real) -> tokens (B, M, H) to place right after the question."""
        if scene.ndim != 3 or question.ndim != 3 or scene.shape[0] != question.shape[0]:
            raise ValueError(
                f"scene (B, K, H) and question (B, T, H) must share B, got {tuple(scene.shape)} and "
                f"{tuple(question.shape)}"
            )
        media = torch.cat(
            [self.in_proj(scene) + self.kind[0], self.in_proj(question.to(scene.dtype)) + self.kind[1]], dim=1
        )
        log_weights = None
        if question_mask is not None:
            present = torch.cat([question_mask.new_ones(scene.shape[:2]), question_mask.bool()], dim=1)
            log_weights = torch.zeros(present.shape, dtype=media.dtype, device=media.device)
            log_weights = log_weights.masked_fill(~present.to(media.device), float("-inf"))
        x = self.queries.expand(scene.shape[0], -1, -1)
        for attn, ff in self.layers:
            x = attn(media, x, log_weights) + x
            x = ff(x) + x
        return self.out_proj(self.norm(x))
