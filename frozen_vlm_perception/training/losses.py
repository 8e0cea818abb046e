"""Losses and retrieval metrics for training.

InfoNCE (CLIP-style, symmetric, learnable temperature) aligns the IMU encoder's pooled embedding to
the frozen vision encoder's pooled embedding of the paired frame, as in arXiv 2308.16493.

On positives: the positive of an IMU window is the one frame it was paired with (the frame whose
stamp ends the window); every other frame of the batch is a negative. In the demo data many frames
of a batch show the same place, and frames of one activity segment look alike, so some "negatives"
are near-duplicates of the positive. We keep the paper's one-positive formulation anyway: with k
indistinguishable frames in a batch the optimum is still the IMU embedding pointing at their common
direction (the softmax then splits evenly among them), so they only raise the loss floor by about
log k and add no wrong direction; what remains to be learned beyond the place is what makes the
pairing unique, the camera motion that the IMU caused. Shuffled batches from a long recording keep
such collisions few.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# CLIP clamps the learnable logit scale at 100 (a temperature of 0.01) to keep training stable.
MAX_LOGIT_SCALE = 100.0


class LogitScale(nn.Module):
    """The learnable inverse temperature of InfoNCE, stored as a log (CLIP initialises it to 1/0.07)."""

    def __init__(self, init_temperature: float = 0.07):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def forward(self) -> Tensor:
        """The scale exp(log_scale), clamped at 100; the clamp stops its gradient only once it is hit."""
        return self.log_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    @property
    def temperature(self) -> float:
        return 1.0 / float(self().detach())


def info_nce(query: Tensor, keys: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE between row-paired embeddings.

    query (B, D), keys (B, D): row i of each is a positive pair, every other row a negative; both are
    L2-normalised here. logit_scale: scalar tensor (the inverse temperature). Returns a scalar: the
    mean of the query->key and key->query cross-entropies over the (B, B) similarity matrix.
    """
    if query.shape != keys.shape or query.ndim != 2:
        raise ValueError(
            f"query and keys must both be (B, D), got {tuple(query.shape)} and {tuple(keys.shape)}"
        )
    logits = logit_scale * F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).T  # (B, B)
    targets = torch.arange(len(query), device=query.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def supervised_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over the labelled samples only.

    logits (B, K), labels (B,) int64 with -1 for unknown. Returns a scalar; 0 (still attached to the
    graph, so every parameter keeps a gradient) when no sample of the batch is labelled.
    """
    known = labels >= 0
    if not bool(known.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[known], labels[known])


def scale_gradient(x: Tensor, weight: float) -> Tensor:
    """Identity in the forward pass; multiplies the gradient flowing back into ``x`` by ``weight``.

    Stage 1 uses it so that the linear probe always learns at full rate while the IMU encoder only
    receives ``supervised_weight`` times the cross-entropy gradient (0 = a pure linear probe on a
    contrastive-only encoder: the ablation)."""
    if weight == 1.0:
        return x
    return x.detach() + weight * (x - x.detach())


@torch.no_grad()
def retrieval_recall(query: Tensor, keys: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Recall@k of query->key retrieval by cosine similarity; row i's positive is key i.

    query (N, D), keys (N, D). A positive's rank counts every other key with a similarity >= its
    own (ties count against us: identical frames cannot inflate the score). Chance level is k / N.
    """
    sims = F.normalize(query.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T  # (N, N)
    positive = sims.diagonal()[:, None]
    ahead = (sims >= positive).sum(dim=1) - 1  # (N,) keys at least as similar, the positive excluded
    return {k: float((ahead < k).float().mean()) for k in ks}


def embedding_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error of pseudo-tokens to target embeddings, relative to the targets' own mean
    square (so 1.0 = as far as predicting zeros). pred, target (B, K, H) -> scalar."""
    return F.mse_loss(pred, target) / target.pow(2).mean().clamp_min(1e-12)
