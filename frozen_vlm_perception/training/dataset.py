"""Training data from the embedding cache (data/embeddings.py): per-sample tensors for a DataLoader
and the train/validation split (a held-out bag, else the tail of the training bag in time).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from frozen_vlm_perception.config import ImuConfig, SyncConfig, VisionConfig
from frozen_vlm_perception.data.config import DataConfig
from frozen_vlm_perception.data.embeddings import EmbeddingSet, EncoderFactory, load_embeddings


class EmbeddingDataset(torch.utils.data.Dataset):
    """Per-sample dicts of tensors for a DataLoader; labels mapped to the model's label list."""

    def __init__(self, embeddings: EmbeddingSet, model_labels: Sequence[str], *, with_tokens: bool):
        if with_tokens and embeddings.vision_tokens is None:
            raise ValueError("these embeddings were loaded without vision tokens")
        self.embeddings = embeddings
        self.labels = embeddings.labels_for(model_labels)
        self.with_tokens = with_tokens

    def __len__(self) -> int:
        return len(self.embeddings)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        e = self.embeddings
        item = {
            "imu": e.imu[i],
            "has_imu": e.has_imu[i],
            "vision_pooled": e.vision_pooled[i],
            "vision_token_mean": e.vision_token_mean[i],
            "label": self.labels[i],
            "place_id": e.place_id[i],
        }
        if self.with_tokens:
            item["vision_tokens"] = e.vision_tokens[i]
        return item


def split_tail(embeddings: EmbeddingSet, fraction: float) -> tuple[EmbeddingSet, EmbeddingSet]:
    """(train, val): the last ``fraction`` of the samples in time is the validation set.

    A contiguous tail, not a random pick: neighbouring frames share most of their IMU window and
    look alike, so a random split would leak near-copies of validation samples into training.
    """
    order = torch.argsort(embeddings.stamps)
    num_val = int(round(len(order) * fraction))
    if num_val < 2 or len(order) - num_val < 2:
        raise ValueError(
            f"{len(order)} samples cannot be split with val_fraction {fraction}: give a --val-bag"
        )
    return embeddings.subset(order[:-num_val]), embeddings.subset(order[-num_val:])


def load_train_val(
    data: DataConfig,
    *,
    vision: VisionConfig,
    imu: ImuConfig,
    sync: SyncConfig | None = None,
    encoder_factory: EncoderFactory | None = None,
    device: str | torch.device = "cpu",
    with_tokens: bool = True,
    progress: bool = True,
) -> tuple[EmbeddingSet, EmbeddingSet]:
    """Train and validation embeddings: ``data.val_bag``, else a tail of ``data.bag``."""
    data.validate()
    kwargs = dict(
        data=data,
        vision=vision,
        imu=imu,
        sync=sync,
        device=device,
        with_tokens=with_tokens,
        progress=progress,
    )
    # One encoder for both bags, built at most once and only if a cache misses.
    shared = _OnceFactory(encoder_factory, vision, device)
    train = load_embeddings(data.bag, encoder_factory=shared, **kwargs)
    if data.val_bag:
        return train, load_embeddings(data.val_bag, encoder_factory=shared, **kwargs)
    return split_tail(train, data.val_fraction)


class _OnceFactory:
    def __init__(self, factory: EncoderFactory | None, vision: VisionConfig, device):
        self._factory, self._vision, self._device, self._encoder = factory, vision, device, None

    def __call__(self):
        if self._encoder is None:
            if self._factory is None:
                from frozen_vlm_perception.nn.vision import build_vision_encoder

                self._encoder = build_vision_encoder(self._vision, self._device)
            else:
                self._encoder = self._factory()
        return self._encoder
